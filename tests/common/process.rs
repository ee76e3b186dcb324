//! The real `roost` binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running `roost` process; killed (SIGKILL) when dropped.
pub(crate) struct Broker {
    pub child: Child,
    /// The "mqtt tcp" listener (`0.0.0.0:0` when there is none).
    pub addr: SocketAddr,
    /// Every "<what> listening on <addr>" line, as ("mqtt tcp", addr).
    pub listeners: Vec<(String, SocketAddr)>,
    /// Every start-up line on stdout, up to and including the store line.
    pub lines: Vec<String>,
}

/// `roost ARGS`, stdout piped, stderr discarded.
pub(crate) fn roost(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roost"));
    cmd.args(args).stderr(Stdio::null());
    cmd
}

/// Runs `roost ARGS` in `dir` to its end (stdin closed), for commands
/// that exit: check-config, --print-config, refusals.
pub(crate) fn run_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("roost runs")
}

/// What a finished `roost` wrote to stderr.
pub(crate) fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl Broker {
    /// Starts `roost ARGS` and waits for its start-up lines.
    pub(crate) fn start(args: &[&str]) -> Broker {
        Self::spawn(roost(args))
    }

    /// Starts `cmd` (stdout is piped here; stderr as `cmd` says) and reads
    /// its start-up lines: one per listener, then the store line.
    pub(crate) fn spawn(mut cmd: Command) -> Broker {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("roost binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let mut listeners = Vec::new();
        loop {
            let line = lines
                .next()
                .expect("roost printed its start-up lines before exiting")
                .expect("readable stdout");
            // With --log-format json each line is an object; its text is
            // the message.
            let line = match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) if line.starts_with('{') => {
                    v["message"].as_str().unwrap_or_default().to_string()
                }
                _ => line,
            };
            if let Some((what, addr)) = line.split_once(" listening on ") {
                let what = what.rsplit(": ").next().unwrap_or(what).to_string();
                listeners.push((what, addr.trim().parse().expect("an address")));
            }
            let last = line.contains(": store ");
            seen.push(line);
            if last {
                break;
            }
        }
        // Keep draining stdout so the broker never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let addr = listeners
            .iter()
            .find(|(what, _)| what == "mqtt tcp")
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(_, a)| *a);
        Broker {
            child,
            addr,
            listeners,
            lines: seen,
        }
    }

    /// The address of the listener its line calls `what` ("http stats").
    pub(crate) fn listener(&self, what: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("no {what} listener in {:?}", self.lines))
            .1
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig}");
    }

    /// SIGTERM, then waits for the exit status.
    pub(crate) async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let mut child = std::mem::replace(&mut self.child, dummy());
        tokio::task::spawn_blocking(move || child.wait().expect("wait"))
            .await
            .expect("join")
    }

    /// SIGKILL: no chance to flush anything.
    pub(crate) async fn kill9(mut self) {
        self.signal("-KILL");
        let mut child = std::mem::replace(&mut self.child, dummy());
        tokio::task::spawn_blocking(move || child.wait().expect("wait"))
            .await
            .expect("join");
    }
}

/// A placeholder child (already exited) to move the real one out of a
/// `Broker` that is being consumed.
fn dummy() -> Child {
    Command::new("true").spawn().expect("true runs")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child's stderr, read line by line on a thread.
pub(crate) struct Logs {
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Logs {
    /// Takes the (piped) stderr of `broker`.
    pub(crate) fn of(broker: &mut Broker) -> Logs {
        let stderr = broker.child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Logs {
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next line, if one comes within `wait`.
    pub(crate) fn next(&mut self, wait: std::time::Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits (up to 10 s) for a line containing `needle` and returns it.
    pub(crate) fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next(left) {
                Some(line) if line.contains(needle) => return line,
                Some(_) => {}
                None => panic!("no log line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }
}
