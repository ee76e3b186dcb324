//! Client-chosen text (client ids, topics, user names, filters) goes into
//! log lines only through `Escaped`, which writes control characters as
//! escapes: a client id with a line break in it must not forge a log line
//! (`tests/cli.rs` shows it on the real binary). Fields formatted with `%`
//! (Display) are written as they are; those formatted as plain `&str`
//! values are quoted and escaped by `tracing` itself. This test fails when
//! a `%` field of that kind appears without `Escaped`.

use std::path::Path;

const CLIENT_TEXT: [&str; 5] = ["client_id", "topic", "username", "filter", "user"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn client_text_in_log_fields_is_escaped() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut bare = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for field in CLIENT_TEXT {
                let pattern = format!("{field} = %");
                let mut rest = line;
                while let Some(at) = rest.find(&pattern) {
                    let before = rest[..at].chars().last();
                    let after = &rest[at + pattern.len()..];
                    let is_field = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    if is_field && !after.starts_with("Escaped(") {
                        bare.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                    rest = after;
                }
            }
        }
    }
    assert!(
        bare.is_empty(),
        "client-chosen text logged with % but without Escaped:\n{}",
        bare.join("\n")
    );
}
