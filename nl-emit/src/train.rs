//! The training side: the `Workspace` (activations kept for the backward,
//! per block, and one backward scratch shared by the blocks) and the
//! forward and analytic backward over one sequence.

use crate::{memory, opt, parts};
use nl_spec::{Composition, Norm, Plan, Positions};
use proc_macro2::TokenStream;
use quote::quote;

fn stats_fields(plan: &Plan, stats: &str, what: &str) -> TokenStream {
    let inv = quote::format_ident!("{}_inv", stats);
    let mean = quote::format_ident!("{}_mean", stats);
    let inv_doc = format!(" `1 / sqrt(mean(x^2) + eps)` (rms) or `1 / sqrt(var + eps)` (layer) of each row of {what}.");
    let mean_doc = format!(" Row means of {what}.");
    match plan.norm {
        Norm::None => quote! {},
        Norm::Rms => quote! { #[doc = #inv_doc] pub #inv: [S; SEQ], },
        Norm::Layer => quote! { #[doc = #inv_doc] pub #inv: [S; SEQ], #[doc = #mean_doc] pub #mean: [S; SEQ], },
    }
}

/// The `BlockWs`, `Scratch` and `Workspace` structs. Field order is the
/// layout `nl_spec::footprint` counts.
pub(crate) fn workspace(plan: &Plan) -> TokenStream {
    let mag = plan.composition == Composition::Mag;
    let mal = plan.composition == Composition::Mal;
    let norm = plan.norm != Norm::None;
    let mlp = plan.mlp.is_some();
    let gated = parts::gated(plan);
    let mem_fields = memory::workspace_fields(plan);
    let mem_scratch = memory::scratch_fields(plan);
    let mem_methods = memory::workspace_methods(plan);
    let na_stats = stats_fields(plan, "na", "the block input");
    let h_field = opt(
        mal,
        quote! {
            /// Attention input `h_t = u_t + y_t` (MAL).
            pub h: [[S; D]; SEQ],
        },
    );
    let o_field = opt(
        mag,
        quote! {
            /// Output projection input `o_t = a_t * sigmoid(y_t)`.
            pub o: [[S; D]; SEQ],
        },
    );
    let mlp_fields = if mlp {
        let w = if norm {
            let nm = stats_fields(plan, "nm", "`mid`");
            quote! {
                /// MLP input `w_t = N_m(mid_t)`.
                pub w: [[S; D]; SEQ],
                #nm
            }
        } else {
            quote! {}
        };
        let gate = opt(
            gated,
            quote! {
                /// `W_gate w_t`.
                pub gate_pre: [[S; HIDDEN]; SEQ],
            },
        );
        quote! {
            /// Residual stream after attention `x'_t` (the MLP's input before its norm).
            pub mid: [[S; D]; SEQ],
            #w
            /// `W_up w_t`.
            pub up: [[S; HIDDEN]; SEQ],
            #gate
            /// The activation, input of `W_down`.
            pub act: [[S; HIDDEN]; SEQ],
        }
    } else {
        quote! {}
    };
    let mlp_packed = if mlp {
        let gate = opt(
            gated,
            quote! {
                /// `mlp_w_gate` transposed.
                pub mlp_w_gate_t: [[S; HIDDEN]; D],
            },
        );
        quote! {
            /// `mlp_w_up` transposed (`[D, HIDDEN]`), packed by the forward pass.
            pub mlp_w_up_t: [[S; HIDDEN]; D],
            #gate
            /// `mlp_w_down` transposed (`[HIDDEN, D]`).
            pub mlp_w_down_t: [[S; D]; HIDDEN],
        }
    } else {
        quote! {}
    };
    let xf = if norm {
        let nf = stats_fields(plan, "nf", "the last block's output");
        quote! {
            /// `N_f(x^L)`, the unembedding's input.
            pub xf: [[S; D]; SEQ],
            #nf
        }
    } else {
        quote! {}
    };
    let rope = opt(
        plan.positions == Positions::Rope,
        quote! {
            /// `cos(t w_i)` for the positions of a sequence (RoPE), filled by `pack`.
            pub rope_cos: [[S; HALF]; SEQ],
            /// `sin(t w_i)`.
            pub rope_sin: [[S; HALF]; SEQ],
        },
    );
    let d_o = opt(
        mag,
        quote! {
            /// Gradient of `o`.
            pub d_o: [[S; D]; SEQ],
        },
    );
    let dxf = opt(
        norm,
        quote! {
            /// Gradient of `xf`.
            pub dxf: [[S; D]; SEQ],
        },
    );
    let dmlp = if mlp {
        let dgate = opt(
            gated,
            quote! {
                /// Gradient of `gate_pre`.
                pub dgate: [[S; HIDDEN]; SEQ],
            },
        );
        // With a residual stream, d mid accumulates in `dx` (no buffer).
        let dmid = opt(
            !plan.residual,
            quote! {
                /// Gradient of `mid`.
                pub dmid: [[S; D]; SEQ],
            },
        );
        quote! {
            #dmid
            /// Gradient of the MLP input `w`.
            pub dw: [[S; D]; SEQ],
            /// Gradient of `act`.
            pub dact: [[S; HIDDEN]; SEQ],
            /// Gradient of `up`.
            pub dup: [[S; HIDDEN]; SEQ],
            #dgate
        }
    } else {
        quote! {}
    };
    let freeze = opt(
        plan.memory.is_some(),
        quote! {
            /// Inner loop off: every level's state stays at `start` (for ablations).
            pub freeze_memory: bool,
        },
    );
    let (p_doc, p_ty) = if gemm_attention(plan) {
        (
            " Attention probabilities, one `[query][key]` square per head: `p[head][t][tau]` weighs position `tau` (written over the blocks the training products cover, see `nl_runtime::attn`).",
            quote! { [[[S; SEQ]; SEQ]; HEADS] },
        )
    } else {
        (" Attention probabilities: `p[t][head][i]` weighs position `t - i`.", quote! { [[[S; WINDOW]; HEADS]; SEQ] })
    };
    let attn_scratch = opt(
        gemm_attention(plan),
        quote! {
            /// The per-head buffers of attention as matrix products (forward and backward).
            pub attn: ::nl_runtime::attn::AttnScratch<S, SEQ, HEAD_DIM>,
        },
    );
    let acts = crate::quant::int8_acts(plan);
    let q_fields = opt(acts, {
        let hq = opt(
            mal,
            quote! {
                /// The attention input `h` as the quantized products read it (int8 activations).
                pub hq: [[S; D]; SEQ],
            },
        );
        let mlp_q = opt(
            mlp,
            quote! {
                /// The MLP input as `W_up` (and `W_gate`) read it (int8 activations).
                pub mq: [[S; D]; SEQ],
                /// The activation as `W_down` reads it (int8 activations).
                pub actq: [[S; HIDDEN]; SEQ],
            },
        );
        quote! {
            /// `u` as the quantized products read it: each row `a * round(u / a)` (int8 activations).
            pub uq: [[S; D]; SEQ],
            #hq
            /// The output projection's input as `W_o` reads it (int8 activations).
            pub oq: [[S; D]; SEQ],
            #mlp_q
        }
    });
    let xfq = opt(
        acts && !plan.tie_embeddings,
        quote! {
            /// The unembedding's input as it reads it (int8 activations).
            pub xfq: [[S; D]; SEQ],
        },
    );
    quote! {
        /// What the training forward keeps of one block for its backward,
        /// and the block's packed weights.
        #[repr(C)]
        pub struct BlockWs<S> {
            #mem_fields
            /// Branch input `u_t = N_a(x_t)` (the block input itself without norms).
            pub u: [[S; D]; SEQ],
            #na_stats
            #h_field
            /// Attention queries (rotated with RoPE).
            pub q: [[S; D]; SEQ],
            /// Attention keys (rotated with RoPE).
            pub k: [[S; D]; SEQ],
            /// Attention values.
            pub v: [[S; D]; SEQ],
            #[doc = #p_doc]
            pub p: #p_ty,
            /// Attention output `a_t`.
            pub a: [[S; D]; SEQ],
            #o_field
            #mlp_fields
            /// `attn_wq` transposed (`[D, D]`, rows along the output), packed by the forward pass.
            pub attn_wq_t: [[S; D]; D],
            /// `attn_wk` transposed.
            pub attn_wk_t: [[S; D]; D],
            /// `attn_wv` transposed.
            pub attn_wv_t: [[S; D]; D],
            /// `attn_wo` transposed.
            pub attn_wo_t: [[S; D]; D],
            #mlp_packed
            #q_fields
        }

        /// The backward's buffers, shared by the blocks (the backward runs
        /// one block at a time).
        #[repr(C)]
        pub struct Scratch<S> {
            /// Gradient of the residual stream: at a block's output on entry
            /// to its backward, at its input on exit.
            pub dx: [[S; D]; SEQ],
            /// Gradient of `a`.
            pub da: [[S; D]; SEQ],
            /// Gradient of `q`.
            pub dq: [[S; D]; SEQ],
            /// Gradient of `k`.
            pub dk: [[S; D]; SEQ],
            /// Gradient of `v`.
            pub dv: [[S; D]; SEQ],
            /// Gradient of the attention input, then of `u`.
            pub dh: [[S; D]; SEQ],
            #attn_scratch
            #d_o
            #dxf
            #dmlp
            #mem_scratch
        }

        /// Scratch for one training sequence: activations kept for the
        /// backward pass and the backward's own buffers. Build it zeroed
        /// (`nl_runtime::boxed_zeroed`, or a `static`); nothing in it needs
        /// clearing between calls.
        #[repr(C)]
        pub struct Workspace<S> {
            /// Per block.
            pub blocks: [BlockWs<S>; LAYERS],
            /// The residual stream: `xs[b]` enters block `b`, `xs[LAYERS]` leaves the last.
            pub xs: [[[S; D]; SEQ]; LAYERS + 1],
            #xf
            /// Logits; row `t` predicts token `t + 1`.
            pub logits: [[S; VOCAB]; SEQ],
            /// Gradient of the loss with respect to the logits.
            pub dlogits: [[S; VOCAB]; SEQ],
            /// The unembedding transposed (`[D, VOCAB]`), packed by the forward pass.
            pub unembed_t: [[S; VOCAB]; D],
            #rope
            /// The backward's buffers.
            pub sc: Scratch<S>,
            #xfq
            #freeze
        }

        #[doc = " SAFETY: every field is an array of `S: Scalar` or of `nl_runtime::memory` state structs (themselves arrays of `S` and integers), so all-zero bytes are a valid `BlockWs`."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for BlockWs<S> {}
        #[doc = " SAFETY: every field is an array of `S: Scalar`, an `nl_runtime::memory::LevelAdjoint` or an `nl_runtime::attn::AttnScratch` (both arrays of `S`), so all-zero bytes are a valid `Scratch`."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for Scratch<S> {}
        #[doc = " SAFETY: every field is `Zeroable` (arrays of `S: Scalar`, `BlockWs`, `Scratch`, bools), so all-zero bytes are a valid `Workspace`."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for Workspace<S> {}

        impl<S: Scalar> Workspace<S> {
            /// The logits of the last forward pass, `SEQ * VOCAB` values.
            pub fn logits(&self) -> &[S] {
                self.logits.as_flattened()
            }
            #mem_methods
        }
    }
}

/// `pack`, `forward`, `loss`, `loss_and_grad` and the per-block forward and backward.
pub(crate) fn train(plan: &Plan) -> TokenStream {
    let block_fwd = block_forward(plan);
    let block_bwd = block_backward(plan);
    let norm = plan.norm != Norm::None;
    let mem = plan.memory.is_some();
    let rope = plan.positions == Positions::Rope;
    let unembed = if plan.tie_embeddings {
        quote! { embed }
    } else {
        quote! { unembed }
    };
    let mlp_pack = if plan.mlp.is_some() {
        let gate = if parts::gated(plan) {
            quote! { mm::transpose(&bp.mlp_w_gate, &mut bw.mlp_w_gate_t); }
        } else {
            quote! {}
        };
        quote! {
            mm::transpose(&bp.mlp_w_up, &mut bw.mlp_w_up_t);
            #gate
            mm::transpose(&bp.mlp_w_down, &mut bw.mlp_w_down_t);
        }
    } else {
        quote! {}
    };
    let rope_pack = if rope {
        quote! { ::nl_runtime::positions::rope_table::<S, SEQ, HALF>(0, &mut ws.rope_cos, &mut ws.rope_sin); }
    } else {
        quote! {}
    };
    let (freeze, rope_arg) = (
        if mem {
            quote! { ws.freeze_memory }
        } else {
            quote! { false }
        },
        if rope {
            quote! { (&ws.rope_cos, &ws.rope_sin) }
        } else {
            quote! { () }
        },
    );
    let attn_arg = if gemm_attention(plan) {
        quote! { &mut ws.sc.attn }
    } else {
        quote! { () }
    };
    let chunk_arg = memory::chunk_arg(plan);
    let (ws_tok, p_tok) = (quote! { ws }, quote! { p });
    let final_norm =
        parts::norm_seq(plan, "norm_f", &p_tok, &ws_tok, "nf", quote! { &ws.xs[LAYERS] }, quote! { &mut ws.xf });
    let xf = if norm {
        quote! { ws.xf }
    } else {
        quote! { ws.xs[LAYERS] }
    };
    let g_tok = quote! { g };
    // The unembedding's input as it reads it (a tied `embed` stays f32, and so does its input).
    let q_xf = crate::quant::int8_acts(plan) && !plan.tie_embeddings;
    let xf_q = opt(q_xf, quote! { ws.xfq = #xf; ::nl_runtime::qat::fake_quant_rows(&mut ws.xfq); });
    let xf_in = if q_xf {
        quote! { ws.xfq }
    } else {
        xf.clone()
    };
    let final_back = if norm {
        let back = parts::norm_seq_back(
            plan,
            "norm_f",
            &p_tok,
            &g_tok,
            &ws_tok,
            "nf",
            quote! { &ws.xs[LAYERS] },
            quote! { &ws.sc.dxf },
            quote! { &mut ws.sc.dx },
        );
        quote! {
            mm::linear_backward_input(&ws.dlogits, &p.#unembed, &mut ws.sc.dxf);
            k::zero(&mut ws.sc.dx);
            #back
        }
    } else {
        quote! {
            mm::linear_backward_input(&ws.dlogits, &p.#unembed, &mut ws.sc.dx);
        }
    };
    quote! {
        /// Packs the weights the forward pass reads transposed
        /// (`BlockWs::attn_wq_t` ..., `Workspace::unembed_t`) from `p`: the
        /// matrix-matrix kernels want each weight with rows along its output.
        pub fn pack<S: Scalar>(p: &Params<S>, ws: &mut Workspace<S>) {
            for (bp, bw) in p.blocks.iter().zip(ws.blocks.iter_mut()) {
                mm::transpose(&bp.attn_wq, &mut bw.attn_wq_t);
                mm::transpose(&bp.attn_wk, &mut bw.attn_wk_t);
                mm::transpose(&bp.attn_wv, &mut bw.attn_wv_t);
                mm::transpose(&bp.attn_wo, &mut bw.attn_wo_t);
                #mlp_pack
            }
            mm::transpose(&p.#unembed, &mut ws.unembed_t);
            #rope_pack
        }

        /// The training forward pass over `tokens[..SEQ]`: fills the
        /// workspace's activations and logits (row `t` predicts `tokens[t + 1]`).
        ///
        /// # Panics
        /// If a token is `>= VOCAB`.
        pub fn forward<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>) {
            pack(p, ws);
            forward_packed(p, tokens, ws);
        }

        /// [`forward`] with the transposed weights already packed from the
        /// same `p` by [`pack`].
        fn forward_packed<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>) {
            k::embed(&p.embed, &tokens[..SEQ], &mut ws.xs[0]);
            for b in 0..LAYERS {
                let (done, rest) = ws.xs.split_at_mut(b + 1);
                block_forward(&p.blocks[b], &mut ws.blocks[b], &done[b], &mut rest[0], #freeze, #rope_arg, #attn_arg, #chunk_arg);
            }
            #final_norm
            #xf_q
            mm::linear_t(&#xf_in, &ws.unembed_t, &mut ws.logits);
        }

        #block_fwd

        /// Mean next-token cross-entropy (nats) of the sequence.
        ///
        /// # Panics
        /// If a token is `>= VOCAB`.
        pub fn loss<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>) -> S {
            forward(p, tokens, ws);
            k::mean_cross_entropy(&ws.logits, &tokens[1..])
        }

        /// The loss and its gradient: the analytic backward pass, adding
        /// `d loss / d param` into `g` (zero `g` first, or accumulate a batch).
        ///
        /// # Panics
        /// If a token is `>= VOCAB`.
        pub fn loss_and_grad<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>, g: &mut Params<S>) -> S {
            pack(p, ws);
            loss_and_grad_packed(p, tokens, ws, g)
        }

        /// The loss and gradient summed over a batch of sequences,
        /// `tokens.len() / (SEQ + 1)` of them back to back: the same as
        /// [`loss_and_grad`] on each in turn (the gradients add into `g`,
        /// the returned value is the sum of the sequences' mean losses), with
        /// the weights packed once for the batch.
        ///
        /// # Panics
        /// If `tokens.len()` is not a multiple of `SEQ + 1`, or a token is `>= VOCAB`.
        pub fn loss_and_grad_batch<S: Scalar>(p: &Params<S>, tokens: &[u32], ws: &mut Workspace<S>, g: &mut Params<S>) -> S {
            assert!(
                tokens.len().is_multiple_of(SEQ + 1),
                "a batch is whole sequences of SEQ + 1 = {} tokens, got {} tokens", SEQ + 1, tokens.len()
            );
            pack(p, ws);
            let mut loss = S::ZERO;
            for seq in tokens.chunks_exact(SEQ + 1) {
                loss += loss_and_grad_packed(p, seq_tokens(seq), ws, g);
            }
            loss
        }

        /// [`loss_and_grad`] with the weights already packed from `p`.
        fn loss_and_grad_packed<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>, g: &mut Params<S>) -> S {
            forward_packed(p, tokens, ws);
            let loss = k::cross_entropy_backward(&ws.logits, &tokens[1..], &mut ws.dlogits);
            // logits = U xf
            mm::linear_backward_weight_acc(&ws.dlogits, &#xf_in, &mut g.#unembed);
            #final_back
            for b in (0..LAYERS).rev() {
                block_backward(&p.blocks[b], &mut g.blocks[b], &mut ws.blocks[b], &ws.xs[b], &mut ws.sc, #freeze, #rope_arg);
            }
            // x^0 = E[x]
            k::embed_backward_acc(&ws.sc.dx, &tokens[..SEQ], &mut g.embed);
            loss
        }

        #block_bwd
    }
}

/// Whether attention runs as per-head matrix products (`nl_runtime::attn`).
fn gemm_attention(plan: &Plan) -> bool {
    nl_spec::attention_as_gemm(plan.seq_len, plan.window, plan.positions)
}

/// The attention input of a block: `h` with MAL, else `u`.
fn attn_input(plan: &Plan) -> TokenStream {
    if plan.composition == Composition::Mal {
        quote! { bw.h }
    } else {
        quote! { bw.u }
    }
}

/// What a product reads of its input `orig`: with int8 activations its
/// quantized copy `q` (docs/quant.md), else `orig` itself.
fn q_input(plan: &Plan, orig: TokenStream, q: TokenStream) -> TokenStream {
    if crate::quant::int8_acts(plan) {
        q
    } else {
        orig
    }
}

/// The attention projections' input as they read it.
fn attn_mm_input(plan: &Plan) -> TokenStream {
    let q = if plan.composition == Composition::Mal {
        quote! { bw.hq }
    } else {
        quote! { bw.uq }
    };
    q_input(plan, attn_input(plan), q)
}

/// `dst = src; quantize each row of dst` when activations are int8.
fn q_copy(plan: &Plan, dst: TokenStream, src: TokenStream) -> TokenStream {
    opt(
        crate::quant::int8_acts(plan),
        quote! {
            #dst = #src;
            ::nl_runtime::qat::fake_quant_rows(&mut #dst);
        },
    )
}

fn block_forward(plan: &Plan) -> TokenStream {
    let mag = plan.composition == Composition::Mag;
    let mal = plan.composition == Composition::Mal;
    let norm = plan.norm != Norm::None;
    let rope = plan.positions == Positions::Rope;
    let (bp, bw) = (quote! { bp }, quote! { bw });
    let norm_a = if norm {
        parts::norm_seq(plan, "norm_a", &bp, &bw, "na", quote! { x }, quote! { &mut bw.u })
    } else {
        quote! { bw.u = *x; }
    };
    let u_q = q_copy(plan, quote! { bw.uq }, quote! { bw.u });
    let h_q = opt(mal, q_copy(plan, quote! { bw.hq }, quote! { bw.h }));
    let mem_forward = memory::forward(plan);
    let h_in = opt(
        mal,
        quote! {
            for t in 0..SEQ {
                for i in 0..D {
                    bw.h[t][i] = bw.u[t][i] + bw.y[t][i];
                }
            }
        },
    );
    let h = attn_mm_input(plan);
    let rotate = opt(
        rope,
        quote! {
            ::nl_runtime::positions::rope_apply::<S, SEQ, D, HEAD_DIM, HALF>(&mut bw.q, rope.0, rope.1);
            ::nl_runtime::positions::rope_apply::<S, SEQ, D, HEAD_DIM, HALF>(&mut bw.k, rope.0, rope.1);
        },
    );
    let attend = if gemm_attention(plan) {
        quote! { ::nl_runtime::attn::attention::<S, SEQ, D, HEADS, HEAD_DIM, WINDOW>(&bw.q, &bw.k, &bw.v, &mut bw.p, &mut bw.a, attn); }
    } else if plan.positions == Positions::Bias {
        quote! { k::attention_bias::<S, SEQ, D, HEADS, HEAD_DIM, WINDOW>(&bw.q, &bw.k, &bw.v, &bp.attn_pos_bias, &mut bw.p, &mut bw.a); }
    } else {
        quote! { k::attention::<S, SEQ, D, HEADS, HEAD_DIM, WINDOW>(&bw.q, &bw.k, &bw.v, &mut bw.p, &mut bw.a); }
    };
    let compose = opt(
        mag,
        quote! {
            for t in 0..SEQ {
                for i in 0..D {
                    bw.o[t][i] = bw.a[t][i] * bw.gate[t][i];
                }
            }
        },
    );
    let o = if mag {
        quote! { bw.o }
    } else {
        quote! { bw.a }
    };
    let o_q = q_copy(plan, quote! { bw.oq }, o.clone());
    let o = q_input(plan, o, quote! { bw.oq });
    let add = |target: TokenStream, from: TokenStream| {
        opt(
            plan.residual,
            quote! {
                for t in 0..SEQ {
                    for i in 0..D {
                        #target[t][i] += #from[t][i];
                    }
                }
            },
        )
    };
    let (attn_out, mlp) = if plan.mlp.is_some() {
        let add_x = add(quote! { bw.mid }, quote! { x });
        let add_mid = add(quote! { out }, quote! { bw.mid });
        let (norm_m, w) = if norm {
            (parts::norm_seq(plan, "norm_m", &bp, &bw, "nm", quote! { &bw.mid }, quote! { &mut bw.w }), quote! { bw.w })
        } else {
            (quote! {}, quote! { bw.mid })
        };
        let w_q = q_copy(plan, quote! { bw.mq }, w.clone());
        let w = q_input(plan, w, quote! { bw.mq });
        let act_q = q_copy(plan, quote! { bw.actq }, quote! { bw.act });
        let act_in = q_input(plan, quote! { bw.act }, quote! { bw.actq });
        let gate_mm = if parts::gated(plan) {
            quote! { mm::linear_t(&#w, &bw.mlp_w_gate_t, &mut bw.gate_pre); }
        } else {
            quote! {}
        };
        let act = parts::activation(
            plan,
            quote! { bw.up.as_flattened() },
            quote! { bw.gate_pre.as_flattened() },
            quote! { bw.act.as_flattened_mut() },
        );
        (
            quote! {
                #o_q
                mm::linear_t(&#o, &bw.attn_wo_t, &mut bw.mid);
                #add_x
            },
            quote! {
                // MLP: f = W_down act(W_up N_m(mid)); out = [mid +] f.
                #norm_m
                #w_q
                mm::linear_t(&#w, &bw.mlp_w_up_t, &mut bw.up);
                #gate_mm
                #act
                #act_q
                mm::linear_t(&#act_in, &bw.mlp_w_down_t, out);
                #add_mid
            },
        )
    } else {
        let add_x = add(quote! { out }, quote! { x });
        (
            quote! {
                #o_q
                mm::linear_t(&#o, &bw.attn_wo_t, out);
                #add_x
            },
            quote! {},
        )
    };
    let rope_ty = if rope {
        quote! { (&[[S; HALF]; SEQ], &[[S; HALF]; SEQ]) }
    } else {
        quote! { () }
    };
    let attn_ty = if gemm_attention(plan) {
        quote! { &mut ::nl_runtime::attn::AttnScratch<S, SEQ, HEAD_DIM> }
    } else {
        quote! { () }
    };
    let chunk_ty = memory::chunk_type(plan);
    quote! {
        /// One block's training forward: `out` from its input `x`, keeping
        /// in `bw` what its backward reads.
        #[inline(never)]
        fn block_forward<S: Scalar>(
            bp: &Block<S>,
            bw: &mut BlockWs<S>,
            x: &[[S; D]; SEQ],
            out: &mut [[S; D]; SEQ],
            freeze_memory: bool,
            rope: #rope_ty,
            attn: #attn_ty,
            chunk: #chunk_ty,
        ) {
            // u = N_a(x)
            #norm_a
            #u_q
            #mem_forward
            #h_in
            #h_q
            mm::linear_t(&#h, &bw.attn_wq_t, &mut bw.q);
            mm::linear_t(&#h, &bw.attn_wk_t, &mut bw.k);
            mm::linear_t(&#h, &bw.attn_wv_t, &mut bw.v);
            #rotate
            #attend
            #compose
            // z = Wo o; x' = [x +] z
            #attn_out
            #mlp
        }
    }
}

fn block_backward(plan: &Plan) -> TokenStream {
    let mag = plan.composition == Composition::Mag;
    let mal = plan.composition == Composition::Mal;
    let mem = plan.memory.is_some();
    let norm = plan.norm != Norm::None;
    let rope = plan.positions == Positions::Rope;
    let (bp, bg, bw) = (quote! { bp }, quote! { bg }, quote! { bw });
    // The gradient of the attention branch's output z: sc.dmid with an MLP
    // and no residual stream, sc.dx otherwise.
    let (mlp_back, dz) = if plan.mlp.is_some() {
        let gated = parts::gated(plan);
        let w = if norm {
            quote! { bw.w }
        } else {
            quote! { bw.mid }
        };
        let w = q_input(plan, w, quote! { bw.mq });
        let act_in = q_input(plan, quote! { bw.act }, quote! { bw.actq });
        let act_back = parts::activation_back(
            plan,
            quote! { bw.up.as_flattened() },
            quote! { bw.gate_pre.as_flattened() },
            quote! { sc.dact.as_flattened() },
            quote! { sc.dup.as_flattened_mut() },
            quote! { sc.dgate.as_flattened_mut() },
        );
        // d mid: with a residual stream, the gradient at the output (already
        // in sc.dx, which then accumulates the MLP branch in place); without
        // one, the MLP branch alone, in sc.dmid.
        let (dmid, dmid_init) = if plan.residual {
            (quote! { sc.dx }, quote! {})
        } else {
            (quote! { sc.dmid }, quote! { k::zero(&mut sc.dmid); })
        };
        let (gate_w, gate_in) = if gated {
            (
                quote! { mm::linear_backward_weight_acc(&sc.dgate, &#w, &mut bg.mlp_w_gate); },
                quote! { mm::linear_backward_input_acc(&sc.dgate, &bp.mlp_w_gate, &mut sc.dw); },
            )
        } else {
            (quote! {}, quote! {})
        };
        let into_mid = if norm {
            parts::norm_seq_back(
                plan,
                "norm_m",
                &bp,
                &bg,
                &bw,
                "nm",
                quote! { &bw.mid },
                quote! { &sc.dw },
                quote! { &mut #dmid },
            )
        } else {
            quote! {
                for t in 0..SEQ {
                    for i in 0..D {
                        #dmid[t][i] += sc.dw[t][i];
                    }
                }
            }
        };
        (
            quote! {
                // out = [mid +] W_down act
                mm::linear_backward_weight_acc(&sc.dx, &#act_in, &mut bg.mlp_w_down);
                mm::linear_backward_input(&sc.dx, &bp.mlp_w_down, &mut sc.dact);
                #dmid_init
                #act_back
                mm::linear_backward_weight_acc(&sc.dup, &#w, &mut bg.mlp_w_up);
                #gate_w
                mm::linear_backward_input(&sc.dup, &bp.mlp_w_up, &mut sc.dw);
                #gate_in
                #into_mid
            },
            dmid,
        )
    } else {
        (quote! {}, quote! { sc.dx })
    };
    let o = if mag {
        quote! { bw.o }
    } else {
        quote! { bw.a }
    };
    let o = q_input(plan, o, quote! { bw.oq });
    let d_o = if mag {
        quote! { sc.d_o }
    } else {
        quote! { sc.da }
    };
    // After z's backward, sc.dx becomes the gradient at the block input:
    // the residual path's share (the whole of d mid), or nothing.
    let dx_in = if plan.residual {
        quote! {}
    } else {
        quote! { k::zero(&mut sc.dx); }
    };
    let compose_back = if mag {
        quote! {
            // o = a * sigmoid(y): da = do * s, dy = do * a * s (1 - s)
            for t in 0..SEQ {
                for i in 0..D {
                    let s = bw.gate[t][i];
                    sc.da[t][i] = sc.d_o[t][i] * s;
                    sc.dy[t][i] = sc.d_o[t][i] * bw.a[t][i] * s * (S::ONE - s);
                }
            }
        }
    } else if mem {
        quote! { k::zero(&mut sc.dy); }
    } else {
        quote! {}
    };
    // The matrix-product form overwrites dq, dk, dv; the row kernels add.
    let attend_back = if gemm_attention(plan) {
        quote! {
            ::nl_runtime::attn::attention_backward::<S, SEQ, D, HEADS, HEAD_DIM, WINDOW>(
                &bw.q, &bw.k, &bw.v, &bw.p, &sc.da, &mut sc.dq, &mut sc.dk, &mut sc.dv, &mut sc.attn,
            );
        }
    } else if plan.positions == Positions::Bias {
        quote! {
            k::zero(&mut sc.dq);
            k::zero(&mut sc.dk);
            k::zero(&mut sc.dv);
            k::attention_bias_backward_acc::<S, SEQ, D, HEADS, HEAD_DIM, WINDOW>(
                &bw.q, &bw.k, &bw.v, &bw.p, &sc.da, &mut sc.dq, &mut sc.dk, &mut sc.dv, &mut bg.attn_pos_bias,
            );
        }
    } else {
        quote! {
            k::zero(&mut sc.dq);
            k::zero(&mut sc.dk);
            k::zero(&mut sc.dv);
            k::attention_backward_acc::<S, SEQ, D, HEADS, HEAD_DIM, WINDOW>(
                &bw.q, &bw.k, &bw.v, &bw.p, &sc.da, &mut sc.dq, &mut sc.dk, &mut sc.dv,
            );
        }
    };
    let unrotate = if rope {
        quote! {
            ::nl_runtime::positions::rope_apply_inverse::<S, SEQ, D, HEAD_DIM, HALF>(&mut sc.dq, rope.0, rope.1);
            ::nl_runtime::positions::rope_apply_inverse::<S, SEQ, D, HEAD_DIM, HALF>(&mut sc.dk, rope.0, rope.1);
        }
    } else {
        quote! {}
    };
    let h = attn_mm_input(plan);
    let mal_back = opt(
        mal,
        quote! {
            for t in 0..SEQ {
                for i in 0..D {
                    sc.dy[t][i] += sc.dh[t][i];
                }
            }
        },
    );
    let mem_backward = memory::backward(plan);
    let norm_a_back = if norm {
        parts::norm_seq_back(
            plan,
            "norm_a",
            &bp,
            &bg,
            &bw,
            "na",
            quote! { x },
            quote! { &sc.dh },
            quote! { &mut sc.dx },
        )
    } else {
        quote! {
            for t in 0..SEQ {
                for i in 0..D {
                    sc.dx[t][i] += sc.dh[t][i];
                }
            }
        }
    };
    let rope_ty = if rope {
        quote! { (&[[S; HALF]; SEQ], &[[S; HALF]; SEQ]) }
    } else {
        quote! { () }
    };
    quote! {
        /// One block's backward: from `sc.dx` (the gradient at the block's
        /// output) adds the block's parameter gradients into `bg` and leaves
        /// the gradient at its input `x` in `sc.dx`.
        #[inline(never)]
        fn block_backward<S: Scalar>(
            bp: &Block<S>,
            bg: &mut Block<S>,
            bw: &mut BlockWs<S>,
            x: &[[S; D]; SEQ],
            sc: &mut Scratch<S>,
            freeze_memory: bool,
            rope: #rope_ty,
        ) {
            #mlp_back
            // z = Wo o
            mm::linear_backward_weight_acc(&#dz, &#o, &mut bg.attn_wo);
            mm::linear_backward_input(&#dz, &bp.attn_wo, &mut #d_o);
            #dx_in
            #compose_back
            // attention
            #attend_back
            #unrotate
            // q, k, v = W h
            mm::linear_backward_weight_acc(&sc.dq, &#h, &mut bg.attn_wq);
            mm::linear_backward_weight_acc(&sc.dk, &#h, &mut bg.attn_wk);
            mm::linear_backward_weight_acc(&sc.dv, &#h, &mut bg.attn_wv);
            mm::linear_backward_input(&sc.dq, &bp.attn_wq, &mut sc.dh);
            mm::linear_backward_input_acc(&sc.dk, &bp.attn_wk, &mut sc.dh);
            mm::linear_backward_input_acc(&sc.dv, &bp.attn_wv, &mut sc.dh);
            #mal_back
            #mem_backward
            // u = N_a(x)
            #norm_a_back
        }
    }
}
