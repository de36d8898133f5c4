//! On-device training (`nl_deploy::train`) checked on the host against
//! independent oracles: the generated analytic backward (`loss_and_grad`)
//! and finite differences in f64 of the generated forward (`loss`), and
//! the runtime's AdamW applied by hand. (Quantized models do not train.)
#![cfg(not(any(feature = "int8", feature = "ternary", feature = "deep_int8", feature = "deep_ternary")))]

use nl_deploy::model::{self, Params, Workspace};
use nl_deploy::train::{self, SEQ_TOKENS};
use nl_deploy::Error;
use nl_runtime::Flat;

/// A zeroed `T` on the heap (the structs are far too large for the stack).
fn boxed<T: nl_runtime::Zeroable>() -> Box<T> {
    // SAFETY: `T: Zeroable`: the all-zero bytes `new_zeroed` writes are a valid `T`.
    unsafe { Box::<T>::new_zeroed().assume_init() }
}

fn tokens() -> [u32; SEQ_TOKENS] {
    let mut t = [0u32; SEQ_TOKENS];
    train::demo_tokens(&mut t);
    t
}

fn embedded_f32() -> Box<Params<f32>> {
    let mut p = boxed::<Params<f32>>();
    p.as_flat_mut().copy_from_slice(nl_deploy::params().expect("embedded checkpoint").as_flat());
    p
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-30)
}

/// The head's loss and gradient (written plainly in `train.rs`) equal the
/// generated full backward's loss and `unembed` gradient, in f64, at a
/// head away from its initial value; and finite differences of the
/// generated forward agree with it.
#[cfg(not(feature = "deep"))]
#[test]
fn head_gradient_matches_generated_backward_and_finite_differences() {
    let t = tokens();
    let p32 = embedded_f32();
    let mut p = boxed::<Params<f64>>();
    for (d, s) in p.as_flat_mut().iter_mut().zip(p32.as_flat()) {
        *d = f64::from(*s);
    }
    // Move the head off its initial value (a fixed pattern), so the check is
    // not only at init.
    for (i, row) in p.unembed.iter_mut().enumerate() {
        for (j, w) in row.iter_mut().enumerate() {
            *w += 0.05 * (((i * 7 + j * 13) % 17) as f64 / 17.0 - 0.5);
        }
    }
    let mut ws = boxed::<Workspace<f64>>();
    let mut g = boxed::<Params<f64>>();
    let loss_ref = model::loss_and_grad(&p, &t, &mut ws, &mut g);

    let mut ws2 = boxed::<Workspace<f64>>();
    model::forward(&p, &t, &mut ws2);
    // The head-only form reads the body's output from the streaming step
    // (`Stream::x` after each token): it must be the training forward's
    // `xs[LAYERS]` (another generated path; f64, so up to rounding).
    let mut st = boxed::<model::Stream<f64>>();
    let mut h = boxed::<[[f64; model::D]; model::SEQ]>();
    for (ht, &tok) in h.iter_mut().zip(&t[..model::SEQ]) {
        st.try_step(&p, tok).expect("token");
        *ht = st.x;
    }
    let xs = &ws2.xs[model::LAYERS];
    let hmax = xs.as_flattened().iter().fold(0f64, |m, x| m.max(x.abs()));
    let hdiff = h.as_flattened().iter().zip(xs.as_flattened()).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(hdiff <= 1e-12 * hmax, "streaming hidden states differ from the training forward's by {hdiff:e}");
    let mut row = [0f64; model::VOCAB];
    let mut gh = boxed::<[[f64; model::D]; model::VOCAB]>();
    let loss = train::head_loss_and_grad(&p.unembed, &h, &t[1..], &mut row, Some(&mut gh));
    assert!(rel(loss, loss_ref) < 1e-13, "head loss {loss} vs generated {loss_ref}");
    let gmax = g.unembed.as_flattened().iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(gmax > 1e-4, "a vanishing gradient checks nothing");
    let worst = gh.as_flattened().iter().zip(g.unembed.as_flattened()).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-12 * gmax, "head gradient differs from the generated backward by {worst:e} (max {gmax:e})");

    // Central differences of the generated forward's loss, 24 entries.
    let h = 1e-5;
    for k in 0..24 {
        let (i, j) = (t[1 + k % model::SEQ] as usize, (k * 11) % model::D);
        let i = if k % 3 == 0 { (i * 31 + k) % model::VOCAB } else { i };
        let w0 = p.unembed[i][j];
        p.unembed[i][j] = w0 + h;
        let lp = model::loss(&p, &t, &mut ws2);
        p.unembed[i][j] = w0 - h;
        let lm = model::loss(&p, &t, &mut ws2);
        p.unembed[i][j] = w0;
        let fd = (lp - lm) / (2.0 * h);
        assert!(
            (fd - gh[i][j]).abs() <= 1e-7 * gmax.max(1.0),
            "d loss / d unembed[{i}][{j}]: fd {fd:e}, head {:e}",
            gh[i][j]
        );
    }
}

/// The statics' training (one test, as they are shared): refusals, the
/// first step against the generated backward plus AdamW by hand, the loss
/// decreasing, and (default model) head-only training against the
/// generated backward at the trained head.
#[test]
fn training_in_statics() {
    let t = tokens();
    assert!(matches!(train::train_step(&t), Err(Error::NotInitialized)));
    train::train_init().expect("init");
    assert!(matches!(train::train_step(&t[..SEQ_TOKENS - 1]), Err(Error::Length { .. })));
    assert!(matches!(train::train_step(&[]), Err(Error::Length { .. })));
    let mut bad = t;
    bad[3] = 300;
    assert!(matches!(train::train_step(&bad), Err(Error::Token(_))));

    // Reference: the generated backward and AdamW applied by hand.
    let mut p = embedded_f32();
    let mut ws = boxed::<Workspace<f32>>();
    let mut g = boxed::<Params<f32>>();
    let (mut m, mut v) = (boxed::<Params<f32>>(), boxed::<Params<f32>>());
    let loss0 = model::loss_and_grad(&p, &t, &mut ws, &mut g);
    train::OPTIMIZER.step(p.as_flat_mut(), g.as_flat_mut(), m.as_flat_mut(), v.as_flat_mut(), 1).expect("finite");
    let l0 = train::train_step(&t).expect("step");
    assert_eq!(l0.to_bits(), loss0.to_bits(), "first loss {l0} vs generated {loss0}");
    let mut mine = boxed::<Params<f32>>();
    train::train_weights(&mut mine).expect("weights");
    assert!(mine.as_flat() == p.as_flat(), "parameters after one step differ from the generated backward + AdamW");
    let mut last = l0;
    for _ in 0..3 {
        let l = train::train_step(&t).expect("step");
        assert!(l < last, "loss did not decrease: {l} after {last}");
        last = l;
    }
    // Two sequences at once: the mean of the two (equal) losses.
    let two: Vec<u32> = t.iter().chain(t.iter()).copied().collect();
    let l2 = train::train_loss(&two).expect("loss");
    let l1 = train::train_loss(&t).expect("loss");
    assert!(rel(f64::from(l1), f64::from(l2)) < 1e-6);

    #[cfg(not(feature = "deep"))]
    {
        assert!(matches!(train::head_step(&t), Err(Error::NotInitialized)));
        train::head_init().expect("head init");
        let mut last = f32::INFINITY;
        for _ in 0..4 {
            let l = train::head_step(&t).expect("head step");
            assert!(l < last, "head loss did not decrease: {l} after {last}");
            last = l;
        }
        // The body is frozen and from flash: the head-trained model is the
        // embedded one with `unembed` replaced; its loss and gradient by the
        // generated code must be the head's.
        let mut p = embedded_f32();
        let mut w = boxed::<[[f32; model::D]; model::VOCAB]>();
        train::head_weights(&mut w).expect("head weights");
        p.unembed = *w;
        let mut g = boxed::<Params<f32>>();
        let loss_ref = model::loss_and_grad(&p, &t, &mut ws, &mut g);
        let now = train::head_loss_now(&t).expect("head loss");
        assert!(rel(f64::from(now), f64::from(loss_ref)) < 1e-6, "head loss {now} vs generated {loss_ref}");
        let mut st = boxed::<model::Stream<f32>>();
        let mut h = boxed::<[[f32; model::D]; model::SEQ]>();
        train::body_hidden(&mut st, &p, &t, &mut h).expect("tokens");
        let mut row = [0f32; model::VOCAB];
        let mut gh = boxed::<[[f32; model::D]; model::VOCAB]>();
        train::head_loss_and_grad(&w, &h, &t[1..], &mut row, Some(&mut gh));
        let gmax = g.unembed.as_flattened().iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = gh.as_flattened().iter().zip(g.unembed.as_flattened()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4 * gmax, "head gradient vs generated backward: {worst:e} (max {gmax:e})");
    }
}
