//! Review of the admission redesign (review-10): bypasses reproduced from outside, with library
//! proxies, real listeners on `127.0.0.1:0` and raw clients. Each test fails on the code it
//! was written against.
//!
//! - a reload that removes a name from the allowlist leaves its live exchanges open: the
//!   re-check treats every allowlist miss as a decider's allow, with or without a decider;
//! - a request admitted in full mode whose lease is revoked between the decision and
//!   `Admission::admit` (a switch to limited while its name resolves) is still sent to the
//!   origin: nothing checks the lease before `send_request`, and an empty body's
//!   `is_end_stream` means `Leased` is never polled (also: a reload that denies the host);
//! - a Unix socket re-created at the pinned path after its server stopped passes the pin when
//!   the file system hands out the freed inode number again (ext4 does);
//! - one UDP datagram whose route goes stale during its own admission is recorded twice
//!   (allowed on the old snapshot, then blocked on the new one), though it is sent once or not
//!   at all;
//! - a SOCKS5 `CONNECT` still resolving when `shutdown()` returns dials its destination after.
//!
//! Nothing leaves `127.0.0.0/8`; every wait is bounded.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd::{Mode, NetworkProxy, Resolver, Sources, StaticResolver};
use proxyd_test_support::{EchoTcp, HttpOrigin, connect, temp_dir};
use tokio::io::AsyncReadExt as _;
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};

use crate::admin_support::{
    CLOSE_WITHIN, Handle, closed_within, connect_head, echo_round_trip, lib_config,
    open_socks_tunnel, open_tunnel, start_lib, write, write_all,
};
use crate::admission::decisions;
use crate::support::{BOUND, network};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------------
// 1. A reload that drops a name from the allowlist does not end its exchanges.

/// The config file: SOCKS5 on, `allow_local_binding = true` (the test's name resolves to
/// loopback), and `allowed`.
fn reload_toml(allowed: &str) -> String {
    network(&format!("allowed_domains = [{allowed}]\nallow_local_binding = true"))
        .replace("enable_socks5 = false", "enable_socks5 = true")
}

/// A proxy reading `dir/config.toml` (allowing `allowed.test`, which resolves to 127.0.0.1).
async fn reloadable(dir: &std::path::Path) -> anyhow::Result<(Handle, std::path::PathBuf)> {
    let file = dir.join("config.toml");
    write(&file, &reload_toml("\"allowed.test\""))?;
    let sources = Sources { files: vec![file.clone()], ..Sources::default() };
    let resolver = StaticResolver::new().with("allowed.test", [LOOPBACK]);
    let handle =
        start_lib(NetworkProxy::builder().sources(sources).resolver(Arc::new(resolver))).await?;
    Ok((handle, file))
}

/// Rewrites the file to allow `unrelated.test` only, reloads, and checks that a new `CONNECT`
/// to `allowed.test` is refused now.
async fn reload_without_allowed_test(
    handle: &Handle,
    file: &std::path::Path,
    port: u16,
) -> anyhow::Result<()> {
    write(file, &reload_toml("\"unrelated.test\""))?;
    let pending = timeout(BOUND, handle.get().reload()).await.context("reload hung")?;
    ensure!(pending == Ok(vec![]), "reload: {pending:?}");
    let head = connect_head(handle.http(), &format!("allowed.test:{port}")).await?;
    ensure!(
        head.status == 403 && head.header("x-proxy-error") == Some("blocked-by-allowlist"),
        "a new CONNECT after the reload: {head:?}"
    );
    Ok(())
}

/// Fails if `tunnel` (to an echo server) still relays a round trip after the reload returned.
async fn still_carries_bytes(tunnel: &mut tokio::net::TcpStream, what: &str) -> anyhow::Result<()> {
    let trip = timeout(Duration::from_secs(2), echo_round_trip(tunnel, b"after-reload")).await;
    ensure!(
        !matches!(trip, Ok(Ok(()))),
        "the {what} tunnel to allowed.test still relays bytes after a reload that removed \
         allowed.test from the allowlist returned (new tunnels to it get 403 not_allowed; no \
         policy decider is configured)"
    );
    Ok(())
}

/// A `CONNECT` tunnel to `allowed.test` (no policy decider configured); a reload removes
/// `allowed.test` from the allowlist. New tunnels are refused `not_allowed`, so the open one
/// must be closed before the reload returns (README: "every live exchange the new policy or
/// mode refuses is ended"). Today `Facts::recheck` turns the allowlist miss into
/// `consult.allow()`, as if a decider had allowed it, and the tunnel carries bytes for as
/// long as the client likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_the_host_from_the_allowlist_closes_its_connect_tunnel()
-> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let dir = temp_dir("proxyd-review-reload")?;
    let (handle, file) = reloadable(&dir).await?;
    let port = echo.addr().port();
    let mut tunnel = open_tunnel(handle.http(), &format!("allowed.test:{port}")).await?;
    reload_without_allowed_test(&handle, &file, port).await?;
    still_carries_bytes(&mut tunnel, "CONNECT").await?;
    closed_within(&mut tunnel, CLOSE_WITHIN).await.context(
        "the CONNECT tunnel to allowed.test survived a reload that removed allowed.test from \
         the allowlist (no policy decider is configured)",
    )?;
    Ok(())
}

/// The same with a SOCKS5 `CONNECT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_the_host_from_the_allowlist_closes_its_socks5_tunnel()
-> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let dir = temp_dir("proxyd-review-reload")?;
    let (handle, file) = reloadable(&dir).await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;
    let port = echo.addr().port();
    let mut tunnel = open_socks_tunnel(socks, "allowed.test", port).await?;
    reload_without_allowed_test(&handle, &file, port).await?;
    still_carries_bytes(&mut tunnel, "SOCKS5").await?;
    closed_within(&mut tunnel, CLOSE_WITHIN).await.context(
        "the SOCKS5 tunnel to allowed.test survived a reload that removed allowed.test from \
         the allowlist (no policy decider is configured)",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. A request revoked before it was sent is sent anyway.

/// A resolver whose answer for every name waits until the test releases it; it says when a
/// lookup started. Stands in for a slow DNS answer (which the owner of a domain controls).
#[derive(Default)]
struct HeldResolver {
    started: Notify,
    release: Notify,
    /// Only the first lookup is held when set; later ones answer at once.
    first_only: bool,
    lookups: std::sync::atomic::AtomicUsize,
}

impl Resolver for HeldResolver {
    fn resolve<'a>(
        &'a self,
        _name: &'a str,
    ) -> Pin<Box<dyn std::future::Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let n = self.lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if self.first_only && n > 0 {
                return Ok(vec![LOOPBACK]);
            }
            let released = self.release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            self.started.notify_one();
            released.await;
            Ok(vec![LOOPBACK])
        })
    }
}

/// `POST http://slow.test:PORT/delete` with no body is allowed in full mode; while its name
/// resolves, the proxy switches to limited mode (`set_mode` returns); then the answer comes.
/// Limited mode forbids `POST`, and the lease the exchange gets is revoked when it registers,
/// yet the request is sent to the origin: `forward.rs` never looks at the lease before
/// `send_request`, and a body-less request is never polled (`Leased::is_end_stream` is the
/// inner body's), so the whole write reaches the origin after the switch returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_decided_before_a_switch_to_limited_is_not_sent_after_it() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let resolver = Arc::new(HeldResolver::default());
    let config = lib_config("allowed_domains = [\"slow.test\"]\nallow_local_binding = true")?;
    let handle =
        start_lib(NetworkProxy::builder().config(config).resolver(resolver.clone())).await?;
    let port = origin.addr().port();

    let mut client = connect(handle.http()).await?;
    let request = format!(
        "POST http://slow.test:{port}/delete?id=1 HTTP/1.1\r\nHost: slow.test:{port}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    write_all(&mut client, request.as_bytes()).await?;
    timeout(BOUND, resolver.started.notified()).await.context("the name was never resolved")?;
    handle.get().set_mode(Mode::Limited);
    ensure!(handle.get().mode() == Some(Mode::Limited), "the switch did not take");
    resolver.release.notify_one();

    // Whatever the client gets (403, a cut response), read it for a moment.
    let mut answer = Vec::new();
    let _ = timeout(Duration::from_secs(2), client.read_to_end(&mut answer)).await;
    sleep(Duration::from_millis(200)).await;
    ensure!(
        origin.hits() == 0,
        "the origin received {} request(s) after set_mode(Limited) had returned: {:?}; the \
         client got {:?}",
        origin.hits(),
        origin.requests().iter().map(|r| format!("{} {}", r.method, r.target)).collect::<Vec<_>>(),
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. A new socket at the pinned path passes the inode check when its inode number is reused.

/// `agent.sock` is allowed and reached; then its server stops (the socket file is removed with
/// it) and a different server binds a new socket at the same path. README: "Replacing the
/// socket ... gets 403 `unix_socket_changed` until a reload looks again". The pin is only the
/// device and inode *numbers*, and on ext4 (where this runs) a freed inode number is handed
/// out again at once, so the impostor's socket carries the pinned identity and is reached.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_rebound_after_its_server_stopped_is_refused() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;

    use proxyd_test_support::UnixOrigin;

    let dir = temp_dir("proxyd-review-unix")?;
    let path = dir.join("agent.sock");
    let agent = UnixOrigin::start(&path).await?;
    let pinned = std::fs::metadata(&path)?.ino();
    let config = lib_config(&format!("allow_unix_sockets = [{:?}]", path.display().to_string()))?;
    let handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let header = format!("x-unix-socket: {}", path.display());
    let response =
        crate::support::curl(handle.http(), &["--header", &header, "http://localhost/agent"])
            .await?;
    ensure!(response.code == 200 && agent.hits() == 1, "the allowed socket: {response:?}");

    // The server stops: its listener closes and its socket file goes.
    drop(agent);
    let deadline = tokio::time::Instant::now() + BOUND;
    while path.exists() && tokio::time::Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_millis(200)).await;
    // Another server binds there; retried a few times in case the inode number is not
    // reused at once (it is on ext4).
    let mut impostor = None;
    for _ in 0..20 {
        let candidate = UnixOrigin::start(&path).await.context("bind a new agent.sock")?;
        if std::fs::metadata(&path)?.ino() == pinned {
            impostor = Some(candidate);
            break;
        }
        drop(candidate);
        sleep(Duration::from_millis(50)).await;
    }
    let Some(impostor) = impostor else {
        // The file system did not reuse the inode number: nothing to show here.
        eprintln!("inode {pinned} was not reused; the check holds on this file system");
        return Ok(());
    };
    let response =
        crate::support::curl(handle.http(), &["--header", &header, "http://localhost/agent"])
            .await?;
    ensure!(
        impostor.hits() == 0,
        "a new socket bound at the allowed path after the pinned one was gone was reached \
         (it got the pinned inode number {pinned}): {response:?}"
    );
    ensure!(response.code == 403, "expected 403 unix_socket_changed, got {response:?}");
    Ok(())
}

/// The reload variant: `GET http://slow.test:PORT/` is allowed; while its name resolves, a
/// reload puts `slow.test` in `denied_domains` (and `reload()` returns). The lease is revoked
/// when it registers, but the request still goes to the now denied host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_decided_before_a_reload_denies_its_host_is_not_sent_after_it()
-> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let resolver = Arc::new(HeldResolver::default());
    let dir = temp_dir("proxyd-review-deny")?;
    let file = dir.join("config.toml");
    let toml = |denied: &str| {
        network(&format!(
            "allowed_domains = [\"slow.test\"]\ndenied_domains = [{denied}]\n\
             allow_local_binding = true"
        ))
    };
    write(&file, &toml(""))?;
    let sources = Sources { files: vec![file.clone()], ..Sources::default() };
    let handle =
        start_lib(NetworkProxy::builder().sources(sources).resolver(resolver.clone())).await?;
    let port = origin.addr().port();

    let mut client = connect(handle.http()).await?;
    let request =
        format!("GET http://slow.test:{port}/secret HTTP/1.1\r\nHost: slow.test:{port}\r\n\r\n");
    write_all(&mut client, request.as_bytes()).await?;
    timeout(BOUND, resolver.started.notified()).await.context("the name was never resolved")?;
    write(&file, &toml("\"slow.test\""))?;
    let pending = timeout(BOUND, handle.get().reload()).await.context("reload hung")?;
    ensure!(pending == Ok(vec![]), "reload: {pending:?}");
    resolver.release.notify_one();

    let mut answer = Vec::new();
    let _ = timeout(Duration::from_secs(2), client.read_to_end(&mut answer)).await;
    sleep(Duration::from_millis(200)).await;
    ensure!(
        origin.hits() == 0,
        "the origin (slow.test, denied by the reload) received {} request(s) after reload() \
         had returned: {:?}; the client got {:?}",
        origin.hits(),
        origin.requests().iter().map(|r| format!("{} {}", r.method, r.target)).collect::<Vec<_>>(),
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. One datagram, two decision events.

/// One datagram to `slow.test` on a fresh association; while its name resolves, a reload puts
/// `slow.test` in `denied_domains`. The route is settled (recorded) as allowed on the old
/// snapshot, found stale by `send_upstream`, and decided again: blocked `denied`. Nothing is
/// sent (right), but the one datagram is recorded twice, once as allowed and once as blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_datagram_across_a_reload_is_recorded_once() -> anyhow::Result<()> {
    let echo = proxyd_test_support::UdpEcho::start().await?;
    let resolver = Arc::new(HeldResolver { first_only: true, ..HeldResolver::default() });
    let dir = temp_dir("proxyd-review-udp")?;
    let file = dir.join("config.toml");
    let toml = |denied: &str| {
        network(&format!(
            "allowed_domains = [\"slow.test\"]\ndenied_domains = [{denied}]\n\
             allow_local_binding = true"
        ))
        .replace("enable_socks5 = false", "enable_socks5 = true")
    };
    write(&file, &toml(""))?;
    let sources = Sources { files: vec![file.clone()], ..Sources::default() };
    let handle =
        start_lib(NetworkProxy::builder().sources(sources).resolver(resolver.clone())).await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;

    #[expect(clippy::disallowed_methods, reason = "the test's SOCKS5 client socket")]
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let (_control, relay) =
        crate::admin_support::open_udp_relay(socks, socket.local_addr()?).await?;
    let name = b"slow.test";
    let mut datagram = vec![0, 0, 0, 3, name.len() as u8];
    datagram.extend_from_slice(name);
    datagram.extend_from_slice(&echo.addr().port().to_be_bytes());
    datagram.extend_from_slice(b"one");
    #[expect(clippy::disallowed_methods, reason = "the test's SOCKS5 client socket")]
    let sent = timeout(BOUND, socket.send_to(&datagram, relay)).await;
    sent??;

    timeout(BOUND, resolver.started.notified()).await.context("the name was never resolved")?;
    write(&file, &toml("\"slow.test\""))?;
    let pending = timeout(BOUND, handle.get().reload()).await.context("reload hung")?;
    ensure!(pending == Ok(vec![]), "reload: {pending:?}");
    resolver.release.notify_one();
    sleep(Duration::from_millis(500)).await;
    ensure!(echo.received().is_empty(), "the denied echo got {:?}", echo.received());

    let metrics = crate::admin_support::get(handle.admin(), "/metrics").await?.body;
    let events = decisions(&metrics, "socks5-udp");
    let total: u64 = events.iter().map(|(_, n)| n).sum();
    ensure!(total == 1, "one datagram (never sent) was recorded {total} times: {events:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. A SOCKS5 request still being admitted when shutdown returns dials after it.

/// A SOCKS5 `CONNECT` to `slow.test` whose name is still resolving when `shutdown()` begins
/// (`drain_timeout = "1s"`). The drain runs out, everything is told to close and shutdown
/// returns; then the answer comes, and the SOCKS5 handler, which never listens to the
/// lifecycle before its splice, connects to the origin anyway. HTTP connections are dropped at
/// the close; SOCKS5 ones in the handshake or the admission are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks5_connect_pending_at_shutdown_does_not_dial_after_it() -> anyhow::Result<()> {
    let canary = proxyd_test_support::Canary::start().await?;
    let resolver = Arc::new(HeldResolver::default());
    let toml = network(
        "allowed_domains = [\"slow.test\"]\nallow_local_binding = true\ndrain_timeout = \"1s\"\n\
         dns_timeout = \"30s\"",
    )
    .replace("enable_socks5 = false", "enable_socks5 = true");
    let config = proxyd::Config::from_toml_str(&toml, "lib.toml")
        .map_err(|e| anyhow::anyhow!("invalid test config:\n{e}"))?;
    let mut handle =
        start_lib(NetworkProxy::builder().config(config).resolver(resolver.clone())).await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;

    let mut client = connect(socks).await?;
    write_all(&mut client, &[5, 1, 0]).await?;
    let mut method = [0; 2];
    timeout(BOUND, client.read_exact(&mut method)).await??;
    ensure!(method == [5, 0], "no-auth refused: {method:?}");
    let name = b"slow.test";
    let mut request = vec![5, 1, 0, 3, name.len() as u8];
    request.extend_from_slice(name);
    request.extend_from_slice(&canary.addr().port().to_be_bytes());
    write_all(&mut client, &request).await?;
    timeout(BOUND, resolver.started.notified()).await.context("the name was never resolved")?;

    let took = handle.shutdown_within(BOUND).await?;
    ensure!(canary.hits() == 0, "the canary was reached before shutdown returned");
    resolver.release.notify_one();
    sleep(Duration::from_millis(500)).await;
    ensure!(
        canary.hits() == 0,
        "shutdown() returned after {took:?}, then the pending SOCKS5 CONNECT dialled the \
         destination ({} connection(s) at the canary)",
        canary.hits()
    );
    Ok(())
}
