//! Debian's `nats-server` as child processes: a real NATS cluster of 1 or
//! 3 servers with JetStream, for the cluster tests. Each server listens on
//! free loopback ports (clients, routes, HTTP monitoring), with a
//! configuration generated in a temporary directory that also holds its
//! JetStream store, so [`NatsCluster::restart`] brings a server back with
//! its data, as a crashed server would come back.
//!
//! Ready means JetStream can take requests: every running server's
//! `/healthz` answers 200 (nats-server 2.9 says so only once the meta group
//! has a leader and the server's streams are current) and all of them name
//! the same meta leader in `/jsz`. A 3-server cluster takes a few seconds
//! to elect one; every wait polls against a deadline.
//!
//! A missing `nats-server` fails the test that needs it: CI installs the
//! package (`.ci/run`), and a test that skipped itself would pass without
//! testing anything.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How long a cluster may take to start, elect a meta leader, or take a
/// restarted server back, on a loaded 2-core machine.
pub(crate) const READY: Duration = Duration::from_secs(30);

/// The `nats-server` executable: on `PATH`, or in `/usr/sbin` where Debian
/// puts it.
pub(crate) fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found on PATH or in /usr/sbin: the cluster tests need Debian's \
                 `nats-server` package (`apt-get install -y nats-server`; .ci/run installs it)"
            )
        })
}

/// A port nothing listens on now (a start that loses the race for it is
/// retried on other ports).
fn vacant() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One server's ports and directory.
struct Node {
    name: String,
    client: SocketAddr,
    route: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

/// Running `nats-server` processes; all killed when dropped.
pub(crate) struct NatsCluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    jetstream: bool,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers (1 or 3) with JetStream and waits until it is
    /// ready.
    pub(crate) async fn start(n: usize) -> NatsCluster {
        Self::start_with(n, true).await
    }

    /// One server without JetStream: a NATS the cluster must refuse.
    pub(crate) async fn without_jetstream() -> NatsCluster {
        Self::start_with(1, false).await
    }

    async fn start_with(n: usize, jetstream: bool) -> NatsCluster {
        assert!(n == 1 || n == 3, "a NATS cluster of 1 or 3 servers");
        let bin = binary();
        let mut failures = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let nodes = (0..n)
                .map(|i| Node {
                    name: format!("n{i}"),
                    client: vacant(),
                    route: vacant(),
                    http: vacant(),
                    dir: dir.path().join(format!("n{i}")),
                    child: None,
                })
                .collect();
            let mut cluster = NatsCluster {
                nodes,
                bin: bin.clone(),
                jetstream,
                _dir: dir,
            };
            cluster.write_configs();
            match cluster.spawn_all().await {
                Ok(()) => return cluster,
                Err(e) => writeln!(failures, "{e}").unwrap(),
            }
        }
        panic!("nats-server did not start:\n{failures}");
    }

    /// Client URLs of every server (`nats://127.0.0.1:port`), running or
    /// not.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://{}", n.client))
            .collect()
    }

    /// SIGKILL to server `i`: no chance to flush or to hand over
    /// leadership.
    pub(crate) fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("server is running");
        child.kill().expect("kill -9 nats-server");
        child.wait().expect("wait for nats-server");
    }

    /// Starts server `i` again on its ports with its store, and waits until
    /// the cluster is ready (the server caught up).
    pub(crate) async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "server {i} is running");
        let child = spawn(&self.bin, &self.nodes[i]).unwrap_or_else(|e| panic!("{e}"));
        self.nodes[i].child = Some(child);
        if let Err(e) = self.ready().await {
            panic!("after restarting server {i}: {e}");
        }
    }

    /// Kills every server.
    pub(crate) fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                self.kill(i);
            }
        }
    }

    /// Starts every stopped server again and waits until ready.
    pub(crate) async fn restart_all(&mut self) {
        for node in &mut self.nodes {
            if node.child.is_none() {
                node.child = Some(spawn(&self.bin, node).unwrap_or_else(|e| panic!("{e}")));
            }
        }
        if let Err(e) = self.ready().await {
            panic!("after restarting all servers: {e}");
        }
    }

    /// Every server's log so far, for failure messages.
    pub(crate) fn log(&self) -> String {
        let mut all = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(n.dir.join("server.log")).unwrap_or_default();
            writeln!(all, "--- {} ---\n{log}", n.name).unwrap();
        }
        all
    }

    fn write_configs(&self) {
        for node in &self.nodes {
            std::fs::create_dir_all(node.dir.join("store")).unwrap();
            let mut config = format!(
                "# Written by roost's tests/common/nats.rs.\n\
                 server_name: {name}\n\
                 listen: \"{client}\"\n\
                 http: \"{http}\"\n\
                 log_file: \"{log}\"\n",
                name = node.name,
                client = node.client,
                http = node.http,
                log = node.dir.join("server.log").display(),
            );
            if self.jetstream {
                writeln!(
                    config,
                    "jetstream {{\n  store_dir: \"{}\"\n}}",
                    node.dir.join("store").display()
                )
                .unwrap();
            }
            if self.nodes.len() > 1 {
                // Every server lists all three routes (its own is ignored):
                // a 2.9 cluster forms reliably only with the full mesh.
                let routes: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("\"nats-route://{}\"", n.route))
                    .collect();
                writeln!(
                    config,
                    "cluster {{\n  name: roost-test\n  listen: \"{}\"\n  routes: [{}]\n}}",
                    node.route,
                    routes.join(", ")
                )
                .unwrap();
            }
            std::fs::write(node.dir.join("nats.conf"), config).unwrap();
        }
    }

    async fn spawn_all(&mut self) -> Result<(), String> {
        for node in &mut self.nodes {
            node.child = Some(spawn(&self.bin, node)?);
        }
        let ready = self.ready().await;
        if ready.is_err() {
            self.kill_all();
        }
        ready
    }

    /// Waits until every running server is healthy, all agree on a meta
    /// leader (with JetStream), and none has exited.
    pub(crate) async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY;
        loop {
            for i in 0..self.nodes.len() {
                let Some(child) = &mut self.nodes[i].child else {
                    continue;
                };
                if let Some(status) = child.try_wait().unwrap() {
                    self.nodes[i].child = None;
                    return Err(format!(
                        "nats-server {} exited ({status}); logs:\n{}",
                        self.nodes[i].name,
                        self.log()
                    ));
                }
            }
            let last = match self.check().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "NATS not ready within {READY:?}: {last}; logs:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check(&self) -> Result<(), String> {
        let mut leaders = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            if !self.jetstream {
                tokio::net::TcpStream::connect(node.client)
                    .await
                    .map_err(|e| format!("{}: {e}", node.name))?;
                continue;
            }
            let (status, body) = http_get(node.http, "/healthz").await?;
            if status != 200 {
                return Err(format!("{} /healthz: {status} {body}", node.name));
            }
            let (_, jsz) = http_get(node.http, "/jsz").await?;
            let jsz: serde_json::Value =
                serde_json::from_str(&jsz).map_err(|e| format!("{} /jsz: {e}", node.name))?;
            if self.nodes.len() > 1 {
                let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
                if leader.is_empty() {
                    return Err(format!("{}: no meta leader yet", node.name));
                }
                leaders.push(leader.to_owned());
            }
        }
        leaders.dedup();
        if leaders.len() > 1 {
            return Err(format!("servers disagree on the meta leader: {leaders:?}"));
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs one server with the configuration in its directory. Errors before
/// its log file is open (a bad configuration) go to `stderr.log`.
fn spawn(bin: &Path, node: &Node) -> Result<Child, String> {
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.dir.join("stderr.log"))
        .unwrap();
    Command::new(bin)
        .arg("-c")
        .arg(node.dir.join("nats.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))
}

/// A bare HTTP/1.0 GET (the monitoring endpoint closes after the answer):
/// its status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .map_err(|_| format!("GET {path} on {addr}: timed out"))?
        .map_err(|e| format!("GET {path} on {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path} on {addr}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// A roost node of a cluster, started in-process, once it serves: a node
/// accepts connections only after it joined NATS (its stream, consumer and
/// router), which on a loaded machine with three NATS servers can take
/// longer than one packet wait, so this waits (up to [`READY`]) until a
/// probe client gets its CONNACK.
pub(crate) async fn node(server: roost::Server) -> super::TestBroker {
    let broker = super::TestBroker::with_server(server).await;
    let deadline = Instant::now() + READY;
    loop {
        let probe = async {
            let mut raw = super::Raw::open(broker.addr, roost::codec::ProtocolVersion::V5).await;
            raw.send(roost::codec::Packet::Connect(Box::new(super::v5(
                "probe-serving",
            ))))
            .await;
            matches!(
                raw.recv_within(Duration::from_secs(1)).await,
                Some(roost::codec::Packet::ConnAck(_))
            )
        };
        if probe.await {
            return broker;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not serve within {READY:?}"
        );
    }
}
