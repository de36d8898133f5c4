//! The power knob: a stream's run-time schedule of its memory levels
//! (`BlockStream::schedule`, `nl_runtime::memory::Schedule`; docs/model.md,
//! "Schedules").
//!
//! Oracles: the default schedule against fingerprints of the stream taken
//! at the commit before the knob existed (d2d9c99, the default build);
//! multipliers against a second spec compiled with the multiplied periods
//! on the same parameters (bit for bit); a paused level against a copy of
//! its state taken before the pause and against the frozen inner loop; the
//! stability bound of `tests/all/common/stability.rs` (computed from the
//! parameters) under schedules switching at random.

use crate::common::stability::level_bounds;
use crate::shipped::{micro_cms4, sensor};
use crate::stability::random_params;
use nl::nl_model;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Flat, Model, Scalar};

// The sensor spec with its periods multiplied by 2 and 3 (1 -> 2, 8 -> 24).
nl_model! { r#"
name = "sensor_x2x3"
d_model = 32
heads = 4
vocab = 64
seq_len = 64
window = 16
[memory]
rule = "titans"
composition = "mag"
[[memory.levels]]
period = 2
[[memory.levels]]
period = 24
"# }

fn fnv(h: &mut u64, x: u64) {
    for b in x.to_le_bytes() {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100000001b3);
    }
}

/// A hash of every logit of `tokens` pseudo-random tokens and of the final
/// memory states, from `init(7)`.
fn fingerprint<M: Model, S: Scalar>(tokens: usize) -> u64 {
    let mut params = boxed_zeroed::<M::Params<S>>();
    M::init(&mut params, 7);
    let mut st = boxed_zeroed::<M::Stream<S>>();
    let mut h = 0xcbf29ce484222325u64;
    let mut x = 1u64;
    for _ in 0..tokens {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let tok = ((x >> 33) % M::VOCAB as u64) as u32;
        for v in M::step(&mut st, &params, tok) {
            fnv(&mut h, v.to_f64().to_bits());
        }
    }
    for lv in 0..M::LEVELS * M::LAYERS {
        let v = M::memory_level(&st, lv).expect("level");
        for a in v.m.iter().chain(v.g).chain(v.s).chain(v.w) {
            fnv(&mut h, a.to_f64().to_bits());
        }
        fnv(&mut h, v.n);
    }
    h
}

/// The default schedule computes what the stream computed before the knob:
/// the fingerprints were printed by this function at d2d9c99 (before
/// `Schedule`), in the default build (no FMA: `Scalar::mul_add` is a
/// multiply and an add there, so the bits do not depend on the CPU).
#[cfg(not(target_feature = "fma"))]
#[test]
fn default_schedule_is_bit_identical_to_the_step_before_the_knob() {
    assert_eq!(fingerprint::<sensor::Model, f64>(300), 0x80b6704027790ce5);
    assert_eq!(fingerprint::<sensor::Model, f32>(300), 0x79a390a5aee2e899);
    assert_eq!(fingerprint::<micro_cms4::Model, f64>(300), 0xf4133aa168880ae3);
    assert_eq!(fingerprint::<micro_cms4::Model, f32>(300), 0xa829119b4277a158);
}

fn tok(rng: &mut Rng) -> u32 {
    rng.below(sensor::VOCAB as u64) as u32
}

fn bits(s: &nl_runtime::memory::LevelState<f64, { sensor::D }>) -> Vec<u64> {
    let (m, g, st, w) = (s.m.as_flattened(), s.g.as_flattened(), s.s.as_flattened(), s.w.as_flattened());
    m.iter().chain(g).chain(st).chain(w).map(|x| x.to_bits()).chain([s.n]).collect()
}

#[test]
fn a_paused_level_does_not_change_and_resumes_where_it_stopped() {
    let mut p = boxed_zeroed::<sensor::Params<f64>>();
    p.init(3);
    let mut st = boxed_zeroed::<sensor::Stream<f64>>();
    let mut rng = Rng::new(5);
    for _ in 0..100 {
        st.step(&p, tok(&mut rng));
    }
    // Mid-chunk for the period-8 level (n = 100 = 12 * 8 + 4): G is not zero.
    let before = bits(&st.blocks[0].mem[1]);
    let level0 = bits(&st.blocks[0].mem[0]);
    st.blocks[0].schedule[1].set_paused(true);
    for _ in 0..50 {
        st.step(&p, tok(&mut rng));
        assert_eq!(bits(&st.blocks[0].mem[1]), before, "a paused level's state changed");
    }
    assert_ne!(bits(&st.blocks[0].mem[0]), level0, "the running level should have changed");
    // Resumed, the level goes on from n = 100: its next fire is at its 104th token.
    st.blocks[0].schedule[1].set_paused(false);
    let m0 = st.blocks[0].mem[1].m;
    for i in 0..4 {
        st.step(&p, tok(&mut rng));
        let fired = st.blocks[0].mem[1].m != m0;
        assert_eq!(fired, i == 3, "token {i} after resuming");
    }
    assert_eq!(st.blocks[0].mem[1].n, 104);
}

#[test]
fn every_level_paused_reads_like_the_frozen_inner_loop() {
    let mut p = boxed_zeroed::<sensor::Params<f64>>();
    p.init(4);
    let (mut a, mut b) = (boxed_zeroed::<sensor::Stream<f64>>(), boxed_zeroed::<sensor::Stream<f64>>());
    let mut rng = Rng::new(6);
    for _ in 0..77 {
        let t = tok(&mut rng);
        a.step(&p, t);
        b.step(&p, t);
    }
    for s in a.blocks[0].schedule.iter_mut() {
        s.set_paused(true);
    }
    b.freeze_memory = true;
    for _ in 0..200 {
        let t = tok(&mut rng);
        let la: Vec<u64> = a.step(&p, t).iter().map(|x| x.to_bits()).collect();
        let lb: Vec<u64> = b.step(&p, t).iter().map(|x| x.to_bits()).collect();
        assert_eq!(la, lb);
    }
}

fn multiplied_equals_compiled<S: Scalar>() {
    let mut p = boxed_zeroed::<sensor::Params<S>>();
    p.init(9);
    let mut q = boxed_zeroed::<sensor_x2x3::Params<S>>();
    q.as_flat_mut().copy_from_slice(p.as_flat());
    let mut a = boxed_zeroed::<sensor::Stream<S>>();
    a.blocks[0].schedule[0].set_multiplier(2);
    a.blocks[0].schedule[1].set_multiplier(3);
    let mut b = boxed_zeroed::<sensor_x2x3::Stream<S>>();
    let mut rng = Rng::new(8);
    for i in 0..400 {
        let t = tok(&mut rng);
        let la: Vec<u64> = a.step(&p, t).iter().map(|x| x.to_f64().to_bits()).collect();
        let lb: Vec<u64> = b.step(&q, t).iter().map(|x| x.to_f64().to_bits()).collect();
        assert_eq!(la, lb, "token {i}");
    }
    for l in 0..2 {
        assert!(a.blocks[0].mem[l] == b.blocks[0].mem[l], "level {l}");
    }
}

#[test]
fn multiplier_m_equals_a_spec_compiled_with_period_p_times_m() {
    multiplied_equals_compiled::<f64>();
    multiplied_equals_compiled::<f32>();
}

#[test]
fn a_new_multiplier_waits_for_the_chunk_to_end() {
    let mut p = boxed_zeroed::<sensor::Params<f64>>();
    p.init(2);
    let mut st = boxed_zeroed::<sensor::Stream<f64>>();
    let mut rng = Rng::new(3);
    for _ in 0..4 {
        st.step(&p, tok(&mut rng));
    }
    // n = 4, mid-chunk of the period-8 level: the change waits for n = 8.
    st.blocks[0].schedule[1].set_multiplier(2);
    let mut fires = Vec::new();
    for _ in 4..40 {
        let m0 = st.blocks[0].mem[1].m;
        st.step(&p, tok(&mut rng));
        if st.blocks[0].mem[1].m != m0 {
            fires.push(st.blocks[0].mem[1].n);
        }
    }
    // Fires at n = 8 (period 8 in force), then every 16 tokens.
    assert_eq!(fires, vec![8, 16, 32]);
    assert_eq!(st.blocks[0].schedule[1].active_multiplier(), 2);
}

/// Every level stays below the contraction bound computed from the
/// parameters while its schedule switches at random (multipliers 1 to 5,
/// pauses) every few tokens, on random parameters with large gates.
#[test]
fn the_stability_bound_holds_under_switching_schedules() {
    let mut bounded = 0;
    for seed in 0..16u64 {
        let p = random_params::<sensor::Model>(2000 + seed);
        let bounds = level_bounds::<sensor::Model>(&p);
        let mut st = boxed_zeroed::<sensor::Stream<f32>>();
        let mut rng = Rng::new(seed);
        let mut worst = [0f64; 2];
        for i in 0..3000u64 {
            if i % 11 == 0 {
                for s in st.blocks[0].schedule.iter_mut() {
                    s.set_multiplier(1 + rng.below(5) as u32);
                    s.set_paused(rng.below(6) == 0);
                }
            }
            // Adversarial: a repeated token for a while, then random ones.
            let t = if (i / 500) % 2 == 0 { (seed % 64) as u32 } else { tok(&mut rng) };
            let logits = st.step(&p, t);
            assert!(logits.iter().all(|x| x.is_finite()), "seed {seed} token {i}");
            for (l, w) in worst.iter_mut().enumerate() {
                *w = w.max(<sensor::Model as Model>::memory_level(&st, l).expect("level").m_norm());
            }
        }
        for (l, w) in worst.iter().enumerate() {
            // Random gates can make the forget rate's minimum over the
            // vocabulary 0 (rho = 1): no finite bound, finiteness only.
            let Some(b) = bounds[l].expect("block 0 has a bound").bound else { continue };
            assert!(*w <= b * (1.0 + 1e-4), "seed {seed} level {l}: |M| {w} above the bound {b}");
            bounded += 1;
        }
    }
    assert!(bounded >= 4, "only {bounded} of 32 levels had a finite bound: the test checks too little");
}
