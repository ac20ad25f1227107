//! The HTTP origin over TLS, recording the SNI each client sent; HTTP/1.1, or also HTTP/2.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;

use crate::record::{RecordedRequest, Recorder};
use crate::server::{Log, ServerTask, lock, serve_http1, serve_http2, spawn_accept_loop};
use crate::{TIMEOUT, TestCa, routes};

/// An HTTPS origin (TLS, ALPN http/1.1, or h2 and http/1.1 from [`TlsOrigin::start_h2`]) with
/// the routes and recording of [`crate::HttpOrigin`].
///
/// Stops when dropped.
#[derive(Debug)]
pub struct TlsOrigin {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    sni: Log<String>,
    _task: ServerTask,
}

impl TlsOrigin {
    /// Starts on `127.0.0.1:0` with a leaf for `names` signed by `ca`, e.g.
    /// `&["localhost", "127.0.0.1", "::1"]`.
    pub async fn start(ca: &TestCa, names: &[&str]) -> anyhow::Result<Self> {
        Self::serve(ca.server_config(names)?).await
    }

    /// Like [`TlsOrigin::start`], offering ALPN `h2` first and `http/1.1`, and speaking HTTP/2
    /// to clients that pick it ([`RecordedRequest::version`] tells which).
    pub async fn start_h2(ca: &TestCa, names: &[&str]) -> anyhow::Result<Self> {
        let mut config = (*ca.server_config(names)?).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::serve(Arc::new(config)).await
    }

    async fn serve(config: Arc<rustls::ServerConfig>) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind tls origin")?;
        let addr = listener.local_addr().context("tls origin address")?;
        let recorder = Arc::<Recorder>::default();
        let sni = Log::<String>::default();
        let (conn_recorder, conn_sni) = (Arc::clone(&recorder), Arc::clone(&sni));
        let task = spawn_accept_loop("tls-origin", listener, move |tcp| {
            serve_tls(tcp, Arc::clone(&config), Arc::clone(&conn_recorder), Arc::clone(&conn_sni))
        });
        Ok(TlsOrigin { addr, recorder, sni, _task: task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request heads received so far.
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

    /// The server names clients sent, one per ClientHello that carried SNI, in arrival order.
    ///
    /// Recorded before the handshake completes, so a client that then rejects the certificate
    /// still shows up; a client dialling an IP address sends none (RFC 6066 §3).
    pub fn sni(&self) -> Vec<String> {
        lock(&self.sni).clone()
    }
}

async fn serve_tls(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    recorder: Arc<Recorder>,
    sni: Log<String>,
) {
    let start = match timeout(TIMEOUT, LazyConfigAcceptor::new(Acceptor::default(), tcp)).await {
        Ok(Ok(start)) => start,
        Ok(Err(error)) => return tracing::debug!(%error, "reading client hello failed"),
        Err(_) => return tracing::debug!("client hello timed out"),
    };
    if let Some(name) = start.client_hello().server_name() {
        lock(&sni).push(name.to_owned());
    }
    let tls = match timeout(TIMEOUT, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => return tracing::debug!(%error, "tls handshake failed"),
        Err(_) => return tracing::debug!("tls handshake timed out"),
    };
    match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => {
            serve_http2(tls, move |req| routes::origin(req, Arc::clone(&recorder))).await
        }
        _ => serve_http1(tls, move |req| routes::origin(req, Arc::clone(&recorder))).await,
    }
}
