// A spec file: the message names the file, its line and column.
nl::nl_model!("tests/compile_fail/specs/too_many_levels.toml");

fn main() {}
