//! An origin that accepts HTTP/1.1 upgrades (RFC 9110 §7.8) and then echoes in upper case.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::record::{RecordedRequest, Recorder};
use crate::server::{
    Body, ServerTask, UpgradeSlot, echo, empty, serve_until_upgrade, spawn_accept_loop, text,
};

/// Answers any request carrying `Upgrade` with `101 Switching Protocols` (echoing the
/// `Upgrade` value, `Connection: upgrade`), then echoes the upgraded stream's bytes back
/// ASCII-upper-cased, so a test sees the server answered. Requests without `Upgrade` get 400.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct UpgradeOrigin {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    _task: ServerTask,
}

impl UpgradeOrigin {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind upgrade origin")?;
        let addr = listener.local_addr().context("upgrade origin address")?;
        let recorder = Arc::<Recorder>::default();
        let conn_recorder = Arc::clone(&recorder);
        let task = spawn_accept_loop("upgrade-origin", listener, move |io| {
            let recorder = Arc::clone(&conn_recorder);
            async move {
                let upgraded = serve_until_upgrade(io, move |req, slot| {
                    handle(req, slot, Arc::clone(&recorder))
                })
                .await;
                if let Some(upgraded) = upgraded {
                    echo(upgraded, <[u8]>::to_ascii_uppercase).await;
                }
            }
        });
        Ok(UpgradeOrigin { addr, recorder, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request heads received so far.
    pub fn hits(&self) -> usize {
        self.recorder.hits()
    }

    /// Requests received, in arrival order (upgrade requests with an empty body).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorder.requests()
    }
}

async fn handle(
    mut req: Request<Incoming>,
    slot: UpgradeSlot,
    recorder: Arc<Recorder>,
) -> Response<Body> {
    let Some(protocol) = req.headers().get(UPGRADE).cloned() else {
        return match recorder.receive(req).await {
            Ok(_) => text(StatusCode::BAD_REQUEST, "upgrade-origin needs an upgrade header\n"),
            Err(response) => response,
        };
    };
    recorder.receive_head(&req);
    slot.arm(&mut req);
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(UPGRADE, protocol);
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
    response
}
