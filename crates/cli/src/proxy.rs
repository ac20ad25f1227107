//! The embeddable proxy (SPEC §9): build (bind), run (serve), and the handle that steers and
//! stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use proxyd_admin::{AdminServer, BlockedEntry, ReloadError};
use proxyd_config::{Config, ConfigErrors, Sources};
use proxyd_http_proxy::{Broker, CaError, CaScope, HttpProxy, InterceptCa, UpstreamProxies};
use proxyd_net::{Dialer, Engine, Lifecycle, Resolver, SystemResolver};
use proxyd_policy::Mode;
use proxyd_socks5::Socks5Proxy;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::decider::{Adapter, NetworkPolicyDecider};
use crate::live::{BlockedObserver, Live, Recorder};

/// Configures a [`NetworkProxy`].
#[derive(Default)]
pub struct NetworkProxyBuilder {
    config: Option<Config>,
    sources: Option<Sources>,
    http_addr: Option<SocketAddr>,
    socks_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    dns_addr: Option<SocketAddr>,
    without_admin: bool,
    resolver: Option<Arc<dyn Resolver>>,
    decider: Option<Arc<dyn NetworkPolicyDecider>>,
    observer: Option<BlockedObserver>,
    command: Option<String>,
    exec_policy_hint: Option<String>,
    extra_ca_file: Option<PathBuf>,
    broker: Option<Broker>,
    ask: bool,
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

    /// Overrides the DNS service's address (it runs only when `dns_url` is set, or when this
    /// is given).
    pub fn dns_addr(mut self, addr: SocketAddr) -> Self {
        self.dns_addr = Some(addr);
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

    /// Asks a person about allowlist misses, as `on_miss = "ask"` does, whatever the config
    /// says (`proxyd exec --ask`).
    pub fn ask(mut self) -> Self {
        self.ask = true;
        self
    }

    /// Brokered credentials (`proxyd exec`): placeholders swapped for real tokens on their way
    /// to the hosts each is bound to, over TLS only. A `CONNECT` to a bound host is then
    /// intercepted in every mode, so the proxy is given an interception CA.
    pub fn broker(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Trusts the PEM certificates in this file, in addition to the system roots, when proxyd
    /// originates TLS. Defaults to the file named by `SSL_CERT_FILE`.
    pub fn extra_ca_file(mut self, path: PathBuf) -> Self {
        self.extra_ca_file = Some(path);
        self
    }

    /// Binds the listeners (port 0 works). With `enabled = false` nothing is bound and the
    /// proxy is a no-op. An address given to [`Self::http_addr`], [`Self::socks_addr`] or
    /// [`Self::admin_addr`] obeys the same loopback clamp as the config's own (a warning is
    /// logged when it is clamped).
    pub async fn build(self) -> Result<NetworkProxy, Error> {
        let config = match (self.config, &self.sources) {
            (Some(config), _) => config,
            (None, Some(sources)) => Config::load(sources)?,
            (None, None) => Config::default(),
        };
        if !config.enabled {
            return Ok(NetworkProxy { bound: None, config, ca: None });
        }
        let resolver =
            self.resolver.unwrap_or_else(|| Arc::new(SystemResolver::from_system_conf()));
        let dialer = Dialer::new(resolver, config.dns_timeout, config.connect_timeout);
        let addr = |key: &str, given: Option<SocketAddr>, configured: SocketAddr| match given {
            Some(given) => {
                let (addr, warning) = config.clamp_listener(key, given);
                if let Some(warning) = warning {
                    tracing::warn!("{warning}");
                }
                addr
            }
            None => configured,
        };
        let http = bind("http", addr("proxy_url", self.http_addr, config.http_addr)).await?;
        let socks = match config.enable_socks5 {
            true => {
                Some(bind("socks5", addr("socks_url", self.socks_addr, config.socks_addr)).await?)
            }
            false => None,
        };
        let admin = match self.without_admin {
            true => None,
            false => {
                Some(bind("admin", addr("admin_url", self.admin_addr, config.admin_addr)).await?)
            }
        };
        let dns = match self.dns_addr.or(config.dns_addr) {
            Some(configured) => Some(bind_dns(addr("dns_url", self.dns_addr, configured)).await?),
            None => None,
        };
        // proxyd never proxies to itself, admin listener included (SPEC §7.1, §8.3).
        let mut own = vec![http.1];
        own.extend(dns.as_ref().map(|d| d.2));
        own.extend(admin.as_ref().map(|a| a.1));
        own.extend(socks.as_ref().map(|s| s.1));
        dialer.set_own_listeners(own.clone());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Made whatever the mode, as the mode can switch to limited at runtime. The name
        // constraints follow the allowlist, unless a decider may allow names beyond it.
        let broker = self.broker.filter(|b| !b.is_empty()).map(Arc::new);
        // Interception where needed: limited mode with `mitm`, and in every mode the hosts with
        // request rules or brokered credentials.
        let ca = match config.mitm || broker.is_some() || !config.rules.is_empty() {
            true => {
                let scope = match self.decider.is_some() {
                    true => CaScope::Everything,
                    false => CaScope::from_patterns(config.policy().allowed.patterns()),
                };
                Some(Arc::new(InterceptCa::generate(scope, provider.clone())?))
            }
            false => None,
        };
        // The one lifecycle every listener, connection and lease hears; the recorder exists
        // before the engine that records into it.
        let lifecycle = Lifecycle::new();
        let recorder = Arc::new(Recorder::new(config.blocked_log_size, self.observer));
        let mut engine = Engine::builder(config.policy(), config.mode, dialer)
            .sink(recorder.clone())
            .lifecycle(lifecycle.clone());
        if config.on_miss_ask || self.ask {
            let asker = proxyd_net::Asker::new(config.ask_timeout, config.ask_max_pending);
            engine = engine.asker(Arc::new(asker));
        }
        if let Some(decider) = self.decider {
            let adapter =
                Adapter { decider, command: self.command, exec_policy_hint: self.exec_policy_hint };
            engine = engine.decider(Arc::new(adapter), config.decider_timeout);
        }
        let engine = engine.build();
        let live = Arc::new(Live::new(engine.clone(), config.clone(), self.sources, recorder));

        let extra_ca =
            self.extra_ca_file.or_else(|| std::env::var_os("SSL_CERT_FILE").map(PathBuf::from));
        let tls =
            proxyd_http_proxy::client_config(provider, extra_ca.as_deref()).map_err(Error::Tls)?;
        let upstream = match config.allow_upstream_proxy {
            true => UpstreamProxies::from_env_except(|name| std::env::var(name).ok(), &own),
            false => UpstreamProxies::default(),
        };
        let http_proxy = HttpProxy::new(
            engine.clone(),
            proxyd_http_proxy::Settings {
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                response_timeout: config.response_timeout,
                max_connections: config.max_connections,
                tls: Arc::new(tls),
                upstream,
                mitm: ca.clone(),
                broker,
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
                    max_connections: config.max_connections,
                    enable_udp: config.enable_socks5_udp,
                    interceptor: http_proxy.interceptor(),
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
                    token: config.admin_token.as_ref().map(|t| t.as_str().to_owned()),
                    max_connections: config.admin_max_connections,
                },
            );
            (listener, addr, server)
        });
        let dns = dns.map(|(udp, tcp, addr)| {
            let server = proxyd_dns::DnsServer::new(
                engine.clone(),
                proxyd_dns::Settings {
                    tcp_timeout: config.header_read_timeout,
                    max_connections: config.max_connections,
                },
            );
            live.add_listener("dns", addr, server.connections());
            (udp, tcp, addr, server)
        });
        Ok(NetworkProxy {
            bound: Some(Bound {
                live,
                dns,
                lifecycle,
                drain_timeout: config.drain_timeout,
                http: (http.0, http.1, http_proxy),
                socks,
                admin,
            }),
            config,
            ca,
        })
    }
}

/// The DNS service's UDP socket and TCP listener on one address (with port 0, the TCP
/// listener takes the port the kernel gave the UDP socket).
#[expect(clippy::disallowed_methods, reason = "the DNS service's own listening socket, not egress")]
async fn bind_dns(
    addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, TcpListener, SocketAddr), Error> {
    let fail = |source| Error::Bind { listener: "dns", addr, source };
    let mut last = None;
    for _ in 0..8 {
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(fail)?;
        let bound = udp.local_addr().map_err(fail)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            // Port 0 gave a UDP port whose TCP twin is taken: try another.
            Err(err) if addr.port() == 0 => last = Some(err),
            Err(err) => return Err(fail(err)),
        }
    }
    Err(fail(last.unwrap_or_else(|| std::io::Error::other("no free port"))))
}

async fn bind(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), Error> {
    let bound = async {
        let socket = TcpListener::bind(addr).await?;
        let local = socket.local_addr()?;
        Ok::<_, std::io::Error>((socket, local))
    };
    bound.await.map_err(|source| Error::Bind { listener, addr, source })
}

struct Bound {
    live: Arc<Live>,
    dns: Option<(tokio::net::UdpSocket, TcpListener, SocketAddr, proxyd_dns::DnsServer)>,
    lifecycle: Lifecycle,
    drain_timeout: std::time::Duration,
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
    pub async fn run(self) -> Result<NetworkProxyHandle, Error> {
        let mut tasks = JoinSet::new();
        let Some(bound) = self.bound else {
            let addrs = Addrs::default();
            return Ok(NetworkProxyHandle { run: None, addrs, ca: None, tasks });
        };
        let (listener, http_addr, http) = bound.http;
        tracing::info!(listener = "http", addr = %http_addr, "listening");
        tasks.spawn(async move { http.serve(listener).await });
        let socks_addr = bound.socks.map(|(listener, addr, socks)| {
            tracing::info!(listener = "socks5", addr = %addr, "listening");
            tasks.spawn(async move { socks.serve(listener).await });
            addr
        });
        let admin_addr = bound.admin.map(|(listener, addr, admin)| {
            tracing::info!(listener = "admin", addr = %addr, "listening");
            let lifecycle = bound.lifecycle.clone();
            tasks.spawn(async move { admin.serve(listener, &lifecycle).await });
            addr
        });
        let dns_addr = bound.dns.map(|(udp, tcp, addr, dns)| {
            tracing::info!(listener = "dns", addr = %addr, "listening");
            tasks.spawn(async move { dns.serve(udp, tcp).await });
            addr
        });
        let addrs =
            Addrs { http: Some(http_addr), socks: socks_addr, admin: admin_addr, dns: dns_addr };
        let run = Running {
            live: bound.live,
            lifecycle: bound.lifecycle,
            drain_timeout: bound.drain_timeout,
        };
        Ok(NetworkProxyHandle { run: Some(run), addrs, ca: self.ca, tasks })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Addrs {
    http: Option<SocketAddr>,
    socks: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    dns: Option<SocketAddr>,
}

/// A running proxy. Every method is a no-op (or `None`) when the proxy is disabled.
///
/// Stop it with [`NetworkProxyHandle::shutdown`], which drains. Dropping the handle instead
/// stops at once: every listener stops accepting (its port is released) and every open
/// connection, tunnel and UDP association is closed, without waiting for requests in flight.
pub struct NetworkProxyHandle {
    run: Option<Running>,
    addrs: Addrs,
    ca: Option<Arc<InterceptCa>>,
    tasks: JoinSet<()>,
}

struct Running {
    live: Arc<Live>,
    lifecycle: Lifecycle,
    drain_timeout: std::time::Duration,
}

impl Drop for NetworkProxyHandle {
    fn drop(&mut self) {
        // After `shutdown` this is a no-op: everything is closed already. The tasks (the
        // accept loops) are aborted when the `JoinSet` drops.
        if let Some(run) = &self.run {
            run.lifecycle.close_now();
        }
    }
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

    /// The bound DNS service address (UDP and TCP), when `dns_url` is set.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.addrs.dns
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
        self.run.as_ref().map(|run| run.live.engine.mode())
    }

    /// Switches the mode for new requests; switching to limited closes open tunnels,
    /// upgraded connections and UDP associations at once (SPEC §6.2).
    pub fn set_mode(&self, mode: Mode) {
        if let Some(run) = &self.run {
            run.live.set_mode_at_runtime(mode);
        }
    }

    /// Re-reads the config sources; on any error the running config stays in force. Returns
    /// the changed keys that take effect only at the next restart.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        match &self.run {
            Some(run) => run.live.reload_now(),
            None => Ok(Vec::new()),
        }
    }

    /// With `on_miss = "ask"`: new questions as they are asked (for a prompt).
    pub fn questions(&self) -> Option<tokio::sync::broadcast::Receiver<proxyd_net::Question>> {
        let run = self.run.as_ref()?;
        run.live.engine.asker().map(|asker| asker.subscribe())
    }

    /// With `on_miss = "ask"`: the questions themselves, to answer from another thread.
    pub fn asker(&self) -> Option<Arc<proxyd_net::Asker>> {
        self.run.as_ref().and_then(|run| run.live.engine.asker().cloned())
    }

    /// With `on_miss = "ask"`: the questions waiting now.
    pub fn pending(&self) -> Vec<proxyd_net::Question> {
        let asker = self.run.as_ref().and_then(|run| run.live.engine.asker().cloned());
        asker.map(|asker| asker.pending()).unwrap_or_default()
    }

    /// Answers a pending question; `false` when there is no such question.
    pub fn answer(&self, id: u64, answer: proxyd_net::Answer) -> bool {
        let asker = self.run.as_ref().and_then(|run| run.live.engine.asker().cloned());
        asker.is_some_and(|asker| asker.answer(id, answer))
    }

    /// The blocked log, oldest first.
    pub fn blocked(&self) -> Vec<BlockedEntry> {
        self.run.as_ref().map(|run| run.live.recorder.blocked.entries()).unwrap_or_default()
    }

    /// How many requests were blocked since start, including those the bounded log dropped.
    pub fn blocked_total(&self) -> u64 {
        self.run.as_ref().map(|run| run.live.recorder.blocked.total()).unwrap_or_default()
    }

    /// The most recent requests that failed for reasons other than the policy (DNS, refused
    /// connections, interception handshakes, the upstream proxy), oldest first, and how many
    /// failed since start (the bounded list may not hold them all).
    pub fn failures(&self) -> (Vec<crate::exec::FailedRequest>, u64) {
        self.run.as_ref().map(|run| run.live.recorder.failures()).unwrap_or_default()
    }

    /// The one shutdown (SPEC §7.5): every listener stops accepting, every connection,
    /// tunnel and UDP association of every listener is drained under one `drain_timeout`, and
    /// what is left is then closed, once.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(run) = &self.run {
            run.lifecycle.shutdown(run.drain_timeout).await;
        }
        while let Some(result) = self.tasks.join_next().await {
            result.map_err(|err| Error::Task(err.to_string()))?;
        }
        Ok(())
    }
}

/// Why the proxy could not be built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; every error of the load, each naming file, line and key.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("binding the {listener} listener on {addr}: {source}")]
    Bind {
        /// `http`, `socks5` or `admin`.
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The interception CA could not be made.
    #[error("making the interception ca: {0}")]
    Ca(#[from] CaError),
    /// The TLS client configuration (system roots, `SSL_CERT_FILE`) could not be built.
    #[error("building the tls client configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// A listener task panicked.
    #[error("a listener task failed: {0}")]
    Task(String),
}
