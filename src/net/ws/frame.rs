//! RFC 6455 framing for the server side, sans-IO: client frames are
//! decoded in place (their data payload unmasked and moved to the front of
//! the bytes read, the frame headers and control frames taken out), and
//! server frame headers are built for the writer.
//!
//! Built for memory per idle connection: the decoder holds a frame header
//! (at most 14 bytes) and where it stands, and nothing else. A data frame's
//! payload is never buffered here, whatever length it declares: its bytes
//! go to the reader's buffer as they arrive, and the MQTT decoder behind it
//! bounds what it keeps (maximum packet size). Only a control frame's
//! payload (at most 125 bytes) is collected, while one arrives.

/// Opcodes (RFC 6455 section 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Largest control frame payload (RFC 6455 section 5.5).
pub(crate) const MAX_CONTROL: usize = 125;

/// Close status codes this side sends (RFC 6455 section 7.4.1).
pub(crate) const NORMAL: u16 = 1000;

/// A client frame that breaks RFC 6455 or MQTT's use of it; each answers
/// with a close frame carrying [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("unmasked client frame (RFC 6455 section 5.1)")]
    Unmasked,
    #[error("reserved bits set with no extension negotiated (RFC 6455 section 5.2)")]
    Reserved,
    #[error("unknown opcode {0:#x} (RFC 6455 section 5.2)")]
    Opcode(u8),
    #[error("control frame fragmented or over 125 bytes (RFC 6455 section 5.5)")]
    Control,
    #[error("continuation with no message to continue, or a message inside another (RFC 6455 section 5.4)")]
    Continuation,
    #[error("64-bit payload length with its most significant bit set (RFC 6455 section 5.2)")]
    Length,
    #[error("text frame: MQTT travels in binary frames only [MQTT-6.0.0-1]")]
    Text,
    #[error("close frame with a one-byte body or an invalid status code (RFC 6455 section 7.4)")]
    Close,
    #[error("close reason is not UTF-8 (RFC 6455 section 5.5.1)")]
    CloseReason,
}

impl FrameError {
    /// The status code the close frame answering it carries (RFC 6455
    /// section 7.4.1): 1003 for data of a type MQTT does not take, 1007
    /// for text that is not UTF-8, 1002 for every other protocol error.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            FrameError::Text => 1003,
            FrameError::CloseReason => 1007,
            _ => 1002,
        }
    }
}

/// Where the decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame header into `head`.
    Head,
    /// Reading a data frame's payload: `left` bytes to come, the next
    /// unmasked with `mask[at % 4]`.
    Data { left: u64, mask: [u8; 4], at: u8 },
    /// Reading a control frame's payload into `Decoder::control`.
    Control {
        opcode: u8,
        left: u8,
        mask: [u8; 4],
        at: u8,
    },
    /// A close frame came: nothing after it is read (RFC 6455 section
    /// 5.5.1).
    Closed,
}

/// Decodes client frames in place; see [`Decoder::decode`].
#[derive(Debug)]
pub(crate) struct Decoder {
    head: [u8; 14],
    /// Bytes of `head` read.
    have: u8,
    state: State,
    /// A data message is in progress: its last frame has not come.
    in_message: bool,
    /// The payload of the control frame being read; unallocated otherwise.
    control: Vec<u8>,
    /// The payload of the last ping not answered yet (a pong answers the
    /// most recent ping only, as RFC 6455 section 5.5.3 allows).
    ping: Option<Vec<u8>>,
    /// The close frame's status code, once one came (`Some(None)`: it
    /// carried none).
    close: Option<Option<u16>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            head: [0; 14],
            have: 0,
            state: State::Head,
            in_message: false,
            control: Vec::new(),
            ping: None,
            close: None,
        }
    }
}

impl Decoder {
    /// Decodes `bytes` (the next bytes from the client, all of them) in
    /// place: returns how many bytes of data payload are now at its front,
    /// unmasked, in order; the rest of `bytes` is garbage. Frame headers
    /// and control frames are taken in; see [`Decoder::take_ping`] and
    /// [`Decoder::closed`]. After an error the connection is to be closed
    /// with the error's close code; nothing more should be decoded.
    pub(crate) fn decode(&mut self, bytes: &mut [u8]) -> Result<usize, FrameError> {
        let mut out = 0;
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.state {
                State::Closed => break,
                State::Head => {
                    let need = self.head_len();
                    let take = (need - self.have as usize).min(bytes.len() - at);
                    let have = self.have as usize;
                    self.head[have..have + take].copy_from_slice(&bytes[at..at + take]);
                    self.have += take as u8;
                    at += take;
                    if self.have == 2 {
                        self.check_first_two()?;
                    }
                    if self.have as usize == self.head_len() {
                        self.start_frame()?;
                    }
                }
                State::Data { left, mask, at: m } => {
                    let k = (bytes.len() - at).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    bytes.copy_within(at..at + k, out);
                    unmask(&mut bytes[out..out + k], *mask, *m);
                    *m = ((*m as usize + k) % 4) as u8;
                    *left -= k as u64;
                    out += k;
                    at += k;
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::Control {
                    opcode,
                    left,
                    mask,
                    at: m,
                } => {
                    let opcode = *opcode;
                    let k = (bytes.len() - at).min(*left as usize);
                    let from = self.control.len();
                    self.control.extend_from_slice(&bytes[at..at + k]);
                    unmask(&mut self.control[from..], *mask, *m);
                    *m = ((*m as usize + k) % 4) as u8;
                    *left -= k as u8;
                    at += k;
                    if *left == 0 {
                        self.end_control(opcode)?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The payload of the last ping not yet answered, if any.
    pub(crate) fn take_ping(&mut self) -> Option<Vec<u8>> {
        self.ping.take()
    }

    /// The client's close frame, if it came: its status code, if it had
    /// one.
    pub(crate) fn closed(&self) -> Option<Option<u16>> {
        self.close
    }

    /// The length of the header being read, as far as its bytes so far
    /// tell (2 until the second byte gives the length's and mask's size).
    fn head_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let length = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + length + mask
    }

    /// Everything the first two bytes decide, checked before the rest of
    /// the frame is read.
    fn check_first_two(&self) -> Result<(), FrameError> {
        let [b0, b1] = [self.head[0], self.head[1]];
        if b0 & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Unmasked);
        }
        let fin = b0 & 0x80 != 0;
        match b0 & 0x0f {
            TEXT if !self.in_message => Err(FrameError::Text),
            TEXT | BINARY if self.in_message => Err(FrameError::Continuation),
            CONTINUATION if !self.in_message => Err(FrameError::Continuation),
            CONTINUATION | BINARY => Ok(()),
            CLOSE | PING | PONG if !fin || b1 & 0x7f > MAX_CONTROL as u8 => {
                Err(FrameError::Control)
            }
            CLOSE | PING | PONG => Ok(()),
            other => Err(FrameError::Opcode(other)),
        }
    }

    /// The header is complete: enters its payload.
    fn start_frame(&mut self) -> Result<(), FrameError> {
        let h = &self.head;
        let (len, mask_at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(FrameError::Length);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&h[mask_at..mask_at + 4]);
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        self.have = 0;
        if opcode & 0x8 == 0 {
            self.in_message = !fin;
            self.state = if len == 0 {
                State::Head
            } else {
                State::Data {
                    left: len,
                    mask,
                    at: 0,
                }
            };
            return Ok(());
        }
        // Checked against MAX_CONTROL with the first two bytes.
        let left = len as u8;
        self.state = State::Control {
            opcode,
            left,
            mask,
            at: 0,
        };
        if left == 0 {
            self.end_control(opcode)?;
        } else {
            self.control.reserve_exact(left.into());
        }
        Ok(())
    }

    /// A control frame's payload is complete.
    fn end_control(&mut self, opcode: u8) -> Result<(), FrameError> {
        let payload = std::mem::take(&mut self.control);
        self.state = State::Head;
        match opcode {
            PING => self.ping = Some(payload),
            CLOSE => {
                let code = match payload.as_slice() {
                    [] => None,
                    [_] => return Err(FrameError::Close),
                    [hi, lo, reason @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !valid_close_code(code) {
                            return Err(FrameError::Close);
                        }
                        if std::str::from_utf8(reason).is_err() {
                            return Err(FrameError::CloseReason);
                        }
                        Some(code)
                    }
                };
                self.close = Some(code);
                self.state = State::Closed;
            }
            _ => {} // A pong: nothing to do.
        }
        Ok(())
    }
}

/// A status code a close frame may carry (RFC 6455 section 7.4): the
/// defined ones a peer may send, the IANA-registered 1012-1014, and the
/// ranges for libraries and applications.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `bytes` with `mask`, starting at mask byte `at`.
fn unmask(bytes: &mut [u8], mask: [u8; 4], at: u8) {
    let mut m = mask;
    m.rotate_left(at as usize % 4);
    let mut chunks = bytes.chunks_exact_mut(4);
    let word = u32::from_ne_bytes(m);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(m) {
        *b ^= k;
    }
}

/// A server frame's header (final, unmasked), with its length.
pub(crate) type Head = ([u8; 10], usize);

/// The header of a final frame with `opcode` and a payload of `len` bytes.
fn head(opcode: u8, len: u64) -> Head {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    (h, n)
}

/// The header of a binary frame carrying `len` bytes (one whole message).
pub(crate) fn binary_head(len: u64) -> Head {
    head(BINARY, len)
}

/// A pong frame answering a ping with `payload` (at most 125 bytes).
pub(crate) fn pong(payload: &[u8]) -> Vec<u8> {
    let (h, n) = head(PONG, payload.len() as u64);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(payload);
    frame
}

/// A close frame with `code`, or with no body.
pub(crate) fn close(code: Option<u16>) -> Vec<u8> {
    match code {
        Some(code) => {
            let [hi, lo] = code.to_be_bytes();
            vec![0x80 | CLOSE, 2, hi, lo]
        }
        None => vec![0x80 | CLOSE, 0],
    }
}

/// The length of the server frame starting `frame` (a complete header),
/// for frames built here.
pub(crate) fn frame_len(frame: &[u8]) -> usize {
    match frame[1] & 0x7f {
        126 => 4 + usize::from(u16::from_be_bytes([frame[2], frame[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[2..10]);
            10 + u64::from_be_bytes(b) as usize
        }
        n => 2 + n as usize,
    }
}

#[cfg(test)]
mod tests;
