//! proxyd's one lifecycle owner (SPEC §7.5): the accept loop every listener runs (HTTP,
//! SOCKS5, admin), the tracking of everything live, and the one shutdown that stops every
//! accept loop, drains every listener's connections under one `drain_timeout`, and then closes
//! what is left, once.
//!
//! - `accept`: [`accept_loop`] (bounded, EMFILE backoff) and [`Connections`] counting;
//! - `reserved`: [`accept_loop_reserved`], the admin API's loop, which stays reachable when the
//!   proxies are overrun (slow heads evicted at capacity, a descriptor reserve);
//! - [`Lifecycle`]: the stop and close signals every connection, tunnel and association
//!   listens to, and [`Lifecycle::shutdown`].
//!
//! It must not know about policy, protocols or egress: the admin listener uses it, and the
//! admin API never dials. It installs no global state.

mod accept;
mod reserved;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use accept::{Connections, Tracked, accept_loop};
pub use reserved::{Evictable, RESERVE, accept_loop_reserved};

/// After the drain ran out and everything was told to close: how long shutdown waits for the
/// handlers to notice before it returns anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The phases of the process's life, shared by every listener. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    inner: Arc<State>,
}

#[derive(Debug)]
struct State {
    /// Turns true when shutdown begins: accept loops stop, keep-alive connections finish the
    /// request in flight and close.
    stopping: watch::Sender<bool>,
    /// Turns true when the drain ran out: every connection, tunnel and association closes.
    closing: watch::Sender<bool>,
    /// Everything the drain waits for, across every listener.
    live: Connections,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Everything finished within `drain_timeout`.
    Clean,
    /// The drain ran out; this many connections were still open and were closed.
    Closed(usize),
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle::new()
    }
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle {
            inner: Arc::new(State {
                stopping: watch::Sender::new(false),
                closing: watch::Sender::new(false),
                live: Connections::new(),
            }),
        }
    }

    /// Counts one more live thing (a connection, a tunnel, an association) that the drain
    /// waits for, until the guard drops.
    pub fn track(&self) -> Tracked {
        self.inner.live.track()
    }

    /// How many tracked things are live now.
    pub fn active(&self) -> usize {
        self.inner.live.active()
    }

    /// Resolves when shutdown begins (at once if it has).
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Resolves when the drain has run out and everything must close (at once if it has).
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    /// Stops accepting and closes everything at once, without a drain (a handle dropped
    /// without `shutdown`).
    pub fn close_now(&self) {
        self.inner.stopping.send_replace(true);
        self.inner.closing.send_replace(true);
    }

    /// The one shutdown: stops every accept loop, waits up to `drain_timeout` for every tracked
    /// connection, tunnel and association of every listener, then closes what is left and
    /// waits (briefly) for it to go.
    pub async fn shutdown(&self, drain_timeout: Duration) -> Drained {
        self.inner.stopping.send_replace(true);
        let live = &self.inner.live;
        if tokio::time::timeout(drain_timeout, live.wait_idle()).await.is_ok() {
            return Drained::Clean;
        }
        let open = live.active();
        tracing::info!(open, "drain timeout: closing what is left");
        self.inner.closing.send_replace(true);
        if tokio::time::timeout(CLOSE_GRACE, live.wait_idle()).await.is_err() {
            tracing::warn!(open = live.active(), "connections still open after closing");
        }
        Drained::Closed(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_the_drain_then_closes_once() {
        let lifecycle = Lifecycle::new();
        let slow = lifecycle.track();
        let closing = lifecycle.closing();
        let keeper = tokio::spawn(async move {
            closing.await;
            drop(slow);
        });
        let started = tokio::time::Instant::now();
        let drained = lifecycle.shutdown(Duration::from_millis(200)).await;
        assert_eq!(drained, Drained::Closed(1));
        assert!(started.elapsed() >= Duration::from_millis(200));
        keeper.await.unwrap();
        assert_eq!(lifecycle.active(), 0);
        // Every later wait returns at once.
        tokio::time::timeout(Duration::from_secs(1), lifecycle.stopping()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), lifecycle.closing()).await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_process_drains_clean() {
        let lifecycle = Lifecycle::new();
        let drained = tokio::time::timeout(
            Duration::from_secs(1),
            lifecycle.shutdown(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert_eq!(drained, Drained::Clean);
    }
}
