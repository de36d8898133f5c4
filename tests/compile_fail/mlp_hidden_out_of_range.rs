// The MLP's hidden width is 1..=8192.
nl::nl_model! { r#"
name = "bad"
d_model = 64
heads = 4
vocab = 256
seq_len = 32

[mlp]
hidden = 9000
"# }

fn main() {}
