//! The accept loop of a listener that must stay reachable when the proxies are overrun: the
//! admin API, which holds the kill switch (issue 16).
//!
//! Its connection budget is its own (no proxy listener shares its semaphore), and two things
//! keep it reachable where [`accept_loop`](crate::accept_loop) would leave a client waiting in
//! the backlog:
//!
//! - **Slow requests are evicted.** At capacity, a new connection closes the oldest one
//!   still waiting for its request (the listener calls [`Evictable::serving`] once the
//!   request is in; a request being served is never cut), so a few hundred clients that never
//!   finish a head or a body cannot hold every slot until their timeout.
//! - **A descriptor reserve.** The loop holds [`RESERVE`] spare descriptors. When `accept`
//!   fails because the process is out of descriptors (EMFILE), it releases them and accepts at
//!   once instead of backing off; each connection's task takes its share back when it ends.
//!   The proxies' accept loops back off on the same error, so the freed descriptors go to the
//!   admin connection waiting in the backlog unless a proxy's retry lands in the same instant.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::accept::{MAX_BACKOFF, MIN_BACKOFF, is_resource_exhaustion, set_nodelay, spawn};
use crate::{Connections, Lifecycle};

/// Spare descriptors held for the reserved listener: its connection, and the few files a
/// request may open (a reload reads the config files).
pub const RESERVE: usize = 4;

const WAITING: u8 = 0;
const SERVING: u8 = 1;
const EVICTED: u8 = 2;

/// One connection's place in the eviction order.
#[derive(Debug, Default)]
struct Slot {
    state: AtomicU8,
    evict: Notify,
}

/// Handed to each connection of [`accept_loop_reserved`]: until [`Evictable::serving`] is
/// called, the loop may close the connection to make room for a new one.
#[derive(Debug)]
pub struct Evictable {
    slot: Arc<Slot>,
}

impl Evictable {
    /// The request has arrived: from now on the connection is never evicted. Returns
    /// `false` when it was evicted already (the handler should stop).
    pub fn serving(&self) -> bool {
        self.slot
            .state
            .compare_exchange(WAITING, SERVING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Resolves when the loop evicts this connection; never, once it is serving.
    pub fn evicted(&self) -> impl Future<Output = ()> + Send + 'static {
        let slot = Arc::clone(&self.slot);
        async move {
            loop {
                let notified = slot.evict.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if slot.state.load(Ordering::Acquire) == EVICTED {
                    return;
                }
                notified.await;
            }
        }
    }
}

/// Like [`accept_loop`](crate::accept_loop) (bounded by `max_connections`, a span and a
/// connection id per handler, counted in `connections` and the lifecycle), for the listener
/// that must stay reachable: at capacity a new connection evicts the oldest one still waiting
/// for its request, and a descriptor reserve is released when accepting runs out of
/// descriptors.
/// See the module documentation.
pub async fn accept_loop_reserved<H, Fut>(
    listener: TcpListener,
    max_connections: usize,
    lifecycle: &Lifecycle,
    connections: Connections,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr, Evictable) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let reserve = Arc::new(Reserve::new(&listener));
    let mut heads: VecDeque<Weak<Slot>> = VecDeque::new();
    let mut backoff = MIN_BACKOFF;
    let shutdown = lifecycle.stopping();
    tokio::pin!(shutdown);
    loop {
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
                if reserve.release() {
                    tracing::warn!(%error, "out of descriptors: released the reserve to accept");
                    continue;
                }
                tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "accept failed, backing off");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // Something else took the released descriptors: take them back as soon as
                // they are free again.
                reserve.refill();
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "accept failed for one connection");
                continue;
            }
        };
        heads.retain(|slot| {
            slot.upgrade().is_some_and(|s| s.state.load(Ordering::Acquire) == WAITING)
        });
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                evict_oldest(&mut heads);
                // The evicted handler returns at once; with nothing to evict (every slot is
                // serving a request, which is quick), wait for one to finish.
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = Arc::clone(&limit).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // The semaphore is never closed.
                        Err(_closed) => break,
                    },
                }
            }
        };
        set_nodelay(&stream, peer);
        let slot = Arc::new(Slot::default());
        heads.push_back(Arc::downgrade(&slot));
        let handling = handler(stream, peer, Evictable { slot });
        let reserve = Arc::clone(&reserve);
        spawn(lifecycle, &connections, permit, peer, async move {
            handling.await;
            // The connection's descriptor is closed: take the reserve back before anything
            // else can.
            reserve.refill();
        });
    }
    tracing::debug!("accept loop stopped");
}

/// Evicts the oldest connection still waiting for its request, if any.
fn evict_oldest(heads: &mut VecDeque<Weak<Slot>>) {
    while let Some(slot) = heads.pop_front() {
        let Some(slot) = slot.upgrade() else { continue };
        if slot
            .state
            .compare_exchange(WAITING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::debug!("at capacity: closed the oldest connection still reading its request");
            slot.evict.notify_one();
            return;
        }
    }
}

/// Spare descriptors (duplicates of the listener's), released when accepting hits EMFILE.
#[derive(Debug)]
struct Reserve {
    #[cfg(unix)]
    seed: Option<std::os::fd::OwnedFd>,
    #[cfg(unix)]
    spare: std::sync::Mutex<Vec<std::os::fd::OwnedFd>>,
}

impl Reserve {
    #[cfg(unix)]
    fn new(listener: &TcpListener) -> Reserve {
        use std::os::fd::AsFd as _;
        let seed = listener.as_fd().try_clone_to_owned().ok();
        let reserve = Reserve { seed, spare: std::sync::Mutex::new(Vec::new()) };
        reserve.refill();
        reserve
    }

    /// Drops every spare descriptor; `false` when there was none to drop.
    #[cfg(unix)]
    fn release(&self) -> bool {
        let mut spare = self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let released = !spare.is_empty();
        spare.clear();
        released
    }

    /// Tops the reserve up to [`RESERVE`] (as far as descriptors allow).
    #[cfg(unix)]
    fn refill(&self) {
        let Some(seed) = &self.seed else { return };
        let mut spare = self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while spare.len() < RESERVE {
            match seed.try_clone() {
                Ok(fd) => spare.push(fd),
                Err(_) => break,
            }
        }
    }

    #[cfg(not(unix))]
    fn new(_listener: &TcpListener) -> Reserve {
        Reserve {}
    }

    #[cfg(not(unix))]
    fn release(&self) -> bool {
        false
    }

    #[cfg(not(unix))]
    fn refill(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> (Arc<Slot>, Evictable) {
        let slot = Arc::new(Slot::default());
        (Arc::clone(&slot), Evictable { slot })
    }

    #[tokio::test]
    async fn the_oldest_waiting_head_is_evicted_never_a_serving_one() {
        let (first, serving) = slot();
        let (second, waiting) = slot();
        let (third, young) = slot();
        assert!(serving.serving());
        let mut heads: VecDeque<_> = [&first, &second, &third].map(Arc::downgrade).into();
        evict_oldest(&mut heads);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting.evicted()).await.unwrap();
        // Evicted once: it can no longer start serving.
        assert!(!waiting.serving());
        assert!(young.serving());
        evict_oldest(&mut heads);
        assert!(heads.is_empty(), "nothing left that may be evicted");
        assert_eq!(first.state.load(Ordering::Acquire), SERVING);
        assert_eq!(third.state.load(Ordering::Acquire), SERVING);
    }
}
