//! Limited-mode TLS interception (`mitm = true`): a `CONNECT` terminated with a leaf from
//! proxyd's CA, every request inside decided again and forwarded over TLS to a test origin
//! that proxyd trusts through its extra trust file.

use std::net::IpAddr;
use std::sync::Arc;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxyd_net::Outcome;
use proxyd_policy::{ListKind, Mode, PatternSet, Policy, Protocol, Reason};
use proxyd_test_support::{Canary, TempDir, TestCa, TlsOrigin, temp_dir};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::harness::{Client, Proxy, TIMEOUT, connect_request, proxy};

/// A TLS origin for `allowed.test` and `127.0.0.1`, signed by a test CA that the proxy trusts.
struct Setup {
    origin: TlsOrigin,
    proxy: Proxy,
    _dir: TempDir,
}

async fn setup(limited: bool) -> anyhow::Result<Setup> {
    setup_with(limited, false).await
}

/// [`setup`] with an origin that speaks HTTP/2 when offered (`h2`) or HTTP/1.1 only.
async fn setup_with(limited: bool, h2: bool) -> anyhow::Result<Setup> {
    let dir = temp_dir("proxyd-http-proxy-mitm")?;
    let ca = TestCa::new()?;
    let names = ["allowed.test", "127.0.0.1"];
    let origin = match h2 {
        true => TlsOrigin::start_h2(&ca, &names).await?,
        false => TlsOrigin::start(&ca, &names).await?,
    };
    let builder = proxy().mitm().trust(ca.write_pem(&dir)?);
    let builder = if limited { builder.limited() } else { builder };
    Ok(Setup { origin, proxy: builder.start().await?, _dir: dir })
}

/// A client that trusts only proxyd's CA, ALPN `alpn`.
fn connector(proxy: &Proxy, alpn: &[&[u8]]) -> anyhow::Result<TlsConnector> {
    let ca = proxy.ca.as_ref().ok_or_else(|| anyhow::anyhow!("no interception ca"))?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Opens a tunnel to `authority` and starts TLS in it with server name `name`.
async fn tls(
    proxy: &Proxy,
    authority: &str,
    name: ServerName<'static>,
    alpn: &[&[u8]],
) -> anyhow::Result<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let mut client = Client::connect(proxy.addr).await?;
    client.write(connect_request(authority)).await?;
    let head = client.head().await?;
    anyhow::ensure!(head.status == 200, "CONNECT {authority}: {head:?}");
    let stream = client.into_stream()?;
    Ok(timeout(TIMEOUT, connector(proxy, alpn)?.connect(name, stream)).await?)
}

/// An HTTP/1.1 client over a TLS tunnel with `allowed.test` as server name.
async fn https_client(proxy: &Proxy, authority: &str) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let name = ServerName::try_from("allowed.test")?;
    let stream = tls(proxy, authority, name, &[b"http/1.1"]).await??;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

struct Answer {
    status: StatusCode,
    x_proxy_error: Option<String>,
    body: String,
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    host: &str,
    body: &'static str,
) -> anyhow::Result<Answer> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let response = timeout(TIMEOUT, sender.send_request(request)).await??;
    let status = response.status();
    let x_proxy_error =
        response.headers().get("x-proxy-error").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = timeout(TIMEOUT, response.into_body().collect()).await??.to_bytes();
    Ok(Answer { status, x_proxy_error, body: String::from_utf8_lossy(&body).into_owned() })
}

#[tokio::test]
async fn reads_pass_and_writes_are_blocked_inside_the_tunnel() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup(true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let mut client = https_client(&proxy, &authority).await?;

    let get = send(&mut client, "GET", "/read?x=1", &authority, "").await?;
    assert_eq!(get.status, 200, "{}", get.body);
    assert_eq!(get.body, "origin GET /read?x=1\n");
    assert_eq!(origin.sni(), ["allowed.test"], "proxyd originates tls with the connect host");
    assert_eq!(origin.requests()[0].header("via"), Some("1.1 proxyd"));

    // The same connection, a write: decided again, refused, never forwarded.
    let post = send(&mut client, "POST", "/write", &authority, "data").await?;
    assert_eq!(post.status, 403, "{}", post.body);
    assert_eq!(post.x_proxy_error.as_deref(), Some("blocked-by-method-policy"));
    let json: serde_json::Value = serde_json::from_str(&post.body)?;
    assert_eq!(json["protocol"], "https");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["reason"], "method_not_allowed");
    assert_eq!(json["mode"], "limited");
    // Side doors of SPEC §6.2 on a read-only method.
    let body = send(&mut client, "GET", "/", &authority, "data").await?;
    assert_eq!(body.status, 403, "a GET with a body: {}", body.body);
    let head = send(&mut client, "HEAD", "/", &authority, "").await?;
    assert_eq!(head.status, 200);
    assert_eq!(origin.hits(), 2, "only the GET and the HEAD reached the origin");

    let method_block = Outcome::Blocked(Reason::MethodNotAllowed);
    assert_eq!(
        proxy.outcomes(),
        [
            (Protocol::HttpConnect, Outcome::Allowed),
            (Protocol::Https, Outcome::Allowed),
            (Protocol::Https, method_block.clone()),
            (Protocol::Https, method_block),
            (Protocol::Https, Outcome::Allowed),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn host_must_equal_the_connect_host() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup(true).await?;
    let port = origin.addr().port();
    let authority = format!("allowed.test:{port}");
    let mut client = https_client(&proxy, &authority).await?;
    for host in ["evil.test", "a.allowed.test", "allowed.test", &format!("127.0.0.1:{port}")] {
        let answer = send(&mut client, "GET", "/", host, "").await?;
        assert_eq!(answer.status, 400, "Host {host}: {}", answer.body);
        assert!(answer.body.contains("host header does not match"), "{}", answer.body);
    }
    let absolute = format!("https://evil.test:{port}/");
    assert_eq!(send(&mut client, "GET", &absolute, &authority, "").await?.status, 400);
    assert_eq!(origin.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn sni_must_match_the_connect_host() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup(true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    // Another name, and none at all (rustls sends no SNI for an address).
    let names = [
        ServerName::try_from("other.test")?,
        ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into()),
    ];
    for name in names {
        let result = tls(&proxy, &authority, name.clone(), &[b"http/1.1"]).await?;
        assert!(result.is_err(), "the handshake with server name {name:?} must fail");
    }
    assert_eq!(origin.hits(), 0);
    // One event per CONNECT, settled when the handshake ends: the mismatch, never an allow.
    let sni_block = (Protocol::HttpConnect, Outcome::Blocked(Reason::SniMismatch));
    assert_eq!(proxy.outcomes(), [sni_block.clone(), sni_block]);
    let event = &proxy.events()[1];
    assert_eq!((event.host.as_str(), event.method.as_deref()), ("allowed.test", Some("CONNECT")));
    Ok(())
}

#[tokio::test]
async fn an_ip_literal_is_intercepted_without_sni() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup(true).await?;
    let authority = format!("127.0.0.1:{}", origin.addr().port());
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let stream = tls(&proxy, &authority, name, &[b"http/1.1"]).await??;
    let (mut client, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let answer = send(&mut client, "GET", "/ip", &authority, "").await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "origin GET /ip\n");
    assert_eq!(origin.sni(), Vec::<String>::new(), "no sni towards an address either");
    Ok(())
}

#[tokio::test]
async fn alpn_prefers_h2_and_offers_http_1_1() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup(true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let name = ServerName::try_from("allowed.test")?;
    for (offered, chosen) in [
        (&[&b"h2"[..]][..], &b"h2"[..]),
        (&[b"http/1.1", b"h2"], b"h2"),
        (&[b"http/1.1"], b"http/1.1"),
    ] {
        let stream = tls(&proxy, &authority, name.clone(), offered).await??;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(chosen), "offered {offered:?}");
    }
    assert!(tls(&proxy, &authority, name, &[b"spdy/3"]).await?.is_err(), "no common protocol");
    Ok(())
}

#[tokio::test]
async fn policy_blocks_still_come_first() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let Setup { proxy, _dir, .. } = setup(true).await?;
    let port = canary.addr().port();
    for (host, header) in
        [("evil.test", "blocked-by-denylist"), ("unlisted.test", "blocked-by-allowlist")]
    {
        let response = proxy.send(connect_request(&format!("{host}:{port}"))).await?;
        assert_eq!(response.status(), 403, "{host}: {response:?}");
        assert_eq!(response.header("x-proxy-error"), Some(header));
    }
    canary.assert_untouched();
    Ok(())
}

#[tokio::test]
async fn a_host_outside_the_ca_scope_is_refused_before_the_tunnel() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup(true).await?;
    // A reload grows the allowlist; the CA was constrained at start-up.
    let allowed = PatternSet::compile(&["allowed.test", "unlisted.test"], ListKind::Allowed)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let policy = Policy { allowed, ..(*proxy.engine.policy()).clone() };
    proxy.engine.set_policy(policy);
    let response =
        proxy.send(connect_request(&format!("unlisted.test:{}", origin.addr().port()))).await?;
    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(response.json()?["reason"], "mitm_ca_scope");
    assert_eq!(proxy.outcomes(), [(Protocol::HttpConnect, Outcome::Failed("mitm_ca_scope"))]);
    Ok(())
}

#[tokio::test]
async fn without_mitm_limited_mode_refuses_connect() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().limited().start().await?;
    let response =
        proxy.send(connect_request(&format!("allowed.test:{}", canary.addr().port()))).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-method-policy"));
    canary.assert_untouched();
    Ok(())
}

#[tokio::test]
async fn full_mode_keeps_plain_tunnels() -> anyhow::Result<()> {
    let test_ca = TestCa::new()?;
    let origin = TlsOrigin::start(&test_ca, &["allowed.test"]).await?;
    let proxy = proxy().mitm().start().await?;
    assert_eq!(proxy.engine.mode(), Mode::Full);
    let authority = format!("allowed.test:{}", origin.addr().port());
    let mut client = Client::connect(proxy.addr).await?;
    client.write(connect_request(&authority)).await?;
    assert_eq!(client.head().await?.status, 200);
    // The origin's own certificate comes through: the client trusts only the test CA.
    let connector = TlsConnector::from(test_ca.client_config()?);
    let name = ServerName::try_from("allowed.test")?;
    let mut tls = timeout(TIMEOUT, connector.connect(name, client.into_stream()?)).await??;
    let raw = format!("GET /plain HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    timeout(TIMEOUT, tokio::io::AsyncWriteExt::write_all(&mut tls, raw.as_bytes())).await??;
    let mut answer = Vec::new();
    let _ = timeout(TIMEOUT, tls.read_to_end(&mut answer)).await?;
    assert!(String::from_utf8_lossy(&answer).ends_with("origin GET /plain\n"));
    assert_eq!(proxy.outcomes(), [(Protocol::HttpConnect, Outcome::Allowed)]);
    Ok(())
}

/// Plaintext sent into an intercepted tunnel reaches nobody, and the attempt is recorded.
#[tokio::test]
async fn plaintext_inside_an_intercepted_tunnel_is_recorded_and_goes_nowhere() -> anyhow::Result<()>
{
    use tokio::io::AsyncWriteExt;
    let Setup { origin, proxy, _dir } = setup(true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let mut client = Client::connect(proxy.addr).await?;
    client.write(connect_request(&authority)).await?;
    let head = client.head().await?;
    anyhow::ensure!(head.status == 200, "CONNECT {authority}: {head:?}");
    let mut stream = client.into_stream()?;
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1\r\n\r\nx")
        .await?;
    let mut rest = Vec::new();
    let _ = timeout(TIMEOUT, stream.read_to_end(&mut rest)).await?;
    assert_eq!(origin.hits(), 0);
    let not_tls = (Protocol::HttpConnect, Outcome::Failed("mitm_not_tls"));
    assert_eq!(proxy.outcomes(), [not_tls]);
    Ok(())
}

type H2Body = BoxBody<Bytes, Infallible>;

/// An HTTP/2 client (ALPN `h2` only) over a TLS tunnel with `allowed.test` as server name.
async fn h2_client(proxy: &Proxy, authority: &str) -> anyhow::Result<http2::SendRequest<H2Body>> {
    let name = ServerName::try_from("allowed.test")?;
    let stream = tls(proxy, authority, name, &[b"h2"]).await??;
    anyhow::ensure!(stream.get_ref().1.alpn_protocol() == Some(b"h2"), "h2 not negotiated");
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// What an HTTP/2 client got back, trailers included.
struct H2Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    x_proxy_error: Option<String>,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl H2Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send_h2(
    sender: &mut http2::SendRequest<H2Body>,
    request: Request<H2Body>,
) -> anyhow::Result<H2Answer> {
    let response = timeout(TIMEOUT, sender.send_request(request)).await??;
    let (status, version) = (response.status(), response.version());
    let headers = response.headers().clone();
    let x_proxy_error =
        headers.get("x-proxy-error").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let collected = timeout(TIMEOUT, response.into_body().collect()).await??;
    let trailers = collected.trailers().cloned();
    Ok(H2Answer { status, version, headers, x_proxy_error, body: collected.to_bytes(), trailers })
}

/// An HTTP/2 request for `uri` (absolute: it sets `:scheme` and `:authority`).
fn h2_request(method: &str, uri: &str, body: H2Body) -> anyhow::Result<Request<H2Body>> {
    Ok(Request::builder().version(Version::HTTP_2).method(method).uri(uri).body(body)?)
}

fn full(body: &'static str) -> H2Body {
    Full::new(Bytes::from_static(body.as_bytes())).boxed()
}

/// A body of unknown length: HTTP/2 announces it only by the missing END_STREAM flag on the
/// request's HEADERS frame, with no `content-length` at all.
struct Unsized(Option<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }
}

/// A body that never ends (and never sends anything).
struct Endless;

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn h2_inside_the_tunnel_reads_pass_and_writes_are_blocked() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup_with(true, true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let mut client = h2_client(&proxy, &authority).await?;
    let url = |path: &str| format!("https://{authority}{path}");

    let get = send_h2(&mut client, h2_request("GET", &url("/read?x=1"), full(""))?).await?;
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(get.version, Version::HTTP_2);
    // An HTTP/2 origin sees the absolute target (`:scheme`, `:authority`, `:path`).
    assert_eq!(get.text(), format!("origin GET {}\n", url("/read?x=1")));
    assert_eq!(get.headers.get("via").map(|v| v.as_bytes()), Some(&b"2 proxyd"[..]));
    let seen = &origin.requests()[0];
    assert_eq!(seen.version, Version::HTTP_2, "proxyd speaks h2 to an origin that offers it");
    assert_eq!(seen.header("via"), Some("2 proxyd"));
    assert_eq!(seen.header("host"), None, "the authority travels in :authority");
    assert_eq!(origin.sni(), ["allowed.test"]);

    // The same connection, a write: decided on its own, refused, never forwarded.
    let post = send_h2(&mut client, h2_request("POST", &url("/write"), full("data"))?).await?;
    assert_eq!(post.status, 403, "{}", post.text());
    assert_eq!(post.x_proxy_error.as_deref(), Some("blocked-by-method-policy"));
    let json: serde_json::Value = serde_json::from_slice(&post.body)?;
    assert_eq!((json["protocol"].as_str(), json["method"].as_str()), (Some("https"), Some("POST")));
    assert_eq!(json["reason"], "method_not_allowed");
    // A GET with a body and no content-length: HTTP/2 frames it, the side door still sees it.
    let body = Unsized(Some(Bytes::from_static(b"data"))).boxed();
    let unsized_get = send_h2(&mut client, h2_request("GET", &url("/"), body)?).await?;
    assert_eq!(unsized_get.status, 403, "a GET with a body: {}", unsized_get.text());
    // An upload still under way when it is refused: the client reads the 403 (the stream is
    // reset with NO_ERROR after it, not cancelled before it).
    let endless = send_h2(&mut client, h2_request("PUT", &url("/up"), Endless.boxed())?).await?;
    assert_eq!(endless.status, 403, "{}", endless.text());
    assert_eq!(endless.x_proxy_error.as_deref(), Some("blocked-by-method-policy"));
    let head = send_h2(&mut client, h2_request("HEAD", &url("/"), full(""))?).await?;
    assert_eq!(head.status, 200);
    assert_eq!(origin.hits(), 2, "only the GET and the HEAD reached the origin");

    let method_block = Outcome::Blocked(Reason::MethodNotAllowed);
    assert_eq!(
        proxy.outcomes(),
        [
            (Protocol::HttpConnect, Outcome::Allowed),
            (Protocol::Https, Outcome::Allowed),
            (Protocol::Https, method_block.clone()),
            (Protocol::Https, method_block.clone()),
            (Protocol::Https, method_block),
            (Protocol::Https, Outcome::Allowed),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn an_h2_client_reaches_an_http_1_1_origin_and_back() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup_with(true, false).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let mut client = h2_client(&proxy, &authority).await?;
    let uri = format!("https://{authority}/mixed");
    let get = send_h2(&mut client, h2_request("GET", &uri, full(""))?).await?;
    assert_eq!((get.status, get.version), (StatusCode::OK, Version::HTTP_2), "{}", get.text());
    assert_eq!(get.text(), "origin GET /mixed\n");
    let seen = &origin.requests()[0];
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header("host"), Some(authority.as_str()), "Host made from :authority");
    assert_eq!(seen.header("via"), Some("2 proxyd"));

    // And an HTTP/1.1 client to an HTTP/2 origin.
    let Setup { origin, proxy, _dir } = setup_with(true, true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let mut client = https_client(&proxy, &authority).await?;
    let get = send(&mut client, "GET", "/other", &authority, "").await?;
    assert_eq!(get.status, 200, "{}", get.body);
    assert_eq!(origin.requests()[0].version, Version::HTTP_2);
    Ok(())
}

#[tokio::test]
async fn h2_authority_must_equal_the_connect_host() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup_with(true, true).await?;
    let port = origin.addr().port();
    let authority = format!("allowed.test:{port}");
    let mut client = h2_client(&proxy, &authority).await?;
    for wrong in ["evil.test", "a.allowed.test", "allowed.test", &format!("127.0.0.1:{port}")] {
        let uri = format!("https://{wrong}/");
        let answer = send_h2(&mut client, h2_request("GET", &uri, full(""))?).await?;
        assert_eq!(answer.status, 400, ":authority {wrong}: {}", answer.text());
        assert!(answer.text().contains(":authority does not match"), "{}", answer.text());
    }
    // `:authority` right, a `Host` naming another host.
    let mut request = h2_request("GET", &format!("https://{authority}/"), full(""))?;
    request.headers_mut().insert("host", HeaderValue::from_static("evil.test"));
    let answer = send_h2(&mut client, request).await?;
    assert_eq!(answer.status, 400, "{}", answer.text());
    // A CONNECT stream inside the tunnel.
    let connect = h2_request("CONNECT", &authority, full(""))?;
    let answer = send_h2(&mut client, connect).await?;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("connect inside an intercepted tunnel"), "{}", answer.text());
    assert_eq!(origin.hits(), 0);
    // The tunnel itself was allowed; nothing inside was decided.
    assert_eq!(proxy.outcomes(), [(Protocol::HttpConnect, Outcome::Allowed)]);
    Ok(())
}

/// A gRPC call (a POST with `te: trailers`, a length-prefixed message and request trailers)
/// through an intercepted tunnel. Limited mode refuses it, like any POST; once the proxy is
/// switched to full mode the tunnel stays intercepted and the call goes through, trailers both
/// ways.
#[tokio::test]
async fn grpc_over_an_intercepted_h2_tunnel_carries_trailers_both_ways() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup_with(true, true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let mut client = h2_client(&proxy, &authority).await?;
    let uri = format!("https://{authority}/echo.Echo/Say");
    // A gRPC message: uncompressed flag, 4-byte big-endian length, 5 bytes of protobuf.
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05\x0a\x03abc");
    let call = |trailer: &'static str| -> anyhow::Result<Request<H2Body>> {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static(trailer));
        let body = Full::new(message.clone()).with_trailers(async move { Some(Ok(trailers)) });
        let mut request = h2_request("POST", &uri, body.boxed())?;
        let headers = request.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        Ok(request)
    };

    let limited = send_h2(&mut client, call("limited")?).await?;
    assert_eq!(limited.status, 403, "limited mode refuses the POST: {}", limited.text());
    assert_eq!(limited.x_proxy_error.as_deref(), Some("blocked-by-method-policy"));
    assert_eq!(origin.hits(), 0);

    proxy.engine.set_mode(Mode::Full);
    let answer = send_h2(&mut client, call("c0ffee")?).await?;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.version, Version::HTTP_2);
    assert_eq!(
        answer.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    assert_eq!(answer.body, message, "the message came back");
    let trailers = answer.trailers.ok_or_else(|| anyhow::anyhow!("no response trailers"))?;
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert_eq!(trailers.get("x-echo-trailers").map(|v| v.as_bytes()), Some(&b"x-checksum"[..]));

    let seen = &origin.requests()[0];
    assert_eq!((seen.method.as_str(), seen.version), ("POST", Version::HTTP_2));
    assert_eq!(seen.header("te"), Some("trailers"), "te: trailers is forwarded");
    assert_eq!(seen.header("content-type"), Some("application/grpc"));
    assert_eq!(seen.body, message);
    assert_eq!(seen.trailer("x-checksum"), Some("c0ffee"), "request trailers reach the origin");
    assert_eq!(
        proxy.outcomes(),
        [
            (Protocol::HttpConnect, Outcome::Allowed),
            (Protocol::Https, Outcome::Blocked(Reason::MethodNotAllowed)),
            (Protocol::Https, Outcome::Allowed),
        ]
    );
    Ok(())
}

/// Issue 16: requests inside an intercepted tunnel are forwarded like `https://` ones, with
/// the same bound on the wait for the answer: an origin that accepts the request and never
/// answers gets `504` after `response_timeout`, and its connection is closed.
#[tokio::test]
async fn an_intercepted_request_to_an_origin_that_never_answers_gets_504() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-http-proxy-mitm-silent")?;
    let ca = TestCa::new()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["allowed.test"])?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let origin = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, closed_tx) = (acceptor.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                // Reads the request and whatever follows, never answers; reports the close.
                let mut buf = [0u8; 4096];
                let read = timeout(3 * TIMEOUT, async {
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                });
                if read.await.is_ok() {
                    let _ = closed_tx.send(());
                }
            });
        }
    });
    let proxy = proxy()
        .limited()
        .mitm()
        .trust(ca.write_pem(&dir)?)
        .response_timeout(std::time::Duration::from_millis(500))
        .start()
        .await?;
    let authority = format!("allowed.test:{port}");
    let mut client = https_client(&proxy, &authority).await?;
    let answer = send(&mut client, "GET", "/silent", &authority, "").await?;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{}", answer.body);
    let json: serde_json::Value = serde_json::from_str(&answer.body)?;
    assert_eq!(json["reason"], "response_timeout", "{json}");
    timeout(TIMEOUT, closed.recv()).await?.expect("the origin reports its close");
    origin.abort();
    Ok(())
}
