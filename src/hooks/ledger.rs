//! The ledger: built-in authentication and ACL from a TOML file (feature
//! `ledger`). See [`Ledger`] for the file format and the rules.

mod cidr;
mod covers;
mod error;
mod glob;
mod template;

pub use error::{LedgerError, LedgerLocation};

use super::{AclHook, AuthHook, BoxFuture, Client, Decision};
use crate::codec::Connect;
use crate::escape::Escaped;
use crate::message::Message;
use cidr::Cidr;
use glob::Glob;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use template::FilterTemplate;
use toml::Spanned;

/// The bcrypt cost [`hash_password`] uses.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Hashes `plain` for a ledger file's `password` key: bcrypt (`$2b$`), cost
/// [`DEFAULT_BCRYPT_COST`], random salt. Takes tens of milliseconds.
///
/// ```
/// let hash = roost::hooks::hash_password("s3cret");
/// assert!(hash.starts_with("$2b$10$"));
/// ```
pub fn hash_password(plain: &str) -> String {
    hash_password_with_cost(plain, DEFAULT_BCRYPT_COST).expect("the default cost is valid")
}

/// Hashes `plain` with bcrypt at `cost` (4 to 31; each step doubles the
/// time). Low costs are for tests only.
pub fn hash_password_with_cost(plain: &str, cost: u32) -> Result<String, LedgerError> {
    bcrypt::hash(plain, cost).map_err(|e| LedgerError::Hash(e.to_string()))
}

// ---- The file, as serde reads it ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    auth: Vec<RawAuth>,
    #[serde(default)]
    acl: Vec<RawAcl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: Spanned<String>,
    password: Spanned<String>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    anonymous: Option<Spanned<bool>>,
    remote: Option<Spanned<String>>,
    password: Option<Spanned<PasswordPolicy>>,
    allow: Spanned<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcl {
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    anonymous: Option<Spanned<bool>>,
    filter: Spanned<String>,
    access: Access,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum PasswordPolicy {
    Required,
    Ignored,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Access {
    Deny,
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    fn write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

// ---- Compiled ----

/// A stored password hash.
#[derive(Clone)]
enum PasswordHash {
    Bcrypt(String),
    Argon2(String),
}

impl std::fmt::Debug for PasswordHash {
    // Hashes stay out of logs: they can be attacked offline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordHash::Bcrypt(_) => "Bcrypt(..)",
            PasswordHash::Argon2(_) => "Argon2(..)",
        })
    }
}

impl PasswordHash {
    /// Recognises a bcrypt or argon2 hash by its prefix, and checks that
    /// it parses; anything else (plaintext above all) is `None`.
    fn parse(s: &str) -> Option<PasswordHash> {
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            let ok = s.len() == 60 && s.parse::<bcrypt::HashParts>().is_ok();
            return ok.then(|| PasswordHash::Bcrypt(s.to_owned()));
        }
        if ["$argon2id$", "$argon2i$", "$argon2d$"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            let ok = argon2::PasswordHash::new(s).is_ok_and(|h| h.hash.is_some());
            return ok.then(|| PasswordHash::Argon2(s.to_owned()));
        }
        None
    }

    /// Whether `password` matches. CPU-heavy: call off the async runtime.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Argon2(h) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password, &parsed)
                        .is_ok()
                })
            }
        }
    }
}

#[derive(Debug, Clone)]
struct User {
    hash: PasswordHash,
    disabled: bool,
}

/// Which user names a rule matches.
#[derive(Debug, Clone)]
enum UserMatch {
    Any,
    Anonymous,
    Named,
    Glob(Glob),
}

/// The client-matching part of a rule.
#[derive(Debug, Clone)]
struct Who {
    client_id: Option<Glob>,
    username: UserMatch,
}

impl Who {
    fn matches(&self, client: &Client) -> bool {
        if let Some(g) = &self.client_id {
            if !g.matches(&client.client_id) {
                return false;
            }
        }
        match (&self.username, username(client)) {
            (UserMatch::Any, _) | (UserMatch::Anonymous, None) | (UserMatch::Named, Some(_)) => {
                true
            }
            (UserMatch::Glob(g), Some(u)) => g.matches(u),
            _ => false,
        }
    }
}

/// The client's user name; an empty one counts as none.
fn username(client: &Client) -> Option<&str> {
    client.username.as_deref().filter(|u| !u.is_empty())
}

#[derive(Debug, Clone)]
struct AuthRule {
    who: Who,
    remote: Option<Cidr>,
    password: PasswordPolicy,
    allow: bool,
    line: usize,
}

#[derive(Debug, Clone)]
struct AclRule {
    who: Who,
    filter: FilterTemplate,
    access: Access,
    line: usize,
}

/// What the auth rules say before any hash is checked.
enum AuthOutcome {
    Allow,
    Deny,
    /// Allowed if `password` verifies against `hash`.
    Verify {
        hash: PasswordHash,
        password: Vec<u8>,
    },
}

/// Users, auth rules and ACL rules, compiled from a ledger file.
///
/// A [`Ledger`] holds users with password hashes, ordered `[[auth]]` rules
/// (who may connect) and ordered `[[acl]]` rules (who may publish,
/// subscribe and receive what). It implements [`AuthHook`] and
/// [`AclHook`]; once installed it is the gatekeeper: what no rule allows is
/// denied. [`SharedLedger`] is the same behind a handle whose ledger can be
/// replaced while the server runs.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use roost::hooks::SharedLedger;
/// let ledger = SharedLedger::load("ledger.toml")?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:1883").await?;
/// roost::Server::new(roost::Options::default())
///     .auth_hook(ledger.clone())
///     .acl_hook(ledger.clone())
///     .tcp(listener)
///     .serve(std::future::pending())
///     .await?;
/// # Ok(()) }
/// ```
///
/// # File format
///
/// ```toml
/// [[users]]
/// username = "alice"                # required, non-empty, unique
/// password = "$2b$10$..."           # required: a bcrypt or argon2 hash, never plaintext (`roost passwd`)
/// disabled = false                  # optional: a disabled user can never connect
///
/// [[auth]]                          # evaluated in file order; the first match decides
/// client_id = "dev-*"               # optional glob (`*` = any characters)
/// username = "alice"                # optional glob: matches clients WITH a matching user name
/// anonymous = true                  # optional: true = only clients without a user name,
///                                   #           false = only clients with one
/// remote = "10.0.0.0/8"             # optional: an IP address or CIDR network (IPv4 or IPv6)
/// password = "required"             # optional: "required" (default) or "ignored"
/// allow = true                      # required
///
/// [[acl]]                           # evaluated in file order; the first match decides
/// client_id = "dev-*"               # optional glob
/// username = "alice"                # optional glob (clients with a matching user name)
/// anonymous = false                 # optional, as in [[auth]]
/// filter = "devices/%c/#"           # required: a topic filter; %u = user name, %c = client id, %% = %
/// access = "readwrite"              # required: "deny", "read", "write" or "readwrite"
/// ```
///
/// Every section is optional; an empty file denies everything. Unknown
/// keys, values of the wrong type, bad globs (empty, or with `? [ ] { }`),
/// bad networks (including host bits set, as in `10.0.0.1/8`), invalid
/// filters, duplicate users and plaintext passwords are load errors that
/// name the file, line, column and key ([`LedgerError`]).
///
/// **Passwords** are bcrypt hashes (`$2b$`, `$2a$`, `$2y$`) or argon2 PHC
/// strings (`$argon2id$`, `$argon2i$`, `$argon2d$`), told apart by prefix.
/// Make one with `roost passwd` (which can also set it in the file:
/// `roost passwd --file ledger.toml alice`), or with [`hash_password`].
///
/// **Anonymous clients** are those whose CONNECT has no user name, or an
/// empty one. Only a rule with `anonymous = true` or with neither
/// `username` nor `anonymous` matches them; `username = ""` is refused
/// (use `anonymous = true`).
///
/// # Connecting
///
/// 1. A client whose user name belongs to a `disabled` user is refused,
///    whatever the rules say.
/// 2. The first `[[auth]]` rule whose `client_id`, `username`/`anonymous`
///    and `remote` all match decides (a rule with `remote` never matches
///    the inline client, which has no address):
///    - `allow = false`: refused;
///    - `allow = true, password = "ignored"`: accepted;
///    - `allow = true, password = "required"`: accepted only if the user
///      is in `[[users]]` and the CONNECT's password verifies against its
///      hash. Rules with `anonymous = true` default to `"ignored"` and may
///      not say `"required"`.
/// 3. No rule matches: refused.
///
/// A refusal answers CONNACK 0x86 (3.x return code 4). Verifying a hash
/// takes tens of milliseconds of CPU, so it runs on
/// `tokio::task::spawn_blocking`, never on the connection's task.
///
/// # Topics
///
/// A rule applies to a client when its `client_id`, `username` and
/// `anonymous` match (absent fields match anyone) and its filter can be
/// filled in for that client (see below). Then:
///
/// - **publish to topic T**: the first applicable rule whose filter
///   matches T decides: `write` or `readwrite` allows, `read` or `deny`
///   refuses (PUBACK/PUBREC 0x87 for 5.0).
/// - **subscribe to filter F**: the first applicable rule whose filter
///   *covers* F (matches every topic F can match) decides: `read` or
///   `readwrite` allows, `write` or `deny` refuses (SUBACK 0x87, 0x80 for
///   3.x). For `$share/{group}/F` the rule must cover F. A `deny` rule
///   that only overlaps F does not decide the subscription; the delivery
///   check below still keeps those messages away.
/// - **delivery of a message on topic T**: as publish, but `read` or
///   `readwrite` allows.
/// - No rule decides: refused.
///
/// Rules are evaluated in file order, so put narrow rules (and `deny`
/// rules) before broad ones.
///
/// **Placeholders.** `%u` is the client's user name and `%c` its client
/// id. A rule does not apply to a client whose value for a placeholder it
/// uses is missing, empty, starts with `$`, or contains `+`, `#`, `/` or
/// U+0000: a user named `+` gets nothing from `users/%u/#`, rather than
/// `users/+/#`.
///
/// # Replacing at run time
///
/// [`SharedLedger::replace`] and [`SharedLedger::reload_from`] swap the
/// ledger atomically. Connected clients stay connected (they are not
/// authenticated again); their later publishes, subscriptions and
/// deliveries are judged by the new ledger, and so are new connections.
/// To disconnect the clients of users the new ledger removes or disables
/// (as the `roost` binary does on SIGHUP), pass [`Ledger::revokes`] to
/// [`Admin::disconnect_users`](crate::admin::Admin::disconnect_users).
#[derive(Debug, Clone)]
pub struct Ledger {
    users: HashMap<String, User>,
    auth: Vec<AuthRule>,
    acl: Vec<AclRule>,
}

/// Turns the raw file into rules; errors point into `source`.
struct Compiler<'a> {
    file: &'a str,
    source: &'a str,
}

impl Compiler<'_> {
    fn invalid(
        &self,
        s: std::ops::Range<usize>,
        key: &str,
        reason: impl Into<String>,
    ) -> LedgerError {
        LedgerError::invalid(self.file, self.source, s, key, reason)
    }

    fn line(&self, offset: usize) -> usize {
        LedgerLocation::at(self.file, self.source, offset).line
    }

    fn glob(&self, g: &Spanned<String>, key: &str) -> Result<Glob, LedgerError> {
        Glob::new(g.get_ref()).map_err(|reason| {
            let reason = if g.get_ref().is_empty() && key == "username" {
                "an empty pattern matches nothing; anonymous clients are matched by `anonymous = true`"
                    .to_owned()
            } else {
                reason
            };
            self.invalid(g.span(), key, reason)
        })
    }

    fn who(
        &self,
        client_id: &Option<Spanned<String>>,
        user: &Option<Spanned<String>>,
        anonymous: &Option<Spanned<bool>>,
    ) -> Result<Who, LedgerError> {
        let client_id = client_id
            .as_ref()
            .map(|g| self.glob(g, "client_id"))
            .transpose()?;
        let username = match (user, anonymous) {
            (Some(_), Some(a)) if *a.get_ref() => {
                return Err(self.invalid(
                    a.span(),
                    "anonymous",
                    "a rule with `username` cannot match anonymous clients",
                ))
            }
            (Some(g), _) => UserMatch::Glob(self.glob(g, "username")?),
            (None, Some(a)) if *a.get_ref() => UserMatch::Anonymous,
            (None, Some(_)) => UserMatch::Named,
            (None, None) => UserMatch::Any,
        };
        Ok(Who {
            client_id,
            username,
        })
    }

    fn compile(&self, raw: RawFile) -> Result<Ledger, LedgerError> {
        let mut users = HashMap::new();
        for u in raw.users {
            let name = u.username.get_ref();
            if name.is_empty() {
                return Err(self.invalid(u.username.span(), "username", "must not be empty"));
            }
            let hash = PasswordHash::parse(u.password.get_ref()).ok_or_else(|| {
                LedgerError::PlaintextPassword {
                    location: LedgerLocation::at(self.file, self.source, u.password.span().start),
                    username: name.clone(),
                }
            })?;
            let user = User {
                hash,
                disabled: u.disabled,
            };
            if users.insert(name.clone(), user).is_some() {
                return Err(self.invalid(
                    u.username.span(),
                    "username",
                    format!("user `{name}` is defined twice"),
                ));
            }
        }

        let mut auth = Vec::new();
        for r in raw.auth {
            let who = self.who(&r.client_id, &r.username, &r.anonymous)?;
            let remote = r
                .remote
                .as_ref()
                .map(|c| Cidr::parse(c.get_ref()).map_err(|e| self.invalid(c.span(), "remote", e)))
                .transpose()?;
            let anonymous_only = matches!(who.username, UserMatch::Anonymous);
            let password = match &r.password {
                Some(p) if anonymous_only && *p.get_ref() == PasswordPolicy::Required => {
                    return Err(self.invalid(
                        p.span(),
                        "password",
                        "anonymous clients have no password to check: use \"ignored\" or leave it out",
                    ))
                }
                Some(p) => *p.get_ref(),
                None if anonymous_only => PasswordPolicy::Ignored,
                None => PasswordPolicy::Required,
            };
            // The line of the rule: that of its first key.
            let first = [&r.client_id, &r.username, &r.remote]
                .iter()
                .filter_map(|k| k.as_ref().map(|s| s.span().start))
                .chain(r.anonymous.as_ref().map(|a| a.span().start))
                .chain(r.password.as_ref().map(|p| p.span().start))
                .fold(r.allow.span().start, usize::min);
            let line = self.line(first);
            auth.push(AuthRule {
                who,
                remote,
                password,
                allow: *r.allow.get_ref(),
                line,
            });
        }

        let mut acl = Vec::new();
        for r in raw.acl {
            let who = self.who(&r.client_id, &r.username, &r.anonymous)?;
            let filter = FilterTemplate::parse(r.filter.get_ref())
                .map_err(|e| self.invalid(r.filter.span(), "filter", e))?;
            acl.push(AclRule {
                who,
                filter,
                access: r.access,
                line: self.line(r.filter.span().start),
            });
        }
        Ok(Ledger { users, auth, acl })
    }
}

impl Ledger {
    /// Reads and compiles a ledger file. Blocking (it reads the file).
    pub fn load(path: impl AsRef<Path>) -> Result<Ledger, LedgerError> {
        let path = path.as_ref();
        let source = std::fs::read_to_string(path).map_err(|source| LedgerError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &source)
    }

    /// Compiles a ledger from TOML text; errors name the file `<string>`.
    pub fn from_toml_str(source: &str) -> Result<Ledger, LedgerError> {
        Self::parse("<string>", source)
    }

    fn parse(file: &str, source: &str) -> Result<Ledger, LedgerError> {
        let raw: RawFile =
            toml::from_str(source).map_err(|e| LedgerError::from_toml(file, source, &e))?;
        Compiler { file, source }.compile(raw)
    }

    /// Whether `[[users]]` has `username`.
    pub fn has_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Whether `username` is a user marked `disabled`.
    pub fn is_disabled(&self, username: &str) -> bool {
        self.users.get(username).is_some_and(|u| u.disabled)
    }

    /// Whether replacing `old` with this ledger takes away `username`'s
    /// right to be connected: the user is disabled here, or was in `old`'s
    /// `[[users]]` and is not here. (A client let in without a password,
    /// by a `password = "ignored"` rule, is judged by its rules alone at
    /// its next connection.)
    pub fn revokes(&self, old: &Ledger, username: &str) -> bool {
        self.is_disabled(username) || (old.has_user(username) && !self.has_user(username))
    }

    fn auth_outcome(&self, client: &Client, connect: &Connect) -> AuthOutcome {
        let user = username(client).and_then(|u| self.users.get(u));
        if user.is_some_and(|u| u.disabled) {
            tracing::debug!(client_id = %Escaped(&client.client_id), "ledger: user is disabled");
            return AuthOutcome::Deny;
        }
        let remote = client.remote_addr.map(|a| a.ip());
        let rule = self.auth.iter().find(|r| {
            r.who.matches(client)
                && r.remote
                    .as_ref()
                    .is_none_or(|c| remote.is_some_and(|ip| c.contains(ip)))
        });
        let Some(rule) = rule else {
            tracing::debug!(client_id = %Escaped(&client.client_id), "ledger: no auth rule matches");
            return AuthOutcome::Deny;
        };
        match (rule.allow, rule.password, user) {
            (false, _, _) => {
                tracing::debug!(client_id = %Escaped(&client.client_id), line = rule.line, "ledger: auth rule denies");
                AuthOutcome::Deny
            }
            (true, PasswordPolicy::Ignored, _) => AuthOutcome::Allow,
            (true, PasswordPolicy::Required, Some(user)) => match &connect.password {
                Some(p) => AuthOutcome::Verify {
                    hash: user.hash.clone(),
                    password: p.to_vec(),
                },
                None => AuthOutcome::Deny,
            },
            (true, PasswordPolicy::Required, None) => {
                tracing::debug!(client_id = %Escaped(&client.client_id), "ledger: unknown user");
                AuthOutcome::Deny
            }
        }
    }

    /// The first applicable ACL rule whose filter satisfies `test`.
    fn acl_rule(&self, client: &Client, test: impl Fn(&str) -> bool) -> Option<&AclRule> {
        self.acl
            .iter()
            .find(|r| r.who.matches(client) && r.filter.expand(client).is_some_and(|f| test(&f)))
    }

    fn may_publish(&self, client: &Client, topic: &str) -> bool {
        let rule = self.acl_rule(client, |f| crate::topic::matches(f, topic));
        let ok = rule.is_some_and(|r| r.access.write());
        if !ok {
            let line = rule.map(|r| r.line);
            tracing::debug!(client_id = %Escaped(&client.client_id), topic, ?line, "ledger: publish denied");
        }
        ok
    }

    fn may_subscribe(&self, client: &Client, filter: &str) -> bool {
        let plain = crate::topic::parse_filter(filter).filter();
        let rule = self.acl_rule(client, |f| covers::covers(f, plain));
        let ok = rule.is_some_and(|r| r.access.read());
        if !ok {
            let line = rule.map(|r| r.line);
            tracing::debug!(client_id = %Escaped(&client.client_id), filter, ?line, "ledger: subscribe denied");
        }
        ok
    }

    fn may_receive(&self, client: &Client, topic: &str) -> bool {
        let rule = self.acl_rule(client, |f| crate::topic::matches(f, topic));
        let ok = rule.is_some_and(|r| r.access.read());
        if !ok {
            let line = rule.map(|r| r.line);
            tracing::trace!(client_id = %Escaped(&client.client_id), topic, ?line, "ledger: delivery denied");
        }
        ok
    }
}

fn decision(allowed: bool) -> Decision {
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

/// Resolves an [`AuthOutcome`], verifying a hash on the blocking pool.
async fn resolve(outcome: AuthOutcome) -> Decision {
    match outcome {
        AuthOutcome::Allow => Decision::Allow,
        AuthOutcome::Deny => Decision::Deny,
        AuthOutcome::Verify { hash, password } => {
            let ok = tokio::task::spawn_blocking(move || hash.verify(&password))
                .await
                .unwrap_or(false);
            decision(ok)
        }
    }
}

impl AuthHook for Ledger {
    fn authenticate<'a>(
        &'a self,
        client: &'a Client,
        connect: &'a Connect,
    ) -> BoxFuture<'a, Decision> {
        Box::pin(resolve(self.auth_outcome(client, connect)))
    }
}

impl AclHook for Ledger {
    fn can_publish<'a>(&'a self, client: &'a Client, topic: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(decision(
            self.may_publish(client, topic),
        )))
    }

    fn can_subscribe<'a>(&'a self, client: &'a Client, filter: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(decision(
            self.may_subscribe(client, filter),
        )))
    }

    fn can_receive(&self, client: &Client, message: &Message) -> Decision {
        decision(self.may_receive(client, &message.topic))
    }
}

/// A [`Ledger`] that can be replaced while the server runs. Clones share
/// the same ledger: install one clone as the auth hook and another as the
/// ACL hook, and keep a third to call [`replace`](Self::replace) or
/// [`reload_from`](Self::reload_from).
#[derive(Debug, Clone)]
pub struct SharedLedger {
    // Invariant: the lock is held only to clone or swap the `Arc`, never
    // across an await or a hash check, so readers never wait long.
    current: Arc<RwLock<Arc<Ledger>>>,
}

impl SharedLedger {
    /// Shares `ledger`.
    pub fn new(ledger: Ledger) -> SharedLedger {
        SharedLedger {
            current: Arc::new(RwLock::new(Arc::new(ledger))),
        }
    }

    /// Loads a ledger file ([`Ledger::load`]) and shares it.
    pub fn load(path: impl AsRef<Path>) -> Result<SharedLedger, LedgerError> {
        Ledger::load(path).map(SharedLedger::new)
    }

    /// The ledger in force now.
    pub fn current(&self) -> Arc<Ledger> {
        // A panic elsewhere cannot leave the `Arc` half-written: ignore poisoning.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `ledger` in force for every later check; returns the old one
    /// (see [`Ledger::revokes`] to find whom to disconnect). Connected
    /// clients stay connected.
    pub fn replace(&self, ledger: Ledger) -> Arc<Ledger> {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, Arc::new(ledger))
    }

    /// Loads `path` and puts it in force. On error the ledger in force
    /// stays. Blocking (it reads the file).
    pub fn reload_from(&self, path: impl AsRef<Path>) -> Result<(), LedgerError> {
        self.replace(Ledger::load(path)?);
        Ok(())
    }
}

impl AuthHook for SharedLedger {
    fn authenticate<'a>(
        &'a self,
        client: &'a Client,
        connect: &'a Connect,
    ) -> BoxFuture<'a, Decision> {
        let outcome = self.current().auth_outcome(client, connect);
        Box::pin(resolve(outcome))
    }
}

impl AclHook for SharedLedger {
    fn can_publish<'a>(&'a self, client: &'a Client, topic: &'a str) -> BoxFuture<'a, Decision> {
        let d = decision(self.current().may_publish(client, topic));
        Box::pin(std::future::ready(d))
    }

    fn can_subscribe<'a>(&'a self, client: &'a Client, filter: &'a str) -> BoxFuture<'a, Decision> {
        let d = decision(self.current().may_subscribe(client, filter));
        Box::pin(std::future::ready(d))
    }

    fn can_receive(&self, client: &Client, message: &Message) -> Decision {
        decision(self.current().may_receive(client, &message.topic))
    }
}

#[cfg(test)]
mod tests;
