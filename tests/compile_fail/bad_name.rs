nl::nl_model! { r#"
name = "my-model"
d_model = 64
heads = 4
vocab = 256
seq_len = 32
"# }

fn main() {}
