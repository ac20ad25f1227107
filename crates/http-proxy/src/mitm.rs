//! Limited-mode TLS interception (`mitm = true`): a `CONNECT` to an allowed host is answered
//! 200 and terminated here with a leaf from the [`InterceptCa`]; every HTTP/1.1 request inside
//! is then decided on its own, as an `https://CONNECT-HOST/...` request, by the same code that
//! forwards absolute-form `https://` requests (`forward.rs`), and goes out over a new TLS
//! connection to the checked address, verified against the usual trust roots.
//!
//! Rules of the tunnel:
//! - the TLS server name must be the `CONNECT` host (RFC 6066 §3); a named host without one, or
//!   any mismatch, closes the connection and is recorded as blocked (`sni_mismatch`). An IP
//!   literal is accepted without a server name, since clients send none for addresses, but not
//!   with a name, which would be a different host;
//! - ALPN offers `http/1.1` only: HTTP/2 inside is not implemented;
//! - each request's `Host` must equal the `CONNECT` host (port included unless 443), else 400;
//!   an absolute-form target must name it too; `CONNECT` inside and `x-unix-socket` are 400;
//! - the tunnel counts as one tunnel of the client connection while it is open; it closes when
//!   idle, and on shutdown after in-flight requests finish (or when the drain runs out).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use proxyd_net::{Admission, Connections, Failure};
use proxyd_policy::{Host, Protocol, Reason, Target};
use rustls::server::Acceptor;
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;

use crate::ca::InterceptCa;
use crate::respond::{self, Blocked};
use crate::server::{Shared, drive, track_tunnel};
use crate::{Body, forward, headers};

/// The rest of a `CONNECT` admitted for interception: check that the CA may sign for the
/// host and that the name resolves to allowed addresses, then answer 200 and serve the
/// tunnel. As for a plain tunnel, nothing is answered 200 that is already known to fail. The
/// attempt is settled (one event) when the client's TLS handshake ends: allowed, or the
/// failure that ended it.
pub(crate) async fn open(
    shared: &Arc<Shared>,
    ca: Arc<InterceptCa>,
    mut admission: Admission,
    mut req: Request<Incoming>,
    target: Target,
    tunnels: &Connections,
) -> Response<Body> {
    let cx = Blocked {
        target: &target,
        protocol: Protocol::HttpConnect.as_str(),
        method: "CONNECT",
        mode: admission.mode(),
    };
    if !ca.covers(&target.host) {
        // The allowlist grew after start-up: the CA's name constraints predate the change.
        tracing::warn!(host = %target.host, "the interception ca does not cover this host: restart proxyd");
        return respond::refusal(&admission.fail(Failure::MitmCaScope), &cx);
    }
    // Through an upstream proxy the name is resolved there (SPEC §7.6); otherwise resolve and
    // check it now, so a name that only leads to blocked addresses is refused before the 200.
    if shared.settings.upstream.for_target(true, &target).is_none()
        && let Err(refusal) = admission.resolve().await
    {
        return respond::refusal(&refusal, &cx);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let guard = track_tunnel(shared, tunnels);
    let (shared, tunnels) = (shared.clone(), tunnels.clone());
    let peer = admission.attempt().client;
    let span = tracing::debug_span!("mitm", client = ?peer, target = %target);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _guard = guard;
            match on_upgrade.await {
                Ok(upgraded) => serve(shared, ca, admission, target, upgraded, tunnels).await,
                Err(err) => tracing::debug!(error = %err, "connect upgrade failed"),
            }
        },
        span,
    ));
    let mut response = Response::new(respond::empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// Terminates TLS on the tunnel and serves the requests inside it.
async fn serve(
    shared: Arc<Shared>,
    ca: Arc<InterceptCa>,
    mut admission: Admission,
    target: Target,
    upgraded: Upgraded,
    tunnels: Connections,
) {
    let handshake_timeout = shared.settings.header_read_timeout;
    let acceptor = LazyConfigAcceptor::new(Acceptor::default(), TokioIo::new(upgraded));
    let start = match timeout(handshake_timeout, acceptor).await {
        Ok(Ok(start)) => start,
        // Not TLS (or not in time): nothing reaches any origin, but the attempt is recorded,
        // since a client sending plaintext into an intercepted tunnel is worth seeing.
        Ok(Err(err)) => {
            tracing::info!(error = %err, "not a tls client hello inside an intercepted tunnel");
            let _ = admission.fail(Failure::MitmNotTls);
            return;
        }
        Err(_) => {
            tracing::debug!("client hello timed out");
            let _ = admission.fail(Failure::MitmHelloTimeout);
            return;
        }
    };
    let sni = start.client_hello().server_name().map(str::to_owned);
    if !sni_matches(&target.host, sni.as_deref()) {
        tracing::info!(
            sni = sni.as_deref().unwrap_or("-"),
            "tls server name does not match the connect host"
        );
        let _ = admission.block(Reason::SniMismatch);
        return;
    }
    let config = match ca.server_config(&target.host) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(error = %err, "signing an interception certificate failed");
            let _ = admission.fail(Failure::MitmLeafFailed);
            return;
        }
    };
    let tls = match timeout(handshake_timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            // Most often the client does not trust proxyd's CA.
            tracing::info!(error = %err, "tls handshake with the client failed");
            let _ = admission.fail(Failure::MitmHandshakeFailed);
            return;
        }
        Err(_) => {
            tracing::debug!("tls handshake with the client timed out");
            let _ = admission.fail(Failure::MitmHandshakeTimeout);
            return;
        }
    };
    let Some(peer) = admission.attempt().client else { return };
    // The tunnel lives under its lease: a change that refuses the host (a reload that denies
    // it, a switch that disables the proxy) closes it; each request inside has its own.
    let Ok(lease) = admission.admit() else { return };
    let target = Arc::new(target);
    let svc_shared = shared.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let (shared, target, tunnels) = (svc_shared.clone(), target.clone(), tunnels.clone());
        async move { Ok::<_, Infallible>(handle(&shared, peer, &target, req, &tunnels).await) }
    });
    drive(&shared, tls, service, lease.ended()).await;
}

/// The TLS server name rule of the tunnel (see the module docs). Names are compared in
/// canonical form (case, trailing dot, IDNA).
fn sni_matches(connect_host: &Host, sni: Option<&str>) -> bool {
    match (connect_host, sni) {
        (Host::Name(_), Some(sni)) => Host::parse(sni).is_ok_and(|sni| &sni == connect_host),
        (Host::Name(_), None) => false,
        (Host::Ip(_), None) => true,
        (Host::Ip(_), Some(_)) => false,
    }
}

/// One request inside the tunnel: checked against the `CONNECT` host, then decided and
/// forwarded exactly like an absolute-form `https://` request.
async fn handle(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    target: &Target,
    mut req: Request<Incoming>,
    tunnels: &Connections,
) -> Response<Body> {
    match https_uri(target, &req) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(message) => return respond::bad_request(message),
    }
    forward::handle(shared, peer, req, tunnels).await
}

/// The absolute `https://` form of a request inside the tunnel, or why it is refused.
fn https_uri<B>(target: &Target, req: &Request<B>) -> Result<Uri, &'static str> {
    if req.method() == Method::CONNECT {
        return Err("connect inside an intercepted tunnel is not supported");
    }
    if req.headers().contains_key(headers::X_UNIX_SOCKET) {
        return Err("x-unix-socket is not accepted inside an intercepted tunnel");
    }
    // HTTP/1.1 requires `Host` (RFC 9112 §3.2); here it must name the tunnel's host.
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let host = host.and_then(|h| Target::parse_authority(h, Some(443)).ok());
    if host.as_ref() != Some(target) {
        return Err("host header does not match the connect target");
    }
    let uri = req.uri();
    match (uri.scheme_str(), uri.authority()) {
        (None, None) => {}
        // Absolute-form is legal too (RFC 9112 §3.2.2), for the same host only.
        (Some(scheme), Some(authority))
            if scheme.eq_ignore_ascii_case("https")
                && Target::parse_authority(authority.as_str(), Some(443)).as_ref()
                    == Ok(target) => {}
        _ => return Err("the request target does not match the connect target"),
    }
    let path = uri.path_and_query().map(|p| p.as_str()).filter(|p| p.starts_with('/'));
    let path = path.ok_or("only origin-form request targets are accepted")?;
    Uri::try_from(format!("https://{target}{path}")).map_err(|_| "invalid request target")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_must_name_the_connect_host() {
        let check = |connect: &str, sni: Option<&str>, expected: bool| {
            let host = Host::parse(connect).expect("host");
            assert_eq!(sni_matches(&host, sni), expected, "{connect} {sni:?}");
        };
        check("example.com", Some("example.com"), true);
        check("example.com", Some("EXAMPLE.com."), true);
        check("example.com", Some("www.example.com"), false);
        check("example.com", Some("example.org"), false);
        check("example.com", None, false);
        check("xn--bcher-kva.example", Some("xn--bcher-kva.example"), true);
        check("127.0.0.1", None, true);
        check("[::1]", None, true);
        check("127.0.0.1", Some("localhost"), false);
        check("localhost", None, false);
        check("localhost", Some("localhost"), true);
    }

    #[test]
    fn inner_requests_must_name_the_connect_host() {
        let check = |connect: &str,
                     method: &str,
                     uri: &str,
                     hdrs: &[(&str, &str)],
                     expected: Result<&str, &str>| {
            let target = Target::parse_authority(connect, None).expect("target");
            let mut builder = Request::builder().method(method).uri(uri);
            for (name, value) in hdrs {
                builder = builder.header(*name, *value);
            }
            let req = builder.body(()).expect("request");
            let got = https_uri(&target, &req).map(|uri| uri.to_string());
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                expected,
                "{connect} {method} {uri} {hdrs:?}"
            );
        };
        let host = |h| [("host", h)];
        let ok = Ok;
        check("a.test:443", "GET", "/x?y=1", &host("a.test"), ok("https://a.test:443/x?y=1"));
        check("a.test:443", "GET", "/", &host("A.TEST:443"), ok("https://a.test:443/"));
        check("a.test:8443", "POST", "/", &host("a.test:8443"), ok("https://a.test:8443/"));
        check("[::1]:443", "GET", "/", &host("[::1]"), ok("https://[::1]:443/"));
        check("a.test:443", "GET", "https://a.test/p", &host("a.test"), ok("https://a.test:443/p"));
        let bad_host = Err("host header does not match the connect target");
        check("a.test:443", "GET", "/", &host("b.test"), bad_host);
        check("a.test:443", "GET", "/", &[], bad_host);
        check("a.test:8443", "GET", "/", &host("a.test"), bad_host);
        check("a.test:443", "GET", "/", &host("a.test:8443"), bad_host);
        let bad_target = Err("the request target does not match the connect target");
        check("a.test:443", "GET", "https://b.test/", &host("a.test"), bad_target);
        check("a.test:443", "GET", "http://a.test/", &host("a.test"), bad_target);
        let only_origin = Err("only origin-form request targets are accepted");
        check("a.test:443", "OPTIONS", "*", &host("a.test"), only_origin);
        let connect = Err("connect inside an intercepted tunnel is not supported");
        check("a.test:443", "CONNECT", "a.test:443", &host("a.test"), connect);
        let unix = Err("x-unix-socket is not accepted inside an intercepted tunnel");
        check("a.test:443", "GET", "/", &[("host", "a.test"), ("x-unix-socket", "/s")], unix);
    }
}
