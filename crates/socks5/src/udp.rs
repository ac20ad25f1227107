//! `UDP ASSOCIATE` (RFC 1928 §4, §7): one relay socket per association, bound to the IP the
//! client reached the listener on (never all interfaces), and every outgoing datagram decided
//! like a connection.
//!
//! The association lives in its connection's task and ends when the TCP control connection
//! closes (or carries anything), after `idle_timeout` without a datagram either way, or when
//! tunnels are closed (limited mode, end of a drain).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{consts, new_udp_header, parse_udp_request};
use proxyd_net::{Attempt, Event, Outcome};
use proxyd_policy::{Decision, Mode, Protocol, Reason, SideDoors, Target};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, sleep};

use crate::server::Shared;
use crate::udp_state::{Client, Decisions, Peers, Verdict, canonical};
use crate::wire::{UNSPECIFIED, send_reply, target_of};

/// Largest datagram read (the UDP maximum).
const MAX_DATAGRAM: usize = 64 * 1024;
/// Bounds one send; UDP sends only wait when the socket buffer is full, and a datagram that
/// cannot be sent in time is dropped, as the network would.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) async fn handle(
    shared: &Shared,
    mut control: TcpStream,
    peer: SocketAddr,
    requested: &TargetAddr,
) {
    let engine = &shared.engine;
    let limit = shared.settings.handshake_timeout;
    // An association has no target yet, so only the rules that refuse every target apply now:
    // a disabled proxy, and limited mode, which refuses every SOCKS5 command (SPEC §6.2).
    let refusal = match (engine.policy().enabled, engine.mode()) {
        (false, _) => Some(Reason::ProxyDisabled),
        (true, Mode::Limited) => Some(Reason::MethodNotAllowed),
        (true, Mode::Full) => None,
    };
    if let Some(reason) = refusal {
        let (host, port) = describe(requested);
        engine.record(Event {
            protocol: Protocol::Socks5Udp,
            client: Some(peer),
            host,
            port,
            method: None,
            mode: engine.mode(),
            outcome: Outcome::Blocked(reason.clone()),
            dns_time: None,
            connect_time: None,
        });
        send_reply(&mut control, reason.socks_reply(), UNSPECIFIED, limit).await;
        return;
    }
    let relay = match bind_relay(&control).await {
        Ok(relay) => relay,
        Err(error) => {
            tracing::warn!(%error, "binding the udp relay failed");
            let code = consts::SOCKS5_REPLY_GENERAL_FAILURE;
            send_reply(&mut control, code, UNSPECIFIED, limit).await;
            return;
        }
    };
    let Ok(relay_addr) = relay.local_addr() else { return };
    let _tunnel = shared.tunnels.track();
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
        peer,
        client: Client::new(peer.ip(), requested_port),
        relay,
        v4: None,
        v6: None,
        decisions: Decisions::default(),
        peers: Peers::default(),
    };
    let end = association.run(&mut control).await;
    tracing::debug!(end, "udp association closed");
}

/// The relay binds to the address the client reached the listener on: a loopback listener
/// gets a loopback relay, never a socket on all interfaces.
async fn bind_relay(control: &TcpStream) -> io::Result<UdpSocket> {
    let local = control.local_addr()?.ip().to_canonical();
    UdpSocket::bind(SocketAddr::new(local, 0)).await
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
    /// The control connection's peer, as recorded in events.
    peer: SocketAddr,
    client: Client,
    relay: UdpSocket,
    /// Outbound sockets, bound on first use per family.
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    decisions: Decisions,
    peers: Peers,
}

/// What woke the relay loop.
enum Wake {
    End(&'static str),
    FromClient(io::Result<(usize, SocketAddr)>),
    FromV4(io::Result<(usize, SocketAddr)>),
    FromV6(io::Result<(usize, SocketAddr)>),
}

impl Association<'_> {
    /// Relays until the association ends; returns why it ended.
    async fn run(&mut self, control: &mut TcpStream) -> &'static str {
        let idle = self.shared.settings.idle_timeout;
        let closed = self.shared.engine.tunnel_closed();
        let idle_timer = sleep(idle);
        tokio::pin!(closed, idle_timer);
        let mut from_client = vec![0u8; MAX_DATAGRAM];
        let mut from_v4 = vec![0u8; MAX_DATAGRAM];
        let mut from_v6 = vec![0u8; MAX_DATAGRAM];
        let mut control_byte = [0u8; 1];
        loop {
            let wake = tokio::select! {
                biased;
                () = &mut closed => Wake::End("tunnels closed"),
                read = control.read(&mut control_byte) => Wake::End(match read {
                    Ok(0) => "control connection closed",
                    Ok(_) => "unexpected bytes on the control connection",
                    Err(_) => "control connection failed",
                }),
                () = &mut idle_timer => Wake::End("idle timeout"),
                got = self.relay.recv_from(&mut from_client) => Wake::FromClient(got),
                got = recv(self.v4.as_ref(), &mut from_v4) => Wake::FromV4(got),
                got = recv(self.v6.as_ref(), &mut from_v6) => Wake::FromV6(got),
            };
            let active = match wake {
                Wake::End(why) => return why,
                Wake::FromClient(Ok((n, from))) => self.outgoing(&from_client[..n], from).await,
                Wake::FromV4(Ok((n, from))) => self.incoming(&from_v4[..n], from).await,
                Wake::FromV6(Ok((n, from))) => self.incoming(&from_v6[..n], from).await,
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

    /// A datagram on the relay socket. Returns whether it was the client's.
    async fn outgoing(&mut self, datagram: &[u8], from: SocketAddr) -> bool {
        if !self.client.admit(from) {
            tracing::debug!(%from, "datagram from an address other than the client dropped");
            return false;
        }
        // RFC 1928 §7: RSV FRAG ATYP DST.ADDR DST.PORT DATA. The slice is in memory: this
        // await never waits.
        let (frag, addr, payload) = match parse_udp_request(datagram).await {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::debug!(%error, "malformed udp request header dropped");
                return true;
            }
        };
        if frag != 0 {
            // Reassembly is optional (RFC 1928 §7); a server without it drops fragments.
            tracing::debug!(frag, "udp fragment dropped");
            return true;
        }
        let target = match target_of(&addr) {
            Ok(target) => target,
            Err(error) => {
                tracing::debug!(%error, "datagram with a malformed destination dropped");
                return true;
            }
        };
        let verdict = match self.decisions.get(&target, std::time::Instant::now()) {
            Some(verdict) => verdict,
            None => {
                let verdict = self.decide(&target).await;
                self.decisions.insert(target, verdict, std::time::Instant::now());
                verdict
            }
        };
        if let Verdict::Send(to) = verdict {
            self.send_upstream(payload, to).await;
        }
        true
    }

    /// SPEC §6 for one target: decide, then resolve and check, pinning the first checked
    /// address. Each fresh verdict is recorded; blocked ones feed the blocked log.
    async fn decide(&mut self, target: &Target) -> Verdict {
        let engine = &self.shared.engine;
        let attempt = Attempt {
            protocol: Protocol::Socks5Udp,
            target,
            method: None,
            client: Some(self.peer),
            side_doors: SideDoors::default(),
        };
        if let Decision::Block(reason) = engine.decide(&attempt).await {
            tracing::debug!(%target, %reason, "datagram blocked");
            engine.record(engine.event(&attempt, Outcome::Blocked(reason)));
            return Verdict::Drop;
        }
        let checked = match engine.resolve_checked(target).await {
            Ok(checked) => checked,
            Err(error) => {
                tracing::debug!(%target, %error, "datagram destination refused");
                let outcome = match error.reason() {
                    Some(reason) => Outcome::Blocked(reason.clone()),
                    None => Outcome::Failed(error.code().to_owned()),
                };
                engine.record(engine.event(&attempt, outcome));
                return Verdict::Drop;
            }
        };
        let Some(&to) = checked.addrs.first() else { return Verdict::Drop };
        let mut event = engine.event(&attempt, Outcome::Allowed);
        event.dns_time = Some(checked.dns_time);
        engine.record(event);
        Verdict::Send(to)
    }

    async fn send_upstream(&mut self, payload: &[u8], to: SocketAddr) {
        let socket = match self.outbound(to).await {
            Ok(socket) => socket,
            Err(error) => {
                tracing::debug!(%error, %to, "binding an outbound udp socket failed");
                return;
            }
        };
        if send(socket, payload, to).await {
            self.peers.note(to, std::time::Instant::now());
        }
    }

    /// The outbound socket for `to`'s family, bound on first use. It binds to the unspecified
    /// address like any outgoing connection; what arrives on it is relayed only from peers the
    /// client sent to.
    async fn outbound(&mut self, to: SocketAddr) -> io::Result<&UdpSocket> {
        let (slot, any) = match to {
            SocketAddr::V4(_) => (&mut self.v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (&mut self.v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        if slot.is_none() {
            *slot = Some(UdpSocket::bind(SocketAddr::new(any, 0)).await?);
        }
        slot.as_ref().ok_or_else(|| io::ErrorKind::NotConnected.into())
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
        send(&self.relay, &packet, client).await
    }
}

/// Receives on an outbound socket that may not exist yet.
async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Sends one datagram within [`SEND_TIMEOUT`]; `false` when it was dropped.
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
