//! The start-up lines on stdout: one per listener, the ledger and each
//! bridge, warnings about an open door, and last the store (scripts read
//! up to it). As plain text, or with `--log-format json` as JSON objects in
//! the shape of the JSON log lines, so a log collector reading both
//! streams parses them alike.

use super::config::{Config, ListenerKind, LogFormat};
use std::io::Write;

/// The start-up lines, printed together once the broker is ready to serve.
pub(crate) struct Banner {
    format: LogFormat,
    lines: Vec<Line>,
}

struct Line {
    level: &'static str,
    text: String,
    fields: Vec<(&'static str, String)>,
}

impl Banner {
    pub(crate) fn new(format: LogFormat) -> Banner {
        Banner {
            format,
            lines: Vec::new(),
        }
    }

    /// A line saying what is ready; `fields` are its parts for JSON.
    pub(crate) fn info(&mut self, text: String, fields: &[(&'static str, String)]) {
        self.push("INFO", text, fields);
    }

    /// A line about something an operator should change.
    pub(crate) fn warn(&mut self, text: String, fields: &[(&'static str, String)]) {
        self.push("WARN", text, fields);
    }

    fn push(&mut self, level: &'static str, text: String, fields: &[(&'static str, String)]) {
        self.lines.push(Line {
            level,
            text,
            fields: fields.to_vec(),
        });
    }

    /// Writes every line to stdout. Errors are ignored: a closed stdout
    /// must not stop the broker.
    pub(crate) fn print(&self) {
        let mut out = std::io::stdout().lock();
        for line in &self.lines {
            let _ = writeln!(out, "{}", self.render(line));
        }
        let _ = out.flush();
    }

    fn render(&self, line: &Line) -> String {
        match self.format {
            LogFormat::Text => line.text.clone(),
            LogFormat::Json => {
                let mut o = serde_json::Map::new();
                o.insert("timestamp".into(), timestamp().into());
                o.insert("level".into(), line.level.into());
                o.insert("message".into(), line.text.clone().into());
                o.insert("target".into(), "roost::banner".into());
                for (k, v) in &line.fields {
                    o.insert((*k).into(), v.clone().into());
                }
                serde_json::Value::Object(o).to_string()
            }
        }
    }
}

/// Now, as the JSON log lines write it (RFC 3339, UTC).
fn timestamp() -> String {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut s = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut s));
    s
}

/// The MQTT listeners anyone on the network may use without credentials:
/// no auth ledger, bound to a non-loopback address, and not requiring a
/// client certificate. As `(label, address)`.
pub(crate) fn open_doors(config: &Config) -> Vec<(String, std::net::SocketAddr)> {
    if config.auth.ledger.is_some() {
        return Vec::new();
    }
    config
        .listeners
        .iter()
        .filter(|l| !matches!(l.kind, ListenerKind::Http | ListenerKind::Https))
        .filter(|l| !requires_certificate(l))
        .flat_map(|l| l.bind.addrs().iter().map(move |a| (l, *a)))
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(l, addr)| (l.kind.describe().to_string(), addr))
        .collect()
}

/// Whether the listener admits only clients with a CA-signed certificate
/// (as `serve::tls_config` reads the keys).
fn requires_certificate(l: &super::config::ListenerConfig) -> bool {
    use super::config::ClientAuthMode;
    l.kind.is_tls()
        && l.client_ca.is_some()
        && matches!(l.client_auth, None | Some(ClientAuthMode::Required))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_text_and_the_fields() {
        let mut b = Banner::new(LogFormat::Json);
        b.info(
            "roost 0.1.0: mqtt tcp listening on 127.0.0.1:1883".into(),
            &[("addr", "127.0.0.1:1883".into())],
        );
        let v: serde_json::Value = serde_json::from_str(&b.render(&b.lines[0])).unwrap();
        assert_eq!(
            v["message"],
            "roost 0.1.0: mqtt tcp listening on 127.0.0.1:1883"
        );
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["addr"], "127.0.0.1:1883");
        assert!(v["timestamp"].as_str().unwrap().starts_with("20"));
        let text = Banner::new(LogFormat::Text);
        assert_eq!(text.render(&b.lines[0]), b.lines[0].text);
    }
}
