//! Fair DNS (SPEC §7.1): every lookup the dialler makes goes through [`Lookups`], so that one
//! client cannot starve the others.
//!
//! - **Coalesced**: a lookup for a name already in flight waits for that lookup's answer
//!   instead of asking again (the answer is shared, failures included).
//! - **Bounded**: at most [`MAX_LOOKUPS`] distinct lookups are in flight at once, and one
//!   client IP holds at most [`CLIENT_SHARE`] of them; a lookup past its client's share waits
//!   for a slot, and the wait counts against `dns_timeout`. Clients on one IP (every program on
//!   this machine's loopback, say) share one share.
//!
//! With an asynchronous resolver no lookup holds a thread: a name whose DNS never answers costs
//! a timer and a socket until `dns_timeout`, and only its own client's share.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, timeout_at};

use crate::error::DialError;
use crate::resolve::Resolver;

/// Distinct lookups in flight at once, across every client.
pub const MAX_LOOKUPS: usize = 512;
/// Distinct lookups one client IP may have in flight at once.
pub const CLIENT_SHARE: usize = 64;

type Answer = Result<Vec<IpAddr>, DialError>;

pub(crate) struct Lookups {
    resolver: Arc<dyn Resolver>,
    all: Arc<Semaphore>,
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    in_flight: Mutex<HashMap<Box<str>, watch::Receiver<Option<Answer>>>>,
}

impl Lookups {
    pub(crate) fn new(resolver: Arc<dyn Resolver>) -> Lookups {
        Lookups {
            resolver,
            all: Arc::new(Semaphore::new(MAX_LOOKUPS)),
            clients: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `name` for `client` within `dns_timeout`, waiting for a slot, or for the same
    /// name's lookup already in flight.
    pub(crate) async fn lookup(
        &self,
        name: &str,
        client: Option<IpAddr>,
        dns_timeout: Duration,
    ) -> Answer {
        let deadline = Instant::now() + dns_timeout;
        let (leader, mut answer) = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            match in_flight.get(name) {
                Some(answer) => (None, answer.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(name.into(), rx.clone());
                    (Some(Leader { lookups: self, name, tx }), rx)
                }
            }
        };
        let Some(leader) = leader else {
            let shared = timeout_at(deadline, answer.wait_for(Option::is_some)).await;
            return match shared {
                Ok(Ok(answer)) => answer.clone().unwrap_or(Err(DialError::DnsFailed)),
                // The leader went away without an answer.
                Ok(Err(_closed)) => Err(DialError::DnsFailed),
                Err(_elapsed) => Err(DialError::DnsTimeout),
            };
        };
        let result = match timeout_at(deadline, self.permits(client)).await {
            Ok(permits) => {
                let _permits = permits;
                match timeout_at(deadline, self.resolver.resolve(name)).await {
                    Ok(Ok(ips)) => Ok(ips),
                    Ok(Err(error)) => {
                        tracing::debug!(name, %error, "dns lookup failed");
                        Err(DialError::DnsFailed)
                    }
                    Err(_elapsed) => {
                        tracing::debug!(name, "dns lookup timed out");
                        Err(DialError::DnsTimeout)
                    }
                }
            }
            Err(_elapsed) => {
                tracing::debug!(name, ?client, "dns lookup waited past dns_timeout for a slot");
                Err(DialError::DnsTimeout)
            }
        };
        leader.finish(result.clone());
        result
    }

    /// A slot of the client's share, then one of the global bound (in that order, so a client
    /// at its share never holds a global slot while it waits).
    async fn permits(
        &self,
        client: Option<IpAddr>,
    ) -> (OwnedSemaphorePermit, OwnedSemaphorePermit, ClientSlot<'_>) {
        let ip = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ip| ip.to_canonical());
        let share = {
            let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            clients.entry(ip).or_insert_with(|| Arc::new(Semaphore::new(CLIENT_SHARE))).clone()
        };
        let slot = ClientSlot { lookups: self, ip };
        // The semaphores are never closed.
        let mine = share.acquire_owned().await.unwrap_or_else(|_| unreachable_closed());
        let global =
            self.all.clone().acquire_owned().await.unwrap_or_else(|_| unreachable_closed());
        (mine, global, slot)
    }

    /// Lookups in flight now (for tests).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

fn unreachable_closed() -> OwnedSemaphorePermit {
    // Semaphores here are never closed; this cannot run.
    panic!("a lookup semaphore was closed")
}

/// Forgets a client's share once nothing of it is in use, so the table stays small.
struct ClientSlot<'a> {
    lookups: &'a Lookups,
    ip: IpAddr,
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut clients = self.lookups.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.get(&self.ip).is_some_and(|share| {
            Arc::strong_count(share) == 1 && share.available_permits() == CLIENT_SHARE
        }) {
            clients.remove(&self.ip);
        }
    }
}

/// The lookup that asks; on drop (also when its client went away) the name leaves the
/// in-flight table, and waiters get the answer or a failure.
struct Leader<'a> {
    lookups: &'a Lookups,
    name: &'a str,
    tx: watch::Sender<Option<Answer>>,
}

impl Leader<'_> {
    fn finish(self, answer: Answer) {
        self.tx.send_replace(Some(answer));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.lookups.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(self.name);
        if self.tx.borrow().is_none() {
            self.tx.send_replace(Some(Err(DialError::DnsFailed)));
        }
    }
}
