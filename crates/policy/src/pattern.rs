//! The pattern grammar of `allowed_domains` and `denied_domains` (SPEC §4.1) and its load-time
//! rejections (SPEC §4.3).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::target::{self, Host, TargetError};

/// Which list a pattern belongs to: the global `*` is allowlist-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Allowed,
    Denied,
}

/// A pattern refused at load time, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {entry:?}: {kind}")]
pub struct PatternError {
    pub entry: String,
    pub kind: PatternErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternErrorKind {
    #[error("empty pattern")]
    Empty,
    #[error("patterns are host names or addresses, not urls or paths")]
    SchemeOrPath,
    #[error("`*` matches everything and is only allowed in allowed_domains")]
    GlobalInDenylist,
    #[error("a wildcard needs at least two fixed labels after it (`*.example.com`, not `*.com`)")]
    TooBroad,
    #[error("`**` is only allowed as the whole first label")]
    MisplacedDoubleStar,
    #[error("invalid ip address")]
    InvalidIp,
    #[error("invalid cidr range")]
    InvalidCidr,
    #[error("cidr range has host bits set (did you mean {0}?)")]
    CidrHostBits(IpNet),
    #[error("{0}")]
    Port(TargetError),
    #[error("{0}")]
    Name(TargetError),
}

/// One compiled entry of a pattern list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub(crate) host: HostPattern,
    /// `None` matches every port.
    pub(crate) port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// `*`: every host.
    Any,
    /// `example.com`: exactly that name.
    Exact(Box<str>),
    /// `*.example.com` (`apex == false`) or `**.example.com` (`apex == true`).
    Suffix {
        suffix: Box<str>,
        apex: bool,
    },
    /// Names with `*` or `?` inside labels, optionally after a leading `*`/`**` label.
    Glob(Glob),
    Ip(IpAddr),
    Cidr(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    /// Labels matched by a leading `*` (one or more) or `**` (zero or more); `None`: none.
    pub(crate) leading: Option<Leading>,
    /// The remaining labels, leftmost first; each is literal or an in-label glob.
    pub(crate) labels: Vec<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leading {
    OneOrMore,
    ZeroOrMore,
}

impl Pattern {
    /// Parses and normalises one entry (case, trailing dot, IDNA), refusing the entries of
    /// SPEC §4.3.
    pub fn parse(entry: &str, list: ListKind) -> Result<Pattern, PatternError> {
        parse(entry, list).map_err(|kind| PatternError { entry: entry.to_owned(), kind })
    }

    /// Whether this entry names one host or range without any wildcard: the only kind that can
    /// unlock a local destination (SPEC §5.2).
    pub fn is_explicit(&self) -> bool {
        matches!(self.host, HostPattern::Exact(_) | HostPattern::Ip(_) | HostPattern::Cidr(_))
    }
}

/// The part of the name space a pattern can match, in the terms of an X.509 name constraint
/// (RFC 5280 §4.2.1.10), for a certificate authority that must sign only for allowed hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subtree {
    /// A DNS name and every name below it.
    Dns(Box<str>),
    /// An address range.
    Ip(IpNet),
    /// Every host: no constraint expresses the pattern.
    Everything,
}

impl Pattern {
    /// The smallest [`Subtree`] holding every host this pattern matches; ports are ignored.
    /// A DNS subtree also holds the names below it (`example.com` holds `www.example.com`):
    /// a name constraint cannot say "this name only".
    pub fn subtree(&self) -> Subtree {
        match &self.host {
            HostPattern::Any => Subtree::Everything,
            HostPattern::Exact(name) => Subtree::Dns(name.clone()),
            HostPattern::Suffix { suffix, .. } => Subtree::Dns(suffix.clone()),
            HostPattern::Glob(glob) => {
                let fixed = glob.labels.iter().rev().take_while(|l| !l.contains(['*', '?']));
                let mut fixed: Vec<&str> = fixed.map(|label| &**label).collect();
                fixed.reverse();
                match fixed.is_empty() {
                    true => Subtree::Everything,
                    false => Subtree::Dns(fixed.join(".").into()),
                }
            }
            HostPattern::Ip(ip) => Subtree::Ip(IpNet::from(*ip)),
            HostPattern::Cidr(net) => Subtree::Ip(*net),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bracket = matches!(self.host, HostPattern::Ip(IpAddr::V6(_)))
            || matches!(self.host, HostPattern::Cidr(IpNet::V6(_)));
        let bracket = bracket && self.port.is_some();
        if bracket {
            f.write_str("[")?;
        }
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Exact(name) => f.write_str(name)?,
            HostPattern::Suffix { suffix, apex: false } => write!(f, "*.{suffix}")?,
            HostPattern::Suffix { suffix, apex: true } => write!(f, "**.{suffix}")?,
            HostPattern::Glob(glob) => {
                match glob.leading {
                    Some(Leading::OneOrMore) => f.write_str("*.")?,
                    Some(Leading::ZeroOrMore) => f.write_str("**.")?,
                    None => {}
                }
                f.write_str(&glob.labels.join("."))?;
            }
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
            HostPattern::Cidr(net) => write!(f, "{net}")?,
        }
        if bracket {
            f.write_str("]")?;
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn parse(entry: &str, list: ListKind) -> Result<Pattern, PatternErrorKind> {
    if entry.is_empty() {
        return Err(PatternErrorKind::Empty);
    }
    if entry.contains("://") || entry.contains(['@', '\\']) {
        return Err(PatternErrorKind::SchemeOrPath);
    }
    let (host, port) = split_port(entry)?;
    let port = port.map(target::parse_port).transpose().map_err(PatternErrorKind::Port)?;
    let host = parse_host(host, list)?;
    Ok(Pattern { host, port })
}

/// Splits `HOST[:PORT]`, where HOST may be `[v6]`, `[v6/len]`, or an unbracketed IPv6 address
/// or range without a port.
fn split_port(entry: &str) -> Result<(&str, Option<&str>), PatternErrorKind> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(PatternErrorKind::InvalidIp)?;
        return match after {
            "" => Ok((inner, None)),
            after => match after.strip_prefix(':') {
                Some(port) => Ok((inner, Some(port))),
                None => Err(PatternErrorKind::InvalidIp),
            },
        };
    }
    match entry.matches(':').count() {
        0 => Ok((entry, None)),
        1 => {
            let (host, port) = entry.split_once(':').unwrap_or((entry, ""));
            Ok((host, Some(port)))
        }
        _ => Ok((entry, None)),
    }
}

fn parse_host(host: &str, list: ListKind) -> Result<HostPattern, PatternErrorKind> {
    if host.contains('/') {
        return parse_cidr(host);
    }
    if host.contains(':') {
        return host
            .parse::<IpAddr>()
            .map(|ip| HostPattern::Ip(ip.to_canonical()))
            .map_err(|_| PatternErrorKind::InvalidIp);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.ends_with('.') {
        return Err(PatternErrorKind::Name(TargetError::EmptyLabel));
    }
    if name == "*" || name == "**.*" {
        return match list {
            ListKind::Allowed => Ok(HostPattern::Any),
            ListKind::Denied => Err(PatternErrorKind::GlobalInDenylist),
        };
    }
    if !name.contains(['*', '?']) {
        return match target::normalize_name(name).map_err(name_error)? {
            Host::Name(name) => Ok(HostPattern::Exact(name)),
            Host::Ip(ip) => Ok(HostPattern::Ip(ip)),
        };
    }
    parse_wildcard(name)
}

fn name_error(err: TargetError) -> PatternErrorKind {
    match err {
        TargetError::AmbiguousNumericHost => PatternErrorKind::InvalidIp,
        err => PatternErrorKind::Name(err),
    }
}

fn parse_cidr(host: &str) -> Result<HostPattern, PatternErrorKind> {
    let (addr, len) = host.split_once('/').unwrap_or((host, ""));
    if addr.parse::<IpAddr>().is_err() {
        // `x/y` where `x` is no address is a path, not a range.
        return Err(match addr.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            true => PatternErrorKind::InvalidCidr,
            false => PatternErrorKind::SchemeOrPath,
        });
    }
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PatternErrorKind::InvalidCidr);
    }
    let net: IpNet = host.parse().map_err(|_| PatternErrorKind::InvalidCidr)?;
    if net.trunc() != net {
        return Err(PatternErrorKind::CidrHostBits(net.trunc()));
    }
    Ok(HostPattern::Cidr(canonical_net(net)))
}

/// A range inside `::ffff:0:0/96` is written as the IPv4 range it maps (RFC 4291 §2.5.5.2), so
/// it applies to both spellings of those addresses.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        net => net,
    }
}

/// `*.x`, `**.x`, and names with in-label `*`/`?`.
fn parse_wildcard(name: &str) -> Result<HostPattern, PatternErrorKind> {
    let (leading, rest) = match name.split_once('.') {
        Some(("*", rest)) => (Some(Leading::OneOrMore), rest),
        Some(("**", rest)) => (Some(Leading::ZeroOrMore), rest),
        _ => (None, name),
    };
    let mut labels = Vec::new();
    for label in rest.split('.') {
        if label.contains("**") {
            return Err(PatternErrorKind::MisplacedDoubleStar);
        }
        if label.contains(['*', '?']) {
            labels.push(normalize_glob_label(label)?);
        } else {
            labels.push(normalize_label(label)?);
        }
    }
    // The fixed part is the run of literal labels at the right; one label is a whole TLD.
    let fixed = labels.iter().rev().take_while(|l| !l.contains(['*', '?'])).count();
    if fixed < 2 {
        return Err(PatternErrorKind::TooBroad);
    }
    let suffix = labels[labels.len() - fixed..].join(".");
    // The last label of a name is never numeric (SPEC §3), so `*.1.2.3` could only ever be
    // meant for addresses: refuse it.
    target::normalize_name(&suffix).map_err(name_error).and_then(|host| match host {
        Host::Name(_) => Ok(()),
        Host::Ip(_) => Err(PatternErrorKind::InvalidIp),
    })?;
    if fixed == labels.len()
        && let Some(leading) = leading
    {
        let apex = leading == Leading::ZeroOrMore;
        return Ok(HostPattern::Suffix { suffix: suffix.into(), apex });
    }
    Ok(HostPattern::Glob(Glob { leading, labels }))
}

fn normalize_label(label: &str) -> Result<Box<str>, PatternErrorKind> {
    if label.is_empty() {
        return Err(PatternErrorKind::Name(TargetError::EmptyLabel));
    }
    // A single label normalises like a name; numeric labels are fine outside the last place.
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(label.into());
    }
    match target::normalize_name(label).map_err(name_error)? {
        Host::Name(name) if !name.contains('.') => Ok(name),
        _ => Err(PatternErrorKind::Name(TargetError::EmptyLabel)),
    }
}

fn normalize_glob_label(label: &str) -> Result<Box<str>, PatternErrorKind> {
    let lower = label.to_ascii_lowercase();
    if let Some(c) = lower.chars().find(|&c| !(target::is_name_char(c) || c == '*' || c == '?')) {
        return Err(PatternErrorKind::Name(TargetError::InvalidCharacter(c)));
    }
    if lower.len() > 63 {
        return Err(PatternErrorKind::Name(TargetError::LabelTooLong));
    }
    Ok(lower.into())
}

impl Glob {
    /// Whether `name` (canonical) matches: labels compared right to left.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let host: Vec<&str> = name.split('.').collect();
        let n = self.labels.len();
        let extra_ok = match self.leading {
            None => host.len() == n,
            Some(Leading::OneOrMore) => host.len() > n,
            Some(Leading::ZeroOrMore) => host.len() >= n,
        };
        extra_ok
            && host[host.len() - n..]
                .iter()
                .zip(self.labels.iter())
                .all(|(label, pattern)| label_matches(pattern.as_bytes(), label.as_bytes()))
    }
}

/// In-label wildcard matching: `*` is zero or more characters, `?` exactly one, never a dot
/// (labels are matched one by one, so there is no dot to cross). Path patterns reuse it for
/// segments ([`crate::rules`]), which hold no `?`: it is refused in a path.
pub(crate) fn label_matches(pattern: &[u8], label: &[u8]) -> bool {
    let (mut p, mut l) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while l < label.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, l));
                p += 1;
            }
            Some(&c) if c == b'?' || c == label[l] => {
                p += 1;
                l += 1;
            }
            _ => match star {
                Some((sp, sl)) => {
                    p = sp + 1;
                    l = sl + 1;
                    star = Some((sp, sl + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}
