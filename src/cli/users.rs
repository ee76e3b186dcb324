//! The `[[users]]` of a ledger file, edited in place for `roost passwd
//! --file`: one user's password set, a user added or deleted, and every
//! other line (comments, rules, layout) left as it was. The result is
//! checked as a ledger before it replaces the file, and replaces it
//! atomically, with the old file's permissions and owner.

use std::io::Write;
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item, Table};

/// Why a ledger file was not edited.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsersError {
    /// Not TOML: nothing can be edited safely.
    #[error("{}: not a TOML file: {message}", path.display())]
    NotToml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// `users` is there, but not as `[[users]]` tables.
    #[error(
        "{}: `users` is not written as [[users]] tables; roost passwd edits only those",
        path.display()
    )]
    Shape {
        /// The file.
        path: PathBuf,
    },
    /// `--delete` of a user the file does not have.
    #[error("{}: no user {user:?}", path.display())]
    NoSuchUser {
        /// The file.
        path: PathBuf,
        /// The user asked for.
        user: String,
    },
    /// The edited file would not load as a ledger (it did not before, or a
    /// rule names something amiss): nothing was written.
    #[error("not written: the edited ledger would not load: {0}")]
    Invalid(String),
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What an edit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The user was new.
    Added,
    /// The user's password was replaced.
    Updated,
}

/// `text` with `user`'s password set to `hash`: the existing `[[users]]`
/// entry's value replaced (its comment kept), or a new entry after the last
/// one (at the end when there is none).
pub(crate) fn set_password(
    path: &Path,
    text: &str,
    user: &str,
    hash: &str,
) -> Result<(String, Change), UsersError> {
    let mut doc = parse(path, text)?;
    let users = users(path, &mut doc)?;
    let existing = users.iter().position(|t| is_user(t, user));
    let change = match existing.and_then(|i| users.get_mut(i)) {
        Some(table) => {
            match table.get_mut("password").and_then(Item::as_value_mut) {
                Some(value) => {
                    let decor = value.decor().clone();
                    *value = hash.into();
                    *value.decor_mut() = decor;
                }
                None => table["password"] = toml_edit::value(hash),
            }
            Change::Updated
        }
        None => {
            let mut table = Table::new();
            table["username"] = toml_edit::value(user);
            table["password"] = toml_edit::value(hash);
            users.push(table);
            Change::Added
        }
    };
    Ok((doc.to_string(), change))
}

/// `text` without `user`'s `[[users]]` entry (and the comment lines just
/// above its header, which belong to it).
pub(crate) fn delete(path: &Path, text: &str, user: &str) -> Result<String, UsersError> {
    let mut doc = parse(path, text)?;
    let users = users(path, &mut doc)?;
    let Some(i) = users.iter().position(|t| is_user(t, user)) else {
        return Err(UsersError::NoSuchUser {
            path: path.to_owned(),
            user: user.to_owned(),
        });
    };
    users.remove(i);
    let edited = doc.to_string();
    // The blank line that separated the first entry from the next one
    // would otherwise open the file.
    Ok(match text.starts_with('\n') {
        true => edited,
        false => edited.trim_start_matches('\n').to_owned(),
    })
}

/// Checks `text` as the broker will load it.
pub(crate) fn check(path: &Path, text: &str) -> Result<(), UsersError> {
    roost::hooks::Ledger::from_toml_str(text)
        .map(drop)
        .map_err(|e| {
            // Name the file, not `<string>`, before the line and column.
            let file = path.display().to_string();
            UsersError::Invalid(e.to_string().replacen("<string>", &file, 1))
        })
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, UsersError> {
    text.parse()
        .map_err(|e: toml_edit::TomlError| UsersError::NotToml {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
}

/// The `[[users]]` array, made if missing.
fn users<'d>(
    path: &Path,
    doc: &'d mut DocumentMut,
) -> Result<&'d mut toml_edit::ArrayOfTables, UsersError> {
    doc.entry("users")
        .or_insert(Item::ArrayOfTables(toml_edit::ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| UsersError::Shape {
            path: path.to_owned(),
        })
}

fn is_user(table: &Table, user: &str) -> bool {
    table.get("username").and_then(Item::as_str) == Some(user)
}

/// Replaces the file at `path` (following a symbolic link to the file it
/// names) with `text`: written to a new file beside it, flushed to disk,
/// given the old file's mode and owner, then renamed over it, so the broker
/// (reloading on SIGHUP) reads the old file or the new one, never half of
/// one. A missing file is created, readable by its owner only.
pub(crate) fn replace(path: &Path, text: &str) -> Result<(), UsersError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| UsersError::Io { path, source }
    };
    let target = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(io(path)(e)),
    };
    let old = match std::fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&target)(e)),
    };
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.roost-passwd-{}", std::process::id()));
    let written = write_new(&temp, text, old.as_ref())
        .and_then(|()| std::fs::rename(&temp, &target).map_err(|e| io(&target)(e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // The rename is durable once the directory is flushed too.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_new(temp: &Path, text: &str, old: Option<&std::fs::Metadata>) -> Result<(), UsersError> {
    let err = |source| UsersError::Io {
        path: temp.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        // Hashes can be attacked offline: never readable by others, not
        // even for the moment before the old mode is copied.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(temp).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    if let Some(old) = old {
        #[cfg(unix)]
        {
            // The broker may run as another user than the one editing (root
            // editing a file the `roost` user reads): keep the owner.
            use std::os::unix::fs::MetadataExt;
            if let Err(e) = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())) {
                // Only root may give a file away; anyone else keeps their
                // own file's owner by construction, unless the file was
                // someone else's: then say so rather than change it.
                if e.kind() != std::io::ErrorKind::PermissionDenied {
                    return Err(err(e));
                }
                if old.uid() != std::fs::metadata(temp).map_err(err)?.uid() {
                    return Err(err(std::io::Error::new(
                        e.kind(),
                        "cannot keep the ledger's owner (run as its owner or root)",
                    )));
                }
            }
        }
        file.set_permissions(old.permissions()).map_err(err)?;
    }
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "$2b$04$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str = "$2b$04$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    const LEDGER: &str = "\
# The site's users.

[[users]]
username = \"alice\"
password = \"$2b$04$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" # set 2024
disabled = false

# ---- Who may connect ----
[[auth]]
username = \"*\"
allow = true
";

    fn p() -> &'static Path {
        Path::new("users.toml")
    }

    #[test]
    fn updating_replaces_only_the_hash() {
        let (text, change) = set_password(p(), LEDGER, "alice", HASH_B).unwrap();
        assert_eq!(change, Change::Updated);
        assert_eq!(text, LEDGER.replace(HASH_A, HASH_B));
    }

    #[test]
    fn a_new_user_follows_the_last_one() {
        let (text, change) = set_password(p(), LEDGER, "bob", HASH_B).unwrap();
        assert_eq!(change, Change::Added);
        let bob = format!("[[users]]\nusername = \"bob\"\npassword = \"{HASH_B}\"\n");
        let at = text.find(&bob).expect(&text);
        assert!(at < text.find("# ---- Who").unwrap(), "{text}");
        assert_eq!(text.replacen(&bob, "", 1).replace("\n\n\n", "\n\n"), LEDGER);
        // And into a file without users: at the end.
        let (text, _) = set_password(p(), "[[auth]]\nallow = false\n", "bob", HASH_B).unwrap();
        assert!(text.ends_with(&bob), "{text}");
        assert!(text.starts_with("[[auth]]\nallow = false\n"), "{text}");
    }

    #[test]
    fn deleting_removes_the_entry() {
        let (two, _) = set_password(p(), LEDGER, "bob", HASH_B).unwrap();
        let text = delete(p(), &two, "alice").unwrap();
        assert!(!text.contains("alice") && text.contains("bob"), "{text}");
        assert!(
            text.contains("# ---- Who may connect ----\n[[auth]]"),
            "{text}"
        );
        assert!(matches!(
            delete(p(), LEDGER, "carol"),
            Err(UsersError::NoSuchUser { .. })
        ));
    }

    #[test]
    fn other_shapes_are_refused() {
        let inline = "users = [{ username = \"a\", password = \"x\" }]\n";
        assert!(matches!(
            set_password(p(), inline, "a", HASH_B),
            Err(UsersError::Shape { .. })
        ));
        assert!(matches!(
            set_password(p(), "users = [", "a", HASH_B),
            Err(UsersError::NotToml { .. })
        ));
    }
}
