//! Debian's `mosquitto` broker as a child process: a real MQTT peer that
//! roost did not write. It listens on two free loopback ports, plain TCP
//! and TLS (the example certificates in `certs/`, a client certificate
//! required), with a configuration generated in a temporary directory that
//! also holds its persistence file, so [`Mosquitto::restart`] keeps the
//! sessions.
//!
//! A missing `mosquitto` fails the test that needs it: CI installs the
//! package (`.ci/run`), and a peer test that skipped itself would pass
//! without testing anything.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// How long mosquitto may take to start or stop on a loaded machine.
const STARTUP: Duration = Duration::from_secs(15);

/// A file in the repository's `certs/`.
pub(crate) fn example_cert(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(name)
}

/// The `mosquitto` executable: on `PATH`, or in `/usr/sbin` where Debian
/// puts it (not on an ordinary user's `PATH`).
pub(crate) fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mosquitto not found on PATH or in /usr/sbin: these tests need Debian's \
                 `mosquitto` package as the remote broker (`apt-get install -y mosquitto`; \
                 .ci/run installs it)"
            )
        })
}

/// A port nothing listens on now (mosquitto binds it a moment later; a
/// start that loses the race is retried on other ports).
fn vacant() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running mosquitto; killed when dropped.
pub(crate) struct Mosquitto {
    /// The plain TCP listener.
    pub tcp: SocketAddr,
    /// The TLS listener (server certificate `certs/server.pem`, client
    /// certificates required, signed by `certs/ca.pem`).
    pub tls: SocketAddr,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts mosquitto and waits until both listeners take connections.
    pub(crate) async fn start() -> Mosquitto {
        let bin = binary();
        let dir = tempfile::tempdir().unwrap();
        let mut failures = String::new();
        for _ in 0..3 {
            let (tcp, tls) = (vacant(), vacant());
            write_config(dir.path(), tcp, tls);
            match spawn(&bin, dir.path(), tcp, tls).await {
                Ok(child) => {
                    return Mosquitto {
                        tcp,
                        tls,
                        bin,
                        dir,
                        child: Some(child),
                    }
                }
                Err(e) => writeln!(failures, "{e}").unwrap(),
            }
        }
        panic!("mosquitto did not start:\n{failures}");
    }

    /// Stops mosquitto with SIGTERM (it saves its sessions) and waits for
    /// it to exit.
    pub(crate) async fn terminate(&mut self) {
        let mut child = self.child.take().expect("mosquitto is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM mosquitto");
        let deadline = Instant::now() + STARTUP;
        while child.try_wait().expect("wait for mosquitto").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto did not stop on SIGTERM; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts it again on the same ports, with the same persistence file.
    pub(crate) async fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate().await;
        }
        match spawn(&self.bin, self.dir.path(), self.tcp, self.tls).await {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("mosquitto did not start again: {e}"),
        }
    }

    /// Its log so far (every message type), for failure messages.
    pub(crate) fn log(&self) -> String {
        log(self.dir.path())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!("{}{}", read("stderr.log"), read("mosquitto.log"))
}

fn write_config(dir: &Path, tcp: SocketAddr, tls: SocketAddr) {
    let cert = |name: &str| example_cert(name).display().to_string();
    let dir_s = dir.display();
    let config = format!(
        "# Written by roost's tests/common/mosquitto.rs.\n\
         # As root, mosquitto would switch to user `mosquitto`, who cannot\n\
         # write this directory; as anyone else it ignores this line.\n\
         user root\n\
         per_listener_settings false\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {dir_s}/\n\
         max_queued_messages 100000\n\
         log_dest file {dir_s}/mosquitto.log\n\
         log_type all\n\
         listener {tcp_port} 127.0.0.1\n\
         listener {tls_port} 127.0.0.1\n\
         cafile {ca}\n\
         certfile {server}\n\
         keyfile {key}\n\
         require_certificate true\n",
        tcp_port = tcp.port(),
        tls_port = tls.port(),
        ca = cert("ca.pem"),
        server = cert("server.pem"),
        key = cert("server.key"),
    );
    std::fs::write(dir.join("mosquitto.conf"), config).unwrap();
}

/// Runs mosquitto with the configuration in `dir` until its listeners
/// take connections; Err (with its log) if it exits or hangs first.
async fn spawn(bin: &Path, dir: &Path, tcp: SocketAddr, tls: SocketAddr) -> Result<Child, String> {
    // Errors before the log file is open (a bad configuration) go here.
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap();
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!(
                "mosquitto exited at start-up ({status}); log:\n{}",
                log(dir)
            ));
        }
        let up = tokio::net::TcpStream::connect(tcp).await.is_ok()
            && tokio::net::TcpStream::connect(tls).await.is_ok();
        if up {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "mosquitto did not listen within {STARTUP:?}; log:\n{}",
                log(dir)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
