//! MQTT over WebSocket (RFC 6455, MQTT 5.0 section 6): the server side
//! (the upgrade, [`upgrade`], and framing of our own, [`frame`] and
//! [`server`]), and the client side (a bridge dialing its remote, with
//! tokio-tungstenite). Both sides are byte streams, so neither the
//! connection driver nor the bridge needs WebSocket knowledge.
//!
//! MQTT packets and WebSocket messages are independent: one packet may span
//! several messages and one message may carry several packets. Reading
//! concatenates binary payloads; the decoder finds the packet boundaries.

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

mod frame;
mod server;
mod upgrade;

pub(crate) use server::ServerStream;
pub(crate) use upgrade::UpgradeError;

/// A WebSocket listener's settings.
///
/// ```
/// let ws = roost::WsConfig::default().path("/broker");
/// assert_eq!(ws.path, "/broker");
/// assert_eq!(ws.subprotocols, ["mqtt", "mqttv3.1"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsConfig {
    /// The request path the upgrade must use; others get 404.
    /// Default: `/mqtt`.
    pub path: String,
    /// Subprotocols accepted, in the server's order of preference; the
    /// first the client offers (in the client's order) is chosen. A client
    /// offering none is accepted without one. Default: `mqtt`, `mqttv3.1`.
    pub subprotocols: Vec<String>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: "/mqtt".into(),
            subprotocols: vec!["mqtt".into(), "mqttv3.1".into()],
        }
    }
}

impl WsConfig {
    /// Sets the upgrade path.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
}

/// Runs the server side of the upgrade on `stream`: the request is read
/// and answered ([`upgrade`]), and the stream framed by our own layer
/// ([`server`]), which holds no buffer while the connection is idle
/// (issue 20: tungstenite kept a read buffer per connection for its life).
pub(crate) async fn accept<S>(
    mut stream: S,
    config: &WsConfig,
) -> Result<ServerStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let early = upgrade::accept(&mut stream, config).await?;
    Ok(ServerStream::new(stream, early))
}

/// The subprotocol a client asks for: MQTT 3.1.1 and 5.0 both register
/// `mqtt` (MQTT 5.0 section 6.0); `mqttv3.1` is for 3.1 only.
const CLIENT_SUBPROTOCOL: &str = "mqtt";

/// Runs the client side of the upgrade on `stream`, to `url` (`ws://` or
/// `wss://`, whose host, port and path make the request; the caller has
/// already run TLS for `wss`), asking for subprotocol `mqtt`. A server
/// that answers with no subprotocol or another one fails the handshake, as
/// RFC 6455 section 4.1 requires of the client.
pub(crate) async fn connect<S>(stream: S, url: &str) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(CLIENT_SUBPROTOCOL),
    );
    // tungstenite's default limits (16 MiB frames, 64 MiB messages): what
    // the remote may send is bounded by the Maximum Packet Size the bridge
    // announces and enforces when decoding, not here.
    let (inner, _response) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(WsStream::new(inner))
}

/// The client side of a WebSocket connection (a bridge's) seen as a byte
/// stream: reads yield the binary payloads in order, each write goes out
/// as one binary message.
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// What is left of the last binary message received.
    read: Bytes,
}

impl<S> WsStream<S> {
    fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            read: Bytes::new(),
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.remaining());
                let chunk = self.read.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            // Pings are answered by tungstenite as part of reading.
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.read = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket uses binary frames only [MQTT-6.0.0-1]",
                    )))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // A close (the reply is queued by tungstenite) or the end of
                // the stream: end of file.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let inner = Pin::new(&mut self.inner);
        ready!(<WebSocketStream<S> as Sink<Message>>::poll_ready(inner, cx)).map_err(io_error)?;
        let message = Message::Binary(Bytes::copy_from_slice(buf));
        Pin::new(&mut self.inner)
            .start_send(message)
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        <WebSocketStream<S> as Sink<Message>>::poll_flush(Pin::new(&mut self.inner), cx)
            .map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(<WebSocketStream<S> as Sink<Message>>::poll_close(
            Pin::new(&mut self.inner),
            cx
        )) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}
