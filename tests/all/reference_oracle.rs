//! Hand-computed checks of the reference interpreter in `tests/all/common/reference.rs`.
//!
//! Every expected number below is worked out in the comments from `docs/model.md`,
//! with weights chosen so that the arithmetic is exact or nearly so (gate
//! biases like `ln 3` make `sigmoid` equal `3/4`). The inner learning rate
//! `theta = sigmoid(w_theta . u + b_theta) / (p (|k|^2 + 1e-6))` is kept as a
//! symbol: with `w_theta = 0`, `b_theta = 0` it is [`th`]`(p, |k|^2)`.

use crate::common::reference::*;
use std::collections::BTreeMap;

const TOL: f64 = 1e-12;

fn ln3() -> f64 {
    3.0f64.ln()
}

/// `theta = sigmoid(0) / (p (|k|^2 + eps)) = 1 / (2 p (|k|^2 + 1e-6))`.
fn th(p: f64, ksq: f64) -> f64 {
    0.5 / (p * (ksq + 1e-6))
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= TOL * (1.0 + want.abs()), "{what}: got {got}, want {want}");
}

fn assert_all_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_close(*g, *w, &format!("{what}[{i}]"));
    }
}

fn spec(
    d: usize,
    heads: usize,
    seq_len: usize,
    window: usize,
    rule: Rule,
    composition: Composition,
    periods: Vec<usize>,
) -> RefSpec {
    RefSpec {
        d,
        heads,
        vocab: 3,
        seq_len,
        window,
        rule,
        composition,
        normalize_keys: false,
        periods,
        ..RefSpec::default()
    }
}

/// The attention / embedding tensors of a d = 2, V = 3 model.
fn attn_params(
    embed: [f64; 6],
    wq: [f64; 4],
    wk: [f64; 4],
    wv: [f64; 4],
    wo: [f64; 4],
    unembed: [f64; 6],
) -> BTreeMap<String, Vec<f64>> {
    let mut p = BTreeMap::new();
    p.insert("embed".to_string(), embed.to_vec());
    p.insert("attn.wq".to_string(), wq.to_vec());
    p.insert("attn.wk".to_string(), wk.to_vec());
    p.insert("attn.wv".to_string(), wv.to_vec());
    p.insert("attn.wo".to_string(), wo.to_vec());
    p.insert("unembed".to_string(), unembed.to_vec());
    p
}

/// Embedding used by the memory tests: token 0 -> [1, 0], 1 -> [0, 1], 2 -> [1, 1].
const EMBED: [f64; 6] = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
const IDENTITY: [f64; 4] = [1.0, 0.0, 0.0, 1.0];
/// logits = [z0, z1, 0].
const UNEMBED_PLAIN: [f64; 6] = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

/// Attention part for the memory tests: with window 1 the attention output is
/// `Wv h_t = h_t` whatever Wq and Wk are; Wo = I, logits = [z0, z1, 0].
fn memory_test_attn() -> BTreeMap<String, Vec<f64>> {
    attn_params(EMBED, [0.3, -0.2, 0.1, 0.5], [-0.4, 0.7, 0.2, 0.6], IDENTITY, IDENTITY, UNEMBED_PLAIN)
}

/// Memory level l of the memory tests (d = 2, normalize_keys off):
/// - Wk = I, so k = e;
/// - Wv = [[1, 2], [0, 1]], so v = [e0 + 2 e1, e1]:
///   token 0 -> v = [1, 0], token 1 -> [2, 1], token 2 -> [3, 1];
/// - Wq = [[1, 1], [0, 1]], so q = [e0 + e1, e1]:
///   token 0 -> q = [1, 0], token 1 -> [1, 1], token 2 -> [2, 1];
/// - alpha = sigmoid(ln3 * v1): token 0 -> 1/2, tokens 1 and 2 -> 3/4;
/// - theta = sigmoid(0) / (p (|k|^2 + eps)) = th(p, |k|^2): tokens 0 and 1
///   have |k|^2 = 1, token 2 has |k|^2 = 2;
/// - titans: eta = sigmoid(-ln3 * v0): token 0 -> 1/4, token 1 -> 1/(1+9) = 1/10.
fn add_memory_level(p: &mut BTreeMap<String, Vec<f64>>, l: usize, titans: bool) {
    let mut put = |name: &str, v: Vec<f64>| {
        p.insert(format!("mem.{l}.{name}"), v);
    };
    put("wk", IDENTITY.to_vec());
    put("wv", vec![1.0, 2.0, 0.0, 1.0]);
    put("wq", vec![1.0, 1.0, 0.0, 1.0]);
    put("w_alpha", vec![0.0, 0.0, 0.0, ln3()]);
    put("b_alpha", vec![0.0]);
    put("w_theta", vec![0.0; 4]);
    put("b_theta", vec![0.0]);
    if titans {
        put("w_eta", vec![0.0, 0.0, -ln3(), 0.0]);
        put("b_eta", vec![0.0]);
    }
}

fn memory_params(levels: usize, titans: bool) -> BTreeMap<String, Vec<f64>> {
    let mut p = memory_test_attn();
    for l in 0..levels {
        add_memory_level(&mut p, l, titans);
    }
    p
}

fn state(m: [f64; 4], g: [f64; 4], s: [f64; 4], n: usize) -> LevelState {
    LevelState { m: m.to_vec(), g: g.to_vec(), s: s.to_vec(), w: vec![0.0; 4], n }
}

fn assert_state(got: &LevelState, want: &LevelState, what: &str) {
    assert_all_close(&got.m, &want.m, &format!("{what}.m"));
    assert_all_close(&got.g, &want.g, &format!("{what}.g"));
    assert_all_close(&got.s, &want.s, &format!("{what}.s"));
    assert_all_close(&got.w, &want.w, &format!("{what}.w"));
    assert_eq!(got.n, want.n, "{what}.n");
}

const Z4: [f64; 4] = [0.0; 4];

// ---------------------------------------------------------------------------
// (a) Attention only.
// ---------------------------------------------------------------------------

/// d = 2, heads = 2 (hd = 1), V = 3, T = 3, W = 2, composition none.
/// E rows: [1,0], [0,1], [1,1]; Wq = ln3 I, Wk = I, Wv = diag(2, 4),
/// Wo = [[1,1],[0,1]], U = [[1,0],[0,1],[1,-1]]; tokens 1 2 0 | 1.
///
/// h_0 = [0,1], h_1 = [1,1], h_2 = [1,0];
/// Q = ln3 h, K = h, Vv_0 = [0,4], Vv_1 = [2,4], Vv_2 = [2,0].
/// Head 0 (component 0), scores Q^0 K^0 / sqrt(1):
///   t=0: tau {0}: a = Vv_0[0] = 0.
///   t=1: tau {0,1}: s = ln3*0 = 0, ln3*1 = ln3 -> weights 1/4, 3/4
///        -> a = 1/4*0 + 3/4*2 = 1.5.
///   t=2: tau {1,2} (tau 0 outside the window): s = ln3, ln3 -> 1/2, 1/2
///        -> a = (2 + 2)/2 = 2.
/// Head 1 (component 1):
///   t=0: a = Vv_0[1] = 4.
///   t=1: s = ln3*1, ln3*1 -> equal -> a = (4 + 4)/2 = 4.
///   t=2: Q^1 = 0 -> equal -> a = (Vv_1[1] + Vv_2[1])/2 = (4 + 0)/2 = 2.
/// a_0 = [0,4], a_1 = [1.5,4], a_2 = [2,2].
/// z = Wo a = [a0 + a1, a1]: [4,4], [5.5,4], [4,2].
/// logits = [z0, z1, z0 - z1]: [4,4,0], [5.5,4,1.5], [4,2,2].
/// Targets 2, 0, 1:
///   t=0: -log(e^0 / (2e^4 + 1)) = ln(2e^4 + 1)
///   t=1: -log(e^5.5 / (e^5.5 + e^4 + e^1.5)) = ln(1 + e^-1.5 + e^-4)
///   t=2: -log(e^2 / (e^4 + 2e^2)) = ln(e^2 + 2)
#[test]
fn a_attention_only_two_heads() {
    let s = spec(2, 2, 3, 2, Rule::Delta, Composition::None, vec![]);
    let p = attn_params(
        EMBED,
        [ln3(), 0.0, 0.0, ln3()],
        IDENTITY,
        [2.0, 0.0, 0.0, 4.0],
        [1.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 1.0, 1.0, -1.0],
    );
    let tr = forward_trace(&s, &p, &[1, 2, 0, 1], None, true);
    assert_all_close(&tr.attn[0], &[0.0, 4.0], "a_0");
    assert_all_close(&tr.attn[1], &[1.5, 4.0], "a_1");
    assert_all_close(&tr.attn[2], &[2.0, 2.0], "a_2");
    let out = &tr.output;
    assert_all_close(&out.logits[0], &[4.0, 4.0, 0.0], "logits_0");
    assert_all_close(&out.logits[1], &[5.5, 4.0, 1.5], "logits_1");
    assert_all_close(&out.logits[2], &[4.0, 2.0, 2.0], "logits_2");
    let e = std::f64::consts::E;
    let l0 = (2.0 * e.powi(4) + 1.0).ln();
    let l1 = (1.0 + (-1.5f64).exp() + (-4.0f64).exp()).ln();
    let l2 = (e * e + 2.0).ln();
    assert_close(out.loss, (l0 + l1 + l2) / 3.0, "loss");
    assert!(out.states.is_empty());
    // forward() agrees with forward_trace().
    let plain = forward(&s, &p, &[1, 2, 0, 1], None, true);
    assert_eq!(plain.logits, out.logits);
    assert_eq!(plain.loss, out.loss);
}

/// Same model with one head (hd = 2) and Wq = sqrt(2) ln3 I, so that
/// s = sqrt(2) ln3 (h_t . h_tau) / sqrt(2) = ln3 (h_t . h_tau):
///   t=1: h_1.h_0 = 1, h_1.h_1 = 2 -> weights 3 : 9 = 1/4, 3/4
///        -> a = 1/4 [0,4] + 3/4 [2,4] = [1.5, 4].
///   t=2: h_2.h_1 = 1, h_2.h_2 = 1 -> 1/2, 1/2 -> a = ([2,4] + [2,0])/2 = [2,2].
/// Same a as the two-head case, so the same logits and loss.
#[test]
fn a_attention_only_one_head_scales_by_sqrt_hd() {
    let s = spec(2, 1, 3, 2, Rule::Delta, Composition::None, vec![]);
    let c = 2f64.sqrt() * ln3();
    let p = attn_params(
        EMBED,
        [c, 0.0, 0.0, c],
        IDENTITY,
        [2.0, 0.0, 0.0, 4.0],
        [1.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 1.0, 1.0, -1.0],
    );
    let tr = forward_trace(&s, &p, &[1, 2, 0, 1], None, true);
    assert_all_close(&tr.attn[0], &[0.0, 4.0], "a_0");
    assert_all_close(&tr.attn[1], &[1.5, 4.0], "a_1");
    assert_all_close(&tr.attn[2], &[2.0, 2.0], "a_2");
    assert_all_close(&tr.output.logits[1], &[5.5, 4.0, 1.5], "logits_1");
}

// ---------------------------------------------------------------------------
// (b) One delta level, period 1.
// ---------------------------------------------------------------------------

/// Delta, p = 1, tokens 0 1 | 2, composition mal, W = 1; c = th(1, 1).
/// t=0: k = [1,0], v = [1,0], q = [1,0], alpha = 1/2, theta = c, M = 0.
///   g = (M k - v) k^T = -[1,0][1,0]^T = [[-1,0],[0,0]]; G = c g.
///   fire (n+1 = 1): M = (1/2) 0 - G = [[c,0],[0,0]]; G = 0; n = 1.
///   y_0 = M q = [c,0].
/// t=1: k = [0,1], v = [2,1], q = [1,1], alpha = 3/4, theta = c.
///   M k = [0,0]; g = ([0,0] - [2,1]) [0,1]^T = [[0,-2],[0,-1]]; G = c g.
///   fire: M = (1/4) [[c,0],[0,0]] - G = [[c/4, 2c],[0, c]]; n = 2.
///   y_1 = M [1,1] = [2.25 c, c].
/// mal: h_0 = e_0 + y_0 = [1 + c, 0], h_1 = [0,1] + [2.25 c, c] = [2.25 c, 1 + c];
/// W = 1, Wv = Wo = I: z = h; logits = [h0, h1, 0].
/// Targets 1, 2: loss = (ln(e^(1+c) + 2) + ln(e^(2.25 c) + e^(1+c) + 1)) / 2.
#[test]
fn b_delta_period_one_two_tokens() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::Mal, vec![1]);
    let p = memory_params(1, false);
    let c = th(1.0, 1.0);
    let tr = forward_trace(&s, &p, &[0, 1, 2], None, true);
    assert_state(&tr.states_after[0][0], &state([c, 0.0, 0.0, 0.0], Z4, Z4, 1), "after t0");
    assert_all_close(&tr.y[0], &[c, 0.0], "y_0");
    let want = state([c / 4.0, 2.0 * c, 0.0, c], Z4, Z4, 2);
    assert_state(&tr.output.states[0], &want, "final");
    assert_all_close(&tr.y[1], &[2.25 * c, c], "y_1");
    assert_all_close(&tr.h[0], &[1.0 + c, 0.0], "h_0");
    assert_all_close(&tr.h[1], &[2.25 * c, 1.0 + c], "h_1");
    assert_all_close(&tr.output.logits[0], &[1.0 + c, 0.0, 0.0], "logits_0");
    assert_all_close(&tr.output.logits[1], &[2.25 * c, 1.0 + c, 0.0], "logits_1");
    let loss = (((1.0 + c).exp() + 2.0).ln() + ((2.25 * c).exp() + (1.0 + c).exp() + 1.0).ln()) / 2.0;
    assert_close(tr.output.loss, loss, "loss");
}

/// Same as (b) with composition mag: h = e, a = e (W = 1, Wv = I),
/// o = a * sigmoid(y): o_0 = [1 sig(c), 0 sig(0)] = [sig(c), 0],
/// o_1 = [0 sig(2.25 c), 1 sig(c)] = [0, sig(c)]; logits = [o0, o1, 0].
#[test]
fn b_delta_period_one_mag() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::Mag, vec![1]);
    let p = memory_params(1, false);
    let c = th(1.0, 1.0);
    let tr = forward_trace(&s, &p, &[0, 1, 2], None, true);
    let sig_c = 1.0 / (1.0 + (-c).exp());
    assert_all_close(&tr.h[1], &[0.0, 1.0], "h_1 = e_1");
    assert_all_close(&tr.output.logits[0], &[sig_c, 0.0, 0.0], "logits_0");
    assert_all_close(&tr.output.logits[1], &[0.0, sig_c, 0.0], "logits_1");
    assert_state(&tr.output.states[0], &state([c / 4.0, 2.0 * c, 0.0, c], Z4, Z4, 2), "final");
}

/// The theta gate reads the key half of u: w_theta = [0, ln3, 0, 0], b = 0.
/// One token 1: k = [0,1] -> theta = sigmoid(ln3) / (|k|^2 + eps) = (3/4) / (1 + 1e-6).
/// g = -v k^T = -[2,1][0,1]^T = [[0,-2],[0,-1]];
/// M = (1/4) 0 - theta g = theta [[0,2],[0,1]].
#[test]
fn b_theta_gate_reads_key_half() {
    let s = spec(2, 1, 1, 1, Rule::Delta, Composition::Mag, vec![1]);
    let mut p = memory_params(1, false);
    p.insert("mem.0.w_theta".into(), vec![0.0, ln3(), 0.0, 0.0]);
    p.insert("mem.0.b_theta".into(), vec![0.0]);
    let out = forward(&s, &p, &[1, 0], None, true);
    let theta = 0.75 / (1.0 + 1e-6);
    assert_all_close(&out.states[0].m, &[0.0, 2.0 * theta, 0.0, theta], "M");
}

/// The inner learning rate is divided by the period and by |k|^2 + eps
/// (raw keys): Wk = 3 I, one token 2 (e = [1,1], k = [3,3], |k|^2 = 18),
/// p = 1, v = [3,1]: theta = (1/2) / (18 + 1e-6), g = -v k^T (M = 0),
/// M = (1 - 3/4) 0 - theta g = theta [[9,9],[3,3]]. The same with p = 2
/// does not fire; it holds G = theta' g with theta' = theta / 2.
#[test]
fn b_theta_is_normalised_by_key_and_period() {
    let mut p = memory_params(1, false);
    p.insert("mem.0.wk".into(), vec![3.0, 0.0, 0.0, 3.0]);
    let theta = 0.5 / (18.0 + 1e-6);
    let s = spec(2, 1, 1, 1, Rule::Delta, Composition::Mal, vec![1]);
    let out = forward(&s, &p, &[2, 0], None, true);
    assert_all_close(&out.states[0].m, &[9.0 * theta, 9.0 * theta, 3.0 * theta, 3.0 * theta], "M, p = 1");
    let s = spec(2, 1, 1, 1, Rule::Delta, Composition::Mal, vec![2]);
    let out = forward(&s, &p, &[2, 0], None, true);
    let h = theta / 2.0;
    assert_state(&out.states[0], &state(Z4, [-9.0 * h, -9.0 * h, -3.0 * h, -3.0 * h], Z4, 1), "p = 2");
}

// ---------------------------------------------------------------------------
// (c) Period 2.
// ---------------------------------------------------------------------------

/// Delta, p = 2, tokens 0 1 0 | 0; c = th(2, 1) (theta is divided by p).
/// t=0: G = c g = [[-c,0],[0,0]] (g as in (b)); (n+1) = 1 not a multiple
///   of 2: no fire, M = 0, n = 1; y_0 = 0.
/// t=1: g against the frozen M = 0: ([0,0] - [2,1]) [0,1]^T = [[0,-2],[0,-1]];
///   G = c [[-1,-2],[0,-1]]; (n+1) = 2: fire, alpha = 3/4:
///   M = (1/4) 0 - G = c [[1,2],[0,1]]; G = 0; n = 2; y_1 = M [1,1] = [3c, c].
/// t=2: k = [1,0], v = [1,0]: M k - v = [c - 1, 0], so G = c (c - 1) [[1,0],[0,0]];
///   (n+1) = 3: no fire; n = 3; y_2 = M [1,0] = [c, 0].
#[test]
fn c_period_two_fires_on_second_token() {
    let s = spec(2, 1, 3, 1, Rule::Delta, Composition::Mal, vec![2]);
    let p = memory_params(1, false);
    let c = th(2.0, 1.0);
    let tr = forward_trace(&s, &p, &[0, 1, 0, 0], None, true);
    assert_state(&tr.states_after[0][0], &state(Z4, [-c, 0.0, 0.0, 0.0], Z4, 1), "after t0 (no fire)");
    assert_all_close(&tr.y[0], &[0.0, 0.0], "y_0");
    let m = [c, 2.0 * c, 0.0, c];
    assert_state(&tr.states_after[1][0], &state(m, Z4, Z4, 2), "after t1 (fire)");
    assert_all_close(&tr.y[1], &[3.0 * c, c], "y_1");
    assert_state(&tr.output.states[0], &state(m, [c * (c - 1.0), 0.0, 0.0, 0.0], Z4, 3), "after t2 (no fire)");
    assert_all_close(&tr.y[2], &[c, 0.0], "y_2");
}

/// A carried state continues its n. Carry {M = [[1,2],[0,1]], G = 0, n = 3}
/// and feed token 1: k = [0,1], v = [2,1], M k - v = [2,1] - [2,1] = 0.
/// n + 1 = 4 is a multiple of 2: fire, M = (1 - 3/4) M - 0 = M / 4.
/// With n = 2 carried instead, n + 1 = 3: no fire, M unchanged.
#[test]
fn c_carried_n_continues() {
    let s = spec(2, 1, 1, 1, Rule::Delta, Composition::Mal, vec![2]);
    let p = memory_params(1, false);
    let m = [1.0, 2.0, 0.0, 1.0];
    let fires = forward(&s, &p, &[1, 0], Some(&[state(m, Z4, Z4, 3)]), true);
    assert_state(&fires.states[0], &state([0.25, 0.5, 0.0, 0.25], Z4, Z4, 4), "n=3 fires");
    let holds = forward(&s, &p, &[1, 0], Some(&[state(m, Z4, Z4, 2)]), true);
    assert_state(&holds.states[0], &state(m, Z4, Z4, 3), "n=2 holds");
}

// ---------------------------------------------------------------------------
// (d) Titans momentum.
// ---------------------------------------------------------------------------

/// Titans, p = 1, tokens 0 1 0 | 2. eta_0 = 1/4, eta_1 = 1/10; c = th(1, 1).
/// Each token: G' = G + theta r k^T (r = M k - v), W' = W + theta (1 - eta)
/// v k^T; a fire sets M <- (1 - alpha) M - G' + eta S, S <- eta S + W',
/// G = W = 0.
/// t=0: r = -v = [-1,0]: G = c [[-1,0],[0,0]], W = (3/4) c [[1,0],[0,0]];
///   M = (1/2) 0 - G + (1/4) 0 = [[c,0],[0,0]]; S = W = [[0.75 c,0],[0,0]]; y_0 = [c,0].
/// t=1: M k = [0,0], r = [-2,-1]: G = c [[0,-2],[0,-1]], W = 0.9 c [[0,2],[0,1]];
///   M = (1/4) [[c,0],[0,0]] - G + (1/10) [[0.75 c,0],[0,0]] = c [[0.325,2],[0,1]];
///   S = (1/10) [[0.75 c,0],[0,0]] + W = c [[0.075,1.8],[0,0.9]]; y_1 = M [1,1] = [2.325 c, c].
/// t=2 (token 0, alpha = 1/2, eta = 1/4): M k = [0.325 c, 0], r = [0.325 c - 1, 0]:
///   G = [[c (0.325 c - 1), 0],[0,0]], W = (3/4) c [[1,0],[0,0]];
///   M = (1/2) c [[0.325,2],[0,1]] - G + (1/4) c [[0.075,1.8],[0,0.9]]
///     = [[1.18125 c - 0.325 c^2, 1.45 c],[0, 0.725 c]];
///   S = (1/4) c [[0.075,1.8],[0,0.9]] + W = c [[0.76875, 0.45],[0, 0.225]].
/// (Momentum on the whole surprise, S <- eta S - G', M <- (1 - alpha) M + S,
/// gives other numbers from the first fire on: S = [[c,0],[0,0]] after t=0.)
#[test]
fn d_titans_momentum_three_fires() {
    let s = spec(2, 1, 3, 1, Rule::Titans, Composition::Mal, vec![1]);
    let p = memory_params(1, true);
    let c = th(1.0, 1.0);
    let tr = forward_trace(&s, &p, &[0, 1, 0, 2], None, true);
    assert_state(&tr.states_after[0][0], &state([c, 0.0, 0.0, 0.0], Z4, [0.75 * c, 0.0, 0.0, 0.0], 1), "after t0");
    assert_all_close(&tr.y[0], &[c, 0.0], "y_0");
    let (m, s1) = ([0.325 * c, 2.0 * c, 0.0, c], [0.075 * c, 1.8 * c, 0.0, 0.9 * c]);
    assert_state(&tr.states_after[1][0], &state(m, Z4, s1, 2), "after t1");
    assert_all_close(&tr.y[1], &[2.325 * c, c], "y_1");
    let m2 = [1.18125 * c - 0.325 * c * c, 1.45 * c, 0.0, 0.725 * c];
    let s2 = [0.76875 * c, 0.45 * c, 0.0, 0.225 * c];
    assert_state(&tr.output.states[0], &state(m2, Z4, s2, 3), "after t2");
}

// ---------------------------------------------------------------------------
// (e) Hebbian sign.
// ---------------------------------------------------------------------------

/// Hebbian, p = 1, tokens 0 2 | 0; a = th(1, 1) (token 0), b = th(1, 2) (token 2).
/// t=0: g = -v k^T = -[1,0][1,0]^T; M = (1/2) 0 - a g = a v k^T = [[a,0],[0,0]].
/// t=1 (token 2): k = [1,1], v = [3,1], q = [2,1], alpha = 3/4.
///   g = -[3,1][1,1]^T = [[-3,-3],[-1,-1]];
///   M = (1/4) [[a,0],[0,0]] - b g = [[a/4 + 3b, 3b],[b, b]];
///   y_1 = M [2,1] = [a/2 + 9b, 3b].
/// The delta rule on the same tokens differs at t=1 because M k = [a,0]:
///   g = ([a,0] - [3,1]) [1,1]^T, M = [[a/4 - b (a - 3), -b (a - 3)],[b, b]].
#[test]
fn e_hebbian_sign() {
    let p = memory_params(1, false);
    let (a, b) = (th(1.0, 1.0), th(1.0, 2.0));
    let s = spec(2, 1, 2, 1, Rule::Hebbian, Composition::Mal, vec![1]);
    let tr = forward_trace(&s, &p, &[0, 2, 0], None, true);
    assert_all_close(&tr.states_after[0][0].m, &[a, 0.0, 0.0, 0.0], "M after t0");
    assert!(tr.states_after[0][0].m[0] > 0.0, "hebbian stores +v k^T");
    assert_all_close(&tr.output.states[0].m, &[a / 4.0 + 3.0 * b, 3.0 * b, b, b], "M after t1");
    assert_all_close(&tr.y[1], &[a / 2.0 + 9.0 * b, 3.0 * b], "y_1");

    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::Mal, vec![1]);
    let delta = forward(&s, &p, &[0, 2, 0], None, true);
    assert_all_close(&delta.states[0].m, &[a / 4.0 - b * (a - 3.0), -b * (a - 3.0), b, b], "delta M");
}

// ---------------------------------------------------------------------------
// (f) memory_on = false.
// ---------------------------------------------------------------------------

/// Carried M = [[1,2],[3,4]] (with some G and n): with the inner loop off the
/// state never changes, and y_t = M q_t: q_0 = [1,0] -> [1,3];
/// q_1 = [1,1] -> [3,7].
#[test]
fn f_memory_off_keeps_carried_state() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::Mal, vec![1]);
    let p = memory_params(1, false);
    let carried = [state([1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 0.0, 0.0], Z4, 5)];
    let tr = forward_trace(&s, &p, &[0, 1, 2], Some(&carried), false);
    assert_eq!(tr.states_after[0][0], carried[0]);
    assert_eq!(tr.output.states[0], carried[0]);
    assert_all_close(&tr.y[0], &[1.0, 3.0], "y_0");
    assert_all_close(&tr.y[1], &[3.0, 7.0], "y_1");
    // With the loop on, the same start state does change.
    let on = forward(&s, &p, &[0, 1, 2], Some(&carried), true);
    assert_ne!(on.states[0], carried[0]);
}

/// Without a carried state and with the loop off, y = 0, so mal gives exactly
/// the attention-only logits, and mag halves o (sigmoid(0) = 1/2).
#[test]
fn f_memory_off_from_zero_is_attention_only() {
    let tokens = [0, 1, 2, 1];
    let base =
        forward(&spec(2, 1, 3, 2, Rule::Delta, Composition::None, vec![]), &memory_test_attn(), &tokens, None, true);
    let p = memory_params(1, false);
    let mal = forward(&spec(2, 1, 3, 2, Rule::Delta, Composition::Mal, vec![1]), &p, &tokens, None, false);
    assert_eq!(mal.states[0], LevelState::zero(2));
    let mag = forward(&spec(2, 1, 3, 2, Rule::Delta, Composition::Mag, vec![1]), &p, &tokens, None, false);
    for t in 0..3 {
        assert_all_close(&mal.logits[t], &base.logits[t], "mal logits");
        let half: Vec<f64> = base.logits[t].iter().map(|x| x / 2.0).collect();
        assert_all_close(&mag.logits[t], &half, "mag logits");
    }
    assert_close(mal.loss, base.loss, "loss");
}

// ---------------------------------------------------------------------------
// (g) window = 1.
// ---------------------------------------------------------------------------

/// W = 1, two heads: every position attends only to itself, so a_t = Wv h_t
/// whatever Wq, Wk are. Wv = [[1,2],[3,4]]: a_0 = Wv [1,0] = [1,3],
/// a_1 = Wv [0,1] = [2,4], a_2 = Wv [1,1] = [3,7].
/// Wo = [[1,1],[0,1]]: z = [a0 + a1, a1] = [4,3], [6,4], [10,7].
/// U = [[1,0],[0,1],[1,-1]]: logits = [4,3,1], [6,4,2], [10,7,3].
#[test]
fn g_window_one_is_value_projection() {
    let p = attn_params(
        EMBED,
        [1.0, -1.0, 2.0, 0.5],
        [0.5, 1.0, -1.0, 2.0],
        [1.0, 2.0, 3.0, 4.0],
        [1.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 1.0, 1.0, -1.0],
    );
    let tokens = [0, 1, 2, 0];
    let s = spec(2, 2, 3, 1, Rule::Delta, Composition::None, vec![]);
    let tr = forward_trace(&s, &p, &tokens, None, true);
    assert_all_close(&tr.attn[0], &[1.0, 3.0], "a_0");
    assert_all_close(&tr.attn[1], &[2.0, 4.0], "a_1");
    assert_all_close(&tr.attn[2], &[3.0, 7.0], "a_2");
    assert_all_close(&tr.output.logits[0], &[4.0, 3.0, 1.0], "logits_0");
    assert_all_close(&tr.output.logits[1], &[6.0, 4.0, 2.0], "logits_1");
    assert_all_close(&tr.output.logits[2], &[10.0, 7.0, 3.0], "logits_2");
    // A wider window mixes in earlier values.
    let wide = spec(2, 2, 3, 3, Rule::Delta, Composition::None, vec![]);
    let tr3 = forward_trace(&wide, &p, &tokens, None, true);
    assert!((tr3.attn[2][0] - 3.0).abs() > 1e-3);
}

// ---------------------------------------------------------------------------
// Further checks.
// ---------------------------------------------------------------------------

/// n(z) = z / sqrt(|z|^2 + 1e-6). Wk = Wq = diag(3, 4), token 2 (e = [1,1]):
/// raw k = raw q = [3,4], c = 1/sqrt(25 + 1e-6), k = q = [3c, 4c]; v = [3,1].
/// Delta, p = 1, alpha = 3/4, |k|^2 = 25 c^2, theta = th(1, 25 c^2), M = 0:
///   M = -theta (0 - v) k^T = theta v k^T = theta [[9c, 12c], [3c, 4c]];
///   y = M q = theta v (k.q) = theta v 25 c^2.
#[test]
fn normalize_keys_uses_eps() {
    let mut s = spec(2, 1, 1, 1, Rule::Delta, Composition::Mal, vec![1]);
    s.normalize_keys = true;
    let mut p = memory_params(1, false);
    p.insert("mem.0.wk".into(), vec![3.0, 0.0, 0.0, 4.0]);
    p.insert("mem.0.wq".into(), vec![3.0, 0.0, 0.0, 4.0]);
    let tr = forward_trace(&s, &p, &[2, 0], None, true);
    let c = 1.0 / (25.0f64 + 1e-6).sqrt();
    let theta = th(1.0, 25.0 * c * c);
    let m = [9.0 * c * theta, 12.0 * c * theta, 3.0 * c * theta, 4.0 * c * theta];
    assert_all_close(&tr.output.states[0].m, &m, "M");
    assert_all_close(&tr.y[0], &[75.0 * c * c * theta, 25.0 * c * c * theta], "y_0");
    // Unit-length vectors are not quite fixed points: the eps shows.
    assert!((tr.y[0][0] - 3.0 * theta).abs() > 1e-8);
}

/// y = (1/sqrt(L)) sum_l y^l. Level 0 (p = 1) as in (b), level 1 (p = 2) as
/// in (c), same weights (a = th(1, 1), c = th(2, 1)): y_0 = ([a,0] + [0,0]) / sqrt2,
/// y_1 = ([2.25 a, a] + [3c, c]) / sqrt2.
#[test]
fn two_levels_scale_by_inverse_sqrt_l() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::Mal, vec![1, 2]);
    let p = memory_params(2, false);
    let (a, c) = (th(1.0, 1.0), th(2.0, 1.0));
    let tr = forward_trace(&s, &p, &[0, 1, 2], None, true);
    let r2 = 2f64.sqrt();
    assert_all_close(&tr.y[0], &[a / r2, 0.0], "y_0");
    assert_all_close(&tr.y[1], &[(2.25 * a + 3.0 * c) / r2, (a + c) / r2], "y_1");
    assert_all_close(&tr.output.states[0].m, &[a / 4.0, 2.0 * a, 0.0, a], "M level 0");
    assert_all_close(&tr.output.states[1].m, &[c, 2.0 * c, 0.0, c], "M level 1");
}

/// Deterministic pseudo-random numbers in [-1, 1).
fn lcg(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// The memory states depend only on the tokens, so running 6 tokens at once
/// or 3 + 3 with the state carried must end in the same states.
#[test]
fn carried_state_splits_sequence() {
    let d = 4;
    let vocab = 5;
    let p = random_plain_params(42, 3);
    let mk = |seq_len: usize| RefSpec {
        d,
        heads: 2,
        vocab,
        seq_len,
        window: 2,
        rule: Rule::Titans,
        composition: Composition::Mag,
        normalize_keys: true,
        periods: vec![1, 2, 3],
        ..RefSpec::default()
    };
    let tokens = [3u32, 1, 4, 1, 0, 2, 4];
    let full = forward(&mk(6), &p, &tokens, None, true);
    let first = forward(&mk(3), &p, &tokens[..4], None, true);
    let second = forward(&mk(3), &p, &tokens[3..], Some(&first.states), true);
    for l in 0..3 {
        assert_state(&second.states[l], &full.states[l], &format!("level {l}"));
        assert_eq!(full.states[l].n, 6);
    }
    assert!(full.loss.is_finite());
}

/// Huge logits do not overflow the loss: logits [1000, 0, -1000] with target
/// 0 give a loss of ln(1 + e^-1000 + e^-2000) = 0 (to f64 precision).
#[test]
fn loss_is_stable_for_large_logits() {
    let s = spec(2, 1, 1, 1, Rule::Delta, Composition::None, vec![]);
    let p = attn_params(EMBED, IDENTITY, IDENTITY, IDENTITY, IDENTITY, [1000.0, 0.0, 0.0, 0.0, -1000.0, 0.0]);
    let out = forward(&s, &p, &[0, 0], None, true);
    assert_all_close(&out.logits[0], &[1000.0, 0.0, -1000.0], "logits");
    assert_close(out.loss, 0.0, "loss");
    let out = forward(&s, &p, &[0, 2], None, true);
    assert_close(out.loss, 2000.0, "loss to the -1000 logit");
}

#[test]
#[should_panic(expected = "missing tensor `mem.0.b_eta`")]
fn panics_on_missing_tensor() {
    let s = spec(2, 1, 2, 1, Rule::Titans, Composition::Mal, vec![1]);
    let mut p = memory_params(1, true);
    p.remove("mem.0.b_eta");
    forward(&s, &p, &[0, 1, 2], None, true);
}

#[test]
#[should_panic(expected = "tensor `attn.wo` has 3 values, expected 4")]
fn panics_on_wrong_length() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::None, vec![]);
    let mut p = memory_test_attn();
    p.insert("attn.wo".into(), vec![1.0, 0.0, 0.0]);
    forward(&s, &p, &[0, 1, 2], None, true);
}

#[test]
#[should_panic(expected = "unexpected tensors")]
fn panics_on_unexpected_tensor() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::Mal, vec![1]);
    let p = memory_params(1, true); // has w_eta / b_eta, which delta does not use
    forward(&s, &p, &[0, 1, 2], None, true);
}

#[test]
#[should_panic(expected = "expected seq_len + 1 = 3 tokens, got 2")]
fn panics_on_wrong_token_count() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::None, vec![]);
    forward(&s, &memory_test_attn(), &[0, 1], None, true);
}

#[test]
#[should_panic(expected = "out of range for vocab")]
fn panics_on_token_out_of_range() {
    let s = spec(2, 1, 2, 1, Rule::Delta, Composition::None, vec![]);
    forward(&s, &memory_test_attn(), &[0, 1, 3], None, true);
}

// ---------------------------------------------------------------------------
// Blocks: layers, residual stream, norms, MLP, positions, tied embeddings.
// ---------------------------------------------------------------------------

/// A d = 2, V = 3 spec with no memory and every block key at its default,
/// for the block tests to switch on what they look at.
fn bspec(heads: usize, seq_len: usize, window: usize) -> RefSpec {
    RefSpec { d: 2, heads, vocab: 3, seq_len, window, normalize_keys: false, ..RefSpec::default() }
}

/// Attention tensors of block `b` under the `blocks.{b}.` names.
fn put_block_attn(
    p: &mut BTreeMap<String, Vec<f64>>,
    b: usize,
    wq: [f64; 4],
    wk: [f64; 4],
    wv: [f64; 4],
    wo: [f64; 4],
) {
    for (name, w) in [("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)] {
        p.insert(format!("blocks.{b}.attn.{name}"), w.to_vec());
    }
}

/// `embed` and `unembed` (logits = [z0, z1, 0]) plus block 0's attention with
/// `Wv = Wo = I`: with window 1 (or one token) `z_t = u_t`.
fn identity_block(embed: [f64; 6]) -> BTreeMap<String, Vec<f64>> {
    let mut p = BTreeMap::new();
    p.insert("embed".to_string(), embed.to_vec());
    p.insert("unembed".to_string(), UNEMBED_PLAIN.to_vec());
    put_block_attn(&mut p, 0, [0.3, -0.2, 0.1, 0.5], [-0.4, 0.7, 0.2, 0.6], IDENTITY, IDENTITY);
    p
}

/// `-log softmax(row)[target]`, written out for the loss checks.
fn nll(row: &[f64], target: usize) -> f64 {
    let z: f64 = row.iter().map(|x| x.exp()).sum();
    z.ln() - row[target]
}

/// (1) Two blocks, residual, no norm, no MLP, window 1 (so `a_t = Wv h_t`).
/// Block 0: Wv = [[1,2],[3,4]], Wo = I. Block 1: Wv = I, Wo = [[1,1],[0,1]].
/// Tokens 0 1 | 2, E rows [1,0], [0,1], [1,1]; logits = [x0, x1, 0].
///   t=0: x^0 = [1,0]; z^0 = Wv x^0 = [1,3]; x^1 = x^0 + z^0 = [2,3];
///        z^1 = Wo x^1 = [5,3]; x^2 = x^1 + z^1 = [7,6] = x^0 + z^0 + z^1.
///   t=1: x^0 = [0,1]; z^0 = [2,4]; x^1 = [2,5]; z^1 = [7,5]; x^2 = [9,10].
/// Loss = (nll([7,6,0], 1) + nll([9,10,0], 2)) / 2.
/// Without residual: x^1 = z^0 = [1,3], x^2 = z^1 = Wo [1,3] = [4,3] (t=0).
#[test]
fn blocks_two_layers_residual_stream() {
    let mut s = bspec(1, 2, 1);
    s.layers = 2;
    s.residual = true;
    let mut p = BTreeMap::new();
    p.insert("embed".to_string(), EMBED.to_vec());
    p.insert("unembed".to_string(), UNEMBED_PLAIN.to_vec());
    put_block_attn(&mut p, 0, [0.3, -0.2, 0.1, 0.5], [-0.4, 0.7, 0.2, 0.6], [1.0, 2.0, 3.0, 4.0], IDENTITY);
    put_block_attn(&mut p, 1, [1.0, 0.5, -0.5, 2.0], [0.2, 0.1, 0.0, 1.0], IDENTITY, [1.0, 1.0, 0.0, 1.0]);
    let tr = forward_trace(&s, &p, &[0, 1, 2], None, true);
    assert_eq!(tr.blocks.len(), 2);
    assert_all_close(&tr.blocks[0].z[0], &[1.0, 3.0], "z^0_0");
    assert_all_close(&tr.blocks[0].x_out[0], &[2.0, 3.0], "x^1_0");
    assert_all_close(&tr.blocks[1].z[0], &[5.0, 3.0], "z^1_0");
    assert_all_close(&tr.blocks[1].x_out[0], &[7.0, 6.0], "x^2_0");
    assert_all_close(&tr.blocks[1].x_out[1], &[9.0, 10.0], "x^2_1");
    assert_all_close(&tr.output.logits[0], &[7.0, 6.0, 0.0], "logits_0");
    assert_all_close(&tr.output.logits[1], &[9.0, 10.0, 0.0], "logits_1");
    let loss = (nll(&[7.0, 6.0, 0.0], 1) + nll(&[9.0, 10.0, 0.0], 2)) / 2.0;
    assert_close(tr.output.loss, loss, "loss");
    s.residual = false;
    let plain = forward(&s, &p, &[0, 1, 2], None, true);
    assert_all_close(&plain.logits[0], &[4.0, 3.0, 0.0], "logits_0 without residual");
}

/// (2a) rms norm, residual, one token, E[0] = [1,3], Wv = Wo = I.
/// norm_a.g = [2,3]: mean(x^2) = (1 + 9)/2 = 5, r = 1/sqrt(5 + 1e-5),
///   u = [2 r, 9 r]; z = u; x' = x + z = [1 + 2r, 3 + 9r] (the stream keeps the
///   un-normed x).
/// norm_f.g = [1,-1]: m = ((1 + 2r)^2 + (3 + 9r)^2) / 2,
///   N_f = [1 + 2r, -(3 + 9r)] / sqrt(m + 1e-5); logits = [N_f, 0].
#[test]
fn blocks_rms_norm_values() {
    let mut s = bspec(1, 1, 1);
    s.norm = Norm::Rms;
    s.residual = true;
    let mut p = identity_block([1.0, 3.0, 0.0, 1.0, 1.0, 1.0]);
    p.insert("blocks.0.norm_a.g".to_string(), vec![2.0, 3.0]);
    p.insert("norm_f.g".to_string(), vec![1.0, -1.0]);
    let tr = forward_trace(&s, &p, &[0, 0], None, true);
    let r = 1.0 / (5.0f64 + 1e-5).sqrt();
    assert_all_close(&tr.blocks[0].u[0], &[2.0 * r, 9.0 * r], "u");
    let (a, b) = (1.0 + 2.0 * r, 3.0 + 9.0 * r);
    assert_all_close(&tr.blocks[0].x_out[0], &[a, b], "x^1");
    let den = ((a * a + b * b) / 2.0 + 1e-5).sqrt();
    assert_all_close(&tr.final_normed[0], &[a / den, -b / den], "N_f");
    assert_all_close(&tr.output.logits[0], &[a / den, -b / den, 0.0], "logits");
}

/// (2b) layer norm, no residual, one token, E[0] = [1,3], Wv = Wo = I.
/// norm_a g = [2,3], beta = [0.5,-1]: mean 2, population variance
///   ((1-2)^2 + (3-2)^2)/2 = 1, s = 1/sqrt(1 + 1e-5): u = [-2s + 0.5, 3s - 1].
/// z = x' = u. norm_f g = [1,1], beta = [0,1]: mean(u) = (s - 0.5)/2, so
///   u - mean = [-c, c] with c = 2.5 s - 0.75, variance c^2:
///   N_f = [-c, c] / sqrt(c^2 + 1e-5) + [0, 1].
#[test]
fn blocks_layer_norm_values() {
    let mut s = bspec(1, 1, 1);
    s.norm = Norm::Layer;
    let mut p = identity_block([1.0, 3.0, 0.0, 1.0, 1.0, 1.0]);
    p.insert("blocks.0.norm_a.g".to_string(), vec![2.0, 3.0]);
    p.insert("blocks.0.norm_a.beta".to_string(), vec![0.5, -1.0]);
    p.insert("norm_f.g".to_string(), vec![1.0, 1.0]);
    p.insert("norm_f.beta".to_string(), vec![0.0, 1.0]);
    let tr = forward_trace(&s, &p, &[0, 0], None, true);
    let sc = 1.0 / (1.0f64 + 1e-5).sqrt();
    assert_all_close(&tr.blocks[0].u[0], &[-2.0 * sc + 0.5, 3.0 * sc - 1.0], "u");
    let c = 2.5 * sc - 0.75;
    let n = c / (c * c + 1e-5).sqrt();
    assert_all_close(&tr.final_normed[0], &[-n, n + 1.0], "N_f");
    assert_all_close(&tr.output.logits[0], &[-n, n + 1.0, 0.0], "logits");
}

/// The MLP tests' model: residual, no norm, one token 0 (e = [1,0]),
/// Wv = Wo = I, so z = [1,0] and x' = e + z = [2,0] = w (no norm_m).
fn mlp_case(activation: Activation, mlp: &[(&str, Vec<f64>)]) -> RefTrace {
    let mut s = bspec(1, 1, 1);
    s.residual = true;
    s.mlp = Some((2, activation));
    let mut p = identity_block(EMBED);
    for (name, w) in mlp {
        p.insert(format!("blocks.0.mlp.{name}"), w.clone());
    }
    let tr = forward_trace(&s, &p, &[0, 1], None, true);
    assert_all_close(&tr.blocks[0].mid[0], &[2.0, 0.0], "x'");
    tr
}

/// (3a) relu: w_up = [[1,0],[-1,0]] -> up = [2,-2] -> relu = [2,0] (the
/// negative unit is killed); w_down = [[1,1],[0,5]] -> f = [2, 0] (it would be
/// -10 in the second component if the unit were not killed);
/// x^1 = x' + f = [4,0]; logits [4,0,0].
#[test]
fn blocks_mlp_relu() {
    let tr = mlp_case(Activation::Relu, &[("w_up", vec![1.0, 0.0, -1.0, 0.0]), ("w_down", vec![1.0, 1.0, 0.0, 5.0])]);
    assert_all_close(&tr.blocks[0].f[0], &[2.0, 0.0], "f");
    assert_all_close(&tr.output.logits[0], &[4.0, 0.0, 0.0], "logits");
}

/// (3b) gelu (tanh form): w_up = [[1/2,0],[-1/2,0]] -> up = [1,-1].
/// gelu(1) = 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.84119199060827670478...
/// (40-digit arithmetic); gelu(-1) = -0.5 (1 - tanh(same)) = gelu(1) - 1.
/// w_down = I -> f = [g, g - 1]; x^1 = [2 + g, g - 1].
#[test]
fn blocks_mlp_gelu() {
    let g = 0.841_191_990_608_276_7;
    assert_close(gelu(1.0), g, "gelu(1)");
    assert_close(gelu(-1.0), g - 1.0, "gelu(-1)");
    let tr = mlp_case(Activation::Gelu, &[("w_up", vec![0.5, 0.0, -0.5, 0.0]), ("w_down", IDENTITY.to_vec())]);
    assert_all_close(&tr.blocks[0].f[0], &[g, g - 1.0], "f");
    assert_all_close(&tr.output.logits[0], &[2.0 + g, g - 1.0, 0.0], "logits");
}

/// (3c) swiglu: w_gate = [[ln3/2, 0],[0,0]] -> gate = [ln3, 0];
/// silu(ln3) = ln3 * sigmoid(ln3) = 3/4 ln3, silu(0) = 0.
/// w_up = [[3/2,0],[7/2,0]] -> up = [3,7]; product = [9/4 ln3, 0].
/// w_down = [[1,1],[2,0]] -> f = [9/4 ln3, 9/2 ln3]; x^1 = [2 + 9/4 ln3, 9/2 ln3].
#[test]
fn blocks_mlp_swiglu() {
    let tr = mlp_case(
        Activation::Swiglu,
        &[
            ("w_gate", vec![ln3() / 2.0, 0.0, 0.0, 0.0]),
            ("w_up", vec![1.5, 0.0, 3.5, 0.0]),
            ("w_down", vec![1.0, 1.0, 2.0, 0.0]),
        ],
    );
    assert_all_close(&tr.blocks[0].f[0], &[2.25 * ln3(), 4.5 * ln3()], "f");
    assert_all_close(&tr.output.logits[0], &[2.0 + 2.25 * ln3(), 4.5 * ln3(), 0.0], "logits");
}

/// (4) positions = bias, two heads (hd = 1), T = 2, W = 2, Wq = 0 so every
/// raw score is 0; Wv = Wo = I; tokens 0 1 | 2 (e = [1,0], [0,1]).
/// pos_bias [heads, window] = [[ln3, 0], [0, ln3]] (offset 0, offset 1).
///   t=1, head 0: s(tau=0, offset 1) = 0, s(tau=1, offset 0) = ln3 ->
///   weights 1/4, 3/4 -> a^0 = 1/4 * 1 + 3/4 * 0 = 1/4.
///   t=1, head 1: s = ln3, 0 -> weights 3/4, 1/4 -> a^1 = 3/4 * 0 + 1/4 * 1 = 1/4.
/// Without the bias both heads weigh 1/2, 1/2: a_1 = [1/2, 1/2].
#[test]
fn blocks_position_bias() {
    let mut s = bspec(2, 2, 2);
    s.positions = Positions::Bias;
    let mut p = identity_block(EMBED);
    p.insert("blocks.0.attn.wq".to_string(), vec![0.0; 4]);
    p.insert("blocks.0.attn.pos_bias".to_string(), vec![ln3(), 0.0, 0.0, ln3()]);
    let tr = forward_trace(&s, &p, &[0, 1, 2], None, true);
    let b = &tr.blocks[0];
    assert_all_close(&b.scores[1][0], &[0.0, ln3()], "scores t=1 head 0");
    assert_all_close(&b.weights[1][0], &[0.25, 0.75], "weights t=1 head 0");
    assert_all_close(&b.weights[1][1], &[0.75, 0.25], "weights t=1 head 1");
    assert_all_close(&b.weights[0][0], &[1.0], "weights t=0");
    assert_all_close(&b.attn[1], &[0.25, 0.25], "a_1");
    assert_all_close(&tr.output.logits[1], &[0.25, 0.25, 0.0], "logits_1");
    s.positions = Positions::None;
    p.remove("blocks.0.attn.pos_bias");
    let tr = forward_trace(&s, &p, &[0, 1, 2], None, true);
    assert_all_close(&tr.attn[1], &[0.5, 0.5], "a_1 without bias");
}

/// (5) rope, one head, hd = 2 (one pair, angle = pos * 10000^0 = pos),
/// T = 3, W = 3, every token 0 (e = [1,0]): Wq = [[1,0],[2,0]] -> q = [1,2],
/// Wk = [[3,0],[-1,0]] -> k = [3,-1] at every position.
/// R(a)(x,y) = (x cos a - y sin a, x sin a + y cos a); R(t) q . R(tau) k =
/// q . R(tau - t) k. With a = t - tau, R(-a) k = (3 cos a - sin a,
/// -3 sin a - cos a), so q . R(-a) k = 3 cos a - sin a - 6 sin a - 2 cos a
/// = cos a - 7 sin a, and the score is (cos a - 7 sin a) / sqrt(2).
/// Offset 0: 1/sqrt2 (= q . k / sqrt2). Scores (t, tau) = (1,0) and (2,1)
/// have the same offset: shifting both positions leaves the score unchanged.
#[test]
fn blocks_rope_scores() {
    let mut s = bspec(1, 3, 3);
    s.positions = Positions::Rope;
    let mut p = identity_block(EMBED);
    p.insert("blocks.0.attn.wq".to_string(), vec![1.0, 0.0, 2.0, 0.0]);
    p.insert("blocks.0.attn.wk".to_string(), vec![3.0, 0.0, -1.0, 0.0]);
    let tr = forward_trace(&s, &p, &[0, 0, 0, 0], None, true);
    let r2 = 2f64.sqrt();
    let score = |a: f64| (a.cos() - 7.0 * a.sin()) / r2;
    let b = &tr.blocks[0];
    assert_all_close(&b.scores[0][0], &[1.0 / r2], "scores t=0");
    assert_all_close(&b.scores[1][0], &[score(1.0), 1.0 / r2], "scores t=1");
    assert_all_close(&b.scores[2][0], &[score(2.0), score(1.0), 1.0 / r2], "scores t=2");
    assert_close(b.scores[2][0][1], b.scores[1][0][0], "shift invariance, offset 1");
    assert_close(b.scores[2][0][2], b.scores[0][0][0], "shift invariance, offset 0");
    // Without rope every score is q . k / sqrt2.
    s.positions = Positions::None;
    let tr = forward_trace(&s, &p, &[0, 0, 0, 0], None, true);
    assert_all_close(&tr.blocks[0].scores[2][0], &[1.0 / r2; 3], "scores without rope");
    // hd = 4: the second pair turns at 10000^(-2/4) = 1/100 per position.
    let x = rope(&[1.0, 0.0, 1.0, 0.0], 1, 3);
    assert_all_close(&x, &[3f64.cos(), 3f64.sin(), 0.03f64.cos(), 0.03f64.sin()], "rope hd = 4");
    // Two heads of hd = 2: each head's pair turns by the position.
    let x = rope(&[1.0, 0.0, 0.0, 1.0], 2, 1);
    assert_all_close(&x, &[1f64.cos(), 1f64.sin(), -1f64.sin(), 1f64.cos()], "rope two heads");
}

/// (6) tie_embeddings: logits = E z. One token 0 (e = [1,0]), window 1,
/// Wv = [[1,2],[3,4]], Wo = I: z = [1,3]; E rows [1,0], [0,1], [1,1]:
/// logits = [1, 3, 4]; target 2: loss = nll([1,3,4], 2).
#[test]
fn blocks_tied_embeddings() {
    let mut s = bspec(1, 1, 1);
    s.tie_embeddings = true;
    let mut p = identity_block(EMBED);
    p.remove("unembed");
    p.insert("blocks.0.attn.wv".to_string(), vec![1.0, 2.0, 3.0, 4.0]);
    let out = forward(&s, &p, &[0, 2], None, true);
    assert_all_close(&out.logits[0], &[1.0, 3.0, 4.0], "logits");
    assert_close(out.loss, nll(&[1.0, 3.0, 4.0], 2), "loss");
}

#[test]
#[should_panic(expected = "unexpected tensors")]
fn blocks_tied_embeddings_rejects_unembed() {
    let mut s = bspec(1, 1, 1);
    s.tie_embeddings = true;
    forward(&s, &identity_block(EMBED), &[0, 2], None, true);
}

/// Random d = 4, V = 5 parameters under the first version's names, with
/// `levels` titans levels.
fn random_plain_params(seed: u64, levels: usize) -> BTreeMap<String, Vec<f64>> {
    let (d, vocab) = (4, 5);
    let mut seed = seed;
    let mut p = BTreeMap::new();
    let mut rand = |n: usize| (0..n).map(|_| lcg(&mut seed)).collect::<Vec<f64>>();
    p.insert("embed".to_string(), rand(vocab * d));
    for name in ["attn.wq", "attn.wk", "attn.wv", "attn.wo"] {
        p.insert(name.to_string(), rand(d * d));
    }
    p.insert("unembed".to_string(), rand(vocab * d));
    for l in 0..levels {
        for name in ["wk", "wv", "wq"] {
            p.insert(format!("mem.{l}.{name}"), rand(d * d));
        }
        for name in ["alpha", "theta", "eta"] {
            p.insert(format!("mem.{l}.w_{name}"), rand(2 * d));
            p.insert(format!("mem.{l}.b_{name}"), rand(1));
        }
    }
    p
}

/// The same parameters under the `blocks.0.` names.
fn with_block0_names(p: &BTreeMap<String, Vec<f64>>) -> BTreeMap<String, Vec<f64>> {
    p.iter()
        .map(|(k, v)| {
            let name = if k == "embed" || k == "unembed" { k.clone() } else { format!("blocks.0.{k}") };
            (name, v.clone())
        })
        .collect()
}

fn plain_spec() -> RefSpec {
    RefSpec {
        d: 4,
        heads: 2,
        vocab: 5,
        seq_len: 6,
        window: 3,
        rule: Rule::Titans,
        composition: Composition::Mag,
        normalize_keys: true,
        periods: vec![1, 2],
        ..RefSpec::default()
    }
}

/// FNV-1a over the bits of the logits, the loss and every state matrix.
fn fingerprint(out: &RefOutput) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |x: f64| {
        for byte in x.to_bits().to_le_bytes() {
            h ^= byte as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    };
    for row in &out.logits {
        row.iter().for_each(|x| eat(*x));
    }
    eat(out.loss);
    for st in &out.states {
        st.m.iter().chain(&st.g).chain(&st.s).chain(&st.w).for_each(|x| eat(*x));
    }
    h
}

/// (7) Every block key at its default computes bit for bit what the
/// interpreter computed before blocks existed. The constant below is the
/// fingerprint of that earlier interpreter's output (commit eac5b25) on this
/// model; the new one must reproduce it under the old names and under the
/// `blocks.0.` names alike.
#[test]
fn blocks_defaults_are_bit_identical_to_the_first_version() {
    const BEFORE: u64 = 0x33cd_70ac_e5b1_334e;
    let s = plain_spec();
    assert!(s.is_one_plain_block());
    let p = random_plain_params(2026, 2);
    let tokens = [3u32, 1, 4, 1, 0, 2, 4];
    let old_names = forward(&s, &p, &tokens, None, true);
    let new_names = forward(&s, &with_block0_names(&p), &tokens, None, true);
    assert_eq!(old_names.loss.to_bits(), 1.4689816960302178f64.to_bits(), "loss of the first version");
    assert_eq!(fingerprint(&old_names), BEFORE, "old names");
    assert_eq!(fingerprint(&new_names), BEFORE, "blocks.0 names");
}

#[test]
#[should_panic(expected = "missing tensor `blocks.0.attn.wk`")]
fn blocks_default_spec_rejects_mixed_names() {
    let mut p = random_plain_params(1, 2);
    let wq = p.remove("attn.wq").unwrap();
    p.insert("blocks.0.attn.wq".to_string(), wq);
    // Some `blocks.` name is present, so every name must be prefixed.
    forward(&plain_spec(), &p, &[3, 1, 4, 1, 0, 2, 4], None, true);
}

#[test]
#[should_panic(expected = "missing tensor `blocks.0.attn.wq`")]
fn blocks_two_layers_need_prefixed_names() {
    let mut s = plain_spec();
    s.layers = 2;
    forward(&s, &random_plain_params(1, 2), &[3, 1, 4, 1, 0, 2, 4], None, true);
}

#[test]
#[should_panic(expected = "missing tensor `blocks.0.norm_m.g`")]
fn blocks_mlp_with_norm_needs_norm_m() {
    let mut s = bspec(1, 1, 1);
    s.norm = Norm::Rms;
    s.mlp = Some((2, Activation::Relu));
    let mut p = identity_block(EMBED);
    p.insert("blocks.0.norm_a.g".to_string(), vec![1.0, 1.0]);
    p.insert("norm_f.g".to_string(), vec![1.0, 1.0]);
    p.insert("blocks.0.mlp.w_up".to_string(), vec![0.0; 4]);
    p.insert("blocks.0.mlp.w_down".to_string(), vec![0.0; 4]);
    forward(&s, &p, &[0, 0], None, true);
}

/// Property: with residual and two blocks, a block 1 whose `Wo` and
/// `mlp.w_down` are zero adds exactly 0 to the stream (its memory still runs),
/// so the logits equal the one-block model's. Exercised with everything on:
/// rms norms, rope, a swiglu MLP, titans levels, mag.
#[test]
fn blocks_silent_second_block_changes_nothing() {
    let (d, vocab, hidden) = (4, 5, 3);
    let mut seed = 99u64;
    let mut rand = |n: usize| (0..n).map(|_| lcg(&mut seed)).collect::<Vec<f64>>();
    let mut p = BTreeMap::new();
    p.insert("embed".to_string(), rand(vocab * d));
    p.insert("unembed".to_string(), rand(vocab * d));
    p.insert("norm_f.g".to_string(), rand(d));
    for b in 0..2 {
        let pre = format!("blocks.{b}.");
        for name in ["attn.wq", "attn.wk", "attn.wv", "attn.wo"] {
            p.insert(format!("{pre}{name}"), rand(d * d));
        }
        p.insert(format!("{pre}norm_a.g"), rand(d));
        p.insert(format!("{pre}norm_m.g"), rand(d));
        p.insert(format!("{pre}mlp.w_up"), rand(hidden * d));
        p.insert(format!("{pre}mlp.w_gate"), rand(hidden * d));
        p.insert(format!("{pre}mlp.w_down"), rand(d * hidden));
        for l in 0..2 {
            for name in ["wk", "wv", "wq"] {
                p.insert(format!("{pre}mem.{l}.{name}"), rand(d * d));
            }
            for name in ["alpha", "theta", "eta"] {
                p.insert(format!("{pre}mem.{l}.w_{name}"), rand(2 * d));
                p.insert(format!("{pre}mem.{l}.b_{name}"), rand(1));
            }
        }
    }
    p.insert("blocks.1.attn.wo".to_string(), vec![0.0; d * d]);
    p.insert("blocks.1.mlp.w_down".to_string(), vec![0.0; d * hidden]);
    let mut s = RefSpec {
        layers: 2,
        residual: true,
        norm: Norm::Rms,
        positions: Positions::Rope,
        mlp: Some((hidden, Activation::Swiglu)),
        ..plain_spec()
    };
    let tokens = [3u32, 1, 4, 1, 0, 2, 4];
    let two = forward(&s, &p, &tokens, None, true);
    s.layers = 1;
    let one_params: BTreeMap<String, Vec<f64>> =
        p.iter().filter(|(k, _)| !k.starts_with("blocks.1.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let one = forward(&s, &one_params, &tokens, None, true);
    assert_eq!(two.logits, one.logits);
    assert_eq!(two.loss, one.loss);
    // States are block-major: block 0's two levels come first.
    assert_eq!(two.states.len(), 4);
    assert_eq!(&two.states[..2], &one.states[..]);
    assert!(two.states[2].n == 6 && two.states[2].m != two.states[0].m);
}

/// Carrying the states of a two-block model across a split of the sequence
/// ends in the same (block-major) states as one pass. With window 1 the input
/// of block 1 at a position depends on that token and block 0's carried
/// memory only (attention keeps no keys across sequences), so the split is
/// exact for both blocks.
#[test]
fn blocks_carried_states_are_block_major() {
    let mut p = BTreeMap::new();
    for (k, v) in with_block0_names(&random_plain_params(5, 2)) {
        if let Some(rest) = k.strip_prefix("blocks.0.") {
            let mut w = v.clone();
            w.iter_mut().for_each(|x| *x *= 0.5);
            p.insert(format!("blocks.1.{rest}"), w);
        }
        p.insert(k, v);
    }
    let mk = |seq_len: usize| RefSpec { layers: 2, residual: true, seq_len, window: 1, ..plain_spec() };
    let tokens = [3u32, 1, 4, 1, 0, 2, 4];
    let full = forward(&mk(6), &p, &tokens, None, true);
    let first = forward(&mk(3), &p, &tokens[..4], None, true);
    let second = forward(&mk(3), &p, &tokens[3..], Some(&first.states), true);
    assert_eq!(full.states.len(), 4);
    for i in 0..4 {
        assert_state(&second.states[i], &full.states[i], &format!("state {i}"));
    }
}
