nl::nl_model!("tests/compile_fail/specs/does_not_exist.toml");

fn main() {}
