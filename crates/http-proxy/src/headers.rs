//! Header rewriting for forwarded messages.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use proxyd_policy::SideDoors;

/// The header that routes a request to a Unix socket (SPEC §7.7); never forwarded.
pub(crate) const X_UNIX_SOCKET: &str = "x-unix-socket";

/// What proxyd adds to `Via` (RFC 9110 §7.6.3).
const VIA: &str = "1.1 proxyd";

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, and
/// the fixed list. With `keep_upgrade`, `Upgrade` and a `Connection: upgrade` survive, because
/// an upgrade is being relayed end to end (SPEC §7.4).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static(X_UNIX_SOCKET),
    ] {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Appends proxyd to `Via`.
pub(crate) fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA));
}

/// The limited-mode side doors of a request (SPEC §6.2).
pub(crate) fn side_doors(headers: &HeaderMap) -> SideDoors {
    SideDoors::from_headers(headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes())))
}

/// Whether the request asks for a protocol upgrade (RFC 9110 §7.8).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap())
            })
            .collect()
    }

    #[track_caller]
    fn check(input: &[(&str, &str)], keep_upgrade: bool, expected: &[&str]) {
        let mut headers = map(input);
        remove_hop_by_hop(&mut headers, keep_upgrade);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, expected, "{input:?}");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        check(&[("accept", "*/*"), ("connection", "close")], false, &["accept"]);
        check(&[("connection", "x-secret, keep-alive"), ("x-secret", "1")], false, &[]);
        check(&[("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive")], false, &[]);
        check(&[("proxy-authorization", "Basic eA=="), ("te", "trailers")], false, &[]);
        check(&[("trailer", "x"), ("transfer-encoding", "chunked")], false, &[]);
        check(&[("x-unix-socket", "/tmp/s"), ("host", "a")], false, &["host"]);
        check(&[("upgrade", "websocket"), ("connection", "upgrade")], false, &[]);
        check(
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            true,
            &["connection", "upgrade"],
        );
        check(
            &[("connection", "upgrade, x-a"), ("x-a", "1"), ("upgrade", "h2c")],
            true,
            &["connection", "upgrade"],
        );
    }
}
