//! Spec errors that point at the offending key.

use core::fmt;
use core::ops::Range;

/// An error in a model spec: which key, where, and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// Dotted path of the offending key, e.g. `memory.levels[1].period`
    /// (empty when the error is about the whole document).
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
    /// Byte range in the TOML source, when known.
    pub span: Option<Range<usize>>,
    /// 1-based line of the span start (1 when unknown).
    pub line: usize,
    /// 1-based column (in characters) of the span start (1 when unknown).
    pub column: usize,
}

impl SpecError {
    pub(crate) fn new(
        source: &str,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = match &span {
            Some(s) => line_col(source, s.start),
            None => (1, 1),
        };
        SpecError { key: key.into(), message: message.into(), span, line, column }
    }

    /// Renders the error as a compiler-style diagnostic for `file`, with the
    /// offending source line and a caret under the span.
    pub fn render(&self, file: &str, source: &str) -> String {
        let mut out = format!("{file}:{}:{}: {self}", self.line, self.column);
        // Without a span (e.g. a missing top-level key) there is no line to show.
        if let Some(text) = self.span.as_ref().and_then(|_| source.lines().nth(self.line - 1)) {
            let width = self
                .span
                .as_ref()
                .map(|s| source[s.clone()].lines().next().map_or(1, |l| l.chars().count().max(1)))
                .unwrap_or(1);
            let gutter = self.line.to_string().len();
            out.push_str(&format!(
                "\n{:gutter$} |\n{} | {}\n{:gutter$} | {}{}",
                "",
                self.line,
                text,
                "",
                " ".repeat(self.column - 1),
                "^".repeat(width)
            ));
        }
        out
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

/// 1-based line and character column of a byte offset.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Best-effort dotted key path of the TOML key or value at `offset`: the
/// innermost `[table]` / `[[array]]` header above it plus the key on its line.
pub(crate) fn key_at(source: &str, offset: usize) -> String {
    let offset = offset.min(source.len());
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..].find('\n').map_or(source.len(), |i| offset + i);
    let line = &source[line_start..line_end];
    let trimmed = line.trim_start();
    // The line is itself a header; an array-of-tables header gets its index.
    if trimmed.starts_with('[') {
        let header = trimmed.trim_end();
        let name = header.trim_matches(|c| c == '[' || c == ']' || c == ' ').to_string();
        if header.starts_with("[[") {
            let index = source[..line_start]
                .lines()
                .filter(|l| {
                    let t = l.trim();
                    t.starts_with("[[") && t.trim_matches(|c| c == '[' || c == ']' || c == ' ') == name
                })
                .count();
            return format!("{name}[{index}]");
        }
        return name;
    }
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"').to_string();
    // Find the table header above.
    let mut table = String::new();
    let mut array_index: Option<usize> = None;
    for l in source[..line_start].lines() {
        let t = l.trim();
        if let Some(inner) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let inner = inner.trim().to_string();
            array_index = Some(if inner == table { array_index.map_or(0, |i| i + 1) } else { 0 });
            table = inner;
        } else if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = inner.trim().to_string();
            array_index = None;
        }
    }
    let mut path = table;
    if let Some(i) = array_index {
        path.push_str(&format!("[{i}]"));
    }
    if !key.is_empty() && !line.trim().is_empty() && line.contains('=') {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&key);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
    }

    #[test]
    fn key_paths_include_tables_and_array_indices() {
        let src = "d = 1\n[memory]\nrule = \"x\"\n[[memory.levels]]\nperiod = 1\n[[memory.levels]]\nperiod = 0\n";
        assert_eq!(key_at(src, src.find("d =").unwrap()), "d");
        assert_eq!(key_at(src, src.find("\"x\"").unwrap()), "memory.rule");
        assert_eq!(key_at(src, src.rfind("0").unwrap()), "memory.levels[1].period");
        assert_eq!(key_at(src, src.rfind("[[").unwrap()), "memory.levels[1]");
        assert_eq!(key_at(src, src.find("[memory]").unwrap()), "memory");
    }
}
