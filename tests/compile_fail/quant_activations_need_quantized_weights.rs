// `activations = "int8"` needs quantized weights (an integer product has integers on both sides).
nl::nl_model! { r#"
name = "bad"
d_model = 64
heads = 4
vocab = 256
seq_len = 32
[quant]
activations = "int8"
"# }

fn main() {}
