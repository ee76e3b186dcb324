//! Hints for configuration files written in another shape: Mosquitto's
//! `key value` lines, and TOML tables with one bracket too many or too
//! few. They follow the parser's message, which still names the line.

/// Tables the file may hold many of, written `[[name]]`.
const ARRAYS: [(&str, &str); 4] = [
    (
        "listener",
        "[[listener]]\n    type = \"tcp\"\n    bind = \"0.0.0.0:1883\"",
    ),
    (
        "bridges",
        "[[bridges]]\n    name = \"cloud\"\n    remote = \"mqtt://broker.example.com\"",
    ),
    (
        "bridges.forward",
        "[[bridges.forward]]\n    filter = \"devices/#\"\n    qos = 1",
    ),
    (
        "bridges.subscribe",
        "[[bridges.subscribe]]\n    filter = \"commands/#\"\n    qos = 1",
    ),
];

/// Tables the file holds once, written `[name]`.
const SINGLES: [&str; 8] = [
    "store",
    "durability",
    "auth",
    "log",
    "capabilities",
    "limits",
    "memory",
    "bridges.tls",
];

/// Mosquitto options and what roost's file says instead.
const MOSQUITTO: [(&str, &str); 24] = [
    ("listener", LISTENER),
    ("port", LISTENER),
    ("bind_address", LISTENER),
    ("allow_anonymous", "without an [auth] ledger anyone may connect; with one, its rules decide (`[[auth]]` with `anonymous = true` and `allow = true` lets anonymous clients in)"),
    ("password_file", "[auth]\n    ledger = \"/etc/roost/ledger.toml\"\n  with [[users]] that `roost passwd --file /etc/roost/ledger.toml USER` writes"),
    ("acl_file", "[[acl]] rules in the [auth] ledger file (see examples/ledger.toml)"),
    ("certfile", TLS),
    ("keyfile", TLS),
    ("cafile", TLS),
    ("capath", TLS),
    ("require_certificate", TLS),
    ("crlfile", TLS),
    ("use_identity_as_username", "username_from = \"common-name\" in a TLS [[listener]] (or --username-from common-name)"),
    ("protocol", "a [[listener]] of type \"ws\" for WebSockets:\n    [[listener]]\n    type = \"ws\"\n    bind = \"0.0.0.0:1882\""),
    ("persistence", "[store]\n    backend = \"redb\"   # or \"memory\": nothing kept\n    data_dir = \"/var/lib/roost\""),
    ("persistence_location", "[store]\n    data_dir = \"/var/lib/roost\""),
    ("autosave_interval", "[durability]\n    mode = \"ack-before-commit\"\n    flush_interval = \"1s\""),
    ("max_connections", "[limits]\n    maximum_connections = 1000"),
    ("max_packet_size", "[limits]\n    maximum_packet_size = \"1MiB\""),
    ("max_inflight_messages", "[limits]\n    maximum_inflight = 20"),
    ("max_queued_messages", "[limits]\n    maximum_queued_messages = 1000"),
    ("max_keepalive", "[capabilities]\n    maximum_keep_alive = 300"),
    ("log_dest", "logs go to stderr; [log] sets `level` and `format`"),
    ("connection", "a [[bridges]] table:\n    [[bridges]]\n    name = \"cloud\"\n    remote = \"mqtt://broker.example.com\""),
];

const LISTENER: &str =
    "a [[listener]] table:\n    [[listener]]\n    type = \"tcp\"\n    bind = \"0.0.0.0:1883\"";

const TLS: &str = "keys of a TLS [[listener]] table:\n    [[listener]]\n    type = \"tls\"\n    bind = \"0.0.0.0:8883\"\n    cert = \"server.pem\"\n    key = \"server.key\"\n    client_ca = \"ca.pem\"          # client certificates, required by default\n    crl = \"ca.crl\"";

/// A hint for the parser's `message` about `line` (the text of the line it
/// points at) under the table header `table` (`[listener]`, `[[store]]`,
/// `the top level`), if one applies.
pub(crate) fn hint(line: &str, table: &str, message: &str) -> Option<String> {
    if let Some(h) = mosquitto_line(line) {
        return Some(h);
    }
    let name = table
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim()
        .to_string();
    let double = table.starts_with("[[");
    // `[listener]` for `[[listener]]`, or `listener = ...` at the top level.
    let key = line.split('=').next().unwrap_or("").trim();
    let wanted_many = if message.contains("expected a sequence") {
        ARRAYS
            .iter()
            .find(|(n, _)| !double && (*n == name || (table == "the top level" && *n == key)))
    } else {
        None
    };
    if let Some((n, example)) = wanted_many {
        return Some(format!(
            "{n} is an array of tables, written [[{n}]] (double brackets), once for each:\n    {example}"
        ));
    }
    if double && SINGLES.contains(&name.as_str()) {
        return Some(format!(
            "[{name}] is a single table, written [{name}] (single brackets)"
        ));
    }
    None
}

/// What stands for Mosquitto's option `key` here, for "unknown key"
/// messages at the top level (`port = 1883`).
pub(crate) fn mosquitto_key(key: &str) -> Option<String> {
    MOSQUITTO
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(k, h)| format!("Instead of Mosquitto's `{k}`: {h}"))
}

/// A line like `listener 1883` or `allow_anonymous true`: a word, a space,
/// a value, no `=`.
fn mosquitto_line(line: &str) -> Option<String> {
    let line = line.trim();
    if line.contains('=') || line.starts_with(['#', '[']) {
        return None;
    }
    let (word, rest) = line.split_once(char::is_whitespace)?;
    let is_word = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !is_word || rest.trim().is_empty() {
        return None;
    }
    let general = "this looks like a Mosquitto configuration line (`option value`); roost's \
                   file is TOML (`key = value` in [tables]): deploy/roost.toml shows every key";
    Some(match mosquitto_key(word) {
        Some(h) => format!("{general}. {h}"),
        None => general.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_right_shape() {
        let h = hint("listener 1883", "the top level", "expected `.`, `=`").unwrap();
        assert!(h.contains("Mosquitto") && h.contains("[[listener]]"), "{h}");
        let h = hint("sys_interval 10", "the top level", "expected `.`, `=`").unwrap();
        assert!(h.contains("deploy/roost.toml"), "{h}");
        let h = hint(
            "[listener]",
            "[listener]",
            "invalid type: map, expected a sequence",
        )
        .unwrap();
        assert!(h.contains("[[listener]] (double brackets)"), "{h}");
        let h = hint(
            "listener = 1883",
            "the top level",
            "invalid type: integer `1883`, expected a sequence",
        )
        .unwrap();
        assert!(h.contains("[[listener]]"), "{h}");
        let h = hint(
            "[bridges.forward]",
            "[bridges.forward]",
            "invalid type: map, expected a sequence",
        )
        .unwrap();
        assert!(h.contains("[[bridges.forward]]"), "{h}");
        let h = hint("backend = \"memory\"", "[[store]]", "unknown variant").unwrap();
        assert!(h.contains("written [store] (single brackets)"), "{h}");
        assert_eq!(hint("backend = \"x\"", "[store]", "unknown variant"), None);
        assert_eq!(hint("# listener 1883", "the top level", "x"), None);
    }
}
