// Rope rotates pairs of a head's columns: head_dim = 12 / 4 = 3 is odd.
nl::nl_model! { r#"
name = "bad"
d_model = 12
heads = 4
vocab = 256
seq_len = 32
positions = "rope"
"# }

fn main() {}
