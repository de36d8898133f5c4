//! The measured peak: independent FMA chains at each vector width the CPU
//! has, timed on this core. Clocks and execution units differ between the
//! cores this project runs on (a VM's "cpu MHz" need not be the clock it
//! runs at, and some AVX-512 cores split a 512-bit FMA over 256-bit units),
//! so the bench measures rather than assumes.
//!
//! Shared by the `bench` and `gemm_bench` examples (`#[path]` module).

/// The best rate over the widths, and what was measured.
pub struct Measured {
    /// GFLOP/s of the fastest width.
    pub best: f64,
    /// Each width's rate, for the printed basis.
    pub basis: String,
}

/// Independent accumulators per width: more than FMA latency x units
/// (4 x 2 on current cores), so the chains never wait on each other.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 12;
/// FMAs per chain per timed run (about 10 to 40 ms at 512 bits).
#[cfg(target_arch = "x86_64")]
const ITERS: u64 = 4_000_000;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS, ITERS};
    use std::arch::x86_64::*;
    use std::hint::black_box;

    #[target_feature(enable = "avx512f")]
    pub fn chains512() -> f32 {
        let (a, b) = (_mm512_set1_ps(black_box(0.999_999)), _mm512_set1_ps(black_box(1e-7)));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for c in acc {
            s = _mm512_add_ps(s, c);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn chains256() -> f32 {
        let (a, b) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-7)));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for c in acc {
            s = _mm256_add_ps(s, c);
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 f32s, the 32 bytes an unaligned store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        lanes.iter().sum()
    }

    #[target_feature(enable = "fma")]
    pub fn chains128() -> f32 {
        let (a, b) = (_mm_set1_ps(black_box(0.999_999)), _mm_set1_ps(black_box(1e-7)));
        let mut acc = [_mm_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm_fmadd_ps(*c, a, b);
            }
        }
        let mut s = _mm_setzero_ps();
        for c in acc {
            s = _mm_add_ps(s, c);
        }
        let mut lanes = [0f32; 4];
        // SAFETY: `lanes` is 4 f32s, the 16 bytes an unaligned store writes.
        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), s) };
        lanes.iter().sum()
    }
}

/// GFLOP/s of `run` (`lanes` wide), the best of three timed runs after one warm-up.
#[cfg(target_arch = "x86_64")]
fn rate(lanes: usize, run: impl Fn() -> f32) -> f64 {
    std::hint::black_box(run());
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        std::hint::black_box(run());
        best = best.min(t.elapsed().as_secs_f64());
    }
    (ITERS as f64 * CHAINS as f64 * lanes as f64 * 2.0) / best / 1e9
}

/// Measures every width the CPU has (`None` off x86-64 or without FMA).
#[cfg(target_arch = "x86_64")]
pub fn measure() -> Option<Measured> {
    let mut rates: Vec<(&str, f64)> = Vec::new();
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has avx512f (checked on the line above).
        rates.push(("512-bit", rate(16, || unsafe { x86::chains512() })));
    }
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has avx2 and fma (checked on the line above).
        rates.push(("256-bit", rate(8, || unsafe { x86::chains256() })));
    }
    if std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has fma (checked on the line above).
        rates.push(("128-bit", rate(4, || unsafe { x86::chains128() })));
    }
    let best = rates.iter().map(|r| r.1).fold(f64::NAN, f64::max);
    if rates.is_empty() {
        return None;
    }
    let each: Vec<String> = rates.iter().map(|(w, g)| format!("{w} {g:.1} GFLOP/s")).collect();
    Some(Measured { best, basis: format!("{CHAINS} independent FMA chains per width, best of 3: {}", each.join(", ")) })
}

/// Measures every width the CPU has (`None` off x86-64 or without FMA).
#[cfg(not(target_arch = "x86_64"))]
pub fn measure() -> Option<Measured> {
    None
}
