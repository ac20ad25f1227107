//! Upstream connections kept for reuse (SPEC §7.2): only for the same scheme, host, port and
//! checked address, so a connection opened for one decision never carries another host.
//!
//! An HTTP/1.1 connection is taken out for one request and checked in again once its response
//! head has arrived. An HTTP/2 connection is checked in once, when it is opened, and stays:
//! every checkout hands out a clone of its handle and its requests are multiplexed on it (h2
//! queues those past the origin's `SETTINGS_MAX_CONCURRENT_STREAMS`), until it closes or the
//! origin sends `GOAWAY`, when it is pruned like a closed HTTP/1.1 connection.
//!
//! A connection unused for the listener's `idle_timeout` is closed (SPEC §2.2: the one idle
//! clock of keep-alive connections): [`Pool::reap`] runs from the listener's task, so an
//! origin that never closes an idle connection does not hold a descriptor forever.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use proxyd_net::Checked;
use proxyd_policy::{Host, Scheme};

use crate::origin::Sender;

/// Distinct keys kept. Past this, closed connections are pruned; if that frees no room, a
/// connection for a new key is simply not pooled, so many hosts cannot grow the pool forever.
const MAX_KEYS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) scheme: Scheme,
    pub(crate) host: Host,
    pub(crate) port: u16,
    pub(crate) addr: SocketAddr,
}

/// Upstream connections, reused only for the same scheme, host, port and checked address.
///
/// At most `max_idle` connections are kept, for one origin or spread over many: the
/// listener's `max_connections`. Each client connection has at most one HTTP/1.1 request in
/// flight, so as many connections as the load can use at once are kept, and no more.
pub(crate) struct Pool {
    idle: Mutex<Idle>,
    max_idle: usize,
    /// How long a connection may go unused before it is closed.
    idle_timeout: Duration,
}

#[derive(Default)]
struct Idle {
    senders: HashMap<PoolKey, Vec<Entry>>,
    /// Senders held over every key, closed ones not yet pruned included.
    total: usize,
}

/// A pooled connection and when it was last used: checked in (HTTP/1.1) or handed out
/// (HTTP/2, which stays pooled while in use).
struct Entry {
    sender: Sender,
    used: Instant,
}

impl Idle {
    /// Drops the connections that are closed, or idle and unused since `stale`. One whose
    /// response is still streaming is in use, however old its entry.
    fn prune(&mut self, stale: Instant) {
        let mut total = 0;
        let mut cx = Context::from_waker(Waker::noop());
        self.senders.retain(|_, senders| {
            senders.retain_mut(|entry| {
                if entry.sender.is_closed() {
                    return false;
                }
                entry.used > stale || entry.sender.poll_ready(&mut cx).is_pending()
            });
            total += senders.len();
            !senders.is_empty()
        });
        self.total = total;
    }
}

impl Pool {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool { idle: Mutex::new(Idle::default()), max_idle, idle_timeout }
    }

    /// Connections last used before this are closed.
    fn stale(&self, now: Instant) -> Instant {
        now.checked_sub(self.idle_timeout).unwrap_or(now)
    }

    /// How often [`Pool::reap`] should run: a quarter of the idle timeout, at most 30 s, so
    /// an unused connection is closed within 1.25× the timeout.
    pub(crate) fn reap_period(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30))
    }

    /// Closes the connections unused for the idle timeout, and forgets closed ones.
    pub(crate) fn reap(&self) {
        let stale = self.stale(Instant::now());
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).prune(stale);
    }

    /// A connection that can take a request now, for any of the checked addresses: the one
    /// used last (the least likely to have been closed by the origin's keep-alive timeout).
    /// Connections found closed or closing are dropped.
    pub(crate) fn checkout(&self, scheme: Scheme, checked: &Checked) -> Option<(Sender, PoolKey)> {
        let now = Instant::now();
        let stale = self.stale(now);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let idle = &mut *idle;
        let mut cx = Context::from_waker(Waker::noop());
        for addr in checked.addrs() {
            let key = PoolKey {
                scheme,
                host: checked.target().host.clone(),
                port: checked.target().port,
                addr: *addr,
            };
            let Some(senders) = idle.senders.get_mut(&key) else { continue };
            let mut at = senders.len();
            while at > 0 {
                at -= 1;
                let entry = &mut senders[at];
                // Idle and unused for the idle timeout: closed, as `reap` would have.
                let expired = entry.used <= stale;
                match entry.sender.poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) if !expired && !entry.sender.is_closed() => {
                        // HTTP/2 is shared: the connection stays for the next request.
                        if let Sender::Http2(shared) = &entry.sender {
                            entry.used = now;
                            return Some((Sender::Http2(shared.clone()), key));
                        }
                        idle.total -= 1;
                        return Some((senders.remove(at).sender, key));
                    }
                    // A sender whose previous response is still streaming is not ready yet
                    // and stays.
                    Poll::Pending if !entry.sender.is_closed() => {}
                    _ => {
                        idle.total -= 1;
                        drop(senders.remove(at));
                    }
                }
            }
        }
        None
    }

    pub(crate) fn checkin(&self, key: PoolKey, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let new_key = !idle.senders.contains_key(&key);
        if (new_key && idle.senders.len() >= MAX_KEYS) || idle.total >= self.max_idle {
            idle.prune(self.stale(Instant::now()));
            if (new_key && idle.senders.len() >= MAX_KEYS) || idle.total >= self.max_idle {
                return;
            }
        }
        idle.senders.entry(key).or_default().push(Entry { sender, used: Instant::now() });
        idle.total += 1;
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::rt::TokioIo;

    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    /// A sender over an in-memory pipe; it stays open while `server` is kept.
    async fn sender() -> (Sender, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(64);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake over a pipe");
        tokio::spawn(conn);
        (Sender::Http1(sender), server)
    }

    fn key(i: usize) -> PoolKey {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let host = Host::Name(format!("h{i}.test").into());
        PoolKey { scheme: Scheme::Http, host, port: 80, addr }
    }

    fn keys(pool: &Pool) -> usize {
        pool.idle.lock().unwrap_or_else(|e| e.into_inner()).senders.len()
    }

    /// A connection unused for the idle timeout is closed by `reap` (the origin's side sees
    /// EOF); one used within it stays.
    #[tokio::test]
    async fn connections_unused_for_the_idle_timeout_are_closed() {
        use tokio::io::AsyncReadExt;

        let pool = Pool::new(8, Duration::from_secs(1));
        let (old, mut old_server) = sender().await;
        pool.checkin(key(0), old);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (fresh, _fresh_server) = sender().await;
        pool.checkin(key(1), fresh);
        pool.reap();
        assert_eq!(pool.idle.lock().unwrap_or_else(|e| e.into_inner()).total, 1);
        assert_eq!(keys(&pool), 1, "the fresh connection stays");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), old_server.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0))), "the expired connection was not closed: {read:?}");
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept_over_every_key() {
        let pool = Pool::new(8, LONG);
        let mut servers = Vec::new();
        for i in 0..12 {
            let (sender, server) = sender().await;
            pool.checkin(key(i % 2), sender);
            servers.push(server);
        }
        let idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = idle.senders.values().map(Vec::len).sum();
        assert_eq!((held, idle.total), (8, 8));
    }

    #[tokio::test]
    async fn the_number_of_keys_is_bounded_and_closed_connections_make_room() {
        let pool = Pool::new(MAX_KEYS * 2, LONG);
        let mut servers = Vec::new();
        for i in 0..MAX_KEYS + 5 {
            let (sender, server) = sender().await;
            pool.checkin(key(i), sender);
            servers.push(server);
        }
        assert_eq!(keys(&pool), MAX_KEYS, "new keys past the bound are not pooled");
        // Closing the first connection frees its key for a new one.
        drop(servers.remove(0));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (sender, server) = sender().await;
            pool.checkin(key(MAX_KEYS + 100), sender);
            servers.push(server);
            let (pooled, old_kept, len) = {
                let idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                let idle = &idle.senders;
                (idle.contains_key(&key(MAX_KEYS + 100)), idle.contains_key(&key(0)), idle.len())
            };
            if pooled {
                assert!(!old_kept, "the closed connection was pruned");
                assert_eq!(len, MAX_KEYS);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "closed connection never pruned");
            tokio::task::yield_now().await;
        }
    }
}
