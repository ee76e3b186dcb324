//! Byte sizes in configuration files: a human string (`"256MiB"`, `"64KiB"`,
//! `"1GB"`) or a whole number of bytes. Written back in the largest binary
//! unit that states the size exactly. Fields may be `usize`, `u64` or
//! `u32` (see [`Bytes`]). For a host application's settings too:
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
    let bytes = parse_u64(text)?;
    usize::try_from(bytes).map_err(|_| SizeError {
        text: text.to_owned(),
        reason: "too large for this machine",
    })
}

fn parse_u64(text: &str) -> Result<u64, SizeError> {
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
    n.checked_mul(factor).ok_or_else(|| err("too large"))
}

/// The string [`parse`] reads back as `bytes`: in the largest binary unit
/// that divides it, else in bytes.
pub fn format(bytes: usize) -> String {
    format_u64(bytes as u64)
}

fn format_u64(b: u64) -> String {
    for (name, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if b != 0 && b % factor == 0 {
            return format!("{}{name}", b / factor);
        }
    }
    format!("{b}B")
}

/// The integer types a size is kept in: `usize`, `u64` and `u32` (sealed:
/// only these). A size too large for the field's type is an error that
/// says so, naming the largest.
pub trait Bytes: Copy + sealed::Sealed {
    /// Largest value of the type.
    const MAX: u64;
    /// As bytes.
    fn to_u64(self) -> u64;
    /// From bytes, `None` past [`Bytes::MAX`].
    fn from_u64(n: u64) -> Option<Self>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for usize {}
    impl Sealed for u64 {}
    impl Sealed for u32 {}
}

impl Bytes for usize {
    const MAX: u64 = usize::MAX as u64;
    fn to_u64(self) -> u64 {
        self as u64
    }
    fn from_u64(n: u64) -> Option<Self> {
        usize::try_from(n).ok()
    }
}

impl Bytes for u64 {
    const MAX: u64 = u64::MAX;
    fn to_u64(self) -> u64 {
        self
    }
    fn from_u64(n: u64) -> Option<Self> {
        Some(n)
    }
}

impl Bytes for u32 {
    const MAX: u64 = u32::MAX as u64;
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
    fn from_u64(n: u64) -> Option<Self> {
        u32::try_from(n).ok()
    }
}

/// Serializes a size as [`format()`] writes it.
pub fn serialize<T: Bytes, S: Serializer>(bytes: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_u64(bytes.to_u64()))
}

/// Deserializes a size string or a whole number of bytes, into a `usize`,
/// `u64` or `u32` field.
pub fn deserialize<'de, T: Bytes, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<T: Bytes> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size such as \"256MiB\", or whole bytes")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            T::from_u64(v).ok_or_else(|| {
                E::custom(format_args!(
                    "size {} too large: at most {} bytes",
                    format_u64(v),
                    T::MAX
                ))
            })
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            u64::try_from(v)
                .map_err(|_| E::custom("a size cannot be negative"))
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            parse_u64(v)
                .map_err(E::custom)
                .and_then(|n| self.visit_u64(n))
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
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
    fn fields_of_each_width_take_units_and_refuse_what_does_not_fit() {
        #[derive(serde::Deserialize)]
        struct Narrow {
            #[serde(with = "super")]
            n: u32,
        }
        let n = |json: &str| serde_json::from_str::<Narrow>(json).map(|s| s.n);
        assert_eq!(n(r#"{"n":"1MiB"}"#).unwrap(), 1 << 20);
        assert_eq!(n(r#"{"n":4096}"#).unwrap(), 4096);
        let err = n(r#"{"n":"4GiB"}"#).unwrap_err().to_string();
        assert!(err.contains("at most 4294967295 bytes"), "{err}");
        assert!(n(r#"{"n":-1}"#).is_err());
        let text = serde_json::to_string(&serde_json::json!({ "n": format(1 << 20) })).unwrap();
        assert_eq!(n(&text).unwrap(), 1 << 20);
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
