//! Names the embedded model's weights file for `include_bytes!` in
//! `src/lib.rs`: `weights/<NL_DEPLOY_MODEL>.safetensors`, from the model
//! feature (none: `micro_memory`), and the cfgs `nl_default_model` and
//! `nl_quantized` that `src/lib.rs` selects the model and its reader with.

fn main() {
    let features = [
        ("CARGO_FEATURE_DEEP", "deep"),
        ("CARGO_FEATURE_INT8", "micro_memory_int8"),
        ("CARGO_FEATURE_TERNARY", "micro_memory_ternary"),
        ("CARGO_FEATURE_DEEP_INT8", "deep_int8"),
        ("CARGO_FEATURE_DEEP_TERNARY", "deep_ternary"),
    ];
    let chosen: Vec<&str> = features.iter().filter(|(f, _)| std::env::var_os(f).is_some()).map(|(_, m)| *m).collect();
    let model = match chosen.as_slice() {
        [] => "micro_memory",
        [one] => one,
        more => panic!("nl-deploy embeds one model; features for {more:?} are enabled together"),
    };
    println!("cargo:rustc-env=NL_DEPLOY_MODEL={model}");
    // `nl_default_model`: no model feature (micro_memory); `nl_quantized`: a quantized model.
    println!("cargo::rustc-check-cfg=cfg(nl_default_model, nl_quantized)");
    if chosen.is_empty() {
        println!("cargo:rustc-cfg=nl_default_model");
    }
    if chosen.iter().any(|m| m.ends_with("int8") || m.ends_with("ternary")) {
        println!("cargo:rustc-cfg=nl_quantized");
    }
    println!("cargo:rerun-if-changed=weights/{model}.safetensors");
}
