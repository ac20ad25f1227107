//! Limited-mode TLS interception (`mitm = true`): a `CONNECT` to an allowed host is answered
//! 200 and terminated here with a leaf from the [`InterceptCa`]; every request inside, HTTP/1.1
//! or HTTP/2, is then decided on its own, as an `https://CONNECT-HOST/...` request, by the same
//! code that forwards absolute-form `https://` requests (`forward.rs`), and goes out over a new
//! TLS connection to the checked address, verified against the usual trust roots.
//!
//! Rules of the tunnel:
//! - the TLS server name must be the `CONNECT` host (RFC 6066 §3); a named host without one, or
//!   any mismatch, closes the connection and is recorded as blocked (`sni_mismatch`). An IP
//!   literal is accepted without a server name, since clients send none for addresses, but not
//!   with a name, which would be a different host;
//! - ALPN offers `h2`, then `http/1.1` (the server's order decides: h2 whenever the client
//!   offers it); an `h2` tunnel is served by hyper's HTTP/2 server (`server::drive_h2`), with
//!   the idle, shutdown and lease handling of HTTP/1.1, and each stream is one request;
//! - each request's `Host` must equal the `CONNECT` host (port included unless 443), else 400;
//!   an absolute-form target must name it too. Over HTTP/2 the `:authority` must (a `Host` may
//!   stand in for it, and must agree when both are sent) and `:scheme` must be `https`;
//! - `CONNECT` inside (in HTTP/2 too; extended `CONNECT` is not advertised, so clients keep
//!   WebSockets on HTTP/1.1) and `x-unix-socket` are 400;
//! - the tunnel counts as one tunnel of the client connection while it is open; it closes when
//!   idle, and on shutdown after in-flight requests finish (or when the drain runs out).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proxyd_net::{Admission, Connections, Failure};
use proxyd_policy::{Host, Protocol, Reason, Target};
use rustls::server::Acceptor;
use tokio::time::timeout;
use tokio_rustls::LazyConfigAcceptor;

use crate::ca::InterceptCa;
use crate::respond::{self, Blocked};
use crate::server::{Handler, Responding, Shared, drive, drive_h2, track_tunnel};
use crate::{Body, forward, headers};

/// The ALPN protocol ID of HTTP/2 over TLS (RFC 9113 §3.2).
const H2: &[u8] = b"h2";

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
    if let Err(refusal) = prepare(shared, &ca, &mut admission).await {
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
                Ok(upgraded) => {
                    let stream: Box<dyn ClientStream> = Box::new(TokioIo::new(upgraded));
                    serve(shared, ca, admission, target, stream, tunnels).await;
                }
                Err(err) => tracing::debug!(error = %err, "connect upgrade failed"),
            }
        },
        span,
    ));
    let mut response = Response::new(respond::empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// What must hold before a tunnel is answered: the CA may sign for the host, and (unless an
/// upstream proxy resolves it, SPEC §7.6) the name resolves to allowed addresses, so a name
/// that only leads to blocked addresses is refused before the tunnel opens.
async fn prepare(
    shared: &Shared,
    ca: &InterceptCa,
    admission: &mut Admission,
) -> Result<(), proxyd_net::Refusal> {
    let target = admission.target().clone();
    if !ca.covers(&target.host) {
        // The allowlist grew after start-up: the CA's name constraints predate the change.
        tracing::warn!(host = %target.host, "the interception ca does not cover this host: restart proxyd");
        return Err(admission.fail(Failure::MitmCaScope));
    }
    if shared.settings.upstream.for_target(true, &target).is_none() {
        admission.resolve().await?;
    }
    Ok(())
}

/// A client stream an intercepted tunnel is served on: an upgraded `CONNECT`, or a SOCKS5
/// connection.
pub(crate) trait ClientStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientStream for S {}

/// Intercepts SOCKS5 `CONNECT`s to port 443 (limited mode, hosts with rules or brokered
/// credentials) with the same TLS termination and per-request decisions as an HTTP `CONNECT`.
pub(crate) struct Socks5Interceptor {
    pub(crate) shared: Arc<Shared>,
    pub(crate) ca: Arc<InterceptCa>,
}

impl proxyd_net::Interceptor for Socks5Interceptor {
    fn prepare<'a>(
        &'a self,
        admission: &'a mut Admission,
    ) -> proxyd_net::BoxFuture<'a, Result<(), proxyd_net::Refusal>> {
        Box::pin(prepare(&self.shared, &self.ca, admission))
    }

    fn serve(
        &self,
        admission: Admission,
        stream: tokio::net::TcpStream,
    ) -> proxyd_net::BoxFuture<'static, ()> {
        let (shared, ca) = (self.shared.clone(), self.ca.clone());
        let target = admission.target().clone();
        Box::pin(async move {
            let stream: Box<dyn ClientStream> = Box::new(stream);
            serve(shared, ca, admission, target, stream, Connections::new()).await;
        })
    }
}

/// Terminates TLS on the tunnel and serves the requests inside it.
async fn serve(
    shared: Arc<Shared>,
    ca: Arc<InterceptCa>,
    mut admission: Admission,
    target: Target,
    stream: Box<dyn ClientStream>,
    tunnels: Connections,
) {
    let handshake_timeout = shared.settings.header_read_timeout;
    let acceptor = LazyConfigAcceptor::new(Acceptor::default(), stream);
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
    let h2 = tls.get_ref().1.alpn_protocol() == Some(H2);
    let target = Arc::new(target);
    let svc_shared = shared.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| -> Responding {
        let (shared, target, tunnels) = (svc_shared.clone(), target.clone(), tunnels.clone());
        Box::pin(async move { Ok(handle(&shared, peer, &target, req, &tunnels).await) })
    });
    match h2 {
        true => drive_h2(&shared, tls, handler, lease.ended()).await,
        false => drive(&shared, tls, service_fn(move |req| handler(req)), lease.ended()).await,
    }
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
    // In HTTP/2 a `CONNECT` stream, extended (RFC 8441 §4) or not, is refused the same way.
    if req.method() == Method::CONNECT {
        return Err("connect inside an intercepted tunnel is not supported");
    }
    if req.headers().contains_key(headers::X_UNIX_SOCKET) {
        return Err("x-unix-socket is not accepted inside an intercepted tunnel");
    }
    let names_target =
        |authority: &str| Target::parse_authority(authority, Some(443)).as_ref() == Ok(target);
    let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or_default());
    let uri = req.uri();
    if req.version() == Version::HTTP_2 {
        // RFC 9113 §8.3.1: `:scheme` and `:authority` (hyper puts both in the URI); a client
        // may send `Host` instead of `:authority`, and one that sends both must make them agree.
        match (uri.authority(), host) {
            (None, None) => return Err("the :authority does not match the connect target"),
            (Some(authority), _) if !names_target(authority.as_str()) => {
                return Err("the :authority does not match the connect target");
            }
            (_, Some(host)) if !names_target(host) => {
                return Err("host header does not match the connect target");
            }
            _ => {}
        }
        if !uri.scheme_str().is_none_or(|scheme| scheme.eq_ignore_ascii_case("https")) {
            return Err("the request target does not match the connect target");
        }
    } else {
        // HTTP/1.1 requires `Host` (RFC 9112 §3.2); here it must name the tunnel's host.
        if !host.is_some_and(names_target) {
            return Err("host header does not match the connect target");
        }
        match (uri.scheme_str(), uri.authority()) {
            (None, None) => {}
            // Absolute-form is legal too (RFC 9112 §3.2.2), for the same host only.
            (Some(scheme), Some(authority))
                if scheme.eq_ignore_ascii_case("https") && names_target(authority.as_str()) => {}
            _ => return Err("the request target does not match the connect target"),
        }
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

    /// Runs `https_uri` on a request of `version` and compares the outcome.
    #[track_caller]
    fn check(
        version: Version,
        connect: &str,
        method: &str,
        uri: &str,
        hdrs: &[(&str, &str)],
        expected: Result<&str, &str>,
    ) {
        let target = Target::parse_authority(connect, None).expect("target");
        let mut builder = Request::builder().version(version).method(method).uri(uri);
        for (name, value) in hdrs {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(()).expect("request");
        let got = https_uri(&target, &req).map(|uri| uri.to_string());
        assert_eq!(
            got.as_deref().map_err(|e| *e),
            expected,
            "{version:?} {connect} {method} {uri} {hdrs:?}"
        );
    }

    #[test]
    fn inner_requests_must_name_the_connect_host() {
        let check = |connect, method, uri, hdrs: &[_], expected| {
            check(Version::HTTP_11, connect, method, uri, hdrs, expected)
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

    #[test]
    fn inner_h2_requests_must_name_the_connect_host_in_their_authority() {
        let check = |connect, method, uri, hdrs: &[_], expected| {
            check(Version::HTTP_2, connect, method, uri, hdrs, expected)
        };
        let ok = Ok;
        check("a.test:443", "GET", "https://a.test/x?y=1", &[], ok("https://a.test:443/x?y=1"));
        check("a.test:443", "GET", "https://A.TEST:443/", &[], ok("https://a.test:443/"));
        check("a.test:8443", "POST", "https://a.test:8443/", &[], ok("https://a.test:8443/"));
        check("[::1]:443", "GET", "https://[::1]/", &[], ok("https://[::1]:443/"));
        // `Host` instead of `:authority`, or both, agreeing.
        check("a.test:443", "GET", "/p", &[("host", "a.test")], ok("https://a.test:443/p"));
        let both = [("host", "a.test:443")];
        check("a.test:443", "GET", "https://a.test/", &both, ok("https://a.test:443/"));
        let bad_authority = Err("the :authority does not match the connect target");
        check("a.test:443", "GET", "https://b.test/", &[], bad_authority);
        check("a.test:443", "GET", "https://b.test/", &[("host", "a.test")], bad_authority);
        check("a.test:8443", "GET", "https://a.test/", &[], bad_authority);
        check("a.test:443", "GET", "https://a.test:8443/", &[], bad_authority);
        check("a.test:443", "GET", "/", &[], bad_authority);
        let bad_host = Err("host header does not match the connect target");
        check("a.test:443", "GET", "https://a.test/", &[("host", "b.test")], bad_host);
        let bad_target = Err("the request target does not match the connect target");
        check("a.test:443", "GET", "http://a.test/", &[], bad_target);
        let only_origin = Err("only origin-form request targets are accepted");
        check("a.test:443", "OPTIONS", "*", &[("host", "a.test")], only_origin);
        // A CONNECT stream (`:authority` only), extended (`:protocol`) or not.
        let connect = Err("connect inside an intercepted tunnel is not supported");
        check("a.test:443", "CONNECT", "a.test:443", &[], connect);
        check("a.test:443", "CONNECT", "https://a.test/chat", &[], connect);
        let unix = Err("x-unix-socket is not accepted inside an intercepted tunnel");
        check("a.test:443", "GET", "https://a.test/", &[("x-unix-socket", "/s")], unix);
    }
}
