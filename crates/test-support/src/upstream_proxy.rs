//! A hermetic stand-in for an upstream HTTP proxy that proxyd chains to (SPEC §7.6).
//!
//! It never dials anything: it answers absolute-form requests itself and turns CONNECT into a
//! local echo, so chaining tests need no network.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use tokio::net::TcpListener;

use crate::record::{RecordedRequest, Recorder};
use crate::server::{
    Body, ServerTask, UpgradeSlot, echo, empty, serve_until_upgrade, spawn_accept_loop, text,
};

/// What a CONNECT tunnel's first echoed chunk starts with.
const TUNNEL_PREFIX: &[u8] = b"upstream-tunnel:";

/// A minimal forward proxy:
///
/// - absolute-form `METHOD http://host/path` → 200 `upstream-proxy METHOD TARGET\n`;
/// - `CONNECT host:port` → `200 Connection Established`, then the tunnel echoes every byte back,
///   the first echoed chunk prefixed with `upstream-tunnel:`;
/// - anything else (origin-form) → 400.
///
/// Every request is recorded; [`RecordedRequest::proxy_authorization`] gives the credentials.
/// Stops when dropped.
#[derive(Debug)]
pub struct UpstreamProxy {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    _task: ServerTask,
}

impl UpstreamProxy {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind upstream proxy")?;
        let addr = listener.local_addr().context("upstream proxy address")?;
        let recorder = Arc::<Recorder>::default();
        let conn_recorder = Arc::clone(&recorder);
        let task = spawn_accept_loop("upstream-proxy", listener, move |io| {
            let recorder = Arc::clone(&conn_recorder);
            async move {
                let tunnel = serve_until_upgrade(io, move |req, slot| {
                    handle(req, slot, Arc::clone(&recorder))
                })
                .await;
                if let Some(tunnel) = tunnel {
                    let mut first = true;
                    echo(tunnel, move |bytes| {
                        let mut out = Vec::with_capacity(TUNNEL_PREFIX.len() + bytes.len());
                        if std::mem::take(&mut first) {
                            out.extend_from_slice(TUNNEL_PREFIX);
                        }
                        out.extend_from_slice(bytes);
                        out
                    })
                    .await;
                }
            }
        });
        Ok(UpstreamProxy { addr, recorder, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the form `HTTP_PROXY` and friends take.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Request heads received so far.
    pub fn hits(&self) -> usize {
        self.recorder.hits()
    }

    /// Requests received, in arrival order (CONNECT with an empty body).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorder.requests()
    }
}

async fn handle(
    mut req: Request<Incoming>,
    slot: UpgradeSlot,
    recorder: Arc<Recorder>,
) -> Response<Body> {
    if req.method() == Method::CONNECT {
        recorder.receive_head(&req);
        // hyper hands the connection over once it has written a 2xx answer to CONNECT.
        slot.arm(&mut req);
        let mut response = Response::new(empty());
        response.extensions_mut().insert(ReasonPhrase::from_static(b"Connection Established"));
        return response;
    }
    let absolute = req.uri().scheme().is_some();
    let (parts, ..) = match recorder.receive(req).await {
        Ok(received) => received,
        Err(response) => return response,
    };
    if !absolute {
        return text(StatusCode::BAD_REQUEST, "upstream-proxy wants absolute-form\n");
    }
    text(StatusCode::OK, format!("upstream-proxy {} {}\n", parts.method, parts.uri))
}
