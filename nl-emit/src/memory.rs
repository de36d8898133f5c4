//! The memory branch (docs/model.md, step 2): emitted per rule, composition and
//! level. Each level becomes calls to `nl_runtime::memory` monomorphised
//! over its rule, `SEQ` and `D`, with its period and the key normalisation
//! as constants.

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

/// `LevelParams` of level `l` borrowed from `p`.
fn level_params(plan: &Plan, l: usize) -> TokenStream {
    let f = |n: &str| format_ident!("mem{}_{}", l, n);
    let (wk, wv, wq, wa, ba, wt, bt) =
        (f("wk"), f("wv"), f("wq"), f("w_alpha"), f("b_alpha"), f("w_theta"), f("b_theta"));
    let titans = plan.memory.as_ref().is_some_and(|m| m.rule == Rule::Titans);
    let eta = if titans {
        let (we, be) = (f("w_eta"), f("b_eta"));
        quote! { w_eta: &p.#we, b_eta: p.#be[0], }
    } else {
        quote! { w_eta: &[], b_eta: S::ZERO, }
    };
    quote! {
        ::nl_runtime::memory::LevelParams {
            wk: &p.#wk, wv: &p.#wv, wq: &p.#wq,
            w_alpha: &p.#wa, b_alpha: p.#ba[0],
            w_theta: &p.#wt, b_theta: p.#bt[0],
            #eta
        }
    }
}

/// One token stream per level, from `f(level, its LevelParams, its period)`.
fn per_level(plan: &Plan, f: impl Fn(usize, TokenStream, Literal) -> TokenStream) -> Vec<TokenStream> {
    let periods = plan.memory.as_ref().map_or(&[][..], |m| &m.periods[..]);
    periods.iter().enumerate().map(|(l, &p)| f(l, level_params(plan, l), Literal::u64_unsuffixed(p as u64))).collect()
}

/// Workspace fields of the memory branch.
pub(crate) fn workspace_fields(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let traces = (0..plan.levels()).map(|l| {
        let f = format_ident!("mem{}", l);
        let doc = format!(" What level {l}'s forward keeps for the backward.");
        quote! { #[doc = #doc] pub #f: ::nl_runtime::memory::LevelTrace<S, SEQ, D>, }
    });
    quote! {
        /// Embeddings `e_t` (the memory's input `m_t`).
        pub e: [[S; D]; SEQ],
        /// Combined memory read `y_t`.
        pub y: [[S; D]; SEQ],
        /// `sigmoid(y_t)` (the MAG gate).
        pub gate: [[S; D]; SEQ],
        /// Gradient of `y`.
        pub dy: [[S; D]; SEQ],
        /// Inner-loop state each level starts the sequence from (zero =
        /// reset; set it, or call `carry_state`, to carry a state in; a
        /// carried state is a constant for the gradient).
        pub start: [::nl_runtime::memory::LevelState<S, D>; LEVELS],
        /// Inner-loop state each level ends the sequence in.
        pub end: [::nl_runtime::memory::LevelState<S, D>; LEVELS],
        #(#traces)*
        /// The backward's adjoint of the inner-loop state.
        pub adjoint: ::nl_runtime::memory::LevelAdjoint<S, D>,
        /// Inner loop off: every level's state stays at `start` (for ablations).
        pub freeze_memory: bool,
    }
}

/// Workspace methods of the memory branch.
pub(crate) fn workspace_methods(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    quote! {
        /// Makes the next sequence start from the state this one ended in
        /// (truncated backpropagation: the carried state is a constant).
        pub fn carry_state(&mut self) {
            for (s, e) in self.start.iter_mut().zip(self.end.iter()) {
                s.copy_from(e);
            }
        }

        /// Makes the next sequence start from a reset (all-zero) state.
        pub fn reset_state(&mut self) {
            for s in self.start.iter_mut() {
                s.reset();
            }
        }
    }
}

/// Forward of the memory branch over a training sequence: `e` saved, `y`
/// (and the MAG gate) computed.
pub(crate) fn forward(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let rule = rule_type(plan);
    let scale = scale(plan);
    let norm = normalize(plan);
    let levels = per_level(plan, |l, lp, period| {
        let tr = format_ident!("mem{}", l);
        quote! {
            ::nl_runtime::memory::forward::<S, #rule, SEQ, D>(
                &#lp, #period, #norm, ws.freeze_memory, &ws.e, &ws.start[#l], &mut ws.end[#l], &mut ws.#tr, #scale, &mut ws.y,
            );
        }
    });
    let gate = if plan.composition == nl_spec::Composition::Mag {
        quote! {
            for t in 0..SEQ {
                for i in 0..D {
                    ws.gate[t][i] = ws.y[t][i].sigmoid();
                }
            }
        }
    } else {
        quote! {}
    };
    quote! {
        // Memory branch: m_t = e_t; y_t = sum_l M_l q_t / sqrt(L).
        ws.e = ws.h;
        k::zero(&mut ws.y);
        #(#levels)*
        #gate
    }
}

/// Backward of the memory branch: from `ws.dy`, the level parameters'
/// gradients and the input gradient added into `ws.dh`.
pub(crate) fn backward(plan: &Plan) -> TokenStream {
    let Some(m) = &plan.memory else { return quote! {} };
    let rule = rule_type(plan);
    let scale = scale(plan);
    let norm = normalize(plan);
    let titans = m.rule == Rule::Titans;
    let levels = per_level(plan, |l, lp, period| {
        let tr = format_ident!("mem{}", l);
        let f = |n: &str| format_ident!("mem{}_{}", l, n);
        let (wk, wv, wq, wa, ba, wt, bt) =
            (f("wk"), f("wv"), f("wq"), f("w_alpha"), f("b_alpha"), f("w_theta"), f("b_theta"));
        let eta = if titans {
            let (we, be) = (f("w_eta"), f("b_eta"));
            quote! { w_eta: &mut g.#we, b_eta: &mut g.#be[0], }
        } else {
            quote! { w_eta: &mut [], b_eta: &mut unused, }
        };
        let unused = if titans {
            quote! {}
        } else {
            quote! { let mut unused = S::ZERO; }
        };
        quote! {
            {
                #unused
                let mut lg = ::nl_runtime::memory::LevelGrads {
                    wk: &mut g.#wk, wv: &mut g.#wv, wq: &mut g.#wq,
                    w_alpha: &mut g.#wa, b_alpha: &mut g.#ba[0],
                    w_theta: &mut g.#wt, b_theta: &mut g.#bt[0],
                    #eta
                };
                ::nl_runtime::memory::backward::<S, #rule, SEQ, D>(
                    &#lp, #period, #norm, ws.freeze_memory, &ws.e, &ws.start[#l], &mut ws.#tr, &mut ws.adjoint, #scale, &ws.dy, &mut lg, &mut ws.dh,
                );
            }
        }
    });
    quote! {
        // Memory branch, backwards through every inner-loop update.
        #(#levels)*
    }
}

/// Streaming-state fields.
pub(crate) fn stream_fields(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    quote! {
        /// Each level's inner-loop state.
        pub mem: [::nl_runtime::memory::LevelState<S, D>; LEVELS],
        /// Combined memory read of the current token.
        pub y: [S; D],
        /// Per-token scratch of the levels.
        pub scratch: ::nl_runtime::memory::StepScratch<S, D>,
        /// Inner loop off: the memory stays as it is (for ablations).
        pub freeze_memory: bool,
    }
}

/// Streaming step of the memory branch (reads `self.h = e_t`, writes `self.y`).
pub(crate) fn stream_step(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    let rule = rule_type(plan);
    let scale = scale(plan);
    let norm = normalize(plan);
    let levels = per_level(plan, |l, lp, period| {
        quote! {
            ::nl_runtime::memory::step::<S, #rule, D>(
                &#lp, #period, #norm, self.freeze_memory, &self.h, &mut self.mem[#l], &mut self.scratch, #scale, &mut self.y,
            );
        }
    });
    quote! {
        self.y = [S::ZERO; D];
        #(#levels)*
    }
}

/// Reset of the memory state.
pub(crate) fn stream_reset(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    quote! {
        for s in self.mem.iter_mut() {
            s.reset();
        }
    }
}
