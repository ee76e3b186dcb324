//! A cheaply clonable, immutable UTF-8 string backed by [`Bytes`].
//!
//! Topic names, client ids and property strings are decoded straight out of the
//! read buffer without copying, and fanning a publish out to many subscribers
//! only bumps a reference count.

use bytes::Bytes;
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// An immutable UTF-8 string that shares its storage.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// The empty string (no allocation).
    pub const fn new() -> Self {
        ByteStr(Bytes::new())
    }

    /// Wraps `bytes` if they are valid UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(ByteStr(bytes))
    }

    /// A string from a `'static` literal, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    /// The string slice.
    pub fn as_str(&self) -> &str {
        // Invariant: every constructor checks (or is given) valid UTF-8.
        match std::str::from_utf8(&self.0) {
            Ok(s) => s,
            Err(_) => unreachable!("ByteStr holds valid UTF-8 by construction"),
        }
    }

    /// Length in bytes. Inherent rather than through `Deref`, which
    /// validates the UTF-8 again on every call (safe code cannot skip it).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string (without validating, as [`ByteStr::len`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Copies the string into its own allocation, so it no longer pins the
    /// (possibly much larger) buffer it was decoded from.
    pub fn detach(&self) -> Self {
        ByteStr(Bytes::copy_from_slice(&self.0))
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Hashed as the `str` it borrows as (`Borrow` requires it): a map keyed by
// `ByteStr` can then be searched with a `&str`. Hashing the bytes instead
// (as `[u8]`, length first) would make such lookups miss.
impl std::hash::Hash for ByteStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s.into_bytes()))
    }
}

impl From<ByteStr> for String {
    fn from(s: ByteStr) -> Self {
        s.as_str().to_owned()
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_map_keyed_by_bytestr_is_searched_by_str() {
        let mut m = HashMap::new();
        m.insert(ByteStr::from("a/b"), 1);
        assert_eq!(m.get("a/b"), Some(&1));
        assert_eq!(m.remove("a/b"), Some(1));
    }
}
