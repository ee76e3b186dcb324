use super::*;
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const M: [u8; 4] = [0xa1, 0x02, 0xb3, 0x04];

/// A masked client frame with first byte `first`.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend((payload.len() as u16).to_be_bytes());
    }
    f.extend(M);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ M[i % 4]));
    f
}

/// The server frames in `bytes`, as (opcode, payload); panics unless they
/// are whole, final and unmasked.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(bytes[0] & 0xf0, 0x80, "final, no reserved bits");
        assert_eq!(bytes[1] & 0x80, 0, "unmasked");
        let len = frame::frame_len(bytes);
        let head = match bytes[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        frames.push((bytes[0] & 0x0f, bytes[head..len].to_vec()));
        bytes = &bytes[len..];
    }
    frames
}

/// A connected pair of real sockets: (server end, client end).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (server, client)
}

async fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    s.read_exact(&mut b).await.unwrap();
    b
}

#[tokio::test]
async fn reads_payloads_and_writes_binary_frames() {
    let (server, mut client) = pair().await;
    let mut ws = ServerStream::new(server, client_frame(0x02, b"ear").to_vec());
    let mut rest = client_frame(0x80, b"ly");
    rest.extend(client_frame(0x82, &[7; 300]));
    client.write_all(&rest).await.unwrap();
    let mut got: Vec<u8> = Vec::new();
    while got.len() < 5 + 300 {
        let mut b = [0u8; 64];
        let n = ws.read(&mut b).await.unwrap();
        assert!(n > 0);
        got.extend(&b[..n]);
    }
    assert_eq!(&got[..5], b"early");
    assert!(got[5..].iter().all(|&b| b == 7));
    assert!(ws.early.capacity() == 0, "served and freed");

    ws.write_all(b"hello").await.unwrap();
    let big = vec![9u8; 70_000];
    ws.write_all(&big).await.unwrap();
    ws.flush().await.unwrap();
    let frames = server_frames(&read_exactly(&mut client, 7 + 10 + 70_000).await);
    assert_eq!(frames[0], (2, b"hello".to_vec()));
    let payload: Vec<u8> = frames[1..].iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(payload, big);
}

#[tokio::test]
async fn a_ping_is_answered_while_reading() {
    let (server, mut client) = pair().await;
    let mut ws = ServerStream::new(server, Vec::new());
    let mut bytes = client_frame(0x89, b"are you there");
    bytes.extend(client_frame(0x82, b"data"));
    client.write_all(&bytes).await.unwrap();
    let mut b = [0u8; 16];
    let n = ws.read(&mut b).await.unwrap();
    assert_eq!(&b[..n], b"data");
    let pong = read_exactly(&mut client, 2 + 13).await;
    assert_eq!(server_frames(&pong), [(0xA, b"are you there".to_vec())]);
}

#[tokio::test]
async fn a_close_is_answered_and_reading_ends() {
    let (server, mut client) = pair().await;
    let mut ws = ServerStream::new(server, Vec::new());
    let mut bytes = client_frame(0x82, b"last");
    bytes.extend(client_frame(0x88, &1001u16.to_be_bytes()));
    client.write_all(&bytes).await.unwrap();
    let mut b = [0u8; 16];
    assert_eq!(ws.read(&mut b).await.unwrap(), 4);
    assert_eq!(ws.read(&mut b).await.unwrap(), 0, "end of stream");
    let reply = read_exactly(&mut client, 4).await;
    assert_eq!(
        server_frames(&reply),
        [(0x8, 1001u16.to_be_bytes().to_vec())]
    );
    // Nothing more may be sent; shutting down sends no second close.
    assert!(ws.write_all(b"x").await.is_err());
    ws.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn refused_frames_get_their_close_code() {
    for (frame, code) in [
        (client_frame(0x81, b"text"), 1003u16),
        (
            client_frame(0x82, b"x")[..]
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 1 { b & 0x7f } else { *b })
                .collect(),
            1002,
        ),
        (client_frame(0x83, b"x"), 1002),
    ] {
        let (server, mut client) = pair().await;
        let mut ws = ServerStream::new(server, Vec::new());
        client.write_all(&frame).await.unwrap();
        let mut b = [0u8; 16];
        let e = ws.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let reply = read_exactly(&mut client, 4).await;
        assert_eq!(server_frames(&reply), [(0x8, code.to_be_bytes().to_vec())]);
    }
}

#[tokio::test]
async fn shutdown_sends_a_normal_close() {
    let (server, mut client) = pair().await;
    let mut ws = ServerStream::new(server, Vec::new());
    ws.write_all(b"bye").await.unwrap();
    ws.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        server_frames(&rest),
        [(2, b"bye".to_vec()), (8, 1000u16.to_be_bytes().to_vec())]
    );
}

/// A stream whose writes take at most one byte and are `Pending` every
/// other call, and whose reads yield the scripted pieces: partial frame
/// headers and payloads, with pings arriving between them.
struct Trickle {
    input: VecDeque<Vec<u8>>,
    output: Vec<u8>,
    stall: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Empty once the script is done: the end of stream.
        if let Some(piece) = self.input.pop_front() {
            buf.put_slice(&piece);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stall = !self.stall;
        if self.stall {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.output.push(buf[0]);
        Poll::Ready(Ok(1))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Pongs go between data frames however the writes are cut, and a data
/// frame's payload is exactly the bytes written, in order.
#[tokio::test]
async fn pongs_never_land_inside_a_data_frame() {
    let mut input = VecDeque::new();
    for i in 0..20u8 {
        input.push_back(client_frame(0x89, &[i]));
    }
    let mut ws = ServerStream::new(
        Trickle {
            input,
            output: Vec::new(),
            stall: false,
        },
        Vec::new(),
    );
    let data: Vec<u8> = (0..200u8).collect();
    let mut written = 0;
    let mut b = [0u8; 8];
    // Interleave: a read (taking a ping) between every write call.
    while written < data.len() {
        let chunk = &data[written..(written + 30).min(data.len())];
        let n = std::future::poll_fn(|cx| Pin::new(&mut ws).poll_write(cx, chunk)).await;
        written += n.unwrap();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), ws.read(&mut b)).await;
    }
    ws.flush().await.unwrap();
    let frames = server_frames(&ws.inner.output);
    let payload: Vec<u8> = frames
        .iter()
        .filter(|(op, _)| *op == 2)
        .flat_map(|(_, p)| p.clone())
        .collect();
    assert_eq!(payload, data);
    let pongs = frames.iter().filter(|(op, _)| *op == 0xA).count();
    assert!(pongs >= 1, "{frames:?}");
}
