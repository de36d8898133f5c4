// A model has 1..=16 blocks.
nl::nl_model! { r#"
name = "bad"
d_model = 64
heads = 4
vocab = 256
seq_len = 32
layers = 0
"# }

fn main() {}
