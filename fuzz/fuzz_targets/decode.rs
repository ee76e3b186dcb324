//! Feeds arbitrary bytes to a server-side decoder, packet after packet, and
//! checks that every packet it accepts survives encode-then-decode unchanged
//! and that `encoded_len` matches what `encode` writes.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roost::codec::{encode, encoded_len, Decoder, Packet};

const MAX: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(MAX);
    let mut buf = BytesMut::from(data);
    // Errors and "need more bytes" both end the stream, as on a connection.
    while let Ok(Some(packet)) = decoder.decode(&mut buf) {
        let Some(version) = decoder.version() else {
            panic!("decoded {packet:?} before the version was known");
        };
        let mut out = BytesMut::new();
        if let Err(e) = encode(&packet, version, &mut out) {
            panic!("decoded packet does not encode: {e}: {packet:?}");
        }
        assert_eq!(out.len(), encoded_len(&packet, version));
        let mut again = match packet {
            Packet::Connect(_) => Decoder::new(MAX),
            _ => Decoder::with_version(MAX, version),
        };
        assert_eq!(again.decode(&mut out), Ok(Some(packet)));
        assert!(out.is_empty(), "encoder wrote trailing bytes");
    }
});
