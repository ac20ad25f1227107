//! The one target parser (SPEC §3).
//!
//! Every destination that reaches proxyd, whatever the entry point, becomes a [`Target`] here or
//! is rejected with a [`TargetError`] that says why. The rules are strict on purpose: anything a
//! resolver or an HTTP stack might interpret differently from us (numeric host spellings,
//! percent-encoding, userinfo, backslashes) is refused rather than guessed at.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest DNS name, in characters, without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Why a destination was refused as malformed. Each variant is one rejection of SPEC §3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty host")]
    EmptyHost,
    #[error("numeric host that is not a canonical ipv4 address")]
    AmbiguousNumericHost,
    #[error("percent-encoding is not allowed in a host")]
    PercentEncoding,
    #[error("userinfo is not allowed in a target")]
    Userinfo,
    #[error("backslash is not allowed in a target")]
    Backslash,
    #[error("whitespace is not allowed in a target")]
    Whitespace,
    #[error("control byte or nul in a target")]
    ControlByte,
    #[error("glob character in a host")]
    Glob,
    #[error("empty label in a host name")]
    EmptyLabel,
    #[error("label longer than 63 characters")]
    LabelTooLong,
    #[error("host name longer than 253 characters")]
    NameTooLong,
    #[error("character {0:?} is not allowed in a host name")]
    InvalidCharacter(char),
    #[error("host name is not valid idna")]
    InvalidIdna,
    #[error("invalid ipv6 address")]
    InvalidIpv6,
    #[error("ipv6 zone identifiers are not allowed")]
    Ipv6Zone,
    #[error("ipv6 address with a port must be in brackets")]
    UnbracketedIpv6,
    #[error("more than one port")]
    MultiplePorts,
    #[error("invalid port")]
    InvalidPort,
    #[error("port must be between 1 and 65535")]
    PortOutOfRange,
    #[error("a port is required")]
    MissingPort,
    #[error("unsupported scheme (only http and https)")]
    UnsupportedScheme,
    #[error("not an absolute http or https url")]
    NotAbsolute,
}

/// A canonical host: exactly one of a DNS name, an IPv4 or an IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// ASCII, lower-case, no trailing dot, labels from `[a-z0-9_-]`.
    Name(Box<str>),
    Ip(IpAddr),
}

impl Host {
    /// Parses a bare host (no port): a name, an IPv4 address, or an IPv6 address with or
    /// without brackets.
    pub fn parse(input: &str) -> Result<Host, TargetError> {
        check_bytes(input)?;
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(TargetError::InvalidIpv6)?;
            return parse_ipv6(inner).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        if input.contains(':') {
            return parse_ipv6(input).map(|ip| Host::Ip(IpAddr::V6(ip)));
        }
        parse_name_or_ipv4(input)
    }

    /// The IP address, when the host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// The name, when the host is a DNS name.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }

    /// `localhost` and `*.localhost` are loopback without any DNS lookup (RFC 6761 §6.3).
    pub fn is_localhost_name(&self) -> bool {
        self.name().is_some_and(is_localhost_name)
    }

    /// A local IP literal (SPEC §5.1) or a `localhost` name: local without any lookup.
    pub fn is_local_literal(&self) -> bool {
        match self {
            Host::Ip(ip) => crate::local::is_local(*ip),
            Host::Name(name) => is_localhost_name(name),
        }
    }

    /// Addresses this host stands for without DNS: the literal itself, or the loopback pair for
    /// `localhost` names. `None` means the name must be resolved.
    pub fn fixed_addrs(&self) -> Option<Vec<IpAddr>> {
        match self {
            Host::Ip(ip) => Some(vec![*ip]),
            Host::Name(name) if is_localhost_name(name) => {
                Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)])
            }
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => ip.fmt(f),
        }
    }
}

pub(crate) fn is_localhost_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// A canonical destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// URL schemes proxyd forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// Parses a scheme name, case-insensitively (RFC 3986 §3.1).
    pub fn parse(input: &str) -> Result<Scheme, TargetError> {
        if input.eq_ignore_ascii_case("http") {
            Ok(Scheme::Http)
        } else if input.eq_ignore_ascii_case("https") {
            Ok(Scheme::Https)
        } else {
            Err(TargetError::UnsupportedScheme)
        }
    }
}

/// An absolute-form `http://` or `https://` request-target, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteUrl {
    pub scheme: Scheme,
    pub target: Target,
    /// Path and query as sent (`/` when empty); the fragment is dropped.
    pub path_and_query: String,
}

impl Target {
    pub fn new(host: Host, port: u16) -> Target {
        Target { host, port }
    }

    /// Parses `host:port` or `[v6]:port`. Without a port, `default_port` is used, or the
    /// target is refused when there is none (`CONNECT` requires an explicit port).
    pub fn parse_authority(input: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
        check_bytes(input)?;
        let (host, port) = split_authority(input)?;
        let port = match port {
            Some(port) => parse_port(port)?,
            None => default_port.ok_or(TargetError::MissingPort)?,
        };
        let host = match host.strip_prefix('[') {
            Some(inner) => {
                Host::Ip(IpAddr::V6(parse_ipv6(inner.strip_suffix(']').unwrap_or(inner))?))
            }
            None => parse_name_or_ipv4(host)?,
        };
        Ok(Target { host, port })
    }

    /// Parses a SOCKS5 DOMAINNAME address (RFC 1928 §5): raw bytes, 1–255 long.
    pub fn from_socks_domain(name: &[u8], port: u16) -> Result<Target, TargetError> {
        let name = std::str::from_utf8(name).map_err(|_| TargetError::InvalidIdna)?;
        if name.len() > 255 {
            return Err(TargetError::NameTooLong);
        }
        let host = Host::parse(name)?;
        Target::from_host(host, port)
    }

    /// A target from an already-typed address (SOCKS5 IPv4/IPv6 address types).
    pub fn from_host(host: Host, port: u16) -> Result<Target, TargetError> {
        if port == 0 {
            return Err(TargetError::PortOutOfRange);
        }
        Ok(Target { host, port })
    }

    /// Parses an absolute-form request-target (RFC 9112 §3.2.2).
    pub fn parse_absolute_url(input: &str) -> Result<AbsoluteUrl, TargetError> {
        if let Some(c) = input.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(match c.is_whitespace() {
                true => TargetError::Whitespace,
                false => TargetError::ControlByte,
            });
        }
        let (scheme, rest) = input.split_once("://").ok_or(TargetError::NotAbsolute)?;
        let scheme = Scheme::parse(scheme)?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let target = Target::parse_authority(authority, Some(scheme.default_port()))?;
        let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
        let path_and_query = match tail.chars().next() {
            None => "/".to_owned(),
            Some('?') => format!("/{tail}"),
            Some(_) => tail.to_owned(),
        };
        Ok(AbsoluteUrl { scheme, target, path_and_query })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Rejects bytes that never belong in a target, before any other interpretation.
fn check_bytes(input: &str) -> Result<(), TargetError> {
    for c in input.chars() {
        match c {
            '\0' => return Err(TargetError::ControlByte),
            c if c.is_whitespace() => return Err(TargetError::Whitespace),
            c if c.is_control() => return Err(TargetError::ControlByte),
            '%' => return Err(TargetError::PercentEncoding),
            '@' => return Err(TargetError::Userinfo),
            '\\' => return Err(TargetError::Backslash),
            _ => {}
        }
    }
    Ok(())
}

/// Splits an authority into host and optional port text.
fn split_authority(input: &str) -> Result<(&str, Option<&str>), TargetError> {
    if input.starts_with('[') {
        let close = input.find(']').ok_or(TargetError::InvalidIpv6)?;
        let (host, rest) = input.split_at(close + 1);
        return match rest {
            "" => Ok((host, None)),
            rest => match rest.strip_prefix(':') {
                Some(port) if port.contains(':') => Err(TargetError::MultiplePorts),
                Some(port) => Ok((host, Some(port))),
                None => Err(TargetError::InvalidIpv6),
            },
        };
    }
    let mut parts = input.splitn(3, ':');
    let host = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        (None, _) => Ok((host, None)),
        (Some(port), None) => Ok((host, Some(port))),
        (Some(_), Some(_)) => {
            // `a:b:c` is either an unbracketed IPv6 address (with or without a port) or a
            // host with several ports; neither is accepted.
            if input.rsplit_once(':').is_some_and(|(h, _)| h.parse::<Ipv6Addr>().is_ok())
                || input.parse::<Ipv6Addr>().is_ok()
            {
                Err(TargetError::UnbracketedIpv6)
            } else {
                Err(TargetError::MultiplePorts)
            }
        }
    }
}

pub(crate) fn parse_port(input: &str) -> Result<u16, TargetError> {
    if input.is_empty() || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort);
    }
    // Leading zeros are tolerated, but the value must fit without overflow tricks.
    let digits = input.trim_start_matches('0');
    if digits.len() > 5 {
        return Err(TargetError::PortOutOfRange);
    }
    match digits.parse::<u32>().unwrap_or(0) {
        port @ 1..=65535 => Ok(port as u16),
        _ => Err(TargetError::PortOutOfRange),
    }
}

fn parse_ipv6(input: &str) -> Result<Ipv6Addr, TargetError> {
    if input.contains('%') {
        return Err(TargetError::Ipv6Zone);
    }
    input.parse::<Ipv6Addr>().map_err(|_| TargetError::InvalidIpv6)
}

/// A DNS name or a canonical dotted-decimal IPv4 address.
fn parse_name_or_ipv4(input: &str) -> Result<Host, TargetError> {
    if input.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    if input.contains(['*', '?', '[', ']', '{', '}']) {
        return Err(TargetError::Glob);
    }
    let ascii = to_ascii_lower(input)?;
    let name = ascii.strip_suffix('.').unwrap_or(&ascii);
    if name.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    // A canonical IPv4 address is the only numeric form accepted: `Ipv4Addr`'s parser refuses
    // octal, hex, shortened and leading-zero spellings.
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())) || last.starts_with("0x") {
        return Err(TargetError::AmbiguousNumericHost);
    }
    check_name(name)?;
    Ok(Host::Name(name.into()))
}

/// Lower-cases ASCII input, or maps Unicode input through IDNA (UTS 46) to its `xn--` form.
/// ASCII input with `xn--` labels is passed through IDNA too, so invalid Punycode is refused.
fn to_ascii_lower(input: &str) -> Result<Cow<'_, str>, TargetError> {
    let lower = if input.is_ascii() {
        let lower = match input.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(input.to_ascii_lowercase()),
            false => Cow::Borrowed(input),
        };
        if !lower.contains("xn--") {
            return Ok(lower);
        }
        lower
    } else {
        Cow::Borrowed(input)
    };
    idna::domain_to_ascii_cow(lower.as_bytes(), idna::AsciiDenyList::URL)
        .map(|cow| Cow::Owned(cow.into_owned()))
        .map_err(|_| TargetError::InvalidIdna)
}

/// Checks an ASCII, lower-case name without trailing dot against the label rules.
fn check_name(name: &str) -> Result<(), TargetError> {
    if name.len() > MAX_NAME_LEN {
        return Err(TargetError::NameTooLong);
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    Ok(())
}

pub(crate) fn check_label(label: &str) -> Result<(), TargetError> {
    if label.is_empty() {
        return Err(TargetError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(TargetError::LabelTooLong);
    }
    match label.chars().find(|&c| !is_name_char(c)) {
        Some(c) => Err(TargetError::InvalidCharacter(c)),
        None => Ok(()),
    }
}

/// The characters a canonical name is made of.
pub fn is_name_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')
}

/// Normalises one name (no port, no wildcard) the way targets are normalised; used for
/// pattern labels too.
pub(crate) fn normalize_name(input: &str) -> Result<Host, TargetError> {
    check_bytes(input)?;
    parse_name_or_ipv4(input)
}
