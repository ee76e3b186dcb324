//! Packet types (table 2.1), for code that must decide from a fixed header
//! alone, before the packet is decoded (or read in full).

/// The type a fixed header's first byte names (its high nibble).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// CONNECT.
    Connect = 1,
    /// CONNACK.
    ConnAck = 2,
    /// PUBLISH.
    Publish = 3,
    /// PUBACK.
    PubAck = 4,
    /// PUBREC.
    PubRec = 5,
    /// PUBREL.
    PubRel = 6,
    /// PUBCOMP.
    PubComp = 7,
    /// SUBSCRIBE.
    Subscribe = 8,
    /// SUBACK.
    SubAck = 9,
    /// UNSUBSCRIBE.
    Unsubscribe = 10,
    /// UNSUBACK.
    UnsubAck = 11,
    /// PINGREQ.
    PingReq = 12,
    /// PINGRESP.
    PingResp = 13,
    /// DISCONNECT.
    Disconnect = 14,
    /// AUTH (5.0 only).
    Auth = 15,
}

impl PacketType {
    /// The type named by a fixed header's first byte; `None` for the
    /// reserved type 0 ([MQTT-2.1.3-1] makes it malformed).
    pub fn from_header(first: u8) -> Option<Self> {
        use PacketType::*;
        Some(match first >> 4 {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PacketType;

    #[test]
    fn from_header_reads_the_high_nibble() {
        assert_eq!(PacketType::from_header(0x00), None);
        assert_eq!(PacketType::from_header(0x0F), None);
        for kind in 1..=15u8 {
            let t = PacketType::from_header(kind << 4 | 0x0F).unwrap();
            assert_eq!(t as u8, kind);
        }
    }
}
