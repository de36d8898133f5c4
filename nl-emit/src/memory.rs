//! The memory branch of a block (docs/model.md, step 2): emitted per rule,
//! composition and level. Each level becomes calls to `nl_runtime::memory`
//! monomorphised over its rule, `SEQ` and `D`, with its period and the key
//! normalisation as constants. The code reads the block's parameters as
//! `bp`, its gradients as `bg`, its training activations as `bw`, the
//! backward scratch as `sc`, and in the streaming step the block's state
//! as `bs`.

use nl_spec::{Plan, Rule};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

fn rule_type(plan: &Plan) -> TokenStream {
    match plan.memory.as_ref().map(|m| m.rule) {
        Some(Rule::Titans) => quote! { ::nl_runtime::memory::Titans },
        Some(Rule::Hebbian) => quote! { ::nl_runtime::memory::Hebbian },
        _ => quote! { ::nl_runtime::memory::Delta },
    }
}

fn scale(plan: &Plan) -> TokenStream {
    let s = Literal::f64_unsuffixed(1.0 / (plan.levels() as f64).sqrt());
    quote! { S::from_f64(#s) }
}

fn normalize(plan: &Plan) -> bool {
    plan.memory.as_ref().is_some_and(|m| m.normalize_keys)
}

fn titans(plan: &Plan) -> bool {
    plan.memory.as_ref().is_some_and(|m| m.rule == Rule::Titans)
}

/// The gate fields of level `l` (`w_alpha: ..., b_alpha: ..., ...`), borrowed
/// from the block's parameters `bp`: shared by `LevelParams` and `LevelGates`.
fn gate_fields(plan: &Plan, l: usize) -> TokenStream {
    let f = |n: &str| format_ident!("mem{}_{}", l, n);
    let (wa, ba, wt, bt) = (f("w_alpha"), f("b_alpha"), f("w_theta"), f("b_theta"));
    let eta = if titans(plan) {
        let (we, be) = (f("w_eta"), f("b_eta"));
        quote! { w_eta: &bp.#we, b_eta: bp.#be[0], }
    } else {
        quote! { w_eta: &[], b_eta: S::ZERO, }
    };
    quote! {
        w_alpha: &bp.#wa, b_alpha: bp.#ba[0],
        w_theta: &bp.#wt, b_theta: bp.#bt[0],
        #eta
    }
}

/// `LevelParams` of level `l` borrowed from the block's parameters `bp`.
fn level_params(plan: &Plan, l: usize) -> TokenStream {
    let f = |n: &str| format_ident!("mem{}_{}", l, n);
    let (wk, wv, wq) = (f("wk"), f("wv"), f("wq"));
    let gates = gate_fields(plan, l);
    quote! {
        ::nl_runtime::memory::LevelParams {
            wk: &bp.#wk, wv: &bp.#wv, wq: &bp.#wq,
            #gates
        }
    }
}

/// The memory's input as its projections read it: `u`, or its int8
/// quantization with int8 activations (docs/quant.md).
fn m_input(plan: &Plan) -> TokenStream {
    if crate::quant::int8_acts(plan) {
        quote! { bw.uq }
    } else {
        quote! { bw.u }
    }
}

/// Level `l`'s `LevelGates` of the block `bp`.
fn level_gates(plan: &Plan, l: usize) -> TokenStream {
    let gates = gate_fields(plan, l);
    quote! {
        ::nl_runtime::memory::LevelGates { #gates }
    }
}

/// One token stream per level, from `f(level, its LevelParams, its period)`.
fn per_level(plan: &Plan, f: impl Fn(usize, TokenStream, Literal) -> TokenStream) -> Vec<TokenStream> {
    let periods = plan.memory.as_ref().map_or(&[][..], |m| &m.periods[..]);
    periods.iter().enumerate().map(|(l, &p)| f(l, level_params(plan, l), Literal::u64_unsuffixed(p as u64))).collect()
}

/// `BlockWs` fields of the memory branch (first in the struct: the states
/// are 8-aligned).
pub(crate) fn workspace_fields(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let gate = if plan.composition == nl_spec::Composition::Mag {
        quote! {
            /// `sigmoid(y_t)` (the MAG gate).
            pub gate: [[S; D]; SEQ],
        }
    } else {
        quote! {}
    };
    quote! {
        /// Inner-loop state each level starts the sequence from (zero =
        /// reset; set it, or call `Workspace::carry_state`, to carry a state
        /// in; a carried state is a constant for the gradient).
        pub start: [::nl_runtime::memory::LevelState<S, D>; LEVELS],
        /// Inner-loop state each level ends the sequence in.
        pub end: [::nl_runtime::memory::LevelState<S, D>; LEVELS],
        /// What each level's forward keeps for the backward.
        pub trace: [::nl_runtime::memory::LevelTrace<S, SEQ, D>; LEVELS],
        /// Combined memory read `y_t`.
        pub y: [[S; D]; SEQ],
        #gate
    }
}

/// `Scratch` fields of the memory branch.
pub(crate) fn scratch_fields(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let chunk = crate::opt(
        plan.has_periodic_levels(),
        quote! {
            /// The chunk-wise training pass of the levels with a period above
            /// 1 (forward and backward, shared by the levels and blocks).
            pub chunk: ::nl_runtime::memory::ChunkScratch<S, SEQ, D>,
        },
    );
    quote! {
        /// Gradient of the memory read `y`.
        pub dy: [[S; D]; SEQ],
        /// The backward's adjoint of the inner-loop state.
        pub adjoint: ::nl_runtime::memory::LevelAdjoint<S, D>,
        #chunk
    }
}

/// The type of `block_forward`'s `chunk` argument: the shared
/// [`ChunkScratch`](nl_runtime::memory::ChunkScratch) when a level has a
/// period above 1, else `()`.
pub(crate) fn chunk_type(plan: &Plan) -> TokenStream {
    if plan.has_periodic_levels() {
        quote! { &mut ::nl_runtime::memory::ChunkScratch<S, SEQ, D> }
    } else {
        quote! { () }
    }
}

/// `block_forward`'s `chunk` argument at the call (see [`chunk_type`]).
pub(crate) fn chunk_arg(plan: &Plan) -> TokenStream {
    if plan.has_periodic_levels() {
        quote! { &mut ws.sc.chunk }
    } else {
        quote! { () }
    }
}

/// Workspace methods of the memory branch.
pub(crate) fn workspace_methods(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    quote! {
        /// Makes the next sequence start from the state this one ended in,
        /// in every block (truncated backpropagation: the carried state is a
        /// constant).
        pub fn carry_state(&mut self) {
            for bw in self.blocks.iter_mut() {
                for (s, e) in bw.start.iter_mut().zip(bw.end.iter()) {
                    s.copy_from(e);
                }
            }
        }

        /// Makes the next sequence start from a reset (all-zero) state.
        pub fn reset_state(&mut self) {
            for bw in self.blocks.iter_mut() {
                for s in bw.start.iter_mut() {
                    s.reset();
                }
            }
        }
    }
}

/// Forward of a block's memory branch over a training sequence: reads
/// `bw.u`, writes `bw.y` (and the MAG gate).
pub(crate) fn forward(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let m_in = m_input(plan);
    let rule = rule_type(plan);
    let scale = scale(plan);
    let norm = normalize(plan);
    let chunk = if plan.has_periodic_levels() {
        quote! { Some(&mut *chunk) }
    } else {
        quote! { None }
    };
    let levels = per_level(plan, |l, lp, period| {
        quote! {
            ::nl_runtime::memory::forward::<S, #rule, SEQ, D>(
                &#lp, #period, #norm, freeze_memory, &#m_in, &bw.start[#l], &mut bw.end[#l], &mut bw.trace[#l], #chunk, #scale, &mut bw.y,
            );
        }
    });
    let gate = if plan.composition == nl_spec::Composition::Mag {
        quote! {
            for t in 0..SEQ {
                for i in 0..D {
                    bw.gate[t][i] = bw.y[t][i].sigmoid();
                }
            }
        }
    } else {
        quote! {}
    };
    quote! {
        // Memory branch: m_t = u_t; y_t = sum_l M_l q_t / sqrt(L).
        k::zero(&mut bw.y);
        #(#levels)*
        #gate
    }
}

/// Backward of a block's memory branch: from `sc.dy`, the level
/// parameters' gradients into `bg` and the input gradient added into `sc.dh`.
pub(crate) fn backward(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let m_in = m_input(plan);
    let rule = rule_type(plan);
    let scale = scale(plan);
    let norm = normalize(plan);
    let titans = titans(plan);
    let chunk = if plan.has_periodic_levels() {
        quote! { Some(&mut sc.chunk) }
    } else {
        quote! { None }
    };
    let levels = per_level(plan, |l, lp, period| {
        let f = |n: &str| format_ident!("mem{}_{}", l, n);
        let (wk, wv, wq, wa, ba, wt, bt) =
            (f("wk"), f("wv"), f("wq"), f("w_alpha"), f("b_alpha"), f("w_theta"), f("b_theta"));
        let (unused, eta) = if titans {
            let (we, be) = (f("w_eta"), f("b_eta"));
            (quote! {}, quote! { w_eta: &mut bg.#we, b_eta: &mut bg.#be[0], })
        } else {
            (quote! { let mut unused = S::ZERO; }, quote! { w_eta: &mut [], b_eta: &mut unused, })
        };
        quote! {
            {
                #unused
                let mut lg = ::nl_runtime::memory::LevelGrads {
                    wk: &mut bg.#wk, wv: &mut bg.#wv, wq: &mut bg.#wq,
                    w_alpha: &mut bg.#wa, b_alpha: &mut bg.#ba[0],
                    w_theta: &mut bg.#wt, b_theta: &mut bg.#bt[0],
                    #eta
                };
                ::nl_runtime::memory::backward::<S, #rule, SEQ, D>(
                    &#lp, #period, #norm, freeze_memory, &#m_in, &bw.start[#l], &mut bw.trace[#l], #chunk, &mut sc.adjoint, #scale, &sc.dy, &mut lg, &mut sc.dh,
                );
            }
        }
    });
    quote! {
        // Memory branch, backwards through every inner-loop update.
        #(#levels)*
    }
}

/// Streaming step of a block's memory branch (reads `self.u`, writes
/// `self.y`), each level under its run-time schedule `bs.schedule[l]`
/// (`nl_runtime::memory::Schedule`: a period multiplier, or paused).
pub(crate) fn stream_step(plan: &Plan, reader: crate::quant::Reader) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    if reader == crate::quant::Reader::Float {
        let rule = rule_type(plan);
        let scale = scale(plan);
        let norm = normalize(plan);
        return stream_levels(plan, |l, lp, period| {
            quote! {
                ::nl_runtime::memory::step_scheduled::<S, #rule, D>(
                    &#lp, #period, #norm, self.freeze_memory, &mut bs.schedule[#l], &self.u, &mut bs.mem[#l], &mut self.scratch, #scale, &mut self.y,
                );
            }
        });
    }
    // Quantized: the projections by the reader's products (one input,
    // quantized once for the three), then the rest of the step.
    stream_step_projected(
        plan,
        |l| {
            let (wk, wv, wq) = (format!("mem{l}_wk"), format!("mem{l}_wv"), format!("mem{l}_wq"));
            crate::quant::mv_group(
                plan,
                reader,
                true,
                quote! { self.u },
                &[(&wk, quote! { self.scratch.k }), (&wv, quote! { self.scratch.v }), (&wq, quote! { self.scratch.q })],
            )
        },
        |l| crate::quant::mv(plan, reader, true, &format!("mem{l}_wq"), quote! { self.u }, quote! { self.scratch.q }),
    )
}

/// Streaming step of a block's memory branch whose projections `proj(l)`
/// puts into `self.scratch.k`, `.v`, `.q` for each level `l` (the
/// quantized readers, and the batched step's matrix products), and
/// `proj_q(l)` the query alone (for a paused level); writes `self.y`.
pub(crate) fn stream_step_projected(
    plan: &Plan,
    proj: impl Fn(usize) -> TokenStream,
    proj_q: impl Fn(usize) -> TokenStream,
) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let rule = rule_type(plan);
    let scale = scale(plan);
    let norm = normalize(plan);
    stream_levels(plan, |l, _, period| {
        let proj = proj(l);
        let gates = level_gates(plan, l);
        // A paused level (the stream's schedule): the query alone, then the read.
        let proj_q = proj_q(l);
        quote! {
            if bs.schedule[#l].paused() {
                #proj_q
                ::nl_runtime::memory::read_projected::<S, D>(#norm, &bs.mem[#l], &mut self.scratch, #scale, &mut self.y);
            } else {
                #proj
                let period = bs.schedule[#l].period(#period, bs.mem[#l].n);
                ::nl_runtime::memory::step_projected::<S, #rule, D>(
                    &#gates, period, #norm, self.freeze_memory, &mut bs.mem[#l], &mut self.scratch, #scale, &mut self.y,
                );
            }
        }
    })
}

/// `self.y = 0`, then `f(level, its LevelParams, its period)` per level.
fn stream_levels(plan: &Plan, f: impl Fn(usize, TokenStream, Literal) -> TokenStream) -> TokenStream {
    let levels = per_level(plan, f);
    quote! {
        self.y = [S::ZERO; D];
        #(#levels)*
    }
}
