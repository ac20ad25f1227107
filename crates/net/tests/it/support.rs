//! Shared helpers: policies, loopback listeners, canaries and bounded waits.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use proxyd_policy::{ListKind, PatternSet, Policy};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long any single wait in these tests may take before the test fails.
pub(crate) const BOUND: Duration = Duration::from_secs(5);

pub(crate) const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub(crate) const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Awaits `future`, failing the test if it takes longer than [`BOUND`].
pub(crate) async fn bounded<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(BOUND, future).await.context("timed out")
}

pub(crate) fn policy(allowed: &[&str], allow_local_binding: bool) -> Policy {
    Policy {
        allowed: PatternSet::compile(allowed, ListKind::Allowed).expect("test patterns are valid"),
        denied: PatternSet::default(),
        allow_local_binding,
        enabled: true,
        unix_sockets: Vec::new(),
        rules: Default::default(),
        secrets: Default::default(),
    }
}

/// A listener on `ip`, port chosen by the kernel.
pub(crate) async fn listener(ip: IpAddr) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ip, 0)).await
}

/// A socket bound to `addr` but not listening: connecting to it is refused, and holding it
/// keeps the port from being reused by anything else meanwhile.
pub(crate) fn refusing(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = new_socket(addr)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Connects as a client would (not through the dialler).
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    new_socket(addr)?.connect(addr).await
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
}

/// Whether this machine has IPv6 loopback; tests mixing families say so and skip the IPv6 part
/// where it has not.
pub(crate) async fn has_ipv6_loopback() -> bool {
    listener(V6).await.is_ok()
}

/// A listener that must never be reached. Connections complete in the kernel before `connect`
/// returns, so a dial that reached it has left a connection in its accept queue by the time
/// the dial result is known.
pub(crate) struct Canary {
    listener: std::net::TcpListener,
}

impl Canary {
    pub(crate) fn new(ip: IpAddr) -> io::Result<Canary> {
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
        listener.set_nonblocking(true)?;
        Ok(Canary { listener })
    }

    pub(crate) fn addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// How many connections are waiting (accepting them).
    pub(crate) fn accepts(&self) -> usize {
        let mut count = 0;
        while self.listener.accept().is_ok() {
            count += 1;
        }
        count
    }
}
