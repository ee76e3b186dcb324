//! Loading errors and rule evaluation, without a network.

use super::*;
use crate::codec::{ConnectProperties, ProtocolVersion};
use std::sync::OnceLock;

/// A bcrypt hash of "secret" at cost 4 (fast), made once.
fn secret_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password_with_cost("secret", 4).unwrap())
}

fn client(id: &str, user: Option<&str>, remote: Option<&str>) -> Client {
    Client {
        client_id: id.into(),
        username: user.map(Into::into),
        remote_addr: remote.map(|r| r.parse().unwrap()),
        certificate: None,
        protocol: ProtocolVersion::V5,
        inline: false,
    }
}

fn connect(user: Option<&str>, pass: Option<&str>) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: user.map(Into::into),
        password: pass.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
        properties: ConnectProperties::default(),
    }
}

fn err(toml: &str) -> LedgerError {
    Ledger::from_toml_str(toml).expect_err("a load error")
}

fn line_of(e: &LedgerError) -> usize {
    e.location().expect("a location").line
}

#[test]
fn unknown_keys_name_line_and_key() {
    let e = err("[[users]]\nusername = \"a\"\npasword = \"x\"\n");
    assert_eq!(line_of(&e), 3, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("<string>:3:"), "{msg}");
    assert!(msg.contains("pasword"), "{msg}");
    assert!(matches!(e, LedgerError::Syntax { ref key, .. } if key.as_deref() == Some("pasword")));

    let e = err("[[acl]]\nfilter = \"a\"\naccess = \"read\"\nqos = 1\n");
    assert_eq!(line_of(&e), 4, "{e}");
    assert!(e.to_string().contains("qos"), "{e}");

    let e = err("[[rules]]\nallow = true\n");
    assert_eq!(line_of(&e), 1, "{e}");
}

#[test]
fn wrong_types_name_line_and_key() {
    let e = err("[[auth]]\nusername = \"a\"\nallow = \"yes\"\n");
    assert_eq!(line_of(&e), 3, "{e}");
    assert!(
        matches!(e, LedgerError::Syntax { ref key, .. } if key.as_deref() == Some("allow")),
        "{e}"
    );

    let e = err("[[acl]]\nfilter = \"a\"\naccess = \"everything\"\n");
    assert_eq!(line_of(&e), 3, "{e}");
    assert!(e.to_string().contains("access"), "{e}");

    let e = err("[[auth]]\npassword = \"maybe\"\nallow = true\n");
    assert_eq!(line_of(&e), 2, "{e}");

    let e = err("[[auth]]\nanonymous = true\n");
    assert!(e.to_string().contains("allow"), "missing key named: {e}");

    let e = err("[[users]\n");
    assert_eq!(line_of(&e), 1, "{e}");
}

#[test]
fn plaintext_passwords_are_refused() {
    let src = format!(
        "[[users]]\nusername = \"ok\"\npassword = \"{}\"\n\n[[users]]\nusername = \"bob\"\npassword = \"hunter2\"\n",
        secret_hash()
    );
    let e = err(&src);
    assert!(
        matches!(&e, LedgerError::PlaintextPassword { username, location } if username == "bob" && location.line == 7),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("bob") && msg.contains(":7:"), "{msg}");
    assert!(!msg.contains("hunter2"), "the secret is not echoed: {msg}");

    // Look-alikes are not hashes either.
    for fake in ["$2b$10$short", "$argon2id$nonsense", "$1$abc$def", "$2b$"] {
        let src = format!("[[users]]\nusername = \"u\"\npassword = \"{fake}\"\n");
        assert!(
            matches!(err(&src), LedgerError::PlaintextPassword { .. }),
            "{fake}"
        );
    }
}

#[test]
fn bad_values_name_line_and_key() {
    let cases = [
        (
            "[[auth]]\nremote = \"10.0.0.0/33\"\nallow = true\n",
            2,
            "remote",
        ),
        (
            "[[auth]]\nremote = \"10.0.0.1/8\"\nallow = true\n",
            2,
            "remote",
        ),
        (
            "[[auth]]\nremote = \"localhost\"\nallow = true\n",
            2,
            "remote",
        ),
        (
            "[[auth]]\nclient_id = \"dev-?\"\nallow = true\n",
            2,
            "client_id",
        ),
        ("[[auth]]\nusername = \"\"\nallow = true\n", 2, "username"),
        (
            "[[auth]]\nusername = \"a\"\nanonymous = true\nallow = true\n",
            3,
            "anonymous",
        ),
        (
            "[[auth]]\nanonymous = true\npassword = \"required\"\nallow = true\n",
            3,
            "password",
        ),
        (
            "[[acl]]\nfilter = \"a/#/b\"\naccess = \"read\"\n",
            2,
            "filter",
        ),
        (
            "[[acl]]\n\nfilter = \"a/%x\"\naccess = \"read\"\n",
            3,
            "filter",
        ),
        (
            "[[acl]]\nfilter = \"$share/g/a\"\naccess = \"read\"\n",
            2,
            "filter",
        ),
        (
            "[[users]]\nusername = \"\"\npassword = \"x\"\n",
            2,
            "username",
        ),
    ];
    for (src, line, key) in cases {
        let e = err(src);
        assert_eq!(line_of(&e), line, "{src}: {e}");
        assert!(
            matches!(&e, LedgerError::Invalid { key: k, .. } if k == key),
            "{src}: {e}"
        );
        assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
    }
    let dup = format!(
        "[[users]]\nusername = \"a\"\npassword = \"{h}\"\n[[users]]\nusername = \"a\"\npassword = \"{h}\"\n",
        h = secret_hash()
    );
    assert_eq!(line_of(&err(&dup)), 5);
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.toml");
    std::fs::write(&path, "[[acl]]\nfilter = \"a\"\naccess = 3\n").unwrap();
    let e = Ledger::load(&path).unwrap_err();
    assert!(e.to_string().contains("ledger.toml:3:"), "{e}");
    let e = Ledger::load(dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(e, LedgerError::Io { .. }), "{e}");
}

#[test]
fn an_empty_ledger_denies_everything() {
    let l = Ledger::from_toml_str("").unwrap();
    let c = client("c", Some("u"), Some("127.0.0.1:1"));
    assert!(matches!(
        l.auth_outcome(&c, &connect(None, None)),
        AuthOutcome::Deny
    ));
    assert!(!l.may_publish(&c, "a"));
    assert!(!l.may_subscribe(&c, "a"));
    assert!(!l.may_receive(&c, "a"));
}

fn ledger(rest: &str) -> Ledger {
    let src = format!(
        "[[users]]\nusername = \"alice\"\npassword = \"{h}\"\n\n\
         [[users]]\nusername = \"off\"\npassword = \"{h}\"\ndisabled = true\n\n{rest}",
        h = secret_hash()
    );
    Ledger::from_toml_str(&src).unwrap()
}

async fn auth(l: &Ledger, c: &Client, user: Option<&str>, pass: Option<&str>) -> Decision {
    l.authenticate(c, &connect(user, pass)).await
}

#[tokio::test]
async fn auth_rules() {
    let l = ledger(
        "[[auth]]\nremote = \"10.0.0.0/8\"\nallow = false\n\n\
         [[auth]]\nanonymous = true\nremote = \"127.0.0.1/32\"\nallow = true\n\n\
         [[auth]]\nclient_id = \"trusted-*\"\npassword = \"ignored\"\nallow = true\n\n\
         [[auth]]\nallow = true\n",
    );
    let local = |id, user| client(id, user, Some("127.0.0.1:5000"));
    let alice = local("c", Some("alice"));
    assert_eq!(
        auth(&l, &alice, Some("alice"), Some("secret")).await,
        Decision::Allow
    );
    assert_eq!(
        auth(&l, &alice, Some("alice"), Some("nope")).await,
        Decision::Deny
    );
    assert_eq!(auth(&l, &alice, Some("alice"), None).await, Decision::Deny);
    let bob = local("c", Some("bob"));
    assert_eq!(
        auth(&l, &bob, Some("bob"), Some("secret")).await,
        Decision::Deny,
        "unknown user"
    );
    let off = local("c", Some("off"));
    assert_eq!(
        auth(&l, &off, Some("off"), Some("secret")).await,
        Decision::Deny,
        "disabled"
    );
    let off = local("trusted-1", Some("off"));
    assert_eq!(
        auth(&l, &off, Some("off"), None).await,
        Decision::Deny,
        "disabled beats ignored"
    );
    let t = local("trusted-1", Some("bob"));
    assert_eq!(
        auth(&l, &t, Some("bob"), None).await,
        Decision::Allow,
        "password ignored"
    );
    let anon = local("c", None);
    assert_eq!(auth(&l, &anon, None, None).await, Decision::Allow);
    let anon = local("c", Some(""));
    assert_eq!(
        auth(&l, &anon, Some(""), None).await,
        Decision::Allow,
        "empty user name is anonymous"
    );
    let far_anon = client("c", None, Some("192.168.1.1:1"));
    assert_eq!(auth(&l, &far_anon, None, None).await, Decision::Deny);
    let banned = client("c", Some("alice"), Some("10.1.2.3:1"));
    assert_eq!(
        auth(&l, &banned, Some("alice"), Some("secret")).await,
        Decision::Deny,
        "first rule wins"
    );
    let inline = client("trusted-x", Some("bob"), None);
    assert_eq!(
        auth(&l, &inline, Some("bob"), None).await,
        Decision::Allow,
        "no address: remote rules skipped"
    );
}

#[tokio::test]
async fn argon2_hashes_verify() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let hash = a
        .hash_password(
            b"secret",
            &SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap(),
        )
        .unwrap()
        .to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let l = Ledger::from_toml_str(&format!(
        "[[users]]\nusername = \"a\"\npassword = \"{hash}\"\n[[auth]]\nallow = true\n"
    ))
    .unwrap();
    let c = client("c", Some("a"), None);
    assert_eq!(
        auth(&l, &c, Some("a"), Some("secret")).await,
        Decision::Allow
    );
    assert_eq!(
        auth(&l, &c, Some("a"), Some("Secret")).await,
        Decision::Deny
    );
}

#[test]
fn acl_rules() {
    let l = ledger(
        "[[acl]]\nusername = \"admin\"\nfilter = \"#\"\naccess = \"readwrite\"\n\n\
         [[acl]]\nfilter = \"devices/%c/secret\"\naccess = \"deny\"\n\n\
         [[acl]]\nfilter = \"devices/%c/#\"\naccess = \"readwrite\"\n\n\
         [[acl]]\nfilter = \"commands/%c\"\naccess = \"read\"\n\n\
         [[acl]]\nfilter = \"users/%u/#\"\naccess = \"write\"\n\n\
         [[acl]]\nanonymous = true\nfilter = \"public/#\"\naccess = \"read\"\n",
    );
    let admin = client("x", Some("admin"), None);
    assert!(l.may_publish(&admin, "anything/at/all"));
    assert!(l.may_subscribe(&admin, "#"));
    assert!(!l.may_subscribe(&admin, "$SYS/#"), "# does not cover $SYS");

    let d = client("d1", Some("alice"), None);
    assert!(l.may_publish(&d, "devices/d1/temp"));
    assert!(
        !l.may_publish(&d, "devices/d1/secret"),
        "deny before readwrite"
    );
    assert!(!l.may_receive(&d, "devices/d1/secret"));
    assert!(!l.may_publish(&d, "devices/d2/temp"));
    assert!(l.may_subscribe(&d, "devices/d1/+"));
    assert!(
        l.may_subscribe(&d, "devices/d1/#"),
        "the deny rule does not cover it"
    );
    assert!(!l.may_subscribe(&d, "devices/+/temp"));
    assert!(l.may_subscribe(&d, "$share/g/devices/d1/#"));
    assert!(l.may_subscribe(&d, "commands/d1"));
    assert!(!l.may_publish(&d, "commands/d1"), "read only");
    assert!(l.may_publish(&d, "users/alice/x"));
    assert!(!l.may_subscribe(&d, "users/alice/x"), "write only");
    assert!(!l.may_receive(&d, "users/alice/x"));

    // Wildcards in names do not widen rules.
    let plus = client("+", Some("+"), None);
    assert!(!l.may_publish(&plus, "devices/d1/temp"));
    assert!(!l.may_publish(&plus, "users/alice/x"));
    assert!(!l.may_subscribe(&plus, "devices/+/#"));
    let slash = client("d1/x", Some("alice/x"), None);
    assert!(!l.may_publish(&slash, "devices/d1/x/temp"));
    assert!(!l.may_publish(&slash, "users/alice/x/y"));

    let anon = client("p", None, None);
    assert!(l.may_subscribe(&anon, "public/+"));
    assert!(!l.may_subscribe(&anon, "#"));
    assert!(l.may_receive(&anon, "public/news"));
    assert!(!l.may_receive(&anon, "private/x"));
    // Rules without `username` or `anonymous` apply to anonymous clients too.
    assert!(l.may_publish(&anon, "devices/p/x"));
    assert!(!l.may_receive(&anon, "devices/q/x"));
    assert!(!l.may_publish(&anon, "users/p/x"), "no user name for %u");
}

#[test]
fn shared_ledger_swaps() {
    let shared = SharedLedger::new(Ledger::from_toml_str("").unwrap());
    let c = client("c", None, None);
    assert!(!shared.current().may_publish(&c, "a"));
    let old = shared
        .replace(Ledger::from_toml_str("[[acl]]\nfilter = \"a\"\naccess = \"write\"\n").unwrap());
    assert!(!old.may_publish(&c, "a"));
    assert!(shared.clone().current().may_publish(&c, "a"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.toml");
    std::fs::write(&path, "nonsense").unwrap();
    assert!(shared.reload_from(&path).is_err());
    assert!(shared.current().may_publish(&c, "a"), "kept on error");
    std::fs::write(&path, "").unwrap();
    shared.reload_from(&path).unwrap();
    assert!(!shared.current().may_publish(&c, "a"));
}

#[test]
fn debug_output_hides_hashes() {
    let l = ledger("");
    let shown = format!("{l:?}");
    assert!(shown.contains("Bcrypt(..)"), "{shown}");
    assert!(!shown.contains(secret_hash()), "{shown}");
    assert!(hash_password_with_cost("x", 3).is_err());
}
