//! The adaptive vibration-anomaly detector, end to end (README, "Sensor
//! anomaly detection"; the pieces are `nl_driver::sensor`).
//!
//! ```text
//! cargo run --release --example sensor                                  # about 2 minutes on 2 cores
//! cargo run --release --example sensor -- --quick                       # the CI form, under a minute
//! cargo run --release --example sensor -- --plot docs/img/sensor.png    # where the README's plot comes from
//! ```
//!
//! A fleet of simulated machines (`nl_driver::sensor::sim`: each its own
//! rotation frequency, harmonics, resonance and noise; temperature, wear
//! and load drift; five kinds of labelled fault) is quantised to the 64
//! codes of `models/sensor.toml` (d 32, a titans memory with levels of
//! period 1 and 8). The model and its attention-only twin
//! (`models/sensor_attn.toml`) are trained on normal readings of some
//! machines, then deployed, parameters frozen, to machines never seen in
//! training, with full drift; every reading is scored by its surprise
//! `-ln softmax(logits_{t-1})[x_t]` (streaming), averaged over the last
//! second (`--smooth`, readings; every detector's score is averaged so). Each detector's threshold on a machine is the 99.9% quantile of
//! its score over that machine's first minute of normal operation (its
//! commissioning; normal data only, the first 5 s skipped), and the
//! metrics are taken over the rest of the stream. The
//! detectors: the model with its inner loop on, off (`freeze_memory`), the
//! attention-only twin, a rolling z-score of the signal energy and a
//! per-machine online Markov chain of the codes. Then the power knob: the
//! memory's schedule (`Stream::blocks[0].schedule`) at a few settings, with
//! AUROC, false alarms and serving tokens/s (one thread, median of 3 runs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use nl_driver::sensor::baselines::{energy_zscore, markov_surprise};
use nl_driver::sensor::metrics::{commission, evaluate, moving_mean, Alarms, Metrics, Scored, HOLD_S};
use nl_driver::sensor::plot::{stream as plot_stream, StreamPlot};
use nl_driver::sensor::run::{surprises, train, TrainSettings};
use nl_driver::sensor::sim::{fleet, FaultKind, Fleet, FleetSize, COMMISSION_S, FS};

nl::nl_model!("models/sensor.toml");
nl::nl_model!("models/sensor_attn.toml");

/// The settings of a run.
#[derive(Parser, Debug)]
#[command(
    about = "The adaptive vibration-anomaly detector: simulate, train on normal data, deploy to unseen machines, score"
)]
struct Args {
    /// The short form (CI): a smaller fleet and fewer training steps.
    #[arg(long)]
    quick: bool,
    /// Where to draw the plot of one test stream.
    #[arg(long, default_value = "target/sensor.png")]
    plot: PathBuf,
    /// Worker threads (training and scoring).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seed of the fleet and of training.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Readings the surprise (and every score) is averaged over.
    #[arg(long, default_value_t = 200)]
    smooth: usize,
    /// Training steps (default: 1500, quick 300).
    #[arg(long)]
    steps: Option<u64>,
}

/// The calibration quantile that sets every threshold.
const QUANTILE: f64 = 0.999;

/// `f` over `items` on `threads` threads, results in order.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut got = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break got;
                        }
                        got.push((i, f(&items[i])));
                    }
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().expect("a scoring thread panicked")).collect()
    });
    out.sort_by_key(|x| x.0);
    out.into_iter().map(|x| x.1).collect()
}

/// A detector's smoothed scores of the test streams.
struct Scores {
    name: String,
    test: Vec<Vec<f32>>,
}

fn score_all(name: &str, fl: &Fleet, a: &Args, f: impl Fn(&[u8]) -> Vec<f32> + Sync) -> Scores {
    let all: Vec<&[u8]> = fl.test.iter().map(|r| &r.codes[..]).collect();
    Scores { name: name.to_string(), test: par_map(&all, a.threads, |c| moving_mean(&f(c), a.smooth)) }
}

/// Thresholds per machine, from its commissioning window, and the metrics.
struct Verdict {
    thresholds: Vec<f32>,
    metrics: Vec<Metrics>,
}

fn judge(s: &Scores, fl: &Fleet) -> Verdict {
    let c = (COMMISSION_S * FS) as usize;
    let split: Vec<_> = s.test.iter().zip(&fl.test).map(|(sc, r)| commission(sc, &r.episodes, c, QUANTILE)).collect();
    let test: Vec<Scored<'_>> =
        split.iter().map(|(th, sc, eps)| Scored { score: sc, episodes: eps, threshold: *th }).collect();
    Verdict { thresholds: split.iter().map(|x| x.0).collect(), metrics: evaluate(&test) }
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.digits$}")
    }
}

fn print_detail(name: &str, v: &Verdict) {
    let th: Vec<String> = v.thresholds.iter().map(|t| format!("{t:.2}")).collect();
    println!("\n{name} (thresholds per machine: {}):", th.join(", "));
    println!("| fault | AUROC | precision | recall | detected | median delay (s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in &v.metrics {
        let kind = m.kind.map_or("all", FaultKind::name);
        println!(
            "| {kind} | {} | {} | {} | {} | {} |",
            fmt(m.auroc, 3),
            fmt(m.precision, 3),
            fmt(m.recall, 3),
            fmt(m.detected, 2),
            fmt(m.delay_s, 2)
        );
    }
}

fn overall(v: &Verdict) -> &Metrics {
    v.metrics.last().expect("the overall row")
}

/// Serving tokens/s of one thread: median of 3 runs over `codes`.
fn tokens_per_s(codes: &[u8], run: impl Fn(&[u8]) -> Vec<f32>) -> f64 {
    let mut r: Vec<f64> = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            std::hint::black_box(run(codes));
            codes.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    r.sort_by(f64::total_cmp);
    r[1]
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> nl_driver::Result<()> {
    let t0 = std::time::Instant::now();
    let size = if args.quick {
        FleetSize { train_machines: 4, train_s: 60.0, test_machines: 2, faults_per_kind: 1, seed: args.seed }
    } else {
        FleetSize { train_machines: 8, train_s: 120.0, test_machines: 6, faults_per_kind: 2, seed: args.seed }
    };
    let fl = fleet(&size, sensor::VOCAB);
    let count = |v: &[nl_driver::sensor::sim::Recording]| v.iter().map(|r| r.codes.len()).sum::<usize>();
    println!(
        "fleet: {} training machines ({} normal readings, mild drift), {} unseen test machines ({} readings at {} Hz, full drift, {} faults after {} s of commissioning)",
        size.train_machines,
        count(&fl.train),
        size.test_machines,
        count(&fl.test),
        FS,
        fl.test.iter().map(|r| r.episodes.len()).sum::<usize>(),
        COMMISSION_S
    );
    let steps = args.steps.unwrap_or(if args.quick { 300 } else { 1500 });
    let ts = TrainSettings {
        steps,
        batch: 16,
        lr: 3e-3,
        warmup: 50,
        weight_decay: 0.0,
        seed: args.seed,
        threads: args.threads,
    };
    let streams: Vec<&[u8]> = fl.train.iter().map(|r| &r.codes[..]).collect();
    let (mem_p, mem_t) = train::<sensor::Model>(&streams, &ts)?;
    println!(
        "trained sensor ({} params): {} steps x {} x {}, final loss {:.3} nats/reading, {:.1} s",
        sensor::PARAM_COUNT,
        steps,
        ts.batch,
        sensor::SEQ,
        mem_t.final_loss,
        mem_t.seconds
    );
    let (att_p, att_t) = train::<sensor_attn::Model>(&streams, &ts)?;
    println!(
        "trained sensor_attn ({} params): final loss {:.3} nats/reading, {:.1} s",
        sensor_attn::PARAM_COUNT,
        att_t.final_loss,
        att_t.seconds
    );

    type Sched = fn(&mut sensor::Stream<f32>);
    let default: Sched = |_| {};
    let frozen: Sched = |s| s.freeze_memory = true;
    let slow4: Sched = |s| {
        for l in s.blocks[0].schedule.iter_mut() {
            l.set_multiplier(4);
        }
    };
    let pause0: Sched = |s| s.blocks[0].schedule[0].set_paused(true);
    let pause_all: Sched = |s| {
        for l in s.blocks[0].schedule.iter_mut() {
            l.set_paused(true);
        }
    };
    let model = |name: &str, setup: Sched| score_all(name, &fl, args, |c| surprises::<sensor::Model>(&mem_p, c, setup));
    let on = model("sensor, inner loop on", default);
    let off = model("sensor, inner loop off", frozen);
    let attn =
        score_all("sensor_attn (attention only)", &fl, args, |c| surprises::<sensor_attn::Model>(&att_p, c, |_| {}));
    let v = sensor::VOCAB;
    let z = score_all("energy z-score (0.2 s window, 60 s history)", &fl, args, |c| energy_zscore(c, v, 40, 60.0 * FS));
    let markov = score_all("per-machine Markov chain of codes (60 s memory)", &fl, args, |c| {
        markov_surprise(c, v, 60.0 * FS, 0.01)
    });
    let detectors = [&on, &off, &attn, &z, &markov];
    let verdicts: Vec<Verdict> = detectors.iter().map(|d| judge(d, &fl)).collect();
    for (d, v) in detectors.iter().zip(&verdicts) {
        print_detail(&d.name, v);
    }
    println!("\nsummary (all faults; false alarms per hour of normal drifting operation on the unseen machines):");
    println!("| detector | AUROC | precision | recall | detected | median delay (s) | false alarms / h |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (d, v) in detectors.iter().zip(&verdicts) {
        let m = overall(v);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            d.name,
            fmt(m.auroc, 3),
            fmt(m.precision, 3),
            fmt(m.recall, 3),
            fmt(m.detected, 2),
            fmt(m.delay_s, 2),
            fmt(m.false_alarms_per_hour, 1)
        );
    }
    let (fa_on, fa_off) = (overall(&verdicts[0]).false_alarms_per_hour, overall(&verdicts[1]).false_alarms_per_hour);
    let c = (COMMISSION_S * FS) as usize;
    let normal_h = fl.test.iter().map(|r| r.labels()[c..].iter().filter(|l| l.is_none()).count()).sum::<usize>() as f64
        / FS
        / 3600.0;
    if fa_off > 0.0 {
        println!(
            "\ninner loop: {:.1} false alarms/h on against {:.1} off ({:+.0}%), over {:.2} h of normal operation of unseen machines",
            fa_on,
            fa_off,
            100.0 * (fa_on - fa_off) / fa_off,
            normal_h
        );
    } else {
        println!("\ninner loop: {fa_on:.1} false alarms/h on, none off, over {normal_h:.2} h of normal operation");
    }

    // Evidence for the false alarms: how the normal score moves after
    // commissioning (wear raises the noise floor, so the readings' entropy).
    let median = |x: &mut Vec<f32>| {
        x.sort_by(f32::total_cmp);
        x.get(x.len() / 2).copied().unwrap_or(f32::NAN)
    };
    for d in [&on, &off, &attn] {
        let (mut early, mut late) = (Vec::new(), Vec::new());
        for (sc, r) in d.test.iter().zip(&fl.test) {
            let labels = r.labels();
            let n = sc.len();
            let settle = (5.0 * FS) as usize;
            early.extend_from_slice(&sc[settle..c]);
            late.extend((n - n / 4..n).filter(|&t| labels[t].is_none()).map(|t| sc[t]));
        }
        println!(
            "{}: median normal score {:.3} nats in commissioning, {:.3} in the last quarter of the streams",
            d.name,
            median(&mut early),
            median(&mut late)
        );
    }

    // The power knob.
    println!("\npower knob (sensor, levels of period 1 and 8; serving tokens/s of one thread, median of 3 runs over one test stream):");
    println!("| schedule | periods in force | AUROC | false alarms / h | detected | serve tok/s |");
    println!("|---|---|---:|---:|---:|---:|");
    let bench_codes = &fl.test[0].codes[..fl.test[0].codes.len().min(40_000)];
    let knobs: [(&str, &str, Sched, Option<&Scores>); 5] = [
        ("default", "1, 8", default, Some(&on)),
        ("multiplier 4 on both levels", "4, 32", slow4, None),
        ("level 0 paused", "paused, 8", pause0, None),
        ("both paused (reads kept)", "paused, paused", pause_all, None),
        ("freeze_memory (inner loop off)", "-", frozen, Some(&off)),
    ];
    for (name, periods, setup, have) in knobs {
        let scored;
        let s = match have {
            Some(s) => s,
            None => {
                scored = model(name, setup);
                &scored
            }
        };
        let m = judge(s, &fl);
        let o = overall(&m);
        let tps = tokens_per_s(bench_codes, |c| surprises::<sensor::Model>(&mem_p, c, setup));
        println!(
            "| {name} | {periods} | {} | {} | {} | {:.0} |",
            fmt(o.auroc, 3),
            fmt(o.false_alarms_per_hour, 1),
            fmt(o.detected, 2),
            tps
        );
    }
    let tps = tokens_per_s(bench_codes, |c| surprises::<sensor_attn::Model>(&att_p, c, |_| {}));
    println!(
        "| sensor_attn (no memory) | - | {} | {} | {} | {tps:.0} |",
        fmt(overall(&verdicts[2]).auroc, 3),
        fmt(overall(&verdicts[2]).false_alarms_per_hour, 1),
        fmt(overall(&verdicts[2]).detected, 2)
    );

    // The plot: the first test machine, from 20 s before its first fault, 150 s.
    let r = &fl.test[0];
    let start = r.episodes.first().map_or(0, |e| e.start.saturating_sub((30.0 * FS) as usize));
    let end = (start + (150.0 * FS) as usize).min(r.codes.len());
    let alarms = Alarms::new(&on.test[0], verdicts[0].thresholds[0], (HOLD_S * FS) as usize);
    if let Some(dir) = args.plot.parent() {
        std::fs::create_dir_all(dir).map_err(|e| nl_driver::Error(format!("cannot create {}: {e}", dir.display())))?;
    }
    let title = "sensor: an unseen machine, inner loop on (shaded: labelled faults)";
    let p = StreamPlot {
        title,
        signal: &r.signal,
        score: &on.test[0],
        threshold: verdicts[0].thresholds[0],
        alarms: &alarms.active,
        episodes: &r.episodes,
        range: start..end,
    };
    let labelled = plot_stream(&args.plot, &p)?;
    println!(
        "\nplot: {}{}",
        args.plot.display(),
        if labelled { "" } else { " (no TrueType font found: drawn without text; set NL_FONT)" }
    );
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
