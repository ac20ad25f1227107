//! The live decision state shared by every listener: the current policy and mode as one
//! snapshot, the policy decider hook (SPEC §9), decision events (SPEC §10), and the registry of
//! live exchanges ([`Lease`]s) that hears every mode switch and reload.
//!
//! Listeners call [`Engine::admit`] (admission.rs) and nothing else to decide, record and dial.
//! Nothing here holds a lock across an await: a snapshot is an `Arc` taken once per attempt.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use proxyd_lifecycle::Lifecycle;
use proxyd_policy::{Mode, Policy, Protocol, Reason};

use crate::admission::{Facts, LeaseState};
use crate::ask::Asker;
use crate::dial::Dialer;
use crate::resolve::BoxFuture;
use crate::splice::{Relay, RelayStats};

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
    /// Ask a person (the engine's [`crate::Asker`]); without one, a deny (`not_allowed`).
    Ask,
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
    pub outcome: Outcome,
    pub dns_time: Option<Duration>,
    pub connect_time: Option<Duration>,
    /// What a person needs to fix a block: the addresses a name resolved to, and the entry
    /// that would allow them.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// A policy block (goes to the blocked log).
    Blocked(Reason),
    /// A failure that is not a policy decision (`dns_failed`, `connect_refused`…).
    Failed(&'static str),
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

/// The policy and mode in force, read together once per attempt. `generation` moves on every
/// reload and every mode switch.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) policy: Arc<Policy>,
    pub(crate) mode: Mode,
    pub(crate) generation: u64,
}

/// The shared live state. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises changes, so the snapshot swap and the revocation sweep after it are one step.
    changing: Mutex<()>,
    pub(crate) dialer: Dialer,
    pub(crate) decider: Option<(Arc<dyn Decider>, Duration)>,
    /// `on_miss = "ask"`: allowlist misses the decider did not settle wait for a person.
    pub(crate) asker: Option<Arc<Asker>>,
    sinks: Vec<Arc<dyn EventSink>>,
    pub(crate) lifecycle: Lifecycle,
    /// Every live exchange (tunnel, upgraded connection, streaming request, association).
    leases: Mutex<HashMap<u64, Arc<LeaseState>>>,
    next_lease: AtomicU64,
    /// Relays every tunnel and owns the pipes and buffers they borrow.
    pub(crate) relay: Relay,
}

impl Engine {
    pub fn builder(policy: Policy, mode: Mode, dialer: Dialer) -> EngineBuilder {
        EngineBuilder {
            policy,
            mode,
            dialer,
            decider: None,
            asker: None,
            sinks: Vec::new(),
            lifecycle: Lifecycle::new(),
        }
    }

    /// The questions of `on_miss = "ask"`, when set.
    pub fn asker(&self) -> Option<&Arc<Asker>> {
        self.inner.asker.as_ref()
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.snapshot().policy.clone()
    }

    pub fn mode(&self) -> Mode {
        self.snapshot().mode
    }

    /// Counts reloads and mode switches.
    pub fn generation(&self) -> u64 {
        self.snapshot().generation
    }

    /// The dialler's settings (timeouts, proxyd's own listeners); it dials only for an
    /// admission.
    pub fn dialer(&self) -> &Dialer {
        &self.inner.dialer
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.inner.lifecycle
    }

    /// Swaps the policy. Before this returns, every live exchange the new policy would refuse
    /// is revoked: it sends no further byte (SPEC §6.2, §8.2).
    pub fn set_policy(&self, policy: Policy) {
        self.change(|snapshot| Snapshot {
            policy: Arc::new(policy),
            mode: snapshot.mode,
            generation: snapshot.generation + 1,
        });
    }

    /// Switches the mode. Before this returns, every live exchange the new mode refuses
    /// (tunnels, upgrades, UDP associations, requests still streaming a body that limited mode
    /// forbids) is revoked.
    pub fn set_mode(&self, mode: Mode) {
        self.change(|snapshot| Snapshot {
            policy: snapshot.policy.clone(),
            mode,
            generation: snapshot.generation + 1,
        });
    }

    /// Sets the policy and the mode in one step (a reload that changes both).
    pub fn set(&self, policy: Policy, mode: Mode) {
        self.change(|snapshot| Snapshot {
            policy: Arc::new(policy),
            mode,
            generation: snapshot.generation + 1,
        });
    }

    fn change(&self, next: impl FnOnce(&Snapshot) -> Snapshot) {
        let _serial = self.inner.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let new = {
            let mut slot = self.inner.snapshot.write().unwrap_or_else(PoisonError::into_inner);
            let new = Arc::new(next(&slot));
            *slot = new.clone();
            new
        };
        let own = self.inner.dialer.own_listeners();
        let leases: Vec<Arc<LeaseState>> = self
            .inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut revoked = 0usize;
        for lease in leases {
            if let Some(reason) = lease.facts.recheck(&new, &own) {
                lease.revoke(reason);
                revoked += 1;
            }
        }
        if revoked > 0 {
            tracing::info!(
                revoked,
                mode = new.mode.as_str(),
                "live exchanges closed by a policy or mode change"
            );
        }
    }

    /// Registers a live exchange, revoked at once when the policy moved since its snapshot and
    /// no longer allows it.
    pub(crate) fn register(&self, facts: Facts, admitted_in: u64) -> Arc<LeaseState> {
        let id = self.inner.next_lease.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(LeaseState::new(id, facts));
        self.inner.leases.lock().unwrap_or_else(PoisonError::into_inner).insert(id, state.clone());
        // A change between the admission's snapshot and the registration has swept the
        // registry without this lease: check it against the snapshot in force now.
        let now = self.snapshot();
        if now.generation != admitted_in
            && let Some(reason) = state.facts.recheck(&now, &self.inner.dialer.own_listeners())
        {
            state.revoke(reason);
        }
        state
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.inner.leases.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    /// Live exchanges (for tests and metrics).
    pub fn live_exchanges(&self) -> usize {
        self.inner.leases.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Logs one decision event and hands it to the sinks (SPEC §10). Only the admission path
    /// calls this.
    pub(crate) fn record(&self, event: Event) {
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
            detail = event.detail.as_deref(),
            "decision"
        );
        for sink in &self.inner.sinks {
            sink.record(&event);
        }
    }

    /// What the tunnel relay has done: how many tunnels went through `splice(2)` and how many
    /// were copied, and its pipe pool.
    pub fn relay_stats(&self) -> RelayStats {
        self.inner.relay.stats()
    }

    pub(crate) fn record_tunnel_bytes(&self, protocol: Protocol, up: u64, down: u64) {
        for sink in &self.inner.sinks {
            sink.tunnel_bytes(protocol.as_str(), up, down);
        }
    }
}

/// Configures an [`Engine`].
pub struct EngineBuilder {
    policy: Policy,
    mode: Mode,
    dialer: Dialer,
    decider: Option<(Arc<dyn Decider>, Duration)>,
    asker: Option<Arc<Asker>>,
    sinks: Vec<Arc<dyn EventSink>>,
    lifecycle: Lifecycle,
}

impl EngineBuilder {
    pub fn decider(mut self, decider: Arc<dyn Decider>, timeout: Duration) -> EngineBuilder {
        self.decider = Some((decider, timeout));
        self
    }

    /// Holds allowlist misses for a person's answer (`on_miss = "ask"`).
    pub fn asker(mut self, asker: Arc<Asker>) -> EngineBuilder {
        self.asker = Some(asker);
        self
    }

    /// Receives every decision event. Build the sink first: the engine never changes sinks.
    pub fn sink(mut self, sink: Arc<dyn EventSink>) -> EngineBuilder {
        self.sinks.push(sink);
        self
    }

    /// The lifecycle whose end closes every live exchange (a fresh one by default).
    pub fn lifecycle(mut self, lifecycle: Lifecycle) -> EngineBuilder {
        self.lifecycle = lifecycle;
        self
    }

    pub fn build(self) -> Engine {
        let snapshot = Snapshot { policy: Arc::new(self.policy), mode: self.mode, generation: 0 };
        Engine {
            inner: Arc::new(Inner {
                snapshot: RwLock::new(Arc::new(snapshot)),
                changing: Mutex::new(()),
                dialer: self.dialer,
                decider: self.decider,
                asker: self.asker,
                sinks: self.sinks,
                lifecycle: self.lifecycle,
                leases: Mutex::new(HashMap::new()),
                next_lease: AtomicU64::new(1),
                relay: Relay::new(),
            }),
        }
    }
}
