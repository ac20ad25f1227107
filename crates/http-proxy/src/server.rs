//! The listener: accept loop, one hyper HTTP/1.1 connection per client, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use proxyd_lifecycle::accept_loop;
use proxyd_net::{Connections, Engine, Tracked};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

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
        let tls = tokio_rustls::TlsConnector::from(settings.tls.clone());
        let shared = Shared {
            engine,
            settings,
            pool: Pool::default(),
            tls,
            connections: Connections::new(),
            tunnels: Connections::new(),
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

    /// Serves until the lifecycle stops; in-flight requests, tunnels and upgraded connections
    /// are then drained and closed by the lifecycle's one shutdown (SPEC §7.5).
    pub async fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let handler = move |stream: TcpStream, peer: SocketAddr| {
            serve_connection(shared.clone(), stream, peer)
        };
        accept_loop(
            listener,
            self.shared.settings.max_connections,
            self.shared.engine.lifecycle(),
            self.shared.connections.clone(),
            handler,
        )
        .await;
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
    // happened (a drain that ran out mid-dial) releases its tunnel guard.
    drive(&shared, stream, service, std::future::pending()).await;
    // Tunnels end by themselves, by their idle timeout, limited mode or the end of a drain.
    conn_tunnels.wait_idle().await;
}

/// Serves one HTTP/1.1 client connection (a plain one, or the decrypted stream of an
/// intercepted tunnel) until it ends. When shutdown begins or the connection has been idle
/// in both directions for `idle_timeout` (SPEC §2.2), the request in flight is finished and the
/// connection closed; when the lifecycle closes, or `ended` resolves (an intercepted tunnel's
/// lease was revoked), it is closed at once.
pub(crate) async fn drive<S, Svc>(
    shared: &Shared,
    stream: S,
    service: Svc,
    ended: impl std::future::Future<Output = ()>,
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
    let lifecycle = shared.engine.lifecycle();
    let closed = lifecycle.closing();
    tokio::pin!(ended, closed);
    let closing = tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "client connection ended with an error");
            }
            false
        }
        () = lifecycle.stopping() => true,
        // A request that is merely slow still gets its response before the connection closes.
        () = clock.idle(shared.settings.idle_timeout) => {
            tracing::debug!("client connection idle, closing");
            true
        }
        () = &mut ended => return,
        () = &mut closed => return,
    };
    if closing {
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            () = &mut ended => {}
            () = &mut closed => {}
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

/// Counts a tunnel or upgraded connection until the guards drop: listener-wide for metrics,
/// in the lifecycle for the one drain, and on the client connection it came from
/// (`conn_tunnels`), which so keeps its `max_connections` slot.
pub(crate) fn track_tunnel(shared: &Shared, conn_tunnels: &Connections) -> [Tracked; 3] {
    [shared.tunnels.track(), shared.engine.lifecycle().track(), conn_tunnels.track()]
}
