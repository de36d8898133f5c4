//! A simulated fleet of vibrating machines, quantised to sensor codes.
//!
//! Each [`Machine`] has its own vibration signature: a rotation frequency
//! (8 to 20 Hz at a nominal load), the amplitudes and phases of its first
//! three harmonics, a structural resonance (a second-order resonator at 35
//! to 75 Hz, excited by white noise) and a small noise floor, all scaled by an
//! overall gain (mounting, sensor sensitivity). The accelerometer is read at
//! [`FS`] readings per second.
//!
//! Normal operation drifts ([`Drift`]): the **temperature** follows a slow
//! cycle that lowers the resonance frequency (up to 8% at full strength)
//! and raises its gain; **wear** grows linearly over the stream, raising
//! the noise floor and the second harmonic; the **load** changes every
//! 40 to 100 s (speed 0.85x to 1.15x of nominal and amplitude with it),
//! ramping over 2 s.
//!
//! Labelled faults ([`FaultKind`], one [`Episode`] each):
//! - `Bearing`: a defect on a bearing race: an impulse at a defect order of
//!   3.1 to 5.3 times the rotation, each ringing a high resonance (80 to
//!   95 Hz) that decays in about 20 ms;
//! - `Imbalance`: the 1x component grows from its normal amplitude to 3x
//!   over the episode;
//! - `Looseness`: half-order and 1.5-order components and a mechanical
//!   stop that clips the signal's negative side;
//! - `Spikes`: electrical spikes on the sensor line (2% of the readings,
//!   5 to 10 times the signal's scale, either sign);
//! - `Dropout`: the sensor intermittently reads 0 (runs of 10 to 100
//!   readings, separated by 20 to 200 normal ones).
//!
//! The signal is quantised to `vocab` codes by a soft-saturating ADC,
//! `code = floor(vocab (tanh(x / 2.5) + 1) / 2)` (clamped), the same for
//! every machine: a machine's gain shows in its codes, as on a device.
//! Everything is deterministic from the seeds (`nl_runtime::rng::Rng`).

use std::f64::consts::TAU;

use nl_runtime::rng::Rng;

/// Readings per second.
pub const FS: f64 = 200.0;

/// The scale of the quantiser's `tanh` (signal units).
pub const ADC_SCALE: f64 = 2.5;

/// The kinds of labelled fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Bearing-defect impulses ringing a high resonance.
    Bearing,
    /// A growing 1x (imbalance) component.
    Imbalance,
    /// Sub-harmonics and a clipping mechanical stop.
    Looseness,
    /// Electrical spikes on the sensor line.
    Spikes,
    /// The sensor intermittently reads 0.
    Dropout,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 5] =
        [FaultKind::Bearing, FaultKind::Imbalance, FaultKind::Looseness, FaultKind::Spikes, FaultKind::Dropout];

    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Bearing => "bearing",
            FaultKind::Imbalance => "imbalance",
            FaultKind::Looseness => "looseness",
            FaultKind::Spikes => "spikes",
            FaultKind::Dropout => "dropout",
        }
    }
}

/// A labelled fault: `kind` over the readings `start..start + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Episode {
    /// What goes wrong.
    pub kind: FaultKind,
    /// First reading of the fault.
    pub start: usize,
    /// Readings the fault lasts.
    pub len: usize,
}

impl Episode {
    /// One past the last reading of the fault.
    pub fn end(&self) -> usize {
        self.start + self.len
    }
}

/// The vibration signature of one machine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Machine {
    /// Rotation frequency at nominal load, Hz.
    pub rot_hz: f64,
    /// Amplitudes of the 1x, 2x, 3x harmonics.
    pub harmonics: [f64; 3],
    /// Phases of the harmonics, radians.
    pub phases: [f64; 3],
    /// Structural resonance frequency, Hz.
    pub res_hz: f64,
    /// Resonance bandwidth, Hz.
    pub res_bw: f64,
    /// Gain of the resonance's white-noise excitation.
    pub res_gain: f64,
    /// Standard deviation of the broadband noise floor.
    pub noise: f64,
    /// Overall gain (mounting, sensor sensitivity).
    pub gain: f64,
    /// Bearing defect order (impulses per revolution, when faulty).
    pub bearing_order: f64,
    /// The bearing's ringing frequency, Hz.
    pub bearing_hz: f64,
}

impl Machine {
    /// A machine drawn from the fleet's distribution with `seed`.
    pub fn random(seed: u64) -> Machine {
        let mut r = Rng::for_stream(seed, 0x5e_5011);
        let mut u = |lo: f64, hi: f64| lo + (hi - lo) * r.next_f64();
        Machine {
            rot_hz: u(8.0, 20.0),
            harmonics: [u(0.5, 1.0), u(0.15, 0.45), u(0.05, 0.25)],
            phases: [u(0.0, TAU), u(0.0, TAU), u(0.0, TAU)],
            res_hz: u(35.0, 75.0),
            res_bw: u(3.0, 8.0),
            res_gain: u(0.04, 0.10),
            noise: u(0.02, 0.05),
            gain: u(0.6, 1.4),
            bearing_order: u(3.1, 5.3),
            bearing_hz: u(80.0, 95.0),
        }
    }
}

/// How strongly normal operation drifts (0: not at all; 1: the full
/// temperature cycle, wear and load changes described in the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    /// Strength of the temperature cycle.
    pub temperature: f64,
    /// Wear reached at the end of the stream.
    pub wear: f64,
    /// Strength of the load changes (0: constant load).
    pub load: f64,
}

impl Drift {
    /// No drift.
    pub const NONE: Drift = Drift { temperature: 0.0, wear: 0.0, load: 0.0 };
    /// Mild drift (the training fleet's normal data).
    pub const MILD: Drift = Drift { temperature: 0.4, wear: 0.3, load: 0.4 };
    /// Full drift (deployment).
    pub const FULL: Drift = Drift { temperature: 1.0, wear: 1.0, load: 1.0 };
}

/// One simulated stream: the signal, its codes and the labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    /// The accelerometer signal (before quantisation).
    pub signal: Vec<f32>,
    /// The quantised readings, `0..vocab`.
    pub codes: Vec<u8>,
    /// The labelled faults, in order, not overlapping.
    pub episodes: Vec<Episode>,
}

impl Recording {
    /// The fault (if any) at each reading.
    pub fn labels(&self) -> Vec<Option<FaultKind>> {
        let mut l = vec![None; self.codes.len()];
        for e in &self.episodes {
            for x in &mut l[e.start..e.end().min(self.codes.len())] {
                *x = Some(e.kind);
            }
        }
        l
    }
}

/// The code of a signal value.
pub fn quantise(x: f64, vocab: usize) -> u8 {
    let c = ((x / ADC_SCALE).tanh() + 1.0) * 0.5 * vocab as f64;
    (c.floor().max(0.0) as usize).min(vocab - 1) as u8
}

/// The signal value at the centre of a code's bin (the inverse of [`quantise`]).
pub fn dequantise(code: u8, vocab: usize) -> f64 {
    let y = ((code as f64 + 0.5) / vocab as f64 * 2.0 - 1.0).clamp(-0.999_999, 0.999_999);
    ADC_SCALE * y.atanh()
}

/// A second-order resonator `r_t = 2 rho cos(w) r_{t-1} - rho^2 r_{t-2} + e_t`.
#[derive(Clone, Copy, Default)]
struct Resonator {
    r1: f64,
    r2: f64,
}

impl Resonator {
    fn step(&mut self, hz: f64, bw: f64, e: f64) -> f64 {
        let rho = (-std::f64::consts::PI * bw / FS).exp();
        let w = 2.0 * std::f64::consts::PI * hz / FS;
        let r = 2.0 * rho * w.cos() * self.r1 - rho * rho * self.r2 + e;
        self.r2 = self.r1;
        self.r1 = r;
        r
    }
}

/// Simulates `readings` readings of machine `m` under `drift` with the
/// faults `episodes` (sorted, not overlapping), quantised to `vocab` codes.
pub fn simulate(
    m: &Machine,
    readings: usize,
    drift: Drift,
    episodes: &[Episode],
    vocab: usize,
    seed: u64,
) -> Recording {
    let mut rng = Rng::for_stream(seed, 0xd01f7);
    let tau = 2.0 * std::f64::consts::PI;
    let mut signal = Vec::with_capacity(readings);
    let mut codes = Vec::with_capacity(readings);
    let (mut phase, mut bphase) = (0.0f64, 0.0f64);
    let (mut res, mut bres) = (Resonator::default(), Resonator::default());
    // Load: (speed, amplitude) targets changing every 40 to 100 s, ramped over 2 s.
    let (mut speed, mut amp) = (1.0f64, 1.0f64);
    let (mut speed_to, mut amp_to) = (1.0f64, 1.0f64);
    let mut next_load = (FS * (40.0 + 60.0 * rng.next_f64())) as usize;
    let temp_period = FS * (150.0 + 150.0 * rng.next_f64());
    let temp_phase = tau * rng.next_f64();
    let ramp = 1.0 / (2.0 * FS);
    let mut ep = 0usize;
    let mut drop_left = 0usize;
    let mut run_left = 0usize;
    for t in 0..readings {
        if t >= next_load {
            speed_to = 1.0 + drift.load * 0.15 * (2.0 * rng.next_f64() - 1.0);
            amp_to = 1.0 + drift.load * 0.3 * (2.0 * rng.next_f64() - 1.0);
            next_load = t + (FS * (40.0 + 60.0 * rng.next_f64())) as usize;
        }
        speed += (speed_to - speed).clamp(-ramp, ramp);
        amp += (amp_to - amp).clamp(-ramp, ramp);
        let temp = drift.temperature * 0.5 * (1.0 + (tau * t as f64 / temp_period + temp_phase).sin());
        let wear = drift.wear * t as f64 / readings.max(1) as f64;
        phase = (phase + tau * m.rot_hz * speed / FS) % (2.0 * tau);
        while ep < episodes.len() && episodes[ep].end() <= t {
            ep += 1;
        }
        let fault = episodes.get(ep).filter(|e| e.start <= t).map(|e| (e.kind, (t - e.start) as f64 / e.len as f64));
        let mut h = m.harmonics;
        h[1] *= 1.0 + 0.8 * wear;
        if let Some((FaultKind::Imbalance, f)) = fault {
            h[0] *= 1.0 + 2.0 * f;
        }
        let mut x = 0.0;
        for (i, (a, p)) in h.iter().zip(m.phases).enumerate() {
            x += a * ((i + 1) as f64 * phase + p).sin();
        }
        x *= amp;
        let res_hz = m.res_hz * (1.0 - 0.08 * temp);
        x += res.step(res_hz, m.res_bw, m.res_gain * (1.0 + 0.5 * temp) * rng.normal());
        x += m.noise * (1.0 + 1.5 * wear) * rng.normal();
        let mut kick = 0.0;
        match fault {
            Some((FaultKind::Bearing, f)) => {
                bphase += m.bearing_order * m.rot_hz * speed / FS;
                if bphase >= 1.0 {
                    bphase -= 1.0;
                    kick = 0.9 * (4.0 * f).min(1.0) * (0.7 + 0.3 * rng.next_f64());
                }
            }
            Some((FaultKind::Looseness, f)) => {
                let a = 0.6 * (3.0 * f).min(1.0);
                x += a * (0.5 * phase + 0.3).sin() + 0.5 * a * (1.5 * phase + 1.1).sin();
                x = x.max(-0.9 + 0.5 * (1.0 - (3.0 * f).min(1.0)));
            }
            _ => {}
        }
        x += bres.step(m.bearing_hz, 15.0, kick);
        x *= m.gain;
        match fault {
            Some((FaultKind::Spikes, _)) if rng.next_f64() < 0.02 => {
                let s = 5.0 + 5.0 * rng.next_f64();
                x += if rng.next_f64() < 0.5 { s } else { -s };
            }
            Some((FaultKind::Dropout, _)) => {
                if drop_left == 0 && run_left == 0 {
                    drop_left = 10 + rng.below(91) as usize;
                    run_left = 20 + rng.below(181) as usize;
                }
                if drop_left > 0 {
                    drop_left -= 1;
                    x = 0.0;
                } else {
                    run_left -= 1;
                }
            }
            _ => {
                drop_left = 0;
                run_left = 0;
            }
        }
        signal.push(x as f32);
        codes.push(quantise(x, vocab));
    }
    Recording { signal, codes, episodes: episodes.to_vec() }
}

/// A fault schedule: `per_kind` episodes of every kind in random order,
/// each lasting `episode_s` seconds, spaced by at least `gap_s` seconds of
/// normal operation, after `warmup_s` seconds of it; the readings the
/// stream needs are `Episode::end` of the last plus `gap_s`.
pub fn fault_schedule(per_kind: usize, episode_s: f64, gap_s: f64, warmup_s: f64, seed: u64) -> (Vec<Episode>, usize) {
    let mut r = Rng::for_stream(seed, 0xfa17);
    let mut kinds: Vec<FaultKind> = (0..per_kind).flat_map(|_| FaultKind::ALL).collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, r.below(i as u64 + 1) as usize);
    }
    let len = (episode_s * FS) as usize;
    let mut t = (warmup_s * FS) as usize;
    let mut eps = Vec::new();
    for kind in kinds {
        t += (gap_s * FS * (1.0 + r.next_f64())) as usize;
        eps.push(Episode { kind, start: t, len });
        t += len;
    }
    (eps, t + (gap_s * FS) as usize)
}

/// Seconds of normal operation at the start of every test stream (no
/// fault starts before).
pub const COMMISSION_S: f64 = 60.0;

/// The sizes of a simulated fleet ([`fleet`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FleetSize {
    /// Machines whose normal readings train the model.
    pub train_machines: usize,
    /// Seconds of normal operation (mild drift) per training machine.
    pub train_s: f64,
    /// Machines never seen in training, streamed with full drift and faults.
    pub test_machines: usize,
    /// Episodes of each fault kind per test machine.
    pub faults_per_kind: usize,
    /// Seed of everything.
    pub seed: u64,
}

/// A fleet's streams.
#[derive(Clone, Debug)]
pub struct Fleet {
    /// Normal readings of the training machines (mild drift).
    pub train: Vec<Recording>,
    /// Unseen machines with full drift and labelled faults (8 s each, at
    /// least 20 s apart, after [`COMMISSION_S`] seconds of normal
    /// operation: the commissioning window, on which each machine's
    /// threshold is chosen).
    pub test: Vec<Recording>,
}

/// Simulates the fleet of `size`, quantised to `vocab` codes.
pub fn fleet(size: &FleetSize, vocab: usize) -> Fleet {
    let s = size.seed.wrapping_mul(1_000_003);
    let train_m: Vec<Machine> = (0..size.train_machines).map(|i| Machine::random(s + i as u64)).collect();
    let n = |secs: f64| (secs * FS) as usize;
    let train = train_m
        .iter()
        .enumerate()
        .map(|(i, m)| simulate(m, n(size.train_s), Drift::MILD, &[], vocab, s + 10_000 + i as u64))
        .collect();
    let test = (0..size.test_machines)
        .map(|i| {
            let m = Machine::random(s + 500_000 + i as u64);
            let (eps, len) =
                fault_schedule(size.faults_per_kind, 8.0, 20.0, COMMISSION_S - 20.0, s + 30_000 + i as u64);
            simulate(&m, len, Drift::FULL, &eps, vocab, s + 40_000 + i as u64)
        })
        .collect();
    Fleet { train, test }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiser_round_trips_within_a_bin() {
        for c in 0..64u8 {
            assert_eq!(quantise(dequantise(c, 64), 64), c);
        }
        assert_eq!(quantise(1e9, 64), 63);
        assert_eq!(quantise(-1e9, 64), 0);
        assert_eq!(quantise(0.0, 64), 32);
    }

    #[test]
    fn labels_and_schedule_agree() {
        let (eps, n) = fault_schedule(1, 2.0, 5.0, 10.0, 3);
        assert_eq!(eps.len(), 5);
        assert!(eps.windows(2).all(|w| w[0].end() < w[1].start));
        let m = Machine::random(1);
        let rec = simulate(&m, n, Drift::FULL, &eps, 64, 9);
        let labels = rec.labels();
        assert_eq!(labels.iter().filter(|l| l.is_some()).count(), 5 * 400);
        assert!(labels[..2000].iter().all(|l| l.is_none()));
        // A dropout episode reads code 32 (signal 0) for part of the time.
        let d = eps.iter().find(|e| e.kind == FaultKind::Dropout).expect("a dropout");
        let zeros = rec.signal[d.start..d.end()].iter().filter(|&&x| x == 0.0).count();
        assert!(zeros > d.len / 10, "{zeros}");
    }
}
