//! What one UDP association remembers (RFC 1928 §7): which client may send, the verdict for
//! each target it sent to, and the peers whose replies may come back.
//!
//! Pure bookkeeping: time arrives as an argument, so every rule is a plain function call.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proxyd_net::UdpRoute;
use proxyd_policy::Target;

/// How long a verdict for one target is reused within an association, so a name is resolved
/// again now and then, and a chatty client (DNS, QUIC) is not decided, resolved and recorded
/// once per datagram. A reload or a mode switch ends every verdict at once (generations).
pub(crate) const UDP_DECISION_TTL: Duration = Duration::from_secs(5);

/// Bounds on the per-association tables, so a client cannot grow them without limit.
const MAX_DECISIONS: usize = 256;
const MAX_PEERS: usize = 1024;

/// The one address allowed to send datagrams to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client {
    ip: IpAddr,
    port: Option<u16>,
}

impl Client {
    /// The client is the TCP control connection's peer IP (whatever `DST.ADDR` claims: it may
    /// be all zeros, RFC 1928 §7, and a different IP is not trusted), on `requested_port`, or
    /// on the port of its first datagram when the request named port 0.
    pub(crate) fn new(control_peer: IpAddr, requested_port: u16) -> Client {
        let port = (requested_port != 0).then_some(requested_port);
        Client { ip: control_peer.to_canonical(), port }
    }

    /// Whether a datagram from `from` is the client's; pins the port on first use.
    pub(crate) fn admit(&mut self, from: SocketAddr) -> bool {
        let from = canonical(from);
        if from.ip() != self.ip {
            return false;
        }
        match self.port {
            Some(port) => port == from.port(),
            None => {
                self.port = Some(from.port());
                true
            }
        }
    }

    /// Where replies go, once known.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.port.map(|port| SocketAddr::new(self.ip, port))
    }
}

/// What to do with datagrams for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Allowed: send along this route (a name stays pinned to its checked address).
    Send(UdpRoute),
    /// Blocked, or the name did not resolve: drop.
    Drop,
}

/// Verdicts per target, each valid for [`UDP_DECISION_TTL`] within the policy and mode
/// generation it was made in.
#[derive(Debug, Default)]
pub(crate) struct Decisions {
    map: HashMap<Target, (Verdict, Instant, u64)>,
}

impl Decisions {
    pub(crate) fn get(&self, target: &Target, now: Instant, generation: u64) -> Option<Verdict> {
        self.map
            .get(target)
            .filter(|(_, decided, made_in)| {
                *made_in == generation && now.saturating_duration_since(*decided) < UDP_DECISION_TTL
            })
            .map(|(verdict, _, _)| *verdict)
    }

    pub(crate) fn insert(
        &mut self,
        target: Target,
        verdict: Verdict,
        now: Instant,
        generation: u64,
    ) {
        if self.map.len() >= MAX_DECISIONS && !self.map.contains_key(&target) {
            self.map.retain(|_, (_, decided, made_in)| {
                *made_in == generation && now.saturating_duration_since(*decided) < UDP_DECISION_TTL
            });
            if self.map.len() >= MAX_DECISIONS {
                self.map.clear();
            }
        }
        self.map.insert(target, (verdict, now, generation));
    }
}

/// The addresses the client sent to: only their datagrams are relayed back.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    last_sent: HashMap<SocketAddr, Instant>,
}

impl Peers {
    pub(crate) fn note(&mut self, peer: SocketAddr, now: Instant) {
        let peer = canonical(peer);
        if self.last_sent.len() >= MAX_PEERS && !self.last_sent.contains_key(&peer) {
            // Forget the peer sent to longest ago.
            let oldest = self.last_sent.iter().min_by_key(|(_, at)| **at).map(|(addr, _)| *addr);
            if let Some(oldest) = oldest {
                self.last_sent.remove(&oldest);
            }
        }
        self.last_sent.insert(peer, now);
    }

    pub(crate) fn contains(&self, from: SocketAddr) -> bool {
        self.last_sent.contains_key(&canonical(from))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so a dual-stack socket's view compares equal.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[track_caller]
    fn check(client: &mut Client, from: &str, admitted: bool) {
        assert_eq!(client.admit(addr(from)), admitted, "{from}");
    }

    #[test]
    fn client_with_a_named_port() {
        let mut client = Client::new("127.0.0.1".parse().unwrap(), 5000);
        assert_eq!(client.addr(), Some(addr("127.0.0.1:5000")));
        check(&mut client, "127.0.0.1:5001", false);
        check(&mut client, "127.0.0.2:5000", false);
        check(&mut client, "127.0.0.1:5000", true);
        check(&mut client, "[::ffff:127.0.0.1]:5000", true);
        check(&mut client, "[::1]:5000", false);
    }

    #[test]
    fn client_port_zero_pins_the_first_sender() {
        let mut client = Client::new("::ffff:127.0.0.1".parse().unwrap(), 0);
        assert_eq!(client.addr(), None);
        check(&mut client, "10.0.0.1:7000", false);
        assert_eq!(client.addr(), None);
        check(&mut client, "127.0.0.1:7000", true);
        check(&mut client, "127.0.0.1:7001", false);
        check(&mut client, "127.0.0.1:7000", true);
        assert_eq!(client.addr(), Some(addr("127.0.0.1:7000")));
    }

    #[test]
    fn decisions_expire() {
        let target = Target::parse_authority("a.test:53", None).unwrap();
        let start = Instant::now();
        let mut decisions = Decisions::default();
        assert_eq!(decisions.get(&target, start, 0), None);
        decisions.insert(target.clone(), Verdict::Drop, start, 0);
        assert_eq!(decisions.get(&target, start + UDP_DECISION_TTL / 2, 0), Some(Verdict::Drop));
        assert_eq!(decisions.get(&target, start + UDP_DECISION_TTL, 0), None);
    }

    #[test]
    fn a_new_generation_ends_every_decision() {
        let target = Target::parse_authority("a.test:53", None).unwrap();
        let start = Instant::now();
        let mut decisions = Decisions::default();
        decisions.insert(target.clone(), Verdict::Drop, start, 3);
        assert_eq!(decisions.get(&target, start, 3), Some(Verdict::Drop));
        assert_eq!(decisions.get(&target, start, 4), None);
    }

    #[test]
    fn decisions_stay_bounded() {
        let start = Instant::now();
        let mut decisions = Decisions::default();
        for port in 1..=(MAX_DECISIONS as u16 * 3) {
            let target = Target::parse_authority(&format!("a.test:{port}"), None).unwrap();
            decisions.insert(target, Verdict::Drop, start, 0);
            assert!(decisions.map.len() <= MAX_DECISIONS);
        }
    }

    #[test]
    fn peers_are_canonical_and_bounded() {
        let start = Instant::now();
        let mut peers = Peers::default();
        peers.note(addr("[::ffff:192.0.2.1]:53"), start);
        assert!(peers.contains(addr("192.0.2.1:53")));
        assert!(!peers.contains(addr("192.0.2.1:54")));
        for port in 1..=(MAX_PEERS as u16) {
            peers.note(
                addr(&format!("198.51.100.1:{port}")),
                start + Duration::from_millis(port.into()),
            );
        }
        assert_eq!(peers.last_sent.len(), MAX_PEERS);
        // The first peer was the oldest and made room for the last one.
        assert!(!peers.contains(addr("192.0.2.1:53")));
        assert!(peers.contains(addr(&format!("198.51.100.1:{MAX_PEERS}"))));
    }
}
