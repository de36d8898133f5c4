nl::nl_model! { r#"
name = "huge"
d_model = 1024
heads = 8
vocab = 256
seq_len = 4096
[memory]
rule = "delta"
[[memory.levels]]
period = 1
[[memory.levels]]
period = 4
[[memory.levels]]
period = 16
"# }

fn main() {}
