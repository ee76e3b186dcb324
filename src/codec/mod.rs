//! The MQTT wire format: MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (level 4) and 5.0
//! (level 5) packets, their properties and reason codes.
//!
//! Pure functions over bytes: no I/O, no clocks. [`Decoder::decode`] returns
//! `Ok(None)` when more bytes are needed and checks the announced size against
//! the maximum packet size before buffering the body.
//!
//! Layout: `decode` (the [`Decoder`]: fixed header, size limit, connection
//! state) and `encode` dispatch to one module per packet family (`connect`,
//! `publish`, `ack`, `subscribe`, `disconnect`); `properties` holds every 5.0
//! property and which packet may carry it; `reader`, `writer` and `varint`
//! are the wire primitives. Encoding describes each packet once to a `Sink`
//! that either counts or writes, so [`encoded_len`] always matches
//! [`encode`](fn@encode).

mod ack;
mod bytestr;
mod connect;
mod decode;
mod disconnect;
mod encode;
mod error;
mod kind;
mod packet;
mod properties;
mod publish;
mod reader;
mod reason;
mod subscribe;
mod varint;
mod writer;

#[cfg(test)]
mod tests;

pub use bytestr::ByteStr;
pub use decode::Decoder;
pub use encode::{encode, encoded_len};
pub(crate) use encode::{encode_publish, encode_publish_head, publish_len};
pub use error::{DecodeError, EncodeError};
pub use kind::PacketType;
pub use packet::*;
pub(crate) use publish::{PropertiesView, PublishView};
pub use reason::ReasonCode;

/// The largest remaining length the variable byte integer can express.
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;
