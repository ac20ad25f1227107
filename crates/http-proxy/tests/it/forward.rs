//! Absolute-form `http://` forwarding (SPEC §7.2).

use std::time::Duration;

use proxyd_net::Outcome;
use proxyd_policy::{Protocol, Reason};
use proxyd_test_support::{Canary, HttpOrigin};

use crate::harness::{CountingRelay, RawOrigin, get, proxy, request};

#[tokio::test]
async fn allowed_request_reaches_the_origin_in_origin_form() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().start().await?;
    let port = origin.addr().port();
    let url = format!("http://allowed.test:{port}/path?q=1#fragment");
    let response = proxy
        .send(request(
            "GET",
            &url,
            &[
                "Connection: keep-alive, X-Secret",
                "X-Secret: named by connection",
                "Keep-Alive: timeout=5",
                "Proxy-Connection: keep-alive",
                "Proxy-Authorization: Basic Y2xpZW50OnNlY3JldA==",
                "TE: deflate, trailers",
                "Trailer: x-checksum",
                "X-Kept: yes",
            ],
        ))
        .await?;

    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "origin GET /path?q=1\n");
    assert_eq!(response.header("via"), Some("1.1 proxyd"));
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.target, "/path?q=1", "origin-form, fragment dropped");
    assert_eq!(seen.header("host"), Some(format!("allowed.test:{port}").as_str()));
    assert_eq!(seen.header("via"), Some("1.1 proxyd"));
    assert_eq!(seen.header("x-kept"), Some("yes"));
    for hop in ["x-secret", "keep-alive", "proxy-connection", "proxy-authorization", "trailer"] {
        assert_eq!(seen.header(hop), None, "{hop} must not be forwarded: {seen:?}");
    }
    // `TE: trailers` is the one transfer coding passed on (RFC 9110 §7.6.1, RFC 9113 §8.2.2),
    // announced in proxyd's own `Connection` (RFC 9110 §10.1.4); the client's is not forwarded.
    assert_eq!(seen.header("te"), Some("trailers"), "{seen:?}");
    assert_eq!(seen.header("connection"), Some("te"), "{seen:?}");
    assert_eq!(proxy.outcomes(), [(Protocol::Http, Outcome::Allowed)]);
    Ok(())
}

#[tokio::test]
async fn host_header_disagreeing_with_the_uri_is_400() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let port = canary.addr().port();
    for host in ["evil.test", "allowed.test:1", "allowed.test:80", "127.0.0.1"] {
        let raw = format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let response = proxy.send(raw).await?;
        assert_eq!(response.status(), 400, "host {host}: {response:?}");
    }
    canary.assert_untouched();
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

#[tokio::test]
async fn origin_form_request_on_the_proxy_is_400() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let raw = format!("GET / HTTP/1.1\r\nHost: allowed.test:{}\r\n\r\n", canary.addr().port());
    let response = proxy.send(raw).await?;
    assert_eq!(response.status(), 400, "{response:?}");
    canary.assert_untouched();
    assert!(proxy.events().is_empty(), "{:?}", proxy.events());
    Ok(())
}

#[tokio::test]
async fn chunked_request_body_arrives_whole() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().start().await?;
    let url = format!("http://allowed.test:{}/upload", origin.addr().port());
    let mut client = proxy.client().await?;
    client.write(request("POST", &url, &["Transfer-Encoding: chunked"])).await?;
    let mut expected = Vec::new();
    for i in 0..20u8 {
        let chunk = vec![b'a' + i; 1000 + usize::from(i)];
        client.write(format!("{:x}\r\n", chunk.len())).await?;
        client.write(&chunk).await?;
        client.write("\r\n").await?;
        expected.extend_from_slice(&chunk);
    }
    client.write("0\r\n\r\n").await?;
    let response = client.response().await?;

    assert_eq!(response.status(), 200, "{}", response.text());
    let mut answer = b"origin POST /upload\n".to_vec();
    answer.extend_from_slice(&expected);
    assert_eq!(response.body, answer);
    assert_eq!(origin.requests()[0].body, expected);
    Ok(())
}

#[tokio::test]
async fn large_streamed_response_arrives_whole() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().start().await?;
    let port = origin.addr().port();
    let mut client = proxy.client().await?;
    for query in ["n=5000000", "n=5000000&chunked=1"] {
        let response =
            client.request(get(&format!("http://allowed.test:{port}/big?{query}"))).await?;
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.body.len(), 5_000_000, "{query}");
        assert!(response.body.iter().all(|b| *b == b'x'), "{query}");
    }
    Ok(())
}

#[tokio::test]
async fn every_request_on_a_keep_alive_connection_is_decided_afresh() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;

    let allowed = format!("http://allowed.test:{}/one", origin.addr().port());
    let first = client.request(get(&allowed)).await?;
    assert_eq!(first.status(), 200, "{first:?}");

    let denied = format!("http://evil.test:{}/two", canary.addr().port());
    let second = client.request(get(&denied)).await?;
    assert_eq!(second.status(), 403, "{second:?}");
    assert_eq!(second.header("x-proxy-error"), Some("blocked-by-denylist"));

    let third = client.request(get(&allowed)).await?;
    assert_eq!(third.status(), 200, "the connection stays usable: {third:?}");

    canary.assert_untouched();
    assert_eq!(proxy.resolver.lookups("evil.test"), 0);
    assert_eq!(origin.hits(), 2);
    assert_eq!(
        proxy.outcomes(),
        [
            (Protocol::Http, Outcome::Allowed),
            (Protocol::Http, Outcome::Blocked(Reason::Denied)),
            (Protocol::Http, Outcome::Allowed),
        ]
    );
    Ok(())
}

/// SPEC §2.2: `idle_timeout` is the clock of every keep-alive connection, pooled upstream
/// ones included. An origin that never closes an idle connection must not keep its
/// descriptor in proxyd forever: the pool closes it once it has been unused that long.
#[tokio::test]
async fn pooled_upstream_connections_are_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let relay = CountingRelay::start(origin.addr()).await?;
    let proxy = proxy().idle_timeout(Duration::from_millis(400)).start().await?;
    let url = format!("http://allowed.test:{}/pooled", relay.addr.port());
    assert_eq!(proxy.send(get(&url)).await?.status(), 200);
    assert_eq!(relay.accepted(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while relay.open() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pooled connection was still open 5 s after a 400 ms idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request opens a new connection: nothing stale was handed out.
    assert_eq!(proxy.send(get(&url)).await?.status(), 200);
    assert_eq!(relay.accepted(), 2);
    Ok(())
}

/// SPEC §7.2: upstream connections are pooled per (host, port, checked address). A relay in
/// front of the origin counts the TCP connections proxyd opens.
#[tokio::test]
async fn upstream_connections_are_reused_for_the_same_host() -> anyhow::Result<()> {
    const REQUESTS: usize = 5;
    let origin = HttpOrigin::start().await?;
    let relay = CountingRelay::start(origin.addr()).await?;
    let proxy = proxy().start().await?;
    let url = format!("http://allowed.test:{}/again", relay.addr.port());
    for _ in 0..REQUESTS {
        // A new client connection each time: the pool is the listener's, not the client's.
        let response = proxy.send(get(&url)).await?;
        assert_eq!(response.status(), 200, "{response:?}");
    }
    assert_eq!(origin.hits(), REQUESTS);
    // A connection is returned to the pool once its response has been read, which races
    // with the next request only by a scheduler tick; most requests must reuse one.
    assert!(
        relay.accepted() < REQUESTS,
        "{} upstream connections for {REQUESTS} requests: nothing was reused",
        relay.accepted()
    );

    // Another host name for the same address gets its own connection.
    let other = format!("http://localhost:{}/other", relay.addr.port());
    let before = relay.accepted();
    assert_eq!(proxy.send(get(&other)).await?.status(), 200);
    assert_eq!(relay.accepted(), before + 1, "a pooled connection carried another host");
    Ok(())
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() -> anyhow::Result<()> {
    let origin = RawOrigin::start(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Hop\r\nX-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\n\
         Trailer: X-Sum\r\nVia: 1.1 origin-cache\r\nX-End: kept\r\n\r\nok",
    )
    .await?;
    let proxy = proxy().start().await?;
    let response = proxy.send(get(&format!("http://allowed.test:{}/", origin.addr.port()))).await?;

    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "ok");
    assert_eq!(response.header("x-end"), Some("kept"));
    for hop in ["x-hop", "keep-alive", "proxy-connection", "proxy-authenticate", "trailer"] {
        assert_eq!(response.header(hop), None, "{hop} passed through: {response:?}");
    }
    assert_eq!(response.header("connection"), None, "{response:?}");
    let via: Vec<&str> =
        response.head.headers.iter().filter(|(n, _)| n == "via").map(|(_, v)| v.as_str()).collect();
    assert_eq!(via, ["1.1 origin-cache", "1.1 proxyd"], "proxyd appends to via");
    Ok(())
}

#[tokio::test]
async fn chunked_response_with_trailers_streams_through() -> anyhow::Result<()> {
    let origin = RawOrigin::start(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n",
    )
    .await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    let url = format!("http://allowed.test:{}/", origin.addr.port());
    for _ in 0..2 {
        // Twice on one client connection: the message framing must stay intact.
        let response = client.request(get(&url)).await?;
        assert_eq!(response.status(), 200, "{response:?}");
        assert_eq!(response.text(), "hello world");
    }
    assert_eq!(origin.heads().len(), 2);
    Ok(())
}

/// curl sends `Expect: 100-continue` before large uploads and waits for the interim answer.
#[tokio::test]
async fn expect_continue_upload_is_forwarded() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().start().await?;
    let url = format!("http://allowed.test:{}/upload", origin.addr().port());
    let mut client = proxy.client().await?;
    client.write(request("PUT", &url, &["Content-Length: 5", "Expect: 100-continue"])).await?;
    let interim = client.head().await?;
    assert_eq!(interim.status, 100, "{interim:?}");
    client.write("12345").await?;
    let response = client.response().await?;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "origin PUT /upload\n12345");
    assert_eq!(origin.requests()[0].body, b"12345");
    Ok(())
}

#[tokio::test]
async fn ipv6_literal_target_gets_a_bracketed_host() -> anyhow::Result<()> {
    let proxy = proxy().allow(&["::1"]).start().await?;
    // Linux may give [::1] the port of the proxy's 127.0.0.1 listener, and every loopback
    // address on a listener's port is the proxy itself (`self_connection`): pick another.
    let mut origin = HttpOrigin::start_on("::1".parse()?).await?;
    while origin.addr().port() == proxy.addr.port() {
        origin = HttpOrigin::start_on("::1".parse()?).await?;
    }
    let port = origin.addr().port();
    let response = proxy.send(get(&format!("http://[::1]:{port}/six"))).await?;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(origin.requests()[0].header("host"), Some(format!("[::1]:{port}").as_str()));
    Ok(())
}

/// An HTTP/1.0 client cannot read chunked framing: a streamed body is delimited by close.
#[tokio::test]
async fn http_1_0_client_gets_an_unchunked_body() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().start().await?;
    let url = format!("http://allowed.test:{}/big?n=100000&chunked=1", origin.addr().port());
    let mut client = proxy.client().await?;
    client.write(format!("GET {url} HTTP/1.0\r\n\r\n")).await?;
    let head = client.head().await?;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
    let body = client.read_to_close(crate::harness::TIMEOUT).await?;
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().all(|b| *b == b'x'));
    Ok(())
}
