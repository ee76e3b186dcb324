//! The two passes of encoding share one description of each packet: a
//! [`Sink`] either counts bytes ([`Counter`]) or writes them ([`Writer`]).
//! Because both run the same code, `encoded_len` always equals what `encode`
//! writes, and property lengths are known without a temporary buffer.

use super::{varint, ByteStr, EncodeError, UserProperties, MAX_REMAINING_LENGTH};
use bytes::{BufMut, Bytes, BytesMut};

/// Something that receives the fields of a packet body in wire order.
pub(crate) trait Sink: Sized {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    /// Raw bytes with no length prefix.
    fn raw(&mut self, b: &[u8]);
    /// Records an encoding error (the counting pass reports it).
    fn fail(&mut self, e: EncodeError);

    /// A variable byte integer; values above the 4-byte maximum fail.
    fn varint(&mut self, v: u32);

    fn binary(&mut self, b: &[u8]) {
        match u16::try_from(b.len()) {
            Ok(n) => {
                self.u16(n);
                self.raw(b);
            }
            Err(_) => self.fail(EncodeError::FieldTooLong),
        }
    }

    fn string(&mut self, s: &str) {
        self.binary(s.as_bytes());
    }

    /// A 5.0 property block: its length, then the properties.
    fn properties<P: Properties>(&mut self, p: &P) {
        let mut c = Counter::default();
        p.visit(&mut c);
        if let Some(e) = c.err {
            self.fail(e);
            return;
        }
        match u32::try_from(c.n) {
            Ok(n) if n <= MAX_REMAINING_LENGTH => {
                self.varint(n);
                p.visit(self);
            }
            _ => self.fail(EncodeError::PacketTooLarge),
        }
    }

    fn prop_u8(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.u8(id);
            self.u8(v);
        }
    }

    fn prop_bool(&mut self, id: u8, v: Option<bool>) {
        self.prop_u8(id, v.map(u8::from));
    }

    fn prop_u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.u8(id);
            self.u16(v);
        }
    }

    fn prop_u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.u8(id);
            self.u32(v);
        }
    }

    fn prop_varint(&mut self, id: u8, v: u32) {
        self.u8(id);
        self.varint(v);
    }

    fn prop_str(&mut self, id: u8, v: Option<&ByteStr>) {
        if let Some(v) = v {
            self.u8(id);
            self.string(v);
        }
    }

    fn prop_bin(&mut self, id: u8, v: Option<&Bytes>) {
        if let Some(v) = v {
            self.u8(id);
            self.binary(v);
        }
    }

    fn user_properties(&mut self, id: u8, v: &UserProperties) {
        for (k, val) in v {
            self.u8(id);
            self.string(k);
            self.string(val);
        }
    }
}

/// A set of 5.0 properties that can describe itself to a [`Sink`].
pub(crate) trait Properties {
    fn visit<S: Sink>(&self, s: &mut S);
}

/// Counts bytes and remembers the first error.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub(crate) n: usize,
    pub(crate) err: Option<EncodeError>,
}

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.n += 1;
    }
    fn u16(&mut self, _: u16) {
        self.n += 2;
    }
    fn u32(&mut self, _: u32) {
        self.n += 4;
    }
    fn raw(&mut self, b: &[u8]) {
        self.n += b.len();
    }
    fn fail(&mut self, e: EncodeError) {
        self.err.get_or_insert(e);
    }
    fn varint(&mut self, v: u32) {
        if v > MAX_REMAINING_LENGTH {
            self.fail(EncodeError::ValueOutOfRange);
        }
        self.n += varint::len(v);
    }
}

/// Writes into a buffer. Only used after a [`Counter`] pass found no error,
/// so its `fail` is never reached with a real error.
#[derive(Debug)]
pub(crate) struct Writer<'a>(pub(crate) &'a mut BytesMut);

impl Sink for Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn raw(&mut self, b: &[u8]) {
        self.0.put_slice(b);
    }
    fn fail(&mut self, _: EncodeError) {}
    fn varint(&mut self, v: u32) {
        varint::write(v.min(MAX_REMAINING_LENGTH), self.0);
    }
}
