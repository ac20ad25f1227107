//! Listener addresses: `proxy_url`, `admin_url` and `socks_url` (SPEC §2.2, §2.3).
//!
//! A listener address is a socket address to bind, written like a URL so Codex's config files
//! work unchanged: `http://127.0.0.1:3128`, `socks5h://[::1]:8081`, `127.0.0.1:0`. Names are
//! never resolved here: the host must be an IP literal or `localhost`, so what is written is
//! exactly what is bound.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Parses a listener address. Any scheme is accepted and ignored; the port is required and
/// may be `0` (the OS picks one); a path other than `/` is refused.
pub(crate) fn parse(input: &str) -> Result<SocketAddr, String> {
    if input.is_empty() {
        return Err("empty address".into());
    }
    let rest = match input.split_once("://") {
        Some((scheme, rest)) => {
            let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !valid {
                return Err(format!("invalid scheme {scheme:?}"));
            }
            rest
        }
        None => input,
    };
    if rest.contains(['?', '#']) {
        return Err("a listener address has no query or fragment".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err(format!("a listener address has no path (found {path:?})"));
    }
    if authority.contains('@') {
        return Err("userinfo is not allowed in a listener address".into());
    }
    if authority.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("whitespace is not allowed in a listener address".into());
    }
    let (ip, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err("missing `]` after an ipv6 address".into());
            };
            let ip =
                host.parse::<Ipv6Addr>().map_err(|_| format!("invalid ipv6 address {host:?}"))?;
            let Some(port) = after.strip_prefix(':') else {
                return Err(missing_port(after));
            };
            (IpAddr::V6(ip), port)
        }
        None => {
            let Some((host, port)) = authority.rsplit_once(':') else {
                return Err(missing_port(""));
            };
            if host.contains(':') {
                return Err("an ipv6 address needs brackets, as in [::1]:3128".into());
            }
            (host_ip(host)?, port)
        }
    };
    Ok(SocketAddr::new(ip, parse_port(port)?))
}

fn missing_port(after: &str) -> String {
    match after.is_empty() {
        true => "missing port (write host:port; port 0 lets the os pick)".into(),
        false => format!("unexpected {after:?} after the address"),
    }
}

fn host_ip(host: &str) -> Result<IpAddr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    if host.is_empty() {
        return Err("missing host".into());
    }
    // `Ipv4Addr::from_str` accepts only canonical dotted-decimal, so `127.1` and `0x7f.0.0.1`
    // are refused rather than guessed at.
    host.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| {
        format!("host {host:?} is not an ip address or localhost (listener names are not resolved)")
    })
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {port:?}"));
    }
    // Leading zeros are harmless; only the value matters. Anything too long for u32 is out of
    // range as well.
    match port.parse::<u32>().ok().and_then(|p| u16::try_from(p).ok()) {
        Some(port) => Ok(port),
        None => Err(format!("port {port} is out of range 0-65535")),
    }
}

/// Why a listener may have to stay on loopback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clamp {
    /// The `dangerously_allow_non_loopback_*` flag that lets this listener leave loopback.
    pub(crate) flag: &'static str,
    pub(crate) flag_set: bool,
    /// `allow_unix_sockets` is non-empty: every listener stays on loopback, flags or not.
    pub(crate) unix_sockets: bool,
}

/// Returns the address to bind: `addr` itself when it is loopback or allowed to leave it,
/// otherwise the loopback address of the same family and port, with a warning saying why.
pub(crate) fn clamp(key: &str, addr: SocketAddr, clamp: Clamp) -> (SocketAddr, Option<String>) {
    if addr.ip().is_loopback() || (clamp.flag_set && !clamp.unix_sockets) {
        return (addr, None);
    }
    let loopback = match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let clamped = SocketAddr::new(loopback, addr.port());
    let why = match clamp.unix_sockets {
        // A client that can reach a non-loopback listener could ask for a local unix socket
        // (SPEC §7.7), which is only safe for programs on this machine.
        true => "because allow_unix_sockets is set, every listener stays on loopback".to_owned(),
        false => format!("set network.{} = true to bind it", clamp.flag),
    };
    let warning = format!(
        "network.{key} {addr} is not a loopback address: bound to {clamped} instead ({why})"
    );
    (clamped, Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        let got = parse(input).map(|a| a.to_string());
        let expected = expected.map(str::to_owned).map_err(str::to_owned);
        match (&got, &expected) {
            (Err(got), Err(want)) if got.contains(want.as_str()) => {}
            _ => assert_eq!(got, expected, "input {input:?}"),
        }
    }

    #[test]
    fn parses_listener_addresses() {
        check("127.0.0.1:3128", Ok("127.0.0.1:3128"));
        check("http://127.0.0.1:3128", Ok("127.0.0.1:3128"));
        check("http://127.0.0.1:3128/", Ok("127.0.0.1:3128"));
        check("socks5h://127.0.0.1:8081", Ok("127.0.0.1:8081"));
        check("socks5://0.0.0.0:1080", Ok("0.0.0.0:1080"));
        check("[::1]:8080", Ok("[::1]:8080"));
        check("http://[::]:8080", Ok("[::]:8080"));
        check("localhost:3128", Ok("127.0.0.1:3128"));
        check("http://LocalHost:0", Ok("127.0.0.1:0"));
        check("127.0.0.1:0", Ok("127.0.0.1:0"));
        check("127.0.0.1:65535", Ok("127.0.0.1:65535"));
        check("127.0.0.1:03128", Ok("127.0.0.1:3128"));
    }

    #[test]
    fn refuses_bad_listener_addresses() {
        check("", Err("empty address"));
        check("127.0.0.1:70000", Err("port 70000 is out of range 0-65535"));
        check("127.0.0.1:99999999999999", Err("out of range"));
        check("127.0.0.1:+80", Err("invalid port"));
        check("127.0.0.1:", Err("invalid port"));
        check("127.0.0.1", Err("missing port"));
        check("http://127.0.0.1", Err("missing port"));
        check("example.com:3128", Err("host \"example.com\" is not an ip address or localhost"));
        check("localhost.:3128", Err("is not an ip address"));
        check("127.1:3128", Err("is not an ip address"));
        check("0x7f.0.0.1:3128", Err("is not an ip address"));
        check("::1:8080", Err("needs brackets"));
        check("[::1]", Err("missing port"));
        check("[::1]x:80", Err("unexpected \"x:80\""));
        check("[fe80::1%eth0]:80", Err("invalid ipv6 address"));
        check("[::1:80", Err("missing `]`"));
        check("[127.0.0.1]:80", Err("invalid ipv6 address"));
        check("http://127.0.0.1:3128/proxy", Err("no path"));
        check("http://127.0.0.1:3128?x", Err("no query"));
        check("http://user@127.0.0.1:3128", Err("userinfo"));
        check("1http://127.0.0.1:3128", Err("invalid scheme"));
        check("://127.0.0.1:3128", Err("invalid scheme"));
        check("127.0.0.1 :3128", Err("whitespace"));
        check(":3128", Err("missing host"));
    }

    fn clamp_check(addr: &str, flag_set: bool, unix_sockets: bool, expected: &str, warns: bool) {
        let addr: SocketAddr = addr.parse().unwrap();
        let rule = Clamp { flag: "dangerously_allow_non_loopback_proxy", flag_set, unix_sockets };
        let (got, warning) = clamp("proxy_url", addr, rule);
        assert_eq!(got.to_string(), expected, "{addr} flag={flag_set} unix={unix_sockets}");
        assert_eq!(warning.is_some(), warns, "{addr} flag={flag_set} unix={unix_sockets}");
    }

    #[test]
    fn clamps_non_loopback_binds() {
        clamp_check("127.0.0.1:3128", false, false, "127.0.0.1:3128", false);
        clamp_check("127.0.0.2:3128", false, true, "127.0.0.2:3128", false);
        clamp_check("[::1]:3128", false, true, "[::1]:3128", false);
        clamp_check("0.0.0.0:3128", false, false, "127.0.0.1:3128", true);
        clamp_check("192.168.1.5:0", false, false, "127.0.0.1:0", true);
        clamp_check("[::]:3128", false, false, "[::1]:3128", true);
        clamp_check("[::ffff:127.0.0.1]:3128", false, false, "[::1]:3128", true);
        clamp_check("0.0.0.0:3128", true, false, "0.0.0.0:3128", false);
        clamp_check("0.0.0.0:3128", true, true, "127.0.0.1:3128", true);
    }
}
