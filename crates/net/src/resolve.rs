//! Name resolution behind a trait, so tests can map names to loopback without `/etc/hosts` and
//! can prove that a name was never sent to DNS.
//!
//! Only [`Dialer`](crate::Dialer) calls a resolver, once per dial, after the name has passed the
//! allowlist (SPEC §6 step 7).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

/// A boxed, sendable future (what an object-safe async trait method returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a DNS name into addresses (A and AAAA). Injectable so tests can map names to
/// loopback without `/etc/hosts`.
///
/// The dialler bounds every call with `dns_timeout`; an implementation need not.
pub trait Resolver: Send + Sync + 'static {
    /// Resolves `name` (canonical: ASCII, lower-case, no trailing dot, never an IP literal or a
    /// `localhost` name). An empty answer is treated as a failure by the dialler.
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;
}

/// The system's resolver configuration, asked only for the exact name that was decided, by
/// an asynchronous DNS stub (`stub.rs`, on hickory-proto's wire format): no lookup parks a thread, so names whose DNS
/// never answers cost a timer and a socket each, not a blocking-pool thread.
///
/// - The hosts file is read first, for an exact match of the name or one of its aliases.
/// - Otherwise the name is queried fully qualified (with a trailing dot), A and AAAA, at the
///   nameservers of `resolv.conf`; its `search` and `domain` lines are dropped, so the search
///   list never turns `secret` into `secret.corp.internal`: the name resolved is always the
///   name the policy decided.
/// - No public resolver is ever used as a fallback: without a readable `resolv.conf` (or with
///   no nameserver in it) every DNS lookup fails (`dns_failed`), and hosts-file names,
///   `localhost` and IP literals still work.
#[derive(Debug, Clone)]
pub struct SystemResolver {
    servers: Vec<SocketAddr>,
}

impl SystemResolver {
    /// The nameservers of the system's `resolv.conf`.
    pub fn from_system_conf() -> SystemResolver {
        let servers = match std::fs::read_to_string(RESOLV_CONF) {
            Ok(text) => crate::stub::nameservers(&text),
            Err(error) => {
                tracing::warn!(%error, path = RESOLV_CONF, "cannot read the resolver configuration: dns lookups will fail");
                Vec::new()
            }
        };
        if servers.is_empty() {
            tracing::warn!(path = RESOLV_CONF, "no nameserver configured: dns lookups will fail");
        }
        SystemResolver { servers }
    }

    /// These nameservers, for tests and embeddings.
    pub fn with_nameservers(servers: &[SocketAddr]) -> SystemResolver {
        SystemResolver { servers: servers.to_vec() }
    }
}

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            if let Ok(hosts) = tokio::fs::read_to_string(HOSTS_FILE).await {
                let found = hosts_lookup(&hosts, name);
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            let answer = crate::stub::lookup(&self.servers, &format!("{name}.")).await?;
            Ok(dedup(answer))
        })
    }
}

const RESOLV_CONF: &str = "/etc/resolv.conf";
const HOSTS_FILE: &str = "/etc/hosts";

/// Addresses for `name` in hosts-file text (`ADDRESS NAME [ALIAS...]`, `#` comments), in file
/// order. Names compare case-insensitively, ignoring one trailing dot.
fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|ip| ip.parse::<IpAddr>().ok()) else { continue };
        if fields.any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name)) {
            found.push(ip);
        }
    }
    dedup(found)
}

/// A fixed name → addresses table for tests, which also counts lookups per name so a test can
/// assert that a name was never sent to DNS.
///
/// Unknown names fail with [`io::ErrorKind::NotFound`].
#[derive(Debug, Default)]
pub struct StaticResolver {
    table: HashMap<Box<str>, Vec<IpAddr>>,
    lookups: Mutex<HashMap<Box<str>, usize>>,
}

impl StaticResolver {
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Maps `name` to `addrs`, in that order. An empty list makes `name` resolve to nothing.
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> StaticResolver {
        self.table.insert(name.into(), addrs.into_iter().collect());
        self
    }

    /// How many times `name` was looked up, known or not.
    pub fn lookups(&self, name: &str) -> usize {
        self.counts().get(name).copied().unwrap_or(0)
    }

    /// How many lookups there were in all, for any name.
    pub fn total_lookups(&self) -> usize {
        self.counts().values().sum()
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, usize>> {
        // A panic while counting leaves a valid map behind; keep using it.
        self.lookups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        *self.counts().entry(name.into()).or_insert(0) += 1;
        let answer = match self.table.get(name) {
            Some(addrs) => Ok(addrs.clone()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "name not in the static table")),
        };
        Box::pin(std::future::ready(answer))
    }
}

/// Removes repeated addresses, keeping the first occurrence's position: the resolver's order
/// is the preference order happy eyeballs starts from.
pub(crate) fn dedup(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for addr in addrs {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lookup_is_exact() {
        let hosts = "# comment\n127.0.0.1 localhost\n10.0.0.5  build.internal  build # ci box\n\
                     ::1 ip6-localhost\n10.0.0.6 Build.Internal.\nnot-an-ip name\n10.0.0.5 build\n";
        let ips =
            |name| hosts_lookup(hosts, name).iter().map(|ip| ip.to_string()).collect::<Vec<_>>();
        assert_eq!(ips("build.internal"), ["10.0.0.5", "10.0.0.6"]);
        assert_eq!(ips("build"), ["10.0.0.5"]);
        assert_eq!(ips("ip6-localhost"), ["::1"]);
        assert!(ips("internal").is_empty());
        assert!(ips("comment").is_empty());
        assert!(ips("name").is_empty());
    }

    #[test]
    fn dedup_keeps_first_occurrence_order() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let c: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(dedup([a, b, a, c, b]), vec![a, b, c]);
        assert_eq!(dedup([]), Vec::<IpAddr>::new());
    }
}
