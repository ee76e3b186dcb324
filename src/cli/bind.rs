//! A listener's address: an IP address and port, or a host name and port
//! (`localhost:1883`).
//!
//! A host name is resolved once, when the configuration is read (so
//! `check-config` answers for it too), and the listener binds every
//! address it resolves to, as Mosquitto's `listener 1883 localhost` does:
//! `localhost` usually means both 127.0.0.1 and ::1, and a client that
//! tries either must find the broker. Binding only the first would serve
//! whichever one the resolver happened to list first. A name is not
//! resolved again later: restart (or edit the file to an address) when it
//! changes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// Where a listener binds: as written, and the addresses that means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindAddr {
    /// `localhost:1883` for a host name; `None` for an IP address.
    host: Option<String>,
    /// Never empty; the address itself for an IP address.
    addrs: Vec<SocketAddr>,
}

impl BindAddr {
    /// Reads `0.0.0.0:1883`, `[::]:1883` or `HOST:PORT`, resolving a host
    /// name; the error says what is expected.
    pub(crate) fn parse(text: &str) -> Result<BindAddr, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let expected = "expected an IP address and port (0.0.0.0:1883, [::]:1883, 127.0.0.1:0) \
                        or a host name and port (localhost:1883)";
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(match text.parse::<u16>() {
                Ok(port) => format!(
                    "{text:?} has no address: {expected}; 0.0.0.0:{port} listens on every \
                     IPv4 interface, 127.0.0.1:{port} on this machine only"
                ),
                Err(_) => format!("{text:?} has no port: {expected}"),
            });
        };
        if host.contains(':') {
            return Err(format!(
                "{text:?}: an IPv6 address goes in brackets ([::1]:1883); {expected}"
            ));
        }
        let Ok(port) = port.parse::<u16>() else {
            return Err(format!("{text:?}: {port:?} is not a port; {expected}"));
        };
        if host.is_empty() {
            return Err(format!(
                "{text:?} has no address: {expected}; 0.0.0.0:{port} listens on every \
                 IPv4 interface"
            ));
        }
        let resolved = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve host {host:?}: {e}; {expected}"))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in resolved {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(format!("host {host:?} resolves to no address; {expected}"));
        }
        Ok(BindAddr {
            host: Some(text.to_owned()),
            addrs,
        })
    }

    /// Every address to bind.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether it shares an address (with a fixed port) with `other`.
    pub(crate) fn overlaps(&self, other: &BindAddr) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|a| a.port() != 0 && other.addrs.contains(a))
            .copied()
    }
}

impl From<SocketAddr> for BindAddr {
    fn from(addr: SocketAddr) -> Self {
        BindAddr {
            host: None,
            addrs: vec![addr],
        }
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(host) => f.write_str(host),
            None => write!(f, "{}", self.addrs[0]),
        }
    }
}

/// Written as given: `--print-config` keeps the host name, resolved again
/// when the printed file is read.
impl Serialize for BindAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BindAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BindAddr::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_host_names() {
        let ip = BindAddr::parse("127.0.0.1:1883").unwrap();
        assert_eq!(ip.addrs(), ["127.0.0.1:1883".parse().unwrap()]);
        assert_eq!(ip.to_string(), "127.0.0.1:1883");
        let local = BindAddr::parse("localhost:1883").unwrap();
        assert_eq!(local.to_string(), "localhost:1883");
        assert!(!local.addrs().is_empty());
        assert!(local
            .addrs()
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 1883));
        assert_eq!(
            local.overlaps(&"127.0.0.1:1883".parse::<SocketAddr>().unwrap().into()),
            Some("127.0.0.1:1883".parse().unwrap())
        );
        for (bad, says) in [
            ("1883", "0.0.0.0:1883"),
            ("localhost", "no port"),
            (":1883", "no address"),
            ("::1:1883", "brackets"),
            ("localhost:http", "not a port"),
            ("no-such-host.invalid:1883", "cannot resolve"),
        ] {
            let e = BindAddr::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
