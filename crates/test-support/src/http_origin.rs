//! A plain HTTP/1.1 origin on loopback that records what it serves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::record::{RecordedRequest, Recorder};
use crate::routes;
use crate::server::{ServerTask, serve_http1, spawn_accept_loop};

/// An HTTP/1.1 origin (keep-alive, chunked bodies) serving the routes in [`crate`] docs.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct HttpOrigin {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    _task: ServerTask,
}

impl HttpOrigin {
    /// Starts an origin on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts an origin on port 0 of `ip` (e.g. `::1`).
    pub async fn start_on(ip: IpAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, 0)).await.context("bind http origin")?;
        let addr = listener.local_addr().context("http origin address")?;
        let recorder = Arc::<Recorder>::default();
        let conn_recorder = Arc::clone(&recorder);
        let task = spawn_accept_loop("http-origin", listener, move |io| {
            let recorder = Arc::clone(&conn_recorder);
            serve_http1(io, move |req| routes::origin(req, Arc::clone(&recorder)))
        });
        Ok(HttpOrigin { addr, recorder, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`, e.g. `origin.url("/a")` → `http://127.0.0.1:41234/a`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Request heads received so far (counted before their bodies are read).
    pub fn hits(&self) -> usize {
        self.recorder.hits()
    }

    /// Requests whose bodies were read in full, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorder.requests()
    }

    /// Waits (at most [`crate::TIMEOUT`]) until `n` request heads arrived.
    pub async fn wait_for_hits(&self, n: usize) -> anyhow::Result<()> {
        self.recorder.wait_for_hits(n).await
    }
}
