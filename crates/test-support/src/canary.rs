//! Listeners that must never be reached: a blocked destination points at one, and the test
//! asserts afterwards that nothing arrived.
//!
//! Counting is race-free: besides the background task that accepts and drops connections (so a
//! wrongly dialling proxy fails fast instead of hanging), every query first drains the kernel's
//! queue synchronously through a duplicate of the socket. A connection whose `connect` returned,
//! or a datagram whose `send` returned, is therefore always counted.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;

use crate::server::{ACCEPT_BACKOFF, Datagram, Log, ServerTask, lock};

/// A TCP listener that records every connection it is offered and closes it at once.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct Canary {
    addr: SocketAddr,
    /// A duplicate of the listening socket, non-blocking, drained on every query.
    probe: std::net::TcpListener,
    seen: Log<SocketAddr>,
    _task: ServerTask,
}

impl Canary {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts on port 0 of `ip` (e.g. `::1`).
    pub async fn start_on(ip: IpAddr) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind((ip, 0)).context("bind canary")?;
        std_listener.set_nonblocking(true).context("canary non-blocking")?;
        let addr = std_listener.local_addr().context("canary address")?;
        let probe = std_listener.try_clone().context("duplicate canary socket")?;
        let listener =
            tokio::net::TcpListener::from_std(std_listener).context("register canary")?;
        let seen = Log::<SocketAddr>::default();
        let task_seen = Arc::clone(&seen);
        let task = ServerTask::spawn("canary", async move {
            loop {
                match listener.accept().await {
                    // Dropping the stream closes it: the dialler sees EOF right away.
                    Ok((_stream, peer)) => lock(&task_seen).push(peer),
                    Err(error) => {
                        tracing::debug!(%error, "canary accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        });
        Ok(Canary { addr, probe, seen, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Peers of the connections that reached the canary so far.
    pub fn connections(&self) -> Vec<SocketAddr> {
        loop {
            match self.probe.accept() {
                Ok((_stream, peer)) => lock(&self.seen).push(peer),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        lock(&self.seen).clone()
    }

    /// Number of connections that reached the canary so far.
    pub fn hits(&self) -> usize {
        self.connections().len()
    }

    /// Panics if any connection ever reached the canary.
    #[track_caller]
    pub fn assert_untouched(&self) {
        let seen = self.connections();
        assert!(
            seen.is_empty(),
            "canary {} was reached by {} connection(s) from {seen:?}: a blocked destination \
             must never be dialled",
            self.addr,
            seen.len(),
        );
    }
}

/// A UDP socket that records every datagram it receives (sender and bytes) and never answers.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct UdpCanary {
    addr: SocketAddr,
    probe: std::net::UdpSocket,
    seen: Log<Datagram>,
    _task: ServerTask,
}

impl UdpCanary {
    /// Starts on `127.0.0.1:0`.
    #[expect(
        clippy::disallowed_methods,
        reason = "a test origin's own socket, not proxyd's egress"
    )]
    pub async fn start() -> anyhow::Result<Self> {
        let std_socket =
            std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("bind udp canary")?;
        std_socket.set_nonblocking(true).context("udp canary non-blocking")?;
        let addr = std_socket.local_addr().context("udp canary address")?;
        let probe = std_socket.try_clone().context("duplicate udp canary socket")?;
        let socket = tokio::net::UdpSocket::from_std(std_socket).context("register udp canary")?;
        let seen = Log::<Datagram>::default();
        let task_seen = Arc::clone(&seen);
        let task = ServerTask::spawn("udp-canary", async move {
            let mut buf = vec![0; 64 * 1024];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, from)) => lock(&task_seen).push((from, buf[..n].to_vec())),
                    Err(error) => {
                        tracing::debug!(%error, "udp canary receive failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        });
        Ok(UdpCanary { addr, probe, seen, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams that reached the canary so far, with their senders.
    pub fn datagrams(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match self.probe.recv_from(&mut buf) {
                Ok((n, from)) => lock(&self.seen).push((from, buf[..n].to_vec())),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors (e.g. connection refused) surface here; skip them.
                Err(_) => {}
            }
        }
        lock(&self.seen).clone()
    }

    /// Number of datagrams that reached the canary so far.
    pub fn hits(&self) -> usize {
        self.datagrams().len()
    }

    /// Panics if any datagram ever reached the canary.
    #[track_caller]
    pub fn assert_untouched(&self) {
        let seen = self.datagrams();
        assert!(
            seen.is_empty(),
            "udp canary {} received {} datagram(s) from {:?}: a blocked destination must \
             never be sent to",
            self.addr,
            seen.len(),
            seen.iter().map(|(from, _)| from).collect::<Vec<_>>(),
        );
    }
}
