use proxyd_test_support::{
    ResponseHead, UpstreamProxy, connect, raw_request, read_response_head, read_to_eof,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn absolute_form_is_answered_locally_and_recorded() -> anyhow::Result<()> {
    let proxy = UpstreamProxy::start().await?;
    let raw = raw_request(
        proxy.addr(),
        "GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let head = ResponseHead::parse(&raw)?;
    assert_eq!(head.status, 200);
    assert_eq!(head.rest, b"upstream-proxy GET http://example.com/a?b\n");

    let requests = proxy.requests();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].target, "http://example.com/a?b");
    assert_eq!(requests[0].proxy_authorization(), Some("Basic dXNlcjpwYXNz"));
    Ok(())
}

#[tokio::test]
async fn connect_is_established_and_tunnel_echoes_with_prefix() -> anyhow::Result<()> {
    let proxy = UpstreamProxy::start().await?;
    let mut stream = connect(proxy.addr()).await?;
    stream.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await?;
    let head = read_response_head(&mut stream).await?;
    assert_eq!((head.status, head.reason.as_str()), (200, "Connection Established"));

    stream.write_all(b"ping").await?;
    let mut first = vec![0; "upstream-tunnel:ping".len()];
    tokio::time::timeout(proxyd_test_support::TIMEOUT, stream.read_exact(&mut first)).await??;
    assert_eq!(first, b"upstream-tunnel:ping");
    stream.write_all(b"pong").await?;
    stream.shutdown().await?;
    assert_eq!(read_to_eof(&mut stream).await?, b"pong");

    let requests = proxy.requests();
    assert_eq!(
        (requests[0].method.as_str(), requests[0].target.as_str()),
        ("CONNECT", "example.com:443")
    );
    assert_eq!(requests[0].proxy_authorization(), None);
    Ok(())
}

#[tokio::test]
async fn origin_form_is_refused() -> anyhow::Result<()> {
    let proxy = UpstreamProxy::start().await?;
    let raw = raw_request(proxy.addr(), "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    assert_eq!(ResponseHead::parse(&raw)?.status, 400);
    assert_eq!(proxy.requests()[0].target, "/a");
    Ok(())
}
