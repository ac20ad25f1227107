//! The sockets of a SOCKS5 UDP association (RFC 1928 §7): the relay the client sends to,
//! bound to the address the client reached the listener on, and the outbound sockets, which
//! send only along a [`UdpRoute`] the admission path produced for the current policy and mode.
//!
//! The association itself is a live exchange ([`Lease`]): a switch to limited mode, or a
//! policy that disables the proxy, ends it; every other reload or mode switch makes every
//! route stale, so each destination is decided again before its next datagram.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proxyd_policy::{Protocol, Reason, Target};
use tokio::net::UdpSocket;

use crate::admission::{Attempt, Facts, Failure, Lease, Refusal};
use crate::engine::{Engine, Event, Outcome};

/// Bounds one send; UDP sends only wait when the socket buffer is full, and a datagram that
/// cannot be sent in time is dropped, as the network would.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Receive and send buffer asked for on every association socket. The defaults (about 200 KiB
/// on Linux) hold only a few hundred datagrams, so a client's burst was dropped at the relay
/// before proxyd was scheduled to read it. The kernel caps the request at `net.core.rmem_max`
/// and `wmem_max`; it is a bound, not an allocation.
const SOCKET_BUFFER: usize = 4 << 20;

/// Datagrams relayed per wake-up at most, before the relay loop polls its other sockets and
/// timers again: a burst is drained in one go, and one busy direction cannot starve the other.
pub const UDP_BATCH: usize = 256;

/// Where datagrams for one destination go: a checked address, valid for the policy and mode
/// generation it was decided in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRoute {
    to: SocketAddr,
    generation: u64,
}

impl UdpRoute {
    pub fn to(&self) -> SocketAddr {
        self.to
    }
}

/// One UDP association's sockets and lease.
pub struct Association {
    engine: Engine,
    lease: Lease,
    client: SocketAddr,
    relay: UdpSocket,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl Engine {
    /// Opens a UDP association for `client`, with the relay on `local_ip` (the address the
    /// client reached the listener on, never all interfaces). An association has no target
    /// yet, so only the rules that refuse every target apply: a disabled proxy, and limited
    /// mode (SPEC §6.2). A refusal is recorded under the requested `DST.ADDR`/`DST.PORT`.
    pub async fn associate(
        &self,
        client: SocketAddr,
        local_ip: IpAddr,
        requested: (String, u16),
    ) -> Result<Association, Refusal> {
        let snapshot = self.snapshot();
        let refusal = Facts::Association.recheck(&snapshot, &[]);
        let record = |outcome: Outcome| {
            self.record(Event {
                protocol: Protocol::Socks5Udp,
                client: Some(client),
                host: requested.0.clone(),
                port: requested.1,
                method: None,
                mode: snapshot.mode,
                outcome,
                dns_time: None,
                connect_time: None,
                detail: None,
            });
        };
        if let Some(reason) = refusal {
            record(Outcome::Blocked(reason.clone()));
            return Err(Refusal::Blocked { reason, mode: snapshot.mode, detail: None });
        }
        let relay = match bind(SocketAddr::new(local_ip.to_canonical(), 0)).await {
            Ok(relay) => relay,
            Err(error) => {
                tracing::warn!(%error, "binding the udp relay failed");
                record(Outcome::Failed(Failure::UdpRelay.code()));
                return Err(Refusal::Failed { failure: Failure::UdpRelay, mode: snapshot.mode });
            }
        };
        let lease = Lease::new(self, Facts::Association, snapshot.generation, Protocol::Socks5Udp);
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        Ok(Association { engine: self.clone(), lease, client, relay, v4: None, v6: None })
    }
}

impl Association {
    pub fn relay_addr(&self) -> io::Result<SocketAddr> {
        self.relay.local_addr()
    }

    /// The association's lease: ended by limited mode, a disabled proxy or the lifecycle.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// SPEC §6 for one destination: the whole admission (decide, resolve, check, one event),
    /// pinning the first checked address.
    pub async fn route(&self, target: Target) -> Result<UdpRoute, Refusal> {
        let attempt = Attempt::new(Protocol::Socks5Udp, target, Some(self.client));
        let mut admission = self.engine.admit(attempt).await?;
        let checked = admission.resolve().await?;
        let Some(&to) = checked.addrs().first() else {
            return Err(admission.fail(Failure::DnsFailed));
        };
        let generation = admission.admit_datagram()?;
        Ok(UdpRoute { to, generation })
    }

    /// Whether `route` was decided under the policy and mode in force now.
    pub fn is_current(&self, route: &UdpRoute) -> bool {
        route.generation == self.engine.generation()
    }

    /// The policy and mode generation in force now (for caching refusals).
    pub fn generation(&self) -> u64 {
        self.engine.generation()
    }

    /// A datagram from any sender on the relay (the caller admits only its client).
    pub async fn recv_client(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.relay.recv_from(buf).await
    }

    /// A datagram already waiting on the relay, without waiting (`WouldBlock` when none is):
    /// the relay loop drains a burst after each wake-up.
    pub fn try_recv_client(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.relay.try_recv_from(buf)
    }

    /// A datagram already waiting on the outbound IPv4 socket, without waiting.
    pub fn try_recv_v4(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        try_recv(self.v4.as_ref(), buf)
    }

    /// A datagram already waiting on the outbound IPv6 socket, without waiting.
    pub fn try_recv_v6(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        try_recv(self.v6.as_ref(), buf)
    }

    /// A datagram on the outbound IPv4 socket, once there is one.
    pub async fn recv_v4(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        recv(self.v4.as_ref(), buf).await
    }

    /// A datagram on the outbound IPv6 socket, once there is one.
    pub async fn recv_v6(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        recv(self.v6.as_ref(), buf).await
    }

    /// Sends `payload` along `route`; a route from an older generation, or one sent after the
    /// lease was revoked, is refused (`false`), and so is a datagram that could not be sent.
    pub async fn send_upstream(
        &mut self,
        route: &UdpRoute,
        payload: &[u8],
    ) -> Result<bool, Reason> {
        if self.lease.is_revoked() {
            return Err(self.lease.revoked_reason().unwrap_or(Reason::MethodNotAllowed));
        }
        if !self.is_current(route) {
            return Ok(false);
        }
        let to = route.to;
        let (slot, any) = match to {
            SocketAddr::V4(_) => (&mut self.v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (&mut self.v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        if slot.is_none() {
            match bind(SocketAddr::new(any, 0)).await {
                Ok(socket) => *slot = Some(socket),
                Err(error) => {
                    tracing::debug!(%error, %to, "binding an outbound udp socket failed");
                    return Ok(false);
                }
            }
        }
        let Some(socket) = slot.as_ref() else { return Ok(false) };
        Ok(send(socket, payload, to).await)
    }

    /// Sends `packet` to the client, on `port` (the client's IP is fixed at association).
    pub async fn send_to_client(&self, port: u16, packet: &[u8]) -> bool {
        send(&self.relay, packet, SocketAddr::new(self.client.ip(), port)).await
    }
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn try_recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.try_recv_from(buf),
        None => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// Binds an association socket with [`SOCKET_BUFFER`]-sized buffers (best effort: a smaller
/// buffer only means more loss under bursts, as the network would).
#[expect(clippy::disallowed_methods, reason = "the one place UDP sockets are bound (SPEC §7.1)")]
async fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).await?;
    if let Err(error) = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER) {
        tracing::debug!(%error, "raising the udp receive buffer failed");
    }
    if let Err(error) = rustix::net::sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER) {
        tracing::debug!(%error, "raising the udp send buffer failed");
    }
    Ok(socket)
}

/// Sends one datagram within [`SEND_TIMEOUT`]; `false` when it was dropped.
#[expect(clippy::disallowed_methods, reason = "the one place UDP datagrams are sent (SPEC §7.1)")]
async fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send_to(datagram, to)).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => {
            tracing::debug!(%error, %to, "udp send failed");
            false
        }
        Err(_elapsed) => {
            tracing::debug!(%to, "udp send timed out");
            false
        }
    }
}
