//! The accept loop every listener runs (SPEC §7.5), and the tracking of live connections that
//! the one drain waits on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::Lifecycle;

/// First sleep after an accept error that means resource exhaustion; doubled up to
/// [`MAX_BACKOFF`] while the errors go on.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(5);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Connection ids, unique across every listener of the process, for tracing spans.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Counts live connection handlers (and anything else registered with
/// [`Connections::track`], such as tunnels that outlive their request). Clones share the count.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    active: AtomicUsize,
    idle: Notify,
}

/// Keeps one unit of [`Connections::active`] until dropped (also when a handler panics).
#[derive(Debug)]
#[must_use = "the connection counts as active only while this guard lives"]
pub struct Tracked {
    inner: Arc<Shared>,
}

impl Connections {
    pub fn new() -> Connections {
        Connections::default()
    }

    /// How many tracked connections are live now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Counts one more live connection until the guard is dropped.
    pub fn track(&self) -> Tracked {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        Tracked { inner: Arc::clone(&self.inner) }
    }

    /// Resolves once no connection is live (at once if none is). Unbounded: callers bound it
    /// with their `drain_timeout`.
    pub async fn wait_idle(&self) {
        loop {
            // Register for the wake-up before checking, so a drop to zero in between is seen.
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Accepts connections on `listener` until the lifecycle stops, running each in its own task as
/// `handler(stream, peer)` inside a span carrying a connection id and the peer address.
///
/// - At most `max_connections` handlers run at once (0 is taken as 1): a permit is taken
///   before `accept`, so excess clients wait in the kernel backlog. The permit is released when
///   the handler returns.
/// - Accept errors that mean resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) back off,
///   5 ms doubling to 1 s, instead of spinning; other errors concern one connection only and
///   are logged and skipped.
/// - Accepted sockets get `TCP_NODELAY`: proxied protocols are request/response and the
///   upstream side is set the same way.
/// - Each handler counts in `connections` (this listener's, for metrics) and in the
///   lifecycle, whose one drain waits for it.
///
/// Returning drops the listener; handlers already running go on until they end or the
/// lifecycle closes them.
pub async fn accept_loop<H, Fut>(
    listener: TcpListener,
    max_connections: usize,
    lifecycle: &Lifecycle,
    connections: Connections,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let mut backoff = MIN_BACKOFF;
    let shutdown = lifecycle.stopping();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_closed) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = MIN_BACKOFF;
                accepted
            }
            Err(error) if is_resource_exhaustion(&error) => {
                tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "accept failed, backing off");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "accept failed for one connection");
                continue;
            }
        };
        set_nodelay(&stream, peer);
        spawn(lifecycle, &connections, permit, peer, handler(stream, peer));
    }
    tracing::debug!("accept loop stopped");
}

pub(crate) fn set_nodelay(stream: &TcpStream, peer: SocketAddr) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "setting TCP_NODELAY failed");
    }
}

/// Runs one connection's handler in its own task, in a span with a fresh connection id,
/// counted in `connections` and the lifecycle, holding `permit` until it returns.
pub(crate) fn spawn(
    lifecycle: &Lifecycle,
    connections: &Connections,
    permit: OwnedSemaphorePermit,
    peer: SocketAddr,
    handling: impl Future<Output = ()> + Send + 'static,
) {
    let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id, %peer);
    let tracked = (connections.track(), lifecycle.track());
    tokio::spawn(
        async move {
            let _permit = permit;
            let _tracked = tracked;
            handling.await;
        }
        .instrument(span),
    );
}

/// Errors that say the process or the machine is out of something, so retrying at once would
/// spin: EMFILE, ENFILE, ENOBUFS, ENOMEM.
pub(crate) fn is_resource_exhaustion(error: &io::Error) -> bool {
    if error.kind() == io::ErrorKind::OutOfMemory {
        return true;
    }
    error.raw_os_error().is_some_and(|code| EXHAUSTION_ERRNOS.contains(&code))
}

/// errno values, per platform (no libc dependency for four constants).
#[cfg(any(target_os = "linux", target_os = "android"))]
const EXHAUSTION_ERRNOS: [i32; 4] =
    [24 /* EMFILE */, 23 /* ENFILE */, 105 /* ENOBUFS */, 12 /* ENOMEM */];
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
const EXHAUSTION_ERRNOS: [i32; 4] =
    [24 /* EMFILE */, 23 /* ENFILE */, 55 /* ENOBUFS */, 12 /* ENOMEM */];
#[cfg(windows)]
const EXHAUSTION_ERRNOS: [i32; 2] = [10024 /* WSAEMFILE */, 10055 /* WSAENOBUFS */];
#[cfg(not(any(unix, windows)))]
const EXHAUSTION_ERRNOS: [i32; 0] = [];

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(error: io::Error, expected: bool) {
        assert_eq!(is_resource_exhaustion(&error), expected, "{error:?}");
    }

    #[test]
    fn exhaustion_errors_back_off_others_do_not() {
        for code in EXHAUSTION_ERRNOS {
            check(io::Error::from_raw_os_error(code), true);
        }
        check(io::ErrorKind::OutOfMemory.into(), true);
        check(io::ErrorKind::ConnectionAborted.into(), false);
        check(io::ErrorKind::ConnectionReset.into(), false);
        check(io::ErrorKind::Interrupted.into(), false);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_errno_values_match_their_kinds() {
        // ECONNABORTED (103) is per-connection and must not back off.
        check(io::Error::from_raw_os_error(103), false);
        assert_eq!(io::Error::from_raw_os_error(12).kind(), io::ErrorKind::OutOfMemory);
    }

    #[tokio::test]
    async fn wait_idle_follows_tracked_guards() {
        let connections = Connections::new();
        tokio::time::timeout(Duration::from_secs(5), connections.wait_idle()).await.unwrap();
        let first = connections.track();
        let second = connections.track();
        assert_eq!(connections.active(), 2);
        let waiter = tokio::spawn({
            let connections = connections.clone();
            async move { connections.wait_idle().await }
        });
        drop(first);
        assert_eq!(connections.active(), 1);
        assert!(!waiter.is_finished());
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(connections.active(), 0);
    }
}
