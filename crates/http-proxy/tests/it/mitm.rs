//! Limited-mode TLS interception (`mitm = true`): a `CONNECT` terminated with a leaf from
//! proxyd's CA, every request inside decided again and forwarded over TLS to a test origin
//! that proxyd trusts through its extra trust file.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
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
    let dir = temp_dir("proxyd-http-proxy-mitm")?;
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, &["allowed.test", "127.0.0.1"]).await?;
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
async fn only_http_1_1_is_offered() -> anyhow::Result<()> {
    let Setup { origin, proxy, _dir } = setup(true).await?;
    let authority = format!("allowed.test:{}", origin.addr().port());
    let name = ServerName::try_from("allowed.test")?;
    assert!(tls(&proxy, &authority, name.clone(), &[b"h2"]).await?.is_err(), "h2 only");
    let stream = tls(&proxy, &authority, name, &[b"h2", b"http/1.1"]).await??;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
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
