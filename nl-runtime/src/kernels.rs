//! Const-generic kernels called by generated models.
//!
//! Every size is a const generic parameter that the generated code fixes to
//! the spec's constants, so each call is monomorphised for its shapes and
//! every loop bound is known to the compiler. Matrices are nested arrays:
//! `[[S; I]; O]` is a row-major `[O, I]` weight, `[[S; D]; T]` holds one
//! `D`-vector per sequence position.
//!
//! Naming: `x` inputs, `w` weights `[out, in]`, `y` outputs; `_acc`
//! variants add into their output instead of overwriting it.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::Scalar;

/// Dot product of two `N`-vectors, summed in 16 independent lanes so it
/// vectorises (the summation order differs from a left fold).
#[inline(always)]
pub fn dot<S: Scalar, const N: usize>(a: &[S; N], b: &[S; N]) -> S {
    dot_slice(a, b)
}

/// Dot product of two equal-length slices: whole chunks of 16 in
/// lanes, one horizontal sum ([`Scalar::lane_sum`]), then the tail.
#[inline(always)]
pub fn dot_slice<S: Scalar>(a: &[S], b: &[S]) -> S {
    let (lanes, tail) = dot_lanes(a, b);
    S::lane_sum(lanes) + tail
}

/// The parts of [`dot_slice`] before its horizontal sum: the `LANES`
/// partial sums of the whole chunks and the sum of the tail, so that a
/// caller can reduce several dot products' lanes at once
/// ([`Scalar::lane_sums4`]); `lane_sum(lanes) + tail` is `dot_slice`.
#[inline(always)]
fn dot_lanes<S: Scalar>(a: &[S], b: &[S]) -> ([S; LANES], S) {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [S::ZERO; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..LANES {
            lanes[j] = x[j].mul_add(y[j], lanes[j]);
        }
    }
    let mut tail = S::ZERO;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = x.mul_add(*y, tail);
    }
    (lanes, tail)
}

/// `y += a * x` over equal-length slices.
#[inline(always)]
pub fn axpy<S: Scalar>(a: S, x: &[S], y: &mut [S]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
}

/// Lanes of the row kernels ([`matvec`], the memory's row blocks) and of
/// the softmax reductions ([`max_lanes`], [`sum_lanes`]): 16 `f32` fill one
/// AVX-512 register, two AVX or four SSE registers. (The type of
/// [`Scalar::lane_sum`] ties it to 16.)
pub(crate) const LANES: usize = 16;

crate::dispatch::dispatched! {
    /// `y = W x` for one vector: `W` is `[O, I]`. Four rows of `W` at a time
    /// share the loads of `x`; each row sums in `LANES` lanes over whole chunks
    /// of `I`, then one horizontal sum per row (the tail of `I` is added last).
    pub fn matvec[S: Scalar, const O: usize, const I: usize][S, O, I](w: &[[S; I]; O], x: &[S; I], y: &mut [S; O]) = matvec_body;
}

/// The body of [`matvec`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn matvec_body<S: Scalar, const O: usize, const I: usize>(w: &[[S; I]; O], x: &[S; I], y: &mut [S; O]) {
    let full = I / LANES * LANES;
    let mut o = 0;
    while o + 4 <= O {
        let mut acc = [[S::ZERO; LANES]; 4];
        let mut c = 0;
        while c < full {
            let xc = &x[c..c + LANES];
            for r in 0..4 {
                let wr = &w[o + r][c..c + LANES];
                for j in 0..LANES {
                    acc[r][j] = wr[j].mul_add(xc[j], acc[r][j]);
                }
            }
            c += LANES;
        }
        let sums = S::lane_sums4(&acc);
        for r in 0..4 {
            let mut tail = S::ZERO;
            for i in full..I {
                tail = w[o + r][i].mul_add(x[i], tail);
            }
            y[o + r] = sums[r] + tail;
        }
        o += 4;
    }
    while o < O {
        y[o] = dot(&w[o], x);
        o += 1;
    }
}

/// Copies embedding rows: `y[t] = table[tokens[t]]`.
///
/// # Panics
/// If a token is `>= V`.
#[inline]
pub fn embed<S: Scalar, const T: usize, const V: usize, const D: usize>(
    table: &[[S; D]; V],
    tokens: &[u32],
    y: &mut [[S; D]; T],
) {
    for (yt, &tok) in y.iter_mut().zip(tokens) {
        *yt = table[check_token::<V>(tok)];
    }
}

/// Backward of [`embed`]: `dtable[tokens[t]] += dy[t]`.
#[inline]
pub fn embed_backward_acc<S: Scalar, const T: usize, const V: usize, const D: usize>(
    dy: &[[S; D]; T],
    tokens: &[u32],
    dtable: &mut [[S; D]; V],
) {
    for (dyt, &tok) in dy.iter().zip(tokens) {
        let row = &mut dtable[check_token::<V>(tok)];
        for (r, g) in row.iter_mut().zip(dyt) {
            *r += *g;
        }
    }
}

/// Returns `tok` as an index, panicking with a clear message when it is not below `V`.
#[inline(always)]
pub fn check_token<const V: usize>(tok: u32) -> usize {
    let i = tok as usize;
    assert!(i < V, "token {tok} is out of range for a vocabulary of {V}");
    i
}

crate::dispatch::dispatched! {
    /// Sliding-window causal attention for one query position.
    ///
    /// `n` keys are visible (`1 <= n <= W`); `key(i)` and `value(i)` return the
    /// key and value `i` steps back (`i = 0` is the query's own position). Per
    /// head `h` (columns `h*HD .. (h+1)*HD`): scores `q.k / sqrt(HD)`, a softmax
    /// over the `n` keys written to `p[h][..n]`, and `out = sum_i p_i v_i`.
    pub fn attend_row['a, S: Scalar, const D: usize, const H: usize, const HD: usize, const W: usize][S, D, H, HD, W](q: &[S; D], n: usize, key: impl Fn(usize) -> &'a [S; D],
    value: impl Fn(usize) -> &'a [S; D],
    p: &mut [[S; W]; H],
    out: &mut [S; D],) = attend_row_body;
}

/// The body of [`attend_row`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn attend_row_body<'a, S: Scalar, const D: usize, const H: usize, const HD: usize, const W: usize>(
    q: &[S; D],
    n: usize,
    key: impl Fn(usize) -> &'a [S; D],
    value: impl Fn(usize) -> &'a [S; D],
    p: &mut [[S; W]; H],
    out: &mut [S; D],
) {
    attend_row_with::<S, D, H, HD, 1, W>(q, n, key, value, None, None, p, out)
}

crate::dispatch::dispatched! {
    /// Sliding-window causal attention over a whole sequence: row `t` attends to
    /// positions `max(0, t - W + 1) ..= t`. Probabilities are kept in `p` for the
    /// backward pass (`p[t][h][i]` belongs to position `t - i`).
    pub fn attention[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], p: &mut [[[S; W]; H]; T], out: &mut [[S; D]; T]) = attention_body;
}

/// The body of [`attention`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn attention_body<S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    p: &mut [[[S; W]; H]; T],
    out: &mut [[S; D]; T],
) {
    for t in 0..T {
        let n = (t + 1).min(W);
        attend_row_body::<S, D, H, HD, W>(&q[t], n, |i| &k[t - i], |i| &v[t - i], &mut p[t], &mut out[t]);
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`attention`]: from `da` (gradient of the output) adds the
    /// gradients of `q`, `k` and `v` into `dq`, `dk`, `dv`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_acc[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], p: &[[[S; W]; H]; T], da: &[[S; D]; T], dq: &mut [[S; D]; T], dk: &mut [[S; D]; T], dv: &mut [[S; D]; T]) = attention_backward_acc_body;
}

/// The body of [`attention_backward_acc`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attention_backward_acc_body<
    S: Scalar,
    const T: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const W: usize,
>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    p: &[[[S; W]; H]; T],
    da: &[[S; D]; T],
    dq: &mut [[S; D]; T],
    dk: &mut [[S; D]; T],
    dv: &mut [[S; D]; T],
) {
    attention_backward_with::<S, T, D, H, HD, W>(q, k, v, p, da, dq, dk, dv, None)
}

/// One query row of sliding-window attention, the body of [`attend_row`]
/// (no `rope`, no `bias`) and of [`attend_row_pos`] (compiled once per
/// [`Path`](crate::dispatch::Path)): the score of head columns `qh` and the
/// key `i` steps back is their dot product, or with `rope` the offset-form
/// RoPE score ([`score_lanes`]); the logit is `score * scale (+
/// bias[h][i])`. The softmax and the output are as in [`attend_row`] (same
/// padding, same passes).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row_with<
    'a,
    S: Scalar,
    const D: usize,
    const H: usize,
    const HD: usize,
    const HALF: usize,
    const W: usize,
>(
    q: &[S; D],
    n: usize,
    key: impl Fn(usize) -> &'a [S; D],
    value: impl Fn(usize) -> &'a [S; D],
    rope: RopeOffsets<'_, S, HALF, W>,
    bias: Option<&[[S; W]; H]>,
    p: &mut [[S; W]; H],
    out: &mut [S; D],
) {
    const { assert!(H * HD == D, "heads * head_dim must equal d_model") };
    debug_assert!(n >= 1 && n <= W);
    if rope.is_some() {
        assert!(HD == 2 * HALF, "RoPE needs head_dim = 2 * HALF");
    }
    let scale = S::ONE / S::from_usize(HD).sqrt();
    // The softmax passes run over `m >= n` entries, a whole number of
    // reduction lanes where the window allows: the padding scores are `-inf`,
    // whose weight `e^-inf` is exactly 0, so they change neither the sum nor
    // the result, and the passes stay on the vectorised path.
    let m = n.next_multiple_of(LANES).min(W);
    for (h, ph) in p.iter_mut().enumerate() {
        let cols = h * HD..(h + 1) * HD;
        let qh = &q[cols.clone()];
        // Four keys' lanes reduced at once (the same bits as one by one), on
        // x86-64 where the four trees share registers; elsewhere
        // `lane_sums4` is four trees anyway, and four copies of the score
        // cost a microcontroller build 8 KB of code for deep. `score_lanes`
        // is called directly: through a closure this size it was not
        // inlined, and its lanes went through memory.
        let mut i = 0;
        while cfg!(target_arch = "x86_64") && i + 4 <= n {
            let (l0, t0) = score_lanes(rope, i, qh, &key(i)[cols.clone()]);
            let (l1, t1) = score_lanes(rope, i + 1, qh, &key(i + 1)[cols.clone()]);
            let (l2, t2) = score_lanes(rope, i + 2, qh, &key(i + 2)[cols.clone()]);
            let (l3, t3) = score_lanes(rope, i + 3, qh, &key(i + 3)[cols.clone()]);
            let sums = S::lane_sums4(&[l0, l1, l2, l3]);
            ph[i] = (sums[0] + t0) * scale;
            ph[i + 1] = (sums[1] + t1) * scale;
            ph[i + 2] = (sums[2] + t2) * scale;
            ph[i + 3] = (sums[3] + t3) * scale;
            i += 4;
        }
        while i < n {
            let (lanes, tail) = score_lanes(rope, i, qh, &key(i)[cols.clone()]);
            ph[i] = (S::lane_sum(lanes) + tail) * scale;
            i += 1;
        }
        if let Some(b) = bias {
            for (pi, &bi) in ph.iter_mut().zip(&b[h]).take(n) {
                *pi += bi;
            }
        }
        ph[n..m].fill(S::from_f64(f64::NEG_INFINITY));
    }
    // The softmax and the output run phase by phase over all heads, not
    // head after head: each phase has a chain of dependent operations per
    // head (the maximum and the sum over the keys, the output's
    // multiply-adds over the keys), and the heads' chains are independent,
    // so side by side they overlap. Each head's operations and their order
    // are those of a softmax and an output computed head by head.
    let mut mx = [S::ZERO; H];
    for (mh, ph) in mx.iter_mut().zip(p.iter()) {
        *mh = max_lanes(&ph[..m]);
    }
    for (ph, &mh) in p.iter_mut().zip(&mx) {
        for pi in ph[..m].iter_mut() {
            *pi = (*pi - mh).exp();
        }
    }
    let mut inv = [S::ZERO; H];
    for (ih, ph) in inv.iter_mut().zip(p.iter()) {
        *ih = S::ONE / sum_lanes(&ph[..m]);
    }
    for (ph, &ih) in p.iter_mut().zip(&inv) {
        for pi in ph[..m].iter_mut() {
            *pi *= ih;
        }
        ph[m..].fill(S::ZERO);
    }
    // out_h = sum_i p_hi v_i (head h's columns), a multiply-add per key in
    // order of `i` from zero, for every head at once.
    out.fill(S::ZERO);
    for i in 0..n {
        let v = value(i);
        for (h, ph) in p.iter().enumerate() {
            let cols = h * HD..(h + 1) * HD;
            axpy(ph[i], &v[cols.clone()], &mut out[cols]);
        }
    }
}

/// The offset-form RoPE tables of the streaming attention, `(cos, sin)`
/// indexed by the offset (see [`attend_row_pos`]), or `None` without RoPE.
type RopeOffsets<'a, S, const HALF: usize, const W: usize> = Option<(&'a [[S; HALF]; W], &'a [[S; HALF]; W])>;

/// The score of key `i` (offset `i`) for one head as [`dot_lanes`] parts:
/// the plain dot product, or with `rope` the offset-form RoPE score
/// ([`rope_offset_lanes`]).
#[inline(always)]
fn score_lanes<S: Scalar, const HALF: usize, const W: usize>(
    rope: RopeOffsets<'_, S, HALF, W>,
    i: usize,
    qh: &[S],
    kh: &[S],
) -> ([S; LANES], S) {
    match rope {
        None => dot_lanes(qh, kh),
        Some((cos, sin)) => rope_offset_lanes(qh, kh, &cos[i], &sin[i]),
    }
}

/// The RoPE score of one head in offset form: for each pair
/// `(x, y) = (2j, 2j + 1)`, `c_j (qx kx + qy ky) + s_j (qx ky - qy kx)`,
/// which is `(R(t w) q) . (R(tau w) k)` for `c_j = cos(o w_j)`,
/// `s_j = sin(o w_j)`, `o = t - tau`. Returned as [`dot_lanes`] parts
/// (no tail): element `e` of the head adds `q_e (c k_e + s k'_e)` to lane
/// `e mod LANES`, where `k'` is `k` with each pair swapped and its new
/// second element negated (`k'_2j = k_2j+1`, `k'_2j+1 = -k_2j`), so
/// `x` adds `qx (c kx + s ky)` and `y` adds `qy (c ky - s kx)`, whose sum is
/// the pair's term. Element by element in lanes, the loop vectorises; the
/// first form, one running sum over the pairs, was a chain of `HD`
/// dependent multiply-adds per key, which bounded the deep model's
/// streaming step.
#[inline(always)]
fn rope_offset_lanes<S: Scalar, const HALF: usize>(
    qh: &[S],
    kh: &[S],
    c: &[S; HALF],
    s: &[S; HALF],
) -> ([S; LANES], S) {
    debug_assert!(qh.len() == 2 * HALF && kh.len() == 2 * HALF);
    /// The term of element `e` of a chunk, added to lane `e`.
    #[inline(always)]
    fn term<S: Scalar>(q: &[S], k: &[S], c: &[S], s: &[S], e: usize, lane: S) -> S {
        let swapped = if e.is_multiple_of(2) { k[e + 1] } else { -k[e - 1] };
        q[e].mul_add(c[e / 2].mul_add(k[e], s[e / 2] * swapped), lane)
    }
    let mut lanes = [S::ZERO; LANES];
    // Whole chunks of `LANES` elements (`LANES / 2` pairs) as fixed-size
    // arrays, so the element loop unrolls and vectorises; then the tail.
    let full = 2 * HALF / LANES * LANES;
    let mut o = 0;
    while o < full {
        let q: &[S; LANES] = qh[o..o + LANES].try_into().expect("a whole chunk");
        let k: &[S; LANES] = kh[o..o + LANES].try_into().expect("a whole chunk");
        let cc: &[S; LANES / 2] = c[o / 2..o / 2 + LANES / 2].try_into().expect("a whole chunk");
        let sc: &[S; LANES / 2] = s[o / 2..o / 2 + LANES / 2].try_into().expect("a whole chunk");
        for e in 0..LANES {
            lanes[e] = term(q, k, cc, sc, e, lanes[e]);
        }
        o += LANES;
    }
    let (q, k, cc, sc) = (&qh[full..], &kh[full..], &c[full / 2..], &s[full / 2..]);
    for e in 0..2 * HALF - full {
        lanes[e] = term(q, k, cc, sc, e, lanes[e]);
    }
    (lanes, S::ZERO)
}

crate::dispatch::dispatched! {
    /// Sliding-window causal attention for one query position with positions:
    /// the streaming form of [`attention_bias`] and of RoPE attention.
    ///
    /// As [`attend_row`] (`n` visible keys, `key(i)`/`value(i)` the key and
    /// value `i` steps back, probabilities to `p[h][i]`, zeros past `n`), with
    /// the logit of head `h` and offset `i`
    /// `score(q, key(i)) / sqrt(HD) + bias[h][i]` (no bias term if `bias` is
    /// `None`), where `score` is:
    /// - `rope = None`: the plain dot product of the head's columns;
    /// - `rope = Some((cos, sin))`, tables indexed by the OFFSET `i`
    ///   ([`rope_table`](crate::positions::rope_table) with `start = 0`,
    ///   `N = W`), keys and query UNROTATED: per pair `(x, y) = (2j, 2j + 1)` of
    ///   the head, `cos[i][j] (qx kx + qy ky) + sin[i][j] (qx ky - qy kx)`. This
    ///   equals the dot product of the query rotated at its position `t` and the
    ///   key rotated at `t - i` for every `t`, and involves no absolute
    ///   position, so it keeps full precision on an unbounded stream.
    ///
    /// `HALF` is only used by `rope` (pass `HD / 2`; with `rope = None` any
    /// value works).
    ///
    /// # Panics
    /// If `rope` is given and `HD != 2 * HALF`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn attend_row_pos['a, S: Scalar, const D: usize, const H: usize, const HD: usize, const HALF: usize, const W: usize][S, D, H, HD, HALF, W](q: &[S; D], n: usize, key: impl Fn(usize) -> &'a [S; D],
    value: impl Fn(usize) -> &'a [S; D],
    rope: Option<(&[[S; HALF]; W], &[[S; HALF]; W])>,
    bias: Option<&[[S; W]; H]>,
    p: &mut [[S; W]; H],
    out: &mut [S; D],) = attend_row_with;
}

crate::dispatch::dispatched! {
    /// [`attention`] with a learned position bias: the logit of query `t`,
    /// head `h`, key `t - i` is `q.k / sqrt(HD) + bias[h][i]` (`i` the offset,
    /// `0..W`). Probabilities are kept in `p` as in [`attention`]. For RoPE,
    /// rotate `q` and `k` first ([`rope_apply`](crate::positions::rope_apply));
    /// without a bias, use [`attention`].
    pub fn attention_bias[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], bias: &[[S; W]; H], p: &mut [[[S; W]; H]; T], out: &mut [[S; D]; T]) = attention_bias_body;
}

/// The body of [`attention_bias`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn attention_bias_body<S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    bias: &[[S; W]; H],
    p: &mut [[[S; W]; H]; T],
    out: &mut [[S; D]; T],
) {
    for t in 0..T {
        let n = (t + 1).min(W);
        attend_row_with::<S, D, H, HD, 1, W>(
            &q[t],
            n,
            |i| &k[t - i],
            |i| &v[t - i],
            None,
            Some(bias),
            &mut p[t],
            &mut out[t],
        );
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`attention_bias`]: from `da` adds the gradients of `q`,
    /// `k`, `v` and the bias into `dq`, `dk`, `dv` and `dbias`
    /// (`dbias[h][i] += dlogit` over every query `t` with a key `i` back).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_bias_backward_acc[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], p: &[[[S; W]; H]; T], da: &[[S; D]; T], dq: &mut [[S; D]; T], dk: &mut [[S; D]; T], dv: &mut [[S; D]; T], dbias: &mut [[S; W]; H]) = attention_bias_backward_acc_body;
}

/// The body of [`attention_bias_backward_acc`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attention_bias_backward_acc_body<
    S: Scalar,
    const T: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const W: usize,
>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    p: &[[[S; W]; H]; T],
    da: &[[S; D]; T],
    dq: &mut [[S; D]; T],
    dk: &mut [[S; D]; T],
    dv: &mut [[S; D]; T],
    dbias: &mut [[S; W]; H],
) {
    attention_backward_with::<S, T, D, H, HD, W>(q, k, v, p, da, dq, dk, dv, Some(dbias))
}

/// The attention backward, with the position bias's gradient when `dbias` is given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attention_backward_with<
    S: Scalar,
    const T: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const W: usize,
>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    p: &[[[S; W]; H]; T],
    da: &[[S; D]; T],
    dq: &mut [[S; D]; T],
    dk: &mut [[S; D]; T],
    dv: &mut [[S; D]; T],
    mut dbias: Option<&mut [[S; W]; H]>,
) {
    const { assert!(H * HD == D, "heads * head_dim must equal d_model") };
    let scale = S::ONE / S::from_usize(HD).sqrt();
    let mut dp = [S::ZERO; W];
    for t in 0..T {
        let n = (t + 1).min(W);
        for h in 0..H {
            let cols = h * HD..(h + 1) * HD;
            let ph = &p[t][h];
            let dah = &da[t][cols.clone()];
            let mut sum = S::ZERO;
            for i in 0..n {
                let tau = t - i;
                dp[i] = dot_slice(dah, &v[tau][cols.clone()]);
                sum += ph[i] * dp[i];
                axpy(ph[i], dah, &mut dv[tau][cols.clone()]);
            }
            let mut dqh = [S::ZERO; HD];
            let qh = &q[t][cols.clone()];
            for i in 0..n {
                let tau = t - i;
                // The gradient of the logit; the bias enters it unscaled.
                let dl = ph[i] * (dp[i] - sum);
                if let Some(db) = dbias.as_deref_mut() {
                    db[h][i] += dl;
                }
                let ds = dl * scale;
                axpy(ds, &k[tau][cols.clone()], &mut dqh);
                axpy(ds, qh, &mut dk[tau][cols.clone()]);
            }
            for (d, x) in dq[t][cols].iter_mut().zip(&dqh) {
                *d += *x;
            }
        }
    }
}

/// The largest element of `x` (`-inf` if `x` is empty), kept in [`LANES`]
/// running maxima so the pass vectorises. The maximum is exact, so the lanes
/// change nothing (up to NaN propagation and the sign of a zero).
#[inline(always)]
fn max_lanes<S: Scalar>(x: &[S]) -> S {
    let neg_inf = S::from_f64(f64::NEG_INFINITY);
    let mut lanes = [neg_inf; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] = lanes[j].max(c[j]);
        }
    }
    // Folded left to right: see `sum_lanes`.
    lanes.iter().chain(chunks.remainder()).fold(neg_inf, |m, &v| m.max(v))
}

/// The sum of `x`, in [`LANES`] partial sums so the pass vectorises (the
/// summation order differs from a left fold).
#[inline(always)]
fn sum_lanes<S: Scalar>(x: &[S]) -> S {
    let mut lanes = [S::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] += c[j];
        }
    }
    // The lanes are folded left to right. A pairwise tree would round a
    // little better, but LLVM's SLP vectoriser then builds its vectors from
    // the tree's pairs and runs the main loop two lanes wide.
    lanes.iter().chain(chunks.remainder()).fold(S::ZERO, |s, &v| s + v)
}

/// `y_i = e^(x_i - shift)`: independent elements and the inlined,
/// branch-free `f32` exp of [`Scalar`], so the loop vectorises.
#[inline(always)]
fn exp_shifted<S: Scalar>(x: &[S], shift: S, y: &mut [S]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = (xi - shift).exp();
    }
}

/// Elements per block of [`log_sum_exp`]'s stack buffer.
const LSE_BLOCK: usize = 64;

/// Log-sum-exp of a row, computed stably: `max + ln(sum e^(x - max))`.
///
/// Vectorised passes rather than one fused scalar loop: the maximum, then
/// per block of 64 elements `e^(x - max)` into a stack buffer and its sum.
#[inline(always)]
pub fn log_sum_exp<S: Scalar>(x: &[S]) -> S {
    let mx = max_lanes(x);
    let mut buf = [S::ZERO; LSE_BLOCK];
    let mut sum = S::ZERO;
    for block in x.chunks(LSE_BLOCK) {
        let e = &mut buf[..block.len()];
        exp_shifted(block, mx, e);
        sum += sum_lanes(e);
    }
    mx + sum.ln()
}

crate::dispatch::dispatched! {
    /// `-log softmax(logits)[target]`: the loss (surprise) of one token, in nats.
    ///
    /// # Panics
    /// If `target >= V`.
    pub fn cross_entropy[S: Scalar, const V: usize][S, V](logits: &[S; V], target: u32) -> S = cross_entropy_body;
}

/// The body of [`cross_entropy`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn cross_entropy_body<S: Scalar, const V: usize>(logits: &[S; V], target: u32) -> S {
    log_sum_exp(logits) - logits[check_token::<V>(target)]
}

crate::dispatch::dispatched! {
    /// Mean cross-entropy over a sequence and its gradient with respect to the
    /// logits: `dlogits[t] = (softmax(logits[t]) - onehot(targets[t])) / T`.
    ///
    /// Per row, `e^(l - max)` is computed once, into `dlogits`, and serves both
    /// the log-sum-exp and the softmax.
    pub fn cross_entropy_backward[S: Scalar, const T: usize, const V: usize][S, T, V](logits: &[[S; V]; T], targets: &[u32], dlogits: &mut [[S; V]; T]) -> S = cross_entropy_backward_body;
}

/// The body of [`cross_entropy_backward`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn cross_entropy_backward_body<S: Scalar, const T: usize, const V: usize>(
    logits: &[[S; V]; T],
    targets: &[u32],
    dlogits: &mut [[S; V]; T],
) -> S {
    let inv_t = S::ONE / S::from_usize(T);
    let mut loss = S::ZERO;
    for ((lt, dt), &y) in logits.iter().zip(dlogits.iter_mut()).zip(targets) {
        let y = check_token::<V>(y);
        let mx = max_lanes(lt);
        exp_shifted(lt, mx, dt);
        let sum = sum_lanes(dt);
        loss += mx + sum.ln() - lt[y];
        // softmax / T = e^(l - max) * (1 / (T sum)).
        let scale = inv_t / sum;
        for d in dt.iter_mut() {
            *d *= scale;
        }
        dt[y] -= inv_t;
    }
    loss * inv_t
}

crate::dispatch::dispatched! {
    /// Mean cross-entropy over a sequence (forward only).
    pub fn mean_cross_entropy[S: Scalar, const T: usize, const V: usize][S, T, V](logits: &[[S; V]; T], targets: &[u32]) -> S = mean_cross_entropy_body;
}

/// The body of [`mean_cross_entropy`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn mean_cross_entropy_body<S: Scalar, const T: usize, const V: usize>(logits: &[[S; V]; T], targets: &[u32]) -> S {
    let mut loss = S::ZERO;
    for (lt, &y) in logits.iter().zip(targets) {
        loss += cross_entropy(lt, y);
    }
    loss / S::from_usize(T)
}

/// Sets every element of a nested array (or any slice of arrays) to zero.
#[inline]
pub fn zero<S: Scalar, const N: usize>(rows: &mut [[S; N]]) {
    for r in rows {
        r.fill(S::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matvec_matches_plain_sums_with_tails() {
        // I = 37: two whole 16-lane chunks and a tail of 5; O = 7: one block of 4 rows and 3 single rows.
        let w: [[f64; 37]; 7] = core::array::from_fn(|o| core::array::from_fn(|i| ((o * 37 + i) as f64 * 0.37).sin()));
        let x: [f64; 37] = core::array::from_fn(|i| (i as f64 * 0.11).cos() - 0.5);
        let mut y = [0.0; 7];
        matvec(&w, &x, &mut y);
        for o in 0..7 {
            let e: f64 = (0..37).map(|i| w[o][i] * x[i]).sum();
            assert!((y[o] - e).abs() < 1e-12, "row {o}: {} vs {e}", y[o]);
        }
        let w32: [[f32; 64]; 8] = core::array::from_fn(|o| core::array::from_fn(|i| ((o * 64 + i) as f32 * 0.1).sin()));
        let x32: [f32; 64] = core::array::from_fn(|i| (i as f32 * 0.3).cos());
        let mut y32 = [0.0f32; 8];
        matvec(&w32, &x32, &mut y32);
        for o in 0..8 {
            let e: f64 = (0..64).map(|i| f64::from(w32[o][i]) * f64::from(x32[i])).sum();
            assert!((f64::from(y32[o]) - e).abs() < 1e-5, "f32 row {o}");
        }
    }

    #[test]
    fn dot_matches_plain_sum() {
        let a: [f64; 13] = core::array::from_fn(|i| i as f64 * 0.5 - 2.0);
        let b: [f64; 13] = core::array::from_fn(|i| 1.0 / (i as f64 + 1.0));
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-12);
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_v() {
        let l = [[0.0f64; 4]; 2];
        let mut d = [[0.0; 4]; 2];
        let loss = cross_entropy_backward(&l, &[1, 3], &mut d);
        assert!((loss - 4f64.ln()).abs() < 1e-15);
        assert!((d[0][1] - (0.25 - 1.0) / 2.0).abs() < 1e-15);
        assert!((d[0][0] - 0.125).abs() < 1e-15);
    }

    /// `ln sum e^x` and the softmax, plainly in `f64`.
    fn naive_softmax(x: &[f32]) -> (f64, [f64; 300]) {
        let mx = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = x.iter().map(|&v| libm::exp(v as f64 - mx)).sum();
        let mut p = [0.0; 300];
        for (pi, &v) in p.iter_mut().zip(x) {
            *pi = libm::exp(v as f64 - mx) / sum;
        }
        (mx + libm::log(sum), p)
    }

    #[test]
    fn softmax_kernels_match_f64_at_every_length() {
        let mut rng = crate::rng::Rng::new(3);
        let mut x = [0.0f32; 300];
        for (i, v) in x.iter_mut().enumerate() {
            // Spread over [-120, 20] (some weights underflow), one far above.
            *v = (rng.next_f64() * 140.0 - 120.0) as f32 + if i == 37 { 100.0 } else { 0.0 };
        }
        // Lengths around the lane count and the log-sum-exp block size.
        for len in [1, 2, 15, 16, 17, 31, 63, 64, 65, 100, 256, 300] {
            let (want, _) = naive_softmax(&x[..len]);
            let got = log_sum_exp(&x[..len]) as f64;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "len {len}: {got} vs {want}");
            let shifted: [f32; 300] = core::array::from_fn(|i| x[i] * 0.05);
            let (want, _) = naive_softmax(&shifted[..len]);
            let got = log_sum_exp(&shifted[..len]) as f64;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "len {len}: {got} vs {want}");
        }
        assert_eq!(max_lanes(&x[..0]), f32::NEG_INFINITY);
        for len in [1, 15, 16, 17, 40, 300] {
            assert_eq!(max_lanes(&x[..len]), x[..len].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
        }
        assert_eq!(sum_lanes(&[1.0f32; 37]), 37.0);
    }

    #[test]
    fn cross_entropy_backward_matches_f64_softmax() {
        const V: usize = 300;
        let mut rng = crate::rng::Rng::new(4);
        let mut l = [[0.0f32; V]; 3];
        for (t, row) in l.iter_mut().enumerate() {
            for v in row.iter_mut() {
                *v = (rng.next_f64() * 8.0 - 4.0) as f32 * (t + 1) as f32;
            }
        }
        let targets = [5, 299, 0];
        let mut d = [[0.0f32; V]; 3];
        let loss = cross_entropy_backward(&l, &targets, &mut d) as f64;
        let mut want_loss = 0.0;
        for t in 0..3 {
            let (lse, p) = naive_softmax(&l[t]);
            want_loss += (lse - l[t][targets[t] as usize] as f64) / 3.0;
            for v in 0..V {
                let want = (p[v] - if v == targets[t] as usize { 1.0 } else { 0.0 }) / 3.0;
                assert!((d[t][v] as f64 - want).abs() <= 1e-6 * want.abs() + 1e-12, "d[{t}][{v}]");
            }
        }
        assert!((loss - want_loss).abs() <= 1e-6 * want_loss, "{loss} vs {want_loss}");
        let mean = mean_cross_entropy(&l, &targets) as f64;
        assert!((mean - want_loss).abs() <= 1e-6 * want_loss, "{mean} vs {want_loss}");
    }

    #[test]
    fn attention_rows_pad_the_softmax_with_zeros() {
        // A window of 20 (not a multiple of the lanes); every row's
        // probabilities against a plain f64 softmax of its scores.
        const T: usize = 24;
        const W: usize = 20;
        let mut rng = crate::rng::Rng::new(5);
        let mut q = [[0.0f32; 4]; T];
        let mut k = [[0.0f32; 4]; T];
        let v = [[1.0f32; 4]; T];
        for r in q.iter_mut().chain(k.iter_mut()) {
            for x in r.iter_mut() {
                *x = (rng.next_f64() * 6.0 - 3.0) as f32;
            }
        }
        let mut p = [[[0.0f32; W]; 2]; T];
        let mut out = [[0.0f32; 4]; T];
        attention::<f32, T, 4, 2, 2, W>(&q, &k, &v, &mut p, &mut out);
        for t in 0..T {
            let n = (t + 1).min(W);
            for h in 0..2 {
                let scores: [f32; W] = core::array::from_fn(|i| {
                    if i < n {
                        (q[t][2 * h] * k[t - i][2 * h] + q[t][2 * h + 1] * k[t - i][2 * h + 1]) / 2f32.sqrt()
                    } else {
                        0.0
                    }
                });
                let (_, want) = naive_softmax(&scores[..n]);
                for i in 0..W {
                    let w = if i < n { want[i] } else { 0.0 };
                    assert!((p[t][h][i] as f64 - w).abs() <= 1e-6, "p[{t}][{h}][{i}]");
                }
            }
            // Equal values: the output is the value itself.
            for x in out[t] {
                assert!((x - 1.0).abs() <= 1e-6);
            }
        }
    }

    #[test]
    fn attention_with_equal_scores_averages_values() {
        // Zero queries give equal scores: the output is the mean of the visible values.
        let q = [[0.0f64; 2]; 3];
        let k = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let v = [[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]];
        let mut p = [[[0.0; 2]; 1]; 3];
        let mut out = [[0.0; 2]; 3];
        attention::<f64, 3, 2, 1, 2, 2>(&q, &k, &v, &mut p, &mut out);
        assert_eq!(out[0], [1.0, 10.0]);
        assert_eq!(out[1], [1.5, 15.0]);
        assert_eq!(out[2], [3.0, 30.0]);
        assert_eq!(p[0][0], [1.0, 0.0]);
    }
}

#[cfg(test)]
mod position_tests {
    use super::*;
    use crate::positions::{rope_apply, rope_table};
    use crate::rng::Rng;

    const T: usize = 9;
    const D: usize = 8;
    const H: usize = 2;
    const HD: usize = 4;
    const HALF: usize = 2;
    const W: usize = 4;

    fn random<const R: usize, const C: usize>(rng: &mut Rng, amp: f64) -> [[f64; C]; R] {
        core::array::from_fn(|_| core::array::from_fn(|_| amp * (2.0 * rng.next_f64() - 1.0)))
    }

    /// Plain triple-loop attention with a position bias, in f64.
    fn plain_attention_bias(
        q: &[[f64; D]; T],
        k: &[[f64; D]; T],
        v: &[[f64; D]; T],
        bias: &[[f64; W]; H],
    ) -> ([[[f64; W]; H]; T], [[f64; D]; T]) {
        let mut p = [[[0.0; W]; H]; T];
        let mut out = [[0.0; D]; T];
        for t in 0..T {
            for h in 0..H {
                let lo = (t + 1).saturating_sub(W);
                let mut s = [0.0; W];
                for tau in lo..=t {
                    let mut dotp = 0.0;
                    for j in h * HD..(h + 1) * HD {
                        dotp += q[t][j] * k[tau][j];
                    }
                    s[t - tau] = dotp / (HD as f64).sqrt() + bias[h][t - tau];
                }
                let n = t - lo + 1;
                let mx = s[..n].iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let z: f64 = s[..n].iter().map(|&x| libm::exp(x - mx)).sum();
                for i in 0..n {
                    p[t][h][i] = libm::exp(s[i] - mx) / z;
                    for j in h * HD..(h + 1) * HD {
                        out[t][j] += p[t][h][i] * v[t - i][j];
                    }
                }
            }
        }
        (p, out)
    }

    #[test]
    fn attention_bias_matches_triple_loop() {
        let mut rng = Rng::new(41);
        let (q, k, v) = (random::<T, D>(&mut rng, 2.0), random::<T, D>(&mut rng, 2.0), random::<T, D>(&mut rng, 1.0));
        let bias = random::<H, W>(&mut rng, 1.5);
        let (want_p, want_out) = plain_attention_bias(&q, &k, &v, &bias);
        let mut p = [[[9.0; W]; H]; T];
        let mut out = [[9.0; D]; T];
        attention_bias::<f64, T, D, H, HD, W>(&q, &k, &v, &bias, &mut p, &mut out);
        for t in 0..T {
            for h in 0..H {
                for i in 0..W {
                    assert!((p[t][h][i] - want_p[t][h][i]).abs() < 1e-14, "p[{t}][{h}][{i}]");
                }
            }
            for j in 0..D {
                assert!((out[t][j] - want_out[t][j]).abs() < 1e-14, "out[{t}][{j}]");
            }
        }
        // A zero bias is plain attention, bit for bit.
        let (mut p0, mut out0) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
        attention_bias::<f64, T, D, H, HD, W>(&q, &k, &v, &[[0.0; W]; H], &mut p, &mut out);
        attention::<f64, T, D, H, HD, W>(&q, &k, &v, &mut p0, &mut out0);
        assert_eq!((p, out), (p0, out0));
    }

    /// Central differences of `L = sum(c * attention_bias(q, k, v, bias))`
    /// for every element of `q`, `k`, `v` and `bias`.
    #[test]
    fn attention_bias_backward_matches_finite_differences() {
        let mut rng = Rng::new(42);
        let (q, k, v) = (random::<T, D>(&mut rng, 1.5), random::<T, D>(&mut rng, 1.5), random::<T, D>(&mut rng, 1.0));
        let bias = random::<H, W>(&mut rng, 1.0);
        let c = random::<T, D>(&mut rng, 1.0);
        let loss = |q: &[[f64; D]; T], k: &[[f64; D]; T], v: &[[f64; D]; T], b: &[[f64; W]; H]| {
            let (mut p, mut out) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
            attention_bias::<f64, T, D, H, HD, W>(q, k, v, b, &mut p, &mut out);
            (0..T).map(|t| (0..D).map(|j| c[t][j] * out[t][j]).sum::<f64>()).sum::<f64>()
        };
        let (mut p, mut out) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
        attention_bias::<f64, T, D, H, HD, W>(&q, &k, &v, &bias, &mut p, &mut out);
        // Accumulation: nonzero starting gradients, subtracted after.
        let g0 = random::<T, D>(&mut rng, 1.0);
        let b0 = random::<H, W>(&mut rng, 1.0);
        let (mut dq, mut dk, mut dv, mut db) = (g0, g0, g0, b0);
        attention_bias_backward_acc::<f64, T, D, H, HD, W>(&q, &k, &v, &p, &c, &mut dq, &mut dk, &mut dv, &mut db);
        let h = 1e-5;
        let mut worst = 0.0f64;
        let mut check = |an: f64, num: f64| worst = worst.max((an - num).abs() / num.abs().max(1e-2));
        for t in 0..T {
            for j in 0..D {
                let bump = |x: &[[f64; D]; T], e: f64| {
                    let mut y = *x;
                    y[t][j] += e;
                    y
                };
                check(
                    dq[t][j] - g0[t][j],
                    (loss(&bump(&q, h), &k, &v, &bias) - loss(&bump(&q, -h), &k, &v, &bias)) / (2.0 * h),
                );
                check(
                    dk[t][j] - g0[t][j],
                    (loss(&q, &bump(&k, h), &v, &bias) - loss(&q, &bump(&k, -h), &v, &bias)) / (2.0 * h),
                );
                check(
                    dv[t][j] - g0[t][j],
                    (loss(&q, &k, &bump(&v, h), &bias) - loss(&q, &k, &bump(&v, -h), &bias)) / (2.0 * h),
                );
            }
        }
        for hh in 0..H {
            for i in 0..W {
                let (mut bp, mut bm) = (bias, bias);
                bp[hh][i] += h;
                bm[hh][i] -= h;
                check(db[hh][i] - b0[hh][i], (loss(&q, &k, &v, &bp) - loss(&q, &k, &v, &bm)) / (2.0 * h));
            }
        }
        assert!(worst < 1e-6, "max relative error {worst:e}");
    }

    /// The streaming row (offset-form RoPE, unrotated keys) against the
    /// training path (rotate q and k at their positions, then attend), row by row.
    #[test]
    fn attend_row_pos_matches_the_training_path() {
        let mut rng = Rng::new(43);
        let (q, k, v) = (random::<T, D>(&mut rng, 2.0), random::<T, D>(&mut rng, 2.0), random::<T, D>(&mut rng, 1.0));
        let bias = random::<H, W>(&mut rng, 1.0);
        let (mut ct, mut st) = ([[0.0; HALF]; T], [[0.0; HALF]; T]);
        rope_table(0, &mut ct, &mut st);
        let (mut co, mut so) = ([[0.0; HALF]; W], [[0.0; HALF]; W]);
        rope_table(0, &mut co, &mut so);
        let (mut qr, mut kr) = (q, k);
        rope_apply::<f64, T, D, HD, HALF>(&mut qr, &ct, &st);
        rope_apply::<f64, T, D, HD, HALF>(&mut kr, &ct, &st);
        let (mut pb, mut ob) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
        attention_bias::<f64, T, D, H, HD, W>(&qr, &kr, &v, &bias, &mut pb, &mut ob);
        let (mut pa, mut oa) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
        attention::<f64, T, D, H, HD, W>(&qr, &kr, &v, &mut pa, &mut oa);
        let (mut pn, mut on) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
        attention::<f64, T, D, H, HD, W>(&q, &k, &v, &mut pn, &mut on);
        for t in 0..T {
            let n = (t + 1).min(W);
            let close = |p: &[[f64; W]; H], o: &[f64; D], wp: &[[f64; W]; H], wo: &[f64; D]| {
                (0..H).all(|h| (0..W).all(|i| (p[h][i] - wp[h][i]).abs() < 1e-13))
                    && (0..D).all(|j| (o[j] - wo[j]).abs() < 1e-13)
            };
            let (mut p, mut o) = ([[7.0; W]; H], [7.0; D]);
            let rope = Some((&co, &so));
            attend_row_pos::<f64, D, H, HD, HALF, W>(
                &q[t],
                n,
                |i| &k[t - i],
                |i| &v[t - i],
                rope,
                Some(&bias),
                &mut p,
                &mut o,
            );
            assert!(close(&p, &o, &pb[t], &ob[t]), "rope + bias, row {t}");
            attend_row_pos::<f64, D, H, HD, HALF, W>(
                &q[t],
                n,
                |i| &k[t - i],
                |i| &v[t - i],
                rope,
                None,
                &mut p,
                &mut o,
            );
            assert!(close(&p, &o, &pa[t], &oa[t]), "rope, row {t}");
            // Neither: exactly attend_row.
            attend_row_pos::<f64, D, H, HD, HALF, W>(
                &q[t],
                n,
                |i| &k[t - i],
                |i| &v[t - i],
                None,
                None,
                &mut p,
                &mut o,
            );
            assert_eq!((p, o), (pn[t], on[t]), "plain, row {t}");
        }
    }

    /// At absolute position 10^7 + 5 the f32 streaming row equals the f64
    /// result of rotating at the small positions 5.. (and at the huge ones,
    /// in f64) within 1e-5 relative: the offset form has no absolute angle.
    #[test]
    fn attend_row_pos_keeps_precision_at_huge_positions() {
        const D: usize = 32;
        const H: usize = 2;
        const HD: usize = 16;
        const HALF: usize = 8;
        const W: usize = 12;
        let mut rng = Rng::new(44);
        for trial in 0..20 {
            // The query at `pos`, key i at `pos - i`.
            let q: [f64; D] = core::array::from_fn(|_| (2.0 * rng.next_f64() - 1.0) as f32 as f64);
            let k = random::<W, D>(&mut rng, 1.5).map(|r| r.map(|x| x as f32 as f64));
            let v = random::<W, D>(&mut rng, 1.0).map(|r| r.map(|x| x as f32 as f64));
            let bias = random::<H, W>(&mut rng, 0.5).map(|r| r.map(|x| x as f32 as f64));
            let n = if trial % 2 == 0 { W } else { 1 + trial % W };
            // f64 references: rotate q and every key at absolute positions, attend.
            let reference = |pos: u64| {
                let first = pos + 1 - W as u64; // table row r is position first + r
                let (mut c, mut s) = ([[0.0f64; HALF]; W], [[0.0f64; HALF]; W]);
                rope_table(first, &mut c, &mut s);
                let row = |r: usize| (&c[r], &s[r]);
                let mut qr = [q];
                let (qc, qs) = row(W - 1);
                rope_apply::<f64, 1, D, HD, HALF>(&mut qr, &[*qc], &[*qs]);
                let mut kr = k;
                for i in 0..W {
                    let (kc, ks) = row(W - 1 - i);
                    let mut one = [k[i]];
                    rope_apply::<f64, 1, D, HD, HALF>(&mut one, &[*kc], &[*ks]);
                    kr[i] = one[0];
                }
                let mut p = [[0.0; W]; H];
                let mut out = [0.0; D];
                for h in 0..H {
                    let cols = h * HD..(h + 1) * HD;
                    let s: [f64; W] = core::array::from_fn(|i| {
                        cols.clone().map(|j| qr[0][j] * kr[i][j]).sum::<f64>() / (HD as f64).sqrt() + bias[h][i]
                    });
                    let mx = s[..n].iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                    let z: f64 = s[..n].iter().map(|&x| libm::exp(x - mx)).sum();
                    for i in 0..n {
                        p[h][i] = libm::exp(s[i] - mx) / z;
                        for j in cols.clone() {
                            out[j] += p[h][i] * v[i][j];
                        }
                    }
                }
                (p, out)
            };
            let (p_small, o_small) = reference(W as u64 - 1 + 5);
            let (p_huge, o_huge) = reference(10_000_005);
            let mut c32 = [[0.0f32; HALF]; W];
            let mut s32 = [[0.0f32; HALF]; W];
            rope_table(0, &mut c32, &mut s32);
            let q32 = q.map(|x| x as f32);
            let k32 = k.map(|r| r.map(|x| x as f32));
            let v32 = v.map(|r| r.map(|x| x as f32));
            let b32 = bias.map(|r| r.map(|x| x as f32));
            let (mut p, mut o) = ([[0.0f32; W]; H], [0.0f32; D]);
            attend_row_pos::<f32, D, H, HD, HALF, W>(
                &q32,
                n,
                |i| &k32[i],
                |i| &v32[i],
                Some((&c32, &s32)),
                Some(&b32),
                &mut p,
                &mut o,
            );
            let oscale = o_small.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for h in 0..H {
                for i in 0..W {
                    assert!((p_small[h][i] - p_huge[h][i]).abs() < 1e-8, "f64 references differ");
                    let err = (p[h][i] as f64 - p_small[h][i]).abs();
                    assert!(err <= 1e-5 * p_small[h][i].max(1e-3), "trial {trial} p[{h}][{i}]: {err:e}");
                }
            }
            for j in 0..D {
                assert!((o_small[j] - o_huge[j]).abs() < 1e-8 * oscale, "f64 references differ");
                let err = (o[j] as f64 - o_small[j]).abs();
                assert!(err <= 1e-5 * oscale, "trial {trial} out[{j}]: {err:e}");
            }
        }
    }
}
