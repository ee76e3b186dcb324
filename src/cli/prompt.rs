//! Reading a password: from the terminal without echo, or one line of
//! standard input for scripts. Never from the command line, where other
//! users see it in `ps` and it stays in shell history.

use std::io::{BufRead, Write};

/// Why no password was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PromptError {
    /// No terminal to ask on.
    #[error(
        "no terminal to ask for the password on ({0}); pass --stdin to read it from \
         standard input"
    )]
    NoTerminal(std::io::Error),
    /// Reading or writing the terminal or standard input failed.
    #[error("cannot read the password: {0}")]
    Io(#[from] std::io::Error),
    /// The two entries differ.
    #[error("the passwords do not match")]
    Mismatch,
    /// Nothing was entered.
    #[error("the password is empty")]
    Empty,
    /// Standard input ended before a line.
    #[error("standard input is empty: expected the password on one line")]
    NoInput,
}

/// One line of standard input, without its line ending.
pub(crate) fn from_stdin() -> Result<String, PromptError> {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Err(PromptError::NoInput);
    }
    non_empty(strip_line_end(line))
}

/// Asks twice on the controlling terminal, with echo off.
pub(crate) fn from_terminal() -> Result<String, PromptError> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(PromptError::NoTerminal)?;
    let first = non_empty(ask(&tty, "Password: ")?)?;
    let second = ask(&tty, "Password again: ")?;
    if first != second {
        return Err(PromptError::Mismatch);
    }
    Ok(first)
}

fn non_empty(s: String) -> Result<String, PromptError> {
    if s.is_empty() {
        Err(PromptError::Empty)
    } else {
        Ok(s)
    }
}

fn strip_line_end(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

/// Writes `prompt` to the terminal and reads one line with echo off.
fn ask(tty: &std::fs::File, prompt: &str) -> Result<String, PromptError> {
    // Echo goes off before the prompt shows: what is typed once it shows
    // is never echoed (turning echo off discards what was typed ahead).
    let _quiet = Quiet::new(tty)?;
    let mut out = tty;
    out.write_all(prompt.as_bytes())?;
    out.flush()?;
    let mut line = String::new();
    std::io::BufReader::new(tty).read_line(&mut line)?;
    Ok(strip_line_end(line))
}

/// Echo off on a terminal while it lives; the previous settings come back
/// when it drops, on every return path. (A SIGINT while it lives ends the
/// process without restoring them, as with `read -s` in a shell;
/// `stty sane` fixes the terminal.)
#[cfg(unix)]
struct Quiet<'a> {
    tty: &'a std::fs::File,
    saved: rustix::termios::Termios,
}

#[cfg(unix)]
impl<'a> Quiet<'a> {
    fn new(tty: &'a std::fs::File) -> std::io::Result<Self> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        let saved = tcgetattr(tty)?;
        let mut quiet = saved.clone();
        // No echo of the characters, but of the Enter that ends the line,
        // so that the next prompt starts on a line of its own.
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(tty, OptionalActions::Flush, &quiet)?;
        Ok(Quiet { tty, saved })
    }
}

#[cfg(unix)]
impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            self.tty,
            rustix::termios::OptionalActions::Flush,
            &self.saved,
        );
    }
}

/// Elsewhere there is no termios: refuse rather than echo the password.
#[cfg(not(unix))]
struct Quiet;

#[cfg(not(unix))]
impl Quiet {
    fn new(_tty: &std::fs::File) -> std::io::Result<Self> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "cannot turn echo off on this platform; use --stdin",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_are_not_part_of_the_password() {
        assert_eq!(strip_line_end("pw\n".into()), "pw");
        assert_eq!(strip_line_end("pw\r\n".into()), "pw");
        assert_eq!(strip_line_end("pw".into()), "pw");
        assert_eq!(strip_line_end("p w \n\n".into()), "p w \n");
    }
}
