// A spec file: the message names the file, its line and column.
nl::nl_model!("tests/compile_fail/specs/bad_heads.toml");

fn main() {}
