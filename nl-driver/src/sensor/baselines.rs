//! The classical detectors a user would try first, streaming, per machine:
//!
//! - [`energy_zscore`]: the signal energy over a short window (the mean
//!   square of the dequantised readings over the last `w` readings),
//!   standardised by an exponentially weighted mean and variance of that
//!   energy over the machine's own past (time constant `tau` readings, a
//!   plain running mean and variance until `tau` readings have been seen;
//!   updated after scoring, so a reading never standardises itself); the
//!   score is `|z|`, 0 for the first `w` readings.
//! - [`Markov`]: a first-order Markov chain of the codes learnt online on
//!   the machine's own stream, counts forgotten exponentially (time
//!   constant `tau` readings) and smoothed by `prior` per cell; the score of
//!   a reading is `-ln P(x_t | x_{t-1})` before the reading is counted.

use super::sim::dequantise;

/// `|z|` of the short-window energy against the machine's own history.
pub fn energy_zscore(codes: &[u8], vocab: usize, w: usize, tau: f64) -> Vec<f32> {
    let x: Vec<f64> = codes.iter().map(|&c| dequantise(c, vocab)).collect();
    let (mut sum, mut mean, mut var) = (0.0f64, 0.0f64, 0.0f64);
    let mut out = Vec::with_capacity(codes.len());
    for t in 0..x.len() {
        sum += x[t] * x[t];
        if t >= w {
            sum -= x[t - w] * x[t - w];
        }
        let e = sum / (t + 1).min(w) as f64;
        if t == 0 {
            mean = e;
        }
        let z = if t < w { 0.0 } else { (e - mean) / (var.sqrt() + 1e-3) };
        out.push(z.abs() as f32);
        // Updated after scoring.
        let a = (1.0 / (t + 1) as f64).max(1.0 / tau);
        let d = e - mean;
        mean += a * d;
        var = (1.0 - a) * (var + a * d * d);
    }
    out
}

/// An online first-order Markov chain of codes with exponential forgetting.
pub struct Markov {
    vocab: usize,
    /// Counts `[prev][next]`, in units of the current weight `unit`.
    counts: Vec<f64>,
    /// Row sums of `counts`.
    rows: Vec<f64>,
    /// The weight a new observation gets (grows by `1 / (1 - 1/tau)` per reading; rescaled).
    unit: f64,
    /// `1 / (1 - 1/tau)`.
    growth: f64,
    /// Pseudo-count of every cell.
    prior: f64,
    /// The previous code.
    prev: Option<usize>,
}

impl Markov {
    /// An empty chain over `vocab` codes.
    pub fn new(vocab: usize, tau: f64, prior: f64) -> Markov {
        Markov {
            vocab,
            counts: vec![0.0; vocab * vocab],
            rows: vec![0.0; vocab],
            unit: 1.0,
            growth: 1.0 / (1.0 - 1.0 / tau),
            prior,
            prev: None,
        }
    }

    /// The surprise (nats) of `code` after the previous one, then counts it.
    pub fn step(&mut self, code: u8) -> f64 {
        let c = code as usize;
        let s = match self.prev {
            None => (self.vocab as f64).ln(),
            Some(p) => {
                // Counts are stored in units growing with time: the real
                // weight of a count is counts / unit.
                let num = self.counts[p * self.vocab + c] / self.unit + self.prior;
                let den = self.rows[p] / self.unit + self.prior * self.vocab as f64;
                -(num / den).ln()
            }
        };
        if let Some(p) = self.prev {
            self.unit *= self.growth;
            self.counts[p * self.vocab + c] += self.unit;
            self.rows[p] += self.unit;
            if self.unit > 1e100 {
                for x in self.counts.iter_mut().chain(self.rows.iter_mut()) {
                    *x /= self.unit;
                }
                self.unit = 1.0;
            }
        }
        self.prev = Some(c);
        s
    }
}

/// The [`Markov`] surprise of every reading of a stream.
pub fn markov_surprise(codes: &[u8], vocab: usize, tau: f64, prior: f64) -> Vec<f32> {
    let mut m = Markov::new(vocab, tau, prior);
    codes.iter().map(|&c| m.step(c) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markov_probabilities_by_hand() {
        // No forgetting to speak of (tau huge), prior 1, vocab 2: after
        // 0,1,0 the chain has counted 0->1 and 1->0; P(1 | 0) = (1 + 1) / (1 + 2).
        let mut m = Markov::new(2, 1e12, 1.0);
        assert!((m.step(0) - 2f64.ln()).abs() < 1e-12);
        assert!((m.step(1) - 2f64.ln()).abs() < 1e-12); // nothing counted yet: 1/2
        m.step(0);
        let s = m.step(1);
        assert!((s - -(2.0f64 / 3.0).ln()).abs() < 1e-9, "{s}");
        // 0 -> 1 twice now: P(0 | 1) after 1: counted 1->0 once: (1 + 1) / (1 + 2).
        let s = m.step(0);
        assert!((s - -(2.0f64 / 3.0).ln()).abs() < 1e-9, "{s}");
    }

    #[test]
    fn markov_forgets_with_its_time_constant() {
        // tau = 2: a count made k readings ago weighs (1 - 1/2)^(k - 1).
        // Stream 0, 0, 1, 0, then score 1: 0->0 was counted 3 readings ago
        // (weight 1/4), 0->1 two ago (1/2), 1->0 one ago (from 1, not read).
        // P(1 | 0) = (1/2 + p) / (1/4 + 1/2 + 2 p), p = 0.01.
        let mut m = Markov::new(2, 2.0, 0.01);
        for c in [0u8, 0, 1, 0] {
            m.step(c);
        }
        let s = m.step(1);
        let p = (0.5 + 0.01) / (0.75 + 0.02);
        assert!((s + f64::ln(p)).abs() < 1e-9, "{s} vs {}", -f64::ln(p));
    }

    #[test]
    fn energy_zscore_flags_a_burst() {
        let mut codes = [32u8, 40, 24, 36, 28].repeat(400);
        for c in &mut codes[1500..1520] {
            *c = 63;
        }
        let z = energy_zscore(&codes, 64, 10, 500.0);
        let before = z[1000..1500].iter().fold(0f32, |a, &b| a.max(b));
        assert!(z[1510] > 10.0 * before.max(0.1), "{} vs {before}", z[1510]);
    }
}
