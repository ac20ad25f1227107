//! The embeddable proxy (SPEC §9): build (bind), run (serve), and the handle that steers and
//! stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use proxyd_admin::{AdminServer, BlockedEntry, ReloadError};
use proxyd_config::{Config, Sources};
use proxyd_http_proxy::{CaScope, HttpProxy, InterceptCa, UpstreamProxies};
use proxyd_net::{Dialer, Engine, Resolver, SystemResolver};
use proxyd_policy::Mode;
use proxyd_socks5::Socks5Proxy;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::decider::{Adapter, NetworkPolicyDecider};
use crate::live::{BlockedObserver, Live};

/// Configures a [`NetworkProxy`].
#[derive(Default)]
pub struct NetworkProxyBuilder {
    config: Option<Config>,
    sources: Option<Sources>,
    http_addr: Option<SocketAddr>,
    socks_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    without_admin: bool,
    resolver: Option<Arc<dyn Resolver>>,
    decider: Option<Arc<dyn NetworkPolicyDecider>>,
    observer: Option<BlockedObserver>,
    command: Option<String>,
    exec_policy_hint: Option<String>,
    extra_ca_file: Option<PathBuf>,
}

impl NetworkProxyBuilder {
    /// The validated configuration (the defaults when not given). Such a proxy has no
    /// sources to re-read, so `reload` reports an error unless [`Self::sources`] is set too.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Loads the config from these sources, and re-reads them on every reload.
    pub fn sources(mut self, sources: Sources) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Overrides the HTTP listener address (port 0 lets the OS choose).
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = Some(addr);
        self
    }

    /// Overrides the SOCKS5 listener address.
    pub fn socks_addr(mut self, addr: SocketAddr) -> Self {
        self.socks_addr = Some(addr);
        self
    }

    /// Overrides the admin listener address.
    pub fn admin_addr(mut self, addr: SocketAddr) -> Self {
        self.admin_addr = Some(addr);
        self
    }

    /// Binds no admin listener. `proxyd exec` uses this: the admin API has no per-client
    /// authentication, and the confined command could otherwise find its port and switch the
    /// mode or reload.
    pub fn without_admin(mut self) -> Self {
        self.without_admin = true;
        self
    }

    /// Replaces the system resolver, so tests can map names to loopback.
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Consulted for allowlist misses only, bounded by `decider_timeout` (a timeout denies).
    pub fn policy_decider(mut self, decider: impl NetworkPolicyDecider) -> Self {
        self.decider = Some(Arc::new(decider));
        self
    }

    /// Called with every blocked request, off the request path (a slow observer never delays
    /// a request; past 1,024 pending notifications new ones are dropped for it).
    pub fn blocked_observer(
        mut self,
        observer: impl Fn(&BlockedEntry) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The command line running behind this proxy, passed to the decider.
    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.command = Some(command.into());
        self
    }

    /// The embedder's exec-policy hint, passed to the decider untouched.
    pub fn exec_policy_hint(mut self, hint: impl Into<String>) -> Self {
        self.exec_policy_hint = Some(hint.into());
        self
    }

    /// Trusts the PEM certificates in this file, in addition to the system roots, when proxyd
    /// originates TLS. Defaults to the file named by `SSL_CERT_FILE`.
    pub fn extra_ca_file(mut self, path: PathBuf) -> Self {
        self.extra_ca_file = Some(path);
        self
    }

    /// Binds the listeners (port 0 works). With `enabled = false` nothing is bound and the
    /// proxy is a no-op.
    pub async fn build(self) -> anyhow::Result<NetworkProxy> {
        let config = match (self.config, &self.sources) {
            (Some(config), _) => config,
            (None, Some(sources)) => Config::load(sources)
                .map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))?,
            (None, None) => Config::default(),
        };
        if !config.enabled {
            return Ok(NetworkProxy { bound: None, config, ca: None });
        }
        let resolver = self.resolver.unwrap_or_else(|| Arc::new(SystemResolver));
        let dialer = Dialer::new(resolver, config.dns_timeout, config.connect_timeout);

        let http_addr = self.http_addr.unwrap_or(config.http_addr);
        let http = bind("http proxy", http_addr).await?;
        let socks = match config.enable_socks5 {
            true => Some(bind("socks5", self.socks_addr.unwrap_or(config.socks_addr)).await?),
            false => None,
        };
        let admin = match self.without_admin {
            true => None,
            false => Some(bind("admin", self.admin_addr.unwrap_or(config.admin_addr)).await?),
        };
        // proxyd never proxies to itself, admin listener included (SPEC §7.1, §8.3).
        let mut own = vec![http.1];
        own.extend(admin.as_ref().map(|a| a.1));
        own.extend(socks.as_ref().map(|s| s.1));
        dialer.set_own_listeners(own);

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Made whatever the mode, as the mode can switch to limited at runtime. The name
        // constraints follow the allowlist, unless a decider may allow names beyond it.
        let ca = match config.mitm {
            true => {
                let scope = match self.decider.is_some() {
                    true => CaScope::Everything,
                    false => CaScope::from_patterns(config.policy().allowed.patterns()),
                };
                let ca = InterceptCa::generate(scope, provider.clone())
                    .context("making the interception ca")?;
                Some(Arc::new(ca))
            }
            false => None,
        };
        let mut engine = Engine::builder(config.policy(), config.mode, dialer);
        if let Some(decider) = self.decider {
            let adapter =
                Adapter { decider, command: self.command, exec_policy_hint: self.exec_policy_hint };
            engine = engine.decider(Arc::new(adapter), config.decider_timeout);
        }
        // The live state is the engine's event sink, and the engine is part of the live
        // state: build the sink first and hand it the engine once it exists.
        let sink = Arc::new(LateSink::default());
        let engine = engine.sink(sink.clone()).build();
        let live = Arc::new(Live::new(engine.clone(), config.clone(), self.sources, self.observer));
        sink.set(live.clone());

        let extra_ca =
            self.extra_ca_file.or_else(|| std::env::var_os("SSL_CERT_FILE").map(PathBuf::from));
        let tls = proxyd_http_proxy::client_config(provider, extra_ca.as_deref())
            .context("building the tls client configuration")?;
        let upstream = match config.allow_upstream_proxy {
            true => UpstreamProxies::from_env(|name| std::env::var(name).ok()),
            false => UpstreamProxies::default(),
        };
        let http_proxy = HttpProxy::new(
            engine.clone(),
            proxyd_http_proxy::Settings {
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                drain_timeout: config.drain_timeout,
                max_connections: config.max_connections,
                tls: Arc::new(tls),
                upstream,
                unix_sockets: config.allow_unix_sockets.clone(),
                mitm: ca.clone(),
            },
        );
        live.add_listener("http", http.1, http_proxy.connections());
        live.add_tunnels("http", http_proxy.tunnels());
        let socks = socks.map(|(listener, addr)| {
            let proxy = Socks5Proxy::new(
                engine.clone(),
                proxyd_socks5::Settings {
                    handshake_timeout: config.header_read_timeout,
                    idle_timeout: config.idle_timeout,
                    drain_timeout: config.drain_timeout,
                    max_connections: config.max_connections,
                    enable_udp: config.enable_socks5_udp,
                },
            );
            live.add_listener("socks5", addr, proxy.connections());
            live.add_tunnels("socks5", proxy.tunnels());
            (listener, addr, proxy)
        });
        let admin = admin.map(|(listener, addr)| {
            live.add_listener("admin", addr, proxyd_net::Connections::new());
            let server = AdminServer::new(
                live.clone(),
                proxyd_admin::Settings {
                    header_read_timeout: config.header_read_timeout,
                    drain_timeout: config.drain_timeout,
                    token: config.admin_token.as_ref().map(|t| t.as_str().to_owned()),
                    max_connections: 256,
                },
            );
            (listener, addr, server)
        });
        Ok(NetworkProxy {
            bound: Some(Bound { live, http: (http.0, http.1, http_proxy), socks, admin }),
            config,
            ca,
        })
    }
}

async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {name} listener on {addr}"))?;
    let bound = listener.local_addr().with_context(|| format!("reading the {name} address"))?;
    Ok((listener, bound))
}

/// The engine's event sink, pointed at the live state once it exists.
#[derive(Default)]
struct LateSink(std::sync::OnceLock<Arc<Live>>);

impl LateSink {
    fn set(&self, live: Arc<Live>) {
        let _ = self.0.set(live);
    }
}

impl proxyd_net::EventSink for LateSink {
    fn record(&self, event: &proxyd_net::Event) {
        if let Some(live) = self.0.get() {
            proxyd_net::EventSink::record(&**live, event);
        }
    }

    fn tunnel_bytes(&self, protocol: &str, up: u64, down: u64) {
        if let Some(live) = self.0.get() {
            live.tunnel_bytes(protocol, up, down);
        }
    }
}

struct Bound {
    live: Arc<Live>,
    http: (TcpListener, SocketAddr, HttpProxy),
    socks: Option<(TcpListener, SocketAddr, Socks5Proxy)>,
    admin: Option<(TcpListener, SocketAddr, AdminServer)>,
}

/// A proxy whose listeners are bound but not yet serving.
pub struct NetworkProxy {
    bound: Option<Bound>,
    config: Config,
    ca: Option<Arc<InterceptCa>>,
}

impl NetworkProxy {
    pub fn builder() -> NetworkProxyBuilder {
        NetworkProxyBuilder::default()
    }

    /// The configuration in force at build time.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// With `mitm = true`: the interception CA's certificate (PEM), which clients must trust
    /// for limited-mode HTTPS. The CA is made in memory at build time and its key never leaves
    /// the process; see [`crate::ca`] to write the certificate or a trust bundle.
    pub fn ca_cert_pem(&self) -> Option<String> {
        self.ca.as_ref().map(|ca| ca.cert_pem())
    }

    /// Starts serving; returns at once with the handle.
    pub async fn run(self) -> anyhow::Result<NetworkProxyHandle> {
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let Some(bound) = self.bound else {
            let addrs = Addrs::default();
            return Ok(NetworkProxyHandle { live: None, addrs, ca: None, stop, tasks });
        };
        let (listener, http_addr, http) = bound.http;
        tracing::info!(listener = "http", addr = %http_addr, "listening");
        let rx = stopping.clone();
        tasks.spawn(async move { http.serve(listener, rx).await });
        let socks_addr = bound.socks.map(|(listener, addr, socks)| {
            tracing::info!(listener = "socks5", addr = %addr, "listening");
            let rx = stopping.clone();
            tasks.spawn(async move { socks.serve(listener, rx).await });
            addr
        });
        let admin_addr = bound.admin.map(|(listener, addr, admin)| {
            tracing::info!(listener = "admin", addr = %addr, "listening");
            tasks.spawn(async move { admin.serve(listener, stopping).await });
            addr
        });
        let addrs = Addrs { http: Some(http_addr), socks: socks_addr, admin: admin_addr };
        Ok(NetworkProxyHandle { live: Some(bound.live), addrs, ca: self.ca, stop, tasks })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Addrs {
    http: Option<SocketAddr>,
    socks: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// A running proxy. Every method is a no-op (or `None`) when the proxy is disabled.
pub struct NetworkProxyHandle {
    live: Option<Arc<Live>>,
    addrs: Addrs,
    ca: Option<Arc<InterceptCa>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl NetworkProxyHandle {
    /// The bound HTTP proxy address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addrs.http
    }

    /// The bound SOCKS5 address, when SOCKS5 is enabled.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.addrs.socks
    }

    /// The bound admin API address (`None` when built [`without_admin`](NetworkProxyBuilder::without_admin)).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.addrs.admin
    }

    /// With `mitm = true`: the interception CA's certificate (PEM).
    pub fn ca_cert_pem(&self) -> Option<String> {
        self.ca.as_ref().map(|ca| ca.cert_pem())
    }

    /// The current mode.
    pub fn mode(&self) -> Option<Mode> {
        self.live.as_ref().map(|live| live.engine.mode())
    }

    /// Switches the mode for new requests; switching to limited closes open tunnels,
    /// upgraded connections and UDP associations at once (SPEC §6.2).
    pub fn set_mode(&self, mode: Mode) {
        if let Some(live) = &self.live {
            live.engine.set_mode(mode);
        }
    }

    /// Re-reads the config sources; on any error the running config stays in force. Returns
    /// the changed keys that take effect only at the next restart.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        match &self.live {
            Some(live) => live.reload_now(),
            None => Ok(Vec::new()),
        }
    }

    /// The blocked log, oldest first.
    pub fn blocked(&self) -> Vec<BlockedEntry> {
        self.live.as_ref().map(|live| live.blocked.entries()).unwrap_or_default()
    }

    /// How many requests were blocked since start, including those the bounded log dropped.
    pub fn blocked_total(&self) -> u64 {
        self.live.as_ref().map(|live| live.blocked.total()).unwrap_or_default()
    }

    /// Stops accepting, lets in-flight requests finish, and closes tunnels and UDP
    /// associations once `drain_timeout` has passed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        while let Some(result) = self.tasks.join_next().await {
            result.context("a listener task failed")?;
        }
        Ok(())
    }
}
