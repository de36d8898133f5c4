//! Norms, the MLP's activation and the attention's position scheme: the
//! pieces of a block that training and streaming share (docs/model.md,
//! "Blocks"). Each function returns the calls into `nl_runtime::norm`,
//! `nl_runtime::mlp` or `nl_runtime::positions` for the spec's choice.

use nl_spec::{Activation, Norm, Plan};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

/// The gain and shift fields of norm `which` (`norm_a`, `norm_m`, `norm_f`).
fn gain_shift(which: &str) -> (Ident, Ident) {
    (format_ident!("{}_g", which), format_ident!("{}_beta", which))
}

/// Training forward of norm `which` over a sequence: `y = N(x)` with the
/// parameters of `owner` (`bp` or `p`), statistics `{stats}_inv` and, for
/// `layer`, `{stats}_mean` in `store` (`bw` or `ws`).
pub(crate) fn norm_seq(
    plan: &Plan,
    which: &str,
    owner: &TokenStream,
    store: &TokenStream,
    stats: &str,
    x: TokenStream,
    y: TokenStream,
) -> TokenStream {
    let (g, beta) = gain_shift(which);
    let (inv, mean) = (format_ident!("{}_inv", stats), format_ident!("{}_mean", stats));
    match plan.norm {
        Norm::None => quote! {},
        Norm::Rms => quote! { ::nl_runtime::norm::rms_forward(#x, &#owner.#g, #y, &mut #store.#inv); },
        Norm::Layer => quote! {
            ::nl_runtime::norm::layer_forward(#x, &#owner.#g, &#owner.#beta, #y, &mut #store.#mean, &mut #store.#inv);
        },
    }
}

/// Backward of [`norm_seq`]: from `dy`, the gain (and shift) gradients into
/// `gowner` and the input gradient added into `dx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_seq_back(
    plan: &Plan,
    which: &str,
    owner: &TokenStream,
    gowner: &TokenStream,
    store: &TokenStream,
    stats: &str,
    x: TokenStream,
    dy: TokenStream,
    dx: TokenStream,
) -> TokenStream {
    let (g, beta) = gain_shift(which);
    let (inv, mean) = (format_ident!("{}_inv", stats), format_ident!("{}_mean", stats));
    match plan.norm {
        Norm::None => quote! {},
        Norm::Rms => quote! {
            ::nl_runtime::norm::rms_backward_acc(#x, &#owner.#g, &#store.#inv, #dy, &mut #gowner.#g, #dx);
        },
        Norm::Layer => quote! {
            ::nl_runtime::norm::layer_backward_acc(
                #x, &#owner.#g, &#store.#mean, &#store.#inv, #dy, &mut #gowner.#g, &mut #gowner.#beta, #dx,
            );
        },
    }
}

/// Streaming form of norm `which` on one row.
pub(crate) fn norm_row(plan: &Plan, which: &str, owner: &TokenStream, x: TokenStream, y: TokenStream) -> TokenStream {
    let (g, beta) = gain_shift(which);
    match plan.norm {
        Norm::None => quote! {},
        Norm::Rms => quote! { ::nl_runtime::norm::rms_row(#x, &#owner.#g, #y); },
        Norm::Layer => quote! { ::nl_runtime::norm::layer_row(#x, &#owner.#g, &#owner.#beta, #y); },
    }
}

/// The activation between the MLP's products: `act` from `up` (and `gate`
/// for `swiglu`), slices of equal length.
pub(crate) fn activation(plan: &Plan, up: TokenStream, gate: TokenStream, act: TokenStream) -> TokenStream {
    match plan.mlp.map(|m| m.activation) {
        None => quote! {},
        Some(Activation::Swiglu) => quote! { ::nl_runtime::mlp::swiglu_forward(#gate, #up, #act); },
        Some(Activation::Gelu) => quote! { ::nl_runtime::mlp::gelu_forward(#up, #act); },
        Some(Activation::Relu) => quote! { ::nl_runtime::mlp::relu_forward(#up, #act); },
    }
}

/// Backward of [`activation`]: from `dact`, writes `dup` (and `dgate`).
pub(crate) fn activation_back(
    plan: &Plan,
    up: TokenStream,
    gate: TokenStream,
    dact: TokenStream,
    dup: TokenStream,
    dgate: TokenStream,
) -> TokenStream {
    match plan.mlp.map(|m| m.activation) {
        None => quote! {},
        Some(Activation::Swiglu) => quote! { ::nl_runtime::mlp::swiglu_backward(#gate, #up, #dact, #dgate, #dup); },
        Some(Activation::Gelu) => quote! { ::nl_runtime::mlp::gelu_backward(#up, #dact, #dup); },
        Some(Activation::Relu) => quote! { ::nl_runtime::mlp::relu_backward(#up, #dact, #dup); },
    }
}

/// Whether the MLP has a gate matrix (`swiglu`).
pub(crate) fn gated(plan: &Plan) -> bool {
    plan.mlp.is_some_and(|m| m.activation == Activation::Swiglu)
}
