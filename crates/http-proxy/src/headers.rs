//! Header rewriting for forwarded messages.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use proxyd_policy::SideDoors;

/// The header that routes a request to a Unix socket (SPEC §7.7); never forwarded.
pub(crate) const X_UNIX_SOCKET: &str = "x-unix-socket";

/// What proxyd adds to `Via` (RFC 9110 §7.6.3): the protocol version it received the message
/// in, and its name.
const VIA: &str = "1.1 proxyd";
const VIA_2: &str = "2 proxyd";

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, and
/// the fixed list. With `keep_upgrade`, `Upgrade` and a `Connection: upgrade` survive, because
/// an upgrade is being relayed end to end (SPEC §7.4). This leaves nothing HTTP/2 forbids
/// (RFC 9113 §8.2.2); for requests see [`remove_request_hop_by_hop`], which keeps
/// `TE: trailers`. Trailer fields themselves are body frames and pass through (`Leased`).
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

/// [`remove_hop_by_hop`] for a request going out as `version`, except that a `TE` that accepts
/// trailers is sent on as `TE: trailers`, the one `TE` HTTP/2 allows (RFC 9113 §8.2.2) and the
/// one gRPC needs; every other transfer coding the client named is for its own hop only. Over
/// HTTP/1.1 `TE` is announced in `Connection` as RFC 9110 §10.1.4 asks, and hyper sends
/// trailers on a response only when the request had it.
pub(crate) fn remove_request_hop_by_hop(
    headers: &mut HeaderMap,
    keep_upgrade: bool,
    version: Version,
) {
    let trailers = accepts_trailers(headers);
    remove_hop_by_hop(headers, keep_upgrade);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if version != Version::HTTP_2 {
            headers.append(header::CONNECTION, HeaderValue::from_static("te"));
        }
    }
}

/// Whether `TE` lists `trailers` (RFC 9110 §10.1.4).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            coding.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("trailers")
        })
}

/// Appends proxyd to `Via`, for a message received as `received`.
pub(crate) fn add_via(headers: &mut HeaderMap, received: Version) {
    let via = match received {
        Version::HTTP_2 => VIA_2,
        _ => VIA,
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
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

    #[track_caller]
    fn check_request(input: &[(&str, &str)], version: Version, expected: &[(&str, &str)]) {
        let mut headers = map(input);
        remove_request_hop_by_hop(&mut headers, false, version);
        let mut got: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap_or_default())).collect();
        got.sort_unstable();
        assert_eq!(got, expected, "{input:?} {version:?}");
    }

    #[test]
    fn te_trailers_is_the_only_te_forwarded() {
        let h2 = Version::HTTP_2;
        let h1 = Version::HTTP_11;
        check_request(&[("te", "trailers")], h2, &[("te", "trailers")]);
        check_request(&[("te", "gzip, Trailers;q=0.5")], h2, &[("te", "trailers")]);
        check_request(&[("te", "gzip"), ("te", "trailers")], h2, &[("te", "trailers")]);
        check_request(&[("te", "gzip, deflate")], h2, &[]);
        check_request(&[("te", "trailersx")], h2, &[]);
        check_request(&[("connection", "te"), ("te", "trailers")], h2, &[("te", "trailers")]);
        check_request(&[("te", "trailers")], h1, &[("connection", "te"), ("te", "trailers")]);
        check_request(&[("te", "gzip")], h1, &[]);
        check_request(
            &[("content-type", "application/grpc"), ("te", "trailers"), ("keep-alive", "1")],
            h2,
            &[("content-type", "application/grpc"), ("te", "trailers")],
        );
    }
}
