//! Name resolution behind a trait, so tests can map names to loopback without `/etc/hosts` and
//! can prove that a name was never sent to DNS.
//!
//! Only [`Dialer`](crate::Dialer) calls a resolver, once per dial, after the name has passed the
//! allowlist (SPEC §6 step 7).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
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

/// The operating system's resolver (`getaddrinfo` on a blocking thread, through tokio), asked
/// only for the exact name that was decided.
///
/// The hosts file is consulted first for an exact match of the name or one of its aliases.
/// Otherwise the name is looked up fully qualified (with a trailing dot), so the resolver's
/// search list (`search`/`ndots` in resolv.conf) never turns `secret` into
/// `secret.corp.internal` or `api.example.com` into `api.example.com.cluster.local`: the name
/// resolved is always the name the policy decided.
///
/// When `dns_timeout` fires the caller gets its answer at once, but the blocking lookup itself
/// cannot be cancelled and finishes on tokio's blocking pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            if let Ok(hosts) = tokio::fs::read_to_string(HOSTS_FILE).await {
                let found = hosts_lookup(&hosts, name);
                if !found.is_empty() {
                    return Ok(found);
                }
            }
            let qualified = format!("{name}.");
            // Port 0: only the addresses matter; the dialler adds the target's port.
            #[expect(clippy::disallowed_methods, reason = "the one resolver (SPEC §7.1)")]
            let lookup = tokio::net::lookup_host((qualified.as_str(), 0));
            let answers = lookup.await?;
            Ok(dedup(answers.map(|addr| addr.ip())))
        })
    }
}

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
