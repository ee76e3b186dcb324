//! Encoding packets into a byte buffer.

use super::{EncodeError, Packet, ProtocolVersion};
use bytes::BytesMut;

/// Appends `packet`, encoded for `version`, to `buf`.
///
/// Fields the version does not have (5.0 properties for 3.x peers) are left out.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let _ = (packet, version, buf);
    unimplemented!("codec helper")
}

/// The number of bytes [`encode`] would write, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    unimplemented!("codec helper")
}
