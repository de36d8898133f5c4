//! Hand-computed checks of the reference interpreter in `tests/all/common/reference.rs`.
//!
//! Every expected number below is worked out in the comments from MODEL.md,
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
    RefSpec { d, heads, vocab: 3, seq_len, window, rule, composition, normalize_keys: false, periods }
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
    let mut seed = 42u64;
    let mut p = BTreeMap::new();
    let mut rand = |n: usize| (0..n).map(|_| lcg(&mut seed)).collect::<Vec<f64>>();
    p.insert("embed".to_string(), rand(vocab * d));
    for name in ["attn.wq", "attn.wk", "attn.wv", "attn.wo"] {
        p.insert(name.to_string(), rand(d * d));
    }
    p.insert("unembed".to_string(), rand(vocab * d));
    for l in 0..3 {
        for name in ["wk", "wv", "wq"] {
            p.insert(format!("mem.{l}.{name}"), rand(d * d));
        }
        for name in ["alpha", "theta", "eta"] {
            p.insert(format!("mem.{l}.w_{name}"), rand(2 * d));
            p.insert(format!("mem.{l}.b_{name}"), rand(1));
        }
    }
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
