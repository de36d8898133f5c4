nl::nl_model! { r#"
name = "bad"
d_model = 0
heads = 1
vocab = 256
seq_len = 32
"# }

fn main() {}
