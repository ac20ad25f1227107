//! The plumbing every server here shares: an abort-on-drop task, a generic accept loop that owns
//! its connection tasks, and an HTTP/1.1 connection driver that can hand back an upgraded stream.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tracing::Instrument;

use crate::TIMEOUT;

/// Pause after a failed `accept` (EMFILE and friends) so the loop backs off instead of spinning.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// How long an echo loop waits for the next bytes before it gives up on a silent peer.
const ECHO_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Response body type of every HTTP server in this crate.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Lower-case header names and lossy UTF-8 values, in the order the map yields them.
pub(crate) type Headers = Vec<(String, String)>;

/// A log shared between a server task and its handle.
pub(crate) type Log<T> = Arc<Mutex<Vec<T>>>;

/// A datagram and its sender.
pub(crate) type Datagram = (SocketAddr, Vec<u8>);

/// Locks a mutex, ignoring poisoning: a panicking test thread must not hide what was recorded.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A spawned server task that is aborted when dropped, so a test never leaks a listener.
#[derive(Debug)]
pub(crate) struct ServerTask(JoinHandle<()>);

impl ServerTask {
    /// Spawns `task` in a span naming its server.
    pub(crate) fn spawn(
        server: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        ServerTask(tokio::spawn(task.instrument(tracing::debug_span!("server", server))))
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A listener the accept loop can drive: TCP and (on Unix) Unix-domain sockets.
pub(crate) trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Accepts one connection and describes its peer for the connection span.
    fn accept_conn(&self) -> impl Future<Output = io::Result<(Self::Io, String)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept_conn(&self) -> io::Result<(Self::Io, String)> {
        let (stream, peer) = self.accept().await?;
        Ok((stream, peer.to_string()))
    }
}

#[cfg(unix)]
impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept_conn(&self) -> io::Result<(Self::Io, String)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, "unix".to_owned()))
    }
}

/// Spawns an accept loop that runs `handle` for every connection.
///
/// Connection tasks live in a `JoinSet` owned by the loop, so aborting the loop (dropping the
/// returned `ServerTask`) also aborts every connection it accepted.
pub(crate) fn spawn_accept_loop<L, H, Fut>(
    server: &'static str,
    listener: L,
    handle: H,
) -> ServerTask
where
    L: Accept,
    H: Fn(L::Io) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let task = async move {
        let mut conns = JoinSet::new();
        let mut next_id: u64 = 0;
        loop {
            tokio::select! {
                accepted = listener.accept_conn() => match accepted {
                    Ok((io, peer)) => {
                        next_id += 1;
                        let span = tracing::debug_span!("conn", server, id = next_id, %peer);
                        conns.spawn(handle(io).instrument(span));
                    }
                    Err(error) => {
                        tracing::debug!(server, %error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    };
    ServerTask::spawn(server, task)
}

/// Serves HTTP/1.1 on `io` until the peer closes or the connection is upgraded.
pub(crate) async fn serve_http1<I, F, Fut>(io: I, handle: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let response = handle(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let mut builder = http1::Builder::new();
    // The timer makes hyper's default header read timeout effective.
    builder.timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    if let Err(error) = conn.await {
        tracing::debug!(%error, "http connection ended with an error");
    }
}

/// Serves HTTP/2 on `io` until the peer closes.
pub(crate) async fn serve_http2<I, F, Fut>(io: I, handle: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        // hyper's HTTP/1.1 side drops the body of a HEAD response; over HTTP/2 that is the
        // server's job (DATA on a HEAD stream is a protocol error, RFC 9113 §8.1.1).
        let head = req.method() == http::Method::HEAD;
        let response = handle(req);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(if head { response.map(|_| empty()) } else { response })
        }
    });
    let conn =
        http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service);
    if let Err(error) = conn.await {
        tracing::debug!(%error, "http/2 connection ended with an error");
    }
}

/// Where a request handler leaves the pending upgrade of its connection.
///
/// The upgraded stream is then driven by the connection task itself (see
/// [`serve_until_upgrade`]), never by a detached task, so dropping the server ends it too.
#[derive(Clone, Default)]
pub(crate) struct UpgradeSlot(Arc<Mutex<Option<OnUpgrade>>>);

impl UpgradeSlot {
    /// Takes the pending upgrade out of `req`; call before answering 101 or 2xx to CONNECT.
    pub(crate) fn arm(&self, req: &mut Request<Incoming>) {
        *lock(&self.0) = Some(hyper::upgrade::on(req));
    }
}

/// Serves HTTP/1.1 on `io` and returns the upgraded stream if a handler armed an upgrade.
pub(crate) async fn serve_until_upgrade<I, F, Fut>(io: I, handle: F) -> Option<TokioIo<Upgraded>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, UpgradeSlot) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let slot = UpgradeSlot::default();
    let handler_slot = slot.clone();
    serve_http1(io, move |req| handle(req, handler_slot.clone())).await;
    let pending = lock(&slot.0).take()?;
    match timeout(TIMEOUT, pending).await {
        Ok(Ok(upgraded)) => Some(TokioIo::new(upgraded)),
        Ok(Err(error)) => {
            tracing::debug!(%error, "upgrade failed");
            None
        }
        Err(_) => {
            tracing::debug!("upgrade timed out");
            None
        }
    }
}

/// Echoes what `io` sends back to it after `map` rewrote each chunk, until EOF, then half-closes.
///
/// Each read waits at most [`ECHO_IDLE_TIMEOUT`], each write at most [`TIMEOUT`].
pub(crate) async fn echo<I>(io: I, mut map: impl FnMut(&[u8]) -> Vec<u8> + Send)
where
    I: AsyncRead + AsyncWrite + Send,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match timeout(ECHO_IDLE_TIMEOUT, reader.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(error)) => {
                tracing::debug!(%error, "echo read failed");
                return;
            }
            Err(_) => {
                tracing::debug!("echo peer idle, closing");
                return;
            }
        };
        let out = map(&buf[..n]);
        if !matches!(timeout(TIMEOUT, writer.write_all(&out)).await, Ok(Ok(()))) {
            tracing::debug!("echo write failed");
            return;
        }
    }
    // Half-close: the peer sent EOF, so pass it on once everything was echoed.
    let _ = timeout(TIMEOUT, writer.shutdown()).await;
}

/// A response with `content-type: text/plain`.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

pub(crate) fn empty() -> Body {
    Empty::new().boxed()
}
