//! Durations in configuration files: a human string (`"10s"`, `"500ms"`,
//! `"1m30s"`) or a whole number of seconds. Written back in the shortest
//! such string. For a host application's own settings too:
//!
//! ```
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     #[serde(with = "roost::duration")]
//!     grace: std::time::Duration,
//! }
//! let s: Settings = serde_json::from_str(r#"{ "grace": "1m30s" }"#).unwrap();
//! assert_eq!(s.grace.as_secs(), 90);
//! ```

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;
use std::time::Duration;

/// Why a duration string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason} (write it like \"10s\", \"500ms\", \"1m30s\" or as whole seconds)")]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

/// Parses `"7d"`, `"1h"`, `"2m"`, `"10s"`, `"500ms"`, `"1m30s"`, `"0"`:
/// numbers, each followed by a unit (`d`, `h`, `m`, `s`, `ms`); a lone
/// number is seconds.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        text: text.to_owned(),
        reason,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(|| err("too long"))?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(|| err("too long"))?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(|| err("too long"))?),
            "" => return Err(err("a number without a unit (d, h, m, s or ms)")),
            _ => return Err(err("unknown unit (use d, h, m, s or ms)")),
        };
        total = total.checked_add(unit).ok_or_else(|| err("too long"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The shortest string [`parse`] reads back as `d` (sub-millisecond parts
/// are dropped).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let (d, rem) = (ms / 86_400_000, ms % 86_400_000);
    let (h, rem) = (rem / 3_600_000, rem % 3_600_000);
    let (m, rem) = (rem / 60_000, rem % 60_000);
    let (s, ms) = (rem / 1000, rem % 1000);
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as \"10s\" or \"500ms\", or whole seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("invalid duration {v}: negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }
}

/// `#[serde(with = "duration")]` for a [`Duration`].
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// `#[serde(with = "duration")]` for a [`Duration`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// An optional interval where `"off"` (or zero) means none, for
/// `#[serde(with = "duration::optional")]`.
pub mod optional {
    use super::*;

    /// Writes `None` as `"off"`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_str("off"),
        }
    }

    struct OptionalVisitor;

    impl Visitor<'_> for OptionalVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"10s\", whole seconds, or \"off\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(DurationVisitor.visit_u64::<E>(v)?).filter(|d| !d.is_zero()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(DurationVisitor.visit_i64::<E>(v)?).filter(|d| !d.is_zero()))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.trim().eq_ignore_ascii_case("off") {
                return Ok(None);
            }
            Ok(Some(DurationVisitor.visit_str::<E>(v)?).filter(|d| !d.is_zero()))
        }
    }

    /// Reads `"off"` and zero as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(OptionalVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (text, d) in [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1h1m1s1ms", Duration::from_millis(3_661_001)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1d1h", Duration::from_secs(90_000)),
        ] {
            assert_eq!(parse(text), Ok(d), "{text}");
            assert_eq!(format(d), text);
        }
        assert_eq!(parse("7"), Ok(Duration::from_secs(7)));
        assert_eq!(format(Duration::ZERO), "0s");
        for bad in ["", "s", "10 parsecs", "10x", "1.5s", "-1s", "10s5"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
