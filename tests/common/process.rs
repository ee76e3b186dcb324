//! The real `roost` binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running `roost` process; killed (SIGKILL) when dropped.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Broker {
    /// Starts `roost ARGS` and waits for its "mqtt tcp listening on" line.
    pub fn start(args: &[&str]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("roost binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("roost printed its listening line before exiting")
                .expect("readable stdout");
            if let Some(rest) = line.split("mqtt tcp listening on ").nth(1) {
                break rest.trim().parse().expect("an address");
            }
        };
        // Keep draining stdout so the broker never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Broker { child, addr }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig}");
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let mut child = std::mem::replace(&mut self.child, dummy());
        tokio::task::spawn_blocking(move || child.wait().expect("wait"))
            .await
            .expect("join")
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill9(mut self) {
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
