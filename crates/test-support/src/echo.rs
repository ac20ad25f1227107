//! Plain TCP and UDP echo servers, the upstreams for SOCKS5 CONNECT and UDP ASSOCIATE tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket};

use crate::server::{ACCEPT_BACKOFF, Datagram, Log, ServerTask, echo, lock, spawn_accept_loop};

/// A TCP server that echoes every byte back unchanged and passes on half-close: after the
/// client's EOF it finishes echoing, then shuts down its write side.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct EchoTcp {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _task: ServerTask,
}

impl EchoTcp {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind tcp echo")?;
        let addr = listener.local_addr().context("tcp echo address")?;
        let accepted = Arc::<AtomicUsize>::default();
        let conn_accepted = Arc::clone(&accepted);
        let task = spawn_accept_loop("tcp-echo", listener, move |io| {
            conn_accepted.fetch_add(1, Ordering::SeqCst);
            echo(io, <[u8]>::to_vec)
        });
        Ok(EchoTcp { addr, accepted, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A UDP socket that sends every datagram back to its sender, recording it first.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct UdpEcho {
    addr: SocketAddr,
    received: Log<Datagram>,
    _task: ServerTask,
}

impl UdpEcho {
    /// Starts on `127.0.0.1:0`.
    #[expect(
        clippy::disallowed_methods,
        reason = "a test origin's own socket, not proxyd's egress"
    )]
    pub async fn start() -> anyhow::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind udp echo")?;
        let addr = socket.local_addr().context("udp echo address")?;
        let received = Log::<Datagram>::default();
        let task_received = Arc::clone(&received);
        let task = ServerTask::spawn("udp-echo", async move {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let (n, from) = match socket.recv_from(&mut buf).await {
                    Ok(received) => received,
                    Err(error) => {
                        tracing::debug!(%error, "udp echo receive failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Record before answering, so a client that got its echo sees it recorded.
                lock(&task_received).push((from, buf[..n].to_vec()));
                if let Err(error) = socket.send_to(&buf[..n], from).await {
                    tracing::debug!(%error, %from, "udp echo send failed");
                }
            }
        });
        Ok(UdpEcho { addr, received, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far with their senders, in arrival order.
    pub fn received(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        lock(&self.received).clone()
    }
}
