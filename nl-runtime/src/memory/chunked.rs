//! The training pass of a level whose memory is frozen between fires
//! (`period > 1`) in matrix form: the chunk-wise form of
//! docs/model.md, "Periodic levels as matrix products".
//!
//! Between two fires a level's `M` does not change, so for the tokens of a
//! chunk (the tokens after one fire up to and including the next, at most
//! `period`) the per-token vector products are rows of matrix products
//! against the one frozen `M` (keys `K`, values `V`, queries `Q`, surprise
//! factors `R` as `[len, D]` row blocks of the trace; `Ct = diag(theta) R`):
//!
//! - surprise: `R = K M^T - V` (`-V` for hebbian);
//! - reads of the tokens before the fire: `Y += scale Q M^T`;
//! - accumulation: `G^T += K^T Ct` (titans also `W^T += K^T diag(theta (1
//!   - eta)) V`);
//! - the fire (elementwise) and the fire token's read of the new memory.
//!
//! The backward is the same per-token backward summed over the chunk: with
//! `dG` the gradient of the accumulator (constant over a chunk, `-dM'` of
//! the fire that ends it), `GK = K dG^T` (`d theta_t = r_t . GK_t`, `DR =
//! diag(theta) GK`), `dK = Ct dG + DR M` (titans `+ diag(theta (1 - eta)) V
//! dW`), `dM^T += K^T DR + Q^T DYL` and `dQ = DYL M` with `DYL = scale dY`,
//! `dV = -DR` (titans `+ diag(theta (1 - eta)) K dW^T`).
//!
//! Layout: every product above is `C (+)= A B` with `B` row-major, which
//! [`matmul`] runs without copying when the memory is kept *transposed*:
//! this path stores `M^T` (and `S^T`) in the trace's history slots and
//! works on `G^T`, `W^T`, and the adjoints `dM^T`, `dG^T`, `dS^T`, `dW^T`
//! (elementwise steps are the same in either layout). Three products need
//! `M`, `dG` or `dW` row-major; the backward transposes those once per
//! chunk. The start state is transposed once per sequence (in the forward
//! and again in the backward) and the end state back. The transposed
//! copies, accumulators and backward buffers are a [`ChunkScratch`], one
//! per model, shared by its periodic levels.
//!
//! Rounding: the products sum over the width in a different order than
//! the per-token path and the streaming step (a left fold instead of lane
//! sums), so a chunked level's training forward equals streaming up to
//! float rounding (as docs/model.md allows), not bit for bit. Every path
//! ([`crate::dispatch::Path`]) gives the same bits, as for the products.

use super::*;
use crate::gemm::{matmul, transpose};

/// Whether a level runs this chunk-wise path: its memory is frozen between
/// fires for more than one token (`period > 1`; frozen or not). A period-1
/// level fires at every token: there is nothing to batch, and the fused
/// per-token path serves it (also when frozen, so a model whose levels all
/// have period 1 needs no [`ChunkScratch`]).
#[inline(always)]
pub(super) fn applies(period: u64) -> bool {
    period > 1
}

/// Rows `s..s + n` of a `[T][D]` trace array, flat.
#[inline(always)]
fn at<S, const D: usize>(x: &[[S; D]], s: usize, n: usize) -> &[S] {
    x[s..s + n].as_flattened()
}

/// Rows `s..s + n` of a `[T][D]` trace array, flat and mutable.
#[inline(always)]
fn at_mut<S, const D: usize>(x: &mut [[S; D]], s: usize, n: usize) -> &mut [S] {
    x[s..s + n].as_flattened_mut()
}

/// The number of fires among the first `s` tokens of a sequence that
/// starts from a state that has seen `n0` tokens: the multiples of
/// `period` in `n0 + 1..=n0 + s`.
#[inline(always)]
fn fires_before(n0: u64, s: usize, period: u64) -> usize {
    ((n0 + s as u64) / period - n0 / period) as usize
}

/// The chunk that starts at token `s`: its length and whether its last
/// token fires (`frozen`: the rest of the sequence, no fire).
#[inline(always)]
fn chunk_from<const T: usize>(s: usize, n0: u64, period: u64, frozen: bool) -> (usize, bool) {
    if frozen {
        return (T - s, false);
    }
    let to_fire = (period - 1 - (n0 + s as u64) % period) as usize;
    if s + to_fire < T {
        (to_fire + 1, true)
    } else {
        (T - s, false)
    }
}

/// The chunk that ends with token `u`: its first token and whether `u`
/// fires.
#[inline(always)]
fn chunk_to(u: usize, n0: u64, period: u64, frozen: bool) -> (usize, bool) {
    if frozen {
        return (0, false);
    }
    let pos = ((n0 + u as u64) % period) as usize;
    (u.saturating_sub(pos), pos as u64 == period - 1)
}

/// The training forward of a level on this path, after the projections
/// and gates (in `tr`): adds `scale * y^l_t` into `y`, leaves the end state
/// in `end` and `M^T` (`S^T`) after each fire in the history slots.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn forward<S: Scalar, R: Rule, const T: usize, const D: usize>(
    period: u64,
    frozen: bool,
    start: &LevelState<S, D>,
    end: &mut LevelState<S, D>,
    tr: &mut LevelTrace<S, T, D>,
    c: &mut ChunkScratch<S, T, D>,
    scale: S,
    y: &mut [[S; D]; T],
) {
    let LevelTrace { k, v, q, r, alpha, theta, eta, m_hist, s_hist, dk, dv, dq, .. } = tr;
    let ChunkScratch { mt, st, gt, wt, .. } = c;
    transpose(&start.m, mt);
    if R::MOMENTUM {
        transpose(&start.s, st);
    }
    if !frozen {
        transpose(&start.g, gt);
        if R::MOMENTUM {
            transpose(&start.w, wt);
        }
    }
    let n0 = start.n;
    let mut f = 0;
    let mut s = 0;
    while s < T {
        let (len, fire) = chunk_from::<T>(s, n0, period, frozen);
        let reads = len - usize::from(fire);
        let (m_done, m_next) = m_hist.split_at_mut(f);
        let (s_done, s_next) = s_hist.split_at_mut(f);
        let m_cur: &[[S; D]; D] = m_done.last().unwrap_or(&*mt);
        // Reads of the tokens before the fire: y += scale Q M^T (the
        // products into `dq`, scratch until the backward).
        if reads > 0 {
            matmul(reads, D, D, false, false, at(q, s, reads), m_cur.as_flattened(), at_mut(dq, s, reads));
            for t in s..s + reads {
                for i in 0..D {
                    y[t][i] = scale.mul_add(dq[t][i], y[t][i]);
                }
            }
        }
        if !frozen {
            // R = K M^T - V (or -V).
            if R::READS_MEMORY {
                matmul(len, D, D, false, false, at(k, s, len), m_cur.as_flattened(), at_mut(r, s, len));
                for t in s..s + len {
                    for i in 0..D {
                        r[t][i] -= v[t][i];
                    }
                }
            } else {
                for t in s..s + len {
                    for i in 0..D {
                        r[t][i] = -v[t][i];
                    }
                }
            }
            // G^T += K^T diag(theta) R (titans: W^T += K^T diag(theta (1 -
            // eta)) V), the coefficients in `dk`, `dv` (scratch).
            for t in s..s + len {
                for i in 0..D {
                    dk[t][i] = theta[t] * r[t][i];
                }
            }
            matmul(D, len, D, true, true, at(k, s, len), at(dk, s, len), gt.as_flattened_mut());
            if R::MOMENTUM {
                for t in s..s + len {
                    let tw = theta[t] * (S::ONE - eta[t]);
                    for i in 0..D {
                        dv[t][i] = tw * v[t][i];
                    }
                }
                matmul(D, len, D, true, true, at(k, s, len), at(dv, s, len), wt.as_flattened_mut());
            }
            if fire {
                let e = s + len - 1;
                let p = Step {
                    fire: true,
                    update: true,
                    g_zero: false,
                    keep: S::ONE - alpha[e],
                    theta: theta[e],
                    eta: eta[e],
                    scale,
                };
                let s_cur: &[[S; D]; D] = s_done.last().unwrap_or(&*st);
                let (m_new, s_new) = (&mut m_next[0], &mut s_next[0]);
                for j in 0..D {
                    for i in 0..D {
                        let (mn, sn) = fired::<S, R>(p, m_cur[j][i], s_cur[j][i], gt[j][i], wt[j][i]);
                        m_new[j][i] = mn;
                        if R::MOMENTUM {
                            s_new[j][i] = sn;
                        }
                    }
                    gt[j].fill(S::ZERO);
                    if R::MOMENTUM {
                        wt[j].fill(S::ZERO);
                    }
                }
                // The fire token reads the memory after the fire.
                matmul(1, D, D, false, false, &q[e], m_new.as_flattened(), &mut dq[e]);
                for i in 0..D {
                    y[e][i] = scale.mul_add(dq[e][i], y[e][i]);
                }
                f += 1;
            }
        }
        s += len;
    }
    end.n = if frozen { n0 } else { n0 + T as u64 };
    if f == 0 {
        end.m = start.m;
        end.s = start.s;
    } else {
        transpose(&m_hist[f - 1], &mut end.m);
        if R::MOMENTUM {
            transpose(&s_hist[f - 1], &mut end.s);
        } else {
            end.s = start.s;
        }
    }
    if frozen {
        end.g = start.g;
        end.w = start.w;
    } else {
        transpose(gt, &mut end.g);
        if R::MOMENTUM {
            transpose(wt, &mut end.w);
        } else {
            end.w = start.w;
        }
    }
}

/// The backward of [`forward`] up to the projections: fills `tr.dk`,
/// `tr.dv`, `tr.dq` with the gradients of `kr_t`, `v_t`, `qr_t` and adds the
/// gates' parameter gradients into `g`. The adjoints in `adj` are those of
/// the transposed state.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn backward<S: Scalar, R: Rule, const T: usize, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    start: &LevelState<S, D>,
    tr: &mut LevelTrace<S, T, D>,
    c: &mut ChunkScratch<S, T, D>,
    adj: &mut LevelAdjoint<S, D>,
    scale: S,
    dy: &[[S; D]; T],
    g: &mut LevelGrads<'_, S, D>,
) {
    let LevelTrace { k, v, q, k_norm, q_norm, r, alpha, theta, theta_pre, eta, m_hist, s_hist, dk, dv, dq } = tr;
    let ChunkScratch { mt, st, gt, wt, m_row, xa, xb, d_theta, d_eta } = c;
    // The start state transposed again (the scratch is shared by the
    // levels, so the forward's copy is gone).
    transpose(&start.m, mt);
    if R::MOMENTUM {
        transpose(&start.s, st);
    }
    let LevelAdjoint { dm, dg, ds, dw } = adj;
    for x in dm.iter_mut().chain(dg.iter_mut()).chain(ds.iter_mut()).chain(dw.iter_mut()) {
        x.fill(S::ZERO);
    }
    let n0 = start.n;
    let mut u_end = T;
    while u_end > 0 {
        let e = u_end - 1;
        let (s, fire) = chunk_to(e, n0, period, frozen);
        let len = u_end - s;
        let reads = len - usize::from(fire);
        let fb = if frozen { 0 } else { fires_before(n0, s, period) };
        // The memory of the chunk, transposed (as stored) and row-major.
        let m_cur: &[[S; D]; D] = if fb == 0 { &*mt } else { &m_hist[fb - 1] };
        let s_cur: &[[S; D]; D] = if fb == 0 { &*st } else { &s_hist[fb - 1] };
        let m_rows: &[[S; D]; D] = if fb == 0 {
            &start.m
        } else {
            transpose(m_cur, m_row);
            &*m_row
        };
        for t in s..u_end {
            dk[t] = [S::ZERO; D];
            dv[t] = [S::ZERO; D];
            d_theta[t] = S::ZERO;
            d_eta[t] = S::ZERO;
        }
        // The fire token's read of the new memory and the fire itself.
        let mut d_alpha = S::ZERO;
        let mut d_eta_fire = S::ZERO;
        if fire {
            for i in 0..D {
                xb[e][i] = scale * dy[e][i];
            }
            // Row by row (the sums over the state as lane-wise dots):
            // dM'^T += q dyl^T; the fire's dG' = -dM', d alpha, dM = keep dM'.
            let keep = S::ONE - alpha[e];
            for j in 0..D {
                let (dmj, qj) = (&mut dm[j], q[e][j]);
                for i in 0..D {
                    dmj[i] = qj.mul_add(xb[e][i], dmj[i]);
                }
                if R::MOMENTUM {
                    // M' = keep M - G' + eta S, S' = eta S + W'.
                    let mut tot = [S::ZERO; D];
                    for i in 0..D {
                        tot[i] = ds[j][i] + dmj[i];
                    }
                    d_eta_fire += dot(&tot, &s_cur[j]);
                    dw[j] = ds[j];
                    for i in 0..D {
                        ds[j][i] = eta[e] * tot[i];
                    }
                }
                d_alpha += dot(dmj, &m_cur[j]);
                for i in 0..D {
                    dg[j][i] = -dmj[i];
                    dmj[i] *= keep;
                }
            }
        }
        // The accumulation G' = G + sum theta r k^T over the chunk (its
        // gradient dG' is zero in a chunk without a fire: the last one).
        if fire {
            // GK = K dG^T; d theta = r . GK; DR = diag(theta) GK.
            matmul(len, D, D, false, false, at(k, s, len), dg.as_flattened(), at_mut(xa, s, len));
            for t in s..u_end {
                d_theta[t] = dot(&r[t], &xa[t]);
                for i in 0..D {
                    xa[t][i] *= theta[t];
                }
            }
            if R::MOMENTUM {
                // WK = K dW^T (into dv): the write term theta (1 - eta) v k^T.
                matmul(len, D, D, false, false, at(k, s, len), dw.as_flattened(), at_mut(dv, s, len));
                for t in s..u_end {
                    let wk = dot(&v[t], &dv[t]);
                    let tw = theta[t] * (S::ONE - eta[t]);
                    d_theta[t] += (S::ONE - eta[t]) * wk;
                    d_eta[t] = -(theta[t] * wk);
                    for i in 0..D {
                        dv[t][i] = tw.mul_add(dv[t][i], -xa[t][i]);
                    }
                }
            } else {
                for t in s..u_end {
                    for i in 0..D {
                        dv[t][i] = -xa[t][i];
                    }
                }
            }
            // dK = diag(theta) R dG (+ diag(theta (1 - eta)) V dW) + DR M,
            // the coefficient rows in `dq` (scratch until the reads below).
            transpose(dg, gt);
            for t in s..u_end {
                for i in 0..D {
                    dq[t][i] = theta[t] * r[t][i];
                }
            }
            matmul(len, D, D, true, false, at(dq, s, len), gt.as_flattened(), at_mut(dk, s, len));
            if R::MOMENTUM {
                transpose(dw, wt);
                for t in s..u_end {
                    let tw = theta[t] * (S::ONE - eta[t]);
                    for i in 0..D {
                        dq[t][i] = tw * v[t][i];
                    }
                }
                matmul(len, D, D, true, false, at(dq, s, len), wt.as_flattened(), at_mut(dk, s, len));
            }
            if R::READS_MEMORY {
                matmul(len, D, D, true, false, at(xa, s, len), m_rows.as_flattened(), at_mut(dk, s, len));
                // dM^T += K^T DR.
                matmul(D, len, D, true, true, at(k, s, len), at(xa, s, len), dm.as_flattened_mut());
            }
        }
        // The reads before the fire: dQ = DYL M, dM^T += Q^T DYL.
        if reads > 0 {
            for t in s..s + reads {
                for i in 0..D {
                    xb[t][i] = scale * dy[t][i];
                }
            }
            matmul(reads, D, D, false, false, at(xb, s, reads), m_rows.as_flattened(), at_mut(dq, s, reads));
            if !frozen {
                matmul(D, reads, D, true, true, at(q, s, reads), at(xb, s, reads), dm.as_flattened_mut());
            }
        }
        if fire {
            // The fire token's dq = M'^T dyl, with M'^T stored: rows of it
            // dotted with dyl.
            let m_new = &m_hist[fb];
            let mut dqe = [S::ZERO; D];
            for_blocks!(D, |i0| matvec_rows::<S, D>(i0, m_new, &xb[e], &mut dqe));
            dq[e] = dqe;
        }
        // Gates and normalisations, token by token.
        for t in (s..u_end).rev() {
            let (kt, vt) = (&k[t], &v[t]);
            if !frozen {
                theta_backward(
                    d_theta[t],
                    theta[t],
                    theta_pre[t],
                    p.w_theta,
                    kt,
                    vt,
                    g.w_theta,
                    g.b_theta,
                    &mut dk[t],
                    &mut dv[t],
                );
            }
            if fire && t == e {
                let da = -d_alpha * alpha[t] * (S::ONE - alpha[t]);
                gate_backward(da, p.w_alpha, kt, vt, g.w_alpha, g.b_alpha, &mut dk[t], &mut dv[t]);
            }
            if R::MOMENTUM && !frozen {
                let fired = if fire && t == e { d_eta_fire } else { S::ZERO };
                let dc = (fired + d_eta[t]) * eta[t] * (S::ONE - eta[t]);
                gate_backward(dc, p.w_eta, kt, vt, g.w_eta, g.b_eta, &mut dk[t], &mut dv[t]);
            }
            if normalize_keys {
                normalize_backward(kt, k_norm[t], &mut dk[t]);
                normalize_backward(&q[t], q_norm[t], &mut dq[t]);
            }
        }
        u_end = s;
    }
}
