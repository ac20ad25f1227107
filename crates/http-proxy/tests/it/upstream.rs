//! Chaining to an upstream proxy from proxyd's own environment (SPEC §7.6).

use proxyd_net::Outcome;
use proxyd_policy::Protocol;
use proxyd_test_support::{EchoTcp, HttpOrigin, UpstreamProxy};

use crate::harness::{Builder, connect_request, get, proxy, request};

/// `Basic base64("user:pass")`.
const CREDENTIALS: &str = "Basic dXNlcjpwYXNz";

fn through(upstream: &UpstreamProxy) -> Builder {
    let url = format!("http://user:pass@{}", upstream.addr());
    proxy().env("HTTP_PROXY", &url).env("HTTPS_PROXY", &url).env("NO_PROXY", "bypass.test")
}

#[tokio::test]
async fn http_request_goes_upstream_in_absolute_form_with_credentials() -> anyhow::Result<()> {
    let upstream = UpstreamProxy::start().await?;
    let origin = HttpOrigin::start().await?;
    let proxy = through(&upstream).start().await?;
    let url = format!("http://allowed.test:{}/via?upstream=1", origin.addr().port());
    let response = proxy
        .send(request("GET", &url, &["Proxy-Authorization: Basic Y2xpZW50OnNlY3JldA=="]))
        .await?;

    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), format!("upstream-proxy GET {url}\n"));
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, url, "absolute-form to the upstream proxy");
    assert_eq!(seen[0].proxy_authorization(), Some(CREDENTIALS), "proxyd's, not the client's");
    assert_eq!(seen[0].header("via"), Some("1.1 proxyd"));
    assert_eq!(origin.hits(), 0);
    assert_eq!(proxy.resolver.total_lookups(), 0, "the upstream proxy resolves, not proxyd");
    Ok(())
}

#[tokio::test]
async fn connect_goes_upstream_as_connect() -> anyhow::Result<()> {
    let upstream = UpstreamProxy::start().await?;
    let proxy = through(&upstream).start().await?;
    let mut client = proxy.client().await?;
    client.write(connect_request("allowed.test:443")).await?;
    let head = client.head().await?;
    assert_eq!(head.status, 200, "{head:?}");
    client.write("hi").await?;
    assert_eq!(client.read_exact(18).await?, b"upstream-tunnel:hi");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "CONNECT");
    assert_eq!(seen[0].target, "allowed.test:443");
    assert_eq!(seen[0].proxy_authorization(), Some(CREDENTIALS));
    assert_eq!(proxy.outcomes(), [(Protocol::HttpConnect, Outcome::Allowed)]);
    Ok(())
}

/// `https://` absolute-form goes through an upstream `CONNECT`, with TLS from proxyd inside it.
#[tokio::test]
async fn https_request_is_tunnelled_through_the_upstream_proxy() -> anyhow::Result<()> {
    let upstream = UpstreamProxy::start().await?;
    let proxy = through(&upstream).start().await?;
    let response = proxy.send(get("https://allowed.test/")).await?;
    // The stand-in upstream echoes instead of reaching an origin, so TLS cannot complete.
    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(response.json()?["reason"], "upstream_tls_failed");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "CONNECT");
    assert_eq!(seen[0].target, "allowed.test:443");
    assert_eq!(seen[0].proxy_authorization(), Some(CREDENTIALS));
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

#[tokio::test]
async fn denied_hosts_never_reach_the_upstream_proxy() -> anyhow::Result<()> {
    let upstream = UpstreamProxy::start().await?;
    let proxy = through(&upstream).start().await?;
    for raw in [
        get("http://evil.test/"),
        get("http://unlisted.test/"),
        connect_request("evil.test:443"),
        connect_request("unlisted.test:443"),
    ] {
        let response = proxy.send(&raw).await?;
        assert_eq!(response.status(), 403, "{raw:?}: {response:?}");
    }
    assert_eq!(upstream.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn no_proxy_entries_bypass_the_upstream_proxy() -> anyhow::Result<()> {
    let upstream = UpstreamProxy::start().await?;
    let origin = HttpOrigin::start().await?;
    let proxy = through(&upstream).start().await?;
    let url = format!("http://bypass.test:{}/direct", origin.addr().port());
    let response = proxy.send(get(&url)).await?;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "origin GET /direct\n");
    assert_eq!(proxy.resolver.lookups("bypass.test"), 1, "a direct request resolves locally");

    let echo = EchoTcp::start().await?;
    let mut client = proxy.client().await?;
    client.write(connect_request(&format!("bypass.test:{}", echo.addr().port()))).await?;
    assert_eq!(client.head().await?.status, 200);
    client.write("direct").await?;
    assert_eq!(client.read_exact(6).await?, b"direct", "the tunnel went to the echo server");
    assert_eq!(echo.hits(), 1);
    assert_eq!(upstream.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn local_targets_never_go_upstream() -> anyhow::Result<()> {
    let upstream = UpstreamProxy::start().await?;
    let origin = HttpOrigin::start().await?;
    let proxy = through(&upstream).start().await?;
    let port = origin.addr().port();
    for host in ["localhost", "127.0.0.1"] {
        let response = proxy.send(get(&format!("http://{host}:{port}/local"))).await?;
        assert_eq!(response.status(), 200, "{host}: {response:?}");
        assert_eq!(response.text(), "origin GET /local\n");
    }
    assert_eq!(upstream.hits(), 0);
    assert_eq!(origin.hits(), 2);
    Ok(())
}

/// An upstream proxy variable pointing back at proxyd itself fails cleanly instead of looping.
#[tokio::test]
async fn upstream_proxy_pointing_at_proxyd_itself_is_502() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy()
        .env("HTTP_PROXY", "http://{proxy}")
        .env("HTTPS_PROXY", "http://{proxy}")
        .start()
        .await?;
    let port = origin.addr().port();
    for raw in [
        get(&format!("http://allowed.test:{port}/")),
        get(&format!("https://allowed.test:{port}/")),
        connect_request(&format!("allowed.test:{port}")),
    ] {
        let response = proxy.send(&raw).await?;
        assert_eq!(response.status(), 502, "{raw:?}: {response:?}");
        assert_eq!(response.json()?["reason"], "upstream_proxy_failed");
    }
    // One decision per request: had proxyd reached itself, it would have decided again.
    assert_eq!(proxy.events().len(), 3, "{:?}", proxy.events());
    assert_eq!(origin.hits(), 0);
    Ok(())
}
