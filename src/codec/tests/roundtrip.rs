//! Property tests: round trips, lengths, truncation and garbage.

use super::client_rules::{client_rules_hold, from_client};
use super::strategies::versioned_packet;
use super::MAX;
use crate::codec::*;
use bytes::BytesMut;
use proptest::prelude::*;

/// The decoder that should read `p` back: a fresh one for CONNECT (which
/// sets the version), otherwise one already at `v`.
fn decoder_for(p: &Packet, v: ProtocolVersion) -> Decoder {
    match p {
        Packet::Connect(_) => Decoder::new(MAX),
        _ => Decoder::with_version(MAX, v),
    }
}

fn encoded(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf).unwrap();
    buf
}

/// Decodes packets from `data` until the decoder wants more or fails;
/// every packet it yields must survive encode-then-decode unchanged (the
/// same check the fuzz target makes) and, if `from_client` (`d` is the
/// server's decoder), keep the rules on what a client may send.
fn decode_all_and_reencode(mut d: Decoder, data: &[u8], from_client: bool) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(p)) = d.decode(&mut buf) {
        let Some(v) = d.version() else {
            panic!("decoded {p:?} without a version");
        };
        if from_client {
            assert_eq!(client_rules_hold(&p, v), Ok(()), "accepted {p:?}");
        }
        let mut out = BytesMut::new();
        encode(&p, v, &mut out).unwrap();
        assert_eq!(out.len(), encoded_len(&p, v));
        let again = decoder_for(&p, v).decode(&mut out);
        assert_eq!(again, Ok(Some(p)));
        assert!(out.is_empty());
    }
}

/// Failing cases are saved beside this file (`roundtrip.proptest-regressions`)
/// rather than in a folder at the repository root.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::with_cases(256)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn encode_then_decode_round_trips((v, p) in versioned_packet()) {
        let mut buf = encoded(&p, v);
        prop_assert_eq!(buf.len(), encoded_len(&p, v));
        let mut d = decoder_for(&p, v);
        prop_assert_eq!(d.decode(&mut buf), Ok(Some(p)));
        prop_assert!(buf.is_empty());
        prop_assert_eq!(d.version(), Some(v));
    }

    #[test]
    fn every_strict_prefix_needs_more((v, p) in versioned_packet()) {
        let full = encoded(&p, v);
        for n in 0..full.len() {
            let mut buf = BytesMut::from(&full[..n]);
            prop_assert_eq!(decoder_for(&p, v).decode(&mut buf), Ok(None), "prefix {}", n);
            prop_assert_eq!(buf.len(), n);
        }
    }

    #[test]
    fn back_to_back_packets_decode_in_order(
        (v, p) in versioned_packet(),
        (_, q) in versioned_packet(),
    ) {
        // Skip a CONNECT in second place (it would be a duplicate) and
        // packets generated for another version.
        let q = match q {
            Packet::Connect(_) => Packet::PingReq,
            other => other,
        };
        let mut d = decoder_for(&p, v);
        let mut buf = encoded(&p, v);
        let mut second = BytesMut::new();
        if encode(&q, v, &mut second).is_err() {
            return Ok(());
        }
        // Judge `q` by a decoder in the state `d` will be in: after a
        // CONNECT that is a server's, which refuses what only a server
        // may send (a PUBLISH with a subscription identifier, say).
        let mut check = decoder_for(&p, v);
        prop_assert_eq!(check.decode(&mut encoded(&p, v)), Ok(Some(p.clone())));
        let Ok(Some(q)) = check.decode(&mut second.clone()) else {
            // `q` was valid for another version, or another direction, only.
            return Ok(());
        };
        buf.extend_from_slice(&second);
        prop_assert_eq!(d.decode(&mut buf), Ok(Some(p)));
        prop_assert_eq!(d.decode(&mut buf), Ok(Some(q)));
        prop_assert_eq!(d.decode(&mut buf), Ok(None));
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_all_and_reencode(Decoder::new(MAX), &data, true);
        decode_all_and_reencode(Decoder::new(16), &data, true);
        for v in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            decode_all_and_reencode(Decoder::with_version(MAX, v), &data, false);
            decode_all_and_reencode(from_client(v), &data, true);
        }
    }

    #[test]
    fn mutated_packets_never_panic(
        (v, p) in versioned_packet(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Valid packets with a few bytes changed reach far deeper into the
        // decoder than random bytes do.
        let mut bytes = encoded(&p, v).to_vec();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        decode_all_and_reencode(decoder_for(&p, v), &bytes, matches!(p, Packet::Connect(_)));
        if !matches!(p, Packet::Connect(_)) {
            decode_all_and_reencode(from_client(v), &bytes, true);
        }
    }
}
