//! The live decision state shared by every listener: the current policy and mode, the policy
//! decider hook (SPEC §9), the structured decision events (SPEC §10), and the signals that close
//! open tunnels (a switch to limited mode, SPEC §6.2, and the end of a drain, SPEC §7.5).
//!
//! Listeners call [`Engine::decide`] and then [`Engine::resolve_checked`]/[`Engine::dial`];
//! nothing here holds a lock across an await: the policy is an `Arc` snapshot taken per request.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use proxyd_policy::{
    Decision, Mode, Policy, Protocol, Reason, Request, SideDoors, Target, Verdict,
};
use tokio::sync::watch;

use crate::dial::{Checked, Connected, Dialer};
use crate::error::DialError;
use crate::resolve::BoxFuture;

/// What the policy decider sees (SPEC §9): only allowlist misses reach it.
#[derive(Debug, Clone)]
pub struct DeciderRequest {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub client_addr: Option<SocketAddr>,
    pub method: Option<String>,
}

/// The decider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeciderAnswer {
    Allow,
    Deny(String),
}

/// An asynchronous policy hook, consulted only for `not_allowed` and bounded by
/// `decider_timeout` (a timeout is a deny).
pub trait Decider: Send + Sync + 'static {
    fn decide(&self, request: DeciderRequest) -> BoxFuture<'static, DeciderAnswer>;
}

/// One decision, as logged and as recorded in the blocked log (SPEC §8.1, §10).
#[derive(Debug, Clone)]
pub struct Event {
    pub protocol: Protocol,
    pub client: Option<SocketAddr>,
    pub host: String,
    pub port: u16,
    pub method: Option<String>,
    pub mode: Mode,
    /// `None` when allowed; otherwise the block or failure.
    pub outcome: Outcome,
    pub dns_time: Option<Duration>,
    pub connect_time: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// A policy block (goes to the blocked log).
    Blocked(Reason),
    /// A failure that is not a policy decision (`dns_failed`, `connect_refused`, `malformed`…).
    Failed(String),
}

impl Outcome {
    pub fn decision(&self) -> &'static str {
        match self {
            Outcome::Allowed => "allow",
            Outcome::Blocked(_) => "block",
            Outcome::Failed(_) => "error",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Blocked(reason) => reason.code(),
            Outcome::Failed(code) => code,
        }
    }
}

/// Receives every decision event; must not block (the request path calls it inline).
pub trait EventSink: Send + Sync + 'static {
    fn record(&self, event: &Event);

    /// Bytes a finished tunnel relayed (client to upstream, upstream to client).
    fn tunnel_bytes(&self, _protocol: &str, _up: u64, _down: u64) {}
}

/// A request being decided.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub protocol: Protocol,
    pub target: &'a Target,
    pub method: Option<&'a str>,
    pub client: Option<SocketAddr>,
    pub side_doors: SideDoors,
}

/// The shared live state. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    policy: RwLock<Arc<Policy>>,
    mode: watch::Sender<Mode>,
    /// Bumped on every switch from full to limited: an open tunnel closes when it changes,
    /// however briefly the mode stayed limited.
    limited_epoch: watch::Sender<u64>,
    closing: watch::Sender<bool>,
    dialer: Dialer,
    decider: Option<(Arc<dyn Decider>, Duration)>,
    sinks: Vec<Arc<dyn EventSink>>,
}

impl Engine {
    pub fn new(policy: Policy, mode: Mode, dialer: Dialer) -> Engine {
        Engine::builder(policy, mode, dialer).build()
    }

    pub fn builder(policy: Policy, mode: Mode, dialer: Dialer) -> EngineBuilder {
        EngineBuilder { policy, mode, dialer, decider: None, sinks: Vec::new() }
    }

    /// The current policy snapshot.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps the policy for new decisions.
    pub fn set_policy(&self, policy: Policy) {
        *self.inner.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    pub fn mode(&self) -> Mode {
        *self.inner.mode.borrow()
    }

    /// Switches the mode for the next request; a switch to limited closes open tunnels.
    pub fn set_mode(&self, mode: Mode) {
        let old = self.inner.mode.send_replace(mode);
        if old != Mode::Limited && mode == Mode::Limited {
            self.inner.limited_epoch.send_modify(|epoch| *epoch += 1);
        }
    }

    pub fn dialer(&self) -> &Dialer {
        &self.inner.dialer
    }

    /// Asks every open tunnel to close (end of a drain).
    pub fn close_tunnels(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves when an open tunnel must close: the mode is limited now, or switches to
    /// limited later (even for a moment), or a drain ran out.
    pub fn tunnel_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut epoch = self.inner.limited_epoch.subscribe();
        let opened_in = *epoch.borrow_and_update();
        let limited_now = self.mode() == Mode::Limited;
        let mut closing = self.inner.closing.subscribe();
        async move {
            if limited_now {
                return;
            }
            tokio::select! {
                _ = epoch.wait_for(|e| *e != opened_in) => {}
                _ = closing.wait_for(|c| *c) => {}
            }
        }
    }

    /// Steps 2–6 of SPEC §6, with the decider for allowlist misses.
    pub async fn decide(&self, attempt: &Attempt<'_>) -> Decision {
        self.decide_request(attempt, false).await
    }

    /// [`Engine::decide`] for a `CONNECT` whose tunnel the listener terminates and whose
    /// requests it decides again one by one (`Request::inspected`): limited mode lets it open.
    pub async fn decide_inspected(&self, attempt: &Attempt<'_>) -> Decision {
        self.decide_request(attempt, true).await
    }

    async fn decide_request(&self, attempt: &Attempt<'_>, inspected: bool) -> Decision {
        let policy = self.policy();
        let request = Request {
            protocol: attempt.protocol,
            target: attempt.target,
            method: attempt.method,
            mode: self.mode(),
            side_doors: attempt.side_doors,
            inspected,
        };
        let consult = match policy.decide(&request) {
            Verdict::Decided(decision) => return decision,
            Verdict::Consult(consult) => consult,
        };
        let Some((decider, timeout)) = &self.inner.decider else {
            return consult.not_allowed();
        };
        let question = DeciderRequest {
            protocol: attempt.protocol,
            host: attempt.target.host.to_string(),
            port: attempt.target.port,
            client_addr: attempt.client,
            method: attempt.method.map(str::to_owned),
        };
        match tokio::time::timeout(*timeout, decider.decide(question)).await {
            Ok(DeciderAnswer::Allow) => consult.allow(),
            Ok(DeciderAnswer::Deny(reason)) => consult.deny(reason),
            Err(_) => consult.deny("decider_timeout"),
        }
    }

    /// Step 7 on the current policy.
    pub async fn resolve_checked(&self, target: &Target) -> Result<Checked, DialError> {
        let policy = self.policy();
        self.inner.dialer.resolve_checked(&policy, target).await
    }

    /// Steps 7 and 8 on the current policy.
    pub async fn dial(&self, target: &Target) -> Result<Connected, DialError> {
        let policy = self.policy();
        self.inner.dialer.dial(&policy, target).await
    }

    /// Logs one decision event and hands it to the sinks (SPEC §10).
    pub fn record(&self, event: Event) {
        let method = event.method.as_deref().unwrap_or("-");
        let client = event.client.map(|c| c.to_string()).unwrap_or_default();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "proxyd::decision",
            protocol = event.protocol.as_str(),
            client = %client,
            host = %event.host,
            port = event.port,
            method,
            mode = event.mode.as_str(),
            decision = event.outcome.decision(),
            reason = event.outcome.reason(),
            dns_ms = ms(event.dns_time),
            connect_ms = ms(event.connect_time),
            "decision"
        );
        for sink in &self.inner.sinks {
            sink.record(&event);
        }
    }

    /// Reports the bytes a finished tunnel relayed.
    pub fn record_tunnel_bytes(&self, protocol: Protocol, up: u64, down: u64) {
        for sink in &self.inner.sinks {
            sink.tunnel_bytes(protocol.as_str(), up, down);
        }
    }

    /// Builds an event for `attempt` with the current mode.
    pub fn event(&self, attempt: &Attempt<'_>, outcome: Outcome) -> Event {
        Event {
            protocol: attempt.protocol,
            client: attempt.client,
            host: attempt.target.host.to_string(),
            port: attempt.target.port,
            method: attempt.method.map(str::to_owned),
            mode: self.mode(),
            outcome,
            dns_time: None,
            connect_time: None,
        }
    }
}

/// Configures an [`Engine`].
pub struct EngineBuilder {
    policy: Policy,
    mode: Mode,
    dialer: Dialer,
    decider: Option<(Arc<dyn Decider>, Duration)>,
    sinks: Vec<Arc<dyn EventSink>>,
}

impl EngineBuilder {
    pub fn decider(mut self, decider: Arc<dyn Decider>, timeout: Duration) -> EngineBuilder {
        self.decider = Some((decider, timeout));
        self
    }

    pub fn sink(mut self, sink: Arc<dyn EventSink>) -> EngineBuilder {
        self.sinks.push(sink);
        self
    }

    pub fn build(self) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                policy: RwLock::new(Arc::new(self.policy)),
                mode: watch::Sender::new(self.mode),
                limited_epoch: watch::Sender::new(0),
                closing: watch::Sender::new(false),
                dialer: self.dialer,
                decider: self.decider,
                sinks: self.sinks,
            }),
        }
    }
}
