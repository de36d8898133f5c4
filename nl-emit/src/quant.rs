//! Quantized models (`[quant]`, docs/quant.md): how the streaming step
//! reads a weight matrix, the deployable `QParams` and `quantize`, and the
//! quantization-aware training wrappers.
//!
//! A quantized spec's training code is the f32 code, emitted unchanged
//! into the submodule `dq` ("on dequantized parameters"); the module's
//! `Workspace` holds a `Params` copy `qp` beside `dq`'s workspace, and the
//! public `forward` / `loss` / `loss_and_grad` / `loss_and_grad_batch`
//! first write the dequantized weights into `qp` (`qat::dequantize`; other
//! tensors copied), then run `dq`'s function on `qp`. The gradient `dq`
//! adds into `g` is the one with respect to `qp`, which is the
//! straight-through gradient of the latent weights. Int8 activations are
//! quantized inside the training code (`train.rs`), where each quantized
//! product reads its input.

use crate::{field, lit};
use nl_spec::{ActQuant, Plan, TensorPlan, WeightQuant};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// How a streaming step reads the weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reader {
    /// f32 (or f64) weights as they are: `k::matvec`.
    Float,
    /// Latent weights quantized on the fly: `qat::fq_matvec`.
    FakeQuant,
    /// The deployable `QParams`: integer kernels of `nl_runtime::quant`.
    Int,
}

/// `::nl_runtime::QuantScheme { ... }` of the plan.
pub(crate) fn scheme(plan: &Plan) -> TokenStream {
    let w = match plan.quant.weights {
        WeightQuant::F32 => quote! { F32 },
        WeightQuant::Int8 => quote! { Int8 },
        WeightQuant::Ternary => quote! { Ternary },
    };
    let a = match plan.quant.activations {
        ActQuant::F32 => quote! { F32 },
        ActQuant::Int8 => quote! { Int8 },
    };
    quote! {
        ::nl_runtime::QuantScheme {
            weights: ::nl_runtime::quant::WeightQuant::#w,
            activations: ::nl_runtime::quant::ActQuant::#a,
        }
    }
}

/// Whether the plan's activations are int8.
pub(crate) fn int8_acts(plan: &Plan) -> bool {
    plan.quant.is_quantized() && plan.quant.activations == ActQuant::Int8
}

/// The tensor whose generated field is `f` (in a block when `block`).
fn tensor<'a>(plan: &'a Plan, block: bool, f: &str) -> &'a TensorPlan {
    plan.tensors
        .iter()
        .find(|t| t.field == f && (t.block == Some(0) || (!block && t.block.is_none())) && t.block.is_some() == block)
        .unwrap_or_else(|| panic!("no tensor with field `{f}`"))
}

/// `max(D, HIDDEN)`: the longest input of a quantized product.
pub(crate) fn max_in(plan: &Plan) -> usize {
    plan.d.max(plan.mlp.map_or(0, |m| m.hidden))
}

/// `y = W x` for the matrix in field `f` of the block (`block`) or of the
/// top-level parameters, as `reader` reads it: [`mv_group`] of one product.
pub(crate) fn mv(plan: &Plan, reader: Reader, block: bool, f: &str, x: TokenStream, y: TokenStream) -> TokenStream {
    mv_group(plan, reader, block, x, &[(f, y)])
}

/// `y_j = W_j x` for the matrices in fields `f_j` of the block (`block`) or
/// of the top-level parameters, all reading the same input `x`, as `reader`
/// reads them. The owners: `bp` / `p` for the latent weights and f32
/// tensors (in `QParams`: `q.f.blocks[b]` / `q.f`), `bi` / `q.i` for the
/// integer codes. `x` and each `y_j` are place expressions of arrays of
/// the input and output widths. With int8 activations on the integer path
/// the input is quantized once (into `self.qx`) for the whole group.
pub(crate) fn mv_group(
    plan: &Plan,
    reader: Reader,
    block: bool,
    x: TokenStream,
    products: &[(&str, TokenStream)],
) -> TokenStream {
    let (owner, owner_i, owner_k) = if block {
        (quote! { bp }, quote! { bi }, quote! { bk })
    } else {
        (quote! { p }, quote! { q.i }, quote! { pk })
    };
    let mut int8_in = None;
    let mut body = Vec::new();
    for (f, y) in products {
        let t = tensor(plan, block, f);
        let fid = field(f);
        if !t.quantized || reader == Reader::Float {
            body.push(quote! { k::matvec(&#owner.#fid, &#x, &mut #y); });
            continue;
        }
        let (out, inp) = (lit(t.shape[0]), lit(t.shape[1]));
        if reader == Reader::FakeQuant {
            body.push(quote! {
                ::nl_runtime::qat::fq_matvec::<S, #out, #inp>(QUANT.weights, QUANT.activations, &#owner.#fid, &#x, &mut self.qbuf, &mut #y);
            });
            continue;
        }
        let scale = format_ident!("{}_scale", f);
        let codes = quote! { #owner_i.#fid.as_flattened() };
        body.push(match (plan.quant.weights, plan.quant.activations) {
            (WeightQuant::Int8, ActQuant::F32) => quote! {
                ::nl_runtime::quant::matvec_i8_f32(#codes, &#owner.#scale, #out, #inp, &#x, &mut #y);
            },
            (WeightQuant::Ternary, ActQuant::F32) => quote! {
                ::nl_runtime::quant::matvec_t2_f32(#codes, #owner.#scale[0], #out, #inp, &#x, &mut #y);
            },
            (WeightQuant::Int8, ActQuant::Int8) => {
                int8_in = Some(inp.clone());
                quote! {
                    match #owner_k {
                        Some(k) => ::nl_runtime::quant::matvec_i8_i8_tiled(&k.#fid, &#owner.#scale, #out, #inp, &self.qx[..#inp], a, &mut #y),
                        None => ::nl_runtime::quant::matvec_i8_i8(#codes, &#owner.#scale, #out, #inp, &self.qx[..#inp], a, &mut #y),
                    }
                }
            }
            (WeightQuant::Ternary, ActQuant::Int8) => {
                int8_in = Some(inp.clone());
                quote! { ::nl_runtime::quant::matvec_t2_i8(#codes, #owner.#scale[0], #out, #inp, &self.qx[..#inp], a, &mut #y); }
            }
            (WeightQuant::F32, _) => unreachable!("an f32 tensor is not quantized"),
        });
    }
    match int8_in {
        Some(inp) => quote! {
            {
                let a = ::nl_runtime::quant::quantize_act(&#x, &mut self.qx[..#inp]);
                #(#body)*
            }
        },
        None => quote! { #(#body)* },
    }
}

/// A field of `QParams`: (field, its type, its `QTENSORS` entries relative
/// to the struct: name suffix, dtype, shape, bytes).
struct QField {
    field: proc_macro2::Ident,
    ty: TokenStream,
    name_suffix: &'static str,
    dtype: TokenStream,
    shape: Vec<usize>,
    bytes: usize,
}

/// The f32 part of one tensor: its value, or its scales if quantized.
fn float_field(plan: &Plan, t: &TensorPlan) -> QField {
    if t.quantized {
        let n = if plan.quant.weights == WeightQuant::Int8 { t.shape[0] } else { 1 };
        let nl = lit(n);
        QField {
            field: format_ident!("{}_scale", t.field),
            ty: quote! { [f32; #nl] },
            name_suffix: ".scale",
            dtype: quote! { F32 },
            shape: vec![n],
            bytes: 4 * n,
        }
    } else {
        let ty = match t.shape[..] {
            [n] => {
                let n = lit(n);
                quote! { [f32; #n] }
            }
            [o, i] => {
                let (o, i) = (lit(o), lit(i));
                quote! { [[f32; #i]; #o] }
            }
            _ => unreachable!("tensors are vectors or matrices"),
        };
        QField {
            field: field(&t.field),
            ty,
            name_suffix: "",
            dtype: quote! { F32 },
            shape: t.shape.clone(),
            bytes: 4 * t.len,
        }
    }
}

/// The integer part of a quantized tensor.
fn int_field(plan: &Plan, t: &TensorPlan) -> QField {
    let (o, i) = (t.shape[0], t.shape[1]);
    if plan.quant.weights == WeightQuant::Int8 {
        let (ol, il) = (lit(o), lit(i));
        QField {
            field: field(&t.field),
            ty: quote! { [[i8; #il]; #ol] },
            name_suffix: "",
            dtype: quote! { I8 },
            shape: vec![o, i],
            bytes: o * i,
        }
    } else {
        let row = i.div_ceil(4);
        let (ol, rl) = (lit(o), lit(row));
        QField {
            field: field(&t.field),
            ty: quote! { [[u8; #rl]; #ol] },
            name_suffix: "",
            dtype: quote! { U8 },
            shape: vec![o, row],
            bytes: o * row,
        }
    }
}

/// Bytes of the integer part of a quantized plan, and the padding after it.
pub(crate) fn int_bytes(plan: &Plan) -> (usize, usize) {
    let n: usize = plan.tensors.iter().filter(|t| t.quantized).map(|t| int_field(plan, t).bytes).sum();
    (n, (4 - n % 4) % 4)
}

/// `QParams` and its parts, `QTENSORS`, `QPARAMS_BYTES` and `quantize`, for a quantized plan.
pub(crate) fn qparams(plan: &Plan) -> TokenStream {
    let block0: Vec<&TensorPlan> = plan.block_tensors(0).collect();
    let top_before: Vec<&TensorPlan> = plan.tensors.iter().filter(|t| t.block.is_none() && t.name == "embed").collect();
    let top_after: Vec<&TensorPlan> = plan.tensors.iter().filter(|t| t.block.is_none() && t.name != "embed").collect();
    let decl = |fs: &[QField]| -> Vec<TokenStream> {
        fs.iter()
            .map(|f| {
                let (id, ty) = (&f.field, &f.ty);
                let doc = format!(" `{}{}` {} {:?}", f.field, f.name_suffix, dtype_word(&f.dtype), f.shape);
                quote! { #[doc = #doc] pub #id: #ty, }
            })
            .collect()
    };
    let bf: Vec<QField> = block0.iter().map(|t| float_field(plan, t)).collect();
    let bi: Vec<QField> = block0.iter().filter(|t| t.quantized).map(|t| int_field(plan, t)).collect();
    let tf_before: Vec<QField> = top_before.iter().map(|t| float_field(plan, t)).collect();
    let tf_after: Vec<QField> = top_after.iter().map(|t| float_field(plan, t)).collect();
    let ti: Vec<QField> = top_after.iter().filter(|t| t.quantized).map(|t| int_field(plan, t)).collect();
    let (bf_d, bi_d, tfb_d, tfa_d, ti_d) = (decl(&bf), decl(&bi), decl(&tf_before), decl(&tf_after), decl(&ti));
    let (int_total, pad) = int_bytes(plan);
    let padl = lit(pad);

    // QTENSORS, in file order: the f32 part (embed, blocks, the rest), the
    // integer part (blocks, the rest), the padding.
    let mut entries: Vec<TokenStream> = Vec::new();
    let mut offset = 0usize;
    let mut push = |name: String, f: &QField, offset: &mut usize| {
        let dtype = &f.dtype;
        let shape = f.shape.iter().map(|&s| lit(s));
        let (off, bytes) = (lit(*offset), lit(f.bytes));
        entries.push(quote! {
            ::nl_runtime::QTensorInfo { name: #name, dtype: ::nl_runtime::Dtype::#dtype, shape: &[#(#shape),*], offset: #off, bytes: #bytes }
        });
        *offset += f.bytes;
    };
    let block_name = |b: usize, t: &TensorPlan| t.name.replacen("blocks.0.", &format!("blocks.{b}."), 1);
    for (t, f) in top_before.iter().zip(&tf_before) {
        push(format!("{}{}", t.name, f.name_suffix), f, &mut offset);
    }
    for b in 0..plan.layers {
        for (t, f) in block0.iter().zip(&bf) {
            push(format!("{}{}", block_name(b, t), f.name_suffix), f, &mut offset);
        }
    }
    for (t, f) in top_after.iter().zip(&tf_after) {
        push(format!("{}{}", t.name, f.name_suffix), f, &mut offset);
    }
    let float_total = offset;
    let block0_q: Vec<&&TensorPlan> = block0.iter().filter(|t| t.quantized).collect();
    for b in 0..plan.layers {
        for (t, f) in block0_q.iter().zip(&bi) {
            push(block_name(b, t), f, &mut offset);
        }
    }
    let top_q: Vec<&&TensorPlan> = top_after.iter().filter(|t| t.quantized).collect();
    for (t, f) in top_q.iter().zip(&ti) {
        push(t.name.clone(), f, &mut offset);
    }
    debug_assert_eq!(offset, float_total + int_total);
    if pad > 0 {
        let f = QField {
            field: field("pad"),
            ty: quote! {},
            name_suffix: "",
            dtype: quote! { U8 },
            shape: vec![pad],
            bytes: pad,
        };
        push("__pad__".to_string(), &f, &mut offset);
    }
    let total = lit(offset);

    // quantize: copy or quantize each tensor.
    let copy_or_quantize = |t: &TensorPlan, pf: TokenStream, qf: TokenStream, qi: TokenStream| -> TokenStream {
        let fid = field(&t.field);
        if !t.quantized {
            return quote! { #qf.#fid = #pf.#fid; };
        }
        let scale = format_ident!("{}_scale", t.field);
        let (o, i) = (lit(t.shape[0]), lit(t.shape[1]));
        if plan.quant.weights == WeightQuant::Int8 {
            quote! {
                ::nl_runtime::quant::quantize_int8(#pf.#fid.as_flattened(), #o, #i, #qi.#fid.as_flattened_mut(), &mut #qf.#scale);
            }
        } else {
            quote! {
                {
                    let s = ::nl_runtime::quant::ternary_scale(#pf.#fid.as_flattened());
                    #qf.#scale = [s];
                    let mut codes = [0i8; #i];
                    for (row, packed) in #pf.#fid.iter().zip(#qi.#fid.iter_mut()) {
                        ::nl_runtime::quant::quantize_ternary(row, s, &mut codes);
                        // Codes from the quantizer are in -1..=1: packing cannot fail.
                        let packed_ok = ::nl_runtime::quant::pack_ternary(&codes, 1, #i, packed);
                        debug_assert!(packed_ok.is_ok());
                    }
                }
            }
        }
    };
    let q_top: Vec<TokenStream> = top_before
        .iter()
        .chain(top_after.iter())
        .map(|t| copy_or_quantize(t, quote! { p }, quote! { q.f }, quote! { q.i }))
        .collect();
    let q_block: Vec<TokenStream> =
        block0.iter().map(|t| copy_or_quantize(t, quote! { pb }, quote! { qf }, quote! { qi })).collect();
    let scheme_name = format!("{}/{}", plan.quant.weights.as_str(), plan.quant.activations.as_str());
    let packed = qpacked(plan, &block0, &top_after);
    quote! {
        /// One block's f32 tensors (norms, position biases, memory gates) and
        /// the scales of its quantized matrices.
        #[repr(C)]
        pub struct QBlockF {
            #(#bf_d)*
        }

        /// One block's integer weight codes.
        #[repr(C)]
        pub struct QBlockI {
            #(#bi_d)*
        }

        /// The f32 part of [`QParams`].
        #[repr(C)]
        pub struct QFloat {
            #(#tfb_d)*
            /// The blocks, input first.
            pub blocks: [QBlockF; LAYERS],
            #(#tfa_d)*
        }

        /// The integer part of [`QParams`].
        #[repr(C)]
        pub struct QInt {
            /// The blocks, input first.
            pub blocks: [QBlockI; LAYERS],
            #(#ti_d)*
        }

        /// The deployable parameters of this quantized model (scheme `QUANT`):
        /// the f32 tensors and the scales, then the integer codes, then
        /// padding to a multiple of 4 bytes; `#[repr(C)]` with no padding
        /// inside, so its bytes are an exported checkpoint's data section
        /// (`QTENSORS` lists the tensors, in this order).
        #[repr(C)]
        pub struct QParams {
            /// f32 tensors and scales.
            pub f: QFloat,
            /// Integer codes.
            pub i: QInt,
            /// Zero bytes that round the size to a multiple of 4.
            pub pad: [u8; #padl],
        }

        /// Bytes of [`QParams`].
        pub const QPARAMS_BYTES: usize = #total;
        /// The quantization scheme's name, `weights/activations`.
        pub const QUANT_NAME: &str = #scheme_name;
        const _: () = assert!(::core::mem::size_of::<QParams>() == QPARAMS_BYTES);

        #[doc = " SAFETY: only arrays of `f32`, for which all-zero bytes are 0.0."]
        unsafe impl ::nl_runtime::Zeroable for QBlockF {}
        #[doc = " SAFETY: only arrays of `i8`/`u8`, for which all-zero bytes are 0."]
        unsafe impl ::nl_runtime::Zeroable for QBlockI {}
        #[doc = " SAFETY: only arrays of `f32` and of `QBlockF`."]
        unsafe impl ::nl_runtime::Zeroable for QFloat {}
        #[doc = " SAFETY: only arrays of `i8`/`u8` and of `QBlockI`."]
        unsafe impl ::nl_runtime::Zeroable for QInt {}
        #[doc = " SAFETY: `QFloat`, `QInt` and a `u8` array, each valid all-zero."]
        unsafe impl ::nl_runtime::Zeroable for QParams {}
        #[doc = " SAFETY: `#[repr(C)]`, only arrays of `f32` (any bits valid), no padding (every field's size is a multiple of 4)."]
        unsafe impl ::nl_runtime::Pod for QBlockF {}
        #[doc = " SAFETY: `#[repr(C)]`, only arrays of `i8`/`u8` (alignment 1, any bits valid), so no padding."]
        unsafe impl ::nl_runtime::Pod for QBlockI {}
        #[doc = " SAFETY: `#[repr(C)]`, only arrays of `f32` and of the `Pod` `QBlockF` (alignment 4, size a multiple of 4), so no padding."]
        unsafe impl ::nl_runtime::Pod for QFloat {}
        #[doc = " SAFETY: `#[repr(C)]`, only arrays of `i8`/`u8` and of the `Pod` `QBlockI` (alignment 1), so no padding."]
        unsafe impl ::nl_runtime::Pod for QInt {}
        #[doc = " SAFETY: `#[repr(C)]`: `QFloat` (size a multiple of 4), `QInt` and `pad`, which rounds the size to a multiple of the alignment 4, so no padding (`size_of` is asserted equal to `QPARAMS_BYTES`, the sum of the `QTENSORS` bytes); every field `Pod`."]
        unsafe impl ::nl_runtime::Pod for QParams {}

        /// Every tensor of [`QParams`], in struct and file order.
        pub const QTENSORS: &[::nl_runtime::QTensorInfo] = &[#(#entries),*];

        #packed

        /// The deployable parameters of `p`: f32 tensors copied, quantized
        /// matrices as codes and scales (`nl_runtime::quant`).
        pub fn quantize(p: &Params<f32>, q: &mut QParams) {
            for ((pb, qf), qi) in p.blocks.iter().zip(q.f.blocks.iter_mut()).zip(q.i.blocks.iter_mut()) {
                #(#q_block)*
            }
            #(#q_top)*
            q.pad = [0; #padl];
        }
    }
}

/// Whether the plan's integer step reads tiled copies of its matrices
/// (`QPacked`): `int8` weights with `int8` activations, the products
/// `nl_runtime::quant::matvec_i8_i8_tiled` computes.
fn tiled(plan: &Plan) -> bool {
    plan.quant.weights == WeightQuant::Int8 && plan.quant.activations == ActQuant::Int8
}

/// `QPacked` (the tiled copies of the `int8` matrices, for a plan that is
/// [`tiled`]; empty otherwise) and `pack_q`.
fn qpacked(plan: &Plan, block0: &[&TensorPlan], top: &[&TensorPlan]) -> TokenStream {
    let on = tiled(plan);
    // (declarations, pack statements from `src` into `dst`) of the tiled fields of `ts`.
    let fields = |ts: &[&TensorPlan], src: TokenStream, dst: TokenStream| -> (Vec<TokenStream>, Vec<TokenStream>) {
        ts.iter()
            .filter(|t| on && t.quantized)
            .map(|t| {
                let id = field(&t.field);
                let (o, i) = (t.shape[0], t.shape[1]);
                let (ol, il) = (lit(o), lit(i));
                let tiles = o.div_ceil(16) * i.div_ceil(4);
                let n = lit(tiles);
                let doc = format!(" `{}` [{o}, {i}] as {tiles} tiles of 16 rows by 4 inputs.", t.field);
                (
                    quote! { #[doc = #doc] pub #id: [::nl_runtime::quant::I8Tile; #n], },
                    quote! { ::nl_runtime::quant::tile_int8(#src.#id.as_flattened(), #ol, #il, &mut #dst.#id); },
                )
            })
            .unzip()
    };
    let (bd, bp) = fields(block0, quote! { qi }, quote! { kb });
    let (td, tp) = fields(top, quote! { q.i }, quote! { pk });
    quote! {
        /// One block's tiled `int8` matrices (see [`QPacked`]).
        #[repr(C)]
        pub struct QPackedBlock {
            #(#bd)*
        }

        /// The serving copies of the `int8` matrices, in the tiled layout of
        /// `nl_runtime::quant::tile_int8` (16 rows by 4 inputs per 64-byte
        /// tile, the operand of AVX-512 VNNI's `vpdpbusd`), made from the
        /// deployable parameters by [`pack_q`] and read by
        /// [`Stream::try_step_qp`]. Empty unless the scheme is `int8`
        /// weights with `int8` activations. The tiles are the codes of
        /// [`QParams`] rearranged, not a new rounding: the step gives the
        /// same bits with or without them.
        #[repr(C)]
        pub struct QPacked {
            /// The blocks, input first.
            pub blocks: [QPackedBlock; LAYERS],
            #(#td)*
        }

        #[doc = " SAFETY: only arrays of `I8Tile` (a `u8` array), for which all-zero bytes are valid."]
        unsafe impl ::nl_runtime::Zeroable for QPackedBlock {}
        #[doc = " SAFETY: only arrays of `I8Tile` and of `QPackedBlock`, each valid all-zero."]
        unsafe impl ::nl_runtime::Zeroable for QPacked {}

        /// Fills `pk` with the tiled copies of `q`'s `int8` matrices (again
        /// after every change of `q`).
        #[allow(unused_variables)]
        pub fn pack_q(q: &QParams, pk: &mut QPacked) {
            for (qi, kb) in q.i.blocks.iter().zip(pk.blocks.iter_mut()) {
                #(#bp)*
            }
            #(#tp)*
        }
    }
}

fn dtype_word(t: &TokenStream) -> String {
    t.to_string()
}

/// For a quantized plan: the module's `Workspace` (the dequantized
/// parameters `qp` beside `dq::Workspace`) and the training functions on
/// latent parameters. `train` is the f32 workspace and training code,
/// emitted into `dq`.
pub(crate) fn qat(plan: &Plan, train: TokenStream) -> TokenStream {
    let deq = |t: &TensorPlan| -> TokenStream {
        let fid = field(&t.field);
        let (pf, qf) = match t.block {
            Some(_) => (quote! { pb }, quote! { qb }),
            None => (quote! { p }, quote! { qp }),
        };
        if t.quantized {
            let (o, i) = (lit(t.shape[0]), lit(t.shape[1]));
            quote! { ::nl_runtime::qat::dequantize(QUANT.weights, #pf.#fid.as_flattened(), #o, #i, #qf.#fid.as_flattened_mut()); }
        } else {
            quote! { #qf.#fid = #pf.#fid; }
        }
    };
    let block_deq: Vec<TokenStream> = plan.block_tensors(0).map(deq).collect();
    let top_deq: Vec<TokenStream> = plan.tensors.iter().filter(|t| t.block.is_none()).map(deq).collect();
    quote! {
        /// The f32 training code of this model, run on the dequantized
        /// parameters (`Workspace::qp`): the quantized forward and its exact
        /// backward with the rounding held fixed (docs/quant.md).
        pub mod dq {
            use super::*;
            #train
        }

        pub use dq::{BlockWs, Scratch};

        /// Scratch for one training sequence of this quantized model: the
        /// dequantized parameters the forward reads, and the f32 code's
        /// workspace.
        #[repr(C)]
        pub struct Workspace<S> {
            /// The parameters as the quantized forward reads them (`s * Wq`
            /// for each quantized matrix; the other tensors copied),
            /// written by each call from the latent parameters.
            pub qp: Params<S>,
            /// The f32 training code's workspace (activations, logits, the
            /// memory levels' states: `inner.blocks[b].start`, ...).
            pub inner: dq::Workspace<S>,
        }

        #[doc = " SAFETY: `Params<S>` and `dq::Workspace<S>`, each valid all-zero."]
        unsafe impl<S: Scalar> ::nl_runtime::Zeroable for Workspace<S> {}

        impl<S: Scalar> Workspace<S> {
            /// The logits of the last forward pass, `SEQ * VOCAB` values.
            pub fn logits(&self) -> &[S] {
                self.inner.logits()
            }
        }

        /// Writes into `qp` the parameters the quantized forward reads of `p`.
        pub fn dequantize_params<S: Scalar>(p: &Params<S>, qp: &mut Params<S>) {
            for (pb, qb) in p.blocks.iter().zip(qp.blocks.iter_mut()) {
                #(#block_deq)*
            }
            #(#top_deq)*
        }

        /// The quantized training forward pass over `tokens[..SEQ]` (see [`dq::forward`]).
        ///
        /// # Panics
        /// If a token is `>= VOCAB`.
        pub fn forward<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>) {
            dequantize_params(p, &mut ws.qp);
            dq::forward(&ws.qp, tokens, &mut ws.inner)
        }

        /// Mean next-token cross-entropy (nats) of the sequence under the quantized forward.
        ///
        /// # Panics
        /// If a token is `>= VOCAB`.
        pub fn loss<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>) -> S {
            dequantize_params(p, &mut ws.qp);
            dq::loss(&ws.qp, tokens, &mut ws.inner)
        }

        /// The loss and its straight-through gradient with respect to the
        /// latent parameters `p`, added into `g`.
        ///
        /// # Panics
        /// If a token is `>= VOCAB`.
        pub fn loss_and_grad<S: Scalar>(p: &Params<S>, tokens: &[u32; SEQ + 1], ws: &mut Workspace<S>, g: &mut Params<S>) -> S {
            dequantize_params(p, &mut ws.qp);
            dq::loss_and_grad(&ws.qp, tokens, &mut ws.inner, g)
        }

        /// [`loss_and_grad`] over a batch of whole sequences (the parameters dequantized once).
        ///
        /// # Panics
        /// If `tokens.len()` is not a multiple of `SEQ + 1`, or a token is `>= VOCAB`.
        pub fn loss_and_grad_batch<S: Scalar>(p: &Params<S>, tokens: &[u32], ws: &mut Workspace<S>, g: &mut Params<S>) -> S {
            dequantize_params(p, &mut ws.qp);
            dq::loss_and_grad_batch(&ws.qp, tokens, &mut ws.inner, g)
        }
    }
}
