nl::nl_model! { r#"
name = "bad"
d_model = 64
heads = 5
vocab = 256
seq_len = 32
"# }

fn main() {}
