//! Upstream connections kept for reuse (SPEC §7.2): only for the same scheme, host, port and
//! checked address, so a connection opened for one decision never carries another host.
//!
//! An HTTP/1.1 connection is taken out for one request and checked in again once its response
//! head has arrived. An HTTP/2 connection is checked in once, when it is opened, and stays:
//! every checkout hands out a clone of its handle and its requests are multiplexed on it (h2
//! queues those past the origin's `SETTINGS_MAX_CONCURRENT_STREAMS`), until it closes or the
//! origin sends `GOAWAY`, when it is pruned like a closed HTTP/1.1 connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use proxyd_net::Checked;
use proxyd_policy::{Host, Scheme};

use crate::origin::Sender;

/// Idle upstream connections kept per (scheme, host, port, address).
const MAX_IDLE_PER_KEY: usize = 16;

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
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Sender>>>,
}

impl Pool {
    /// A connection that can take a request now, for any of the checked addresses.
    pub(crate) fn checkout(&self, scheme: Scheme, checked: &Checked) -> Option<(Sender, PoolKey)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut cx = Context::from_waker(Waker::noop());
        for addr in checked.addrs() {
            let key = PoolKey {
                scheme,
                host: checked.target().host.clone(),
                port: checked.target().port,
                addr: *addr,
            };
            let Some(senders) = idle.get_mut(&key) else { continue };
            senders.retain(|sender| !sender.is_closed());
            // A sender whose previous response is still streaming is not ready yet and stays.
            let ready = senders
                .iter_mut()
                .position(|sender| matches!(sender.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let Some(index) = ready else { continue };
            // HTTP/2 is shared: the connection stays for the next request.
            if let Sender::Http2(shared) = &senders[index] {
                return Some((Sender::Http2(shared.clone()), key));
            }
            return Some((senders.swap_remove(index), key));
        }
        None
    }

    pub(crate) fn checkin(&self, key: PoolKey, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !idle.contains_key(&key) && idle.len() >= MAX_KEYS {
            idle.retain(|_, senders| {
                senders.retain(|sender| !sender.is_closed());
                !senders.is_empty()
            });
            if idle.len() >= MAX_KEYS {
                return;
            }
        }
        let senders = idle.entry(key).or_default();
        if senders.len() < MAX_IDLE_PER_KEY {
            senders.push(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::rt::TokioIo;

    use super::*;

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
        pool.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[tokio::test]
    async fn the_number_of_keys_is_bounded_and_closed_connections_make_room() {
        let pool = Pool::default();
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
