use super::*;
use proptest::prelude::*;

/// A client frame: `first` is the first byte (FIN, RSV, opcode), masked
/// with `mask`, with the shortest length encoding (or the 64-bit one when
/// `long`).
fn frame(first: u8, payload: &[u8], mask: [u8; 4], long: bool) -> Vec<u8> {
    let mut f = vec![first];
    let len = payload.len();
    if long {
        f.push(0x80 | 127);
        f.extend((len as u64).to_be_bytes());
    } else if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend((len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend((len as u64).to_be_bytes());
    }
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn binary(payload: &[u8]) -> Vec<u8> {
    frame(0x82, payload, M, false)
}

/// Decodes `input` cut into the given pieces; the data and the pings seen.
fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>, Decoder) {
    let mut d = Decoder::default();
    let mut data = Vec::new();
    let mut pings = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain([&input.len()]) {
        let mut piece = input[from..to].to_vec();
        let n = d.decode(&mut piece).expect("valid frames");
        data.extend_from_slice(&piece[..n]);
        pings.extend(d.take_ping());
        from = to;
    }
    (data, pings, d)
}

/// A stream with every kind of frame: one message in three fragments with
/// a ping and a pong between them, then messages with 16- and 64-bit
/// lengths, an empty one, and a ping.
fn mixed() -> (Vec<u8>, Vec<u8>) {
    let big: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
    let mut s = Vec::new();
    s.extend(frame(0x02, b"ab", M, false));
    s.extend(frame(0x89, b"ping-1", [1, 2, 3, 4], false));
    s.extend(frame(0x00, b"cde", [9, 9, 9, 9], false));
    s.extend(frame(0x8A, b"", M, false));
    s.extend(frame(0x80, b"fgh", M, false));
    s.extend(binary(&big));
    s.extend(frame(0x82, b"ij", M, true));
    s.extend(binary(b""));
    s.extend(frame(0x89, b"", M, false));
    let mut want = b"abcdefgh".to_vec();
    want.extend(&big);
    want.extend(b"ij");
    (s, want)
}

#[test]
fn every_split_point_gives_the_same_bytes() {
    let (s, want) = mixed();
    for cut in 0..=s.len() {
        let (data, pings, _) = run(&s, &[cut]);
        assert_eq!(data, want, "cut at {cut}");
        // Two pings read at once get one answer, for the latest.
        assert_eq!(pings.last(), Some(&Vec::new()), "cut at {cut}");
        assert!(pings.len() <= 2, "cut at {cut}");
    }
}

#[test]
fn byte_by_byte() {
    let (s, want) = mixed();
    let cuts: Vec<usize> = (1..s.len()).collect();
    let (data, pings, _) = run(&s, &cuts);
    assert_eq!(data, want);
    assert_eq!(pings, [b"ping-1".to_vec(), Vec::new()]);
}

#[test]
fn several_frames_in_one_read() {
    let mut s = binary(b"one");
    s.extend(binary(b"two"));
    let (data, _, _) = run(&s, &[]);
    assert_eq!(data, b"onetwo");
}

#[test]
fn only_the_latest_ping_is_kept() {
    let mut s = frame(0x89, b"a", M, false);
    s.extend(frame(0x89, b"b", M, false));
    let mut d = Decoder::default();
    assert_eq!(d.decode(&mut s), Ok(0));
    assert_eq!(d.take_ping().as_deref(), Some(&b"b"[..]));
    assert_eq!(d.take_ping(), None);
}

#[test]
fn a_close_ends_decoding() {
    let mut s = binary(b"x");
    s.extend(frame(0x88, &[0x03, 0xe8, b'o', b'k'], M, false));
    s.extend(binary(b"after"));
    let (data, _, d) = run(&s, &[]);
    assert_eq!(data, b"x");
    assert_eq!(d.closed(), Some(Some(1000)));
    let (_, _, d) = run(&frame(0x88, b"", M, false), &[]);
    assert_eq!(d.closed(), Some(None));
}

#[test]
fn a_huge_declared_length_streams_without_buffering() {
    let mut s = vec![0x82, 0x80 | 127];
    s.extend((1u64 << 40).to_be_bytes());
    s.extend(M);
    s.extend([1 ^ M[0], 2 ^ M[1], 3 ^ M[2]]);
    let mut d = Decoder::default();
    assert_eq!(d.decode(&mut s), Ok(3));
    assert_eq!(&s[..3], [1, 2, 3]);
    assert_eq!(d.control.capacity(), 0);
    let mut more = [4 ^ M[3], 5 ^ M[0]];
    assert_eq!(d.decode(&mut more), Ok(2));
    assert_eq!(more, [4, 5]);
}

fn error_of(bytes: &[u8]) -> FrameError {
    // Whole, and a byte at a time: the same error.
    let whole = Decoder::default().decode(&mut bytes.to_vec()).unwrap_err();
    let mut d = Decoder::default();
    let mut err = None;
    for b in bytes {
        if let Err(e) = d.decode(&mut [*b]) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(whole), "{bytes:?}");
    whole
}

#[test]
fn protocol_errors() {
    let mut unmasked = binary(b"hi");
    unmasked[1] &= 0x7f;
    assert_eq!(error_of(&unmasked), FrameError::Unmasked);
    assert_eq!(error_of(&frame(0xC2, b"x", M, false)), FrameError::Reserved);
    assert_eq!(
        error_of(&frame(0x83, b"x", M, false)),
        FrameError::Opcode(3)
    );
    assert_eq!(
        error_of(&frame(0x8B, b"x", M, false)),
        FrameError::Opcode(0xB)
    );
    assert_eq!(error_of(&frame(0x81, b"x", M, false)), FrameError::Text);
    assert_eq!(error_of(&frame(0x09, b"x", M, false)), FrameError::Control);
    assert_eq!(
        error_of(&frame(0x89, &[0; 126], M, false)),
        FrameError::Control
    );
    assert_eq!(
        error_of(&frame(0x80, b"x", M, false)),
        FrameError::Continuation
    );
    let mut two_starts = frame(0x02, b"a", M, false);
    two_starts.extend(binary(b"b"));
    assert_eq!(error_of(&two_starts), FrameError::Continuation);
    let mut text_inside = frame(0x02, b"a", M, false);
    text_inside.extend(frame(0x81, b"b", M, false));
    assert_eq!(error_of(&text_inside), FrameError::Continuation);
    let mut msb = vec![0x82, 0x80 | 127];
    msb.extend((1u64 << 63).to_be_bytes());
    msb.extend(M);
    assert_eq!(error_of(&msb), FrameError::Length);
    assert_eq!(error_of(&frame(0x88, &[3], M, false)), FrameError::Close);
    for code in [999u16, 1004, 1005, 1006, 1015, 2999, 5000] {
        let body = code.to_be_bytes();
        assert_eq!(error_of(&frame(0x88, &body, M, false)), FrameError::Close);
    }
    assert_eq!(
        error_of(&frame(0x88, &[0x03, 0xe8, 0xff], M, false)),
        FrameError::CloseReason
    );
    assert_eq!(FrameError::Text.close_code(), 1003);
    assert_eq!(FrameError::Unmasked.close_code(), 1002);
    assert_eq!(FrameError::CloseReason.close_code(), 1007);
}

#[test]
fn server_frames() {
    for (len, head_len) in [(0u64, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let (h, n) = binary_head(len);
        assert_eq!(n, head_len);
        assert_eq!(h[0], 0x82);
        assert_eq!(frame_len(&h[..n]), n + len as usize);
    }
    let p = pong(b"abc");
    assert_eq!(p, [0x8A, 3, b'a', b'b', b'c']);
    assert_eq!(frame_len(&p), p.len());
    assert_eq!(close(Some(1002)), [0x88, 2, 0x03, 0xea]);
    assert_eq!(close(None), [0x88, 0]);
}

proptest! {
    /// Garbage, cut anywhere, never panics, and what decodes never comes
    /// out larger than what went in.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), cuts in proptest::collection::vec(0usize..400, 0..8)) {
        let mut d = Decoder::default();
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
        cuts.sort_unstable();
        let mut from = 0;
        for to in cuts.into_iter().chain([bytes.len()]) {
            let mut piece = bytes[from..to].to_vec();
            match d.decode(&mut piece) {
                Ok(n) => prop_assert!(n <= piece.len()),
                Err(_) => break,
            }
            from = to;
        }
    }

    /// Binary frames of any sizes and masks, cut anywhere, give their
    /// payloads back in order.
    #[test]
    fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5), mask in any::<[u8; 4]>(), cut in 0usize..2000) {
        let mut s = Vec::new();
        let mut want: Vec<u8> = Vec::new();
        for p in &payloads {
            s.extend(frame(0x82, p, mask, false));
            want.extend(p);
        }
        let cut = cut.min(s.len());
        let (data, _, _) = run(&s, &[cut]);
        prop_assert_eq!(data, want);
    }
}
