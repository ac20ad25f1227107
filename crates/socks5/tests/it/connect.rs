//! `CONNECT` for every address type and every reply code, with the canary never reached when
//! the answer is a refusal.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proxyd_net::{BoxFuture, Decider, DeciderAnswer, DeciderRequest};
use proxyd_policy::Mode;
use proxyd_test_support::{Canary, EchoTcp, HttpOrigin, connect, read_to_eof};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use crate::client::{
    Addr, CONNECT, connect_to, failure, refused, request, send_request, tunnel, write,
};
use crate::support::{LOCALHOST, Setup, bounded, event};

/// Sends `payload` through `stream`, half-closes, and returns what came back.
async fn echo_through(
    mut stream: tokio::net::TcpStream,
    payload: &[u8],
) -> anyhow::Result<Vec<u8>> {
    write(&mut stream, payload).await?;
    stream.shutdown().await?;
    read_to_eof(&mut stream).await
}

#[tokio::test]
async fn ipv4_connect_replies_with_the_upstream_bound_address() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = Setup::new().allow(&[&canary.addr().to_string()]).start().await?;
    let (_stream, reply) = send_request(proxy.addr, &connect_to(canary.addr())).await?;
    assert_eq!(reply.code, 0);
    // BND is the upstream socket's local address: the peer the target saw.
    assert_eq!(canary.connections(), [reply.bound]);
    let port = canary.addr().port();
    assert_eq!(proxy.events.summary(), [event("socks5", "127.0.0.1", port, "allow", "allowed")]);
    let recorded = &proxy.events.all()[0];
    assert_eq!(recorded.client.map(|c| c.ip()), Some(LOCALHOST));
    assert!(recorded.connect_time.is_some());
    Ok(())
}

#[tokio::test]
async fn ipv4_tunnel_carries_bytes_both_ways_with_half_close() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let stream = tunnel(proxy.addr, echo.addr()).await?;
    let payload = vec![0x5a; 300_000];
    assert_eq!(echo_through(stream, &payload).await?, payload);
    Ok(())
}

#[tokio::test]
async fn domain_connect_is_decided_then_resolved_once() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = Setup::new()
        .allow(&["echo.test", "127.0.0.1"])
        .resolve("echo.test", LOCALHOST)
        .start()
        .await?;
    let name = Addr::Domain(b"Echo.Test.");
    let (stream, reply) =
        send_request(proxy.addr, &request(CONNECT, name, echo.addr().port())).await?;
    assert_eq!(reply.code, 0);
    assert_eq!(reply.bound.ip(), LOCALHOST);
    assert_eq!(echo_through(stream, b"by name").await?, b"by name");
    assert_eq!(proxy.resolver.lookups("echo.test"), 1);
    let port = echo.addr().port();
    assert_eq!(proxy.events.summary(), [event("socks5", "echo.test", port, "allow", "allowed")]);
    Ok(())
}

#[tokio::test]
async fn ipv6_connect() -> anyhow::Result<()> {
    // Linux may give the proxy's 127.0.0.1 listener the port of the [::1] origin, and every
    // loopback address on a listener's port is the proxy itself (`self_connection`).
    let (origin, proxy) = loop {
        let Ok(origin) = HttpOrigin::start_on(IpAddr::V6(Ipv6Addr::LOCALHOST)).await else {
            eprintln!("no IPv6 loopback: skipped");
            return Ok(());
        };
        let proxy = Setup::new().allow(&[&origin.addr().to_string()]).start().await?;
        if proxy.addr.port() != origin.addr().port() {
            break (origin, proxy);
        }
    };
    let (mut stream, reply) = send_request(proxy.addr, &connect_to(origin.addr())).await?;
    assert_eq!(reply.code, 0);
    assert_eq!(reply.bound.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    write(&mut stream, b"GET /v6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let response = String::from_utf8(read_to_eof(&mut stream).await?)?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("origin GET /v6\n"), "{response}");
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "::1", origin.addr().port(), "allow", "allowed")]
    );
    Ok(())
}

#[tokio::test]
async fn policy_blocks_get_0x02_and_are_recorded() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let port = canary.addr().port();
    let proxy = Setup::new()
        .allow(&["*", "allowed.test"])
        .deny(&["denied.test"])
        .resolve("denied.test", LOCALHOST)
        .resolve("rebind.test", LOCALHOST)
        .start()
        .await?;
    let mapped: IpAddr = "::ffff:127.0.0.1".parse()?;
    let cases: [(Addr<'_>, &str, &str); 6] = [
        (Addr::Domain(b"denied.test"), "denied.test", "denied"),
        // Local literals and `localhost` need an explicit entry; `*` does not count.
        (Addr::Ip(LOCALHOST), "127.0.0.1", "not_allowed_local"),
        (Addr::Ip(mapped), "::ffff:127.0.0.1", "not_allowed_local"),
        (Addr::Domain(b"127.0.0.1"), "127.0.0.1", "not_allowed_local"),
        (Addr::Domain(b"localhost"), "localhost", "not_allowed_local"),
        // A name is resolved after the allowlist, and a local answer blocks it.
        (Addr::Domain(b"rebind.test"), "rebind.test", "not_allowed_local"),
    ];
    let mut expected = Vec::new();
    for (addr, host, reason) in cases {
        assert_eq!(
            refused(proxy.addr, &request(CONNECT, addr, port)).await?,
            failure(0x02),
            "{host}"
        );
        expected.push(event("socks5", host, port, "block", reason));
    }
    canary.assert_untouched();
    assert_eq!(proxy.events.summary(), expected);
    assert_eq!(proxy.resolver.lookups("denied.test"), 0);
    assert_eq!(proxy.resolver.lookups("rebind.test"), 1);
    Ok(())
}

#[tokio::test]
async fn names_outside_the_allowlist_are_never_resolved() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = Setup::new()
        .allow(&["allowed.test"])
        .resolve("other.test", canary.addr().ip())
        .allow_local_binding()
        .start()
        .await?;
    let port = canary.addr().port();
    let bytes = request(CONNECT, Addr::Domain(b"other.test"), port);
    assert_eq!(refused(proxy.addr, &bytes).await?, failure(0x02));
    assert_eq!(proxy.resolver.total_lookups(), 0);
    canary.assert_untouched();
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "other.test", port, "block", "not_allowed")]
    );
    Ok(())
}

#[tokio::test]
async fn connecting_to_the_proxy_itself_is_refused() -> anyhow::Result<()> {
    let proxy = Setup::new().allow(&["127.0.0.1"]).start().await?;
    assert_eq!(refused(proxy.addr, &connect_to(proxy.addr)).await?, failure(0x02));
    let port = proxy.addr.port();
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "127.0.0.1", port, "block", "self_connection")]
    );
    Ok(())
}

#[tokio::test]
async fn a_disabled_proxy_answers_general_failure() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = Setup::new().allow(&[&canary.addr().to_string()]).disabled().start().await?;
    assert_eq!(refused(proxy.addr, &connect_to(canary.addr())).await?, failure(0x01));
    canary.assert_untouched();
    let port = canary.addr().port();
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "127.0.0.1", port, "block", "proxy_disabled")]
    );
    Ok(())
}

#[tokio::test]
async fn limited_mode_refuses_connect_with_0x02() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy =
        Setup::new().allow(&[&canary.addr().to_string()]).mode(Mode::Limited).start().await?;
    assert_eq!(refused(proxy.addr, &connect_to(canary.addr())).await?, failure(0x02));
    canary.assert_untouched();
    let port = canary.addr().port();
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "127.0.0.1", port, "block", "method_not_allowed")]
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_lookup_gets_0x04() -> anyhow::Result<()> {
    let proxy = Setup::new().allow(&["missing.test"]).start().await?;
    let bytes = request(CONNECT, Addr::Domain(b"missing.test"), 443);
    assert_eq!(refused(proxy.addr, &bytes).await?, failure(0x04));
    assert_eq!(proxy.resolver.lookups("missing.test"), 1);
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "missing.test", 443, "error", "dns_failed")]
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_connection_gets_0x05() -> anyhow::Result<()> {
    // Bound but not listening: connecting is refused, and the port stays ours meanwhile.
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(LOCALHOST, 0))?;
    let target = socket.local_addr()?;
    let proxy = Setup::new().allow(&[&target.to_string()]).start().await?;
    assert_eq!(refused(proxy.addr, &connect_to(target)).await?, failure(0x05));
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "127.0.0.1", target.port(), "error", "connect_refused")]
    );
    Ok(())
}

/// A listener whose accept queue is full: Linux drops further SYNs, so a connect hangs.
#[cfg(target_os = "linux")]
async fn unanswering_listener()
-> anyhow::Result<(tokio::net::TcpListener, Vec<tokio::net::TcpStream>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(LOCALHOST, 0))?;
    let listener = socket.listen(0)?;
    let addr = listener.local_addr()?;
    let mut queued = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), connect(addr)).await {
            Ok(stream) => queued.push(stream?),
            Err(_hung) => return Ok((listener, queued)),
        }
    }
    anyhow::bail!("the accept queue never filled")
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_connect_timeout_gets_0x06() -> anyhow::Result<()> {
    let (listener, _queued) = unanswering_listener().await?;
    let target = listener.local_addr()?;
    let proxy = Setup::new()
        .allow(&[&target.to_string()])
        .connect_timeout(Duration::from_millis(300))
        .start()
        .await?;
    assert_eq!(refused(proxy.addr, &connect_to(target)).await?, failure(0x06));
    assert_eq!(
        proxy.events.summary(),
        [event("socks5", "127.0.0.1", target.port(), "error", "connect_timeout")]
    );
    Ok(())
}

/// Allows `allowed.test`-style misses named `ok.*`, denies the rest with its own reason.
struct NamePrefixDecider;

impl Decider for NamePrefixDecider {
    fn decide(&self, request: DeciderRequest) -> BoxFuture<'static, DeciderAnswer> {
        let answer = match request.host.starts_with("ok.") {
            true => DeciderAnswer::Allow,
            false => DeciderAnswer::Deny("policy_denied".into()),
        };
        Box::pin(std::future::ready(answer))
    }
}

#[tokio::test]
async fn the_policy_decider_sees_socks5_allowlist_misses() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = Setup::new()
        .allow(&["127.0.0.1"])
        .resolve("ok.test", LOCALHOST)
        .decider(Arc::new(NamePrefixDecider))
        .start()
        .await?;
    let port = echo.addr().port();
    let (stream, reply) =
        send_request(proxy.addr, &request(CONNECT, Addr::Domain(b"ok.test"), port)).await?;
    assert_eq!(reply.code, 0);
    assert_eq!(echo_through(stream, b"decided").await?, b"decided");
    let bytes = request(CONNECT, Addr::Domain(b"no.test"), port);
    assert_eq!(refused(proxy.addr, &bytes).await?, failure(0x02));
    assert_eq!(
        proxy.events.summary(),
        [
            event("socks5", "ok.test", port, "allow", "allowed"),
            event("socks5", "no.test", port, "block", "policy_denied"),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn many_tunnels_at_once() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        let (proxy, target) = (proxy.addr, echo.addr());
        tasks.spawn(async move {
            let stream = tunnel(proxy, target).await?;
            let payload = vec![i; 10_000];
            anyhow::ensure!(echo_through(stream, &payload).await? == payload);
            anyhow::Ok(())
        });
    }
    while let Some(done) = bounded(tasks.join_next()).await? {
        done??;
    }
    Ok(())
}

/// A SOCKS5 tunnel on Linux is relayed with `splice(2)`: several MiB each way, checksummed,
/// half-closed from the client, and counted.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_tunnel_is_relayed_without_copies() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let stream = tunnel(proxy.addr, echo.addr()).await?;
    let payload: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert!(echo_through(stream, &payload).await? == payload, "echoed bytes differ");
    let len = payload.len() as u64;
    assert_eq!(proxy.events.tunnel_bytes().await?, ("socks5".to_owned(), len, len));
    let stats = proxy.engine.relay_stats();
    assert_eq!((stats.zero_copy, stats.copied), (1, 0), "{stats:?}");
    Ok(())
}

/// Issue 16: a client that closes mid-download ends the tunnel with an error, and the bytes
/// it did receive still count.
#[tokio::test]
async fn a_tunnel_that_ends_with_an_error_still_counts_its_bytes() -> anyhow::Result<()> {
    let origin = tokio::net::TcpListener::bind((LOCALHOST, 0)).await?;
    let target = origin.local_addr()?;
    let firehose = tokio::spawn(async move {
        let Ok((mut stream, _)) = origin.accept().await else { return };
        let chunk = vec![b'x'; 64 * 1024];
        // Until the proxy's side goes away.
        while stream.write_all(&chunk).await.is_ok() {}
    });
    let proxy = Setup::new().allow(&[&target.to_string()]).start().await?;
    let mut stream = tunnel(proxy.addr, target).await?;
    let read = 256 * 1024;
    let mut got = vec![0; read];
    bounded(tokio::io::AsyncReadExt::read_exact(&mut stream, &mut got)).await??;
    // Closing with unread bytes in the receive buffer resets the connection.
    drop(stream);
    let (protocol, up, down) = proxy.events.tunnel_bytes().await?;
    assert_eq!((protocol.as_str(), up), ("socks5", 0));
    assert!(down >= read as u64, "the client received {read} bytes, {down} counted");
    firehose.abort();
    Ok(())
}
