//! The memory branch's kernels (docs/model.md, step 2): projections and gates,
//! the inner loop (surprise, accumulation, periodic fires, read-after-write),
//! its exact backward pass through every update of a training sequence, and
//! the one-token streaming step.
//!
//! A level is monomorphised over its rule ([`Delta`], [`Titans`],
//! [`Hebbian`]), the sequence length `T` and the width `D`; the period is a
//! constant argument from the generated code.
//!
//! Notation per token `t` (0-based) of one level: `kr = Wk m`, `k = n(kr)`,
//! `v = Wv m`, `qr = Wq m`, `q = n(qr)`, `u = [k; v]`, gates `alpha =
//! sigmoid(w_alpha.u + b_alpha)`, `theta = sigmoid(w_theta.u + b_theta) /
//! (period (|k|^2 + eps))` (the bounded, NLMS-normalised inner learning
//! rate: every fire is a contraction, see [`THETA_EPS`]), `eta =
//! sigmoid(w_eta.u + b_eta)`. The surprise is written `g = r k^T`
//! with `r = M k - v` (delta, titans) or `r = -v` (hebbian), `M` the
//! memory before the token. `G += theta g`, and for titans also the write
//! accumulator `W += theta (1 - eta) v k^T`; on a fire (`(n + 1) % period == 0`)
//! `M <- (1 - alpha) M - G` (delta, hebbian) or `M <- (1 - alpha) M - G +
//! eta S`, `S <- eta S + W` (titans: momentum on the write term, so the
//! momentum is an average of bounded writes and every fire stays a
//! contraction; see docs/model.md), then `G, W <- 0`. The read is `M q`.
//!
//! How it is computed: everything of one token that touches the `D x D`
//! state is fused by rows, since each row of `M` needs only itself (`r_i =
//! M_i . k - v_i`, the update of row `i`, `y_i += M'_i . q`). Rows are
//! processed in blocks of `ROWS` (4) and columns in chunks of `LANES` (16) (the
//! `cols!` loop), so the forward reads each row of the state once (twice on
//! a fire: the surprise before, the update and read after) and the backward
//! makes two passes per token (the read, the fire and `dG' k`; then the
//! surprise's `dM`, `dk`). The training forward keeps `M` (and `S`) only
//! after each fire, in its history slot, which the following tokens read;
//! `G` is not read while it is known to be zero (after a fire, until a token
//! that does not fire). The arithmetic is that of the formulas; only the
//! summation order (lanes, then a tree) and fused multiply-adds differ.
//!
//! That is the path of a period-1 level (a fire at every token). A level
//! with a longer period (frozen or not) trains in the chunk-wise matrix form of
//! the `chunked` submodule (docs/model.md, "How the training pass computes
//! the memory"): between fires its `M` is frozen, so a chunk's surprises,
//! reads and accumulation are matrix products. The training forward's key,
//! value and query projections are one matrix product each, for every
//! level; the streaming step computes the same quantities one token at a
//! time.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::gemm::{linear_backward_input_acc, linear_backward_weight_acc};
use crate::kernels::{dot, LANES};
use crate::{Scalar, Zeroable};

/// `eps` of the key/query normalisation `n(z) = z / sqrt(|z|^2 + eps)`.
pub const NORM_EPS: f64 = 1e-6;

/// `eps` of the inner learning rate `theta = sigmoid(w_theta . u + b_theta)
/// / (period (|k|^2 + eps))`.
///
/// Why this form: between fires `M` is frozen, and a fire of a `delta`
/// level applies `M <- M ((1 - alpha) I - A) + sum_i theta_i v_i k_i^T`
/// with `A = sum_i theta_i k_i k_i^T` over the at most `period` tokens of
/// the chunk. `A` is positive semi-definite with `trace A = sum_i sigma_i
/// |k_i|^2 / (period (|k_i|^2 + eps)) < 1`, so the eigenvalues of `(1 -
/// alpha) I - A` lie in `(-alpha, 1 - alpha]`: a contraction plus a
/// bounded input, whatever the keys (normalised or not) and however
/// repetitive the stream. `hebbian` is a contraction by `1 - alpha`.
pub const THETA_EPS: f64 = 1e-6;

/// A memory update rule, as a type so each level's code is monomorphised.
pub trait Rule: 'static {
    /// The surprise is `(M k - v) k^T` (reads the memory) rather than `-v k^T`.
    const READS_MEMORY: bool;
    /// The rule has a momentum `S` and an `eta` gate.
    const MOMENTUM: bool;
}

/// `g = (M k - v) k^T`, `M <- (1 - alpha) M - G`.
#[derive(Clone, Copy, Debug)]
pub struct Delta;
/// `g = (M k - v) k^T` with momentum on the write term: `W += theta (1 -
/// eta) v k^T`; on a fire `M <- (1 - alpha) M - G + eta S`, `S <- eta S + W`.
#[derive(Clone, Copy, Debug)]
pub struct Titans;
/// `g = -v k^T`, `M <- (1 - alpha) M - G`.
#[derive(Clone, Copy, Debug)]
pub struct Hebbian;

impl Rule for Delta {
    const READS_MEMORY: bool = true;
    const MOMENTUM: bool = false;
}
impl Rule for Titans {
    const READS_MEMORY: bool = true;
    const MOMENTUM: bool = true;
}
impl Rule for Hebbian {
    const READS_MEMORY: bool = false;
    const MOMENTUM: bool = false;
}

/// The inner-loop state of one level: memory `M`, accumulator `G`,
/// momentum `S` (titans; zero otherwise) and `n`, the tokens seen since the
/// last reset. Not a parameter; never part of a parameter checkpoint.
#[repr(C)]
#[derive(Clone, Debug, PartialEq)]
pub struct LevelState<S, const D: usize> {
    /// The memory `M` (`D x D`, row-major).
    pub m: [[S; D]; D],
    /// Gradient accumulator `G` of the current chunk.
    pub g: [[S; D]; D],
    /// Momentum `S` (titans).
    pub s: [[S; D]; D],
    /// Write accumulator `W = sum theta (1 - eta) v k^T` of the current chunk (titans; zero otherwise).
    pub w: [[S; D]; D],
    /// Tokens seen since the last reset.
    pub n: u64,
}

// SAFETY: arrays of `S: Scalar` and a `u64`: all-zero bytes are valid values.
unsafe impl<S: Scalar, const D: usize> Zeroable for LevelState<S, D> {}

impl<S: Scalar, const D: usize> LevelState<S, D> {
    /// Clears the state (zero memory, accumulator, momentum and count).
    pub fn reset(&mut self) {
        for r in self.m.iter_mut().chain(self.g.iter_mut()).chain(self.s.iter_mut()).chain(self.w.iter_mut()) {
            r.fill(S::ZERO);
        }
        self.n = 0;
    }

    /// Copies another state into this one.
    pub fn copy_from(&mut self, other: &Self) {
        self.m = other.m;
        self.g = other.g;
        self.s = other.s;
        self.w = other.w;
        self.n = other.n;
    }

    /// The state as flat row-major slices, for generic tools (monitoring,
    /// stability tests) that do not know `D` at compile time.
    pub fn view(&self) -> LevelView<'_, S> {
        LevelView {
            d: D,
            m: self.m.as_flattened(),
            g: self.g.as_flattened(),
            s: self.s.as_flattened(),
            w: self.w.as_flattened(),
            n: self.n,
        }
    }
}

/// A read-only view of one level's inner-loop state with its width as a
/// value ([`LevelState::view`]); what [`crate::Model::memory_level`] returns.
#[derive(Clone, Copy, Debug)]
pub struct LevelView<'a, S> {
    /// The width `D`: every matrix is `D x D`, row-major.
    pub d: usize,
    /// The memory `M`.
    pub m: &'a [S],
    /// The accumulator `G` of the current chunk.
    pub g: &'a [S],
    /// The momentum `S` (zero unless titans).
    pub s: &'a [S],
    /// The write accumulator `W` (zero unless titans).
    pub w: &'a [S],
    /// Tokens seen since the last reset.
    pub n: u64,
}

impl<S: Scalar> LevelView<'_, S> {
    /// Frobenius norm of `M`, in f64 (NaN if any entry is NaN, inf if one is infinite).
    pub fn m_norm(&self) -> f64 {
        frobenius(self.m)
    }
    /// Frobenius norm of the momentum `S`, in f64.
    pub fn s_norm(&self) -> f64 {
        frobenius(self.s)
    }
}

/// `sqrt(sum x^2)` in f64, propagating NaN and infinities.
fn frobenius<S: Scalar>(x: &[S]) -> f64 {
    let mut acc = 0.0f64;
    for v in x {
        let v = v.to_f64();
        acc += v * v;
    }
    libm::sqrt(acc)
}

/// One level's parameters, borrowed from the generated `Params`.
/// `w_*` have `2 D` entries (`[k; v]` halves); `w_eta` is empty unless titans.
#[derive(Clone, Copy)]
pub struct LevelParams<'a, S, const D: usize> {
    /// Key projection `[D, D]`.
    pub wk: &'a [[S; D]; D],
    /// Value projection `[D, D]`.
    pub wv: &'a [[S; D]; D],
    /// Query projection `[D, D]`.
    pub wq: &'a [[S; D]; D],
    /// Forget-gate weight `[2D]`.
    pub w_alpha: &'a [S],
    /// Forget-gate bias.
    pub b_alpha: S,
    /// Inner-learning-rate weight `[2D]`.
    pub w_theta: &'a [S],
    /// Inner-learning-rate bias.
    pub b_theta: S,
    /// Momentum-gate weight `[2D]` (titans) or empty.
    pub w_eta: &'a [S],
    /// Momentum-gate bias (titans).
    pub b_eta: S,
}

/// One level's gate parameters (the part of [`LevelParams`] a step reads
/// after the projections).
#[derive(Clone, Copy)]
pub struct LevelGates<'a, S> {
    /// Forget-gate weight `[2D]`.
    pub w_alpha: &'a [S],
    /// Forget-gate bias.
    pub b_alpha: S,
    /// Inner-learning-rate weight `[2D]`.
    pub w_theta: &'a [S],
    /// Inner-learning-rate bias.
    pub b_theta: S,
    /// Momentum-gate weight `[2D]` (titans) or empty.
    pub w_eta: &'a [S],
    /// Momentum-gate bias (titans).
    pub b_eta: S,
}

impl<'a, S: Copy, const D: usize> LevelParams<'a, S, D> {
    /// The gate parameters.
    pub fn gates(&self) -> LevelGates<'a, S> {
        LevelGates {
            w_alpha: self.w_alpha,
            b_alpha: self.b_alpha,
            w_theta: self.w_theta,
            b_theta: self.b_theta,
            w_eta: self.w_eta,
            b_eta: self.b_eta,
        }
    }
}

/// Gradients of one level's parameters, borrowed from the generated gradient `Params`.
pub struct LevelGrads<'a, S, const D: usize> {
    /// Gradient of `wk`.
    pub wk: &'a mut [[S; D]; D],
    /// Gradient of `wv`.
    pub wv: &'a mut [[S; D]; D],
    /// Gradient of `wq`.
    pub wq: &'a mut [[S; D]; D],
    /// Gradient of `w_alpha`.
    pub w_alpha: &'a mut [S],
    /// Gradient of `b_alpha`.
    pub b_alpha: &'a mut S,
    /// Gradient of `w_theta`.
    pub w_theta: &'a mut [S],
    /// Gradient of `b_theta`.
    pub b_theta: &'a mut S,
    /// Gradient of `w_eta` (empty unless titans).
    pub w_eta: &'a mut [S],
    /// Gradient of `b_eta` (a dummy unless titans).
    pub b_eta: &'a mut S,
}

/// What the training forward of one level keeps for its backward pass.
#[repr(C)]
pub struct LevelTrace<S, const T: usize, const D: usize> {
    /// Normalised keys `k_t` (raw `kr_t` when not normalising).
    pub k: [[S; D]; T],
    /// Values `v_t`.
    pub v: [[S; D]; T],
    /// Normalised queries `q_t`.
    pub q: [[S; D]; T],
    /// `sqrt(|kr_t|^2 + eps)` (1 when not normalising).
    pub k_norm: [S; T],
    /// `sqrt(|qr_t|^2 + eps)` (1 when not normalising).
    pub q_norm: [S; T],
    /// Surprise factor `r_t` (`M k - v` or `-v`).
    pub r: [[S; D]; T],
    /// Forget gate `alpha_t`.
    pub alpha: [S; T],
    /// Inner learning rate `theta_t`.
    pub theta: [S; T],
    /// Pre-activation `w_theta . u_t + b_theta` of `theta_t` (for its derivative).
    pub theta_pre: [S; T],
    /// Momentum gate `eta_t` (titans).
    pub eta: [S; T],
    /// `M` after the `j`-th fire of the sequence (slot `j`; `M` changes
    /// only at fires, so the memory at any token is the last slot written
    /// before it, or the start state). Slots past the last fire are unused.
    pub m_hist: [[[S; D]; D]; T],
    /// `S` after the `j`-th fire (titans), like `m_hist`.
    pub s_hist: [[[S; D]; D]; T],
    /// Backward scratch: gradient of `k_t` then of `kr_t`.
    pub dk: [[S; D]; T],
    /// Backward scratch: gradient of `v_t`.
    pub dv: [[S; D]; T],
    /// Backward scratch: gradient of `q_t` then of `qr_t`.
    pub dq: [[S; D]; T],
}

// SAFETY: arrays of `S: Scalar` only: all-zero bytes are valid values.
unsafe impl<S: Scalar, const T: usize, const D: usize> Zeroable for LevelTrace<S, T, D> {}

/// Scratch of the chunk-wise training pass of levels with `period > 1`
/// (the `chunked` submodule): one per model, shared by every such level
/// of every block (a level's forward and its backward each use it from
/// start to end, and rewrite what they read), so a model whose levels all
/// have period 1 does not carry it.
#[repr(C)]
pub struct ChunkScratch<S, const T: usize, const D: usize> {
    /// The start state's `M^T`.
    pub mt: [[S; D]; D],
    /// The start state's `S^T` (titans).
    pub st: [[S; D]; D],
    /// `G^T` during the forward, `dG` in the backward.
    pub gt: [[S; D]; D],
    /// `W^T` during the forward, `dW` in the backward (titans).
    pub wt: [[S; D]; D],
    /// The backward's memory of the chunk, row-major.
    pub m_row: [[S; D]; D],
    /// Backward: `K dG^T`, then `diag(theta) K dG^T`.
    pub xa: [[S; D]; T],
    /// Backward: `scale dy_t`.
    pub xb: [[S; D]; T],
    /// Backward: `d theta_t`.
    pub d_theta: [S; T],
    /// Backward: `d eta_t` through the write term (titans).
    pub d_eta: [S; T],
}

// SAFETY: arrays of `S: Scalar` only: all-zero bytes are valid values.
unsafe impl<S: Scalar, const T: usize, const D: usize> Zeroable for ChunkScratch<S, T, D> {}

/// Normalises `z` in place to `z / sqrt(|z|^2 + eps)` and returns the divisor.
#[inline(always)]
pub fn normalize<S: Scalar, const D: usize>(z: &mut [S; D]) -> S {
    let s = (dot(z, z) + S::from_f64(NORM_EPS)).sqrt();
    let inv = S::ONE / s;
    for x in z.iter_mut() {
        *x *= inv;
    }
    s
}

/// Backward of [`normalize`]: given `y = z / s` and `dy`, returns `dz = (dy - y (y.dy)) / s` in place of `dy`.
#[inline(always)]
pub fn normalize_backward<S: Scalar, const D: usize>(y: &[S; D], s: S, dy: &mut [S; D]) {
    let c = dot(y, dy);
    let inv = S::ONE / s;
    for (d, yi) in dy.iter_mut().zip(y) {
        *d = (*d - *yi * c) * inv;
    }
}

/// A gate's pre-activation `w . [k; v] + b`.
#[inline(always)]
pub fn gate_pre<S: Scalar, const D: usize>(w: &[S], b: S, k: &[S; D], v: &[S; D]) -> S {
    let (wk, wv) = w.split_at(D);
    crate::kernels::dot_slice(wk, k) + crate::kernels::dot_slice(wv, v) + b
}

/// Gates of one token of a level with period `period`: `(alpha, theta,
/// theta_pre, eta)`, where `theta = sigmoid(theta_pre) / (period (|k|^2 +
/// eps))` and `theta_pre = w_theta . [k; v] + b_theta`.
#[inline(always)]
fn gates<S: Scalar, R: Rule, const D: usize>(
    p: &LevelGates<'_, S>,
    period: u64,
    k: &[S; D],
    v: &[S; D],
) -> (S, S, S, S) {
    let alpha = gate_pre(p.w_alpha, p.b_alpha, k, v).sigmoid();
    let theta_pre = gate_pre(p.w_theta, p.b_theta, k, v);
    let eta = if R::MOMENTUM { gate_pre(p.w_eta, p.b_eta, k, v).sigmoid() } else { S::ZERO };
    let denom = S::from_f64(period as f64) * (dot(k, k) + S::from_f64(THETA_EPS));
    (alpha, theta_pre.sigmoid() / denom, theta_pre, eta)
}

/// Backward of `theta = sigmoid(b) / (period (|k|^2 + eps))`, `b = w_theta
/// . [k; v] + b_theta`, given `d_theta`: `d b = d_theta theta (1 -
/// sigmoid(b))` (into the gate's parameters and `dk`, `dv`) and the direct
/// term `dk += -2 d_theta theta k / (|k|^2 + eps)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn theta_backward<S: Scalar, const D: usize>(
    d_theta: S,
    theta: S,
    theta_pre: S,
    w: &[S],
    k: &[S; D],
    v: &[S; D],
    dw: &mut [S],
    db: &mut S,
    dk: &mut [S; D],
    dv: &mut [S; D],
) {
    // 1 - sigmoid(b) as sigmoid(-b): exact where sigmoid(b) rounds to 1.
    gate_backward(d_theta * theta * (-theta_pre).sigmoid(), w, k, v, dw, db, dk, dv);
    let c = -(d_theta + d_theta) * theta / (dot(k, k) + S::from_f64(THETA_EPS));
    for i in 0..D {
        dk[i] = c.mul_add(k[i], dk[i]);
    }
}

/// Rows per block of the row kernels: a block's rows share every load of
/// the vectors they are multiplied with, and their horizontal sums are
/// reduced together.
const ROWS: usize = 4;

/// Rows `i0..i0 + R` of a matrix.
#[inline(always)]
fn rows<S, const D: usize, const R: usize>(m: &[[S; D]; D], i0: usize) -> &[[S; D]; R] {
    m[i0..i0 + R].try_into().expect("block in bounds")
}

/// Rows `i0..i0 + R` of a matrix, mutable.
#[inline(always)]
fn rows_mut<S, const D: usize, const R: usize>(m: &mut [[S; D]; D], i0: usize) -> &mut [[S; D]; R] {
    (&mut m[i0..i0 + R]).try_into().expect("block in bounds")
}

/// The column loop of a block of `NR` rows: runs `body` for each chunk
/// of columns `o..o + n` (`n = LANES`, then the last `D % LANES` columns)
/// and each row `rr` of the block, rows innermost, so a chunk of a vector
/// is loaded once for the block. The body works on whole chunks (the lane
/// helpers [`fma_acc`], [`axpy`]), which vectorise. `acc` is the row's `NA`
/// lane accumulators; the value is their sums per row, `[[S; NA]; NR]`.
/// (A macro rather than a function taking a closure: the body is inlined
/// whatever its size.)
macro_rules! cols {
    ($d:expr, $nr:expr, $na:expr, |$o:ident, $n:ident, $rr:ident, $acc:ident| $body:expr) => {{
        let mut accs = [[[S::ZERO; LANES]; $na]; $nr];
        let mut $o = 0;
        while $o + LANES <= $d {
            for $rr in 0..$nr {
                let $n = LANES;
                #[allow(unused_variables)]
                let $acc = &mut accs[$rr];
                $body;
            }
            $o += LANES;
        }
        if $o < $d {
            for $rr in 0..$nr {
                let $n = $d - $o;
                #[allow(unused_variables)]
                let $acc = &mut accs[$rr];
                $body;
            }
        }
        sums(&accs)
    }};
}

/// [`cols!`] with the rows outermost, one row's chunks after the other's,
/// and a compiler fence between rows, for the streaming fire (the memory
/// updated in place). The rows loop of [`cols!`] there was vectorised
/// *across* the rows by the loop vectoriser of CPU tunings that rate
/// gathers cheap (`-C target-cpu=native` on an AVX-512 Xeon: 4-wide
/// gathers and scatters with stride `D`, micro_memory served at 40% of the
/// default build's speed). A fence emits no instruction; no vectoriser
/// moves memory accesses across it, so each row's chunks vectorise along
/// their lanes and nothing across rows, whatever the tuning. The price is
/// a reload of the vectors' chunks for each row: micro_memory's streaming
/// step in the default build went from 277K to 242K tok/s, where the
/// native build's went from 111K to 243K. The training passes keep
/// [`cols!`] (rows outermost everywhere cost them up to 45%).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! cols_by_row {
    ($d:expr, $nr:expr, $na:expr, |$o:ident, $n:ident, $rr:ident, $acc:ident| $body:expr) => {{
        let mut accs = [[[S::ZERO; LANES]; $na]; $nr];
        for $rr in 0..$nr {
            core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
            #[allow(unused_variables)]
            let $acc = &mut accs[$rr];
            let mut $o = 0;
            while $o + LANES <= $d {
                let $n = LANES;
                $body;
                $o += LANES;
            }
            if $o < $d {
                let $n = $d - $o;
                $body;
            }
        }
        sums(&accs)
    }};
}

/// The column loop of the streaming fire: [`cols_by_row!`] on x86-64,
/// whose CPU tunings vectorise with gathers; [`cols!`] elsewhere (no
/// gathers on the deploy targets; and on a microcontroller the rows loop
/// of `cols_by_row!` was unrolled into 5 KB more code for micro_memory,
/// 11% of its riscv32imac budget).
#[cfg(target_arch = "x86_64")]
macro_rules! cols_in_place {
    ($($t:tt)*) => {
        cols_by_row!($($t)*)
    };
}

/// See the x86-64 definition.
#[cfg(not(target_arch = "x86_64"))]
macro_rules! cols_in_place {
    ($($t:tt)*) => {
        cols!($($t)*)
    };
}

/// The sums of a block's lane accumulators, per row.
#[inline(always)]
fn sums<S: Scalar, const NR: usize, const NA: usize>(accs: &[[[S; LANES]; NA]; NR]) -> [[S; NA]; NR] {
    let mut out = [[S::ZERO; NA]; NR];
    if NR == 4 {
        // The block's four rows reduced together (same bits as one by one).
        for a in 0..NA {
            let s = S::lane_sums4(&[accs[0][a], accs[1][a], accs[2][a], accs[3][a]]);
            for r in 0..4 {
                out[r][a] = s[r];
            }
        }
        return out;
    }
    for r in 0..NR {
        for a in 0..NA {
            out[r][a] = S::lane_sum(accs[r][a]);
        }
    }
    out
}

/// The memory (and momentum) one token works on.
enum Mem<'a, S, const D: usize> {
    /// Read and, on a fire, updated in place (streaming).
    InPlace(&'a mut [[S; D]; D], &'a mut [[S; D]; D]),
    /// Only read (no fire).
    Read(&'a [[S; D]; D]),
    /// Read from the first pair, the fire's result written to the second
    /// (the training forward: the previous and the next history slot).
    To(&'a [[S; D]; D], &'a [[S; D]; D], &'a mut [[S; D]; D], &'a mut [[S; D]; D]),
}

impl<S, const D: usize> Mem<'_, S, D> {
    /// The memory before the token.
    #[inline(always)]
    fn m(&self) -> &[[S; D]; D] {
        match self {
            Mem::InPlace(m, _) => m,
            Mem::Read(m) | Mem::To(m, ..) => m,
        }
    }
}

/// Lane-wise `acc += a .* b` over the chunk (`a.len() <= LANES`).
#[inline(always)]
fn fma_acc<S: Scalar>(acc: &mut [S; LANES], a: &[S], b: &[S]) {
    for j in 0..a.len() {
        acc[j] = a[j].mul_add(b[j], acc[j]);
    }
}

/// Lane-wise `y += c * x` over the chunk.
#[inline(always)]
fn axpy<S: Scalar>(c: S, x: &[S], y: &mut [S]) {
    for j in 0..x.len() {
        y[j] = c.mul_add(x[j], y[j]);
    }
}

/// Columns `o..o + n` of a row.
#[inline(always)]
fn ch<S>(a: &[S], o: usize, n: usize) -> &[S] {
    &a[o..o + n]
}

/// Columns `o..o + n` of a row, mutable.
#[inline(always)]
fn ch_mut<S>(a: &mut [S], o: usize, n: usize) -> &mut [S] {
    &mut a[o..o + n]
}

/// Calls `$f::<NR>(i0, ...)` for the row blocks of `ROWS` rows (`NR =
/// ROWS`), then for each remaining row (`NR = 1`).
macro_rules! for_blocks {
    ($d:expr, |$i0:ident| $f:ident::<$($g:ty),*>($($arg:expr),*)) => {{
        let mut $i0 = 0;
        while $i0 + ROWS <= $d {
            $f::<$($g,)* ROWS>($($arg),*);
            $i0 += ROWS;
        }
        while $i0 < $d {
            $f::<$($g,)* 1>($($arg),*);
            $i0 += 1;
        }
    }};
}

/// The constants of one token's inner-loop step.
#[derive(Clone, Copy)]
struct Step<S> {
    /// The level fires at this token.
    fire: bool,
    /// The inner loop runs (not frozen).
    update: bool,
    /// `G` is known to be zero (a fire since the sequence start): not read.
    g_zero: bool,
    /// `1 - alpha`.
    keep: S,
    /// `theta`.
    theta: S,
    /// `eta` (titans).
    eta: S,
    /// Weight of this level's read in `y`.
    scale: S,
}

/// The vectors of one token.
#[derive(Clone, Copy)]
struct Vecs<'a, S, const D: usize> {
    k: &'a [S; D],
    v: &'a [S; D],
    q: &'a [S; D],
}

/// Rows `i0..i0 + NR` of [`token`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn token_rows<S: Scalar, R: Rule, const D: usize, const NR: usize>(
    i0: usize,
    mem: &mut Mem<'_, S, D>,
    g: &mut [[S; D]; D],
    w: &mut [[S; D]; D],
    p: Step<S>,
    x: Vecs<'_, S, D>,
    r: &mut [S; D],
    y: &mut [S; D],
) {
    let (k, v, q) = (x.k, x.v, x.q);
    let g = rows_mut::<S, D, NR>(g, i0);
    let w = rows_mut::<S, D, NR>(w, i0);
    // The write term's coefficients theta (1 - eta) v_i (titans' W +=
    // theta (1 - eta) v k^T).
    let mut cw = [S::ZERO; NR];
    if R::MOMENTUM {
        let tw = p.theta * (S::ONE - p.eta);
        for rr in 0..NR {
            cw[rr] = tw * v[i0 + rr];
        }
    }
    if !p.fire {
        // M stays: r = M k - v and the read M q in one pass; G += theta r k^T.
        let m = rows::<S, D, NR>(mem.m(), i0);
        let sums = cols!(D, NR, 2, |o, n, rr, acc| {
            let mc = ch(&m[rr], o, n);
            if R::READS_MEMORY {
                fma_acc(&mut acc[0], mc, ch(k, o, n));
            }
            fma_acc(&mut acc[1], mc, ch(q, o, n));
        });
        let mut c = [S::ZERO; NR];
        for rr in 0..NR {
            let ri = if R::READS_MEMORY { sums[rr][0] - v[i0 + rr] } else { -v[i0 + rr] };
            r[i0 + rr] = ri;
            c[rr] = p.theta * ri;
            y[i0 + rr] = p.scale.mul_add(sums[rr][1], y[i0 + rr]);
        }
        if p.update {
            let _ = cols!(D, NR, 0, |o, n, rr, acc| {
                axpy(c[rr], ch(k, o, n), ch_mut(&mut g[rr], o, n));
                if R::MOMENTUM {
                    axpy(cw[rr], ch(k, o, n), ch_mut(&mut w[rr], o, n));
                }
            });
        }
        return;
    }
    // A fire: r against the memory before it, then G' = G + theta r k^T,
    // M <- keep M - G' (titans: W' = W + theta v k^T, M <- keep M - G' +
    // eta S, S <- eta S + W'), G, W <- 0 and the read of the new row, in
    // one more pass.
    let mut c = [S::ZERO; NR];
    let rk = if R::READS_MEMORY {
        let m = rows::<S, D, NR>(mem.m(), i0);
        cols!(D, NR, 1, |o, n, rr, acc| fma_acc(&mut acc[0], ch(&m[rr], o, n), ch(k, o, n)))
    } else {
        [[S::ZERO; 1]; NR]
    };
    for rr in 0..NR {
        let ri = if R::READS_MEMORY { rk[rr][0] - v[i0 + rr] } else { -v[i0 + rr] };
        r[i0 + rr] = ri;
        c[rr] = p.theta * ri;
    }
    let read = match mem {
        Mem::InPlace(m, s) => {
            let (m, s) = (rows_mut::<S, D, NR>(m, i0), rows_mut::<S, D, NR>(s, i0));
            cols_in_place!(D, NR, 1, |o, n, rr, acc| {
                let mc = ch_mut(&mut m[rr], o, n);
                let acc_gw = (ch(&g[rr], o, n), ch(&w[rr], o, n));
                fire_chunk_in_place::<S, R>(p, (c[rr], cw[rr]), ch(k, o, n), mc, acc_gw, ch_mut(&mut s[rr], o, n));
                fma_acc(&mut acc[0], mc, ch(q, o, n));
            })
        }
        Mem::To(m, s, md, sd) => {
            let (m, s) = (rows::<S, D, NR>(m, i0), rows::<S, D, NR>(s, i0));
            let (md, sd) = (rows_mut::<S, D, NR>(md, i0), rows_mut::<S, D, NR>(sd, i0));
            cols!(D, NR, 1, |o, n, rr, acc| {
                let mc = ch_mut(&mut md[rr], o, n);
                let acc_gw = (ch(&g[rr], o, n), ch(&w[rr], o, n));
                fire_chunk::<S, R>(
                    p,
                    (c[rr], cw[rr]),
                    ch(k, o, n),
                    ch(&m[rr], o, n),
                    mc,
                    acc_gw,
                    ch(&s[rr], o, n),
                    ch_mut(&mut sd[rr], o, n),
                );
                fma_acc(&mut acc[0], mc, ch(q, o, n));
            })
        }
        Mem::Read(_) => unreachable!("a fire writes the memory"),
    };
    // The fire consumed G (and W): zero them, row by row. (Zeroing inside
    // the chunk loop let LLVM's tuning for some CPUs vectorise the zero
    // stores across the block's rows as scatters: micro_memory's native
    // streaming step served 101K tok/s with them, 119K without.)
    if !p.g_zero {
        for rr in 0..NR {
            g[rr].fill(S::ZERO);
            if R::MOMENTUM {
                w[rr].fill(S::ZERO);
            }
        }
    }
    for rr in 0..NR {
        y[i0 + rr] = p.scale.mul_add(read[rr][0], y[i0 + rr]);
    }
}

/// `G' = G + c k` on one chunk of a row (`G` is not read when known to be
/// zero): the surprise a fire applies. The caller zeroes `G` after the fire.
#[inline(always)]
fn fired_surprise<S: Scalar>(p: Step<S>, c: S, k: &[S], g: &[S]) -> [S; LANES] {
    let mut gk = [S::ZERO; LANES];
    if p.g_zero {
        for j in 0..k.len() {
            gk[j] = c * k[j];
        }
    } else {
        for j in 0..k.len() {
            gk[j] = c.mul_add(k[j], g[j]);
        }
    }
    gk
}

/// A fire on one chunk of a row: `G' =` [`fired_surprise`] (coefficient
/// `c.0 = theta r_i`), then `M' = keep M - G'`; for titans also `W' = W +
/// c.1 k` (`c.1 = theta v_i`), `M' = keep M - G' + eta S`, `S' = eta S +
/// W'`. `M`, `S` are read from `m`, `s` and the results written to `m_out`,
/// `s_out` (`s`, `s_out`, `gw.1` only for titans).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fire_chunk<S: Scalar, R: Rule>(
    p: Step<S>,
    c: (S, S),
    k: &[S],
    m: &[S],
    m_out: &mut [S],
    gw: (&[S], &[S]),
    s: &[S],
    s_out: &mut [S],
) {
    let (gk, wk) = fired_chunk_terms::<S, R>(p, c, k, gw);
    for j in 0..k.len() {
        let (mj, sj) = fired::<S, R>(p, m[j], s[j], gk[j], wk[j]);
        m_out[j] = mj;
        if R::MOMENTUM {
            s_out[j] = sj;
        }
    }
}

/// The surprise and (titans) write terms of a fire on one chunk:
/// [`fired_surprise`] of `G` and of `W`.
#[inline(always)]
fn fired_chunk_terms<S: Scalar, R: Rule>(p: Step<S>, c: (S, S), k: &[S], gw: (&[S], &[S])) -> ([S; LANES], [S; LANES]) {
    let gk = fired_surprise(p, c.0, k, gw.0);
    let wk = if R::MOMENTUM { fired_surprise(p, c.1, k, gw.1) } else { [S::ZERO; LANES] };
    (gk, wk)
}

/// One element of a fire: `M' = keep M - G'` (titans: `M' = keep M - G' +
/// eta S`, `S' = eta S + W'`), as `(M', S')`.
#[inline(always)]
fn fired<S: Scalar, R: Rule>(p: Step<S>, m: S, s: S, gk: S, wk: S) -> (S, S) {
    if R::MOMENTUM {
        let es = p.eta * s;
        (p.keep.mul_add(m, es - gk), es + wk)
    } else {
        (p.keep.mul_add(m, -gk), s)
    }
}

/// [`fire_chunk`] with `m_out = m`, `s_out = s`.
#[inline(always)]
fn fire_chunk_in_place<S: Scalar, R: Rule>(p: Step<S>, c: (S, S), k: &[S], m: &mut [S], gw: (&[S], &[S]), s: &mut [S]) {
    let (gk, wk) = fired_chunk_terms::<S, R>(p, c, k, gw);
    for j in 0..k.len() {
        let (mj, sj) = fired::<S, R>(p, m[j], s[j], gk[j], wk[j]);
        m[j] = mj;
        if R::MOMENTUM {
            s[j] = sj;
        }
    }
}

/// One token through one level: `r = M k - v` (or `-v`); unless frozen
/// `G += theta r k^T` and, on a fire, the update of `M` (and `S`) as `mem`
/// says; then `y += scale * M q` with the memory after the fire. Each block
/// of rows of the state is read once (twice on a fire) and updated while in
/// registers. Does not touch `n`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn token<S: Scalar, R: Rule, const D: usize>(
    mut mem: Mem<'_, S, D>,
    g: &mut [[S; D]; D],
    w: &mut [[S; D]; D],
    p: Step<S>,
    x: Vecs<'_, S, D>,
    r: &mut [S; D],
    y: &mut [S; D],
) {
    for_blocks!(D, |i0| token_rows::<S, R, D>(i0, &mut mem, g, w, p, x, r, y));
}

/// Rows `i0..i0 + NR` of `y += scale * M q`.
#[inline(always)]
fn read_rows<S: Scalar, const D: usize, const NR: usize>(
    i0: usize,
    m: &[[S; D]; D],
    q: &[S; D],
    scale: S,
    y: &mut [S; D],
) {
    let b = rows::<S, D, NR>(m, i0);
    let s = cols!(D, NR, 1, |o, n, rr, acc| fma_acc(&mut acc[0], ch(&b[rr], o, n), ch(q, o, n)));
    for rr in 0..NR {
        y[i0 + rr] = scale.mul_add(s[rr][0], y[i0 + rr]);
    }
}

crate::dispatch::dispatched! {
    /// `y += scale * M q`.
    pub fn read_acc[S: Scalar, const D: usize][S, D](m: &[[S; D]; D], q: &[S; D], scale: S, y: &mut [S; D]) = read_acc_body;
}

/// The body of [`read_acc`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn read_acc_body<S: Scalar, const D: usize>(m: &[[S; D]; D], q: &[S; D], scale: S, y: &mut [S; D]) {
    for_blocks!(D, |i0| read_rows::<S, D>(i0, m, q, scale, y));
}

/// Rows `i0..i0 + NR` of `y = W x`.
#[inline(always)]
fn matvec_rows<S: Scalar, const D: usize, const NR: usize>(i0: usize, w: &[[S; D]; D], x: &[S; D], y: &mut [S; D]) {
    let b = rows::<S, D, NR>(w, i0);
    let s = cols!(D, NR, 1, |o, n, rr, acc| fma_acc(&mut acc[0], ch(&b[rr], o, n), ch(x, o, n)));
    for rr in 0..NR {
        y[i0 + rr] = s[rr][0];
    }
}

/// The three projections of one token: `k = Wk x`, `v = Wv x`, `q = Wq x`.
#[inline(always)]
fn project<S: Scalar, const D: usize>(
    p: &LevelParams<'_, S, D>,
    x: &[S; D],
    k: &mut [S; D],
    v: &mut [S; D],
    q: &mut [S; D],
) {
    for_blocks!(D, |i0| matvec_rows::<S, D>(i0, p.wk, x, k));
    for_blocks!(D, |i0| matvec_rows::<S, D>(i0, p.wv, x, v));
    for_blocks!(D, |i0| matvec_rows::<S, D>(i0, p.wq, x, q));
}

/// Rows `i0..i0 + NR` of `dq += M^T a`.
#[inline(always)]
fn read_back_rows<S: Scalar, const D: usize, const NR: usize>(i0: usize, m: &[[S; D]; D], a: &[S; D], dq: &mut [S; D]) {
    let b = rows::<S, D, NR>(m, i0);
    let _ = cols!(D, NR, 0, |o, n, rr, acc| axpy(a[i0 + rr], ch(&b[rr], o, n), ch_mut(dq, o, n)));
}

/// Per-token scratch of the streaming step.
#[repr(C)]
pub struct StepScratch<S, const D: usize> {
    /// Key.
    pub k: [S; D],
    /// Value.
    pub v: [S; D],
    /// Query.
    pub q: [S; D],
    /// Surprise factor.
    pub r: [S; D],
}

// SAFETY: arrays of `S: Scalar` only.
unsafe impl<S: Scalar, const D: usize> Zeroable for StepScratch<S, D> {}

/// Whether a level that has seen `n` tokens fires at its next one.
#[inline(always)]
fn fires(n: u64, period: u64, frozen: bool) -> bool {
    !frozen && (n + 1).is_multiple_of(period)
}

crate::dispatch::dispatched! {
    /// One streaming token through one level: projections, gates, inner loop
    /// (surprise, accumulation, the fire if due, `n += 1`; nothing when
    /// `frozen`), and `y += scale * M q` with the memory after the token.
    #[allow(clippy::too_many_arguments)]
    pub fn step[S: Scalar, R: Rule, const D: usize][S, R, D](p: &LevelParams<'_, S, D>, period: u64, normalize_keys: bool, frozen: bool, m_in: &[S; D], st: &mut LevelState<S, D>, sc: &mut StepScratch<S, D>, scale: S, y: &mut [S; D]) = step_body;
}

/// The body of [`step`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn step_body<S: Scalar, R: Rule, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    m_in: &[S; D],
    st: &mut LevelState<S, D>,
    sc: &mut StepScratch<S, D>,
    scale: S,
    y: &mut [S; D],
) {
    project(p, m_in, &mut sc.k, &mut sc.v, &mut sc.q);
    step_projected_body::<S, R, D>(&p.gates(), period, normalize_keys, frozen, st, sc, scale, y);
}

crate::dispatch::dispatched! {
    /// [`step`] after the projections: `sc.k`, `sc.v`, `sc.q` already hold
    /// `W_k m`, `W_v m`, `W_q m` (computed by the caller, e.g. from quantized
    /// weights); only the level's gates are read.
    #[allow(clippy::too_many_arguments)]
    pub fn step_projected[S: Scalar, R: Rule, const D: usize][S, R, D](p: &LevelGates<'_, S>, period: u64, normalize_keys: bool, frozen: bool, st: &mut LevelState<S, D>, sc: &mut StepScratch<S, D>, scale: S, y: &mut [S; D]) = step_projected_body;
}

/// The body of [`step_projected`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn step_projected_body<S: Scalar, R: Rule, const D: usize>(
    p: &LevelGates<'_, S>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    st: &mut LevelState<S, D>,
    sc: &mut StepScratch<S, D>,
    scale: S,
    y: &mut [S; D],
) {
    if normalize_keys {
        normalize(&mut sc.k);
        normalize(&mut sc.q);
    }
    let (alpha, theta, _, eta) = gates::<S, R, D>(p, period, &sc.k, &sc.v);
    let fire = fires(st.n, period, frozen);
    if !frozen {
        st.n += 1;
    }
    let sp = Step { fire, update: !frozen, g_zero: false, keep: S::ONE - alpha, theta, eta, scale };
    let x = Vecs { k: &sc.k, v: &sc.v, q: &sc.q };
    token::<S, R, D>(Mem::InPlace(&mut st.m, &mut st.s), &mut st.g, &mut st.w, sp, x, &mut sc.r, y);
}

/// A level's run-time schedule in a stream: the power knob (docs/model.md,
/// "Schedules"). A device trades adaptation for energy without
/// recompiling: a level with spec period `p` and multiplier `m` fires every
/// `p m` tokens, with `theta` divided by `p m` (so every fire stays a
/// contraction), and a paused level skips its key and value projections,
/// gates, surprise and update (its state, `n` included, does not change
/// at all); its read `M q` stays.
///
/// All-zero bytes are the default schedule (multiplier 1, running), so a
/// zeroed stream computes exactly what it computed before the knob
/// existed. A new multiplier takes effect when the level's current chunk
/// is empty (`n` a multiple of the period in force), so a chunk never mixes
/// two periods; pausing and resuming take effect at the next token.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// The multiplier asked for (0 is read as 1).
    requested: u32,
    /// The multiplier in force (0 is read as 1).
    active: u32,
    /// Paused: nothing but the read.
    paused: bool,
}

// SAFETY: two `u32` and a `bool`: all-zero bytes are valid values (the default).
unsafe impl Zeroable for Schedule {}

impl Schedule {
    /// The default: multiplier 1, running.
    pub const DEFAULT: Schedule = Schedule { requested: 0, active: 0, paused: false };

    /// Asks for period multiplier `m` (0 and 1 both mean the spec's period).
    /// It takes effect at once if the level's chunk is empty, else after its
    /// next fire under the multiplier in force.
    pub fn set_multiplier(&mut self, m: u32) {
        self.requested = m;
    }

    /// Pauses (`true`) or resumes (`false`) the level's inner loop.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// The multiplier asked for (at least 1).
    pub fn multiplier(&self) -> u32 {
        self.requested.max(1)
    }

    /// The multiplier in force (at least 1): differs from
    /// [`Schedule::multiplier`] while a change waits for the chunk to end.
    pub fn active_multiplier(&self) -> u32 {
        self.active.max(1)
    }

    /// Whether the level is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The period a level of spec period `period` that has seen `n` tokens
    /// uses for its next token: `period * m`, switching to the requested
    /// multiplier first when the chunk is empty (`n % (period * active) == 0`).
    pub fn period(&mut self, period: u64, n: u64) -> u64 {
        if self.requested.max(1) != self.active.max(1) && n.is_multiple_of(period * self.active.max(1) as u64) {
            self.active = self.requested;
        }
        period * self.active.max(1) as u64
    }
}

/// What a paused level computes for one token: `q = n(W_q m)` and `y +=
/// scale * M q` (the read of [`step`], with the same operations in the same
/// order, so it equals a frozen level's read bit for bit). The key and value
/// projections, the gates and the state are not touched.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub fn read_only<S: Scalar, const D: usize>(
    wq: &[[S; D]; D],
    normalize_keys: bool,
    m_in: &[S; D],
    st: &LevelState<S, D>,
    sc: &mut StepScratch<S, D>,
    scale: S,
    y: &mut [S; D],
) {
    for_blocks!(D, |i0| matvec_rows::<S, D>(i0, wq, m_in, &mut sc.q));
    read_projected(normalize_keys, st, sc, scale, y);
}

/// [`read_only`] after the query projection: `sc.q` holds `W_q m`.
#[inline]
pub fn read_projected<S: Scalar, const D: usize>(
    normalize_keys: bool,
    st: &LevelState<S, D>,
    sc: &mut StepScratch<S, D>,
    scale: S,
    y: &mut [S; D],
) {
    if normalize_keys {
        normalize(&mut sc.q);
    }
    read_acc(&st.m, &sc.q, scale, y);
}

/// [`step`] under a run-time [`Schedule`]: the read alone when paused,
/// else [`step`] with the period `period * m` ([`Schedule::period`]). With
/// the default schedule it is [`step`] with `period`, call for call.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn step_scheduled<S: Scalar, R: Rule, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    sched: &mut Schedule,
    m_in: &[S; D],
    st: &mut LevelState<S, D>,
    sc: &mut StepScratch<S, D>,
    scale: S,
    y: &mut [S; D],
) {
    if sched.paused {
        read_only(p.wq, normalize_keys, m_in, st, sc, scale, y);
        return;
    }
    let period = sched.period(period, st.n);
    step::<S, R, D>(p, period, normalize_keys, frozen, m_in, st, sc, scale, y);
}

crate::dispatch::dispatched! {
    /// The training forward of one level over a sequence: from input `m_in`
    /// and start state `start`, adds `scale * y^l_t` into `y`, leaves the final
    /// state in `end` and what the backward needs in `tr` (the memory, and
    /// momentum, after each fire). `chunk` is the chunk-wise path's scratch,
    /// which a level with `period > 1` needs (panics on `None` then); a
    /// period-1 level does not read it.
    #[allow(clippy::too_many_arguments)]
    pub fn forward[S: Scalar, R: Rule, const T: usize, const D: usize][S, R, T, D](p: &LevelParams<'_, S, D>, period: u64, normalize_keys: bool, frozen: bool, m_in: &[[S; D]; T], start: &LevelState<S, D>, end: &mut LevelState<S, D>, tr: &mut LevelTrace<S, T, D>, chunk: Option<&mut ChunkScratch<S, T, D>>, scale: S, y: &mut [[S; D]; T]) = forward_body;
}

/// The body of [`forward`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_body<S: Scalar, R: Rule, const T: usize, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    m_in: &[[S; D]; T],
    start: &LevelState<S, D>,
    end: &mut LevelState<S, D>,
    tr: &mut LevelTrace<S, T, D>,
    chunk: Option<&mut ChunkScratch<S, T, D>>,
    scale: S,
    y: &mut [[S; D]; T],
) {
    // kr = Wk m, v = Wv m, qr = Wq m for the whole sequence: X W^T, each
    // weight transposed first into the first history slot (written only
    // after the projections, by the first fire).
    for (w, out) in [(p.wk, &mut tr.k), (p.wv, &mut tr.v), (p.wq, &mut tr.q)] {
        crate::gemm::transpose(w, &mut tr.m_hist[0]);
        crate::gemm::linear_t(m_in, &tr.m_hist[0], out);
    }
    for t in 0..T {
        if normalize_keys {
            tr.k_norm[t] = normalize(&mut tr.k[t]);
            tr.q_norm[t] = normalize(&mut tr.q[t]);
        } else {
            tr.k_norm[t] = S::ONE;
            tr.q_norm[t] = S::ONE;
        }
        let (alpha, theta, theta_pre, eta) = gates::<S, R, D>(&p.gates(), period, &tr.k[t], &tr.v[t]);
        tr.alpha[t] = alpha;
        tr.theta[t] = theta;
        tr.theta_pre[t] = theta_pre;
        tr.eta[t] = eta;
    }
    if chunked::applies(period) {
        let c = chunk.expect("memory::forward: a level with period > 1 needs a ChunkScratch");
        chunked::forward::<S, R, T, D>(period, frozen, start, end, tr, c, scale, y);
        return;
    }
    // The memory (and momentum) after each fire is written straight into
    // the next history slot, which the tokens after it read; `end` gets
    // the last at the end. `G` is worked on in `end`.
    end.g = start.g;
    end.w = start.w;
    end.n = start.n;
    // After a fire G is zero until a token that does not fire adds to it.
    let mut g_zero = false;
    let mut f = 0;
    for t in 0..T {
        let fire = fires(end.n, period, frozen);
        if !frozen {
            end.n += 1;
        }
        let sp = Step {
            fire,
            update: !frozen,
            g_zero,
            keep: S::ONE - tr.alpha[t],
            theta: tr.theta[t],
            eta: tr.eta[t],
            scale,
        };
        let (m_done, m_next) = tr.m_hist.split_at_mut(f);
        let (s_done, s_next) = tr.s_hist.split_at_mut(f);
        let (m, s) = (m_done.last().unwrap_or(&start.m), s_done.last().unwrap_or(&start.s));
        let mem = if fire { Mem::To(m, s, &mut m_next[0], &mut s_next[0]) } else { Mem::Read(m) };
        let x = Vecs { k: &tr.k[t], v: &tr.v[t], q: &tr.q[t] };
        token::<S, R, D>(mem, &mut end.g, &mut end.w, sp, x, &mut tr.r[t], &mut y[t]);
        if fire {
            f += 1;
            g_zero = true;
        } else if !frozen {
            g_zero = false;
        }
    }
    if f == 0 {
        end.m = start.m;
        end.s = start.s;
    } else {
        end.m = tr.m_hist[f - 1];
        end.s = if R::MOMENTUM { tr.s_hist[f - 1] } else { start.s };
    }
}

/// Backward adjoint state of one level, carried backwards through time.
#[repr(C)]
pub struct LevelAdjoint<S, const D: usize> {
    /// Gradient with respect to `M` after the current token.
    pub dm: [[S; D]; D],
    /// Gradient with respect to `G` after the current token.
    pub dg: [[S; D]; D],
    /// Gradient with respect to `S` after the current token.
    pub ds: [[S; D]; D],
    /// Gradient with respect to `W` after the current token (titans).
    pub dw: [[S; D]; D],
}

// SAFETY: arrays of `S: Scalar` only.
unsafe impl<S: Scalar, const D: usize> Zeroable for LevelAdjoint<S, D> {}

/// What the backward of one token reads besides its vectors: the memory
/// after it (`mt`) and before it (`mp`), the momentum before it (`sp`,
/// titans fires), the read's gradient `dyl = scale * dy_t` and `r_t`.
#[derive(Clone, Copy)]
struct Back<'a, S, const D: usize> {
    mt: &'a [[S; D]; D],
    mp: &'a [[S; D]; D],
    sp: &'a [[S; D]; D],
    dyl: &'a [S; D],
    r: &'a [S; D],
}

/// The backward's per-token gradients: `dq`, `dk`, `dv`, the lane sums of
/// `dM .* M_prev` and `dS_tot .* S_prev` per block row, and `d_theta`.
struct BackOut<S, const D: usize> {
    dq: [S; D],
    dk: [S; D],
    dv: [S; D],
    alpha: [[S; LANES]; ROWS],
    eta: [[S; LANES]; ROWS],
    d_theta: S,
    /// `d eta` through the write term `theta (1 - eta) v k^T` (titans).
    d_eta_w: S,
}

/// Rows `i0..i0 + NR` of the backward of one token (not frozen): the read
/// (`dq += M_t^T dyl`, `dM += dyl q^T`), the fire (`dG' = -dM`; titans:
/// `dW' = dS`, `dS <- eta (dS + dM)`; `dM <- keep dM`, the gate sums), then
/// `G' = G + theta r k^T` (`dr = theta dG' k`, `d_theta += r . dG' k`, `dk
/// += theta dG'^T r`), titans' `W' = W + c v k^T` with `c = theta (1 -
/// eta)` (`dv += c dW' k`, `d_theta += (1 - eta) v . dW' k`, `d_eta -=
/// theta v . dW' k`, `dk += c dW'^T v`) and `r = M_prev k - v`
/// (`dM += dr k^T`, `dk += M_prev^T dr`, `dv -= dr`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn back_rows<S: Scalar, R: Rule, const D: usize, const NR: usize>(
    i0: usize,
    p: Step<S>,
    x: Vecs<'_, S, D>,
    b: Back<'_, S, D>,
    adj: &mut LevelAdjoint<S, D>,
    o: &mut BackOut<S, D>,
) {
    let (k, q) = (x.k, x.q);
    let mt = rows::<S, D, NR>(b.mt, i0);
    let mp = rows::<S, D, NR>(b.mp, i0);
    let sp = rows::<S, D, NR>(b.sp, i0);
    let dm = rows_mut::<S, D, NR>(&mut adj.dm, i0);
    let dg = rows_mut::<S, D, NR>(&mut adj.dg, i0);
    let ds = rows_mut::<S, D, NR>(&mut adj.ds, i0);
    let dw = rows_mut::<S, D, NR>(&mut adj.dw, i0);
    let mut a = [S::ZERO; NR];
    a.copy_from_slice(&b.dyl[i0..i0 + NR]);
    let (dq, alpha, eta) = (&mut o.dq, &mut o.alpha, &mut o.eta);
    let gk = cols!(D, NR, 2, |o, n, rr, acc| {
        axpy(a[rr], ch(&mt[rr], o, n), ch_mut(dq, o, n));
        let dmc = ch_mut(&mut dm[rr], o, n);
        axpy(a[rr], ch(q, o, n), dmc);
        let dgc = ch_mut(&mut dg[rr], o, n);
        let dwc = ch_mut(&mut dw[rr], o, n);
        if p.fire {
            for j in 0..n {
                dgc[j] = -dmc[j];
            }
            if R::MOMENTUM {
                // M' = keep M - G' + eta S, S' = eta S + W'.
                let (dsc, spc) = (ch_mut(&mut ds[rr], o, n), ch(&sp[rr], o, n));
                for j in 0..n {
                    let tot = dsc[j] + dmc[j];
                    eta[rr][j] = tot.mul_add(spc[j], eta[rr][j]);
                    dwc[j] = dsc[j];
                    dsc[j] = p.eta * tot;
                }
            }
            fma_acc(&mut alpha[rr], dmc, ch(&mp[rr], o, n));
            for x in dmc.iter_mut() {
                *x *= p.keep;
            }
        }
        fma_acc(&mut acc[0], dgc, ch(k, o, n));
        if R::MOMENTUM {
            fma_acc(&mut acc[1], dwc, ch(k, o, n));
        }
    });
    let mut dr = [S::ZERO; NR];
    let mut cr = [S::ZERO; NR];
    let mut cv = [S::ZERO; NR];
    for rr in 0..NR {
        let ri = b.r[i0 + rr];
        o.d_theta = ri.mul_add(gk[rr][0], o.d_theta);
        dr[rr] = p.theta * gk[rr][0];
        cr[rr] = p.theta * ri;
        o.dv[i0 + rr] = -dr[rr];
        if R::MOMENTUM {
            // W' = W + theta (1 - eta) v k^T.
            let vi = x.v[i0 + rr];
            let tw = p.theta * (S::ONE - p.eta);
            o.d_theta = ((S::ONE - p.eta) * vi).mul_add(gk[rr][1], o.d_theta);
            o.d_eta_w = (-(p.theta * vi)).mul_add(gk[rr][1], o.d_eta_w);
            o.dv[i0 + rr] = tw.mul_add(gk[rr][1], o.dv[i0 + rr]);
            cv[rr] = tw * vi;
        }
    }
    let dk = &mut o.dk;
    let _ = cols!(D, NR, 0, |o, n, rr, acc| {
        let dkc = ch_mut(dk, o, n);
        axpy(cr[rr], ch(&dg[rr], o, n), dkc);
        if R::MOMENTUM {
            axpy(cv[rr], ch(&dw[rr], o, n), dkc);
        }
        if R::READS_MEMORY {
            axpy(dr[rr], ch(&mp[rr], o, n), dkc);
            axpy(dr[rr], ch(k, o, n), ch_mut(&mut dm[rr], o, n));
        }
    });
}

crate::dispatch::dispatched! {
    /// The backward of [`forward`]: differentiates through every inner-loop
    /// update of the sequence (the start state is a constant). `dy` is the
    /// gradient of the loss with respect to the combined read `y` (this level
    /// contributes `scale * M q`). Adds the parameter gradients into `g` and the
    /// gradient with respect to the input into `dm_in`. `chunk` as for
    /// [`forward`] (its contents need not be what the forward left).
    #[allow(clippy::too_many_arguments)]
    pub fn backward[S: Scalar, R: Rule, const T: usize, const D: usize][S, R, T, D](p: &LevelParams<'_, S, D>, period: u64, normalize_keys: bool, frozen: bool, m_in: &[[S; D]; T], start: &LevelState<S, D>, tr: &mut LevelTrace<S, T, D>, chunk: Option<&mut ChunkScratch<S, T, D>>, adj: &mut LevelAdjoint<S, D>, scale: S, dy: &[[S; D]; T], g: &mut LevelGrads<'_, S, D>, dm_in: &mut [[S; D]; T]) = backward_body;
}

/// The body of [`backward`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_body<S: Scalar, R: Rule, const T: usize, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    m_in: &[[S; D]; T],
    start: &LevelState<S, D>,
    tr: &mut LevelTrace<S, T, D>,
    chunk: Option<&mut ChunkScratch<S, T, D>>,
    adj: &mut LevelAdjoint<S, D>,
    scale: S,
    dy: &[[S; D]; T],
    g: &mut LevelGrads<'_, S, D>,
    dm_in: &mut [[S; D]; T],
) {
    if chunked::applies(period) {
        let c = chunk.expect("memory::backward: a level with period > 1 needs a ChunkScratch");
        chunked::backward::<S, R, T, D>(p, period, normalize_keys, frozen, start, tr, c, adj, scale, dy, g);
        projections_backward(p, m_in, tr, g, dm_in);
        return;
    }
    for r in adj.dm.iter_mut().chain(adj.dg.iter_mut()).chain(adj.ds.iter_mut()).chain(adj.dw.iter_mut()) {
        r.fill(S::ZERO);
    }
    // f = the number of fires among tokens 0..=t: M after token t is
    // history slot f - 1 (the start state when f = 0).
    let mut f = (0..T).filter(|&t| fires(start.n + t as u64, period, frozen)).count();
    let mut o = BackOut {
        dq: [S::ZERO; D],
        dk: [S::ZERO; D],
        dv: [S::ZERO; D],
        alpha: [[S::ZERO; LANES]; ROWS],
        eta: [[S::ZERO; LANES]; ROWS],
        d_theta: S::ZERO,
        d_eta_w: S::ZERO,
    };
    for t in (0..T).rev() {
        let fire = fires(start.n + t as u64, period, frozen);
        let mt: &[[S; D]; D] = if f == 0 { &start.m } else { &tr.m_hist[f - 1] };
        let (mp, sp): (&[[S; D]; D], &[[S; D]; D]) = if !fire {
            (mt, &start.s)
        } else if f < 2 {
            (&start.m, &start.s)
        } else {
            (&tr.m_hist[f - 2], &tr.s_hist[f - 2])
        };
        let mut dyl = [S::ZERO; D];
        for i in 0..D {
            dyl[i] = scale * dy[t][i];
        }
        let (alpha, theta, eta) = (tr.alpha[t], tr.theta[t], tr.eta[t]);
        let sp_ = Step { fire, update: !frozen, g_zero: false, keep: S::ONE - alpha, theta, eta, scale };
        let x = Vecs { k: &tr.k[t], v: &tr.v[t], q: &tr.q[t] };
        let b = Back { mt, mp, sp, dyl: &dyl, r: &tr.r[t] };
        o.dq = [S::ZERO; D];
        o.dk = [S::ZERO; D];
        o.dv = [S::ZERO; D];
        o.alpha = [[S::ZERO; LANES]; ROWS];
        o.eta = [[S::ZERO; LANES]; ROWS];
        o.d_theta = S::ZERO;
        o.d_eta_w = S::ZERO;
        if frozen {
            // The state is a constant: only the read's dq = M_t^T dyl.
            for_blocks!(D, |i0| read_back_rows::<S, D>(i0, mt, &dyl, &mut o.dq));
        } else {
            for_blocks!(D, |i0| back_rows::<S, R, D>(i0, sp_, x, b, adj, &mut o));
        }
        let (k, v) = (x.k, x.v);
        let (dq, dk, dv) = (&mut o.dq, &mut o.dk, &mut o.dv);
        // Gates: alpha = sigmoid(a), theta = sigmoid(b) / (period (|k|^2 +
        // eps)), eta = sigmoid(c), each of w.[k; v] + bias. (Frozen, all
        // their gradients are zero; without a fire, those of alpha and eta.)
        if !frozen {
            theta_backward(o.d_theta, theta, tr.theta_pre[t], p.w_theta, k, v, g.w_theta, g.b_theta, dk, dv);
        }
        if fire {
            let d_alpha = -o.alpha.iter().fold(S::ZERO, |s, a| s + S::lane_sum(*a));
            let da = d_alpha * alpha * (S::ONE - alpha);
            gate_backward(da, p.w_alpha, k, v, g.w_alpha, g.b_alpha, dk, dv);
        }
        if R::MOMENTUM && !frozen {
            // eta scales the momentum at a fire and every token's write.
            let fired = if fire { o.eta.iter().fold(S::ZERO, |s, a| s + S::lane_sum(*a)) } else { S::ZERO };
            let dc = (fired + o.d_eta_w) * eta * (S::ONE - eta);
            gate_backward(dc, p.w_eta, k, v, g.w_eta, g.b_eta, dk, dv);
        }
        if normalize_keys {
            normalize_backward(k, tr.k_norm[t], dk);
            normalize_backward(&tr.q[t], tr.q_norm[t], dq);
        }
        tr.dk[t] = *dk;
        tr.dv[t] = *dv;
        tr.dq[t] = *dq;
        if fire {
            f -= 1;
        }
    }
    projections_backward(p, m_in, tr, g, dm_in);
}

/// The backward of the projections `kr = Wk m`, `v = Wv m`, `qr = Wq m`,
/// from the gradients in `tr.dk`, `tr.dv`, `tr.dq`.
#[inline(always)]
fn projections_backward<S: Scalar, const T: usize, const D: usize>(
    p: &LevelParams<'_, S, D>,
    m_in: &[[S; D]; T],
    tr: &LevelTrace<S, T, D>,
    g: &mut LevelGrads<'_, S, D>,
    dm_in: &mut [[S; D]; T],
) {
    linear_backward_weight_acc(&tr.dk, m_in, g.wk);
    linear_backward_weight_acc(&tr.dv, m_in, g.wv);
    linear_backward_weight_acc(&tr.dq, m_in, g.wq);
    linear_backward_input_acc(&tr.dk, p.wk, dm_in);
    linear_backward_input_acc(&tr.dv, p.wv, dm_in);
    linear_backward_input_acc(&tr.dq, p.wq, dm_in);
}

/// Backward of a gate pre-activation `w . [k; v] + b` given its gradient `d`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gate_backward<S: Scalar, const D: usize>(
    d: S,
    w: &[S],
    k: &[S; D],
    v: &[S; D],
    dw: &mut [S],
    db: &mut S,
    dk: &mut [S; D],
    dv: &mut [S; D],
) {
    *db += d;
    for i in 0..D {
        dw[i] += d * k[i];
        dw[D + i] += d * v[i];
        dk[i] += d * w[i];
        dv[i] += d * w[D + i];
    }
}

mod chunked;

#[cfg(all(test, feature = "alloc"))]
mod tests {
    //! The kernels against the straightforward code they replace (one pass
    //! per operation, `M` and `S` stored after every token), in `f64`, at
    //! widths that exercise both the full chunks and blocks and the
    //! remainders (`tests/all/memory.rs` checks the math itself against finite
    //! differences and the reference interpreter, at small widths).
    #![allow(clippy::too_many_arguments, clippy::type_complexity)]

    use super::*;
    use crate::kernels::matvec;
    use crate::rng::Rng;
    use alloc::vec;
    use alloc::vec::Vec;

    #[allow(clippy::too_many_arguments)]
    fn ref_update<S: Scalar, R: Rule, const D: usize>(
        st: &mut LevelState<S, D>,
        period: u64,
        frozen: bool,
        k: &[S; D],
        v: &[S; D],
        alpha: S,
        theta: S,
        eta: S,
        r: &mut [S; D],
    ) {
        // r = M k - v (delta, titans) or -v (hebbian)
        for i in 0..D {
            r[i] = if R::READS_MEMORY { dot(&st.m[i], k) - v[i] } else { -v[i] };
        }
        if frozen {
            return;
        }
        let fire = (st.n + 1).is_multiple_of(period);
        st.n += 1;
        // One pass over the D x D state: G' = G + theta r k^T (titans also
        // W' = W + theta v k^T), then on a fire M <- (1 - alpha) M - G' (or
        // M <- (1 - alpha) M - G' + eta S, S <- eta S + W') and G, W <- 0;
        // otherwise G <- G', W <- W'.
        let keep = S::ONE - alpha;
        for i in 0..D {
            let c = theta * r[i];
            let cw = theta * (S::ONE - eta) * v[i];
            let (m, g, s, w) = (&mut st.m[i], &mut st.g[i], &mut st.s[i], &mut st.w[i]);
            if !fire {
                for j in 0..D {
                    g[j] += c * k[j];
                    if R::MOMENTUM {
                        w[j] += cw * k[j];
                    }
                }
            } else if R::MOMENTUM {
                for j in 0..D {
                    let s_old = s[j];
                    m[j] = keep * m[j] - (g[j] + c * k[j]) + eta * s_old;
                    s[j] = eta * s_old + (w[j] + cw * k[j]);
                    g[j] = S::ZERO;
                    w[j] = S::ZERO;
                }
            } else {
                for j in 0..D {
                    m[j] = keep * m[j] - (g[j] + c * k[j]);
                    g[j] = S::ZERO;
                }
            }
        }
    }

    fn ref_read_acc<S: Scalar, const D: usize>(m: &[[S; D]; D], q: &[S; D], scale: S, y: &mut [S; D]) {
        for i in 0..D {
            y[i] += scale * dot(&m[i], q);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ref_forward<S: Scalar, R: Rule, const T: usize, const D: usize>(
        p: &LevelParams<'_, S, D>,
        period: u64,
        normalize_keys: bool,
        frozen: bool,
        m_in: &[[S; D]; T],
        start: &LevelState<S, D>,
        end: &mut LevelState<S, D>,
        tr: &mut LevelTrace<S, T, D>,
        scale: S,
        y: &mut [[S; D]; T],
    ) {
        for t in 0..T {
            matvec(p.wk, &m_in[t], &mut tr.k[t]);
            matvec(p.wv, &m_in[t], &mut tr.v[t]);
            matvec(p.wq, &m_in[t], &mut tr.q[t]);
        }
        for t in 0..T {
            if normalize_keys {
                tr.k_norm[t] = normalize(&mut tr.k[t]);
                tr.q_norm[t] = normalize(&mut tr.q[t]);
            } else {
                tr.k_norm[t] = S::ONE;
                tr.q_norm[t] = S::ONE;
            }
            let (alpha, theta, theta_pre, eta) = gates::<S, R, D>(&p.gates(), period, &tr.k[t], &tr.v[t]);
            tr.alpha[t] = alpha;
            tr.theta[t] = theta;
            tr.theta_pre[t] = theta_pre;
            tr.eta[t] = eta;
        }
        end.copy_from(start);
        for t in 0..T {
            ref_update::<S, R, D>(
                end,
                period,
                frozen,
                &tr.k[t],
                &tr.v[t],
                tr.alpha[t],
                tr.theta[t],
                tr.eta[t],
                &mut tr.r[t],
            );
            tr.m_hist[t] = end.m;
            if R::MOMENTUM {
                tr.s_hist[t] = end.s;
            }
            ref_read_acc(&end.m, &tr.q[t], scale, &mut y[t]);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ref_backward<S: Scalar, R: Rule, const T: usize, const D: usize>(
        p: &LevelParams<'_, S, D>,
        period: u64,
        normalize_keys: bool,
        frozen: bool,
        m_in: &[[S; D]; T],
        start: &LevelState<S, D>,
        tr: &mut LevelTrace<S, T, D>,
        adj: &mut LevelAdjoint<S, D>,
        scale: S,
        dy: &[[S; D]; T],
        g: &mut LevelGrads<'_, S, D>,
        dm_in: &mut [[S; D]; T],
    ) {
        for r in adj.dm.iter_mut().chain(adj.dg.iter_mut()).chain(adj.ds.iter_mut()).chain(adj.dw.iter_mut()) {
            r.fill(S::ZERO);
        }
        let mut dyl = [S::ZERO; D];
        for t in (0..T).rev() {
            let m_prev: &[[S; D]; D] = if t == 0 { &start.m } else { &tr.m_hist[t - 1] };
            let m_cur = &tr.m_hist[t];
            let (k, v, r) = (&tr.k[t], &tr.v[t], &tr.r[t]);
            let (alpha, theta, eta) = (tr.alpha[t], tr.theta[t], tr.eta[t]);
            // Read: y^l = scale * M_t q_t.
            for i in 0..D {
                dyl[i] = scale * dy[t][i];
            }
            // dq = M_t^T dyl ; dM_t += dyl q^T
            let dq = &mut tr.dq[t];
            dq.fill(S::ZERO);
            for i in 0..D {
                let c = dyl[i];
                for j in 0..D {
                    dq[j] += c * m_cur[i][j];
                    adj.dm[i][j] += c * tr.q[t][j];
                }
            }
            let dk = &mut tr.dk[t];
            let dv = &mut tr.dv[t];
            dk.fill(S::ZERO);
            dv.fill(S::ZERO);
            let mut d_alpha = S::ZERO;
            let mut d_eta = S::ZERO;
            let mut d_theta = S::ZERO;
            let n = start.n + t as u64;
            let fire = !frozen && (n + 1).is_multiple_of(period);
            if !frozen {
                if fire {
                    // delta/hebbian: M_t = (1 - alpha) M_{t-1} - G'_t
                    // titans: M_t = (1 - alpha) M_{t-1} - G'_t + eta S_{t-1} ; S_t = eta S_{t-1} + W'_t
                    // G_t = W_t = 0: the incoming dG, dW are dropped; `dg`, `dw` become dG'_t, dW'_t.
                    let keep = S::ONE - alpha;
                    if R::MOMENTUM {
                        let s_prev: &[[S; D]; D] = if t == 0 { &start.s } else { &tr.s_hist[t - 1] };
                        for i in 0..D {
                            for j in 0..D {
                                let ds_tot = adj.ds[i][j] + adj.dm[i][j];
                                d_alpha -= adj.dm[i][j] * m_prev[i][j];
                                d_eta += ds_tot * s_prev[i][j];
                                adj.dg[i][j] = -adj.dm[i][j];
                                adj.dw[i][j] = adj.ds[i][j];
                                adj.ds[i][j] = eta * ds_tot;
                                adj.dm[i][j] *= keep;
                            }
                        }
                    } else {
                        for i in 0..D {
                            for j in 0..D {
                                d_alpha -= adj.dm[i][j] * m_prev[i][j];
                                adj.dg[i][j] = -adj.dm[i][j];
                                adj.dm[i][j] *= keep;
                            }
                        }
                    }
                }
                // Without a fire G_t = G'_t, so `dg` already holds dG'_t. Either
                // way dG_{t-1} = dG'_t, so `dg` carries on unchanged below.
                // G'_t = G_{t-1} + theta r k^T
                // d_theta = r^T dG' k ; dr = theta dG' k ; dk += theta dG'^T r
                let mut dr = [S::ZERO; D];
                for i in 0..D {
                    let gk = dot(&adj.dg[i], k);
                    d_theta += r[i] * gk;
                    dr[i] = theta * gk;
                    let c = theta * r[i];
                    for j in 0..D {
                        dk[j] += c * adj.dg[i][j];
                    }
                    if R::MOMENTUM {
                        // W'_t = W_{t-1} + theta (1 - eta) v k^T: d_theta += (1 - eta) v . dW' k ;
                        // d_eta -= theta v . dW' k ; dv += theta (1 - eta) dW' k ; dk += theta (1 - eta) dW'^T v
                        let wk = dot(&adj.dw[i], k);
                        d_theta += (S::ONE - eta) * v[i] * wk;
                        d_eta -= theta * v[i] * wk;
                        dv[i] += theta * (S::ONE - eta) * wk;
                        let cv = theta * (S::ONE - eta) * v[i];
                        for j in 0..D {
                            dk[j] += cv * adj.dw[i][j];
                        }
                    }
                }
                if R::READS_MEMORY {
                    // r = M_{t-1} k - v: dM_{t-1} += dr k^T ; dk += M_{t-1}^T dr ; dv -= dr
                    for i in 0..D {
                        for j in 0..D {
                            adj.dm[i][j] += dr[i] * k[j];
                            dk[j] += dr[i] * m_prev[i][j];
                        }
                        dv[i] -= dr[i];
                    }
                } else {
                    // r = -v
                    for i in 0..D {
                        dv[i] -= dr[i];
                    }
                }
            }
            // Gates: alpha = sigmoid(a), theta = sigmoid(b) / (period (|k|^2 + eps)), eta = sigmoid(c).
            let da = d_alpha * alpha * (S::ONE - alpha);
            let dc = if R::MOMENTUM { d_eta * eta * (S::ONE - eta) } else { S::ZERO };
            gate_backward(da, p.w_alpha, k, v, g.w_alpha, g.b_alpha, dk, dv);
            theta_backward(d_theta, theta, tr.theta_pre[t], p.w_theta, k, v, g.w_theta, g.b_theta, dk, dv);
            if R::MOMENTUM {
                gate_backward(dc, p.w_eta, k, v, g.w_eta, g.b_eta, dk, dv);
            }
            if normalize_keys {
                normalize_backward(k, tr.k_norm[t], dk);
                normalize_backward(&tr.q[t], tr.q_norm[t], &mut tr.dq[t]);
            }
        }
        // kr = Wk m, v = Wv m, qr = Wq m
        linear_backward_weight_acc(&tr.dk, m_in, g.wk);
        linear_backward_weight_acc(&tr.dv, m_in, g.wv);
        linear_backward_weight_acc(&tr.dq, m_in, g.wq);
        linear_backward_input_acc(&tr.dk, p.wk, dm_in);
        linear_backward_input_acc(&tr.dv, p.wv, dm_in);
        linear_backward_input_acc(&tr.dq, p.wq, dm_in);
    }

    fn fill<const D: usize>(r: &mut Rng, m: &mut [[f64; D]], s: f64) {
        for row in m.iter_mut() {
            for x in row.iter_mut() {
                *x = s * (2.0 * r.next_f64() - 1.0);
            }
        }
    }

    /// Every element of the scratch set to NaN.
    fn scribble<const T: usize, const D: usize>(c: &mut ChunkScratch<f64, T, D>) {
        for m in [&mut c.mt, &mut c.st, &mut c.gt, &mut c.wt, &mut c.m_row] {
            m.as_flattened_mut().fill(f64::NAN);
        }
        c.xa.as_flattened_mut().fill(f64::NAN);
        c.xb.as_flattened_mut().fill(f64::NAN);
        c.d_theta.fill(f64::NAN);
        c.d_eta.fill(f64::NAN);
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        // NaN anywhere is an infinite difference (`f64::max` would drop it).
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .map(|e| if e.is_nan() { f64::INFINITY } else { e })
            .fold(0.0, f64::max)
    }

    fn flat<const D: usize>(m: &[[f64; D]]) -> Vec<f64> {
        m.iter().flatten().copied().collect()
    }

    /// Forward, streaming and backward of one level against the reference.
    fn check<R: Rule, const T: usize, const D: usize>(
        period: u64,
        normalize_keys: bool,
        frozen: bool,
        carried: bool,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let (mut wk, mut wv, mut wq) = ([[0.0; D]; D], [[0.0; D]; D], [[0.0; D]; D]);
        let s = 1.0 / (D as f64).sqrt();
        fill(&mut rng, &mut wk, s);
        fill(&mut rng, &mut wv, s);
        fill(&mut rng, &mut wq, s);
        let mut w = [[0.0; D]; 6];
        fill(&mut rng, &mut w, 0.3);
        let (w_alpha, w_theta, w_eta) = ([w[0], w[1]].concat(), [w[2], w[3]].concat(), [w[4], w[5]].concat());
        let p = LevelParams {
            wk: &wk,
            wv: &wv,
            wq: &wq,
            w_alpha: &w_alpha,
            b_alpha: -2.0,
            w_theta: &w_theta,
            b_theta: -1.0,
            w_eta: if R::MOMENTUM { &w_eta } else { &[] },
            b_eta: 1.0,
        };
        let mut m_in = [[0.0; D]; T];
        fill(&mut rng, &mut m_in, 1.0);
        let mut dy = [[0.0; D]; T];
        fill(&mut rng, &mut dy, 1.0);
        let mut start = crate::boxed_zeroed::<LevelState<f64, D>>();
        if carried {
            fill(&mut rng, &mut start.m, 0.3);
            fill(&mut rng, &mut start.g, 0.05);
            if R::MOMENTUM {
                fill(&mut rng, &mut start.s, 0.1);
                fill(&mut rng, &mut start.w, 0.05);
            }
            start.n = 5;
        }
        let scale = 0.7;

        let mut end = crate::boxed_zeroed::<LevelState<f64, D>>();
        let mut tr = crate::boxed_zeroed::<LevelTrace<f64, T, D>>();
        let mut y = [[0.5; D]; T];
        let mut chunk = crate::boxed_zeroed::<ChunkScratch<f64, T, D>>();
        forward::<f64, R, T, D>(
            &p,
            period,
            normalize_keys,
            frozen,
            &m_in,
            &start,
            &mut end,
            &mut tr,
            Some(&mut chunk),
            scale,
            &mut y,
        );
        // The scratch is shared by the levels: another level's pass runs
        // between this one's forward and backward. NaN everywhere shows
        // the backward reads nothing the forward left in it.
        scribble(&mut chunk);
        let mut ref_end = crate::boxed_zeroed::<LevelState<f64, D>>();
        let mut ref_tr = crate::boxed_zeroed::<LevelTrace<f64, T, D>>();
        let mut ref_y = [[0.5; D]; T];
        ref_forward::<f64, R, T, D>(
            &p,
            period,
            normalize_keys,
            frozen,
            &m_in,
            &start,
            &mut ref_end,
            &mut ref_tr,
            scale,
            &mut ref_y,
        );
        let tol = 1e-12;
        assert!(max_diff(&flat(&y), &flat(&ref_y)) < tol, "y");
        assert!(max_diff(&flat(&end.m), &flat(&ref_end.m)) < tol, "M");
        assert!(max_diff(&flat(&end.g), &flat(&ref_end.g)) < tol, "G");
        assert!(max_diff(&flat(&end.s), &flat(&ref_end.s)) < tol, "S");
        assert!(max_diff(&flat(&end.w), &flat(&ref_end.w)) < tol, "W");
        assert_eq!(end.n, ref_end.n);

        // Streaming, token by token, gives the training forward.
        let mut st = crate::boxed_zeroed::<LevelState<f64, D>>();
        st.copy_from(&start);
        let mut sc = crate::boxed_zeroed::<StepScratch<f64, D>>();
        for t in 0..T {
            let mut yt = [0.5; D];
            step::<f64, R, D>(&p, period, normalize_keys, frozen, &m_in[t], &mut st, &mut sc, scale, &mut yt);
            assert!(max_diff(&yt, &y[t]) < tol, "step y at {t}");
        }
        // The training forward's matrix products sum in another order.
        for (a, b) in [(&st.m, &end.m), (&st.g, &end.g), (&st.s, &end.s), (&st.w, &end.w)] {
            assert!(max_diff(&flat(a), &flat(b)) < tol, "streamed state");
        }
        assert_eq!(st.n, end.n);

        // Backward.
        let grads = |back: &dyn Fn(&mut LevelGrads<'_, f64, D>, &mut [[f64; D]; T])| -> Vec<f64> {
            let (mut gwk, mut gwv, mut gwq) = ([[0.0; D]; D], [[0.0; D]; D], [[0.0; D]; D]);
            let (mut ga, mut gt, mut ge) =
                (vec![0.0; 2 * D], vec![0.0; 2 * D], vec![0.0; if R::MOMENTUM { 2 * D } else { 0 }]);
            let (mut ba, mut bt, mut be) = (0.0, 0.0, 0.0);
            let mut dm_in = [[0.1; D]; T];
            let mut g = LevelGrads {
                wk: &mut gwk,
                wv: &mut gwv,
                wq: &mut gwq,
                w_alpha: &mut ga,
                b_alpha: &mut ba,
                w_theta: &mut gt,
                b_theta: &mut bt,
                w_eta: &mut ge,
                b_eta: &mut be,
            };
            back(&mut g, &mut dm_in);
            let mut out = [flat(&gwk), flat(&gwv), flat(&gwq), ga, gt, ge, flat(&dm_in)].concat();
            out.extend([ba, bt, be]);
            out
        };
        let tr = core::cell::RefCell::new(tr);
        let ref_tr = core::cell::RefCell::new(ref_tr);
        let chunk = core::cell::RefCell::new(chunk);
        let mut adj = crate::boxed_zeroed::<LevelAdjoint<f64, D>>();
        let adj = core::cell::RefCell::new(&mut *adj);
        let got = grads(&|g, dm_in| {
            backward::<f64, R, T, D>(
                &p,
                period,
                normalize_keys,
                frozen,
                &m_in,
                &start,
                &mut tr.borrow_mut(),
                Some(&mut chunk.borrow_mut()),
                &mut adj.borrow_mut(),
                scale,
                &dy,
                g,
                dm_in,
            )
        });
        let want = grads(&|g, dm_in| {
            ref_backward::<f64, R, T, D>(
                &p,
                period,
                normalize_keys,
                frozen,
                &m_in,
                &start,
                &mut ref_tr.borrow_mut(),
                &mut adj.borrow_mut(),
                scale,
                &dy,
                g,
                dm_in,
            )
        });
        let d = max_diff(&got, &want);
        assert!(d < 1e-11, "gradients differ by {d:e}");
    }

    /// [`check`] over a set of settings, on every path this CPU has.
    fn check_all<R: Rule>() {
        let mut ran = 0;
        for path in crate::dispatch::Path::ALL {
            let done = crate::dispatch::on_path(path, || {
                let mut seed = 1;
                for period in [1, 3, 8] {
                    for (normalize_keys, frozen, carried) in
                        [(true, false, false), (true, false, true), (false, false, true), (true, true, true)]
                    {
                        check::<R, 7, 20>(period, normalize_keys, frozen, carried, seed);
                        check::<R, 9, 35>(period, normalize_keys, frozen, carried, seed + 1);
                        check::<R, 5, 32>(period, normalize_keys, frozen, carried, seed + 2);
                        seed += 3;
                    }
                }
            });
            ran += usize::from(done.is_some());
        }
        assert!(ran >= 1);
    }

    /// Every output of one level in `f32` (training forward, streaming
    /// steps, backward), as bits, on the current path.
    fn f32_bits<R: Rule, const T: usize, const D: usize>(period: u64, normalize_keys: bool, carried: bool) -> Vec<u32> {
        let mut rng = Rng::new(11);
        let mut r =
            |n: usize, s: f64| -> Vec<f32> { (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * s) as f32).collect() };
        let mat = |v: Vec<f32>| -> [[f32; D]; D] { core::array::from_fn(|i| core::array::from_fn(|j| v[i * D + j])) };
        let seq = |v: Vec<f32>| -> [[f32; D]; T] { core::array::from_fn(|i| core::array::from_fn(|j| v[i * D + j])) };
        let s = 1.0 / (D as f64).sqrt();
        let (wk, wv, wq) = (mat(r(D * D, s)), mat(r(D * D, s)), mat(r(D * D, s)));
        let (w_alpha, w_theta, w_eta) = (r(2 * D, 0.3), r(2 * D, 0.3), r(2 * D, 0.3));
        let p = LevelParams {
            wk: &wk,
            wv: &wv,
            wq: &wq,
            w_alpha: &w_alpha,
            b_alpha: -2.0,
            w_theta: &w_theta,
            b_theta: -1.0,
            w_eta: if R::MOMENTUM { &w_eta } else { &[] },
            b_eta: 1.0,
        };
        let m_in = seq(r(T * D, 1.0));
        let dy = seq(r(T * D, 1.0));
        let mut start = crate::boxed_zeroed::<LevelState<f32, D>>();
        if carried {
            start.m = mat(r(D * D, 0.3));
            start.g = mat(r(D * D, 0.05));
            if R::MOMENTUM {
                start.s = mat(r(D * D, 0.1));
                start.w = mat(r(D * D, 0.05));
            }
            start.n = 2;
        }
        let mut end = crate::boxed_zeroed::<LevelState<f32, D>>();
        let mut tr = crate::boxed_zeroed::<LevelTrace<f32, T, D>>();
        let mut y = [[0.5; D]; T];
        let mut chunk = crate::boxed_zeroed::<ChunkScratch<f32, T, D>>();
        forward::<f32, R, T, D>(
            &p,
            period,
            normalize_keys,
            false,
            &m_in,
            &start,
            &mut end,
            &mut tr,
            Some(&mut chunk),
            0.7,
            &mut y,
        );
        let mut out: Vec<f32> = y.as_flattened().to_vec();
        for m in [&end.m, &end.g, &end.s, &end.w] {
            out.extend_from_slice(m.as_flattened());
        }
        let mut st = crate::boxed_zeroed::<LevelState<f32, D>>();
        st.copy_from(&start);
        let mut sc = crate::boxed_zeroed::<StepScratch<f32, D>>();
        for t in 0..T {
            let mut yt = [0.5; D];
            step::<f32, R, D>(&p, period, normalize_keys, false, &m_in[t], &mut st, &mut sc, 0.7, &mut yt);
            out.extend_from_slice(&yt);
        }
        let (mut gwk, mut gwv, mut gwq) = ([[0.0; D]; D], [[0.0; D]; D], [[0.0; D]; D]);
        let (mut ga, mut gt, mut ge) =
            (vec![0.0; 2 * D], vec![0.0; 2 * D], vec![0.0; if R::MOMENTUM { 2 * D } else { 0 }]);
        let (mut ba, mut bt, mut be) = (0.0, 0.0, 0.0);
        let mut dm_in = [[0.1; D]; T];
        let mut g = LevelGrads {
            wk: &mut gwk,
            wv: &mut gwv,
            wq: &mut gwq,
            w_alpha: &mut ga,
            b_alpha: &mut ba,
            w_theta: &mut gt,
            b_theta: &mut bt,
            w_eta: &mut ge,
            b_eta: &mut be,
        };
        let mut adj = crate::boxed_zeroed::<LevelAdjoint<f32, D>>();
        backward::<f32, R, T, D>(
            &p,
            period,
            normalize_keys,
            false,
            &m_in,
            &start,
            &mut tr,
            Some(&mut chunk),
            &mut adj,
            0.7,
            &dy,
            &mut g,
            &mut dm_in,
        );
        for m in [&gwk, &gwv, &gwq] {
            out.extend_from_slice(m.as_flattened());
        }
        out.extend(ga.iter().chain(&gt).chain(&ge).chain(dm_in.as_flattened()));
        out.extend([ba, bt, be]);
        out.iter().map(|x| x.to_bits()).collect()
    }

    /// Every path gives the same bits, for each rule (see
    /// [`same_bits_on_every_path`](crate::dispatch::same_bits_on_every_path):
    /// the backward calls matrix products).
    #[test]
    fn every_path_gives_the_same_f32_bits() {
        fn all<R: Rule>() {
            for (period, nk, carried) in [(1, true, false), (3, false, true), (2, true, true)] {
                crate::dispatch::same_bits_on_every_path(|| f32_bits::<R, 13, 32>(period, nk, carried));
                crate::dispatch::same_bits_on_every_path(|| f32_bits::<R, 6, 21>(period, nk, carried));
            }
        }
        all::<Delta>();
        all::<Titans>();
        all::<Hebbian>();
    }

    #[test]
    fn lane_sums_match_a_plain_sum() {
        let mut r = Rng::new(3);
        for _ in 0..100 {
            let a: [f64; LANES] = core::array::from_fn(|_| 2.0 * r.next_f64() - 1.0);
            let plain: f64 = a.iter().sum();
            assert!((Scalar::lane_sum(a) - plain).abs() < 1e-14);
            // f32: the vector reduction where the target has one.
            let b = a.map(|x| x as f32);
            let plain: f64 = b.iter().map(|&x| f64::from(x)).sum();
            assert!((f64::from(Scalar::lane_sum(b)) - plain).abs() < 1e-5, "{} vs {plain}", Scalar::lane_sum(b));
        }
    }

    #[test]
    fn delta_matches_reference() {
        check_all::<Delta>();
    }

    #[test]
    fn titans_matches_reference() {
        check_all::<Titans>();
    }

    #[test]
    fn hebbian_matches_reference() {
        check_all::<Hebbian>();
    }
}
