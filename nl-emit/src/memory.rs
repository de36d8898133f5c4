//! The memory branch (MODEL.md step 2): emitted per rule, composition and level.

use nl_spec::Plan;
use proc_macro2::TokenStream;
use quote::quote;

/// Workspace fields of the memory branch.
pub(crate) fn workspace_fields(plan: &Plan) -> TokenStream {
    if plan.memory.is_none() {
        return quote! {};
    }
    quote! { compile_error!("the memory branch is not implemented yet"); }
}

/// Forward of the memory branch over a training sequence.
pub(crate) fn forward(_plan: &Plan) -> TokenStream {
    quote! {}
}

/// Backward of the memory branch.
pub(crate) fn backward(_plan: &Plan) -> TokenStream {
    quote! {}
}

/// Streaming-state fields.
pub(crate) fn stream_fields(_plan: &Plan) -> TokenStream {
    quote! {}
}

/// Streaming step of the memory branch.
pub(crate) fn stream_step(_plan: &Plan) -> TokenStream {
    quote! {}
}

/// Reset of the memory state.
pub(crate) fn stream_reset(_plan: &Plan) -> TokenStream {
    quote! {}
}
