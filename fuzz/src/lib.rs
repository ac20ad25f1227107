//! The invariants the fuzz targets assert, shared between them. Each check panics with the
//! input and what broke, which libFuzzer reports as a crash.
//!
//! A target never only asks "does it panic": every value a parser accepts is held to the
//! meaning SPEC §3 gives it, and to what other stacks would make of the same bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxyd_policy::{
    Decision, Host, ListKind, Mode, PatternSet, Policy, Protocol, Reason, Request, SideDoors,
    Target, Verdict, embedded_v4, is_local,
};

/// The checks on a host any entry point accepted; `input` is the host as it was sent.
pub fn check_host(input: &str, host: &Host) {
    // Canonical: the display parses back to the same host, and is its own display.
    let shown = host.to_string();
    assert_eq!(Host::parse(&shown).as_ref(), Ok(host), "{input:?}: canonical {shown:?} reparses");
    match host {
        Host::Name(name) => check_name(input, name),
        Host::Ip(IpAddr::V4(ip)) => check_v4(input, *ip),
        Host::Ip(IpAddr::V6(ip)) => {
            assert_eq!(Host::parse(&format!("[{ip}]")).as_ref(), Ok(host), "{input:?}: brackets");
            check_v6(*ip);
        }
    }
}

/// A target any entry point accepted: its display is an authority that parses back to it.
pub fn check_target(input: &str, target: &Target) {
    assert_ne!(target.port, 0, "{input:?}: port 0 accepted");
    let shown = target.to_string();
    assert_eq!(
        Target::parse_authority(&shown, None).as_ref(),
        Ok(target),
        "{input:?}: canonical authority {shown:?} reparses"
    );
    check_host(input, &target.host);
}

/// A name is canonical ASCII, and nothing reads it as an address: not std's parser, not
/// `inet_aton` (what `getaddrinfo`, curl and Python hand a numeric host to), not a WHATWG URL
/// parser (which also takes a trailing dot).
fn check_name(input: &str, name: &str) {
    assert!(!name.is_empty() && name.len() <= 253, "{input:?}: name length {}", name.len());
    for label in name.split('.') {
        assert!(!label.is_empty() && label.len() <= 63, "{input:?}: label {label:?}");
        assert!(
            label.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')),
            "{input:?}: label {label:?} is not canonical"
        );
    }
    assert!(name.parse::<IpAddr>().is_err(), "{input:?}: name {name:?} is an address to std");
    assert_eq!(numeric(name), None, "{input:?}: name {name:?} is an address to inet_aton");
    if input.is_ascii() {
        assert!(input.parse::<IpAddr>().is_err(), "{input:?}: input is an address to std");
        let lower = input.to_ascii_lowercase();
        assert_eq!(numeric(&lower), None, "{input:?}: input is an address to inet_aton");
    }
    assert!(!Host::Name(name.into()).is_local_literal() || is_localhost(name));
}

fn is_localhost(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// An IPv4 host: every numeric reading of the input agrees with it.
fn check_v4(input: &str, ip: Ipv4Addr) {
    if input.is_ascii() {
        let lower = input.to_ascii_lowercase();
        let numeric = numeric(&lower);
        assert!(numeric.is_none() || numeric == Some(ip), "{input:?}: {ip} vs {numeric:?}");
        if let Ok(std) = lower.trim_end_matches('.').parse::<IpAddr>() {
            assert_eq!(std, IpAddr::V4(ip), "{input:?}: std reads another address");
        }
    }
}

/// An IPv6 address is classified with every IPv4 address it embeds: local if any is local,
/// refused by a denylist naming any of them, and never unlocked by a broad allowlist.
pub fn check_v6(ip: Ipv6Addr) {
    let v6 = IpAddr::V6(ip);
    for v4 in embedded_v4(ip) {
        if is_local(IpAddr::V4(v4)) {
            assert!(is_local(v6), "{ip} embeds local {v4} but is not local");
        }
        let target = Target::new(Host::Ip(v6), 443);
        let mut policy = make_policy(&["*"], &[&v4.to_string()]);
        assert_eq!(decide(&policy, &target), Some(Reason::Denied), "{ip}: denylisted {v4}");
        let name = Target::new(Host::Name("fuzz.example".into()), 443);
        assert_eq!(
            policy.check_resolved(&name, &[v6], &[]),
            Decision::Block(Reason::Denied),
            "{ip} resolved: denylisted {v4}"
        );
        if is_local(IpAddr::V4(v4)) {
            policy.denied = PatternSet::default();
            assert_eq!(decide(&policy, &target), Some(Reason::NotAllowedLocal), "{ip}: {v4}");
            assert_eq!(
                policy.check_resolved(&name, &[v6], &[]),
                Decision::Block(Reason::NotAllowedLocal),
                "{ip} resolved: local {v4}"
            );
            // An IPv6 range holding the address unlocks only the address itself, never what
            // it embeds (ARCHITECTURE "Embedded IPv4").
            let range = make_policy(&["*", "::/0"], &[]);
            assert_eq!(
                range.check_resolved(&name, &[v6], &[]),
                Decision::Block(Reason::NotAllowedLocal),
                "{ip} resolved: the ::/0 range unlocked local {v4}"
            );
        }
    }
}

fn make_policy(allowed: &[&str], denied: &[&str]) -> Policy {
    Policy {
        allowed: PatternSet::compile(allowed, ListKind::Allowed).expect("allowlist"),
        denied: PatternSet::compile(denied, ListKind::Denied).expect("denylist"),
        enabled: true,
        ..Policy::default()
    }
}

/// The block reason of a plain HTTPS `CONNECT` to `target` in full mode, `None` when allowed.
fn decide(policy: &Policy, target: &Target) -> Option<Reason> {
    let request = Request {
        protocol: Protocol::HttpConnect,
        target,
        method: Some("CONNECT"),
        mode: Mode::Full,
        side_doors: SideDoors::default(),
        inspected: false,
        http: None,
    };
    match policy.decide(&request) {
        Verdict::Decided(Decision::Block(reason)) => Some(reason),
        Verdict::Decided(Decision::Allow) | Verdict::Consult(_) => None,
    }
}

/// What a numeric-host reader makes of `s`: BSD/glibc `inet_aton` (one to four parts, each
/// decimal, octal with a leading `0` or hex with `0x`, the last filling the remaining bytes),
/// also with one trailing dot as WHATWG URL parsers take it.
pub fn numeric(s: &str) -> Option<Ipv4Addr> {
    inet_aton(s).or_else(|| inet_aton(s.strip_suffix('.')?))
}

/// `inet_aton`, without the trailing-whitespace tolerance (a target never has whitespace).
pub fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(4);
    for part in &parts {
        values.push(aton_part(part)?);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if room < 32 && *last >> room != 0 {
        return None;
    }
    let mut addr: u32 = 0;
    for (i, &v) in head.iter().enumerate() {
        addr |= (v as u32) << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(addr | *last as u32))
}

fn aton_part(part: &str) -> Option<u64> {
    let bytes = part.as_bytes();
    if !bytes.first()?.is_ascii_digit() {
        return None;
    }
    let (radix, digits) = match bytes {
        [b'0', b'x' | b'X', rest @ ..] => (16, rest),
        [b'0', rest @ ..] => (8, rest),
        _ => (10, bytes),
    };
    let mut value: u64 = 0;
    for &b in digits {
        let digit = (b as char).to_digit(radix)?;
        value = value.checked_mul(u64::from(radix))?.checked_add(u64::from(digit))?;
        if value > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(value)
}

/// Percent-decodes once, leaving malformed escapes as they are (as lenient servers do).
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let hex = input.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(value) if b == b'%' && !hex.is_some_and(|h| h.starts_with('+')) => {
                out.push(value);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_aton_reads_what_glibc_reads() {
        let v4 = |s: &str| s.parse::<Ipv4Addr>().ok();
        assert_eq!(inet_aton("127.1"), v4("127.0.0.1"));
        assert_eq!(inet_aton("0x7f.1"), v4("127.0.0.1"));
        assert_eq!(inet_aton("0177.0.0.1"), v4("127.0.0.1"));
        assert_eq!(inet_aton("2130706433"), v4("127.0.0.1"));
        assert_eq!(inet_aton("0x7f000001"), v4("127.0.0.1"));
        assert_eq!(inet_aton("1.2.65535"), v4("1.2.255.255"));
        assert_eq!(inet_aton("0x"), v4("0.0.0.0"));
        assert_eq!(inet_aton("08"), None);
        assert_eq!(inet_aton("1.2.3.4.5"), None);
        assert_eq!(inet_aton("256.1"), None);
        assert_eq!(inet_aton("1.2.3.256"), None);
        assert_eq!(inet_aton("4294967296"), None);
        assert_eq!(inet_aton("a.1"), None);
        assert_eq!(inet_aton("1..2"), None);
        assert_eq!(numeric("127.1."), v4("127.0.0.1"));
    }
}
