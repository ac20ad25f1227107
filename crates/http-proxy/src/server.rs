//! The listener: accept loop, one hyper HTTP/1.1 connection per client, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use proxyd_net::{Attempt, Connections, DialError, Engine, Outcome, Tracked, accept_loop, drain};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::idle::{Clocked, IdleClock};
use crate::pool::Pool;
use crate::{Body, BoxError, Settings, connect, forward, respond};

/// State shared by every connection of one listener.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) settings: Settings,
    pub(crate) pool: Pool,
    pub(crate) tls: tokio_rustls::TlsConnector,
    /// Client connections.
    pub(crate) connections: Connections,
    /// Upgraded connections and tunnels, which hyper's graceful shutdown does not see.
    pub(crate) tunnels: Connections,
    /// Turns true when the listener stops accepting: intercepted tunnels then finish their
    /// request in flight and close, like client connections.
    pub(crate) stopping: watch::Sender<bool>,
    /// Turns true when a drain ends: client connections still open are closed then.
    pub(crate) drained: watch::Sender<bool>,
}

/// The HTTP proxy listener.
#[derive(Clone)]
pub struct HttpProxy {
    shared: Arc<Shared>,
}

impl HttpProxy {
    pub fn new(engine: Engine, settings: Settings) -> HttpProxy {
        let tls = tokio_rustls::TlsConnector::from(settings.tls.clone());
        let shared = Shared {
            engine,
            settings,
            pool: Pool::default(),
            tls,
            connections: Connections::new(),
            tunnels: Connections::new(),
            stopping: watch::Sender::new(false),
            drained: watch::Sender::new(false),
        };
        HttpProxy { shared: Arc::new(shared) }
    }

    /// Open client connections (for metrics).
    pub fn connections(&self) -> Connections {
        self.shared.connections.clone()
    }

    /// Open tunnels and upgraded connections (for metrics).
    pub fn tunnels(&self) -> Connections {
        self.shared.tunnels.clone()
    }

    /// Serves until `shutdown` turns true, then stops accepting, lets in-flight requests finish
    /// and closes tunnels once `drain_timeout` has passed (SPEC §7.5).
    pub async fn serve(&self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let connections = self.shared.connections.clone();
        let shared = self.shared.clone();
        let stop = shutdown.clone();
        let handler = move |stream: TcpStream, peer: SocketAddr| {
            serve_connection(shared.clone(), stream, peer, stop.clone())
        };
        let stopping = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        accept_loop(
            listener,
            self.shared.settings.max_connections,
            connections.clone(),
            stopping,
            handler,
        )
        .await;
        self.shared.stopping.send_replace(true);
        drain(&[&connections, &self.shared.tunnels], self.shared.settings.drain_timeout).await;
        self.shared.drained.send_replace(true);
        self.shared.engine.close_tunnels();
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
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
    // happened (a drain that ran out mid-dial) releases its tunnel guard.
    drive(&shared, stream, service, stop).await;
    // Tunnels end by themselves, by their idle timeout, limited mode or the end of a drain.
    conn_tunnels.wait_idle().await;
}

/// Serves one HTTP/1.1 client connection (a plain one, or the decrypted stream of an
/// intercepted tunnel) until it ends. When `stop` turns true or the connection has been idle
/// in both directions for `idle_timeout` (SPEC §2.2), the request in flight is finished and the
/// connection closed; a drain that runs out closes it anyway.
pub(crate) async fn drive<S, Svc>(
    shared: &Shared,
    stream: S,
    service: Svc,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = Body>,
    Svc::Error: Into<BoxError>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.settings.header_read_timeout)
        .keep_alive(true);
    let clock = IdleClock::new();
    let io = TokioIo::new(Clocked::new(stream, clock.clone()));
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    // Not `Engine::tunnel_closed`: that also fires in limited mode, which must not cut short
    // the requests a drain lets finish.
    let mut drained = shared.drained.subscribe();
    let closing = tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "client connection ended with an error");
            }
            false
        }
        _ = stop.wait_for(|stop| *stop) => true,
        // A request that is merely slow still gets its response before the connection closes.
        _ = clock.idle(shared.settings.idle_timeout) => {
            tracing::debug!("client connection idle, closing");
            true
        }
    };
    if closing {
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = drained.wait_for(|drained| *drained) => {}
        }
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

/// Counts a tunnel or upgraded connection until the guards drop: listener-wide for the drain,
/// and on the client connection it came from (`conn_tunnels`), which so keeps its
/// `max_connections` slot.
pub(crate) fn track_tunnel(shared: &Shared, conn_tunnels: &Connections) -> (Tracked, Tracked) {
    (shared.tunnels.track(), conn_tunnels.track())
}

/// Records a failed resolution or dial and answers it: 403 for a resolved-address block,
/// 502/504 otherwise.
pub(crate) fn refuse(
    shared: &Shared,
    attempt: &Attempt<'_>,
    err: &DialError,
    cx: &respond::Blocked<'_>,
) -> Response<Body> {
    let outcome = match err.reason() {
        Some(reason) => Outcome::Blocked(reason.clone()),
        None => Outcome::Failed(err.code().to_owned()),
    };
    shared.engine.record(shared.engine.event(attempt, outcome));
    respond::dial_failed(err, cx)
}
