//! Micro-benchmark of the quantized matrix-vector kernels
//! (`nl_runtime::quant`) against the `f32` one (`nl_runtime::kernels::matvec`)
//! on the weight shapes of the deep and micro models, on every kernel path
//! this CPU supports.
//!
//! ```sh
//! cargo run --release --example quant_bench
//! RUSTFLAGS="-C target-cpu=native" cargo run --release --example quant_bench
//! cargo run --release --example quant_bench -- --runs 21 --min-time 0.005
//! ```
//!
//! Each number is the median over `--runs` runs of the time per product
//! (each run repeats the product until it has taken `--min-time` seconds);
//! GOP/s counts `2 * out * in` operations per product.

use std::hint::black_box;
use std::time::Instant;

use nl_runtime::kernels::matvec;
use nl_runtime::quant::{self, QuantPath};

/// Median nanoseconds per call of `f` over `runs` runs of at least `min_time` seconds each.
fn time_ns(runs: usize, min_time: f64, mut f: impl FnMut()) -> f64 {
    // Calibrate the repetitions per run.
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        let s = t.elapsed().as_secs_f64();
        if s >= min_time || reps >= 1 << 30 {
            break;
        }
        reps = if s <= 0.0 { reps * 16 } else { ((reps as f64 * min_time / s * 1.2) as usize).max(reps * 2) };
    }
    let mut ns: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / reps as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    ns[ns.len() / 2]
}

/// A deterministic pseudo-random value in `[-1, 1)`.
fn val(i: usize) -> f32 {
    let mut z = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// Prints one line of results.
fn report(shape: &str, kernel: &str, path: &str, ns: f64, ops: f64) {
    println!("{shape:<22} {kernel:<14} {path:<11} {ns:>10.1} ns {:>8.2} GOP/s", ops / ns);
}

/// Benchmarks one `[O, I]` shape.
fn bench<const O: usize, const I: usize>(name: &str, runs: usize, min_time: f64) {
    let shape = format!("{name} [{O}x{I}]");
    let ops = 2.0 * (O * I) as f64;
    let w: Vec<f32> = (0..O * I).map(|i| val(i) * 0.1).collect();
    let x: Vec<f32> = (0..I).map(|i| val(i + 1_000_003)).collect();

    // f32: the model's kernel on nested arrays.
    let mut wa = Box::new([[0.0f32; I]; O]);
    for (r, row) in wa.iter_mut().enumerate() {
        row.copy_from_slice(&w[r * I..(r + 1) * I]);
    }
    let xa: [f32; I] = x.as_slice().try_into().expect("I inputs");
    let mut ya = [0.0f32; O];
    let ns = time_ns(runs, min_time, || matvec(black_box(&*wa), black_box(&xa), black_box(&mut ya)));
    report(&shape, "f32 (kernels)", "-", ns, ops);

    // Quantized operands.
    let mut wq = vec![0i8; O * I];
    let mut scales = vec![0.0f32; O];
    quant::quantize_int8(&w, O, I, &mut wq, &mut scales);
    let ts = quant::ternary_scale(&w);
    let mut tq = vec![0i8; O * I];
    quant::quantize_ternary(&w, ts, &mut tq);
    let mut packed = vec![0u8; O * quant::ternary_row_bytes(I)];
    quant::pack_ternary(&tq, O, I, &mut packed).expect("ternary codes");
    let mut tiles = vec![quant::I8Tile([0; 64]); quant::tiles_len(O, I)];
    quant::tile_int8(&wq, O, I, &mut tiles);
    let mut xq = vec![0i8; I];
    let a = quant::quantize_act(&x, &mut xq);
    let mut y = vec![0.0f32; O];

    let ns = time_ns(runs, min_time, || {
        black_box(quant::quantize_act(black_box(&x), black_box(&mut xq)));
    });
    report(&shape, "quantize_act", "-", ns, I as f64);

    for p in QuantPath::ALL.into_iter().filter(|p| p.is_supported()) {
        let ns = time_ns(runs, min_time, || {
            quant::matvec_i8_i8_with(p, black_box(&wq), &scales, O, I, black_box(&xq), a, black_box(&mut y))
        });
        report(&shape, "int8 x int8", p.name(), ns, ops);
        let ns = time_ns(runs, min_time, || {
            quant::matvec_i8_i8_tiled_with(p, black_box(&tiles), &scales, O, I, black_box(&xq), a, black_box(&mut y))
        });
        report(&shape, "int8 tiled", p.name(), ns, ops);
        let ns = time_ns(runs, min_time, || {
            quant::matvec_i8_f32_with(p, black_box(&wq), &scales, O, I, black_box(&x), black_box(&mut y))
        });
        report(&shape, "int8 x f32", p.name(), ns, ops);
        let ns = time_ns(runs, min_time, || {
            quant::matvec_t2_i8_with(p, black_box(&packed), ts, O, I, black_box(&xq), a, black_box(&mut y))
        });
        report(&shape, "ternary x int8", p.name(), ns, ops);
        let ns = time_ns(runs, min_time, || {
            quant::matvec_t2_f32_with(p, black_box(&packed), ts, O, I, black_box(&x), black_box(&mut y))
        });
        report(&shape, "ternary x f32", p.name(), ns, ops);
    }
}

fn main() {
    let mut runs = 11usize;
    let mut min_time = 0.01f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match arg.as_str() {
            "--runs" => value.as_deref().and_then(|v| v.parse().ok()).map(|v: usize| runs = v.max(1)),
            "--min-time" => value.as_deref().and_then(|v| v.parse().ok()).map(|v: f64| min_time = v),
            _ => None,
        };
        if parsed.is_none() {
            eprintln!("usage: quant_bench [--runs N] [--min-time SECONDS]");
            std::process::exit(1);
        }
    }
    println!(
        "quant kernels: dispatch picks {} (NL_QUANT overrides); median of {runs} runs of >= {min_time} s",
        quant::kernel_name()
    );
    println!("{:<22} {:<14} {:<11} {:>13} {:>14}", "shape", "kernel", "path", "per matvec", "");
    bench::<128, 128>("deep attn q/k/v/o", runs, min_time);
    bench::<256, 128>("deep mlp up/gate", runs, min_time);
    bench::<128, 256>("deep mlp down", runs, min_time);
    bench::<256, 128>("deep unembed", runs, min_time);
    bench::<64, 64>("micro attn", runs, min_time);
    bench::<256, 64>("micro unembed", runs, min_time);
}
