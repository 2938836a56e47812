//! Positions in the config text: turns a TOML/serde error into a
//! [`ConfigError::Syntax`] with 1-based line and column (in chars), the key path
//! serde was at, and the offending line with a caret under the spot. Pure: no I/O.

use std::path::Path;

use crate::error::ConfigError;

/// `e`, met while deserializing `text` (read from `path`) at key path `key`, as a
/// [`ConfigError::Syntax`] that shows the spot.
pub(super) fn syntax_error(text: &str, path: &Path, key: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => line_col(text, span.start),
        None => (1, 1),
    };
    // The toml message is one line ("unknown field `x`, expected one of ...");
    // show the offending line under it so the operator sees the spot.
    let src_line = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    // `key` is the dotted path serde was at (`.` when the error is at the top or is
    // a syntax error); name it so type errors say which key they are about.
    let prefix = if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    };
    // (A duration's message names its syntax itself: `duration.rs`.)
    let text_msg = e.message().trim_end().to_string();
    let message = format!(
        "{prefix}{}\n    | {}\n    | {}^",
        text_msg,
        src_line,
        " ".repeat(column.saturating_sub(1))
    );
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

/// 1-based line and column (in chars) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MIN;
    use crate::config::Config;

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let text = MIN.replace("pool = \"web\"", "pool = \"web\"\npoool = 1");
        let e = Config::parse(&text, "x.toml").unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("x.toml:6:1: listener[0].poool: unknown field `poool`"),
            "{s}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = Config::parse("[[listener]\nname=1", "bad.toml").unwrap_err();
        match e {
            ConfigError::Syntax { line, column, .. } => assert_eq!((line, column), (1, 11)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn type_errors_name_the_key_path() {
        let text = MIN.replace(
            "addr = \"127.0.0.1:9001\"",
            "addr = \"127.0.0.1:9001\"\nweight = -1",
        );
        let s = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            s.starts_with("t.toml:10:10: pools.web.nodes[0].weight: "),
            "{s}"
        );
        let text = MIN.replace("[pools.web]", "[pools.web]\nidle_timeout = \"2 parsecs\"");
        let s = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(s.contains("pools.web.idle_timeout: "), "{s}");
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}
