//! The admin API over HTTP, on an HTTP(S) listener given an admin token
//! (see [`crate::admin`]). Off unless configured: without a token every
//! `/api/` path is 404, as any unknown path. With one, a request without
//! `Authorization: Bearer <token>` (or with another token) is 401 with
//! `WWW-Authenticate: Bearer`.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/clients?limit=&after=` | sessions, connected or not, by client id |
//! | `GET /api/v1/clients/{id}` | one session and its subscriptions |
//! | `POST /api/v1/clients/{id}/disconnect` | kick: `reason`, `end_session`, `discard_will` (JSON body or query) |
//! | `GET /api/v1/retained?filter=&limit=&after=` | retained topics the filter matches (default `#`) |
//! | `DELETE /api/v1/retained/{topic}` | clear one retained message |
//! | `GET /api/v1/subscriptions?filter=&limit=&after=` | subscriptions whose filters the filter matches |
//! | `POST /api/v1/publish` | JSON `{"topic", "payload" or "payload_base64", "qos", "retain"}` |
//!
//! Path segments and query values are percent-decoded; `+` is a `+` (an
//! MQTT wildcard), not a space. Lists answer `{"items": [...], "next":
//! cursor or null}`; pass `next` back as `after`. Errors answer
//! `{"error": "..."}`. Bodies are JSON, `Content-Length` only, 64 KiB at
//! most. Every request is logged at INFO with the peer's address.

use crate::admin::{
    Admin, AdminError, AdminPublish, AdminToken, ClientInfo, DisconnectOptions, Listing, Paging,
    RetainedInfo, SessionInfo, SubscriptionInfo,
};
use crate::codec::{ProtocolVersion, QoS};
use crate::escape::Escaped;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request body accepted (a publish's payload, base64, fits).
const MAX_BODY: usize = 64 * 1024;

/// How long a request may wait for the core's answer (it queues behind
/// the connections' events).
const CORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Paths under the admin API.
const PREFIX: &str = "/api/";

/// Whether the request head is for the admin API.
pub(super) fn is_admin(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let _method = parts.next();
    parts
        .next()
        .is_some_and(|target| target.starts_with(PREFIX.as_bytes()))
}

/// A status and a JSON body.
type Answer = (&'static str, Value);

fn error(status: &'static str, message: impl std::fmt::Display) -> Answer {
    (status, json!({ "error": message.to_string() }))
}

const BAD_REQUEST: &str = "400 Bad Request";
const NOT_FOUND: &str = "404 Not Found";
const NOT_ALLOWED: &str = "405 Method Not Allowed";
const OK: &str = "200 OK";

/// What serving an admin request needs beside its stream.
pub(super) struct AdminCtx<'a> {
    /// The listener's token; `None`: the admin API is off.
    pub token: Option<&'a AdminToken>,
    pub admin: &'a Admin,
    pub peer: std::net::SocketAddr,
    /// The core's clock's reading, for the rate of warnings.
    pub now_ms: u64,
    /// For the body.
    pub timeout: Duration,
}

/// A response for the HTTP server to write.
pub(super) struct Reply {
    pub status: &'static str,
    pub content_type: &'static str,
    /// More header lines, each ending in CRLF.
    pub headers: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(status: &'static str, body: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: "",
            body: body.to_string().into_bytes(),
        }
    }
}

/// Serves an admin request whose head is read; `rest` is what was read
/// past the head.
pub(super) async fn serve<S>(stream: &mut S, head: &[u8], rest: Vec<u8>, ctx: AdminCtx<'_>) -> Reply
where
    S: AsyncRead + Unpin,
{
    let Some(token) = ctx.token else {
        // Off: as any path this listener does not serve.
        return Reply {
            status: NOT_FOUND,
            content_type: "text/plain",
            headers: "",
            body: b"not found\n".to_vec(),
        };
    };
    let head = String::from_utf8_lossy(head);
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let presented = header(&head, "authorization").and_then(|v| {
        let (scheme, credential) = v.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credential.trim())
    });
    if !presented.is_some_and(|t| token.verify(t.as_bytes())) {
        static WARNED: crate::broker::OncePerSecond = crate::broker::OncePerSecond::new();
        if WARNED.ready(ctx.now_ms) {
            tracing::warn!(peer = %ctx.peer, method = %Escaped(method), target = %Escaped(target),
                token = if presented.is_some() { "wrong" } else { "missing" },
                "admin API request refused: bad or missing token (more within a second not logged)");
        }
        return Reply {
            headers: "WWW-Authenticate: Bearer realm=\"roost\"\r\n",
            ..Reply::json("401 Unauthorized", &json!({ "error": "unauthorized" }))
        };
    }
    let (status, body) = match read_body(stream, &head, rest, ctx.timeout).await {
        Err(answer) => answer,
        Ok(body) => {
            let admin = ctx.admin;
            match tokio::time::timeout(CORE_TIMEOUT, route(method, target, &body, admin)).await {
                Ok(answer) => answer,
                Err(_) => error(
                    "503 Service Unavailable",
                    "the broker did not answer in time",
                ),
            }
        }
    };
    tracing::info!(peer = %ctx.peer, method = %Escaped(method), target = %Escaped(target),
        status = status.split(' ').next().unwrap_or(""), "admin API request");
    Reply::json(status, &body)
}

/// The value of header `name` (the first one), if present.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Reads the body `Content-Length` announces (chunked bodies are refused:
/// the API's bodies are small and their length known).
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    head: &str,
    mut body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, Answer> {
    if header(head, "transfer-encoding").is_some() {
        return Err(error(
            "411 Length Required",
            "send the body with Content-Length",
        ));
    }
    let lengths: Vec<&str> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim())
        .collect();
    let len = match lengths.as_slice() {
        [] => 0,
        [one] => one
            .parse::<usize>()
            .map_err(|_| error(BAD_REQUEST, "bad Content-Length"))?,
        _ => return Err(error(BAD_REQUEST, "more than one Content-Length")),
    };
    if len > MAX_BODY {
        return Err(error("413 Content Too Large", "body over 64 KiB"));
    }
    body.truncate(len);
    let read = async {
        let mut chunk = [0u8; 4096];
        while body.len() < len {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n.min(len - body.len())]);
        }
        Some(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Some(())) => Ok(body),
        _ => Err(error(BAD_REQUEST, "body shorter than its Content-Length")),
    }
}

/// Answers an authorized request.
async fn route(method: &str, target: &str, body: &[u8], admin: &Admin) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return error(NOT_FOUND, "no such route");
    };
    let query = match Query::parse(query) {
        Ok(q) => q,
        Err(e) => return error(BAD_REQUEST, e),
    };
    let paging = match query.paging() {
        Ok(p) => p,
        Err(e) => return error(BAD_REQUEST, e),
    };
    match (method, rest) {
        ("GET", "clients") => answer(admin.clients(paging).await, |l| listing(l, client_json)),
        ("GET", "retained") => {
            let filter = query.get("filter").unwrap_or("#");
            answer(admin.retained(filter, paging).await, |l| {
                listing(l, retained_json)
            })
        }
        ("GET", "subscriptions") => {
            let filter = query.get("filter").unwrap_or("#");
            answer(admin.subscriptions(filter, paging).await, |l| {
                listing(l, subscription_json)
            })
        }
        ("POST", "publish") => match publish_request(body) {
            Ok(m) => answer(admin.publish(m).await, |()| json!({ "published": true })),
            Err(e) => error(BAD_REQUEST, e),
        },
        (_, "clients" | "retained" | "subscriptions" | "publish") => {
            error(NOT_ALLOWED, "method not allowed")
        }
        (method, rest) if rest.starts_with("retained/") => {
            if method != "DELETE" {
                return error(NOT_ALLOWED, "method not allowed");
            }
            let topic = match decode(&rest["retained/".len()..]) {
                Ok(t) => t,
                Err(e) => return error(BAD_REQUEST, e),
            };
            match admin.delete_retained(&topic).await {
                Ok(true) => (OK, json!({ "deleted": topic })),
                Ok(false) => error(NOT_FOUND, "no retained message on this topic"),
                Err(e) => admin_error(e),
            }
        }
        (method, rest) if rest.starts_with("clients/") => {
            let tail = &rest["clients/".len()..];
            let (id, action) = match tail.split_once('/') {
                Some((id, action)) => (id, Some(action)),
                None => (tail, None),
            };
            let id = match decode(id) {
                Ok(id) => id,
                Err(e) => return error(BAD_REQUEST, e),
            };
            match (method, action) {
                ("GET", None) => match admin.client(&id).await {
                    Ok(Some(s)) => (OK, session_json(&s)),
                    Ok(None) => error(NOT_FOUND, AdminError::NotFound(id)),
                    Err(e) => admin_error(e),
                },
                ("POST", Some("disconnect")) => match disconnect_request(&query, body) {
                    Ok(options) => answer(admin.disconnect(&id, options).await, |d| {
                        json!({
                            "client_id": id,
                            "was_connected": d.was_connected,
                            "session_ended": d.session_ended,
                        })
                    }),
                    Err(e) => error(BAD_REQUEST, e),
                },
                (_, None | Some("disconnect")) => error(NOT_ALLOWED, "method not allowed"),
                _ => error(NOT_FOUND, "no such route"),
            }
        }
        _ => error(NOT_FOUND, "no such route"),
    }
}

fn answer<T>(result: Result<T, AdminError>, ok: impl FnOnce(T) -> Value) -> Answer {
    match result {
        Ok(v) => (OK, ok(v)),
        Err(e) => admin_error(e),
    }
}

fn admin_error(e: AdminError) -> Answer {
    let status = match e {
        AdminError::NotFound(_) => NOT_FOUND,
        AdminError::Inline(_) => "409 Conflict",
        AdminError::InvalidFilter(_) | AdminError::InvalidTopic(_) | AdminError::BadToken(_) => {
            BAD_REQUEST
        }
        AdminError::Refused(_) => "403 Forbidden",
        AdminError::Stopped => "503 Service Unavailable",
    };
    error(status, e)
}

/// A request's query parameters, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Query(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some("true" | "1" | "") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(format!("`{key}` must be true or false")),
        }
    }

    fn paging(&self) -> Result<Paging, String> {
        let limit = match self.get("limit") {
            None => Paging::default().limit,
            Some(l) => l
                .parse::<usize>()
                .map_err(|_| "`limit` must be a number".to_owned())?,
        };
        Ok(Paging {
            limit,
            after: self.get("after").map(str::to_owned),
        })
    }
}

/// Percent-decodes a path segment or query value into UTF-8 (`+` stays a
/// `+`: it is an MQTT wildcard more often than a space).
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded text is not UTF-8".to_owned())
}

/// Decodes standard base64 (RFC 4648, `=` padding optional).
fn base64(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    payload: Option<String>,
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

fn publish_request(body: &[u8]) -> Result<AdminPublish, String> {
    let b: PublishBody = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let payload = match (b.payload, b.payload_base64) {
        (Some(_), Some(_)) => return Err("give `payload` or `payload_base64`, not both".into()),
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64(&b64).ok_or("`payload_base64` is not base64")?,
        (None, None) => Vec::new(),
    };
    let qos = QoS::from_u8(b.qos).ok_or("`qos` must be 0, 1 or 2")?;
    Ok(AdminPublish {
        topic: b.topic,
        payload: payload.into(),
        qos,
        retain: b.retain,
    })
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    reason: Option<String>,
    end_session: Option<bool>,
    discard_will: Option<bool>,
}

/// The options from the query, and from a JSON body, which wins.
fn disconnect_request(query: &Query, body: &[u8]) -> Result<DisconnectOptions, String> {
    let b: DisconnectBody = if body.iter().all(u8::is_ascii_whitespace) {
        DisconnectBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?
    };
    let mut options = DisconnectOptions::new()
        .end_session(
            b.end_session
                .or(query.flag("end_session")?)
                .unwrap_or(false),
        )
        .discard_will(
            b.discard_will
                .or(query.flag("discard_will")?)
                .unwrap_or(false),
        );
    if let Some(reason) = b.reason.or_else(|| query.get("reason").map(str::to_owned)) {
        options = options.reason(reason);
    }
    Ok(options)
}

fn ms(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn protocol(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

fn listing<T>(l: Listing<T>, item: fn(&T) -> Value) -> Value {
    json!({
        "items": l.items.iter().map(item).collect::<Vec<_>>(),
        "next": l.next,
    })
}

fn client_json(c: &ClientInfo) -> Value {
    json!({
        "client_id": c.client_id,
        "username": c.username,
        "remote_addr": c.remote_addr.map(|a| a.to_string()),
        "certificate": c.certificate,
        "protocol": protocol(c.protocol),
        "connected": c.connected,
        "connected_at_ms": ms(c.connected_at),
        "disconnected_at_ms": ms(c.disconnected_at),
        "session_expiry_interval": c.session_expiry_interval,
        "inflight": c.inflight,
        "queued": c.queued,
        "subscriptions": c.subscriptions,
        "inline": c.inline,
    })
}

fn subscription_json(s: &SubscriptionInfo) -> Value {
    json!({
        "client_id": s.client_id,
        "filter": s.filter,
        "qos": s.qos as u8,
        "no_local": s.no_local,
        "retain_as_published": s.retain_as_published,
        "retain_handling": s.retain_handling as u8,
        "subscription_identifier": s.subscription_identifier,
    })
}

fn session_json(s: &SessionInfo) -> Value {
    let mut v = client_json(&s.client);
    v["subscriptions"] = s.subscriptions.iter().map(subscription_json).collect();
    v["will_topic"] = s.will_topic.clone().into();
    v
}

fn retained_json(r: &RetainedInfo) -> Value {
    json!({
        "topic": r.topic,
        "payload_bytes": r.payload_bytes,
        "expires_at_ms": ms(r.expires_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_plus_and_refuses_bad_escapes() {
        assert_eq!(decode("a%2Fb%20c+d%23").unwrap(), "a/b c+d#");
        assert_eq!(decode("%C3%A9").unwrap(), "é");
        assert!(decode("%zz").is_err());
        assert!(decode("%4").is_err());
        assert!(decode("%FF").is_err(), "not UTF-8");
    }

    #[test]
    fn base64_decodes_with_or_without_padding() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64("AAEC/w==").unwrap(), [0, 1, 2, 255]);
        assert_eq!(base64("").unwrap(), b"");
        assert!(base64("a").is_none());
        assert!(base64("a b=").is_none());
    }

    #[test]
    fn bodies_are_checked() {
        let m = publish_request(br#"{"topic":"t","payload_base64":"AAE=","qos":1,"retain":true}"#)
            .unwrap();
        assert_eq!(
            (&m.payload[..], m.qos, m.retain),
            (&[0u8, 1][..], QoS::AtLeastOnce, true)
        );
        assert!(publish_request(br#"{"topic":"t","qos":3}"#).is_err());
        assert!(
            publish_request(br#"{"topic":"t","payload":"a","payload_base64":"YQ=="}"#).is_err()
        );
        assert!(publish_request(br#"{"topic":"t","colour":"red"}"#).is_err());
        let q = Query::parse("end_session=true&reason=bye%20now").unwrap();
        let o = disconnect_request(&q, b"").unwrap();
        assert_eq!(
            o,
            DisconnectOptions::new().end_session(true).reason("bye now")
        );
        let o = disconnect_request(&q, br#"{"end_session":false}"#).unwrap();
        assert_eq!(o, DisconnectOptions::new().reason("bye now"));
        assert!(disconnect_request(&Query::parse("end_session=maybe").unwrap(), b"").is_err());
    }

    #[test]
    fn only_api_paths_are_admin() {
        assert!(is_admin(b"GET /api/v1/clients HTTP/1.1\r\n\r\n"));
        assert!(!is_admin(b"GET /stats HTTP/1.1\r\n\r\n"));
        assert!(!is_admin(b"GET /apix HTTP/1.1\r\n\r\n"));
    }
}
