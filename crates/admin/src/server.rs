//! The admin listener: the lifecycle's accept loop (shared with the proxies; the admin API
//! does not depend on the egress crate), one hyper HTTP/1.1 connection per client, bounded
//! bodies and timeouts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use proxyd_lifecycle::{Connections, Evictable, Lifecycle, accept_loop_reserved};
use tokio::net::{TcpListener, TcpStream};

use crate::routes::{self, Body, MAX_BODY};
use crate::{Control, guard};

/// Longest wait for a request head, and then for its body, on the admin listener: a script or
/// curl sends both at once, and a slot held by a slow client is a slot the kill switch may
/// need (issue 16).
const MAX_HEAD_WAIT: Duration = Duration::from_secs(2);

/// Admin listener settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub header_read_timeout: Duration,
    /// `admin_token`: required as `Authorization: Bearer …` on every endpoint but `/health`.
    pub token: Option<String>,
    pub max_connections: usize,
}

/// The admin API server.
pub struct AdminServer {
    control: Arc<dyn Control>,
    settings: Settings,
}

impl AdminServer {
    pub fn new(control: Arc<dyn Control>, settings: Settings) -> AdminServer {
        AdminServer { control, settings }
    }

    /// Serves until the lifecycle stops, on the lifecycle's reserved accept loop: its own
    /// `max_connections` budget, the oldest slow head evicted at capacity, and a descriptor
    /// reserve for when the proxies have used up the rest. Requests in flight are then drained
    /// and closed by the lifecycle's one shutdown.
    pub async fn serve(self, listener: TcpListener, lifecycle: &Lifecycle) {
        let own = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => {
                tracing::error!(error = %err, "admin listener has no address");
                return;
            }
        };
        let max_connections = self.settings.max_connections;
        let shared = Arc::new(self);
        let closing = lifecycle.clone();
        let handler = move |stream: TcpStream, peer: SocketAddr, evictable: Evictable| {
            shared.clone().connection(stream, peer, own, closing.clone(), evictable)
        };
        accept_loop_reserved(listener, max_connections, lifecycle, Connections::new(), handler)
            .await;
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        own: SocketAddr,
        lifecycle: Lifecycle,
        evictable: Evictable,
    ) {
        let evicted = evictable.evicted();
        let evictable = Arc::new(evictable);
        let shared = self.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let (shared, evictable) = (shared.clone(), evictable.clone());
            async move { Ok::<_, Infallible>(shared.handle(req, own, &evictable).await) }
        });
        let mut builder = http1::Builder::new();
        // One request per connection, and a short head timeout: a few busy keep-alive clients
        // must not be able to hold every slot and lock the user out of the kill switch.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout.min(MAX_HEAD_WAIT))
            .keep_alive(false);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "admin connection ended with an error");
                }
                return;
            }
            // A newer connection needed the slot while this one was still reading its head.
            () = evicted => return,
            () = lifecycle.stopping() => {}
        }
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            () = lifecycle.closing() => {}
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        own: SocketAddr,
        evictable: &Evictable,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let token = self.settings.token.as_deref();
        if let Err(refusal) = guard::check(&parts.method, &path, &parts.headers, own, token) {
            let status = match refusal {
                guard::Refusal::Token => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            let mut response = routes::error(status, refusal.message());
            if refusal == guard::Refusal::Token {
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            return response;
        }
        // The body is bounded like the head: a slot held by a slow body is a slot the kill
        // switch may need.
        let body = match tokio::time::timeout(
            self.settings.header_read_timeout.min(MAX_HEAD_WAIT),
            Limited::new(body, MAX_BODY).collect(),
        )
        .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => return routes::error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
            Err(_) => return routes::error(StatusCode::REQUEST_TIMEOUT, "body read timed out"),
        };
        // The whole request is in: from here it is served, never evicted.
        if !evictable.serving() {
            return routes::error(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
        }
        routes::route(
            &*self.control,
            &parts.method,
            &path,
            parts.uri.query(),
            &parts.headers,
            &body,
        )
        .await
    }
}
