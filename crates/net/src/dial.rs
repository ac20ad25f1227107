//! The one dialler (SPEC §6 steps 7–8, §7.1).
//!
//! A name is resolved once, every answer is checked by `Policy::check_resolved`, and only those
//! checked `SocketAddr`s are connected to. Nothing here hands a host name to anything else that
//! could resolve it again: [`connect_addr`] takes a `SocketAddr`.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use proxyd_policy::{Decision, Policy, Target};
use tokio::net::TcpStream;

use crate::error::DialError;
use crate::happy_eyeballs::{interleave, race};
use crate::lookups::Lookups;
use crate::resolve::{Resolver, dedup};

/// How long one connection attempt runs alone before the next address is tried in parallel
/// (RFC 8305 §5 recommends 250 ms).
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Resolves, checks and connects. Cheap to clone: clones share the resolver and the list of
/// proxyd's own listeners.
#[derive(Clone)]
pub struct Dialer {
    inner: Arc<Inner>,
}

struct Inner {
    lookups: Lookups,
    dns_timeout: Duration,
    connect_timeout: Duration,
    /// proxyd's bound addresses, refused as `self_connection`. Locked only for short,
    /// synchronous sections, never across an await.
    own_listeners: RwLock<Vec<SocketAddr>>,
}

/// The addresses a target may be dialled at: every one has passed `Policy::check_resolved`.
/// Only the admission path constructs one (private fields), and only a `Checked` is ever
/// connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    target: Target,
    /// In the resolver's order, deduplicated, with the target's port.
    addrs: Vec<SocketAddr>,
    /// Time spent resolving (zero for literals and `localhost` names).
    dns_time: Duration,
}

impl Checked {
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The checked addresses, in the resolver's order, with the target's port.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn dns_time(&self) -> Duration {
        self.dns_time
    }
}

/// An endpoint the operator configured (an upstream proxy, SPEC §7.6), not one a client asked
/// for: no allowlist or local-address check applies to it, but proxyd still never connects to
/// its own listeners. Dialled only for an admitted attempt ([`crate::Admission::dial_upstream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorEndpoint {
    target: Target,
}

impl OperatorEndpoint {
    /// From proxyd's own configuration or environment, never from a client's request.
    pub fn from_operator_config(target: Target) -> OperatorEndpoint {
        OperatorEndpoint { target }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// An established upstream connection, with `TCP_NODELAY` set.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    /// The checked address that won the race.
    pub peer: SocketAddr,
    pub connect_time: Duration,
}

impl Dialer {
    /// `dns_timeout` bounds each lookup; `connect_timeout` bounds the whole connection race.
    pub fn new(
        resolver: Arc<dyn Resolver>,
        dns_timeout: Duration,
        connect_timeout: Duration,
    ) -> Dialer {
        Dialer {
            inner: Arc::new(Inner {
                lookups: Lookups::new(resolver),
                dns_timeout,
                connect_timeout,
                own_listeners: RwLock::new(Vec::new()),
            }),
        }
    }

    /// Sets proxyd's own bound addresses (known only once the listeners are bound), so that
    /// dialling them is refused as `self_connection` (SPEC §7.1).
    pub fn set_own_listeners(&self, addrs: Vec<SocketAddr>) {
        // The list is replaced whole, so a poisoned lock still holds a consistent value.
        *self.inner.own_listeners.write().unwrap_or_else(PoisonError::into_inner) = addrs;
    }

    pub fn own_listeners(&self) -> Vec<SocketAddr> {
        self.inner.own_listeners.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn dns_timeout(&self) -> Duration {
        self.inner.dns_timeout
    }

    pub fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// SPEC §6 step 7: the target's fixed addresses (IP literal, `localhost` names), or one
    /// lookup under `dns_timeout`; then `Policy::check_resolved` on every answer, A and AAAA
    /// alike. One blocked answer blocks the whole target.
    ///
    /// Call only after `Policy::decide` allowed the target: this is where its name is sent to
    /// DNS.
    pub(crate) async fn resolve_checked(
        &self,
        policy: &Policy,
        target: &Target,
        client: Option<IpAddr>,
    ) -> Result<Checked, DialError> {
        let (ips, dns_time) = match (target.host.fixed_addrs(), target.host.name()) {
            (Some(ips), _) => (ips, Duration::ZERO),
            (None, Some(name)) => {
                let started = Instant::now();
                let ips = self.inner.lookups.lookup(name, client, self.inner.dns_timeout).await?;
                (ips, started.elapsed())
            }
            // Hosts without fixed addresses are names; there is nothing else to resolve.
            (None, None) => return Err(DialError::DnsFailed),
        };
        let ips = dedup(ips);
        if ips.is_empty() {
            tracing::debug!(%target, "dns answer is empty");
            return Err(DialError::DnsFailed);
        }
        let decision = {
            let own = self.inner.own_listeners.read().unwrap_or_else(PoisonError::into_inner);
            policy.check_resolved(target, &ips, &own)
        };
        if let Decision::Block(reason) = decision {
            tracing::debug!(%target, ?ips, %reason, "resolved address blocked");
            return Err(DialError::Blocked(reason, ips));
        }
        let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, target.port)).collect();
        Ok(Checked { target: target.clone(), addrs, dns_time })
    }

    /// SPEC §6 step 8: races the checked addresses (RFC 8305 style, see the crate docs), the
    /// whole race bounded by `connect_timeout`.
    pub(crate) async fn connect(&self, checked: &Checked) -> Result<Connected, DialError> {
        let started = Instant::now();
        let (stream, peer) = self.race_checked(checked, connect_addr).await?;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "setting TCP_NODELAY failed");
        }
        Ok(Connected { stream, peer, connect_time: started.elapsed() })
    }

    /// The race of [`Dialer::connect`] with the connection attempt as a parameter, so the
    /// timeout path is testable without a blackholed network.
    async fn race_checked<T, F, Fut>(
        &self,
        checked: &Checked,
        connect: F,
    ) -> Result<(T, SocketAddr), DialError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        let order = interleave(&checked.addrs);
        let raced = tokio::time::timeout(
            self.inner.connect_timeout,
            race(&order, CONNECTION_ATTEMPT_DELAY, connect),
        )
        .await;
        match raced {
            Ok(Ok(won)) => Ok(won),
            Ok(Err(error)) => {
                tracing::debug!(target = %checked.target, %error, "connect failed");
                Err(connect_error(&error))
            }
            Err(_elapsed) => {
                tracing::debug!(target = %checked.target, "connect timed out");
                Err(DialError::Timeout)
            }
        }
    }

    /// Dials an operator's endpoint: resolved and connected like any target, but checked only
    /// against proxyd's own listeners, so an upstream proxy variable that points back at
    /// proxyd fails instead of looping.
    pub(crate) async fn dial_operator(
        &self,
        endpoint: &OperatorEndpoint,
    ) -> Result<Connected, DialError> {
        let operator = Policy { allow_local_binding: true, enabled: true, ..Policy::default() };
        let checked = self.resolve_checked(&operator, &endpoint.target, None).await?;
        self.connect(&checked).await
    }

    /// Distinct DNS lookups in flight now (for tests and metrics).
    pub fn lookups_in_flight(&self) -> usize {
        self.inner.lookups.in_flight()
    }
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("dns_timeout", &self.inner.dns_timeout)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("own_listeners", &self.own_listeners())
            .finish_non_exhaustive()
    }
}

/// The only place proxyd opens an outbound TCP connection. It takes a `SocketAddr`, so it
/// cannot resolve anything.
#[expect(clippy::disallowed_methods, reason = "the one dialler (SPEC §7.1)")]
fn connect_addr(addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> {
    TcpStream::connect(addr)
}

/// Maps the error of the last failed attempt (the text is logged by the caller, not kept).
fn connect_error(error: &io::Error) -> DialError {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => DialError::Refused,
        // The kernel gave up on the handshake before our own clock did.
        io::ErrorKind::TimedOut => DialError::Timeout,
        _ => DialError::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(kind: io::ErrorKind, expected: DialError) {
        assert_eq!(connect_error(&io::Error::from(kind)), expected);
    }

    #[test]
    fn connect_errors_map_to_refused_timeout_or_unreachable() {
        check(io::ErrorKind::ConnectionRefused, DialError::Refused);
        check(io::ErrorKind::TimedOut, DialError::Timeout);
        check(io::ErrorKind::HostUnreachable, DialError::Unreachable);
        check(io::ErrorKind::NetworkUnreachable, DialError::Unreachable);
        check(io::ErrorKind::AddrNotAvailable, DialError::Unreachable);
        check(io::ErrorKind::PermissionDenied, DialError::Unreachable);
        check(io::ErrorKind::InvalidInput, DialError::Unreachable);
    }

    fn dialer(connect_timeout: Duration) -> Dialer {
        let resolver = Arc::new(crate::StaticResolver::new());
        Dialer::new(resolver, Duration::from_secs(1), connect_timeout)
    }

    fn checked(addrs: &[&str]) -> Checked {
        Checked {
            target: Target::parse_authority("x.test:80", None).unwrap(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            dns_time: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn the_connect_timeout_bounds_the_whole_race() {
        // Attempts that never finish stand in for blackholed addresses, which loopback cannot
        // produce (and nothing here may leave loopback).
        let hang = |_addr: SocketAddr| std::future::pending::<io::Result<()>>();
        let dialer = dialer(Duration::from_millis(50));
        let checked = checked(&["192.0.2.1:80", "192.0.2.2:80"]);
        let race = dialer.race_checked(&checked, hang);
        let result = tokio::time::timeout(Duration::from_secs(5), race).await;
        assert_eq!(
            result.expect("connect_timeout must fire first").err(),
            Some(DialError::Timeout)
        );
    }

    #[tokio::test]
    async fn no_address_to_connect_to_is_unreachable() {
        let never = |_addr: SocketAddr| async { unreachable!("nothing to dial") };
        let result: Result<((), SocketAddr), _> =
            dialer(Duration::from_secs(1)).race_checked(&checked(&[]), never).await;
        assert_eq!(result.err(), Some(DialError::Unreachable));
    }
}
