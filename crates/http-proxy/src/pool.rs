//! Upstream connections kept for reuse (SPEC §7.2): only for the same scheme, host, port and
//! checked address, so a connection opened for one decision never carries another host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use proxyd_net::Checked;
use proxyd_policy::{Host, Scheme};

/// Idle upstream connections kept per (scheme, host, port, address).
const MAX_IDLE_PER_KEY: usize = 16;

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
    idle: Mutex<HashMap<PoolKey, Vec<SendRequest<Incoming>>>>,
}

impl Pool {
    /// A connection that can take a request now, for any of the checked addresses.
    pub(crate) fn checkout(
        &self,
        scheme: Scheme,
        checked: &Checked,
    ) -> Option<(SendRequest<Incoming>, PoolKey)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut cx = Context::from_waker(Waker::noop());
        for addr in &checked.addrs {
            let key = PoolKey {
                scheme,
                host: checked.target.host.clone(),
                port: checked.target.port,
                addr: *addr,
            };
            let Some(senders) = idle.get_mut(&key) else { continue };
            senders.retain(|sender| !sender.is_closed());
            // A sender whose previous response is still streaming is not ready yet and stays.
            let ready = senders
                .iter_mut()
                .position(|sender| matches!(sender.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            if let Some(index) = ready {
                return Some((senders.swap_remove(index), key));
            }
        }
        None
    }

    pub(crate) fn checkin(&self, key: PoolKey, sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.entry(key).or_default();
        if senders.len() < MAX_IDLE_PER_KEY {
            senders.push(sender);
        }
    }
}
