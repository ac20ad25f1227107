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
