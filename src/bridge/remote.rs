//! The address of a remote broker: `mqtt://host:port`, `mqtts://`,
//! `ws://host:port/path`, `wss://`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Why a remote address is not one (see [`Remote::parse`](super::Remote::parse)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No `scheme://` at the start.
    #[error("{url:?} has no scheme: write it like \"mqtt://host:1883\" (mqtt, mqtts, ws or wss)")]
    NoScheme {
        /// The text given.
        url: String,
    },
    /// A scheme other than `mqtt`, `mqtts`, `ws` and `wss`.
    #[error("{url:?}: unknown scheme {scheme:?}: expected mqtt, mqtts, ws or wss")]
    UnknownScheme {
        /// The text given.
        url: String,
        /// The scheme found.
        scheme: String,
    },
    /// No host between `://` and the port or path.
    #[error("{url:?} has no host")]
    NoHost {
        /// The text given.
        url: String,
    },
    /// A host that is neither a name, an IPv4 address nor an IPv6 address
    /// in brackets.
    #[error(
        "{url:?}: invalid host {host:?} (an IPv6 address goes in brackets: \"mqtt://[::1]:1883\")"
    )]
    BadHost {
        /// The text given.
        url: String,
        /// The host found.
        host: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("{url:?}: invalid port {port:?}: expected 1 to 65535")]
    BadPort {
        /// The text given.
        url: String,
        /// The port found.
        port: String,
    },
    /// A path on an `mqtt://` or `mqtts://` address.
    #[error("{url:?}: a path ({path:?}) is allowed only for ws:// and wss://")]
    PathNotAllowed {
        /// The text given.
        url: String,
        /// The path found.
        path: String,
    },
    /// `user:password@` in the address: credentials have their own keys.
    #[error(
        "{url:?}: credentials in the address are not allowed (use username and password_file)"
    )]
    UserInfo {
        /// The text given.
        url: String,
    },
    /// A `?query` or `#fragment`.
    #[error("{url:?}: a query or fragment is not allowed")]
    Query {
        /// The text given.
        url: String,
    },
}

/// How a bridge reaches its remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// MQTT over TCP (`mqtt://`, default port 1883).
    Mqtt,
    /// MQTT over TLS (`mqtts://`, default port 8883).
    Mqtts,
    /// MQTT over WebSocket (`ws://`, default port 80).
    Ws,
    /// MQTT over WebSocket over TLS (`wss://`, default port 443).
    Wss,
}

impl Scheme {
    /// As written before `://`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// The port used when the address names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    /// Whether the connection speaks WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
}

/// The path of a WebSocket remote that names none.
const DEFAULT_WS_PATH: &str = "/mqtt";

/// A remote broker's address, parsed and checked.
///
/// ```
/// use roost::bridge::{Remote, Scheme};
/// let r = Remote::parse("wss://[2001:db8::1]")?;
/// assert_eq!((r.scheme(), r.host(), r.port(), r.path()), (Scheme::Wss, "2001:db8::1", 443, Some("/mqtt")));
/// assert_eq!(r.to_string(), "wss://[2001:db8::1]:443/mqtt");
/// # Ok::<(), roost::bridge::RemoteError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Remote {
    scheme: Scheme,
    /// A host name or IP address, IPv6 without its brackets.
    host: String,
    port: u16,
    /// `Some` exactly for WebSocket schemes; starts with `/`.
    path: Option<String>,
}

impl Remote {
    /// Parses `scheme://host[:port][/path]`: schemes `mqtt`, `mqtts`, `ws`
    /// and `wss`; default ports 1883, 8883, 80 and 443; an IPv6 address in
    /// brackets; a path only for `ws` and `wss` (default `/mqtt`). No
    /// credentials, query or fragment.
    pub fn parse(url: &str) -> Result<Remote, RemoteError> {
        let owned = || url.to_owned();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| RemoteError::NoScheme { url: owned() })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" => Scheme::Mqtt,
            "mqtts" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            _ => {
                return Err(RemoteError::UnknownScheme {
                    url: owned(),
                    scheme: scheme.to_owned(),
                })
            }
        };
        if rest.contains(['?', '#']) {
            return Err(RemoteError::Query { url: owned() });
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(RemoteError::UserInfo { url: owned() });
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| RemoteError::BadHost {
                url: owned(),
                host: authority.to_owned(),
            })?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(RemoteError::BadHost {
                    url: owned(),
                    host: host.to_owned(),
                });
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').unwrap_or(after)),
            };
            (host, port)
        } else if authority.matches(':').count() > 1 {
            // An IPv6 address without its brackets.
            return Err(RemoteError::BadHost {
                url: owned(),
                host: authority.to_owned(),
            });
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(RemoteError::NoHost { url: owned() });
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if !authority.starts_with('[') && !host.chars().all(name_char) {
            return Err(RemoteError::BadHost {
                url: owned(),
                host: host.to_owned(),
            });
        }
        let port = match port {
            None => scheme.default_port(),
            // Digits only: `u16::from_str` would take a `+` sign.
            Some(p) => Some(p)
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| RemoteError::BadPort {
                    url: owned(),
                    port: p.to_owned(),
                })?,
        };
        let path = if scheme.is_ws() {
            Some(if path.is_empty() {
                DEFAULT_WS_PATH.to_owned()
            } else {
                path.to_owned()
            })
        } else if path.is_empty() || path == "/" {
            None
        } else {
            return Err(RemoteError::PathNotAllowed {
                url: owned(),
                path: path.to_owned(),
            });
        };
        Ok(Remote {
            scheme,
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// How it is reached.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or IP address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, the scheme's default when the address named none.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The WebSocket path (`ws` and `wss` only; default `/mqtt`).
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

impl FromStr for Remote {
    type Err = RemoteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Remote::parse(s)
    }
}

/// The address with its port and path always written out.
impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        write!(f, ":{}{}", self.port, self.path.as_deref().unwrap_or(""))
    }
}

impl Serialize for Remote {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Remote {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Remote::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_ports_and_paths() {
        let cases = [
            (
                "mqtt://127.0.0.1:1884",
                Scheme::Mqtt,
                "127.0.0.1",
                1884,
                None,
            ),
            ("mqtt://broker", Scheme::Mqtt, "broker", 1883, None),
            (
                "MQTTS://broker.example.com",
                Scheme::Mqtts,
                "broker.example.com",
                8883,
                None,
            ),
            ("mqtt://h:1/", Scheme::Mqtt, "h", 1, None),
            ("ws://h", Scheme::Ws, "h", 80, Some("/mqtt")),
            (
                "wss://h:8443/ws/mqtt",
                Scheme::Wss,
                "h",
                8443,
                Some("/ws/mqtt"),
            ),
            ("mqtt://[::1]:1884", Scheme::Mqtt, "::1", 1884, None),
            (
                "mqtts://[2001:db8::1]",
                Scheme::Mqtts,
                "2001:db8::1",
                8883,
                None,
            ),
        ];
        for (url, scheme, host, port, path) in cases {
            let r = Remote::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(r.scheme(), scheme, "{url}");
            assert_eq!(r.host(), host, "{url}");
            assert_eq!(r.port(), port, "{url}");
            assert_eq!(r.path(), path, "{url}");
            // Written out, it parses back to itself.
            assert_eq!(Remote::parse(&r.to_string()), Ok(r), "{url}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        type Is = fn(&RemoteError) -> bool;
        let cases: [(&str, Is, &str); 12] = [
            (
                "broker:1883",
                |e| matches!(e, RemoteError::NoScheme { .. }),
                "no scheme",
            ),
            (
                "http://h",
                |e| matches!(e, RemoteError::UnknownScheme { .. }),
                "\"http\"",
            ),
            (
                "mqtt://",
                |e| matches!(e, RemoteError::NoHost { .. }),
                "no host",
            ),
            (
                "mqtt://:1883",
                |e| matches!(e, RemoteError::NoHost { .. }),
                "no host",
            ),
            (
                "mqtt://h:0",
                |e| matches!(e, RemoteError::BadPort { .. }),
                "\"0\"",
            ),
            (
                "mqtt://h:",
                |e| matches!(e, RemoteError::BadPort { .. }),
                "port",
            ),
            (
                "mqtt://h:65536",
                |e| matches!(e, RemoteError::BadPort { .. }),
                "65536",
            ),
            (
                "mqtt://::1:1883",
                |e| matches!(e, RemoteError::BadHost { .. }),
                "brackets",
            ),
            (
                "mqtt://[zz]:1883",
                |e| matches!(e, RemoteError::BadHost { .. }),
                "zz",
            ),
            (
                "mqtt://h/x",
                |e| matches!(e, RemoteError::PathNotAllowed { .. }),
                "ws://",
            ),
            (
                "mqtt://u:p@h",
                |e| matches!(e, RemoteError::UserInfo { .. }),
                "password_file",
            ),
            (
                "ws://h/mqtt?x=1",
                |e| matches!(e, RemoteError::Query { .. }),
                "query",
            ),
        ];
        for (url, is, needle) in cases {
            let e = Remote::parse(url).expect_err(url);
            assert!(is(&e), "{url}: {e:?}");
            assert!(e.to_string().contains(needle), "{url}: {e}");
            assert!(e.to_string().contains(url), "{url}: {e}");
        }
    }
}
