//! Many streams per core (docs/batch.md): the batched streaming step, which
//! advances `N` independent streams by one token each and reads every
//! weight once for all of them.
//!
//! What batches and what does not: the projections (attention `q`, `k`,
//! `v`, `o`, each memory level's `k`, `v`, `q`), the MLP and the output
//! layer are matrix-matrix products over the `N` rows (`nl_runtime::gemm`,
//! the training pass's kernels, on weights packed transposed once by
//! `pack_serving`); each stream's attention over its own window and each
//! memory level's inner loop on its own `M` stay per stream and run the
//! single-stream code (`k::attend_row*`, and the memory step emitted by
//! [`crate::memory::stream_step_projected`], the same tokens as the
//! single-stream step's quantized path).
//!
//! A quantized spec's batched step runs each stream's own `try_step` (the
//! fake-quantized products on the latent parameters) in turn: correct, not
//! batched; its fast path is the single-stream integer `try_step_q`.

use crate::{memory, opt, parts};
use nl_spec::{Composition, Norm, Plan, Positions};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// `Packed`, `BatchScratch`, `pack_serving`, `try_step_batch` and `step_batch`.
pub(crate) fn batch(plan: &Plan) -> TokenStream {
    let api_doc = quote! {
        /// [`try_step_batch`], panicking on a token `>= VOCAB`.
        ///
        /// # Panics
        /// If a token is `>= VOCAB`.
        pub fn step_batch<'a, S: Scalar, const N: usize>(
            streams: &mut [Stream<S>; N],
            p: &Params<S>,
            packed: &Packed<S>,
            sc: &'a mut BatchScratch<S, N>,
            tokens: &[u32; N],
        ) -> &'a [[S; VOCAB]; N] {
            match try_step_batch(streams, p, packed, sc, tokens) {
                Ok(logits) => logits,
                Err(e) => panic!("{e}"),
            }
        }
    };
    if plan.quant.is_quantized() {
        return quote! {
            /// The batched step's packed weights: nothing for a quantized
            /// model, whose [`try_step_batch`] steps each stream on its own.
            #[repr(C)]
            pub struct Packed<S> {
                /// No packed weights.
                pub none: [S; 0],
            }

            /// Scratch of [`try_step_batch`]: the `N` rows of logits.
            #[repr(C)]
            pub struct BatchScratch<S, const N: usize> {
                /// Logits, row `i` for stream `i`.
                pub logits: [[S; VOCAB]; N],
            }

            #[doc = " SAFETY: an empty array of `S: Scalar`."]
            unsafe impl<S: Scalar> ::nl_runtime::Zeroable for Packed<S> {}
            #[doc = " SAFETY: arrays of `S: Scalar`."]
            unsafe impl<S: Scalar, const N: usize> ::nl_runtime::Zeroable for BatchScratch<S, N> {}

            /// Packs nothing (a quantized model's batched step is not batched).
            pub fn pack_serving<S: Scalar>(p: &Params<S>, packed: &mut Packed<S>) {
                let _ = (p, packed);
            }

            /// Advances `N` streams by one token each: for this quantized
            /// model each stream's own [`Stream::try_step`] in turn (the
            /// fake-quantized products on the latent parameters; not
            /// batched: the fast path of a quantized model is the
            /// single-stream integer [`Stream::try_step_q`]). A token
            /// `>= VOCAB` is an error and leaves every stream unchanged.
            pub fn try_step_batch<'a, S: Scalar, const N: usize>(
                streams: &mut [Stream<S>; N],
                p: &Params<S>,
                packed: &Packed<S>,
                sc: &'a mut BatchScratch<S, N>,
                tokens: &[u32; N],
            ) -> Result<&'a [[S; VOCAB]; N], ::nl_runtime::TokenError> {
                let _ = packed;
                for &token in tokens {
                    if token as usize >= VOCAB {
                        return Err(::nl_runtime::TokenError { token, vocab: VOCAB });
                    }
                }
                for i in 0..N {
                    sc.logits[i] = *streams[i].try_step(p, tokens[i])?;
                }
                Ok(&sc.logits)
            }

            #api_doc
        };
    }
    float(plan, api_doc)
}

fn float(plan: &Plan, api_doc: TokenStream) -> TokenStream {
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

    // Packed weights.
    let mlp_packed = opt(mlp, {
        let gate = opt(
            gated,
            quote! {
                /// `mlp_w_gate` transposed.
                pub mlp_w_gate_t: [[S; HIDDEN]; D],
            },
        );
        quote! {
            /// `mlp_w_up` transposed (`[D, HIDDEN]`).
            pub mlp_w_up_t: [[S; HIDDEN]; D],
            #gate
            /// `mlp_w_down` transposed (`[HIDDEN, D]`).
            pub mlp_w_down_t: [[S; D]; HIDDEN],
        }
    });
    let mem_packed = opt(
        mem,
        quote! {
            /// Each level's `W_k`, `W_v`, `W_q`, transposed.
            pub mem_t: [[[[S; D]; D]; 3]; LEVELS],
        },
    );
    let mlp_pack = opt(mlp, {
        let gate = opt(gated, quote! { mm::transpose(&bp.mlp_w_gate, &mut bk.mlp_w_gate_t); });
        quote! {
            mm::transpose(&bp.mlp_w_up, &mut bk.mlp_w_up_t);
            #gate
            mm::transpose(&bp.mlp_w_down, &mut bk.mlp_w_down_t);
        }
    });
    let levels = plan.levels();
    let mem_pack = (0..levels).map(|l| {
        let (wk, wv, wq) = (format_ident!("mem{}_wk", l), format_ident!("mem{}_wv", l), format_ident!("mem{}_wq", l));
        quote! {
            mm::transpose(&bp.#wk, &mut bk.mem_t[#l][0]);
            mm::transpose(&bp.#wv, &mut bk.mem_t[#l][1]);
            mm::transpose(&bp.#wq, &mut bk.mem_t[#l][2]);
        }
    });

    // Scratch rows.
    let h_field = opt(
        mal,
        quote! {
            /// Attention inputs `u + y` (MAL).
            pub h: [[S; D]; N],
        },
    );
    let o_field = opt(
        mag,
        quote! {
            /// Output projection inputs `a * sigmoid(y)` (MAG).
            pub o: [[S; D]; N],
        },
    );
    let mem_fields = opt(
        mem,
        quote! {
            /// Combined memory reads.
            pub y: [[S; D]; N],
            /// Each level's projections of the memory input: keys, values, queries.
            pub mproj: [[[[S; D]; N]; 3]; LEVELS],
        },
    );
    let mlp_fields = opt(mlp, {
        let w = opt(
            norm,
            quote! {
                /// MLP inputs `N_m(x')`.
                pub w: [[S; D]; N],
            },
        );
        let gate = opt(
            gated,
            quote! {
                /// `W_gate w`.
                pub gate_pre: [[S; HIDDEN]; N],
            },
        );
        quote! {
            #w
            /// `W_up w`.
            pub up: [[S; HIDDEN]; N],
            #gate
            /// The activations.
            pub act: [[S; HIDDEN]; N],
            /// The MLP's outputs.
            pub f: [[S; D]; N],
        }
    });
    let xf_field = opt(
        norm,
        quote! {
            /// `N_f(x)`.
            pub xf: [[S; D]; N],
        },
    );

    // The step.
    let bp = quote! { bp };
    let norm_a = if norm {
        let n = parts::norm_row(plan, "norm_a", &bp, quote! { &sc.x[i] }, quote! { &mut sc.u[i] });
        quote! {
            for i in 0..N {
                #n
            }
        }
    } else {
        quote! { sc.u = sc.x; }
    };
    let mem_step = opt(mem, {
        let proj = (0..levels).map(|l| {
            quote! {
                mm::linear_t(&sc.u, &bk.mem_t[#l][0], &mut sc.mproj[#l][0]);
                mm::linear_t(&sc.u, &bk.mem_t[#l][1], &mut sc.mproj[#l][1]);
                mm::linear_t(&sc.u, &bk.mem_t[#l][2], &mut sc.mproj[#l][2]);
            }
        });
        quote! {
            #(#proj)*
            for i in 0..N {
                streams[i].batch_memory(bp, b, &sc.mproj, i);
                sc.y[i] = streams[i].y;
            }
        }
    });
    let h_in = opt(
        mal,
        quote! {
            for i in 0..N {
                for j in 0..D {
                    sc.h[i][j] = sc.u[i][j] + sc.y[i][j];
                }
            }
        },
    );
    let h = if mal {
        quote! { sc.h }
    } else {
        quote! { sc.u }
    };
    let keys = quote! { |j| &bs.k[(slot + WINDOW - j) % WINDOW], |j| &bs.v[(slot + WINDOW - j) % WINDOW] };
    let attend = match plan.positions {
        Positions::None => quote! {
            k::attend_row::<S, D, HEADS, HEAD_DIM, WINDOW>(&sc.q[i], n, #keys, &mut st.p, &mut sc.a[i]);
        },
        Positions::Rope => quote! {
            k::attend_row_pos::<S, D, HEADS, HEAD_DIM, HALF, WINDOW>(
                &sc.q[i], n, #keys, Some((&st.rope_cos, &st.rope_sin)), None, &mut st.p, &mut sc.a[i],
            );
        },
        Positions::Bias => quote! {
            k::attend_row_pos::<S, D, HEADS, HEAD_DIM, HALF, WINDOW>(
                &sc.q[i], n, #keys, None, Some(&bp.attn_pos_bias), &mut st.p, &mut sc.a[i],
            );
        },
    };
    let compose = opt(
        mag,
        quote! {
            for i in 0..N {
                for j in 0..D {
                    sc.o[i][j] = sc.a[i][j] * sc.y[i][j].sigmoid();
                }
            }
        },
    );
    let o = if mag {
        quote! { sc.o }
    } else {
        quote! { sc.a }
    };
    // The same sums as the single-stream step's (the branch first, then x).
    let residual = |z: TokenStream| {
        if plan.residual {
            quote! {
                for i in 0..N {
                    for j in 0..D {
                        sc.x[i][j] = #z[i][j] + sc.x[i][j];
                    }
                }
            }
        } else {
            quote! { sc.x = #z; }
        }
    };
    let residual_z = residual(quote! { sc.z });
    let mlp_step = opt(mlp, {
        let (norm_m, w) = if norm {
            let n = parts::norm_row(plan, "norm_m", &bp, quote! { &sc.x[i] }, quote! { &mut sc.w[i] });
            (
                quote! {
                    for i in 0..N {
                        #n
                    }
                },
                quote! { sc.w },
            )
        } else {
            (quote! {}, quote! { sc.x })
        };
        let gate = opt(gated, quote! { mm::linear_t(&#w, &bk.mlp_w_gate_t, &mut sc.gate_pre); });
        let act = parts::activation(
            plan,
            quote! { sc.up.as_flattened() },
            quote! { sc.gate_pre.as_flattened() },
            quote! { sc.act.as_flattened_mut() },
        );
        let residual_f = residual(quote! { sc.f });
        quote! {
            #norm_m
            mm::linear_t(&#w, &bk.mlp_w_up_t, &mut sc.up);
            #gate
            #act
            mm::linear_t(&sc.act, &bk.mlp_w_down_t, &mut sc.f);
            #residual_f
        }
    });
    let (final_norm, xf) = if norm {
        let n = parts::norm_row(plan, "norm_f", &quote! { p }, quote! { &sc.x[i] }, quote! { &mut sc.xf[i] });
        (
            quote! {
                for i in 0..N {
                    #n
                }
            },
            quote! { sc.xf },
        )
    } else {
        (quote! {}, quote! { sc.x })
    };
    let rope_fill = opt(
        rope,
        quote! {
            for st in streams.iter_mut() {
                if !st.rope_ready {
                    ::nl_runtime::positions::rope_table::<S, WINDOW, HALF>(0, &mut st.rope_cos, &mut st.rope_sin);
                    st.rope_ready = true;
                }
            }
        },
    );
    let batch_memory = opt(mem, {
        let step = memory::stream_step_projected(
            plan,
            |l| {
                quote! {
                    self.scratch.k = mproj[#l][0][i];
                    self.scratch.v = mproj[#l][1][i];
                    self.scratch.q = mproj[#l][2][i];
                }
            },
            |l| quote! { self.scratch.q = mproj[#l][2][i]; },
        );
        quote! {
            impl<S: Scalar> Stream<S> {
                /// The memory branch of block `b` for this stream, the `i`-th
                /// of a batch whose level projections are `mproj` (keys,
                /// values, queries per level): the single-stream step's code
                /// after its projections; writes `self.y`.
                fn batch_memory<const N: usize>(&mut self, bp: &Block<S>, b: usize, mproj: &[[[[S; D]; N]; 3]; LEVELS], i: usize) {
                    let bs = &mut self.blocks[b];
                    #step
                }
            }
        }
    });

    quote! {
        /// One block's weights packed for the batched step.
        #[repr(C)]
        pub struct BlockPacked<S> {
            /// `attn_wq` transposed (`[D, D]`, rows along the output).
            pub attn_wq_t: [[S; D]; D],
            /// `attn_wk` transposed.
            pub attn_wk_t: [[S; D]; D],
            /// `attn_wv` transposed.
            pub attn_wv_t: [[S; D]; D],
            /// `attn_wo` transposed.
            pub attn_wo_t: [[S; D]; D],
            #mlp_packed
            #mem_packed
        }

        /// The weights of the batched streaming step ([`try_step_batch`]),
        /// transposed for the matrix-matrix kernels by [`pack_serving`]:
        /// one copy, shared by any number of streams. Build it zeroed
        /// (`nl_runtime::boxed_zeroed`).
        #[repr(C)]
        pub struct Packed<S> {
            /// Per block.
            pub blocks: [BlockPacked<S>; LAYERS],
            /// The unembedding transposed (`[D, VOCAB]`).
            pub unembed_t: [[S; VOCAB]; D],
        }

        /// Scratch of [`try_step_batch`] over `N` streams: row `i` of each
        /// field belongs to stream `i`. Build it zeroed
        /// (`nl_runtime::boxed_zeroed`); nothing in it needs clearing.
        #[repr(C)]
        pub struct BatchScratch<S, const N: usize> {
            /// The residual streams.
            pub x: [[S; D]; N],
            /// Branch inputs `N_a(x)`.
            pub u: [[S; D]; N],
            #mem_fields
            #h_field
            /// Queries.
            pub q: [[S; D]; N],
            /// Keys of the current tokens.
            pub k: [[S; D]; N],
            /// Values of the current tokens.
            pub v: [[S; D]; N],
            /// Attention outputs.
            pub a: [[S; D]; N],
            #o_field
            /// Output projections.
            pub z: [[S; D]; N],
            #mlp_fields
            #xf_field
            /// Logits, row `i` for stream `i`.
            pub logits: [[S; VOCAB]; N],
        }

        #[doc = " SAFETY: arrays of `S: Scalar` only."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for BlockPacked<S> {}
        #[doc = " SAFETY: arrays of `S: Scalar` and of `BlockPacked<S>` (arrays of `S`) only."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for Packed<S> {}
        #[doc = " SAFETY: arrays of `S: Scalar` only."]
        unsafe impl<S: Scalar, const N: usize> ::nl_runtime::Zeroable for BatchScratch<S, N> {}

        /// Packs the weights of [`try_step_batch`] from `p` (again after
        /// every change of `p`).
        pub fn pack_serving<S: Scalar>(p: &Params<S>, packed: &mut Packed<S>) {
            for (bp, bk) in p.blocks.iter().zip(packed.blocks.iter_mut()) {
                mm::transpose(&bp.attn_wq, &mut bk.attn_wq_t);
                mm::transpose(&bp.attn_wk, &mut bk.attn_wk_t);
                mm::transpose(&bp.attn_wv, &mut bk.attn_wv_t);
                mm::transpose(&bp.attn_wo, &mut bk.attn_wo_t);
                #mlp_pack
                #(#mem_pack)*
            }
            mm::transpose(&p.#unembed, &mut packed.unembed_t);
        }

        #batch_memory

        /// Advances `N` independent streams by one token each (`tokens[i]`
        /// to `streams[i]`), reading each weight once for all `N`: every
        /// projection, the MLP and the output layer are matrix-matrix
        /// products over the `N` rows, on the weights `packed` holds
        /// ([`pack_serving`] of `p`); each stream's attention over its own
        /// window and its memory levels' inner loop (with its own
        /// `freeze_memory`) run per stream. Returns the logits, row `i` for
        /// stream `i`, which are also left in each stream's `logits`.
        /// Row `i` equals what [`Stream::try_step`] on stream `i` alone
        /// returns within float rounding (the products sum in another
        /// order). A token `>= VOCAB` is an error and leaves every stream
        /// unchanged. Nothing is allocated; the stack holds only the
        /// products' 16 KiB tile buffer.
        pub fn try_step_batch<'a, S: Scalar, const N: usize>(
            streams: &mut [Stream<S>; N],
            p: &Params<S>,
            packed: &Packed<S>,
            sc: &'a mut BatchScratch<S, N>,
            tokens: &[u32; N],
        ) -> Result<&'a [[S; VOCAB]; N], ::nl_runtime::TokenError> {
            for &token in tokens {
                if token as usize >= VOCAB {
                    return Err(::nl_runtime::TokenError { token, vocab: VOCAB });
                }
            }
            #rope_fill
            for i in 0..N {
                sc.x[i] = p.embed[tokens[i] as usize];
            }
            for b in 0..LAYERS {
                let (bp, bk) = (&p.blocks[b], &packed.blocks[b]);
                #norm_a
                #mem_step
                #h_in
                mm::linear_t(&#h, &bk.attn_wq_t, &mut sc.q);
                mm::linear_t(&#h, &bk.attn_wk_t, &mut sc.k);
                mm::linear_t(&#h, &bk.attn_wv_t, &mut sc.v);
                for i in 0..N {
                    let st = &mut streams[i];
                    let slot = (st.pos % WINDOW as u64) as usize;
                    let n = if st.pos < WINDOW as u64 { st.pos as usize + 1 } else { WINDOW };
                    st.blocks[b].k[slot] = sc.k[i];
                    st.blocks[b].v[slot] = sc.v[i];
                    let bs = &st.blocks[b];
                    #attend
                }
                #compose
                mm::linear_t(&#o, &bk.attn_wo_t, &mut sc.z);
                #residual_z
                #mlp_step
            }
            #final_norm
            mm::linear_t(&#xf, &packed.unembed_t, &mut sc.logits);
            for (st, logits) in streams.iter_mut().zip(sc.logits.iter()) {
                st.logits = *logits;
                st.pos += 1;
            }
            Ok(&sc.logits)
        }

        #api_doc
    }
}
