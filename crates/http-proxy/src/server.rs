//! The listener: accept loop, one hyper HTTP/1.1 connection per client, graceful shutdown;
//! HTTP/2 for intercepted tunnels whose client negotiated `h2`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use proxyd_lifecycle::accept_loop;
use proxyd_net::{Connections, Engine, Tracked};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::idle::{Answer, Clocked, IdleClock};
use crate::pool::Pool;
use crate::{Body, BoxError, Settings, connect, forward, respond};

/// State shared by every connection of one listener.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) settings: Settings,
    pub(crate) pool: Pool,
    /// TLS to origins, ALPN `h2` then `http/1.1`.
    pub(crate) tls: tokio_rustls::TlsConnector,
    /// TLS to origins for requests that ask for an upgrade, ALPN `http/1.1` only.
    pub(crate) tls_http1: tokio_rustls::TlsConnector,
    /// Client connections.
    pub(crate) connections: Connections,
    /// Upgraded connections and tunnels, which hyper's graceful shutdown does not see (for
    /// metrics; the lifecycle's drain tracks them too).
    pub(crate) tunnels: Connections,
}

/// The HTTP proxy listener.
#[derive(Clone)]
pub struct HttpProxy {
    shared: Arc<Shared>,
}

impl HttpProxy {
    pub fn new(engine: Engine, settings: Settings) -> HttpProxy {
        // proxyd decides which HTTP versions it speaks, whatever ALPN the embedder set.
        let alpn = |protocols: &[&[u8]]| {
            let mut config = (*settings.tls).clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        };
        let (tls, tls_http1) = (alpn(&[b"h2", b"http/1.1"]), alpn(&[b"http/1.1"]));
        let (max_idle, idle_timeout) = (settings.max_connections, settings.idle_timeout);
        let shared = Shared {
            engine,
            settings,
            pool: Pool::new(max_idle, idle_timeout),
            tls,
            tls_http1,
            connections: Connections::new(),
            tunnels: Connections::new(),
        };
        HttpProxy { shared: Arc::new(shared) }
    }

    /// Interception for SOCKS5 `CONNECT`s to port 443, when this listener has an interception CA.
    pub fn interceptor(&self) -> Option<Arc<dyn proxyd_net::Interceptor>> {
        let ca = self.shared.settings.mitm.clone()?;
        let interceptor = crate::mitm::Socks5Interceptor { shared: self.shared.clone(), ca };
        Some(Arc::new(interceptor))
    }

    /// Open client connections (for metrics).
    pub fn connections(&self) -> Connections {
        self.shared.connections.clone()
    }

    /// Open tunnels and upgraded connections (for metrics).
    pub fn tunnels(&self) -> Connections {
        self.shared.tunnels.clone()
    }

    /// Serves until the lifecycle stops; in-flight requests, tunnels and upgraded connections
    /// are then drained and closed by the lifecycle's one shutdown (SPEC §7.5). Meanwhile the
    /// upstream pool is reaped: connections unused for `idle_timeout` are closed.
    pub async fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let handler = move |stream: TcpStream, peer: SocketAddr| {
            serve_connection(shared.clone(), stream, peer)
        };
        let accepting = accept_loop(
            listener,
            self.shared.settings.max_connections,
            self.shared.engine.lifecycle(),
            self.shared.connections.clone(),
            handler,
        );
        let pool = &self.shared.pool;
        let reaping = async {
            let mut every = tokio::time::interval(pool.reap_period());
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                pool.reap();
            }
        };
        tokio::select! {
            () = accepting => {}
            () = reaping => {}
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // Tunnels opened on this connection: it keeps its `max_connections` slot until they end.
    let conn_tunnels = Connections::new();
    let svc_shared = shared.clone();
    let svc_tunnels = conn_tunnels.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        let tunnels = svc_tunnels.clone();
        async move { Ok::<_, Infallible>(handle(shared, peer, req, &tunnels).await) }
    });
    // The connection is dropped when `drive` returns, so a CONNECT whose upgrade never
    // happened (a drain that ran out mid-dial) releases its tunnel guard. Boxed, so that its
    // state is freed then too, not kept in this task for as long as the tunnels last.
    Box::pin(drive(&shared, stream, service, std::future::pending())).await;
    // Tunnels end by themselves, by their idle timeout, limited mode or the end of a drain.
    conn_tunnels.wait_idle().await;
}

/// Serves one HTTP/1.1 client connection (a plain one, or the decrypted stream of an
/// intercepted tunnel) until it ends. A request head is bounded by `header_read_timeout`, the
/// wait between requests by `idle_timeout` (`idle.rs`). When shutdown begins or the connection
/// has been idle in both directions for `idle_timeout` (SPEC §2.2), the request in flight is
/// finished and the connection closed; when a response that streams moves no byte for
/// `idle_timeout`, the lifecycle closes, or `ended` resolves (an intercepted tunnel's lease was
/// revoked), it is closed at once.
pub(crate) async fn drive<S, Svc>(
    shared: &Shared,
    stream: S,
    service: Svc,
    ended: impl Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
{
    let mut builder = http1::Builder::new();
    // hyper's own header timer also runs between requests and closes without a `408`: the
    // head clock in `Clocked` replaces it.
    builder.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    let clock = IdleClock::new();
    let io =
        TokioIo::new(Clocked::http1(stream, clock.clone(), shared.settings.header_read_timeout));
    let counting = clock.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let mut exchange = counting.exchange();
        if !hyper::body::Body::is_end_stream(req.body()) {
            req.extensions_mut().insert(counting.reading());
        }
        let connect = req.method() == Method::CONNECT;
        let call = service.call(req);
        let clock = counting.clone();
        // Boxed: hyper keeps a slot of the service future's size for every connection from
        // the moment it opens, and proxyd's request future is tens of KiB (admission, dial,
        // TLS, forwarding). Boxed, a connection that has no request in flight (a keep-alive
        // client between requests, a slow head) costs a pointer, not the whole state machine.
        Box::pin(async move {
            let Ok(response) = call.await;
            exchange.answered();
            let status = response.status();
            if status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success()) {
                clock.upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| Answer::new(body, exchange)))
        })
    });
    let conn = builder.serve_connection(io, service).with_upgrades();
    run(shared, conn, clock, ended).await;
}

/// [`drive`] for HTTP/2 (an intercepted tunnel whose client negotiated `h2`), with the same
/// idle, shutdown and `ended` handling: graceful shutdown sends `GOAWAY` and lets the streams
/// in flight finish. hyper runs each stream in a task of its own (on [`TokioExecutor`]); those
/// tasks are cut off when this returns, so no request outlives the connection it came on.
///
/// hyper's defaults stand: at most 200 concurrent streams, a 16 KiB header list. Extended
/// `CONNECT` (RFC 8441) is not advertised, so clients keep WebSockets on HTTP/1.1; a plain
/// `CONNECT` stream reaches `service`, which refuses it.
pub(crate) async fn drive_h2<S>(
    shared: &Shared,
    stream: S,
    handler: Handler,
    ended: impl Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (alive, gone) = watch::channel(());
    let clock = IdleClock::new();
    let service = UntilGone { handler, gone, clock: clock.clone() };
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let io = TokioIo::new(Clocked::new(stream, clock.clone()));
    let conn = builder.serve_connection(io, service);
    run(shared, conn, clock, ended).await;
    // Streams still in their service future end now (see `UntilGone`).
    drop(alive);
}

/// The loop both protocols share: serve until the connection ends, shut down gracefully on
/// stop or idleness, close at once when an exchange stalls, the lifecycle closes or `ended`
/// resolves.
async fn run<C: Served>(
    shared: &Shared,
    conn: C,
    clock: IdleClock,
    ended: impl Future<Output = ()>,
) {
    tokio::pin!(conn);
    let lifecycle = shared.engine.lifecycle();
    let closed = lifecycle.closing();
    let idle = shared.settings.idle_timeout;
    tokio::pin!(ended, closed);
    let closing = tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "client connection ended with an error");
            }
            false
        }
        () = lifecycle.stopping() => true,
        // A request waiting for its answer is not idle (each step has its own bound); a
        // response that moved no byte for `idle_timeout` (an origin that stopped sending, a
        // client that stopped reading) is stalled.
        () = clock.idle(idle) => {
            if clock.busy() {
                tracing::debug!("exchange stalled, closing the client connection");
                return;
            }
            tracing::debug!("client connection idle, closing");
            true
        }
        () = &mut ended => return,
        () = &mut closed => return,
    };
    if closing {
        conn.as_mut().shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            () = clock.idle(idle) => tracing::debug!("exchange stalled while closing"),
            () = &mut ended => {}
            () = &mut closed => {}
        }
    }
}

/// A served connection of either protocol.
trait Served: Future<Output = hyper::Result<()>> {
    /// Starts hyper's graceful shutdown (`Connection: close` or `GOAWAY`).
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, S> Served for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = Answer>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I> Served for http2::Connection<I, UntilGone, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A boxed response future, as HTTP/2 services return them (hyper spawns each stream).
pub(crate) type Responding =
    Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// What answers the requests of an HTTP/2 connection.
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> Responding + Send + Sync>;

/// An HTTP/2 service whose calls end when the connection is gone: hyper spawns every stream,
/// so without this a request waiting on a slow origin would outlive a closed tunnel.
pub(crate) struct UntilGone {
    handler: Handler,
    gone: watch::Receiver<()>,
    clock: IdleClock,
}

impl Service<Request<Incoming>> for UntilGone {
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Answer>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut exchange = self.clock.exchange();
        let call = (self.handler)(req);
        let mut gone = self.gone.clone();
        Box::pin(async move {
            let Ok(response) = tokio::select! {
                response = call => response,
                // The sender is never used: `changed` returns only when it is dropped. Nobody
                // reads this answer; the stream is already gone.
                _ = gone.changed() => Ok(respond::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "connection_closed",
                    "the client connection closed",
                )),
            };
            exchange.answered();
            Ok(response.map(|body| Answer::new(body, exchange)))
        })
    }
}

/// Routes one request. Every request on a keep-alive connection is a new decision.
async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
    tunnels: &Connections,
) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect::handle(&shared, peer, req, tunnels).await;
    }
    if req.uri().scheme().is_none() {
        // The proxy never routes by `Host` (SPEC §7.2).
        return respond::bad_request(
            "origin-form requests are not proxied: send an absolute-form request-target",
        );
    }
    forward::handle(&shared, peer, req, tunnels).await
}

/// Counts a tunnel or upgraded connection until the guards drop: listener-wide for metrics,
/// in the lifecycle for the one drain, and on the client connection it came from
/// (`conn_tunnels`), which so keeps its `max_connections` slot.
pub(crate) fn track_tunnel(shared: &Shared, conn_tunnels: &Connections) -> [Tracked; 3] {
    [shared.tunnels.track(), shared.engine.lifecycle().track(), conn_tunnels.track()]
}
