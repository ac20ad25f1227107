//! `CONNECT` tunnels (SPEC §7.3).

use std::time::Duration;

use proxyd_net::Outcome;
use proxyd_policy::{Mode, Protocol, Reason};
use proxyd_test_support::{Canary, EchoTcp, HttpOrigin, TestCa, TlsOrigin};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::harness::{Client, TIMEOUT, assert_blocked, connect_request, get, proxy, refused_port};

/// How long a closed tunnel may take to show EOF on the client side.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Opens a tunnel and checks the `200`, which must not announce a body (RFC 9110 §9.3.6).
async fn open_tunnel(client: &mut Client, authority: &str) -> anyhow::Result<()> {
    client.write(connect_request(authority)).await?;
    let head = client.head().await?;
    anyhow::ensure!(head.status == 200, "CONNECT {authority} answered {head:?}");
    anyhow::ensure!(
        head.header("content-length").is_none() && head.header("transfer-encoding").is_none(),
        "a 2xx to CONNECT announces a body: {head:?}"
    );
    Ok(())
}

#[tokio::test]
async fn allowed_tunnel_reaches_the_echo_server() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    open_tunnel(&mut client, &format!("allowed.test:{}", echo.addr().port())).await?;
    for message in ["hello", "through the tunnel"] {
        client.write(message).await?;
        assert_eq!(client.read_exact(message.len()).await?, message.as_bytes());
    }
    assert_eq!(echo.hits(), 1);
    assert_eq!(proxy.outcomes(), [(Protocol::HttpConnect, Outcome::Allowed)]);
    Ok(())
}

#[tokio::test]
async fn tls_through_the_tunnel_to_a_tls_origin() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, &["localhost"]).await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    let authority = format!("localhost:{}", origin.addr().port());
    open_tunnel(&mut client, &authority).await?;

    let connector = tokio_rustls::TlsConnector::from(ca.client_config()?);
    let name = ServerName::try_from("localhost")?;
    let mut tls = timeout(TIMEOUT, connector.connect(name, client.into_stream()?)).await??;
    let raw = format!("GET /secret HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    timeout(TIMEOUT, tls.write_all(raw.as_bytes())).await??;
    let mut answer = Vec::new();
    // The origin closes without close_notify on some paths; what arrived is what counts.
    let _ = timeout(TIMEOUT, tls.read_to_end(&mut answer)).await?;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("origin GET /secret\n"), "{answer}");
    assert_eq!(origin.sni(), ["localhost"]);
    Ok(())
}

#[tokio::test]
async fn blocked_connect_is_403_never_200_first() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let port = canary.addr().port();
    for (host, reason, header, message) in [
        ("evil.test", "denied", "blocked-by-denylist", "Domain is in the denylist."),
        ("unlisted.test", "not_allowed", "blocked-by-allowlist", "Domain not in allowlist."),
    ] {
        let mut client = proxy.client().await?;
        // The raw bytes must start with the 403: a 200 first would be a tunnel.
        let response = client.request(connect_request(&format!("{host}:{port}"))).await?;
        assert_blocked(
            &response,
            403,
            Some(header),
            json!({
                "status": "blocked",
                "reason": reason,
                "host": host,
                "port": port,
                "protocol": "http-connect",
                "method": "CONNECT",
                "mode": "full",
                "message": message,
            }),
        );
    }
    canary.assert_untouched();
    assert_eq!(proxy.resolver.total_lookups(), 0);
    assert_eq!(
        proxy.outcomes(),
        [
            (Protocol::HttpConnect, Outcome::Blocked(Reason::Denied)),
            (Protocol::HttpConnect, Outcome::Blocked(Reason::NotAllowed)),
        ]
    );
    Ok(())
}

/// Bytes pipelined after a refused `CONNECT` were meant for the tunnel: they must not be read
/// as a new request, so the connection closes after the refusal.
#[tokio::test]
async fn bytes_after_a_refused_connect_are_not_read_as_a_request() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    let mut raw = connect_request(&format!("evil.test:{}", canary.addr().port()));
    raw.push_str(&get(&format!("http://allowed.test:{}/smuggled", origin.addr().port())));
    client.write(raw).await?;
    let response = client.response().await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"", "a second response followed");
    assert_eq!(origin.hits(), 0);
    canary.assert_untouched();
    Ok(())
}

#[tokio::test]
async fn refused_connect_is_502() -> anyhow::Result<()> {
    let proxy = proxy().start().await?;
    let port = refused_port().await?;
    let response = proxy.send(connect_request(&format!("allowed.test:{port}"))).await?;
    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(response.json()?["reason"], "connect_refused");
    assert!(!response.text().contains("os error"), "{}", response.text());
    Ok(())
}

#[tokio::test]
async fn bytes_pipelined_after_the_head_reach_the_upstream() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    let mut raw = connect_request(&format!("allowed.test:{}", echo.addr().port())).into_bytes();
    raw.extend_from_slice(b"early bytes");
    client.write(raw).await?;
    let head = client.head().await?;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(client.read_exact(11).await?, b"early bytes");
    // hyper read them with the head: the zero-copy relay sent them first.
    #[cfg(target_os = "linux")]
    assert_eq!(proxy.engine.relay_stats().zero_copy, 1);
    Ok(())
}

#[tokio::test]
async fn half_close_passes_through_the_tunnel() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    open_tunnel(&mut client, &format!("allowed.test:{}", echo.addr().port())).await?;
    client.write("last words").await?;
    client.shutdown_write().await?;
    // The echo server sees EOF, finishes echoing, then closes its side: the reply still
    // arrives in full after the client stopped sending, then EOF.
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"last words");
    Ok(())
}

#[tokio::test]
async fn idle_tunnel_is_closed_after_idle_timeout() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = proxy().idle_timeout(Duration::from_millis(300)).start().await?;
    let mut client = proxy.client().await?;
    open_tunnel(&mut client, &format!("allowed.test:{}", echo.addr().port())).await?;
    client.write("ping").await?;
    assert_eq!(client.read_exact(4).await?, b"ping");
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"");
    Ok(())
}

#[tokio::test]
async fn switching_to_limited_closes_open_tunnels() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    open_tunnel(&mut client, &format!("allowed.test:{}", echo.addr().port())).await?;
    client.write("ping").await?;
    assert_eq!(client.read_exact(4).await?, b"ping");
    proxy.engine.set_mode(Mode::Limited);
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"");
    // And the next CONNECT is refused by the method policy.
    let response =
        proxy.send(connect_request(&format!("allowed.test:{}", echo.addr().port()))).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-method-policy"));
    assert_eq!(echo.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn connect_without_a_port_is_400() -> anyhow::Result<()> {
    let proxy = proxy().start().await?;
    let response =
        proxy.send("CONNECT allowed.test HTTP/1.1\r\nHost: allowed.test\r\n\r\n").await?;
    assert_eq!(response.status(), 400, "{response:?}");
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

/// An origin that sends `total` bytes to every connection, then closes it. Stops when the
/// handle is dropped.
async fn firehose(total: usize) -> anyhow::Result<(std::net::SocketAddr, AbortOnDrop)> {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    let n = chunk.len().min(total - sent);
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    sent += n;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((addr, AbortOnDrop(task)))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Issue 16: a client that closes mid-download ends the tunnel with an error (the proxy's
/// next write is reset), and the bytes it did receive still count.
#[tokio::test]
async fn a_tunnel_that_ends_with_an_error_still_counts_its_bytes() -> anyhow::Result<()> {
    let (origin, _origin) = firehose(64 * 1024 * 1024).await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    open_tunnel(&mut client, &format!("allowed.test:{}", origin.port())).await?;
    let read = 256 * 1024;
    client.read_exact(read).await?;
    // Closing with unread bytes in the receive buffer resets the connection.
    drop(client);
    let counted = timeout(TIMEOUT, async {
        loop {
            if let Some(row) = proxy.tunnel_bytes().pop() {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no tunnel bytes recorded for a tunnel that ended"))?;
    assert_eq!(counted.0, "http-connect");
    assert_eq!(counted.1, 0, "{counted:?}");
    assert!(counted.2 >= read as u64, "the client received {read} bytes: {counted:?}");
    Ok(())
}

/// A plain tunnel on Linux is relayed with `splice(2)`: both ways, several MiB, half-closed
/// from the client, and counted.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_plain_tunnel_is_relayed_without_copies() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = proxy().start().await?;
    let client = proxy.client().await?;
    let mut client = {
        let mut client = client;
        open_tunnel(&mut client, &format!("allowed.test:{}", echo.addr().port())).await?;
        client.into_stream()?
    };
    let data: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = client.split();
    let sent = async {
        write.write_all(&data).await?;
        write.shutdown().await
    };
    let received = async {
        let mut got = Vec::with_capacity(data.len());
        read.read_to_end(&mut got).await?;
        std::io::Result::Ok(got)
    };
    let ((), got) = timeout(TIMEOUT, async { tokio::try_join!(sent, received) }).await??;
    assert!(got == data, "echoed bytes differ");
    let counted = timeout(TIMEOUT, async {
        loop {
            if let Some(row) = proxy.tunnel_bytes().pop() {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let len = data.len() as u64;
    assert_eq!(counted, ("http-connect".to_owned(), len, len));
    let stats = proxy.engine.relay_stats();
    assert_eq!((stats.zero_copy, stats.copied), (1, 0), "{stats:?}");
    assert!(stats.pipes_created <= 2 && stats.pipes_pooled == stats.pipes_created as usize);
    Ok(())
}
