//! `nl_model!`: compiles a TOML model spec into a Rust module whose forward
//! pass, inner loop and analytic backward pass are specialised to the
//! spec's constant sizes.
//!
//! ```ignore
//! nl_macros::nl_model!("models/micro.toml");   // path relative to CARGO_MANIFEST_DIR
//! nl_macros::nl_model! { r#"
//!     name = "tiny"
//!     d_model = 8
//!     heads = 2
//!     vocab = 16
//!     seq_len = 4
//! "# }
//! ```
//!
//! The macro is thin: `nl-spec` parses, validates and plans, `nl-emit`
//! writes the module. A spec error becomes a `compile_error!` that names the
//! key, the file, its line and column, and what is allowed.

use proc_macro::TokenStream;
use quote::quote;
use syn::LitStr;

/// Generates a model module from a TOML spec: a path (relative to the
/// calling crate's `CARGO_MANIFEST_DIR`; the module is named after the file
/// stem unless the spec has `name`) or an inline TOML string literal
/// (which must set `name`). The generated code depends only on `nl_runtime`.
#[proc_macro]
pub fn nl_model(input: TokenStream) -> TokenStream {
    let lit: LitStr = match syn::parse(input) {
        Ok(l) => l,
        Err(e) => {
            let msg = format!(
                "nl_model! expects one string literal: a spec path like \"models/micro.toml\" or inline TOML ({e})"
            );
            return quote! { compile_error!(#msg); }.into();
        }
    };
    let text = lit.value();
    let span = lit.span();
    let is_path = !text.contains('\n') && text.trim_end().ends_with(".toml");
    let (source, file_label, default_name, track) = if is_path {
        let base = match std::env::var("CARGO_MANIFEST_DIR") {
            Ok(b) => std::path::PathBuf::from(b),
            Err(_) => std::path::PathBuf::from("."),
        };
        let path = base.join(text.trim());
        let source = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("nl_model!: cannot read spec `{}`: {e}", path.display());
                return syn::Error::new(span, msg).to_compile_error().into();
            }
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        (source, text.trim().to_string(), stem, Some(path))
    } else {
        (text.clone(), "<inline spec>".to_string(), String::new(), None)
    };
    let plan = match nl_spec::plan_from_str(&source, &default_name) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("invalid model spec\n{}", e.render(&file_label, &source));
            return syn::Error::new(span, msg).to_compile_error().into();
        }
    };
    let module = nl_emit::emit(&plan, &source);
    // Track the file so an edit rebuilds the calling crate.
    let tracker = track.map(|p| {
        let p = p.to_string_lossy().into_owned();
        quote! { const _: &[u8] = include_bytes!(#p); }
    });
    quote! {
        #tracker
        #module
    }
    .into()
}
