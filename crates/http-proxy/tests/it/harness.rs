//! The listener under test and the raw client that drives it.
//!
//! [`proxy()`] builds an [`Engine`] over a [`StaticResolver`] (so names map to loopback without
//! `/etc/hosts`), binds an [`HttpProxy`] on `127.0.0.1:0`, registers that address as one of
//! proxyd's own listeners and serves it in a task until [`Proxy::shutdown`]. Every decision
//! event is kept for the test to inspect.
//!
//! [`Client`] speaks raw HTTP/1.1 over one TCP connection, so a test controls every byte sent
//! and sees every byte answered. Every wait is bounded by [`TIMEOUT`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use proxyd_http_proxy::{
    CaScope, HttpProxy, InterceptCa, Settings, UpstreamProxies, client_config,
};
use proxyd_net::{Decider, Dialer, Engine, Event, EventSink, Lifecycle, Outcome, StaticResolver};
use proxyd_policy::{ListKind, Mode, PatternSet, Policy, Protocol, UnixSocketRule};
use proxyd_test_support::{ResponseHead, connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout, timeout_at};

/// The bound on every wait in these tests.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// The loopback address every test name resolves to.
pub(crate) const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Names the default resolver knows; all map to `127.0.0.1`. `unlisted.test` is in no list,
/// `evil.test` is denied, `rebind.test` stands for a name whose DNS answer is local.
const KNOWN_NAMES: &[&str] =
    &["allowed.test", "evil.test", "rebind.test", "unlisted.test", "bypass.test"];

/// The default allowlist: with `allow_local_binding = true`, loopback origins are reachable.
const ALLOWED: &[&str] =
    &["allowed.test", "*.allowed.test", "bypass.test", "localhost", "127.0.0.1"];

/// Collects every decision event and every tunnel's byte counts.
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

/// How to build the proxy under test; [`proxy()`] gives the defaults.
pub(crate) struct Builder {
    allowed: Vec<String>,
    denied: Vec<String>,
    allow_local_binding: bool,
    enabled: bool,
    mode: Mode,
    resolver: StaticResolver,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    response_timeout: Duration,
    drain_timeout: Duration,
    trust: Option<PathBuf>,
    env: Vec<(String, String)>,
    unix_sockets: Vec<PathBuf>,
    rules: proxyd_policy::RuleSet,
    secrets: proxyd_policy::Secrets,
    max_connections: usize,
    decider: Option<Arc<dyn Decider>>,
    mitm: bool,
    broker: Option<Arc<proxyd_http_proxy::Broker>>,
}

/// The defaults: allowlist [`ALLOWED`], denylist `evil.test`, local binding allowed, full
/// mode, long timeouts, no upstream proxy, no extra trust root.
pub(crate) fn proxy() -> Builder {
    let resolver =
        KNOWN_NAMES.iter().fold(StaticResolver::new(), |r, name| r.with(name, [LOOPBACK]));
    Builder {
        allowed: ALLOWED.iter().map(|s| (*s).to_owned()).collect(),
        denied: vec!["evil.test".to_owned()],
        allow_local_binding: true,
        enabled: true,
        mode: Mode::Full,
        resolver,
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        response_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(5),
        trust: None,
        env: Vec::new(),
        unix_sockets: Vec::new(),
        rules: proxyd_policy::RuleSet::default(),
        secrets: proxyd_policy::Secrets::default(),
        max_connections: 256,
        decider: None,
        mitm: false,
        broker: None,
    }
}

impl Builder {
    /// Replaces the allowlist.
    pub(crate) fn allow(mut self, entries: &[&str]) -> Builder {
        self.allowed = entries.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    pub(crate) fn allow_local_binding(mut self, allow: bool) -> Builder {
        self.allow_local_binding = allow;
        self
    }

    pub(crate) fn disabled(mut self) -> Builder {
        self.enabled = false;
        self
    }

    pub(crate) fn limited(mut self) -> Builder {
        self.mode = Mode::Limited;
        self
    }

    pub(crate) fn header_read_timeout(mut self, timeout: Duration) -> Builder {
        self.header_read_timeout = timeout;
        self
    }

    pub(crate) fn idle_timeout(mut self, timeout: Duration) -> Builder {
        self.idle_timeout = timeout;
        self
    }

    pub(crate) fn response_timeout(mut self, timeout: Duration) -> Builder {
        self.response_timeout = timeout;
        self
    }

    pub(crate) fn drain_timeout(mut self, timeout: Duration) -> Builder {
        self.drain_timeout = timeout;
        self
    }

    /// Trusts the PEM bundle at `path` besides the system roots (what `SSL_CERT_FILE` does).
    pub(crate) fn trust(mut self, path: PathBuf) -> Builder {
        self.trust = Some(path);
        self
    }

    /// Sets one of proxyd's environment variables for [`UpstreamProxies::from_env`]; `{proxy}`
    /// in the value stands for the proxy's own listening address.
    pub(crate) fn env(mut self, name: &str, value: &str) -> Builder {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Consults `decider` for allowlist misses (SPEC §9), with a 5 s timeout.
    pub(crate) fn decider(mut self, decider: Arc<dyn Decider>) -> Builder {
        self.decider = Some(decider);
        self
    }

    pub(crate) fn max_connections(mut self, max: usize) -> Builder {
        self.max_connections = max;
        self
    }

    /// Limited-mode interception with a CA constrained to the allowlist (`mitm = true`).
    pub(crate) fn mitm(mut self) -> Builder {
        self.mitm = true;
        self
    }

    /// Request rules, and the values they inject.
    pub(crate) fn rules(mut self, rules: Vec<proxyd_policy::Rule>, secrets: &[&str]) -> Builder {
        self.rules = proxyd_policy::RuleSet::compile(rules).expect("test rules compile");
        self.secrets = proxyd_policy::Secrets(secrets.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// Brokered credentials, as `proxyd exec` sets them up.
    pub(crate) fn broker(mut self, broker: proxyd_http_proxy::Broker) -> Builder {
        self.broker = Some(Arc::new(broker));
        self
    }

    pub(crate) fn unix_socket(mut self, path: PathBuf) -> Builder {
        self.unix_sockets.push(path);
        self
    }

    pub(crate) async fn start(self) -> anyhow::Result<Proxy> {
        let compile = |entries: &[String], kind| {
            PatternSet::compile(entries, kind).map_err(|errors| anyhow::anyhow!("{errors:?}"))
        };
        let policy = Policy {
            allowed: compile(&self.allowed, ListKind::Allowed)?,
            denied: compile(&self.denied, ListKind::Denied)?,
            allow_local_binding: self.allow_local_binding,
            enabled: self.enabled,
            unix_sockets: self.unix_sockets.iter().map(|path| pin_unix_socket(path)).collect(),
            rules: self.rules,
            secrets: self.secrets,
        };
        let scope = CaScope::from_patterns(policy.allowed.patterns());
        let resolver = Arc::new(self.resolver);
        let dialer = Dialer::new(resolver.clone(), Duration::from_secs(2), Duration::from_secs(2));
        let events = Arc::new(Events::default());
        let lifecycle = Lifecycle::new();
        let mut engine = Engine::builder(policy, self.mode, dialer.clone())
            .sink(events.clone())
            .lifecycle(lifecycle.clone());
        if let Some(decider) = self.decider {
            engine = engine.decider(decider, Duration::from_secs(5));
        }
        let engine = engine.build();

        let listener = TcpListener::bind((LOOPBACK, 0)).await.context("bind proxy")?;
        let addr = listener.local_addr().context("proxy address")?;
        dialer.set_own_listeners(vec![addr]);

        let env: Vec<(String, String)> = self
            .env
            .into_iter()
            .map(|(name, value)| (name, value.replace("{proxy}", &addr.to_string())))
            .collect();
        let upstream = UpstreamProxies::from_env(move |name| {
            env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = match self.mitm {
            true => Some(Arc::new(InterceptCa::generate(scope, provider.clone()).context("ca")?)),
            false => None,
        };
        let tls = client_config(provider, self.trust.as_deref()).context("tls client config")?;
        let settings = Settings {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            response_timeout: self.response_timeout,
            max_connections: self.max_connections,
            tls: Arc::new(tls),
            upstream,
            mitm: ca.clone(),
            broker: self.broker,
        };
        let server = HttpProxy::new(engine.clone(), settings);
        let serve = tokio::spawn(async move { server.serve(listener).await });
        let drain_timeout = self.drain_timeout;
        Ok(Proxy { addr, engine, resolver, ca, events, lifecycle, drain_timeout, serve })
    }
}

/// A running proxy. Its serve task is aborted when dropped.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) engine: Engine,
    pub(crate) resolver: Arc<StaticResolver>,
    /// The interception CA, with [`Builder::mitm`].
    pub(crate) ca: Option<Arc<InterceptCa>>,
    events: Arc<Events>,
    lifecycle: Lifecycle,
    drain_timeout: Duration,
    serve: JoinHandle<()>,
}

impl Proxy {
    /// A new client connection to the proxy.
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(self.addr).await
    }

    /// Sends `raw` on a new connection and reads one response.
    pub(crate) async fn send(&self, raw: impl AsRef<[u8]>) -> anyhow::Result<Response> {
        self.client().await?.request(raw).await
    }

    /// Every decision event so far.
    pub(crate) fn events(&self) -> Vec<Event> {
        self.events.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `(protocol, up, down)` of every tunnel that ended so far.
    pub(crate) fn tunnel_bytes(&self) -> Vec<(String, u64, u64)> {
        self.events.1.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The protocol and outcome of every decision so far.
    pub(crate) fn outcomes(&self) -> Vec<(Protocol, Outcome)> {
        self.events().into_iter().map(|e| (e.protocol, e.outcome)).collect()
    }

    /// Starts the lifecycle's one shutdown: stop accepting, drain under `drain_timeout`, close.
    pub(crate) fn shutdown(&self) {
        let (lifecycle, drain_timeout) = (self.lifecycle.clone(), self.drain_timeout);
        tokio::spawn(async move { lifecycle.shutdown(drain_timeout).await });
    }

    /// Waits for `serve()` to return.
    pub(crate) async fn stopped(&mut self) -> anyhow::Result<()> {
        timeout(TIMEOUT, &mut self.serve)
            .await
            .context("serve() did not return")?
            .context("serve task failed")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

/// `METHOD URL HTTP/1.1` with `Host` from the URL's authority, then `headers` (each a full
/// `Name: value` line), then an empty line. Add the body yourself.
pub(crate) fn request(method: &str, url: &str, headers: &[&str]) -> String {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split(['/', '?', '#']).next().unwrap_or(authority);
    let mut out = format!("{method} {url} HTTP/1.1\r\nHost: {authority}\r\n");
    for header in headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

/// `GET URL` with `Host` and nothing else.
pub(crate) fn get(url: &str) -> String {
    request("GET", url, &[])
}

/// `CONNECT AUTHORITY` with a matching `Host`.
pub(crate) fn connect_request(authority: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

/// One raw HTTP/1.1 client connection, with a read buffer so that responses on a keep-alive
/// connection and bytes after a tunnel's `200` are never lost.
pub(crate) struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response: its head and its de-chunked body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) head: ResponseHead,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn status(&self) -> u16 {
        self.head.status
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("json body in {self:?}"))
    }
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        Ok(Client { stream: connect(addr).await?, buf: Vec::new() })
    }

    /// The client's own address (what the proxy records as the client).
    pub(crate) fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.stream.local_addr().context("client address")
    }

    pub(crate) async fn write(&mut self, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
        timeout(TIMEOUT, self.stream.write_all(bytes.as_ref()))
            .await
            .context("write timed out")?
            .context("write")
    }

    /// Sends `raw` and reads one response.
    pub(crate) async fn request(&mut self, raw: impl AsRef<[u8]>) -> anyhow::Result<Response> {
        self.write(raw).await?;
        self.response().await
    }

    /// Shuts down the write half (half-close).
    pub(crate) async fn shutdown_write(&mut self) -> anyhow::Result<()> {
        timeout(TIMEOUT, self.stream.shutdown())
            .await
            .context("shutdown timed out")?
            .context("shutdown")
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self, deadline: Instant) -> anyhow::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = timeout_at(deadline, self.stream.read(&mut chunk))
            .await
            .with_context(|| {
                format!("timed out reading, have {:?}", String::from_utf8_lossy(&self.buf))
            })?
            .context("read")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads until `n` bytes are buffered (an error at EOF).
    async fn fill_to(&mut self, n: usize, deadline: Instant) -> anyhow::Result<()> {
        while self.buf.len() < n {
            ensure!(self.fill(deadline).await? > 0, "eof after {} of {n} bytes", self.buf.len());
        }
        Ok(())
    }

    /// Reads one response head; a body, if any, stays unread.
    pub(crate) async fn head(&mut self) -> anyhow::Result<ResponseHead> {
        let deadline = Instant::now() + TIMEOUT;
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = self.fill(deadline).await?;
            ensure!(
                n > 0,
                "eof before a response head, got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = ResponseHead::parse(&self.buf[..end])?;
        self.buf.drain(..end);
        Ok(head)
    }

    /// Reads one whole response (not to use after `HEAD` or for a `200` to `CONNECT`).
    pub(crate) async fn response(&mut self) -> anyhow::Result<Response> {
        let head = self.head().await?;
        let deadline = Instant::now() + TIMEOUT;
        let body = if head.status < 200 || head.status == 204 || head.status == 304 {
            Vec::new()
        } else if head.header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            self.chunked_body(deadline).await?
        } else if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().context("content-length")?;
            self.fill_to(len, deadline).await?;
            self.buf.drain(..len).collect()
        } else {
            while self.fill(deadline).await? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok(Response { head, body })
    }

    async fn chunked_body(&mut self, deadline: Instant) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                ensure!(self.fill(deadline).await? > 0, "eof in a chunk size line");
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size, 16).with_context(|| format!("chunk {line:?}"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailer section, then the final empty line.
                loop {
                    let at = loop {
                        if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break at;
                        }
                        ensure!(self.fill(deadline).await? > 0, "eof in the trailer section");
                    };
                    self.buf.drain(..at + 2);
                    if at == 0 {
                        return Ok(body);
                    }
                }
            }
            self.fill_to(size + 2, deadline).await?;
            body.extend(self.buf.drain(..size));
            ensure!(self.buf.starts_with(b"\r\n"), "chunk not followed by crlf");
            self.buf.drain(..2);
        }
    }

    /// Reads exactly `n` bytes (from a tunnel).
    pub(crate) async fn read_exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        self.fill_to(n, Instant::now() + TIMEOUT).await?;
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads until the peer closes (EOF or reset) and returns what arrived; fails when the
    /// connection is still open after `within`.
    pub(crate) async fn read_to_close(&mut self, within: Duration) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline).await {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(err) if err.downcast_ref::<std::io::Error>().is_some() => {
                    return Ok(std::mem::take(&mut self.buf));
                }
                Err(err) => bail!("connection still open after {within:?}: {err:#}"),
            }
        }
    }

    /// The stream, for a TLS handshake through a tunnel; fails if unread bytes are buffered.
    pub(crate) fn into_stream(self) -> anyhow::Result<TcpStream> {
        ensure!(self.buf.is_empty(), "unread bytes {:?}", String::from_utf8_lossy(&self.buf));
        Ok(self.stream)
    }
}

/// Asserts a blocked (or disabled) response exactly as SPEC §6.1 has it.
#[track_caller]
pub(crate) fn assert_blocked(
    response: &Response,
    status: u16,
    x_proxy_error: Option<&str>,
    body: serde_json::Value,
) {
    assert_eq!(response.status(), status, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), x_proxy_error, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"), "{response:?}");
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("json body");
    assert_eq!(json, body, "{response:?}");
}

/// A TCP relay in front of an upstream server that counts the connections it accepts, and
/// those still open, to see whether proxyd reuses its upstream connections and when it closes
/// them. Stops when dropped.
pub(crate) struct CountingRelay {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CountingRelay {
    pub(crate) async fn start(to: SocketAddr) -> anyhow::Result<CountingRelay> {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.context("bind relay")?;
        let addr = listener.local_addr().context("relay address")?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (counter, opened) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                opened.fetch_add(1, Ordering::SeqCst);
                let opened = opened.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    opened.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(CountingRelay { addr, accepted, open, task })
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections proxyd opened that neither side has closed yet.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 origin that answers every request head with the same raw bytes, for responses
/// the test-support origins do not produce (hop-by-hop headers, trailers). Keeps each
/// connection open for more requests. Stops when dropped.
pub(crate) struct RawOrigin {
    pub(crate) addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl RawOrigin {
    /// Requests must not carry a body: only heads are read.
    pub(crate) async fn start(response: &'static str) -> anyhow::Result<RawOrigin> {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.context("bind raw origin")?;
        let addr = listener.local_addr().context("raw origin address")?;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                conns.spawn(async move {
                    let mut client = Client { stream, buf: Vec::new() };
                    let deadline = Instant::now() + TIMEOUT;
                    loop {
                        let Some(end) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match client.fill(deadline).await {
                                Ok(n) if n > 0 => continue,
                                _ => return,
                            }
                        };
                        let head: Vec<u8> = client.buf.drain(..end + 4).collect();
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(String::from_utf8_lossy(&head).into_owned());
                        if client.write(response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(RawOrigin { addr, heads, task })
    }

    /// The request heads received so far.
    pub(crate) fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port nothing listens on: bound, then closed, so a connect there is refused.
pub(crate) async fn refused_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await.context("bind")?;
    Ok(listener.local_addr().context("address")?.port())
}

/// An `allow_unix_sockets` entry pinned like the config loader does: canonical path and the
/// socket's device and inode.
fn pin_unix_socket(path: &std::path::Path) -> UnixSocketRule {
    use std::os::unix::fs::MetadataExt as _;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let socket = std::fs::metadata(&canonical).ok().map(|meta| {
        let birth = meta.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let birth = birth.map(|d| (d.as_secs() as i64, d.subsec_nanos()));
        proxyd_policy::FileId { dev: meta.dev(), ino: meta.ino(), birth }
    });
    UnixSocketRule { configured: path.to_path_buf(), canonical, socket }
}
