//! A TCP relay with a switch, to take a link down and bring it back
//! without stopping the broker behind it: while down nothing listens on its
//! port (connections are refused, as from a remote that is down) and the
//! relayed connections are cut; while up each connection is joined to the
//! target.

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The relay: a loopback port that leads to `target` while up.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    serving: Option<JoinHandle<()>>,
}

impl Relay {
    /// A relay to `target` on a free loopback port, down.
    pub fn new(target: SocketAddr) -> io::Result<Relay> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        Ok(Relay {
            addr,
            target,
            serving: None,
        })
    }

    /// Whether connections are relayed now.
    pub fn is_up(&self) -> bool {
        self.serving.is_some()
    }

    /// Listens again and relays each connection to the target.
    pub async fn up(&mut self) -> io::Result<()> {
        if self.serving.is_some() {
            return Ok(());
        }
        // SO_REUSEADDR (tokio sets it): the port's old connections may
        // linger in TIME_WAIT.
        let listener = TcpListener::bind(self.addr).await?;
        let target = self.target;
        self.serving = Some(tokio::spawn(async move {
            let mut joined = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                joined.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut a, mut b) = (inbound, outbound);
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                });
                // Forget the ones that ended.
                while joined.try_join_next().is_some() {}
            }
            // Dropping `joined` (when this task is aborted) aborts every
            // relayed connection, which closes both of its sockets.
        }));
        Ok(())
    }

    /// Stops listening and cuts every relayed connection.
    pub fn down(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.down();
    }
}
