// The MLP's activation is one of "swiglu", "gelu", "relu".
nl::nl_model! { r#"
name = "bad"
d_model = 64
heads = 4
vocab = 256
seq_len = 32

[mlp]
hidden = 128
activation = "tanh"
"# }

fn main() {}
