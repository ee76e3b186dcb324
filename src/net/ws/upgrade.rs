//! The server side of the WebSocket opening handshake (RFC 6455 section
//! 4.2): the request head is read (bounded), checked and answered. The
//! answer is decided by [`respond`], a pure function of the head.

use super::WsConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head accepted; a larger one is answered with 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// Most header lines parsed.
const MAX_HEADERS: usize = 32;

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the connection ended before the request head did")]
    Ended,
    /// The request was answered with this HTTP status.
    #[error("refused with HTTP {}: {}", .0.status, .0.why)]
    Refused(Refusal),
}

/// A request refused, with the status it is answered with and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) why: &'static str,
}

impl Refusal {
    fn new(status: u16, why: &'static str) -> Self {
        Refusal { status, why }
    }

    /// The HTTP response that says so.
    fn response(&self) -> String {
        let reason = match self.status {
            400 => "Bad Request",
            404 => "Not Found",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        // RFC 6455 section 4.4: a version mismatch lists the versions
        // served.
        let version = if self.status == 426 {
            "Sec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {reason}\r\n{version}Connection: close\r\nContent-Length: 0\r\n\r\n",
            self.status
        )
    }
}

/// What a complete request head gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Upgraded: the 101 response, and the head's length in the bytes read
    /// (what follows it is the client's first frames).
    Upgrade {
        response: String,
        head_len: usize,
    },
    Refuse(Refusal),
}

/// The answer to the request head at the start of `bytes`; `None` until
/// the head is complete.
pub(crate) fn respond(bytes: &[u8], config: &WsConfig) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD => {
            return Some(Answer::Refuse(Refusal::new(431, "request head too large")))
        }
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => {
            return Some(Answer::Refuse(Refusal::new(431, "too many header lines")))
        }
        Err(_) => return Some(Answer::Refuse(Refusal::new(400, "not an HTTP request"))),
    };
    if head_len > MAX_HEAD {
        return Some(Answer::Refuse(Refusal::new(431, "request head too large")));
    }
    Some(match check(&request, config) {
        Ok((key, protocol)) => {
            let protocol = protocol
                .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
                .unwrap_or_default();
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
                derive_accept_key(key)
            );
            Answer::Upgrade { response, head_len }
        }
        Err(refusal) => Answer::Refuse(refusal),
    })
}

/// The values of every header `name` has, split at commas and trimmed.
fn tokens<'a>(
    request: &'a httparse::Request<'_, '_>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    request
        .headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The key to answer and the subprotocol chosen, or why the request is
/// refused (RFC 6455 section 4.2.1).
fn check<'r>(
    request: &httparse::Request<'_, 'r>,
    config: &'r WsConfig,
) -> Result<(&'r [u8], Option<&'r str>), Refusal> {
    if request.method != Some("GET") {
        return Err(Refusal::new(400, "the method is not GET"));
    }
    if request.version != Some(1) {
        return Err(Refusal::new(400, "not HTTP/1.1"));
    }
    if !tokens(request, "upgrade").any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Err(Refusal::new(400, "no Upgrade: websocket"));
    }
    if !tokens(request, "connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(Refusal::new(400, "no Connection: upgrade"));
    }
    if !tokens(request, "sec-websocket-version").any(|t| t == "13") {
        return Err(Refusal::new(426, "not WebSocket version 13"));
    }
    let mut keys = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"));
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) if !k.value.trim_ascii().is_empty() => k.value.trim_ascii(),
        _ => return Err(Refusal::new(400, "no single Sec-WebSocket-Key")),
    };
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != config.path {
        return Err(Refusal::new(404, "not the WebSocket path"));
    }
    // The first the client offers (in its order) that the server accepts.
    let chosen = tokens(request, "sec-websocket-protocol").find_map(|offered| {
        config
            .subprotocols
            .iter()
            .find(|a| a.eq_ignore_ascii_case(offered))
            .map(String::as_str)
    });
    Ok((key, chosen))
}

/// Reads the request head from `stream` and answers it. On success,
/// returns the bytes read after the head (the client's first frames).
/// A refused request is answered, and the stream shut down.
pub(crate) async fn accept<S>(stream: &mut S, config: &WsConfig) -> Result<Vec<u8>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = Vec::with_capacity(1024);
    let answer = loop {
        if let Some(answer) = respond(&read, config) {
            break answer;
        }
        if read.len() == read.capacity() {
            read.reserve(read.len().min(MAX_HEAD - read.len()).max(1));
        }
        if stream.read_buf(&mut read).await? == 0 {
            return Err(UpgradeError::Ended);
        }
    };
    match answer {
        Answer::Upgrade { response, head_len } => {
            stream.write_all(response.as_bytes()).await?;
            stream.flush().await?;
            read.drain(..head_len);
            read.shrink_to_fit();
            Ok(read)
        }
        Answer::Refuse(refusal) => {
            stream.write_all(refusal.response().as_bytes()).await?;
            stream.shutdown().await?;
            Err(UpgradeError::Refused(refusal))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                        Connection: keep-alive, Upgrade\r\n\
                        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, MQTT\r\n\r\n";

    fn status(head: &str) -> u16 {
        match respond(head.as_bytes(), &WsConfig::default()) {
            Some(Answer::Refuse(r)) => r.status,
            Some(Answer::Upgrade { .. }) => 101,
            None => 0,
        }
    }

    #[test]
    fn a_good_request_is_upgraded_with_the_rfc_accept_key() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend([0x82, 0x80]);
        match respond(&bytes, &WsConfig::default()) {
            Some(Answer::Upgrade { response, head_len }) => {
                assert_eq!(head_len, GOOD.len());
                // The example of RFC 6455 section 1.3.
                assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
                // The server's spelling of the first accepted offer.
                assert!(response.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
                assert!(response.starts_with("HTTP/1.1 101 "));
                assert!(response.ends_with("\r\n\r\n"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in 0..GOOD.len() {
            assert_eq!(status(&GOOD[..n]), 0, "{n}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(status(&GOOD.replace("/mqtt", "/other")), 404);
        assert_eq!(status(&GOOD.replace("/mqtt", "/mqtt?x=1")), 101);
        assert_eq!(status(&GOOD.replace("GET", "POST")), 400);
        assert_eq!(status(&GOOD.replace("HTTP/1.1", "HTTP/1.0")), 400);
        assert_eq!(
            status(&GOOD.replace("Upgrade: websocket", "Upgrade: h2c")),
            400
        );
        assert_eq!(status(&GOOD.replace("keep-alive, Upgrade", "close")), 400);
        assert_eq!(status(&GOOD.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(status(&GOOD.replace("Sec-WebSocket-Key", "X-Key")), 400);
        assert_eq!(status("\x16\x03\x01garbage\r\n\r\n"), 400);
        let long = GOOD.replace("Host: x", &format!("Host: {}", "x".repeat(MAX_HEAD)));
        assert_eq!(status(&long), 431);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status(&GOOD.replace("Host: x\r\n", &many)), 431);
        let unfinished = format!("GET /mqtt HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        assert_eq!(status(&unfinished), 431);
    }

    #[test]
    fn no_offer_no_subprotocol() {
        let head = GOOD.replace("Sec-WebSocket-Protocol: chat, MQTT\r\n", "");
        match respond(head.as_bytes(), &WsConfig::default()) {
            Some(Answer::Upgrade { response, .. }) => {
                assert!(!response.contains("Sec-WebSocket-Protocol"))
            }
            other => panic!("{other:?}"),
        }
    }
}
