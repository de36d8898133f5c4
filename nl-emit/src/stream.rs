//! The serving side: the `Stream` state (per block a ring of the last
//! `WINDOW` keys and values and the memory levels' states, plus one token's
//! vectors) and its `step`, which runs every block for one token.

use crate::quant::{mv, mv_group, Reader};
use crate::{lit, memory, opt, parts};
use nl_spec::{Composition, Norm, Plan, Positions};
use proc_macro2::TokenStream;
use quote::quote;

/// The `Stream` and its `step`; for a quantized plan also `try_step_q` on
/// the deployable parameters.
pub(crate) fn stream(plan: &Plan) -> TokenStream {
    if plan.quant.is_quantized() {
        let latent = build(plan, Reader::FakeQuant);
        let int = build(plan, Reader::Int);
        quote! {
            #latent
            #int
        }
    } else {
        build(plan, Reader::Float)
    }
}

/// The stream's structs and `step` reading the weights as `reader` says;
/// for [`Reader::Int`] only `Stream<f32>::try_step_q`.
fn build(plan: &Plan, reader: Reader) -> TokenStream {
    let mag = plan.composition == Composition::Mag;
    let mal = plan.composition == Composition::Mal;
    let mem = plan.memory.is_some();
    let norm = plan.norm != Norm::None;
    let rope = plan.positions == Positions::Rope;
    let mlp = plan.mlp.is_some();
    let gated = parts::gated(plan);
    let unembed = if plan.tie_embeddings {
        quote! { embed }
    } else {
        quote! { unembed }
    };

    let mem_block = if mem {
        quote! {
            /// Each level's inner-loop state.
            pub mem: [::nl_runtime::memory::LevelState<S, D>; LEVELS],
            /// Each level's run-time schedule (the power knob: a period
            /// multiplier, or paused; zeroed = the spec's periods). Kept by
            /// `reset`.
            pub schedule: [::nl_runtime::memory::Schedule; LEVELS],
        }
    } else {
        quote! {}
    };
    let h_field = opt(
        mal,
        quote! {
            /// Attention input `u + y` of the current token (MAL).
            pub h: [S; D],
        },
    );
    let o_field = opt(
        mag,
        quote! {
            /// Output projection input `a * sigmoid(y)` of the current token.
            pub o: [S; D],
        },
    );
    let mlp_fields = if mlp {
        let w = opt(
            norm,
            quote! {
                /// MLP input `N_m(x')` of the current token.
                pub w: [S; D],
            },
        );
        let gate = opt(
            gated,
            quote! {
                /// `W_gate w`.
                pub gate_pre: [S; HIDDEN],
            },
        );
        quote! {
            #w
            /// `W_up w`.
            pub up: [S; HIDDEN],
            #gate
            /// The activation.
            pub act: [S; HIDDEN],
            /// The MLP's output `f`.
            pub f: [S; D],
        }
    } else {
        quote! {}
    };
    let xf_field = opt(
        norm,
        quote! {
            /// `N_f(x)` of the current token.
            pub xf: [S; D],
        },
    );
    let rope_fields = opt(
        rope,
        quote! {
            /// `cos(o w_i)` for the offsets `o` in the window (RoPE scores
            /// depend on the offset only), filled on the first step.
            pub rope_cos: [[S; HALF]; WINDOW],
            /// `sin(o w_i)`.
            pub rope_sin: [[S; HALF]; WINDOW],
        },
    );
    let mem_fields = opt(
        mem,
        quote! {
            /// Combined memory read of the current token.
            pub y: [S; D],
            /// Per-token scratch of the levels.
            pub scratch: ::nl_runtime::memory::StepScratch<S, D>,
            /// Inner loop off: the memory stays as it is (for ablations).
            pub freeze_memory: bool,
        },
    );
    let rope_ready = opt(
        rope,
        quote! {
            /// Whether `rope_cos`/`rope_sin` are filled (a zeroed stream is valid).
            pub rope_ready: bool,
        },
    );
    let mem_reset = opt(
        mem,
        quote! {
            for s in bs.mem.iter_mut() {
                s.reset();
            }
        },
    );
    let rope_fill = opt(
        rope,
        quote! {
            if !self.rope_ready {
                ::nl_runtime::positions::rope_table::<S, WINDOW, HALF>(0, &mut self.rope_cos, &mut self.rope_sin);
                self.rope_ready = true;
            }
        },
    );
    let (bp, self_tok) = (quote! { bp }, quote! { self });
    let norm_a = if norm {
        parts::norm_row(plan, "norm_a", &bp, quote! { &self.x }, quote! { &mut self.u })
    } else {
        quote! { self.u = self.x; }
    };
    let mem_step = memory::stream_step(plan, reader);
    let bind_b = if reader == Reader::Int {
        quote! { let (bp, bi, bk, bs) = (&p.blocks[b], &q.i.blocks[b], pk.map(|k| &k.blocks[b]), &mut self.blocks[b]); }
    } else {
        quote! { let (bp, bs) = (&p.blocks[b], &mut self.blocks[b]); }
    };
    let qin = lit(crate::quant::max_in(plan));
    let quant_fields = opt(
        plan.quant.is_quantized(),
        quote! {
            /// Scratch of the quantized products on latent weights (an input and a row).
            pub qbuf: [S; 2 * #qin],
            /// An input's int8 codes (int8 activations).
            pub qx: [i8; #qin],
        },
    );
    let h_in = opt(
        mal,
        quote! {
            for i in 0..D {
                self.h[i] = self.u[i] + self.y[i];
            }
        },
    );
    let h = if mal {
        quote! { self.h }
    } else {
        quote! { self.u }
    };
    let attend = match plan.positions {
        Positions::None => quote! {
            k::attend_row::<S, D, HEADS, HEAD_DIM, WINDOW>(
                &self.q, n, |i| &bs.k[(slot + WINDOW - i) % WINDOW], |i| &bs.v[(slot + WINDOW - i) % WINDOW], &mut self.p, &mut self.a,
            );
        },
        Positions::Rope => quote! {
            k::attend_row_pos::<S, D, HEADS, HEAD_DIM, HALF, WINDOW>(
                &self.q, n, |i| &bs.k[(slot + WINDOW - i) % WINDOW], |i| &bs.v[(slot + WINDOW - i) % WINDOW],
                Some((&self.rope_cos, &self.rope_sin)), None, &mut self.p, &mut self.a,
            );
        },
        Positions::Bias => quote! {
            k::attend_row_pos::<S, D, HEADS, HEAD_DIM, HALF, WINDOW>(
                &self.q, n, |i| &bs.k[(slot + WINDOW - i) % WINDOW], |i| &bs.v[(slot + WINDOW - i) % WINDOW],
                None, Some(&bp.attn_pos_bias), &mut self.p, &mut self.a,
            );
        },
    };
    let compose = opt(
        mag,
        quote! {
            for i in 0..D {
                self.o[i] = self.a[i] * self.y[i].sigmoid();
            }
        },
    );
    let o = if mag {
        quote! { self.o }
    } else {
        quote! { self.a }
    };
    // x' = [x +] z, in place; the same sums as training's (z first, then x).
    let residual_z = if plan.residual {
        quote! {
            for i in 0..D {
                self.x[i] = self.z[i] + self.x[i];
            }
        }
    } else {
        quote! { self.x = self.z; }
    };
    let mlp_step = if mlp {
        let (norm_m, w) = if norm {
            (parts::norm_row(plan, "norm_m", &bp, quote! { &self.x }, quote! { &mut self.w }), quote! { self.w })
        } else {
            (quote! {}, quote! { self.x })
        };
        let gate = if gated {
            mv(plan, reader, true, "mlp_w_gate", quote! { #w }, quote! { self.gate_pre })
        } else {
            quote! {}
        };
        let act = parts::activation(
            plan,
            quote! { &self.up[..] },
            quote! { &self.gate_pre[..] },
            quote! { &mut self.act[..] },
        );
        let residual_f = if plan.residual {
            quote! {
                for i in 0..D {
                    self.x[i] = self.f[i] + self.x[i];
                }
            }
        } else {
            quote! { self.x = self.f; }
        };
        let up = mv(plan, reader, true, "mlp_w_up", quote! { #w }, quote! { self.up });
        let down = mv(plan, reader, true, "mlp_w_down", quote! { self.act }, quote! { self.f });
        quote! {
            #norm_m
            #up
            #gate
            #act
            #down
            #residual_f
        }
    } else {
        quote! {}
    };
    let final_norm = parts::norm_row(plan, "norm_f", &quote! { p }, quote! { &self.x }, quote! { &mut self.xf });
    let xf = if norm {
        quote! { self.xf }
    } else {
        quote! { self.x }
    };
    let _ = self_tok;
    let unembed_field = if plan.tie_embeddings { "embed" } else { "unembed" };
    let _ = &unembed;
    let mv_qkv = mv_group(
        plan,
        reader,
        true,
        quote! { #h },
        &[("attn_wq", quote! { self.q }), ("attn_wk", quote! { bs.k[slot] }), ("attn_wv", quote! { bs.v[slot] })],
    );
    let mv_o = mv(plan, reader, true, "attn_wo", quote! { #o }, quote! { self.z });
    let mv_logits = mv(plan, reader, false, unembed_field, quote! { #xf }, quote! { self.logits });
    let body = quote! {
        let tok = token as usize;
        if tok >= VOCAB {
            return Err(::nl_runtime::TokenError { token, vocab: VOCAB });
        }
        #rope_fill
        let slot = (self.pos % WINDOW as u64) as usize;
        let n = if self.pos < WINDOW as u64 { self.pos as usize + 1 } else { WINDOW };
        self.x = p.embed[tok];
        for b in 0..LAYERS {
            #bind_b
            #norm_a
            #mem_step
            #h_in
            #mv_qkv
            #attend
            #compose
            #mv_o
            #residual_z
            #mlp_step
        }
        #final_norm
        #mv_logits
        self.pos += 1;
        Ok(&self.logits)
    };
    if reader == Reader::Int {
        return quote! {
            impl Stream<f32> {
                /// [`Stream::try_step`] on the deployable parameters
                /// ([`QParams`], from [`quantize`] or read in place from an
                /// exported checkpoint): every quantized matrix through the
                /// integer kernels of `nl_runtime::quant`. The logits equal
                /// `try_step`'s on the latent parameters within float rounding.
                pub fn try_step_q(&mut self, q: &QParams, token: u32) -> Result<&[f32; VOCAB], ::nl_runtime::TokenError> {
                    self.step_int(q, None, token)
                }

                /// [`Stream::try_step_q`] reading the tiled copies of the
                /// `int8` matrices in `pk` ([`pack_q`] of `q`) where the
                /// tiled kernel is the faster one
                /// (`nl_runtime::quant::tiles_pay`: AVX-512 VNNI), and `q`'s
                /// row-major codes elsewhere. The products are exact integer
                /// sums either way, so the logits are the same bits.
                pub fn try_step_qp(&mut self, q: &QParams, pk: &QPacked, token: u32) -> Result<&[f32; VOCAB], ::nl_runtime::TokenError> {
                    let pk = if ::nl_runtime::quant::tiles_pay() { Some(pk) } else { None };
                    self.step_int(q, pk, token)
                }

                /// The integer step: the tiled products where `pk` is given.
                #[allow(unused_variables)]
                fn step_int(&mut self, q: &QParams, pk: Option<&QPacked>, token: u32) -> Result<&[f32; VOCAB], ::nl_runtime::TokenError> {
                    #[allow(non_camel_case_types, dead_code)]
                    type S = f32;
                    let p = &q.f;
                    #body
                }

                /// [`Stream::try_step_q`], panicking on a token `>= VOCAB`.
                ///
                /// # Panics
                /// If `token >= VOCAB`.
                pub fn step_q(&mut self, q: &QParams, token: u32) -> &[f32; VOCAB] {
                    match self.try_step_q(q, token) {
                        Ok(logits) => logits,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        };
    }
    let try_doc = if reader == Reader::FakeQuant {
        " As [`Stream::step`], but a token `>= VOCAB` is an error and leaves the stream unchanged, instead of a panic (the form for a device, where a panic is a hang). Each quantized matrix and its input are quantized from the latent parameters on the fly (`nl_runtime::qat::fq_matvec`): the training forward's math; [`Stream::try_step_q`] is the fast integer form."
    } else {
        " As [`Stream::step`], but a token `>= VOCAB` is an error and leaves the stream unchanged, instead of a panic (the form for a device, where a panic is a hang)."
    };
    quote! {
        /// One block's serving state.
        #[repr(C)]
        pub struct BlockStream<S> {
            #mem_block
            /// Keys of the last `WINDOW` positions (slot `pos % WINDOW`), unrotated.
            pub k: [[S; D]; WINDOW],
            /// Values of the last `WINDOW` positions.
            pub v: [[S; D]; WINDOW],
        }

        /// Serving state: per block the attention ring and the memory
        /// levels' inner-loop state, the current token's vectors, and the
        /// last logits. Build it zeroed (a zeroed stream is a reset one).
        #[repr(C)]
        pub struct Stream<S> {
            /// Per block.
            pub blocks: [BlockStream<S>; LAYERS],
            /// Tokens seen since the last reset.
            pub pos: u64,
            /// Logits predicting the next token (valid after the first step).
            pub logits: [S; VOCAB],
            /// The residual stream of the current token.
            pub x: [S; D],
            /// Branch input `N_a(x)` of the current block.
            pub u: [S; D],
            /// Query of the current token.
            pub q: [S; D],
            /// Attention probabilities of the current token.
            pub p: [[S; WINDOW]; HEADS],
            /// Attention output of the current token.
            pub a: [S; D],
            /// Output projection of the current token.
            pub z: [S; D],
            #h_field
            #o_field
            #mlp_fields
            #xf_field
            #rope_fields
            #mem_fields
            #rope_ready
            #quant_fields
        }

        #[doc = " SAFETY: every field is an array of `S: Scalar` or of `nl_runtime::memory::LevelState` (arrays of `S` and a `u64`), so all-zero bytes are a valid `BlockStream`."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for BlockStream<S> {}
        #[doc = " SAFETY: every field is `Zeroable` (arrays of `S: Scalar`, `BlockStream`, integers, bools, `nl_runtime::memory` state structs), so all-zero bytes are a valid `Stream`."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for Stream<S> {}

        impl<S: Scalar> Stream<S> {
            /// Clears the state: empty attention windows, zero memory, position 0.
            pub fn reset(&mut self) {
                self.pos = 0;
                for bs in self.blocks.iter_mut() {
                    k::zero(&mut bs.k);
                    k::zero(&mut bs.v);
                    #mem_reset
                }
                self.logits = [S::ZERO; VOCAB];
            }

            /// Feeds one token and returns the logits predicting the next. The
            /// memory levels' inner loop runs here, so the memory adapts to
            /// the stream while the parameters stay frozen.
            ///
            /// # Panics
            /// If `token >= VOCAB` ([`Stream::try_step`] returns an error instead).
            pub fn step(&mut self, p: &Params<S>, token: u32) -> &[S; VOCAB] {
                match self.try_step(p, token) {
                    Ok(logits) => logits,
                    Err(e) => panic!("{e}"),
                }
            }

            #[doc = #try_doc]
            pub fn try_step(&mut self, p: &Params<S>, token: u32) -> Result<&[S; VOCAB], ::nl_runtime::TokenError> {
                #body
            }

            /// The surprise of `next`: `-log softmax(logits)[next]` under the
            /// current prediction, in nats (the model's own loss on it);
            /// `None` before the first step.
            ///
            /// # Panics
            /// If `next >= VOCAB`.
            pub fn surprise(&self, next: u32) -> Option<S> {
                if self.pos == 0 {
                    None
                } else {
                    Some(k::cross_entropy(&self.logits, next))
                }
            }
        }
    }
}
