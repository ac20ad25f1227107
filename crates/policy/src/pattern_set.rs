//! A compiled pattern list (SPEC §4.2): exact names, suffix rules and IP addresses are looked up
//! in hash maps, so their cost depends on the number of labels in the host, not on the number
//! of patterns. CIDR ranges are bucketed by prefix length (at most 33 + 129 buckets). Only
//! in-label globs (`api-*.example.com`) are scanned one by one.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::pattern::{Glob, HostPattern, ListKind, Pattern, PatternError};
use crate::target::{Host, Target};

/// How a target matched a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// A non-wildcard entry equal to the target, or an IP/CIDR entry containing it.
    Explicit,
    /// `*`, `*.x`, `**.x` or an in-label glob.
    Wildcard,
}

/// The ports an entry applies to.
#[derive(Debug, Clone, Default)]
struct Ports {
    any: bool,
    list: Vec<u16>,
}

impl Ports {
    fn add(&mut self, port: Option<u16>) {
        match port {
            None => self.any = true,
            Some(port) if !self.list.contains(&port) => self.list.push(port),
            Some(_) => {}
        }
    }

    /// Port 0 (never a target's port) asks "on any port", as a DNS name lookup does.
    fn matches(&self, port: u16) -> bool {
        self.any || self.list.contains(&port) || (port == 0 && !self.list.is_empty())
    }
}

/// A pattern list compiled for lookups.
#[derive(Debug, Clone, Default)]
pub struct PatternSet {
    patterns: Vec<Pattern>,
    any: Ports,
    exact: HashMap<Box<str>, Ports>,
    /// `*.x`: strict subdomains of `x`.
    subdomains: HashMap<Box<str>, Ports>,
    /// `**.x`: `x` and its subdomains.
    apex_and_subdomains: HashMap<Box<str>, Ports>,
    globs: Vec<(Glob, Option<u16>)>,
    ips: HashMap<IpAddr, Ports>,
    /// One map per (family, prefix length), keyed by the network address.
    cidrs: Vec<(bool, u8, HashMap<IpAddr, Ports>)>,
}

impl PatternSet {
    /// Compiles a list, reporting every bad entry rather than the first.
    pub fn compile<S: AsRef<str>>(
        entries: &[S],
        list: ListKind,
    ) -> Result<PatternSet, Vec<PatternError>> {
        let mut set = PatternSet::default();
        let mut errors = Vec::new();
        for entry in entries {
            match Pattern::parse(entry.as_ref(), list) {
                Ok(pattern) => set.insert(pattern),
                Err(err) => errors.push(err),
            }
        }
        match errors.is_empty() {
            true => Ok(set),
            false => Err(errors),
        }
    }

    pub(crate) fn insert(&mut self, pattern: Pattern) {
        let port = pattern.port;
        match &pattern.host {
            HostPattern::Any => self.any.add(port),
            HostPattern::Exact(name) => self.exact.entry(name.clone()).or_default().add(port),
            HostPattern::Suffix { suffix, apex: false } => {
                self.subdomains.entry(suffix.clone()).or_default().add(port)
            }
            HostPattern::Suffix { suffix, apex: true } => {
                self.apex_and_subdomains.entry(suffix.clone()).or_default().add(port)
            }
            HostPattern::Glob(glob) => self.globs.push((glob.clone(), port)),
            HostPattern::Ip(ip) => self.ips.entry(*ip).or_default().add(port),
            HostPattern::Cidr(net) => {
                let key = (net.addr().is_ipv6(), net.prefix_len());
                let bucket = match self.cidrs.iter().position(|(v6, len, _)| (*v6, *len) == key) {
                    Some(i) => &mut self.cidrs[i].2,
                    None => {
                        self.cidrs.push((key.0, key.1, HashMap::new()));
                        &mut self.cidrs.last_mut().expect("just pushed").2
                    }
                };
                bucket.entry(net.network()).or_default().add(port);
            }
        }
        self.patterns.push(pattern);
    }

    /// The entries, normalised, in the order given.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the target matches, and how. Explicit matches win over wildcard ones.
    ///
    /// An IPv4-mapped or NAT64 literal is explicitly matched only by entries naming the IPv4
    /// address it is delivered to; an IPv6 range that merely contains its IPv6 spelling
    /// (`::/0`, `64:ff9b::/96`) matches it as a wildcard would, so it never unlocks a local
    /// address (SPEC §5.2).
    pub fn matches(&self, target: &Target) -> Option<MatchKind> {
        let port = target.port;
        let explicit = match &target.host {
            Host::Name(name) => self.exact.get(&**name).is_some_and(|p| p.matches(port)),
            Host::Ip(ip) => self.contains_addr(*ip, port),
        };
        if explicit {
            return Some(MatchKind::Explicit);
        }
        let wildcard = self.any.matches(port)
            || match &target.host {
                Host::Name(name) => self.matches_name_wildcard(name, port),
                Host::Ip(ip) => self.covers_addr(*ip, port),
            };
        wildcard.then_some(MatchKind::Wildcard)
    }

    fn matches_name_wildcard(&self, name: &str, port: u16) -> bool {
        if self.apex_and_subdomains.get(name).is_some_and(|p| p.matches(port)) {
            return true;
        }
        // Walk the proper suffixes: `a.b.c` → `b.c` → `c`. One hash lookup per label.
        let mut rest = name;
        while let Some((_, suffix)) = rest.split_once('.') {
            if self.subdomains.get(suffix).is_some_and(|p| p.matches(port))
                || self.apex_and_subdomains.get(suffix).is_some_and(|p| p.matches(port))
            {
                return true;
            }
            rest = suffix;
        }
        self.globs.iter().any(|(glob, p)| p.is_none_or(|p| p == port) && glob.matches(name))
    }

    /// Whether an IP entry equals `ip` or a CIDR entry contains it, on `port`: the explicit
    /// match that may unlock a local address (SPEC §5.2). An IPv6 address that embeds IPv4
    /// addresses ([`crate::local::embedded_v4`]) is judged by those: every one must be
    /// contained, so an IPv6 range (`::/0`, `2002::/16`) never unlocks the IPv4 address behind
    /// it. A single-address entry naming the IPv6 address itself still does.
    pub fn contains_addr(&self, ip: IpAddr, port: u16) -> bool {
        let embedded = embedded(ip);
        if embedded.is_empty() {
            return self.contains_exact_addr(ip, port);
        }
        self.ips.get(&ip).is_some_and(|p| p.matches(port))
            || embedded.iter().all(|v4| self.contains_exact_addr(IpAddr::V4(*v4), port))
    }

    /// Whether any spelling of `ip` (itself, or any IPv4 address it embeds) is inside an IP or
    /// CIDR entry: what a denylist must catch.
    pub fn covers_addr(&self, ip: IpAddr, port: u16) -> bool {
        self.contains_exact_addr(ip, port)
            || embedded(ip).iter().any(|v4| self.contains_exact_addr(IpAddr::V4(*v4), port))
    }

    fn contains_exact_addr(&self, ip: IpAddr, port: u16) -> bool {
        if self.ips.get(&ip).is_some_and(|p| p.matches(port)) {
            return true;
        }
        self.cidrs.iter().any(|(v6, len, bucket)| {
            *v6 == ip.is_ipv6()
                && IpNet::new(ip, *len)
                    .is_ok_and(|net| bucket.get(&net.network()).is_some_and(|p| p.matches(port)))
        })
    }
}

fn embedded(ip: IpAddr) -> Vec<std::net::Ipv4Addr> {
    match ip {
        IpAddr::V4(_) => Vec::new(),
        IpAddr::V6(v6) => crate::local::embedded_v4(v6),
    }
}
