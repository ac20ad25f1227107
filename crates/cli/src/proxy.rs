//! The embeddable proxy: build (bind), run (serve), and the handle that stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use proxyd_config::Config;
use proxyd_http_proxy::{HttpProxy, UpstreamProxies};
use proxyd_net::{Dialer, Engine, Resolver, SystemResolver};
use proxyd_policy::Mode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Configures a [`NetworkProxy`].
#[derive(Default)]
pub struct NetworkProxyBuilder {
    config: Option<Config>,
    http_addr: Option<SocketAddr>,
    resolver: Option<Arc<dyn Resolver>>,
    extra_ca_file: Option<PathBuf>,
}

impl NetworkProxyBuilder {
    /// The validated configuration (the defaults when not given).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Overrides the HTTP listener address (port 0 lets the OS choose).
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = Some(addr);
        self
    }

    /// Replaces the system resolver, so tests can map names to loopback.
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Trusts the PEM certificates in this file, in addition to the system roots, when proxyd
    /// originates TLS. Defaults to the file named by `SSL_CERT_FILE`.
    pub fn extra_ca_file(mut self, path: PathBuf) -> Self {
        self.extra_ca_file = Some(path);
        self
    }

    /// Binds the listeners. With `enabled = false` nothing is bound and the proxy is a no-op.
    pub async fn build(self) -> anyhow::Result<NetworkProxy> {
        let config = self.config.unwrap_or_default();
        if !config.enabled {
            return Ok(NetworkProxy { inner: None, config });
        }
        let resolver = self.resolver.unwrap_or_else(|| Arc::new(SystemResolver));
        let dialer = Dialer::new(resolver, config.dns_timeout, config.connect_timeout);
        let engine = Engine::new(config.policy(), config.mode, dialer.clone());

        let http_addr = self.http_addr.unwrap_or(config.http_addr);
        let http_listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding the http proxy listener on {http_addr}"))?;
        let http_addr = http_listener.local_addr().context("reading the http listener address")?;
        dialer.set_own_listeners(vec![http_addr]);

        let extra_ca =
            self.extra_ca_file.or_else(|| std::env::var_os("SSL_CERT_FILE").map(PathBuf::from));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = proxyd_http_proxy::client_config(provider, extra_ca.as_deref())
            .context("building the tls client configuration")?;
        let settings = proxyd_http_proxy::Settings {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            drain_timeout: config.drain_timeout,
            max_connections: config.max_connections,
            tls: Arc::new(tls),
            upstream: match config.allow_upstream_proxy {
                true => UpstreamProxies::from_env(|name| std::env::var(name).ok()),
                false => UpstreamProxies::default(),
            },
            unix_sockets: config.allow_unix_sockets.clone(),
        };
        let http = HttpProxy::new(engine.clone(), settings);
        Ok(NetworkProxy {
            inner: Some(Bound { engine, http: (http_listener, http_addr, http) }),
            config,
        })
    }
}

struct Bound {
    engine: Engine,
    http: (TcpListener, SocketAddr, HttpProxy),
}

/// A proxy whose listeners are bound but not yet serving.
pub struct NetworkProxy {
    inner: Option<Bound>,
    config: Config,
}

impl NetworkProxy {
    pub fn builder() -> NetworkProxyBuilder {
        NetworkProxyBuilder::default()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts serving; returns at once with the handle.
    pub async fn run(self) -> anyhow::Result<NetworkProxyHandle> {
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let Some(bound) = self.inner else {
            return Ok(NetworkProxyHandle { engine: None, http_addr: None, stop, tasks });
        };
        let (listener, http_addr, http) = bound.http;
        tracing::info!(listener = "http", addr = %http_addr, "listening");
        tasks.spawn(async move { http.serve(listener, stopping).await });
        Ok(NetworkProxyHandle {
            engine: Some(bound.engine),
            http_addr: Some(http_addr),
            stop,
            tasks,
        })
    }
}

/// A running proxy.
pub struct NetworkProxyHandle {
    engine: Option<Engine>,
    http_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl NetworkProxyHandle {
    /// The bound HTTP proxy address; `None` when the proxy is disabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The current mode.
    pub fn mode(&self) -> Option<Mode> {
        self.engine.as_ref().map(Engine::mode)
    }

    /// Switches the mode for new requests; switching to limited closes open tunnels.
    pub fn set_mode(&self, mode: Mode) {
        if let Some(engine) = &self.engine {
            engine.set_mode(mode);
        }
    }

    /// Stops accepting, lets in-flight requests finish, and closes tunnels after
    /// `drain_timeout`.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        while let Some(result) = self.tasks.join_next().await {
            result.context("a listener task failed")?;
        }
        Ok(())
    }
}
