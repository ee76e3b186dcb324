//! Configuration errors, each naming where the bad setting came from: a
//! file and line, a command-line flag, or a key.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// A configuration file, at a line when known.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: Option<usize>,
    },
    /// A command-line flag (without its dashes).
    Flag(&'static str),
    /// A key, wherever it was set.
    Key(&'static str),
    /// The built-in defaults.
    Builtin,
}

impl Place {
    /// The built-in defaults.
    pub(crate) fn builtin() -> Place {
        Place::Builtin
    }

    /// A line of a file.
    pub(crate) fn file(path: &Path, line: usize) -> Place {
        Place::File {
            path: path.to_owned(),
            line: Some(line),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Place::File { path, line: None } => write!(f, "{}", path.display()),
            Place::Flag(flag) => write!(f, "--{flag}"),
            Place::Key(key) => f.write_str(key),
            Place::Builtin => f.write_str("configuration"),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML, or not the expected keys and types.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The settings parse but cannot be used (as given, or together).
    #[error("{place}: {message}")]
    Invalid {
        /// Where the bad setting came from.
        place: Place,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// An [`Invalid`](ConfigError::Invalid) error.
    pub(crate) fn invalid(place: Place, message: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            place,
            message: message.to_string(),
        }
    }

    /// The process exit status: 1 when the file cannot be read, 2 when
    /// the configuration is invalid.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Unreadable { .. } => 1,
            ConfigError::Parse { .. } | ConfigError::Invalid { .. } => 2,
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut i = offset.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The table header in force at `offset`: `[capabilities]`,
/// `[[listener]]`, or `the top level`.
fn table_at(text: &str, offset: usize) -> String {
    let before = &text[..floor_char_boundary(text, offset)];
    // The line holding `offset` may itself be the header.
    let end = text[before.len()..]
        .find('\n')
        .map_or(text.len(), |n| before.len() + n);
    text[..end]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            let close = if l.starts_with("[[") { "]]" } else { "]" };
            match l.find(close) {
                Some(n) => l[..n + close.len()].to_string(),
                None => l.to_string(),
            }
        })
        .unwrap_or_else(|| "the top level".into())
}

/// The key assigned on the line holding `offset`, if any.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let offset = floor_char_boundary(text, offset);
    let start = text[..offset].rfind('\n').map_or(0, |n| n + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

/// Turns a TOML error into `file:line:column: message`, with serde's
/// "unknown field" and "missing field" said in the file's terms and the
/// key and table named.
pub(crate) fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let (line, column) = line_col(text, span.start);
    let raw = e.message().trim();
    let table = table_at(text, span.start);
    let mosquitto = raw
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .filter(|_| table == "the top level")
        .and_then(super::hints::mosquitto_key);
    let mut message = if let Some(rest) = raw.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let after = match &mosquitto {
            Some(h) => format!("\n  hint: {h}"),
            None => suggestion(name, expected),
        };
        format!("unknown key \"{name}\" in {table}{after}")
    } else if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        format!("missing key \"{name}\" in {table}")
    } else if let Some(key) = key_on_line(text, span.start) {
        format!("key \"{key}\" in {table}: {raw}")
    } else if table.starts_with('[') {
        format!("in {table}: {raw}")
    } else {
        raw.to_string()
    };
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    if mosquitto.is_none() {
        if let Some(hint) = super::hints::hint(line_text, &table, raw) {
            message = format!("{message}\n  hint: {hint}");
        }
    }
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// "; did you mean ..." when one of serde's expected names (backquoted in
/// `expected`) is close to `name`, else the list.
fn suggestion(name: &str, expected: &str) -> String {
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    if names.is_empty() {
        return String::new();
    }
    let best = names
        .iter()
        .map(|n| (edit_distance(name, n), *n))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, n)) => format!(" (did you mean \"{n}\"?)"),
        None => format!(" (expected one of: {})", names.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_tables_and_keys() {
        let text = "a = 1\n[capabilities]\nmaxium_qos = 1\n";
        let at = text.find("maxium").unwrap();
        assert_eq!(line_col(text, at), (3, 1));
        assert_eq!(table_at(text, at), "[capabilities]");
        assert_eq!(table_at(text, 0), "the top level");
        assert_eq!(key_on_line(text, at + 13).as_deref(), Some("maxium_qos"));
        assert_eq!(edit_distance("maxium_qos", "maximum_qos"), 1);
    }
}
