//! A broker process for the benchmarks that start real brokers (`queue`,
//! `retained`, `bridge`): roost spawned and found where it listens,
//! Mosquitto spawned on a free port, or another broker's process adopted;
//! stopped as an operator would.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `roost` binary: `explicit` if given, else the one next to the
/// running benchmark (`cargo build --release` puts both in one folder).
pub fn roost_binary(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    match explicit {
        Some(p) => Ok(p),
        None => std::env::current_exe()
            .map(|p| p.with_file_name("roost"))
            .map_err(|e| format!("cannot find the roost binary: {e}")),
    }
}

/// A running broker and where it listens for MQTT over TCP.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    /// Its TCP listener.
    pub addr: SocketAddr,
}

impl Broker {
    /// Runs `command` (a roost binary with `--tcp 127.0.0.1:0` among its
    /// arguments) and waits up to `timeout` for the line saying where it
    /// listens. Its log goes to stderr, at `warn`.
    pub fn roost(mut command: Command, timeout: Duration) -> Result<Broker, String> {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.split("mqtt tcp listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(timeout) {
            Ok(addr) => addr.parse().map_err(|e| format!("listening address: {e}")),
            Err(_) => Err("the broker never said where it listens".to_owned()),
        };
        match addr {
            Ok(addr) => Ok(Broker { child, addr }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Runs Mosquitto (`binary`) with `dir/mosquitto.conf`: a listener on
    /// a free loopback port, then `conf` (more options, bridges). Its log
    /// goes to `dir/mosquitto.log`. Waits up to 10 s for it to listen.
    pub fn mosquitto(binary: &Path, dir: &Path, conf: &str) -> Result<Broker, String> {
        let port = free_port()?;
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, format!("listener {port} 127.0.0.1\n{conf}"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let log = std::fs::File::create(dir.join("mosquitto.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&path)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let broker = Broker::adopt(child, addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                broker.stop();
                return Err(format!("mosquitto does not listen (see {})", dir.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// A broker started some other way, listening on `addr`.
    pub fn adopt(child: Child, addr: SocketAddr) -> Broker {
        Broker { child, addr }
    }

    /// Its process id (for `procstat`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, so that it closes its store cleanly; killed if it has not
    /// ended within 60 s.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the time of asking (the OS picks it).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
