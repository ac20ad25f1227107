//! The admin API's protections (SPEC §8.3). The listener is loopback-only by default; these
//! checks stop a web page in the user's browser from driving it: a `Host` check defeats DNS
//! rebinding, an `Origin`/`Sec-Fetch-Site` check defeats cross-site form posts, and an optional
//! bearer token covers everything but `/health`.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Method, header};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Host,
    CrossSite,
    Token,
}

impl Refusal {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::Host => "host header is not a loopback name or this listener's address",
            Refusal::CrossSite => "cross-site requests are refused",
            Refusal::Token => "missing or wrong bearer token",
        }
    }
}

/// Checks one request. `own` is the listener's bound address.
pub(crate) fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    own: SocketAddr,
    token: Option<&str>,
) -> Result<(), Refusal> {
    // Exactly one Host header, and every value of the cross-site headers is checked: a
    // second header must not hide behind the first.
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next().and_then(|h| h.to_str().ok()).filter(|_| hosts.next().is_none());
    if !host.is_some_and(|h| host_is_allowed(h, own)) {
        return Err(Refusal::Host);
    }
    if method != Method::GET && method != Method::HEAD {
        let cross_site = headers
            .get_all("sec-fetch-site")
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        let foreign_origin = headers
            .get_all(header::ORIGIN)
            .iter()
            .any(|o| !o.to_str().is_ok_and(origin_is_loopback));
        if cross_site || foreign_origin {
            return Err(Refusal::CrossSite);
        }
    }
    if let Some(token) = token
        && path != "/health"
        && !bearer_matches(headers, token)
    {
        return Err(Refusal::Token);
    }
    Ok(())
}

/// A loopback name or literal, or the listener's own address, with or without a port.
fn host_is_allowed(host: &str, own: SocketAddr) -> bool {
    let Some((name, port)) = split_host_port(host) else { return false };
    if port.is_some_and(|p| p != own.port()) {
        return false;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if is_localhost(&name) {
        return true;
    }
    match name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback() || ip == own.ip(),
        Err(_) => false,
    }
}

/// `localhost` or a name under it (RFC 6761 §6.3), with no empty label.
fn is_localhost(name: &str) -> bool {
    name == "localhost"
        || name
            .strip_suffix(".localhost")
            .is_some_and(|head| !head.is_empty() && head.split('.').all(|l| !l.is_empty()))
}

/// Digits only: `u16::from_str` would also take `+8080`.
fn port_number(port: &str) -> Option<u16> {
    port.bytes().all(|b| b.is_ascii_digit()).then(|| port.parse().ok()).flatten()
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(input: &str) -> Option<(&str, Option<u16>)> {
    if input.starts_with('[') {
        let end = input.find(']')?;
        let (host, rest) = input.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            rest => Some((host, Some(port_number(rest.strip_prefix(':')?)?))),
        };
    }
    match input.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port_number(port)?))),
        Some(_) => None,
        None => Some((input, None)),
    }
}

/// `http(s)://` plus a loopback host, any port.
fn origin_is_loopback(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let Some((name, _)) = split_host_port(rest) else { return false };
    let name = name.to_ascii_lowercase();
    is_localhost(&name)
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// `Authorization: Bearer TOKEN`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return false };
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let value = value.as_bytes();
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = &value[7..];
    let expected = token.as_bytes();
    given.len() == expected.len()
        && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const OWN: &str = "127.0.0.1:8080";

    #[track_caller]
    fn check_req(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        token: Option<&str>,
        expected: Result<(), Refusal>,
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        assert_eq!(
            check(&method, path, &map, OWN.parse().unwrap(), token),
            expected,
            "{method} {path} {headers:?}"
        );
    }

    #[test]
    fn host_header() {
        check_req("GET", "/health", &[("host", "127.0.0.1:8080")], None, Ok(()));
        check_req("GET", "/health", &[("host", "localhost:8080")], None, Ok(()));
        check_req("GET", "/health", &[("host", "LOCALHOST")], None, Ok(()));
        check_req("GET", "/health", &[("host", "[::1]:8080")], None, Ok(()));
        check_req("GET", "/health", &[("host", "127.0.0.1")], None, Ok(()));
        check_req("GET", "/health", &[("host", "evil.com")], None, Err(Refusal::Host));
        check_req("GET", "/health", &[("host", "evil.com:8080")], None, Err(Refusal::Host));
        check_req(
            "GET",
            "/health",
            &[("host", "127.0.0.1.evil.com:8080")],
            None,
            Err(Refusal::Host),
        );
        check_req("GET", "/health", &[("host", "localhost.evil.com")], None, Err(Refusal::Host));
        check_req("GET", "/health", &[("host", "127.0.0.1:9999")], None, Err(Refusal::Host));
        check_req("GET", "/health", &[], None, Err(Refusal::Host));
        check_req("GET", "/health", &[("host", "localhost:+8080")], None, Err(Refusal::Host));
        check_req("GET", "/health", &[("host", "localhost...")], None, Err(Refusal::Host));
        check_req("GET", "/health", &[("host", ".localhost")], None, Err(Refusal::Host));
        check_req("GET", "/health", &[("host", "a..localhost")], None, Err(Refusal::Host));
        check_req("GET", "/health", &[("host", "localhost.")], None, Ok(()));
        check_req("GET", "/health", &[("host", "api.localhost:8080")], None, Ok(()));
        check_req(
            "GET",
            "/health",
            &[("host", "127.0.0.1:8080"), ("host", "evil.com")],
            None,
            Err(Refusal::Host),
        );
    }

    #[test]
    fn cross_site_posts() {
        let host = ("host", "127.0.0.1:8080");
        check_req("POST", "/mode", &[host], None, Ok(()));
        check_req("POST", "/mode", &[host, ("origin", "http://localhost:3000")], None, Ok(()));
        check_req("POST", "/mode", &[host, ("origin", "http://127.0.0.1")], None, Ok(()));
        check_req(
            "POST",
            "/mode",
            &[host, ("origin", "https://evil.com")],
            None,
            Err(Refusal::CrossSite),
        );
        check_req("POST", "/mode", &[host, ("origin", "null")], None, Err(Refusal::CrossSite));
        check_req(
            "POST",
            "/mode",
            &[host, ("origin", "http://localhost.evil.com")],
            None,
            Err(Refusal::CrossSite),
        );
        check_req(
            "POST",
            "/mode",
            &[host, ("sec-fetch-site", "cross-site")],
            None,
            Err(Refusal::CrossSite),
        );
        check_req("POST", "/mode", &[host, ("sec-fetch-site", "same-origin")], None, Ok(()));
        check_req("GET", "/blocked", &[host, ("origin", "https://evil.com")], None, Ok(()));
        check_req(
            "POST",
            "/mode",
            &[host, ("origin", "http://localhost"), ("origin", "https://evil.com")],
            None,
            Err(Refusal::CrossSite),
        );
        check_req(
            "POST",
            "/mode",
            &[host, ("sec-fetch-site", "same-origin"), ("sec-fetch-site", "cross-site")],
            None,
            Err(Refusal::CrossSite),
        );
    }

    #[test]
    fn bearer_token() {
        let host = ("host", "127.0.0.1:8080");
        check_req("GET", "/health", &[host], Some("s3cret"), Ok(()));
        check_req("GET", "/config", &[host], Some("s3cret"), Err(Refusal::Token));
        check_req(
            "GET",
            "/config",
            &[host, ("authorization", "Bearer s3cret")],
            Some("s3cret"),
            Ok(()),
        );
        check_req(
            "GET",
            "/config",
            &[host, ("authorization", "Bearer s3cre")],
            Some("s3cret"),
            Err(Refusal::Token),
        );
        check_req(
            "GET",
            "/config",
            &[host, ("authorization", "Basic s3cret")],
            Some("s3cret"),
            Err(Refusal::Token),
        );
        check_req(
            "GET",
            "/config",
            &[host, ("authorization", "bearer s3cret")],
            Some("s3cret"),
            Ok(()),
        );
        check_req(
            "GET",
            "/config",
            &[host, ("authorization", "Bearers3cret")],
            Some("s3cret"),
            Err(Refusal::Token),
        );
        check_req(
            "POST",
            "/mode",
            &[host, ("authorization", "Bearer s3cret")],
            Some("s3cret"),
            Ok(()),
        );
    }
}
