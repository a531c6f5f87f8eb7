//! Pointing at a place in a config file: line, column, the key written there, the line's text.

use std::ops::Range;

/// A place in a text file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The key written on that line (`capacity = 3` gives `capacity`), if any.
    pub key: Option<String>,
    /// The whole line.
    pub text: String,
}

/// The place of byte `span.start` in `text`.
pub fn locate(text: &str, span: Range<usize>) -> Place {
    let start = span.start.min(text.len());
    let start = (0..=start)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("").to_owned();
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    Place {
        line,
        column,
        key,
        text: line_text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_line_column_and_key() {
        let text = "a = 1\n  capacity = \"x\"\n";
        let p = locate(text, 19..22);
        assert_eq!((p.line, p.column), (2, 14));
        assert_eq!(p.key.as_deref(), Some("capacity"));
        assert_eq!(p.text, "  capacity = \"x\"");
    }
}
