//! The listener: accept loop, one hyper HTTP/1.1 connection per client, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use proxyd_net::{Attempt, Connections, DialError, Engine, Outcome, accept_loop};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::pool::Pool;
use crate::{Body, Settings, connect, forward, respond};

/// State shared by every connection of one listener.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) settings: Settings,
    pub(crate) pool: Pool,
    pub(crate) tls: tokio_rustls::TlsConnector,
    /// Upgraded connections and tunnels, which hyper's graceful shutdown does not see.
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
        let shared =
            Shared { engine, settings, pool: Pool::default(), tls, tunnels: Connections::new() };
        HttpProxy { shared: Arc::new(shared) }
    }

    /// Serves until `shutdown` turns true, then stops accepting, lets in-flight requests finish
    /// and closes tunnels once `drain_timeout` has passed (SPEC §7.5).
    pub async fn serve(&self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let connections = Connections::new();
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
        let drain = self.shared.settings.drain_timeout;
        let drained = async {
            connections.wait_idle().await;
            self.shared.tunnels.wait_idle().await;
        };
        if tokio::time::timeout(drain, drained).await.is_err() {
            tracing::info!(
                connections = connections.active(),
                tunnels = self.shared.tunnels.active(),
                "drain timeout: closing what is left"
            );
        }
        self.shared.engine.close_tunnels();
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let svc_shared = shared.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, peer, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.settings.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    let closing = shared.engine.tunnel_closed();
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "client connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stop| *stop) => {}
    }
    // Finish the request in flight, then close; a drain that runs out closes it anyway.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closing => {}
    }
}

/// Routes one request. Every request on a keep-alive connection is a new decision.
async fn handle(shared: Arc<Shared>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect::handle(&shared, peer, req).await;
    }
    if req.uri().scheme().is_none() {
        // The proxy never routes by `Host` (SPEC §7.2).
        return respond::bad_request(
            "origin-form requests are not proxied: send an absolute-form request-target",
        );
    }
    forward::handle(&shared, peer, req).await
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
