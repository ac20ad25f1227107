use proxyd_test_support::{UpgradeOrigin, connect, raw_request, read_response_head, read_to_eof};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn upgrade_answers_101_then_echoes_upper_case() -> anyhow::Result<()> {
    let origin = UpgradeOrigin::start().await?;
    let mut stream = connect(origin.addr()).await?;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\n\r\n",
        )
        .await?;
    let head = read_response_head(&mut stream).await?;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(head.header("connection"), Some("upgrade"));
    assert!(head.rest.is_empty());

    stream.write_all(b"hello, upgraded").await?;
    let mut echoed = vec![0; 15];
    tokio::time::timeout(proxyd_test_support::TIMEOUT, stream.read_exact(&mut echoed)).await??;
    assert_eq!(echoed, b"HELLO, UPGRADED");

    // Half-close travels through the upgraded stream.
    stream.shutdown().await?;
    assert_eq!(read_to_eof(&mut stream).await?, b"");

    let requests = origin.requests();
    assert_eq!(requests[0].target, "/ws");
    assert_eq!(requests[0].header("upgrade"), Some("websocket"));
    Ok(())
}

#[tokio::test]
async fn request_without_upgrade_is_400() -> anyhow::Result<()> {
    let origin = UpgradeOrigin::start().await?;
    let raw = raw_request(
        origin.addr(),
        "GET /ws HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(raw.starts_with(b"HTTP/1.1 400 "), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(origin.hits(), 1);
    Ok(())
}
