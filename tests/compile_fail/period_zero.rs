nl::nl_model! { r#"
name = "bad"
d_model = 64
heads = 4
vocab = 256
seq_len = 32

[memory]
rule = "delta"

[[memory.levels]]
period = 1

[[memory.levels]]
period = 0
"# }

fn main() {}
