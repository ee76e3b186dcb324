//! Errors from loading a ledger, each pointing at a place in the file.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// A place in a ledger file: its name, and a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerLocation {
    /// The file's path as given, or `<string>` for [`Ledger::from_toml_str`](super::Ledger::from_toml_str).
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

impl LedgerLocation {
    /// The location of byte `offset` of `source`.
    pub(crate) fn at(file: &str, source: &str, offset: usize) -> LedgerLocation {
        let offset = offset.min(source.len());
        let before = source.get(..offset).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        LedgerLocation {
            file: file.to_owned(),
            line,
            column,
        }
    }
}

impl fmt::Display for LedgerLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a ledger could not be loaded (or a password hashed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The file could not be read.
    #[error("cannot read ledger file {}: {source}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or not the ledger's shape: an unknown key, a value
    /// of the wrong type, a missing key.
    #[error("{location}: {}{message}", key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Syntax {
        /// Where.
        location: LedgerLocation,
        /// The key on that line, if there is one.
        key: Option<String>,
        /// The TOML parser's message.
        message: String,
    },
    /// A value of the right type that is not acceptable: a bad glob, CIDR
    /// or topic filter, a duplicate user, contradictory rule fields.
    #[error("{location}: key `{key}`: {reason}")]
    Invalid {
        /// Where.
        location: LedgerLocation,
        /// The key whose value is wrong.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A user's `password` is not a recognised hash. Plaintext passwords
    /// are never accepted: make a hash with `roost passwd` (the binary) or
    /// [`hash_password`](super::hash_password).
    #[error(
        "{location}: user `{username}`: key `password` is not a bcrypt ($2b$...) or \
         argon2 ($argon2id$...) hash; plaintext passwords are refused \
         (set a hash with `roost passwd --file {file} {username}`, or print one with \
         `roost passwd`; in code, roost::hooks::hash_password)",
        file = if location.file == "<string>" { "FILE" } else { &location.file }
    )]
    PlaintextPassword {
        /// Where (the password's line).
        location: LedgerLocation,
        /// The user.
        username: String,
    },
    /// Hashing a password failed (a bcrypt cost outside 4..=31).
    #[error("cannot hash password: {0}")]
    Hash(String),
}

impl LedgerError {
    /// The location in the file, for errors that have one.
    pub fn location(&self) -> Option<&LedgerLocation> {
        match self {
            LedgerError::Syntax { location, .. }
            | LedgerError::Invalid { location, .. }
            | LedgerError::PlaintextPassword { location, .. } => Some(location),
            LedgerError::Io { .. } | LedgerError::Hash(_) => None,
        }
    }

    /// A TOML error as a [`LedgerError::Syntax`], with the key taken from
    /// the line the error points at.
    pub(crate) fn from_toml(file: &str, source: &str, err: &toml::de::Error) -> LedgerError {
        let span = err.span().unwrap_or(0..0);
        let location = LedgerLocation::at(file, source, span.start);
        LedgerError::Syntax {
            key: key_at(source, &span),
            location,
            message: err.message().trim().to_owned(),
        }
    }

    pub(crate) fn invalid(
        file: &str,
        source: &str,
        span: Range<usize>,
        key: &str,
        reason: impl Into<String>,
    ) -> LedgerError {
        LedgerError::Invalid {
            location: LedgerLocation::at(file, source, span.start),
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The key of the `key = value` line that `span` falls on, if it is one.
fn key_at(source: &str, span: &Range<usize>) -> Option<String> {
    let start = span.start.min(source.len());
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[start..]
        .find('\n')
        .map_or(source.len(), |i| start + i);
    let line = &source[line_start..line_end];
    // The span itself may be the key (unknown field): prefer its text.
    if let Some(text) = source.get(span.clone()) {
        let text = text.trim();
        if !text.is_empty()
            && line.trim_start().starts_with(text)
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Some(text.to_owned());
        }
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_columns_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(LedgerLocation::at("f", s, 0).line, 1);
        let l = LedgerLocation::at("f", s, 6);
        assert_eq!((l.line, l.column), (2, 1));
        let l = LedgerLocation::at("f", s, 11);
        assert_eq!((l.line, l.column), (2, 6));
        assert_eq!(l.to_string(), "f:2:6");
    }

    #[test]
    fn the_key_comes_from_the_line() {
        let s = "x = 1\n  allow = \"yes\"\n";
        let at = s.find("\"yes\"").unwrap();
        assert_eq!(key_at(s, &(at..at + 5)).as_deref(), Some("allow"));
        let at = s.find("allow").unwrap();
        assert_eq!(key_at(s, &(at..at + 5)).as_deref(), Some("allow"));
        assert_eq!(key_at("[[users]]\n", &(0..9)), None);
    }
}
