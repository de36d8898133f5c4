//! A small seedable RNG (xoshiro256++ seeded by SplitMix64) and the
//! deterministic initialisation the generated `init` uses.

use crate::Scalar;

/// SplitMix64 step: used to expand a seed into a xoshiro state and to mix
/// a tensor index into a seed.
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++: fast, small state, good statistical quality; not cryptographic.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        Rng { s: [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)] }
    }

    /// An independent stream for sub-stream `index` of `seed` (e.g. one per tensor).
    pub fn for_stream(seed: u64, index: u64) -> Rng {
        let mut sm = seed ^ index.wrapping_mul(0xD605_BBB5_8C8A_BBB5);
        let mixed = splitmix64(&mut sm);
        Rng::new(mixed)
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // in (0, 1]
        let u2 = self.next_f64();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(core::f64::consts::TAU * u2)
    }
}

/// Fills `x` with N(0, 1) samples from stream `index` of `seed`.
pub fn init_normal<S: Scalar>(x: &mut [S], seed: u64, index: u64) {
    let mut r = Rng::for_stream(seed, index);
    for v in x {
        *v = S::from_f64(r.normal());
    }
}

/// Fills `x` with U(-bound, bound) samples from stream `index` of `seed`.
pub fn init_uniform<S: Scalar>(x: &mut [S], bound: f64, seed: u64, index: u64) {
    let mut r = Rng::for_stream(seed, index);
    for v in x {
        *v = S::from_f64((2.0 * r.next_f64() - 1.0) * bound);
    }
}

/// Samples an index from unnormalised logits at a temperature (`temperature
/// <= 0` takes the argmax).
pub fn sample_logits<S: Scalar>(logits: &[S], temperature: f64, rng: &mut Rng) -> usize {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    if temperature <= 0.0 {
        return best;
    }
    let mx = logits[best].to_f64();
    let mut total = 0.0;
    for l in logits {
        total += libm::exp((l.to_f64() - mx) / temperature);
    }
    let mut u = rng.next_f64() * total;
    for (i, l) in logits.iter().enumerate() {
        u -= libm::exp((l.to_f64() - mx) / temperature);
        if u <= 0.0 {
            return i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_known_values() {
        // Reference values of SplitMix64 from seed 0 (Vigna's splitmix64.c).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn uniform_and_normal_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let (mut s1, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let x = r.normal();
            s1 += x;
            s2 += x * x;
        }
        let mean = s1 / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        let mut u = [0.0f64; 1000];
        init_uniform(&mut u, 0.5, 3, 1);
        assert!(u.iter().all(|x| x.abs() <= 0.5));
        let mut u2 = [0.0f64; 1000];
        init_uniform(&mut u2, 0.5, 3, 2);
        assert_ne!(u, u2, "streams differ");
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[r.below(7) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn sampling_at_zero_temperature_is_argmax() {
        let mut r = Rng::new(1);
        assert_eq!(sample_logits(&[0.1f32, 3.0, -1.0], 0.0, &mut r), 1);
        // A dominant logit is sampled almost always.
        let hits = (0..100).filter(|_| sample_logits(&[0.0f64, 40.0, 0.0], 1.0, &mut r) == 1).count();
        assert_eq!(hits, 100);
    }
}
