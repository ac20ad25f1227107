//! `UDP ASSOCIATE` (RFC 1928 §4, §7): one relay socket per association, bound to the IP the
//! client reached the listener on (never all interfaces), and every outgoing datagram decided
//! like a connection.
//!
//! The association lives in its connection's task and ends when the TCP control connection
//! closes (or carries anything), after `idle_timeout` without a datagram either way, or when
//! tunnels are closed (limited mode, end of a drain).

use std::net::SocketAddr;

use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{consts, new_udp_header, parse_udp_request};
use proxyd_net::{Association as Sockets, UDP_BATCH};
use proxyd_policy::Target;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

use crate::error::refusal_reply;
use crate::server::Shared;
use crate::udp_state::{Client, Decisions, Peers, Verdict, canonical};
use crate::wire::{UNSPECIFIED, send_reply, target_of};

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 64 * 1024;

pub(crate) async fn handle(
    shared: &Shared,
    mut control: TcpStream,
    peer: SocketAddr,
    requested: &TargetAddr,
) {
    let limit = shared.settings.handshake_timeout;
    let local_ip = match control.local_addr() {
        Ok(local) => local.ip(),
        Err(error) => {
            tracing::debug!(%error, "control connection has no local address");
            return;
        }
    };
    let sockets = match shared.engine.associate(peer, local_ip, describe(requested)).await {
        Ok(sockets) => sockets,
        Err(refusal) => {
            send_reply(&mut control, refusal_reply(&refusal), UNSPECIFIED, limit).await;
            return;
        }
    };
    let Ok(relay_addr) = sockets.relay_addr() else { return };
    let _tunnel = (shared.tunnels.track(), shared.engine.lifecycle().track());
    if !send_reply(&mut control, consts::SOCKS5_REPLY_SUCCEEDED, relay_addr, limit).await {
        return;
    }
    tracing::debug!(%relay_addr, "udp association open");
    let requested_port = match requested {
        TargetAddr::Ip(addr) => addr.port(),
        TargetAddr::Domain(_, port) => *port,
    };
    let mut association = Association {
        shared,
        client: Client::new(peer.ip(), requested_port),
        sockets,
        decisions: Decisions::default(),
        peers: Peers::default(),
    };
    let end = association.run(&mut control).await;
    tracing::debug!(end, "udp association closed");
}

/// The requested `DST.ADDR`/`DST.PORT`, as recorded.
fn describe(addr: &TargetAddr) -> (String, u16) {
    match addr {
        TargetAddr::Ip(addr) => (addr.ip().to_string(), addr.port()),
        TargetAddr::Domain(name, port) => (name.escape_debug().to_string(), *port),
    }
}

struct Association<'a> {
    shared: &'a Shared,
    client: Client,
    /// The relay and outbound sockets, and the association's lease (crates/net).
    sockets: Sockets,
    decisions: Decisions,
    peers: Peers,
}

/// The outbound socket a reply arrived on.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// What woke the relay loop.
enum Wake {
    End(&'static str),
    FromClient(std::io::Result<(usize, SocketAddr)>),
    FromV4(std::io::Result<(usize, SocketAddr)>),
    FromV6(std::io::Result<(usize, SocketAddr)>),
}

impl Association<'_> {
    /// Relays until the association ends; returns why it ended.
    async fn run(&mut self, control: &mut TcpStream) -> &'static str {
        let idle = self.shared.settings.idle_timeout;
        let ended = self.sockets.lease().ended();
        let idle_timer = sleep(idle);
        tokio::pin!(ended, idle_timer);
        let mut from_client = vec![0u8; MAX_DATAGRAM];
        let mut from_v4 = vec![0u8; MAX_DATAGRAM];
        let mut from_v6 = vec![0u8; MAX_DATAGRAM];
        let mut control_byte = [0u8; 1];
        loop {
            let wake = tokio::select! {
                biased;
                () = &mut ended => Wake::End("association ended (mode, policy or shutdown)"),
                read = control.read(&mut control_byte) => Wake::End(match read {
                    Ok(0) => "control connection closed",
                    Ok(_) => "unexpected bytes on the control connection",
                    Err(_) => "control connection failed",
                }),
                () = &mut idle_timer => Wake::End("idle timeout"),
                got = self.sockets.recv_client(&mut from_client) => Wake::FromClient(got),
                got = self.sockets.recv_v4(&mut from_v4) => Wake::FromV4(got),
                got = self.sockets.recv_v6(&mut from_v6) => Wake::FromV6(got),
            };
            let active = match wake {
                Wake::End(why) => return why,
                Wake::FromClient(Ok(first)) => {
                    match self.outgoing_batch(first, &mut from_client).await {
                        Some(active) => active,
                        None => return "association ended (mode, policy or shutdown)",
                    }
                }
                Wake::FromV4(Ok(first)) => {
                    self.incoming_batch(first, &mut from_v4, Family::V4).await
                }
                Wake::FromV6(Ok(first)) => {
                    self.incoming_batch(first, &mut from_v6, Family::V6).await
                }
                Wake::FromClient(Err(error))
                | Wake::FromV4(Err(error))
                | Wake::FromV6(Err(error)) => {
                    tracing::debug!(%error, "udp receive failed");
                    false
                }
            };
            if active {
                idle_timer.as_mut().reset(Instant::now() + idle);
            }
        }
    }

    /// The datagram that woke the loop, then every one already waiting on the relay, up to
    /// [`UDP_BATCH`]: one wake-up drains a burst instead of one datagram (issue 16). Returns
    /// whether any was the client's, or `None` when the association's lease was revoked.
    async fn outgoing_batch(&mut self, first: (usize, SocketAddr), buf: &mut [u8]) -> Option<bool> {
        let (mut n, mut from) = first;
        let mut active = false;
        for relayed in 1..=UDP_BATCH {
            active |= self.outgoing(&buf[..n], from).await?;
            if relayed == UDP_BATCH {
                // The rest waits for the next wake-up (the socket stays readable).
                break;
            }
            match self.sockets.try_recv_client(buf) {
                Ok(next) => (n, from) = next,
                Err(error) => {
                    if error.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::debug!(%error, "udp receive failed");
                    }
                    break;
                }
            }
        }
        Some(active)
    }

    /// Like [`Self::outgoing_batch`], for replies on one outbound socket.
    async fn incoming_batch(
        &mut self,
        first: (usize, SocketAddr),
        buf: &mut [u8],
        family: Family,
    ) -> bool {
        let (mut n, mut from) = first;
        let mut active = false;
        for relayed in 1..=UDP_BATCH {
            active |= self.incoming(&buf[..n], from).await;
            if relayed == UDP_BATCH {
                break;
            }
            let next = match family {
                Family::V4 => self.sockets.try_recv_v4(buf),
                Family::V6 => self.sockets.try_recv_v6(buf),
            };
            match next {
                Ok(next) => (n, from) = next,
                Err(error) => {
                    if error.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::debug!(%error, "udp receive failed");
                    }
                    break;
                }
            }
        }
        active
    }

    /// A datagram on the relay socket. Returns whether it was the client's, or `None` when the
    /// association's lease was revoked.
    async fn outgoing(&mut self, datagram: &[u8], from: SocketAddr) -> Option<bool> {
        if !self.client.admit(from) {
            tracing::debug!(%from, "datagram from an address other than the client dropped");
            return Some(false);
        }
        // RFC 1928 §7: RSV FRAG ATYP DST.ADDR DST.PORT DATA. The slice is in memory: this
        // await never waits.
        let (frag, addr, payload) = match parse_udp_request(datagram).await {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::debug!(%error, "malformed udp request header dropped");
                return Some(true);
            }
        };
        if frag != 0 {
            // Reassembly is optional (RFC 1928 §7); a server without it drops fragments.
            tracing::debug!(frag, "udp fragment dropped");
            return Some(true);
        }
        let target = match target_of(&addr) {
            Ok(target) => target,
            Err(error) => {
                tracing::debug!(%error, "datagram with a malformed destination dropped");
                return Some(true);
            }
        };
        // A decision holds for its generation of policy and mode only: a reload or a mode
        // switch makes every cached verdict stale at once.
        for _ in 0..2 {
            let route = self.verdict(&target).await;
            let Verdict::Send(route) = route else { return Some(true) };
            match self.sockets.send_upstream(&route, payload).await {
                Ok(true) => {
                    self.peers.note(route.to(), std::time::Instant::now());
                    return Some(true);
                }
                // Sent nothing: stale (decide again once) or dropped like the network would.
                Ok(false) if !self.sockets.is_current(&route) => continue,
                Ok(false) => return Some(true),
                Err(reason) => {
                    tracing::debug!(%reason, "udp association revoked");
                    return None;
                }
            }
        }
        Some(true)
    }

    /// The cached verdict for `target` in the current generation, or a fresh one (the whole
    /// admission: decide, resolve, check, one event).
    async fn verdict(&mut self, target: &Target) -> Verdict {
        let now = std::time::Instant::now();
        let generation = self.sockets.generation();
        if let Some(verdict) = self.decisions.get(target, now, generation) {
            return verdict;
        }
        let verdict = match self.sockets.route(target.clone()).await {
            Ok(route) => Verdict::Send(route),
            Err(refusal) => {
                tracing::debug!(%target, reason = refusal.code(), "datagram refused");
                Verdict::Drop
            }
        };
        self.decisions.insert(target.clone(), verdict, now, generation);
        verdict
    }

    /// A datagram on an outbound socket: relayed to the client only from a peer it sent to.
    async fn incoming(&mut self, datagram: &[u8], from: SocketAddr) -> bool {
        let from = canonical(from);
        if !self.peers.contains(from) {
            tracing::debug!(%from, "unsolicited datagram dropped");
            return false;
        }
        let Some(client) = self.client.addr() else { return false };
        let mut packet = match new_udp_header(from) {
            Ok(header) => header,
            Err(error) => {
                tracing::debug!(%error, "building a udp reply header failed");
                return false;
            }
        };
        packet.extend_from_slice(datagram);
        self.sockets.send_to_client(client.port(), &packet).await
    }
}
