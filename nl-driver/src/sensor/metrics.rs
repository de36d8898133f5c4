//! Detection metrics of a per-reading anomaly score against labelled faults.
//!
//! - [`auroc`]: the probability that a fault reading scores above a normal
//!   one (ties count one half): the Mann-Whitney statistic, from average
//!   ranks.
//! - [`quantile`], [`commission`]: the threshold, chosen on normal data
//!   only: the scores of a machine's first minute of normal operation.
//! - [`Alarms`]: alarm events from a score and a threshold with a hold: an
//!   alarm starts when the score crosses the threshold and ends after
//!   `hold` readings below it. An alarm that starts outside every fault
//!   (and outside the `grace` readings after one ends) is a false alarm.
//! - [`evaluate`]: per fault kind and overall, AUROC, precision and recall
//!   of the readings above the threshold (per kind: that kind's readings
//!   against every normal reading, as if it were the only kind), false
//!   alarms per hour of normal operation, the fraction of episodes
//!   detected and the median detection delay (from the fault's start to
//!   its first alarm reading, within the fault or its grace).

use super::sim::{Episode, FaultKind, FS};

/// Area under the ROC curve of `pos` (should score high) against `neg`:
/// `P(pos > neg) + P(pos = neg) / 2`. NaN if either is empty.
pub fn auroc(pos: &[f32], neg: &[f32]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f32, bool)> = pos.iter().map(|&s| (s, true)).chain(neg.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' ranks (1-based, ties get their average rank).
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

/// The `q` quantile (`0..=1`) of `x`: the value at rank `ceil(q n)` (1-based) of the sorted values.
///
/// # Panics
/// If `x` is empty.
pub fn quantile(x: &[f32], q: f64) -> f32 {
    assert!(!x.is_empty(), "quantile of nothing");
    let mut v = x.to_vec();
    v.sort_by(f32::total_cmp);
    let r = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[r - 1]
}

/// Alarm events of a score against a threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarms {
    /// Whether an alarm is active at each reading.
    pub active: Vec<bool>,
    /// The reading at which each alarm starts.
    pub starts: Vec<usize>,
}

impl Alarms {
    /// An alarm starts at a reading whose score is above `threshold` while
    /// none is active, and ends after `hold` consecutive readings at or
    /// below it.
    pub fn new(score: &[f32], threshold: f32, hold: usize) -> Alarms {
        let mut active = vec![false; score.len()];
        let mut starts = Vec::new();
        let (mut on, mut below) = (false, 0usize);
        for (t, &s) in score.iter().enumerate() {
            if s > threshold {
                if !on {
                    starts.push(t);
                }
                on = true;
                below = 0;
            } else if on {
                below += 1;
                if below >= hold {
                    on = false;
                }
            }
            active[t] = on;
        }
        Alarms { active, starts }
    }
}

/// One scored stream: its score, its faults and its alarm threshold.
pub struct Scored<'a> {
    /// The score of every reading.
    pub score: &'a [f32],
    /// The labelled faults.
    pub episodes: &'a [Episode],
    /// The alarm threshold of this stream (its machine's).
    pub threshold: f32,
}

/// The metrics of one fault kind, or of all (`kind: None`).
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// The kind, `None` for every fault together.
    pub kind: Option<FaultKind>,
    /// AUROC of its readings against the normal readings.
    pub auroc: f64,
    /// Precision of the readings above the threshold.
    pub precision: f64,
    /// Recall: the fraction of its readings above the threshold.
    pub recall: f64,
    /// Fraction of its episodes with an alarm.
    pub detected: f64,
    /// Median delay from an episode's start to its first alarm reading, seconds (NaN if none detected).
    pub delay_s: f64,
    /// False alarms per hour of normal operation (the same for every kind).
    pub false_alarms_per_hour: f64,
}

/// Readings after a fault ends during which a starting alarm is still counted as the fault's.
pub const GRACE_S: f64 = 2.0;
/// Readings below the threshold that end an alarm.
pub const HOLD_S: f64 = 1.0;

/// Metrics per fault kind (in [`FaultKind::ALL`] order) and overall (last)
/// of the scored streams, each at its threshold. Normal readings are those
/// outside every fault and its grace.
pub fn evaluate(streams: &[Scored<'_>]) -> Vec<Metrics> {
    let grace = (GRACE_S * FS) as usize;
    let hold = (HOLD_S * FS) as usize;
    let mut normal = Vec::new();
    let (mut fp, mut tp_kind) = (0usize, vec![0usize; FaultKind::ALL.len()]);
    let mut by_kind: Vec<Vec<f32>> = vec![Vec::new(); FaultKind::ALL.len()];
    let mut delays: Vec<Vec<Option<f64>>> = vec![Vec::new(); FaultKind::ALL.len()];
    let mut false_alarms = 0usize;
    for s in streams {
        let n = s.score.len();
        let mut label = vec![0u8; n]; // 0 normal, 1 fault, 2 grace
        for e in s.episodes {
            let end = e.end().min(n);
            for l in &mut label[e.start.min(n)..end] {
                *l = 1;
            }
            for l in &mut label[end..(end + grace).min(n)] {
                if *l == 0 {
                    *l = 2;
                }
            }
        }
        for (t, &sc) in s.score.iter().enumerate() {
            if label[t] == 0 {
                normal.push(sc);
                fp += usize::from(sc > s.threshold);
            }
        }
        let alarms = Alarms::new(s.score, s.threshold, hold);
        false_alarms += alarms.starts.iter().filter(|&&t| label[t] == 0).count();
        for e in s.episodes {
            let k = FaultKind::ALL.iter().position(|&k| k == e.kind).expect("a kind");
            let end = e.end().min(n);
            let fault = &s.score[e.start.min(n)..end];
            by_kind[k].extend_from_slice(fault);
            tp_kind[k] += fault.iter().filter(|&&x| x > s.threshold).count();
            let first = (e.start..(end + grace).min(n)).find(|&t| alarms.active[t]);
            delays[k].push(first.map(|t| (t - e.start) as f64 / FS));
        }
    }
    let hours = normal.len() as f64 / FS / 3600.0;
    let fph = false_alarms as f64 / hours;
    let fp = fp as f64;
    let metrics = |kind: Option<FaultKind>, pos: &[f32], tp: usize, d: &[Option<f64>]| {
        let tp = tp as f64;
        let mut found: Vec<f64> = d.iter().flatten().copied().collect();
        found.sort_by(f64::total_cmp);
        Metrics {
            kind,
            auroc: auroc(pos, &normal),
            precision: if tp + fp > 0.0 { tp / (tp + fp) } else { f64::NAN },
            recall: tp / pos.len().max(1) as f64,
            detected: found.len() as f64 / d.len().max(1) as f64,
            delay_s: if found.is_empty() { f64::NAN } else { found[(found.len() - 1) / 2] },
            false_alarms_per_hour: fph,
        }
    };
    let mut out: Vec<Metrics> = FaultKind::ALL
        .iter()
        .enumerate()
        .map(|(k, &kind)| metrics(Some(kind), &by_kind[k], tp_kind[k], &delays[k]))
        .collect();
    let all: Vec<f32> = by_kind.concat();
    let all_d: Vec<Option<f64>> = delays.concat();
    out.push(metrics(None, &all, tp_kind.iter().sum(), &all_d));
    out
}

/// The readings of a machine's commissioning window skipped before its
/// threshold is taken (the stream's start-up: empty attention window and
/// memory).
pub const SETTLE_S: f64 = 5.0;

/// A stream split at the end of its commissioning window: the threshold is
/// the `q` quantile of `score[settle..commission]` (normal operation of
/// that machine: normal data only), and the rest of the stream is
/// evaluated with its faults shifted to match. Returns the threshold, the
/// evaluated scores and the shifted faults.
///
/// # Panics
/// If `commission` is not after the settling readings, or a fault starts
/// inside the commissioning window.
pub fn commission<'a>(
    score: &'a [f32],
    episodes: &[Episode],
    commission: usize,
    q: f64,
) -> (f32, &'a [f32], Vec<Episode>) {
    let settle = (SETTLE_S * FS) as usize;
    assert!(commission > settle && commission <= score.len(), "commissioning window too short");
    let threshold = quantile(&score[settle..commission], q);
    let eps = episodes
        .iter()
        .map(|e| {
            assert!(e.start >= commission, "a fault inside the commissioning window");
            Episode { start: e.start - commission, ..*e }
        })
        .collect();
    (threshold, &score[commission..], eps)
}

/// A causal moving mean over the last `w` values (fewer at the start).
pub fn moving_mean(x: &[f32], w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    let mut sum = 0.0f64;
    for (t, &v) in x.iter().enumerate() {
        sum += f64::from(v);
        if t >= w {
            sum -= f64::from(x[t - w]);
        }
        out.push((sum / (t + 1).min(w) as f64) as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_of_hand_computed_lists() {
        // Perfect separation, perfect inversion, all tied.
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0, 1.0], &[1.0]), 0.5);
        // pos {0.8, 0.4}, neg {0.5, 0.1, 0.4}: pairs (0.8 beats 3) + (0.4:
        // beats 0.1, ties 0.4, loses to 0.5) = 3 + 1 + 0.5 = 4.5 of 6.
        assert_eq!(auroc(&[0.8, 0.4], &[0.5, 0.1, 0.4]), 0.75);
        assert!(auroc(&[], &[1.0]).is_nan());
    }

    #[test]
    fn quantile_and_moving_mean_by_hand() {
        let x = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&x, 0.0), 1.0);
        assert_eq!(quantile(&x, 0.5), 3.0);
        assert_eq!(quantile(&x, 0.9), 5.0);
        assert_eq!(moving_mean(&[2.0, 4.0, 6.0, 8.0], 2), vec![2.0, 3.0, 5.0, 7.0]);
    }

    #[test]
    fn alarms_start_and_hold() {
        let s = [0.0, 2.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0];
        let a = Alarms::new(&s, 1.0, 2);
        assert_eq!(a.starts, vec![1, 7]);
        assert_eq!(a.active, vec![false, true, true, true, true, false, false, true]);
    }

    #[test]
    fn evaluate_by_hand() {
        // 1 hour of readings at FS: a fault of kind Spikes at 1000..1100
        // scoring 2, one false alarm at 500000, everything else 0.
        let n = (3600.0 * FS) as usize + 100 + (GRACE_S * FS) as usize; // one hour of normal readings
        let mut score = vec![0.0f32; n];
        for s in &mut score[1000..1100] {
            *s = 2.0;
        }
        score[1050] = 0.5; // one fault reading below the threshold
        score[500_000] = 3.0;
        let eps = [Episode { kind: FaultKind::Spikes, start: 1000, len: 100 }];
        let m = evaluate(&[Scored { score: &score, episodes: &eps, threshold: 1.0 }]);
        let all = m.last().expect("overall");
        assert_eq!(all.kind, None);
        assert!((all.false_alarms_per_hour - 1.0).abs() < 1e-12, "{}", all.false_alarms_per_hour);
        assert_eq!(all.recall, 0.99);
        assert_eq!(all.precision, 99.0 / 100.0);
        assert_eq!(all.detected, 1.0);
        assert_eq!(all.delay_s, 0.0);
        // 99 fault readings at 2 and one at 0.5 against normal readings at 0
        // (one at 3): 99 beat all but one, 0.5 beats all but one.
        let nn = (n - 100 - (GRACE_S * FS) as usize) as f64;
        assert!((all.auroc - (nn - 1.0) / nn).abs() < 1e-12);
        let spikes = &m[3];
        assert_eq!(spikes.kind, Some(FaultKind::Spikes));
        assert_eq!(spikes.recall, 0.99);
        assert!(m[0].auroc.is_nan() && m[0].delay_s.is_nan());
    }
}
