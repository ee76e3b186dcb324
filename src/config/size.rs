//! Byte sizes in configuration files: a human string (`"256MiB"`, `"64KiB"`,
//! `"1GB"`) or a whole number of bytes. Written back in the largest binary
//! unit that states the size exactly. For a host application's settings
//! too:
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     #[serde(with = "roost::size")]
//!     cache: usize,
//! }
//! let s: Settings = serde_json::from_str(r#"{ "cache": "64MiB" }"#).unwrap();
//! assert_eq!(s.cache, 64 << 20);
//! ```

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;

/// Why a size string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {text:?}: {reason} (write it like \"256MiB\", \"64KiB\", \"1GB\" or as whole bytes)")]
pub struct SizeError {
    text: String,
    reason: &'static str,
}

/// The units [`parse`] knows, with their factors: binary (`KiB`, `MiB`,
/// `GiB`) and decimal (`KB`, `MB`, `GB`), case as written here (`kB` is
/// read as `KB`), and `B`.
const UNITS: [(&str, u64); 8] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

/// Parses `"256MiB"`, `"64 KiB"`, `"1GB"`, `"4096"`: a whole number,
/// optionally followed by a unit; a lone number is bytes.
pub fn parse(text: &str) -> Result<usize, SizeError> {
    let err = |reason| SizeError {
        text: text.to_owned(),
        reason,
    };
    let s = text.trim();
    let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return Err(err("expected a number"));
    }
    let n: u64 = s[..digits].parse().map_err(|_| err("number too large"))?;
    let unit = s[digits..].trim();
    let factor = match unit {
        "" => 1,
        _ => match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, f)) => *f,
            None => return Err(err("unknown unit (use B, KiB, MiB, GiB, KB, MB or GB)")),
        },
    };
    let bytes = n.checked_mul(factor).ok_or_else(|| err("too large"))?;
    usize::try_from(bytes).map_err(|_| err("too large for this machine"))
}

/// The string [`parse`] reads back as `bytes`: in the largest binary unit
/// that divides it, else in bytes.
pub fn format(bytes: usize) -> String {
    let b = bytes as u64;
    for (name, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if b != 0 && b % factor == 0 {
            return format!("{}{name}", b / factor);
        }
    }
    format!("{b}B")
}

/// Serializes a size as [`format()`] writes it.
pub fn serialize<S: Serializer>(bytes: &usize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*bytes))
}

/// Deserializes a size string or a whole number of bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size such as \"256MiB\", or whole bytes")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom("size too large for this machine"))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            u64::try_from(v)
                .map_err(|_| E::custom("a size cannot be negative"))
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("256MiB"), Ok(256 << 20));
        assert_eq!(parse(" 64 KiB "), Ok(64 << 10));
        assert_eq!(parse("1GB"), Ok(1_000_000_000));
        assert_eq!(parse("3kB"), Ok(3_000));
        assert_eq!(parse("0B"), Ok(0));
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "12 parsecs",
            "-1",
            "99999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formatted_sizes_read_back() {
        for bytes in [0, 1, 1023, 1024, 1536, 256 << 20, 3 << 30, (1 << 30) + 1] {
            assert_eq!(parse(&format(bytes)), Ok(bytes), "{}", format(bytes));
        }
        assert_eq!(format(256 << 20), "256MiB");
        assert_eq!(format(1536), "1536B");
        assert_eq!(format(3 << 10), "3KiB");
    }
}
