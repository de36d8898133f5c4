nl::nl_model! { r#"
name = "bad"
d_model = 64
heads = 4
vocab = 256
seq_len = 32
window = 64
"# }

fn main() {}
