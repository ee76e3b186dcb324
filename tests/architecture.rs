//! The crate's shape, checked: imports between the broker crate's top-level
//! modules point one way (codec -> ... -> broker -> net -> server -> cli),
//! and the sans-IO layers neither touch I/O, a storage backend nor a clock.
//! ARCHITECTURE.md says why; this test keeps it true as the code grows.
//!
//! It reads the sources as text: every `crate::<module>` path in a file
//! (imports and fully qualified paths alike, comments skipped) is an edge
//! from the file's top-level module to `<module>`. A module may use its own
//! layer and the layers below it. A new top-level module must be given a
//! layer here, so where it sits is a decision, not an accident. Inside a
//! folder, its child modules import each other without circles.

use std::collections::BTreeMap;
use std::path::Path;

/// Top-level modules of `src/`, by layer: a module may import from its own
/// layer and every layer before it, never from a later one.
const LAYERS: &[&[&str]] = &[
    // Leaves: topic names and filters, log escaping, counters, the clock
    // (which the sans-IO layers may not use: see FORBIDDEN_IN_SANS_IO).
    &["topic", "escape", "stats", "clock"],
    &["codec", "config"],
    // Bridges: their configuration (plain, validated data over topics, the
    // codec's types and the configuration helpers) and the sans-IO client
    // side of a bridge's link (codec packets in, packets and events out).
    // And the cluster as plain data (MQTT topics as NATS subjects).
    &["bridge", "cluster"],
    // A message as plain data, the tries, the hook traits.
    &["message", "router"],
    &["hooks"],
    // Between the core and connections: outboxes, intake, reclaim; and the
    // per-client protocol rules that the connection driver and the inline
    // client share.
    &["link"],
    // The ingress rules.
    &["ingress"],
    // The sans-IO core.
    &["broker"],
    // I/O at the edge: sockets, TLS, WebSocket, wire encoding, and the
    // in-process clients (the inline client, the admin handle).
    &["net", "inline", "admin"],
    // Wiring: the server builder, the core and commit tasks.
    &["server", "commit"],
    // The binary.
    &["cli", "main"],
];

/// Layers that must stay sans-IO: no sockets, no async I/O, no storage
/// backend, no clock (time comes in as `now`).
const SANS_IO: &[&str] = &[
    "codec", "topic", "bridge", "cluster", "message", "router", "link", "ingress", "broker",
];

/// What a sans-IO module must not name, and why.
const FORBIDDEN_IN_SANS_IO: &[(&str, &str)] = &[
    ("tokio::io", "async I/O"),
    ("tokio::net", "sockets"),
    ("std::net::TcpStream", "sockets"),
    ("tokio::time", "a timer (time comes in as `now`)"),
    ("SystemTime::now", "a clock (time comes in as `now`)"),
    (
        "crate::clock::Clock",
        "the server's clock (time comes in as `now`)",
    ),
    ("Instant::now", "a clock (time comes in as `now`)"),
    ("std::fs", "the file system"),
    ("roost_storage::sled", "a storage backend"),
    ("roost_storage::redb", "a storage backend"),
    ("SledStore", "a storage backend"),
    ("RedbStore", "a storage backend"),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs,
/// which only declares and re-exports).
fn module_of(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

/// The code of a line, without a `//` comment (doc comments included).
/// Good enough for this crate's sources: `//` inside a string literal on a
/// line that also names a path would hide that path, and none does.
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

/// True for a file that is all test code (`src/**/tests/*.rs`, `tests.rs`).
fn is_test_file(rel: &str) -> bool {
    rel.contains("/tests/") || rel.ends_with("/tests.rs")
}

/// Every rule a file breaks, as readable lines. Unit tests (a file of
/// tests, or the `#[cfg(test)]` module at the end of a file) may use timers
/// and clocks to test the code around them; the import order holds for
/// them too.
fn violations(rel: &str, source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Some(module) = module_of(rel) else {
        return found;
    };
    let Some(own) = layer_of(&module) else {
        found.push(format!(
            "src/{rel}: top-level module `{module}` has no layer in tests/architecture.rs"
        ));
        return found;
    };
    let sans_io = SANS_IO.contains(&module.as_str()) && !is_test_file(rel);
    // Brace depth inside a `#[cfg(test)] mod ... { }`, while in one.
    let mut test_attr = false;
    let mut in_tests: Option<i64> = None;
    for (n, line) in source.lines().enumerate() {
        let code = code(line);
        let opens = code.matches('{').count() as i64;
        let closes = code.matches('}').count() as i64;
        if let Some(depth) = in_tests.as_mut() {
            *depth += opens - closes;
            if *depth <= 0 {
                in_tests = None;
            }
        } else if code.trim_start().starts_with("#[cfg(test)]") {
            test_attr = true;
        } else if test_attr && !code.trim().is_empty() {
            test_attr = false;
            if code.trim_start().starts_with("mod ") && opens > closes {
                in_tests = Some(opens - closes);
            }
        }
        let testing = in_tests.is_some();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let target: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups: check each name at the top of the group.
            let targets: Vec<String> = if target.is_empty() && rest.starts_with('{') {
                let end = rest.find('}').unwrap_or(rest.len());
                rest[1..end]
                    .split(',')
                    .filter_map(|t| t.trim().split("::").next().map(str::to_string))
                    .filter(|t| !t.is_empty())
                    .collect()
            } else {
                vec![target]
            };
            for t in targets {
                let Some(theirs) = layer_of(&t) else { continue };
                if theirs > own {
                    found.push(format!(
                        "src/{rel}:{}: `{module}` (layer {own}) imports `{t}` (layer {theirs}), \
                         a later layer: {}",
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
        if sans_io && !testing {
            for (needle, what) in FORBIDDEN_IN_SANS_IO {
                if code.contains(needle) {
                    found.push(format!(
                        "src/{rel}:{}: `{module}` must stay sans-IO but uses {what} \
                         (`{needle}`): {}",
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src/");
            let rel = rel.to_string_lossy().replace('\\', "/");
            out.insert(rel, std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

/// The sibling modules of one folder that a file names (`super::x` from a
/// file directly in the folder, or `crate::<folder>::x` from anywhere in
/// it), outside comments and test modules.
fn sibling_uses(folder: &str, rel: &str, source: &str, siblings: &[String]) -> Vec<String> {
    let Some(inside) = rel.strip_prefix(folder).and_then(|r| r.strip_prefix('/')) else {
        return Vec::new();
    };
    let direct = !inside.contains('/') || inside.split('/').nth(1) == Some("mod.rs");
    let mut found = Vec::new();
    for line in source.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = code(line);
        let mut prefixes = vec![format!("crate::{folder}::")];
        if direct {
            prefixes.push("super::".to_string());
        }
        for prefix in &prefixes {
            for (i, _) in code.match_indices(prefix.as_str()) {
                let name: String = code[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if siblings.contains(&name) && !found.contains(&name) {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// The child module of `folder` a file under it belongs to.
fn child_of(folder: &str, rel: &str) -> Option<String> {
    let inside = rel.strip_prefix(folder)?.strip_prefix('/')?;
    let first = inside.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "mod").then(|| name.to_string())
}

/// Import circles among the child modules of each folder of `src/`, as
/// paths like `a -> b -> a`: one direction holds inside a layer too.
fn circles(files: &BTreeMap<String, String>) -> Vec<String> {
    let mut folders: Vec<String> = files
        .keys()
        .filter_map(|rel| rel.rsplit_once('/').map(|(dir, _)| dir.to_string()))
        .collect();
    folders.sort();
    folders.dedup();
    let mut found = Vec::new();
    for folder in folders {
        let mut siblings: Vec<String> = files
            .keys()
            .filter_map(|rel| child_of(&folder, rel))
            .collect();
        siblings.sort();
        siblings.dedup();
        let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (rel, src) in files {
            let Some(from) = child_of(&folder, rel) else {
                continue;
            };
            if is_test_file(rel) || from == "tests" {
                continue;
            }
            for to in sibling_uses(&folder, rel, src, &siblings) {
                let out = edges.entry(from.clone()).or_default();
                if to != from && !out.contains(&to) {
                    out.push(to);
                }
            }
        }
        // A depth-first search from each module back to itself.
        for start in edges.keys() {
            let mut stack = vec![vec![start.clone()]];
            while let Some(path) = stack.pop() {
                let last = path.last().expect("never empty");
                for next in edges.get(last).into_iter().flatten() {
                    if next == start {
                        // Report each circle once, from its smallest module.
                        if path.iter().all(|m| m >= start) {
                            found.push(format!("src/{folder}: {} -> {start}", path.join(" -> ")));
                        }
                    } else if !path.contains(next) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push(longer);
                    }
                }
            }
        }
    }
    found
}

#[test]
fn imports_point_one_way_and_the_core_stays_sans_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&root, &root, &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut all: Vec<String> = files
        .iter()
        .flat_map(|(rel, src)| violations(rel, src))
        .collect();
    all.extend(circles(&files));
    assert!(
        all.is_empty(),
        "{} architecture violation(s):\n{}",
        all.len(),
        all.join("\n")
    );
}

// The checker itself: each rule catches a planted violation, so the test
// above cannot pass by checking nothing.

#[test]
fn a_core_module_importing_net_is_caught() {
    let v = violations(
        "broker/session.rs",
        "use crate::codec::Packet;\nuse crate::net::wbuf::WriteBuf;\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("`broker` (layer 7) imports `net`"), "{v:?}");
}

#[test]
fn a_grouped_import_of_a_later_layer_is_caught() {
    let v = violations(
        "link/outbound.rs",
        "use crate::{codec::Packet, broker::Message};\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("imports `broker`"), "{v:?}");
}

#[test]
fn a_fully_qualified_path_is_caught_and_a_comment_is_not() {
    let src = "fn f() -> u64 { crate::server::now_ms() }\n/// See [`crate::net::Peer`].\n";
    let v = violations("link/outbox.rs", src);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("imports `server`"), "{v:?}");
}

#[test]
fn a_clock_or_socket_in_the_core_is_caught() {
    let v = violations(
        "broker/tick.rs",
        "let t = std::time::Instant::now();\nuse tokio::net::TcpStream;\n",
    );
    assert_eq!(v.len(), 2, "{v:?}");
    let v = violations("codec/decode.rs", "use tokio::io::AsyncRead;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    let v = violations("link/outbox.rs", "use crate::clock::Clock;\n");
    assert!(violations("broker/mod.rs", "pub use crate::clock::Now;\n").is_empty());
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(violations("net/duplex.rs", "use crate::clock::Clock;\n").is_empty());
}

#[test]
fn unit_tests_may_use_timers() {
    let src = "fn f() {}\n#[cfg(test)]\nmod tests {\n    use tokio::time::sleep;\n}\n";
    assert!(violations("link/intake.rs", src).is_empty());
    assert!(violations("broker/coalesce/tests.rs", "use tokio::time::sleep;\n").is_empty());
    // ...but not to import a later layer.
    let src = "#[cfg(test)]\nmod tests {\n    use crate::net::Peer;\n}\n";
    assert_eq!(violations("link/intake.rs", src).len(), 1);
    // ...and code after the test module is checked again.
    let src = "#[cfg(test)]\nmod tests {\n    fn f() {\n    }\n}\nfn g() { Instant::now(); }\n";
    assert_eq!(violations("link/intake.rs", src).len(), 1);
}

#[test]
fn the_edge_may_import_the_core() {
    let src = "use crate::broker::Event;\nuse tokio::net::TcpStream;\nInstant::now();\n";
    assert!(violations("net/connection.rs", src).is_empty());
    assert!(violations("server.rs", "use crate::net::Peer;\n").is_empty());
}

#[test]
fn a_circle_between_sibling_modules_is_caught() {
    let files: BTreeMap<String, String> = [
        ("net/a.rs", "use super::b::B;\n"),
        ("net/b.rs", "use crate::net::c::C;\n"),
        ("net/c.rs", "fn f() { super::a::g() }\n"),
        ("net/d.rs", "use super::a::A;\n"),
        ("link/x.rs", "use super::y::Y;\n"),
        ("link/y.rs", "/// Not [`super::x::X`]: a comment.\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(circles(&files), ["src/net: a -> b -> c -> a"]);
}

#[test]
fn bridge_configuration_stays_plain_data() {
    let src =
        "use crate::topic::valid_filter;\nuse crate::codec::QoS;\nuse crate::config::duration;\n";
    assert!(violations("bridge/rule.rs", src).is_empty());
    let v = violations("bridge/config.rs", "use crate::message::Message;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("`bridge` (layer 2) imports `message`"),
        "{v:?}"
    );
    let v = violations("bridge/config.rs", "let f = std::fs::read(path);\n");
    assert_eq!(v.len(), 1, "{v:?}");
}

#[test]
fn an_unplaced_module_is_caught() {
    let v = violations("gadget.rs", "fn f() {}\n");
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("has no layer"), "{v:?}");
}
