//! The harness: a policy, an engine with a static resolver and an event recorder, and the
//! listener serving on `127.0.0.1:0` until the test ends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use proxyd_net::{Decider, Dialer, Engine, Event, EventSink, Lifecycle, StaticResolver};
use proxyd_policy::{ListKind, Mode, PatternSet, Policy};
use proxyd_socks5::{Settings, Socks5Proxy};
use proxyd_test_support::TIMEOUT;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub(crate) const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Awaits `future`, failing the test if it takes longer than [`TIMEOUT`].
pub(crate) async fn bounded<T>(future: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(TIMEOUT, future).await.context("timed out")
}

/// Records every decision event.
#[derive(Default)]
pub(crate) struct Events(Mutex<Vec<Event>>, Mutex<Vec<(String, u64, u64)>>);

impl EventSink for Events {
    fn record(&self, event: &Event) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(event.clone());
    }

    fn tunnel_bytes(&self, protocol: &str, up: u64, down: u64) {
        self.1.lock().unwrap_or_else(PoisonError::into_inner).push((protocol.into(), up, down));
    }
}

impl Events {
    /// `(protocol, host, port, decision, reason)` of every event so far.
    pub(crate) fn summary(&self) -> Vec<(String, String, u16, String, String)> {
        let events = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        events
            .iter()
            .map(|e| {
                (
                    e.protocol.as_str().to_owned(),
                    e.host.clone(),
                    e.port,
                    e.outcome.decision().to_owned(),
                    e.outcome.reason().to_owned(),
                )
            })
            .collect()
    }

    pub(crate) fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits (bounded) for the first tunnel to end and returns its `(protocol, up, down)`.
    pub(crate) async fn tunnel_bytes(&self) -> anyhow::Result<(String, u64, u64)> {
        bounded(async {
            loop {
                if let Some(row) = self.1.lock().unwrap_or_else(PoisonError::into_inner).first() {
                    return row.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// One expected event row.
pub(crate) fn event(
    protocol: &str,
    host: &str,
    port: u16,
    decision: &str,
    reason: &str,
) -> (String, String, u16, String, String) {
    (protocol.into(), host.into(), port, decision.into(), reason.into())
}

/// What a test proxy is made of; `start` builds and serves it.
pub(crate) struct Setup {
    allowed: Vec<String>,
    denied: Vec<String>,
    allow_local_binding: bool,
    enabled: bool,
    mode: Mode,
    resolver: StaticResolver,
    connect_timeout: Duration,
    decider: Option<Arc<dyn Decider>>,
    drain_timeout: Duration,
    pub(crate) settings: Settings,
}

impl Setup {
    pub(crate) fn new() -> Setup {
        Setup {
            allowed: Vec::new(),
            denied: Vec::new(),
            allow_local_binding: false,
            enabled: true,
            mode: Mode::Full,
            resolver: StaticResolver::new(),
            connect_timeout: Duration::from_secs(5),
            decider: None,
            drain_timeout: Duration::from_secs(5),
            settings: Settings {
                handshake_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(30),
                max_connections: 64,
                enable_udp: true,
                interceptor: None,
            },
        }
    }

    pub(crate) fn allow(mut self, patterns: &[&str]) -> Setup {
        self.allowed.extend(patterns.iter().map(|p| p.to_string()));
        self
    }

    pub(crate) fn deny(mut self, patterns: &[&str]) -> Setup {
        self.denied.extend(patterns.iter().map(|p| p.to_string()));
        self
    }

    pub(crate) fn allow_local_binding(mut self) -> Setup {
        self.allow_local_binding = true;
        self
    }

    pub(crate) fn disabled(mut self) -> Setup {
        self.enabled = false;
        self
    }

    pub(crate) fn mode(mut self, mode: Mode) -> Setup {
        self.mode = mode;
        self
    }

    pub(crate) fn resolve(mut self, name: &str, ip: IpAddr) -> Setup {
        self.resolver = self.resolver.with(name, [ip]);
        self
    }

    pub(crate) fn connect_timeout(mut self, timeout: Duration) -> Setup {
        self.connect_timeout = timeout;
        self
    }

    pub(crate) fn decider(mut self, decider: Arc<dyn Decider>) -> Setup {
        self.decider = Some(decider);
        self
    }

    /// The lifecycle's one drain on shutdown.
    pub(crate) fn drain_timeout(mut self, timeout: Duration) -> Setup {
        self.drain_timeout = timeout;
        self
    }

    pub(crate) fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Setup {
        change(&mut self.settings);
        self
    }

    pub(crate) async fn start(self) -> anyhow::Result<Proxy> {
        let compile = |list: &[String], kind| {
            PatternSet::compile(list, kind).map_err(|e| anyhow::anyhow!("bad patterns: {e:?}"))
        };
        let policy = Policy {
            allowed: compile(&self.allowed, ListKind::Allowed)?,
            denied: compile(&self.denied, ListKind::Denied)?,
            allow_local_binding: self.allow_local_binding,
            enabled: self.enabled,
            unix_sockets: Vec::new(),
            rules: Default::default(),
            secrets: Default::default(),
        };
        let resolver = Arc::new(self.resolver);
        let dialer = Dialer::new(resolver.clone(), Duration::from_secs(2), self.connect_timeout);
        let events = Arc::new(Events::default());
        let lifecycle = Lifecycle::new();
        let mut builder = Engine::builder(policy, self.mode, dialer.clone())
            .sink(events.clone())
            .lifecycle(lifecycle.clone());
        if let Some(decider) = self.decider {
            builder = builder.decider(decider, Duration::from_secs(2));
        }
        let engine = builder.build();
        let listener =
            TcpListener::bind(SocketAddr::new(LOCALHOST, 0)).await.context("bind socks5")?;
        let addr = listener.local_addr()?;
        dialer.set_own_listeners(vec![addr]);
        let socks = Socks5Proxy::new(engine.clone(), self.settings);
        let serving = tokio::spawn({
            let socks = socks.clone();
            async move { socks.serve(listener).await }
        });
        let drain_timeout = self.drain_timeout;
        Ok(Proxy {
            addr,
            socks,
            engine,
            resolver,
            events,
            lifecycle,
            drain_timeout,
            serving: Some(serving),
        })
    }
}

/// A serving listener; stops when dropped.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) socks: Socks5Proxy,
    pub(crate) engine: Engine,
    pub(crate) resolver: Arc<StaticResolver>,
    pub(crate) events: Arc<Events>,
    lifecycle: Lifecycle,
    drain_timeout: Duration,
    serving: Option<JoinHandle<()>>,
}

impl Proxy {
    /// The lifecycle's one shutdown (stop, drain, close), then waits (bounded) until `serve`
    /// returns.
    pub(crate) async fn shutdown(&mut self) -> anyhow::Result<()> {
        bounded(self.lifecycle.shutdown(self.drain_timeout)).await?;
        if let Some(serving) = self.serving.take() {
            bounded(serving).await?.context("serve panicked")?;
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.lifecycle.close_now();
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }
}
