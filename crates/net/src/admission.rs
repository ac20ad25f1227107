//! The one admission path (SPEC §6): every entry point hands an [`Attempt`] to
//! [`Engine::admit`] and gets back either a [`Refusal`] to present on its wire, or an
//! [`Admission`], the only thing that can dial, open a Unix socket, or (in `udp.rs`) route a
//! datagram. The order of the steps lives here and nowhere else:
//!
//! 1. one snapshot of policy and mode, used for every later step of this attempt;
//! 2. the decision (denylist, local literals, allowlist, method policy; the decider for an
//!    allowlist miss only);
//! 3. resolution and the check of every answer, on the same snapshot;
//! 4. the connection, to checked addresses only;
//! 5. exactly one decision event per attempt: allowed (with DNS and connect timings), blocked,
//!    or failed. An admission dropped before it was settled records `client_gone`;
//! 6. [`Admission::admit`] turns it into a [`Lease`], which every later policy or mode change
//!    re-checks, and which ends the exchange when that change would refuse it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proxyd_policy::{
    Decision, Mode, Policy, Protocol, Reason, Request, RequestFacts, RuleVerdict, SideDoors,
    Target, UnixSocketRule, Verdict,
};

use tokio::sync::Notify;

use crate::dial::{Checked, Connected, OperatorEndpoint};
use crate::engine::{DeciderAnswer, DeciderRequest, Engine, Event, Outcome, Snapshot};
use crate::error::DialError;
use crate::splice::{Side, Spliced};

/// One request or connection to decide, as the listener parsed it off the wire.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub protocol: Protocol,
    pub target: Target,
    /// The HTTP method; `None` for SOCKS5.
    pub method: Option<String>,
    pub client: Option<SocketAddr>,
    pub side_doors: SideDoors,
    /// A `CONNECT` the listener can terminate and decide request by request (it has the
    /// interception CA): in limited mode it is admitted as inspected ([`Admission::inspected`]).
    pub inspectable: bool,
    /// The listener must see inside this `CONNECT` in every mode (its host has brokered
    /// credentials): admitted as inspected whenever `inspectable`.
    pub must_inspect: bool,
    /// The `x-unix-socket` path: the request goes to that socket, not to `target`.
    pub unix_socket: Option<String>,
    /// An HTTP request's path, query and headers, for request rules.
    pub http: Option<HttpFacts>,
}

impl Attempt {
    pub fn new(protocol: Protocol, target: Target, client: Option<SocketAddr>) -> Attempt {
        Attempt {
            protocol,
            target,
            method: None,
            client,
            side_doors: SideDoors::default(),
            inspectable: false,
            must_inspect: false,
            unix_socket: None,
            http: None,
        }
    }

    pub fn http(mut self, facts: HttpFacts) -> Attempt {
        self.http = Some(facts);
        self
    }

    pub fn must_inspect(mut self, must: bool) -> Attempt {
        self.must_inspect = must;
        self
    }

    pub fn method(mut self, method: &str) -> Attempt {
        self.method = Some(method.to_owned());
        self
    }

    pub fn side_doors(mut self, side_doors: SideDoors) -> Attempt {
        self.side_doors = side_doors;
        self
    }

    pub fn inspectable(mut self, inspectable: bool) -> Attempt {
        self.inspectable = inspectable;
        self
    }

    pub fn unix_socket(mut self, path: Option<String>) -> Attempt {
        self.unix_socket = path;
        self
    }
}

/// The request line and headers of an HTTP request, for the request rules of its host.
#[derive(Debug, Clone, Default)]
pub struct HttpFacts {
    /// The path as sent, without the query.
    pub path: String,
    /// The query as sent, without the `?`.
    pub query: Option<String>,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl HttpFacts {
    /// Runs `f` on the borrowed form the policy reads.
    fn view<R>(&self, target: &Target, method: &str, f: impl FnOnce(&RequestFacts<'_>) -> R) -> R {
        let headers: Vec<(&str, &[u8])> =
            self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let facts = RequestFacts {
            target,
            method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &headers,
        };
        f(&facts)
    }
}

/// What the request rule that allowed a request asks of it on its way out.
#[derive(Clone, Default)]
pub struct RuleEdits {
    /// The rule's name.
    pub rule: String,
    /// Request headers to remove (lower case), the injected header's name included.
    pub strip: Vec<String>,
    /// A header to add: name and value (a secret).
    pub inject: Option<(String, String)>,
}

impl std::fmt::Debug for RuleEdits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleEdits")
            .field("rule", &self.rule)
            .field("strip", &self.strip)
            .field("inject", &self.inject.as_ref().map(|(name, _)| name))
            .finish()
    }
}

/// Why an attempt went no further. The listener presents it (HTTP status, `x-proxy-error`,
/// SOCKS reply code); the event is already recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A policy decision.
    #[error("blocked: {reason}")]
    Blocked {
        reason: Reason,
        mode: Mode,
        /// What resolved where, and the entry that would allow it (resolved-address blocks).
        detail: Option<String>,
    },
    /// Not a policy decision: the name did not resolve, the origin refused, the listener's own
    /// step failed.
    #[error("failed: {}", failure.code())]
    Failed { failure: Failure, mode: Mode },
}

impl Refusal {
    /// The mode the attempt was decided in.
    pub fn mode(&self) -> Mode {
        match self {
            Refusal::Blocked { mode, .. } | Refusal::Failed { mode, .. } => *mode,
        }
    }

    /// The code as logged and sent in JSON bodies.
    pub fn code(&self) -> &str {
        match self {
            Refusal::Blocked { reason, .. } => reason.code(),
            Refusal::Failed { failure, .. } => failure.code(),
        }
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Refusal::Blocked { reason, .. } => Some(reason),
            Refusal::Failed { .. } => None,
        }
    }
}

/// A failure that is not a policy decision. No variant carries upstream error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The lookup failed, returned nothing, or did not answer within `dns_timeout`.
    DnsFailed,
    ConnectRefused,
    ConnectUnreachable,
    ConnectTimeout,
    /// The upstream proxy could not be reached or refused the tunnel.
    UpstreamProxy,
    /// TLS or the HTTP handshake with the origin failed.
    UpstreamTls,
    /// The origin failed to answer a forwarded request.
    UpstreamFailed,
    UnixSocket,
    /// The interception CA's name constraints do not cover the host (restart to apply).
    MitmCaScope,
    /// Not TLS inside an intercepted tunnel.
    MitmNotTls,
    MitmHelloTimeout,
    /// Signing a leaf for the host failed.
    MitmLeafFailed,
    /// The client's TLS handshake failed (most often: it does not trust proxyd's CA).
    MitmHandshakeFailed,
    MitmHandshakeTimeout,
    /// The client went away before the attempt was settled.
    ClientGone,
    /// The SOCKS5 UDP relay socket could not be bound.
    UdpRelay,
}

impl Failure {
    pub fn code(self) -> &'static str {
        match self {
            Failure::DnsFailed => "dns_failed",
            Failure::ConnectRefused => "connect_refused",
            Failure::ConnectUnreachable => "connect_unreachable",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::UpstreamProxy => "upstream_proxy_failed",
            Failure::UpstreamTls => "upstream_tls_failed",
            Failure::UpstreamFailed => "upstream_failed",
            Failure::UnixSocket => "unix_socket_failed",
            Failure::MitmCaScope => "mitm_ca_scope",
            Failure::MitmNotTls => "mitm_not_tls",
            Failure::MitmHelloTimeout => "mitm_hello_timeout",
            Failure::MitmLeafFailed => "mitm_leaf_failed",
            Failure::MitmHandshakeFailed => "mitm_handshake_failed",
            Failure::MitmHandshakeTimeout => "mitm_handshake_timeout",
            Failure::ClientGone => "client_gone",
            Failure::UdpRelay => "udp_relay_failed",
        }
    }
}

impl From<DialError> for Result<(Reason, Vec<std::net::IpAddr>), Failure> {
    fn from(error: DialError) -> Result<(Reason, Vec<std::net::IpAddr>), Failure> {
        match error {
            DialError::Blocked(reason, ips) => Ok((reason, ips)),
            DialError::DnsFailed | DialError::DnsTimeout => Err(Failure::DnsFailed),
            DialError::Refused => Err(Failure::ConnectRefused),
            DialError::Unreachable => Err(Failure::ConnectUnreachable),
            DialError::Timeout => Err(Failure::ConnectTimeout),
        }
    }
}

impl Engine {
    /// Decides `attempt` on one snapshot of policy and mode (SPEC §6 steps 2–6, the decider
    /// for an allowlist miss). A block is recorded and returned; an allow comes back as the
    /// [`Admission`] that carries the same snapshot on to resolution and dialling.
    pub async fn admit(&self, attempt: Attempt) -> Result<Admission, Refusal> {
        let snapshot = self.snapshot();
        // A tunnel the listener can terminate is inspected in limited mode, and in every mode
        // when its host has request rules or brokered credentials. SOCKS5 is inspectable only
        // to port 443 (the listener says so).
        let inspected = attempt.inspectable
            && matches!(attempt.protocol, Protocol::HttpConnect | Protocol::Socks5)
            && (snapshot.mode == Mode::Limited
                || attempt.must_inspect
                || snapshot.policy.rules.has_rules_for(&attempt.target));
        let mut admission = Admission {
            engine: self.clone(),
            snapshot,
            attempt,
            inspected,
            decider_allowed: false,
            edits: None,
            detail: None,
            unix: None,
            peers: Vec::new(),
            dns_time: None,
            connect_time: None,
            settled: false,
        };
        let decision = admission.decide().await;
        match decision {
            Decision::Allow => Ok(admission),
            Decision::Block(reason) => Err(admission.block(reason)),
        }
    }
}

impl Engine {
    /// Refuses `attempt` for a reason of the listener's own wire (a DNS query type the service
    /// does not answer) and records it like any block: the admission path stays the only
    /// place that records.
    pub fn refuse(&self, attempt: Attempt, reason: Reason) -> Refusal {
        let mode = self.mode();
        self.record(Event {
            protocol: attempt.protocol,
            client: attempt.client,
            host: attempt.target.host.to_string(),
            port: attempt.target.port,
            method: attempt.method,
            mode,
            outcome: Outcome::Blocked(reason.clone()),
            dns_time: None,
            connect_time: None,
            detail: None,
        });
        Refusal::Blocked { reason, mode, detail: None }
    }
}

/// An attempt the policy allowed, not yet settled. Holds the snapshot it was decided on.
#[must_use = "an admission records its outcome when settled (or `client_gone` when dropped)"]
pub struct Admission {
    engine: Engine,
    snapshot: Arc<Snapshot>,
    attempt: Attempt,
    inspected: bool,
    /// The allowlist missed and the policy decider allowed it: a re-check keeps that answer.
    decider_allowed: bool,
    /// What the request rule that allowed it asks (strip, inject).
    edits: Option<RuleEdits>,
    /// What a resolved-address block resolved to (for the event and the refusal).
    detail: Option<String>,
    unix: Option<UnixSocketRule>,
    /// Every checked address of the target: what a later change re-checks.
    peers: Vec<IpAddr>,
    dns_time: Option<Duration>,
    connect_time: Option<Duration>,
    settled: bool,
}

impl Admission {
    /// The mode the attempt was decided in.
    pub fn mode(&self) -> Mode {
        self.snapshot.mode
    }

    /// A `CONNECT` admitted because the listener terminates it and decides every request
    /// inside again (limited mode with `mitm`): the listener must intercept it.
    pub fn inspected(&self) -> bool {
        self.inspected
    }

    pub fn target(&self) -> &Target {
        &self.attempt.target
    }

    pub fn attempt(&self) -> &Attempt {
        &self.attempt
    }

    /// What the request rule that allowed this request asks of it (headers to strip, one to
    /// inject); `None` when its host has no rules.
    pub fn rule_edits(&self) -> Option<&RuleEdits> {
        self.edits.as_ref()
    }

    async fn decide(&mut self) -> Decision {
        let policy = self.snapshot.policy.clone();
        let attempt = &self.attempt;
        if let Some(path) = &attempt.unix_socket {
            let method = attempt.method.as_deref().unwrap_or_default();
            let (decision, rule) =
                policy.decide_unix_socket(path, method, self.snapshot.mode, attempt.side_doors);
            self.unix = rule.cloned();
            return decision;
        }
        let verdict =
            with_facts(attempt.http.as_ref(), &attempt.target, attempt.method.as_deref(), |http| {
                let request = Request {
                    protocol: attempt.protocol,
                    target: &attempt.target,
                    method: attempt.method.as_deref(),
                    mode: self.snapshot.mode,
                    side_doors: attempt.side_doors,
                    inspected: self.inspected,
                    http,
                };
                let (verdict, rules) = policy.decide_with_rules(&request);
                (verdict, rules.and_then(|rules| rule_edits(&policy, rules)))
            });
        let consult = match verdict {
            (Verdict::Decided(decision), edits) => {
                self.edits = edits;
                return decision;
            }
            (Verdict::Consult(consult), edits) => {
                self.edits = edits;
                consult
            }
        };
        let answer = match &self.engine.inner.decider {
            Some((decider, timeout)) => {
                let question = DeciderRequest {
                    protocol: attempt.protocol,
                    host: attempt.target.host.to_string(),
                    port: attempt.target.port,
                    client_addr: attempt.client,
                    method: attempt.method.clone(),
                };
                match tokio::time::timeout(*timeout, decider.decide(question)).await {
                    Ok(answer) => answer,
                    Err(_) => return consult.deny("decider_timeout"),
                }
            }
            // No decider: a person is asked when the engine has an asker.
            None => DeciderAnswer::Ask,
        };
        match answer {
            DeciderAnswer::Allow => {
                self.decider_allowed = true;
                consult.allow()
            }
            DeciderAnswer::Deny(reason) => consult.deny(reason),
            DeciderAnswer::Ask => {
                let Some(asker) = self.engine.inner.asker.clone() else {
                    return consult.not_allowed();
                };
                let host = attempt.target.host.to_string();
                let asked = asker
                    .ask(
                        attempt.protocol,
                        &host,
                        attempt.target.port,
                        attempt.method.as_deref(),
                        attempt.client,
                    )
                    .await;
                match asked {
                    Ok(()) => {
                        self.decider_allowed = true;
                        consult.allow()
                    }
                    Err(unanswered) => consult.deny(unanswered.code()),
                }
            }
        }
    }

    /// SPEC §6 step 7 on this attempt's snapshot: the target's fixed addresses or one lookup,
    /// then the check of every answer. Call only when the egress is direct (through an
    /// upstream proxy the name is resolved there).
    pub async fn resolve(&mut self) -> Result<Checked, Refusal> {
        let dialer = &self.engine.inner.dialer;
        let client = self.attempt.client.map(|c| c.ip());
        match dialer.resolve_checked(&self.snapshot.policy, &self.attempt.target, client).await {
            Ok(checked) => {
                self.dns_time = Some(checked.dns_time());
                self.peers = checked.addrs().iter().map(SocketAddr::ip).collect();
                Ok(checked)
            }
            Err(error) => Err(self.dial_refusal(error)),
        }
    }

    /// SPEC §6 step 8: connects to the addresses `resolve` checked, nothing else.
    pub async fn connect(&mut self, checked: &Checked) -> Result<Connected, Refusal> {
        match self.engine.inner.dialer.connect(checked).await {
            Ok(connected) => {
                self.connect_time = Some(connected.connect_time);
                Ok(connected)
            }
            Err(error) => Err(self.dial_refusal(error)),
        }
    }

    /// [`Admission::resolve`], then [`Admission::connect`].
    pub async fn dial(&mut self) -> Result<Connected, Refusal> {
        let checked = self.resolve().await?;
        self.connect(&checked).await
    }

    /// Connects to an upstream proxy the operator configured (SPEC §7.6), for this attempt,
    /// whose target the upstream proxy will resolve. Never one of proxyd's own listeners.
    pub async fn dial_upstream(
        &mut self,
        endpoint: &OperatorEndpoint,
    ) -> Result<Connected, Refusal> {
        match self.engine.inner.dialer.dial_operator(endpoint).await {
            Ok(connected) => {
                self.connect_time = Some(connected.connect_time);
                Ok(connected)
            }
            Err(error) => {
                tracing::warn!(proxy = %endpoint.target(), reason = ?error, "cannot reach the upstream proxy");
                Err(self.fail(Failure::UpstreamProxy))
            }
        }
    }

    /// Opens the Unix socket the policy allowed (SPEC §7.7): its canonical path as pinned at
    /// load, refused (`unix_socket_changed`) when that path no longer leads to the same
    /// socket without following a symlink.
    #[cfg(unix)]
    pub async fn open_unix(&mut self) -> Result<tokio::net::UnixStream, Refusal> {
        let Some(rule) = self.unix.clone() else {
            return Err(self.fail(Failure::UnixSocket));
        };
        let timeout = self.engine.inner.dialer.connect_timeout();
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, crate::unix::open(&rule)).await {
            Ok(Ok(stream)) => {
                self.connect_time = Some(started.elapsed());
                Ok(stream)
            }
            Ok(Err(crate::unix::OpenError::Changed)) => Err(self.block(Reason::UnixSocketChanged)),
            Ok(Err(crate::unix::OpenError::Io(error))) => {
                tracing::debug!(path = %rule.canonical.display(), %error, "unix socket connect failed");
                Err(self.fail(Failure::UnixSocket))
            }
            Err(_) => Err(self.fail(Failure::UnixSocket)),
        }
    }

    /// Settles the attempt as failed (a step of the listener's own: TLS with the origin, the
    /// interception handshake) and records it.
    pub fn fail(&mut self, failure: Failure) -> Refusal {
        self.settle(Outcome::Failed(failure.code()));
        Refusal::Failed { failure, mode: self.snapshot.mode }
    }

    /// Settles the attempt as blocked by a check of the listener's own (the TLS server name
    /// of an intercepted tunnel) and records it.
    pub fn block(&mut self, reason: Reason) -> Refusal {
        self.block_with(reason, None)
    }

    fn block_with(&mut self, reason: Reason, detail: Option<String>) -> Refusal {
        self.detail = detail.clone();
        self.settle(Outcome::Blocked(reason.clone()));
        Refusal::Blocked { reason, mode: self.snapshot.mode, detail }
    }

    /// Settles the attempt as allowed, records it with its timings, and returns the lease the
    /// exchange lives under from now on. When the policy or mode changed since this attempt's
    /// snapshot and the change refuses it, the attempt is settled as blocked instead and
    /// nothing may be sent: the listener presents the refusal.
    pub fn admit(mut self) -> Result<Lease, Refusal> {
        let facts = self.facts();
        let lease =
            Lease::new(&self.engine, facts, self.snapshot.generation, self.attempt.protocol);
        if let Some(reason) = lease.revoked_reason() {
            tracing::debug!(target = %self.attempt.target, %reason, "refused by a change made while it was being admitted");
            let mode = lease.mode();
            self.settle(Outcome::Blocked(reason.clone()));
            return Err(Refusal::Blocked { reason, mode, detail: None });
        }
        self.settle(Outcome::Allowed);
        Ok(lease)
    }

    fn facts(&mut self) -> Facts {
        match self.unix.take() {
            Some(rule) => Facts::Unix {
                rule,
                method: self.attempt.method.clone().unwrap_or_default(),
                side_doors: self.attempt.side_doors,
            },
            None => Facts::Request {
                protocol: self.attempt.protocol,
                target: self.attempt.target.clone(),
                method: self.attempt.method.clone(),
                side_doors: self.attempt.side_doors,
                inspected: self.inspected,
                decider_allowed: self.decider_allowed,
                http: self.attempt.http.clone(),
                peers: std::mem::take(&mut self.peers),
            },
        }
    }

    /// Settles a datagram route (udp.rs): recorded like any attempt; no lease, since every
    /// datagram re-checks the route's generation instead. A change made while it was being
    /// decided is checked here, so the route is valid for the generation it returns.
    pub(crate) fn admit_datagram(mut self) -> Result<u64, Refusal> {
        let now = self.engine.snapshot();
        if now.generation != self.snapshot.generation
            && let Some(reason) =
                self.facts().recheck(&now, &self.engine.inner.dialer.own_listeners())
        {
            self.settle(Outcome::Blocked(reason.clone()));
            return Err(Refusal::Blocked { reason, mode: now.mode, detail: None });
        }
        self.settle(Outcome::Allowed);
        Ok(now.generation)
    }

    fn dial_refusal(&mut self, error: DialError) -> Refusal {
        match Result::<(Reason, Vec<std::net::IpAddr>), Failure>::from(error) {
            Ok((reason, ips)) => {
                let detail = resolved_detail(&self.attempt.target, &reason, &ips);
                self.block_with(reason, detail)
            }
            Err(failure) => self.fail(failure),
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let attempt = &self.attempt;
        self.engine.record(Event {
            protocol: attempt.protocol,
            client: attempt.client,
            host: attempt.target.host.to_string(),
            port: attempt.target.port,
            method: attempt.method.clone(),
            mode: self.snapshot.mode,
            outcome,
            dns_time: self.dns_time,
            connect_time: self.connect_time,
            detail: self.detail.take(),
        });
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.settle(Outcome::Failed(Failure::ClientGone.code()));
    }
}

/// What a live exchange was allowed on, re-checked on every policy or mode change.
pub(crate) enum Facts {
    Request {
        protocol: Protocol,
        target: Target,
        method: Option<String>,
        side_doors: SideDoors,
        inspected: bool,
        /// The allowlist missed and the decider allowed: a later allowlist miss keeps it.
        decider_allowed: bool,
        /// The request's path and headers, for request rules.
        http: Option<HttpFacts>,
        /// Empty when the egress went through an upstream proxy (it resolved the name).
        peers: Vec<IpAddr>,
    },
    Unix {
        rule: UnixSocketRule,
        method: String,
        side_doors: SideDoors,
    },
    /// A SOCKS5 UDP association: open while the proxy is enabled in full mode; its datagrams
    /// are decided one destination at a time.
    Association,
}

impl Facts {
    /// Why `snapshot` would refuse this exchange, if it would. An exchange the decider allowed
    /// keeps that allow for its life (the decider is not asked again), but the lists, the local
    /// rules and the method policy of the new snapshot apply; one the allowlist allowed ends when
    /// the allowlist no longer does.
    pub(crate) fn recheck(&self, snapshot: &Snapshot, own: &[SocketAddr]) -> Option<Reason> {
        let policy = &snapshot.policy;
        match self {
            Facts::Request {
                protocol,
                target,
                method,
                side_doors,
                inspected,
                decider_allowed,
                http,
                peers,
            } => {
                let verdict = with_facts(http.as_ref(), target, method.as_deref(), |http| {
                    policy.decide(&Request {
                        protocol: *protocol,
                        target,
                        method: method.as_deref(),
                        mode: snapshot.mode,
                        side_doors: *side_doors,
                        inspected: *inspected,
                        http,
                    })
                });
                let decision = match verdict {
                    Verdict::Decided(decision) => decision,
                    Verdict::Consult(consult) if *decider_allowed => consult.allow(),
                    Verdict::Consult(consult) => consult.not_allowed(),
                };
                if let Decision::Block(reason) = decision {
                    return Some(reason);
                }
                match peers.is_empty() {
                    true => None,
                    false => policy.check_resolved(target, peers, own).reason().cloned(),
                }
            }
            Facts::Unix { rule, method, side_doors } => {
                if !policy.still_allows_unix_socket(rule) {
                    return Some(Reason::NotAllowed);
                }
                let path = rule.configured.to_string_lossy();
                policy
                    .decide_unix_socket(&path, method, snapshot.mode, *side_doors)
                    .0
                    .reason()
                    .cloned()
            }
            Facts::Association => match (policy.enabled, snapshot.mode) {
                (false, _) => Some(Reason::ProxyDisabled),
                (true, Mode::Limited) => Some(Reason::MethodNotAllowed),
                (true, Mode::Full) => None,
            },
        }
    }
}

/// The registry's view of one live exchange.
pub(crate) struct LeaseState {
    pub(crate) id: u64,
    pub(crate) facts: Facts,
    revoked: AtomicBool,
    reason: Mutex<Option<Reason>>,
    notify: Notify,
}

impl LeaseState {
    pub(crate) fn new(id: u64, facts: Facts) -> LeaseState {
        LeaseState {
            id,
            facts,
            revoked: AtomicBool::new(false),
            reason: Mutex::new(None),
            notify: Notify::new(),
        }
    }

    pub(crate) fn revoke(&self, reason: Reason) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.revoked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// A live exchange admitted by [`Admission::admit`]: a tunnel, an upgraded connection, a
/// forwarded request whose body or response may still be streaming, or a UDP association.
/// Revoked, before the change that causes it returns, when a reload or a mode switch would
/// refuse it; ended when the lifecycle closes. Clones share the lease; the last one to drop
/// unregisters it.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    engine: Engine,
    state: Arc<LeaseState>,
    protocol: Protocol,
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        self.engine.unregister(self.state.id);
    }
}

impl Lease {
    pub(crate) fn new(engine: &Engine, facts: Facts, generation: u64, protocol: Protocol) -> Lease {
        let state = engine.register(facts, generation);
        Lease { inner: Arc::new(LeaseInner { engine: engine.clone(), state, protocol }) }
    }

    /// Whether a change revoked it. Checked synchronously before every byte is passed on.
    pub fn is_revoked(&self) -> bool {
        self.inner.state.revoked.load(Ordering::Acquire)
    }

    /// Why it was revoked, if it was.
    pub fn revoked_reason(&self) -> Option<Reason> {
        self.inner.state.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The mode in force now.
    pub fn mode(&self) -> Mode {
        self.inner.engine.mode()
    }

    /// Connects again, for this exchange, to the addresses its own admission checked: a
    /// forwarded request retried on a fresh connection after a pooled one failed before
    /// answering. No new decision and no new event. `None` once the lease is revoked, for a
    /// [`Checked`] of another target or with an address this lease was not admitted for, and
    /// when the connection fails.
    pub async fn reconnect(&self, checked: &Checked) -> Option<Connected> {
        let Facts::Request { target, peers, .. } = &self.inner.state.facts else { return None };
        let own = checked.target() == target
            && checked.addrs().iter().all(|addr| peers.contains(&addr.ip()));
        if !own || self.is_revoked() {
            return None;
        }
        match self.inner.engine.inner.dialer.connect(checked).await {
            Ok(connected) => Some(connected),
            Err(error) => {
                tracing::debug!(target = %target, reason = ?error, "reconnecting for a retry failed");
                None
            }
        }
    }

    /// Resolves when the lease is revoked or the lifecycle closes (at once if either
    /// happened).
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let state = self.inner.state.clone();
        let closing = self.inner.engine.lifecycle().closing();
        async move {
            let revoked = async {
                loop {
                    let notified = state.notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if state.revoked.load(Ordering::Acquire) {
                        return;
                    }
                    notified.await;
                }
            };
            tokio::select! {
                () = revoked => {}
                () = closing => {}
            }
        }
    }

    /// Relays a tunnel (SPEC §7.3) until both sides are done, `idle_timeout` passes without a
    /// byte, the lease ends, or an I/O error; the bytes moved are reported to the event sinks
    /// whatever ended it.
    pub async fn splice(&self, a: Side, b: Side, idle_timeout: Duration) -> Spliced {
        let engine = &self.inner.engine;
        let spliced = engine.inner.relay.splice(a, b, idle_timeout, self.ended()).await;
        engine.record_tunnel_bytes(self.inner.protocol, spliced.a_to_b, spliced.b_to_a);
        spliced
    }
}

/// Runs `f` with the borrowed request facts of `http`, if any.
fn with_facts<R>(
    http: Option<&HttpFacts>,
    target: &Target,
    method: Option<&str>,
    f: impl FnOnce(Option<&RequestFacts<'_>>) -> R,
) -> R {
    match http {
        Some(http) => http.view(target, method.unwrap_or_default(), |facts| f(Some(facts))),
        None => f(None),
    }
}

/// The strip and inject edits of the rule that allowed a request, with the injected value.
fn rule_edits(policy: &Policy, verdict: RuleVerdict<'_>) -> Option<RuleEdits> {
    let RuleVerdict::Allowed { rule, strip, inject } = verdict else {
        return None;
    };
    let inject = inject.and_then(|injection| {
        let value = policy.secrets.0.get(injection.secret)?;
        Some((injection.header.to_ascii_lowercase(), value.clone()))
    });
    Some(RuleEdits {
        rule: rule.to_owned(),
        strip: strip.iter().map(|s| s.to_string()).collect(),
        inject,
    })
}

/// "NAME resolved to A, B; add "A" to allowed_domains ..." for a resolved-address block.
fn resolved_detail(target: &Target, reason: &Reason, ips: &[std::net::IpAddr]) -> Option<String> {
    if ips.is_empty() {
        return None;
    }
    let name = target.host.name()?;
    let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let resolved = format!("{name} resolved to {}", list.join(", "));
    match reason {
        Reason::NotAllowedLocal => {
            let local: Vec<&String> = ips
                .iter()
                .zip(&list)
                .filter(|(ip, _)| proxyd_policy::is_local(**ip))
                .map(|(_, text)| text)
                .collect();
            let entries: Vec<String> = local.iter().map(|ip| format!("\"{ip}\"")).collect();
            Some(format!(
                "{resolved}: local or private; to allow it, add {} to allowed_domains (or a range \
                 that contains it), or set allow_local_binding = true",
                entries.join(", ")
            ))
        }
        Reason::Denied => Some(format!("{resolved}, which denied_domains covers")),
        _ => Some(resolved),
    }
}
