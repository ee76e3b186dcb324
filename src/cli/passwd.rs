//! `roost passwd`: bcrypt hashes for the auth ledger, printed or written
//! into a ledger file's `[[users]]`.

use super::args::Passwd;
use super::prompt::{self, PromptError};
use super::users::{self, Change, UsersError};
use std::process::ExitCode;

/// Why `roost passwd` failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswdError {
    /// No password was read.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The ledger file was not edited.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] roost::hooks::LedgerError),
}

impl PasswdError {
    /// 2 for what the user can correct by answering again or editing the
    /// file (a mismatch, an empty password, a ledger that does not load),
    /// 1 for I/O.
    fn exit_code(&self) -> u8 {
        match self {
            PasswdError::Prompt(PromptError::Io(_) | PromptError::NoTerminal(_)) => 1,
            PasswdError::Users(UsersError::Io { .. }) => 1,
            _ => 2,
        }
    }
}

/// Runs `roost passwd` with its arguments.
pub(crate) fn run(args: &Passwd) -> ExitCode {
    match passwd(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost passwd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn passwd(args: &Passwd) -> Result<(), PasswdError> {
    if let (Some(file), Some(user)) = (&args.file, &args.delete) {
        let text = read(file)?;
        let edited = users::delete(file, &text, user)?;
        users::check(file, &edited)?;
        users::replace(file, &edited)?;
        println!("deleted user {user:?} from {}", file.display());
        return Ok(());
    }
    // Read the file before asking: a typo in its name or a file that is
    // not a ledger should not cost the user typing a password twice.
    let text = match &args.file {
        Some(file) => {
            let text = read_or_new(file)?;
            if let Some(user) = &args.user {
                users::set_password(file, &text, user, "")?;
            }
            Some(text)
        }
        None => None,
    };
    let password = if args.stdin {
        prompt::from_stdin()?
    } else {
        prompt::from_terminal()?
    };
    let hash = roost::hooks::hash_password_with_cost(&password, args.cost)?;
    match (&args.file, &args.user, text) {
        (Some(file), Some(user), Some(text)) => {
            let (edited, change) = users::set_password(file, &text, user, &hash)?;
            users::check(file, &edited)?;
            users::replace(file, &edited)?;
            match change {
                Change::Added => println!(
                    "added user {user:?} to {} (an [[auth]] rule must allow it to connect)",
                    file.display()
                ),
                _ => println!("updated the password of {user:?} in {}", file.display()),
            }
        }
        (None, Some(user), _) => {
            // A block to append to a ledger: `roost passwd alice >> users.toml`.
            println!(
                "\n[[users]]\nusername = {}\npassword = \"{hash}\"",
                quote(user)
            );
        }
        _ => println!("{hash}"),
    }
    Ok(())
}

fn read(file: &std::path::Path) -> Result<String, UsersError> {
    std::fs::read_to_string(file).map_err(|source| UsersError::Io {
        path: file.to_owned(),
        source,
    })
}

/// The file's text, or nothing for a file that does not exist yet.
fn read_or_new(file: &std::path::Path) -> Result<String, UsersError> {
    match std::fs::read_to_string(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        other => other.map_err(|source| UsersError::Io {
            path: file.to_owned(),
            source,
        }),
    }
}

/// `user` as a TOML string.
fn quote(user: &str) -> String {
    toml_edit::Value::from(user).to_string().trim().to_owned()
}
