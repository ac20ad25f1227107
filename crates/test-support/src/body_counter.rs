//! An HTTP/1.1 origin (plain or TLS) that counts request-body bytes as they arrive, for tests
//! about bodies that must stop reaching the origin part-way (a streaming upload cut by a
//! policy change).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::server::{Body, ServerTask, serve_http1, spawn_accept_loop, text};
use crate::{TIMEOUT, TestCa};

/// How long the origin waits for the next piece of a request body before giving up on it.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Counters shared by the origin's connections and its handle.
#[derive(Debug)]
struct Counts {
    /// Request heads received.
    heads: watch::Sender<usize>,
    /// Request-body bytes received (de-chunked), across every request, as they arrive.
    body: watch::Sender<u64>,
}

/// An HTTP/1.1 origin that counts every request-body byte the moment it arrives, and answers
/// `200 received N\n` only once a body has ended. It never reads a body faster than it
/// arrives, so [`BodyCounter::body_bytes`] is what the sender's side has delivered so far.
///
/// Stops when dropped.
#[derive(Debug)]
pub struct BodyCounter {
    addr: SocketAddr,
    counts: Arc<Counts>,
    _task: ServerTask,
}

impl BodyCounter {
    /// Starts a plain HTTP origin on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::bind(None).await
    }

    /// Starts an HTTPS origin on `127.0.0.1:0` with a leaf for `names` signed by `ca`.
    pub async fn start_tls(ca: &TestCa, names: &[&str]) -> anyhow::Result<Self> {
        Self::bind(Some(TlsAcceptor::from(ca.server_config(names)?))).await
    }

    async fn bind(tls: Option<TlsAcceptor>) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind body counter")?;
        let addr = listener.local_addr().context("body counter address")?;
        let counts = Arc::new(Counts { heads: watch::Sender::new(0), body: watch::Sender::new(0) });
        let conn_counts = Arc::clone(&counts);
        let task = spawn_accept_loop("body-counter", listener, move |tcp| {
            let (counts, tls) = (Arc::clone(&conn_counts), tls.clone());
            async move {
                let service = move |req| count(req, Arc::clone(&counts));
                match tls {
                    None => serve_http1(tcp, service).await,
                    Some(acceptor) => match timeout(TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_http1(stream, service).await,
                        Ok(Err(error)) => tracing::debug!(%error, "tls handshake failed"),
                        Err(_) => tracing::debug!("tls handshake timed out"),
                    },
                }
            }
        });
        Ok(BodyCounter { addr, counts, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request heads received so far.
    pub fn heads(&self) -> usize {
        *self.counts.heads.borrow()
    }

    /// Request-body bytes (de-chunked) received so far, over every request.
    pub fn body_bytes(&self) -> u64 {
        *self.counts.body.borrow()
    }

    /// Waits (at most [`TIMEOUT`]) until at least `n` body bytes arrived.
    pub async fn wait_for_body_bytes(&self, n: u64) -> anyhow::Result<()> {
        let mut body = self.counts.body.subscribe();
        match timeout(TIMEOUT, body.wait_for(|got| *got >= n)).await {
            Ok(_) => Ok(()),
            Err(_) => {
                anyhow::bail!("timed out waiting for {n} body bytes (saw {})", self.body_bytes())
            }
        }
    }
}

async fn count(req: Request<Incoming>, counts: Arc<Counts>) -> Response<Body> {
    counts.heads.send_modify(|heads| *heads += 1);
    let mut body = req.into_body();
    let mut total: u64 = 0;
    loop {
        match timeout(BODY_IDLE, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    total += n;
                    counts.body.send_modify(|got| *got += n);
                }
            }
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, "request body ended with an error");
                return text(StatusCode::BAD_REQUEST, "body read failed\n");
            }
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body read timed out\n"),
        }
    }
    text(StatusCode::OK, format!("received {total}\n"))
}
