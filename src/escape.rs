//! Client-chosen text in log lines.
//!
//! Client ids, user names and topics are the client's to choose, and may
//! hold line breaks: logged as they are, a client id such as
//! `"x\n... client connected client_id=admin"` writes a forged line into a
//! text log. [`Escaped`] writes control characters as escapes instead, so
//! one event stays one line whatever a client sends.

use std::fmt;

/// Displays a string with control characters (C0, DEL, C1, and the Unicode
/// line and paragraph separators) escaped as `\n`, `\r`, `\t` or `\u{..}`,
/// and backslashes doubled, so an escape in the log cannot be confused with
/// the same characters sent literally.
#[derive(Clone, Copy)]
pub(crate) struct Escaped<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\\' | '\u{2028}' | '\u{2029}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        // Plain runs are written whole: most strings have nothing to escape.
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped() {
        let shown = |s: &str| Escaped(s).to_string();
        assert_eq!(shown("plain/topic é"), "plain/topic é");
        assert_eq!(
            shown("x\nINFO client connected client_id=admin"),
            "x\\nINFO client connected client_id=admin"
        );
        assert_eq!(shown("a\rb\tc\\n"), "a\\rb\\tc\\\\n");
        assert_eq!(
            shown("\u{0}\u{1b}[31m\u{7f}\u{85}"),
            "\\u{0}\\u{1b}[31m\\u{7f}\\u{85}"
        );
        assert_eq!(shown("a\u{2028}b"), "a\\u{2028}b");
        assert!(!shown("\u{1}\u{9f}\n").chars().any(char::is_control));
    }
}
