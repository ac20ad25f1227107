//! HTTP/1.1 upgrades relayed end to end (SPEC §7.4).

use proxyd_net::Outcome;
use std::time::Duration;

use proxyd_policy::{Mode, Protocol, Reason};
use proxyd_test_support::UpgradeOrigin;

use crate::harness::{proxy, request};

fn websocket(port: u16) -> String {
    request(
        "GET",
        &format!("http://localhost:{port}/ws"),
        &["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"],
    )
}

#[tokio::test]
async fn websocket_upgrade_is_relayed_both_ways() -> anyhow::Result<()> {
    let origin = UpgradeOrigin::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    client.write(websocket(origin.addr().port())).await?;

    let head = client.head().await?;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert!(head.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")));
    // The origin upper-cases what it receives: bytes went there and came back.
    for message in ["hello", "second frame"] {
        client.write(message).await?;
        assert_eq!(client.read_exact(message.len()).await?, message.to_uppercase().as_bytes());
    }

    let seen = &origin.requests()[0];
    assert_eq!(seen.target, "/ws");
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert!(seen.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")));
    assert_eq!(seen.header("sec-websocket-version"), Some("13"));
    assert_eq!(proxy.outcomes(), [(Protocol::Http, Outcome::Allowed)]);
    // Plain on both sides: relayed without copies.
    #[cfg(target_os = "linux")]
    assert_eq!(proxy.engine.relay_stats().zero_copy, 1);
    Ok(())
}

#[tokio::test]
async fn upgrade_in_limited_mode_is_403_method_policy() -> anyhow::Result<()> {
    let origin = UpgradeOrigin::start().await?;
    let proxy = proxy().limited().start().await?;
    let response = proxy.send(websocket(origin.addr().port())).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-method-policy"));
    assert_eq!(response.json()?["reason"], "method_not_allowed");
    assert_eq!(origin.hits(), 0);
    assert_eq!(proxy.outcomes(), [(Protocol::Http, Outcome::Blocked(Reason::MethodNotAllowed))]);
    Ok(())
}

/// SPEC §6.2: switching to limited closes upgraded connections at once.
#[tokio::test]
async fn switching_to_limited_closes_upgraded_connections() -> anyhow::Result<()> {
    let origin = UpgradeOrigin::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    client.write(websocket(origin.addr().port())).await?;
    assert_eq!(client.head().await?.status, 101);
    client.write("ping").await?;
    assert_eq!(client.read_exact(4).await?, b"PING");

    proxy.engine.set_mode(Mode::Limited);
    assert_eq!(client.read_to_close(Duration::from_secs(5)).await?, b"");
    Ok(())
}

/// Issue 11: an origin that answers a plain `GET` (no `Upgrade` asked for) with `101` is not
/// relayed: in limited mode that would open a raw, unread channel through a read-only request.
/// Refused with 502 in every mode.
#[tokio::test]
async fn an_unrequested_101_is_refused_with_502() -> anyhow::Result<()> {
    let origin = crate::harness::RawOrigin::start(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\nraw bytes",
    )
    .await?;
    for mode in [Mode::Limited, Mode::Full] {
        let builder = proxy();
        let builder = match mode {
            Mode::Limited => builder.limited(),
            Mode::Full => builder,
        };
        let proxy = builder.start().await?;
        let url = format!("http://localhost:{}/plain", origin.addr.port());
        let response = proxy.send(request("GET", &url, &[])).await?;
        assert_eq!(response.status(), 502, "{mode}: {response:?}");
        assert_eq!(response.json()?["reason"], "upstream_failed", "{mode}");
    }
    assert_eq!(origin.heads().len(), 2);
    Ok(())
}

/// An upgrade to a TLS origin cannot be relayed without copies (the bytes are encrypted in
/// proxyd): it takes the copy path, and still works both ways.
#[tokio::test]
async fn an_upgrade_to_a_tls_origin_is_copied() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = proxyd_test_support::temp_dir("proxyd-http-proxy-upgrade-tls")?;
    let ca = proxyd_test_support::TestCa::new()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["localhost"])?);
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    let origin = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        let mut tls = acceptor.accept(stream).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            anyhow::ensure!(tls.read(&mut byte).await? == 1, "eof in the request head");
            head.push(byte[0]);
        }
        tls.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").await?;
        let mut buf = [0; 1024];
        loop {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            tls.write_all(&buf[..n].to_ascii_uppercase()).await?;
        }
    });
    let proxy = proxy().trust(ca.write_pem(dir.path())?).start().await?;
    let mut client = proxy.client().await?;
    client
        .write(request(
            "GET",
            &format!("https://localhost:{port}/ws"),
            &["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"],
        ))
        .await?;
    let head = client.head().await?;
    assert_eq!(head.status, 101, "{head:?}");
    client.write("over tls").await?;
    assert_eq!(client.read_exact(8).await?, b"OVER TLS");
    let stats = proxy.engine.relay_stats();
    assert_eq!((stats.zero_copy, stats.copied), (0, 1), "{stats:?}");
    drop(client);
    drop(origin);
    Ok(())
}
