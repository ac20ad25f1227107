//! Admission bugs reproduced from outside, with real listeners (issue 10): each test is an
//! attack or a lapse a client can cause today, and fails on the code it was written against.
//!
//! - a streaming request body outlives a switch to limited mode (plain and intercepted);
//! - one listener's finished drain cuts the busy tunnels of the other listener;
//! - an allowed Unix socket path retargeted (symlink, or a new socket) after the policy loaded;
//! - UDP datagrams still relayed after a reload removed their destination (decision cache);
//! - an intercepted TLS handshake that times out records no decision.
//!
//! Library proxies only (`NetworkProxy::builder()`), every port chosen by the kernel, every wait
//! bounded; nothing leaves `127.0.0.0/8`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use proxyd::{Config, Mode, NetworkProxy, Sources};
use proxyd_test_support::{
    BodyCounter, Canary, EchoTcp, HttpOrigin, ResponseHead, TestCa, UdpEcho, UnixOrigin,
    client_hello, connect, read_response_head, temp_dir, tls_connect,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, sleep, timeout};

use crate::admin_support::{
    CLOSE_WITHIN, Handle, closed_within, get, lib_config, open_socks_tunnel, open_tunnel,
    open_udp_relay, post, start_lib, write, write_all,
};
use crate::support::{BOUND, curl, network};

/// `network(extra)` with the SOCKS5 listener on (port 0), as TOML.
fn socks_toml(extra: &str) -> String {
    network(extra).replace("enable_socks5 = false", "enable_socks5 = true")
}

/// `socks_toml(extra)` as a validated config for the library.
fn socks_config(extra: &str) -> anyhow::Result<Config> {
    Config::from_toml_str(&socks_toml(extra), "lib.toml")
        .map_err(|e| anyhow::anyhow!("invalid test config:\n{e}"))
}

// ---------------------------------------------------------------------------------------------
// 1. A streaming body outlives the switch to limited mode.

/// The payload of every chunk the uploading client writes.
const CHUNK: &[u8] = b"0123456789abcdef";
/// Chunks written (and seen at the origin) before the switch.
const CHUNKS_BEFORE: u64 = 3;
/// Time between two chunks.
const CHUNK_EVERY: Duration = Duration::from_millis(100);
/// How long the client keeps writing once the switch has returned.
const WRITE_AFTER_SWITCH: Duration = Duration::from_millis(1500);
/// Time left for stray bytes to reach the origin after the client's last write.
const SETTLE: Duration = Duration::from_millis(300);

/// One chunk of a `Transfer-Encoding: chunked` body.
fn chunk() -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", CHUNK.len()).into_bytes();
    chunk.extend_from_slice(CHUNK);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// How a test switches the proxy to limited mode.
#[derive(Debug, Clone, Copy)]
enum Switch {
    Handle,
    AdminApi,
}

async fn switch_to_limited(handle: &Handle, via: Switch) -> anyhow::Result<()> {
    match via {
        Switch::Handle => handle.get().set_mode(Mode::Limited),
        Switch::AdminApi => {
            let reply =
                post(handle.admin(), "/mode", r#"{"mode":"limited"}"#).await?.expect(200)?;
            ensure!(reply["mode"] == "limited", "{reply}");
        }
    }
    ensure!(handle.get().mode() == Some(Mode::Limited), "the switch did not take");
    Ok(())
}

/// Writes the first [`CHUNKS_BEFORE`] chunks of an already started chunked body, each one
/// only after the origin received the previous one: when this returns, nothing is in flight.
async fn stream_until_the_switch<S>(client: &mut S, origin: &BodyCounter) -> anyhow::Result<()>
where
    S: AsyncWrite + Unpin,
{
    for n in 1..=CHUNKS_BEFORE {
        timeout(BOUND, client.write_all(&chunk())).await.context("write timed out")??;
        timeout(BOUND, client.flush()).await.context("flush timed out")??;
        origin
            .wait_for_body_bytes(n * CHUNK.len() as u64)
            .await
            .with_context(|| format!("chunk {n} never reached the origin in full mode"))?;
        sleep(CHUNK_EVERY).await;
    }
    Ok(())
}

/// After the switch returned (`at_switch` is the origin's count then): keeps writing a chunk
/// every [`CHUNK_EVERY`] for [`WRITE_AFTER_SWITCH`] unless the proxy ends the connection, and
/// checks that not one more body byte reached the origin and that the client saw a clear end.
async fn keep_streaming_after_the_switch<S>(
    client: &mut S,
    origin: &BodyCounter,
    at_switch: u64,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let before = CHUNKS_BEFORE * CHUNK.len() as u64;
    ensure!(
        at_switch == before,
        "the origin had {at_switch} body bytes at the switch, not {before}"
    );
    let started = Instant::now();
    let mut written = 0;
    let mut write_error = None;
    while started.elapsed() < WRITE_AFTER_SWITCH {
        sleep(CHUNK_EVERY).await;
        let write = async {
            client.write_all(&chunk()).await?;
            client.flush().await
        };
        match timeout(Duration::from_secs(2), write).await {
            Ok(Ok(())) => written += 1,
            // The proxy ended the connection: the clear end this test wants.
            Ok(Err(error)) => {
                write_error = Some(error.to_string());
                break;
            }
            Err(_) => {
                write_error = Some("write blocked".to_owned());
                break;
            }
        }
    }
    sleep(SETTLE).await;
    let after = origin.body_bytes() - at_switch;
    ensure!(
        after == 0,
        "the origin received {after} more body bytes after the switch to limited mode had \
         returned ({written} chunks of {} bytes written since, every one accepted by the proxy; \
         write error: {write_error:?})",
        CHUNK.len()
    );
    client_sees_an_end(client).await
}

/// The proxy must end the request: the connection closes (EOF or reset), or it answers 403.
async fn client_sees_an_end<S>(client: &mut S) -> anyhow::Result<()>
where
    S: AsyncRead + Unpin,
{
    let deadline = Instant::now() + CLOSE_WITHIN;
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let read = tokio::time::timeout_at(deadline, client.read(&mut buf)).await;
        let ended = match read {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                match ResponseHead::parse(&got) {
                    Ok(head) if head.status == 403 => return Ok(()),
                    Ok(head) => bail!("the proxy answered the cut upload with {head:?}"),
                    Err(_) => continue,
                }
            }
        };
        match (ended, got.is_empty()) {
            (true, true) => return Ok(()),
            (true, false) => bail!(
                "the connection ended after a partial answer: {:?}",
                String::from_utf8_lossy(&got)
            ),
            (false, _) => bail!(
                "neither closed nor answered 403 within {CLOSE_WITHIN:?} of the switch (got {:?})",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// `POST http://localhost:PORT/upload` through the proxy in full mode, chunked, a small chunk
/// every 100 ms; the proxy switches to limited mode part-way.
async fn streaming_post_across_a_switch(via: Switch) -> anyhow::Result<()> {
    let origin = BodyCounter::start().await?;
    let config = lib_config("allowed_domains = [\"localhost\"]\nidle_timeout = \"5s\"")?;
    let handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let port = origin.addr().port();
    let mut client = connect(handle.http()).await?;
    let head = format!(
        "POST http://localhost:{port}/upload HTTP/1.1\r\nHost: localhost:{port}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    write_all(&mut client, head.as_bytes()).await?;
    stream_until_the_switch(&mut client, &origin).await?;
    switch_to_limited(&handle, via).await?;
    let at_switch = origin.body_bytes();
    keep_streaming_after_the_switch(&mut client, &origin, at_switch).await
}

/// A client that starts a chunked `POST` in full mode keeps streaming its body to the origin
/// after `handle.set_mode(Mode::Limited)` has returned: limited mode must stop writes already
/// under way, not only new requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_stops_at_a_switch_to_limited_from_the_handle() -> anyhow::Result<()> {
    streaming_post_across_a_switch(Switch::Handle).await
}

/// The same upload, switched to limited through `POST /mode {"mode":"limited"}` on the admin
/// API: once the admin API has answered, no more of the body may reach the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_stops_at_a_switch_to_limited_from_the_admin_api() -> anyhow::Result<()> {
    streaming_post_across_a_switch(Switch::AdminApi).await
}

/// Inside an intercepted tunnel (`mode = "limited"`, `mitm = true`): the client opens the
/// tunnel and its TLS session in limited mode, the proxy goes to full, the client starts a
/// chunked `POST` (allowed in full mode), and the proxy goes back to limited while the body
/// streams. The rest of the body must not reach the HTTPS origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_inside_an_intercepted_tunnel_stops_at_a_switch_to_limited()
-> anyhow::Result<()> {
    let dir = temp_dir("proxyd-admission-mitm")?;
    let test_ca = TestCa::new()?;
    let origin = BodyCounter::start_tls(&test_ca, &["localhost"]).await?;
    let config = lib_config(
        "mode = \"limited\"\nmitm = true\nallowed_domains = [\"localhost\"]\nidle_timeout = \"5s\"",
    )?;
    let builder = NetworkProxy::builder().config(config).extra_ca_file(test_ca.write_pem(&dir)?);
    let handle = start_lib(builder).await?;
    let proxy_ca = handle.get().ca_cert_pem().context("mitm = true makes an interception ca")?;
    let port = origin.addr().port();

    let mut tcp = connect(handle.http()).await?;
    let authority = format!("localhost:{port}");
    write_all(
        &mut tcp,
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
    )
    .await?;
    let head = read_response_head(&mut tcp).await?;
    ensure!(head.status == 200 && head.rest.is_empty(), "CONNECT in limited mode: {head:?}");
    let mut client = tls_connect(tcp, &proxy_ca, "localhost")
        .await
        .context("tls to the proxy, trusting its interception ca")?;

    handle.get().set_mode(Mode::Full);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/octet-stream\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    timeout(BOUND, client.write_all(head.as_bytes())).await.context("write timed out")??;
    stream_until_the_switch(&mut client, &origin).await?;
    switch_to_limited(&handle, Switch::Handle).await?;
    let at_switch = origin.body_bytes();
    keep_streaming_after_the_switch(&mut client, &origin, at_switch).await?;
    ensure!(origin.heads() == 1, "{} requests reached the origin", origin.heads());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Shutdown: one listener's drain cuts the other's tunnels.

const DRAIN: Duration = Duration::from_secs(3);
/// When a busy tunnel must still carry bytes after shutdown began (well inside the drain).
const STILL_ALIVE_AT: Duration = Duration::from_millis(1500);
/// How late after the drain deadline the tunnel may still be open.
const DRAIN_MARGIN: Duration = Duration::from_secs(2);

/// One echo round trip, bounded by a short timeout so a stalled tunnel fails fast.
async fn round_trip(tunnel: &mut TcpStream, n: u32) -> anyhow::Result<()> {
    let bytes = format!("ping {n};").into_bytes();
    let trip = async {
        tunnel.write_all(&bytes).await?;
        let mut echoed = vec![0; bytes.len()];
        tunnel.read_exact(&mut echoed).await?;
        anyhow::Ok(echoed)
    };
    let echoed = timeout(Duration::from_secs(2), trip).await.context("round trip timed out")??;
    ensure!(echoed == bytes, "expected the echo of {bytes:?}, got {echoed:?}");
    Ok(())
}

/// Shuts `handle` down while `tunnel` (to an echo server) carries a round trip every 100 ms:
/// the tunnel must carry bytes at [`STILL_ALIVE_AT`], be closed by the drain deadline (plus a
/// margin), and shutdown must return by then too.
async fn busy_tunnel_survives_until_the_drain_deadline(
    handle: Handle,
    mut tunnel: TcpStream,
    which: &str,
) -> anyhow::Result<()> {
    let mut handle = handle;
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { handle.shutdown_within(DRAIN + CLOSE_WITHIN).await });
    let mut n = 0;
    let closed_at = loop {
        n += 1;
        let result = round_trip(&mut tunnel, n).await;
        let elapsed = started.elapsed();
        match result {
            Ok(()) if elapsed > DRAIN + DRAIN_MARGIN => {
                bail!("the {which} tunnel still carries bytes {elapsed:?} after shutdown began")
            }
            Ok(()) => {}
            Err(error) if elapsed < STILL_ALIVE_AT => bail!(
                "the busy {which} tunnel was cut {elapsed:?} after shutdown began, before \
                 {STILL_ALIVE_AT:?} (drain_timeout is {DRAIN:?}; the other listener is idle): \
                 round trip {n}: {error:#}"
            ),
            Err(_) => break elapsed,
        }
        sleep(Duration::from_millis(100)).await;
    };
    let took = timeout(DRAIN + CLOSE_WITHIN + BOUND, shutdown)
        .await
        .context("shutdown did not return")?
        .context("shutdown task")??;
    ensure!(took < DRAIN + CLOSE_WITHIN, "shutdown took {took:?}");
    ensure!(closed_at >= STILL_ALIVE_AT, "closed at {closed_at:?}");
    Ok(())
}

/// A busy `CONNECT` tunnel on the HTTP listener, SOCKS5 enabled and idle, `drain_timeout =
/// "3s"`: today the idle SOCKS5 listener finishes its drain at once and closes every tunnel
/// engine-wide, so the HTTP tunnel is cut about a millisecond into the shutdown instead of at
/// the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_a_busy_http_tunnel_until_the_drain_deadline() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let config = socks_config("allowed_domains = [\"localhost\"]\ndrain_timeout = \"3s\"")?;
    let handle = start_lib(NetworkProxy::builder().config(config)).await?;
    ensure!(handle.get().socks_addr().is_some(), "socks5 is enabled");
    let tunnel = open_tunnel(handle.http(), &format!("localhost:{}", echo.addr().port())).await?;
    busy_tunnel_survives_until_the_drain_deadline(handle, tunnel, "http").await
}

/// The other way round: a busy SOCKS5 `CONNECT` tunnel and an idle HTTP listener. The HTTP
/// listener's empty drain must not close the SOCKS5 tunnel before the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_a_busy_socks5_tunnel_until_the_drain_deadline() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let config = socks_config("allowed_domains = [\"localhost\"]\ndrain_timeout = \"3s\"")?;
    let handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;
    let tunnel = open_socks_tunnel(socks, "localhost", echo.addr().port()).await?;
    busy_tunnel_survives_until_the_drain_deadline(handle, tunnel, "socks5").await
}

// ---------------------------------------------------------------------------------------------
// 3. An allowed Unix socket path retargeted after the policy loaded.

/// A proxy allowing `dir/agent.sock`, where an origin listens; checks that it is reachable.
async fn unix_proxy(dir: &Path) -> anyhow::Result<(UnixOrigin, Handle)> {
    let agent = UnixOrigin::start(dir.join("agent.sock")).await?;
    let path = agent.path().display().to_string();
    let config = lib_config(&format!("allow_unix_sockets = [{path:?}]"))?;
    let handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let response = curl_unix(&handle, agent.path()).await?;
    ensure!(response.code == 200, "the allowed socket: {response:?}");
    ensure!(response.body_text() == "origin GET /agent\n", "{response:?}");
    ensure!(agent.hits() == 1, "the agent socket saw {} requests", agent.hits());
    Ok((agent, handle))
}

/// `curl -x http://PROXY --header 'x-unix-socket: PATH' http://localhost/agent`.
async fn curl_unix(handle: &Handle, path: &Path) -> anyhow::Result<crate::support::Curl> {
    let header = format!("x-unix-socket: {}", path.display());
    curl(handle.http(), &["--header", &header, "http://localhost/agent"]).await
}

/// `agent.sock` is allowed and reached; then, while proxyd runs, it is replaced by a symlink to
/// another socket. The policy allowed the socket that was there when it loaded: the request
/// must be refused (403), and the other socket never reached. Today the path is canonicalised
/// again per request, so the symlink's target is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_path_retargeted_by_a_symlink_is_refused() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-admission-unix")?;
    let (agent, handle) = unix_proxy(&dir).await?;
    let other = UnixOrigin::start(dir.join("other.sock")).await?;
    std::fs::remove_file(agent.path()).context("remove agent.sock")?;
    std::os::unix::fs::symlink(other.path(), agent.path()).context("symlink agent.sock")?;

    let response = curl_unix(&handle, agent.path()).await?;
    ensure!(
        other.hits() == 0,
        "the symlink's target (another socket) was reached through the allowed path: \
         {response:?}"
    );
    ensure!(response.code == 403, "expected 403 for the retargeted path, got {response:?}");
    ensure!(agent.hits() == 1);
    Ok(())
}

/// `agent.sock` is allowed and reached; then the file is removed and a different server binds
/// a new socket at the same path. It is not the socket the policy allowed: 403, and the new
/// server is never reached. Today the same path is all that is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_rebound_at_the_allowed_path_is_refused() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-admission-unix")?;
    let (agent, handle) = unix_proxy(&dir).await?;
    std::fs::remove_file(agent.path()).context("remove agent.sock")?;
    let impostor = UnixOrigin::start(agent.path()).await.context("bind a new agent.sock")?;

    let response = curl_unix(&handle, agent.path()).await?;
    ensure!(
        impostor.hits() == 0,
        "a new socket bound at the allowed path was reached: {response:?}"
    );
    ensure!(response.code == 403, "expected 403 for the new socket, got {response:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. UDP datagrams after a reload or a switch to limited.

/// A client socket and its association.
struct Udp {
    socket: UdpSocket,
    relay: SocketAddr,
    _control: TcpStream,
}

impl Udp {
    #[expect(
        clippy::disallowed_methods,
        reason = "the test's SOCKS5 client socket, not proxyd's egress"
    )]
    async fn open(socks: SocketAddr) -> anyhow::Result<Udp> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let (control, relay) = open_udp_relay(socks, socket.local_addr()?).await?;
        Ok(Udp { socket, relay, _control: control })
    }

    /// Sends `payload` to `to` through the relay (RFC 1928 §7 header, IPv4).
    #[expect(
        clippy::disallowed_methods,
        reason = "the test's SOCKS5 client socket, not proxyd's egress"
    )]
    async fn send(&self, to: SocketAddr, payload: &[u8]) -> anyhow::Result<()> {
        let SocketAddr::V4(to) = to else { bail!("ipv4 only: {to}") };
        let mut datagram = vec![0, 0, 0, 1];
        datagram.extend_from_slice(&to.ip().octets());
        datagram.extend_from_slice(&to.port().to_be_bytes());
        datagram.extend_from_slice(payload);
        timeout(BOUND, self.socket.send_to(&datagram, self.relay)).await??;
        Ok(())
    }

    /// The payload of the next relayed datagram, or `None` after `within`.
    async fn recv(&self, within: Duration) -> anyhow::Result<Option<Vec<u8>>> {
        let mut buf = vec![0; 64 * 1024];
        match timeout(within, self.socket.recv_from(&mut buf)).await {
            Err(_) => Ok(None),
            Ok(received) => {
                let (n, _) = received?;
                ensure!(n >= 10 && buf[3] == 1, "not an ipv4 socks5 udp reply: {:?}", &buf[..n]);
                Ok(Some(buf[10..n].to_vec()))
            }
        }
    }

    /// Sends `payload` to the echo and checks that its echo comes back.
    async fn echoed(&self, echo: &UdpEcho, payload: &[u8]) -> anyhow::Result<()> {
        self.send(echo.addr(), payload).await?;
        let reply = self.recv(BOUND).await?.context("no echo through the association")?;
        ensure!(reply == payload, "expected the echo of {payload:?}, got {reply:?}");
        Ok(())
    }

    /// Sends `count` datagrams `after-N` to the echo, 100 ms apart, then waits 1.5 s for any
    /// reply; checks that none reached the echo and none came back.
    async fn none_delivered(&self, echo: &UdpEcho, count: u32, what: &str) -> anyhow::Result<()> {
        for n in 1..=count {
            // A closed association may make a send fail: that is not a delivery.
            let _ = self.send(echo.addr(), format!("after-{n}").as_bytes()).await;
            sleep(Duration::from_millis(100)).await;
        }
        let reply = self.recv(Duration::from_millis(1500)).await.unwrap_or(None);
        let delivered: Vec<String> = echo
            .received()
            .iter()
            .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
            .filter(|data| data.starts_with("after-"))
            .collect();
        ensure!(
            delivered.is_empty() && reply.is_none(),
            "{} of {count} datagrams sent right after {what} reached the echo ({delivered:?}); \
             a reply came back: {:?}",
            delivered.len(),
            reply.map(|r| String::from_utf8_lossy(&r).into_owned())
        );
        Ok(())
    }
}

/// The config file for the UDP reload test: SOCKS5 (UDP on by default) and `allowed`.
fn udp_toml(allowed: &str) -> String {
    socks_toml(&format!("allowed_domains = [{allowed}]"))
}

/// An association sends to an allowlisted UDP echo (`127.0.0.1`); a reload removes it from the
/// allowlist. Right after `handle.reload()` returned, datagrams to it must be dropped. Today
/// the association's per-destination decision cache keeps relaying them for up to 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_to_a_destination_a_reload_removed_are_dropped() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let dir = temp_dir("proxyd-admission-udp")?;
    let file = dir.join("config.toml");
    write(&file, &udp_toml("\"127.0.0.1\""))?;
    let sources = Sources { files: vec![file.clone()], ..Sources::default() };
    let handle = start_lib(NetworkProxy::builder().sources(sources)).await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;
    let udp = Udp::open(socks).await?;
    udp.echoed(&echo, b"before-1").await?;
    udp.echoed(&echo, b"before-2").await?;

    write(&file, &udp_toml("\"unrelated.test\""))?;
    let pending = timeout(BOUND, handle.get().reload()).await.context("reload hung")?;
    ensure!(pending == Ok(vec![]), "reload: {pending:?}");
    let patterns = get(handle.admin(), "/patterns").await?.expect(200)?;
    ensure!(patterns["allowed"] == serde_json::json!(["unrelated.test"]), "{patterns}");
    udp.none_delivered(&echo, 5, "the reload removed 127.0.0.1").await
}

/// The same association across `set_mode(Mode::Limited)`: limited mode refuses every SOCKS5
/// command, so the association must close or drop everything from the moment the switch
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_after_a_switch_to_limited_are_dropped() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let handle = start_lib(
        NetworkProxy::builder().config(socks_config("allowed_domains = [\"127.0.0.1\"]")?),
    )
    .await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;
    let udp = Udp::open(socks).await?;
    udp.echoed(&echo, b"before-1").await?;
    handle.get().set_mode(Mode::Limited);
    udp.none_delivered(&echo, 5, "the switch to limited mode").await
}

// ---------------------------------------------------------------------------------------------
// 5. An intercepted handshake that times out records no decision.

/// `proxyd_decisions_total` samples for `protocol`, as `(line, count)`.
pub(crate) fn decisions(metrics: &str, protocol: &str) -> Vec<(String, u64)> {
    let label = format!("protocol=\"{protocol}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("proxyd_decisions_total{") && line.contains(&label))
        .map(|line| {
            let count = line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            (line.to_owned(), count)
        })
        .collect()
}

/// Limited mode with interception, `header_read_timeout = "1s"`: a client opens a `CONNECT`
/// to an allowed host (200), sends a ClientHello and never answers the proxy's handshake.
/// When the handshake times out, exactly one decision must be recorded for the attempt, with
/// a failure reason (`mitm_handshake_timeout`), so the abandoned attempt shows in `/metrics`
/// and the logs. Today nothing is recorded (a ClientHello that never comes is recorded as
/// `mitm_hello_timeout`; a handshake that stalls after it is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intercepted_handshake_that_times_out_is_recorded() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let config = lib_config(
        "mode = \"limited\"\nmitm = true\nallowed_domains = [\"localhost\"]\n\
         header_read_timeout = \"1s\"",
    )?;
    let handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let authority = format!("localhost:{}", canary.addr().port());
    let mut tunnel = connect(handle.http()).await?;
    write_all(
        &mut tunnel,
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
    )
    .await?;
    let head = read_response_head(&mut tunnel).await?;
    ensure!(head.status == 200 && head.rest.is_empty(), "CONNECT in limited mode: {head:?}");

    // The ClientHello, then silence: the proxy answers with its flight and waits in vain.
    write_all(&mut tunnel, &client_hello("localhost")?).await?;
    let started = Instant::now();
    let answer = closed_within(&mut tunnel, Duration::from_secs(1) + CLOSE_WITHIN)
        .await
        .context("the stalled handshake was never closed")?;
    ensure!(
        answer.first() == Some(&0x16),
        "the proxy did not answer the ClientHello with a handshake record: {answer:?}"
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the 1s handshake timeout",
        started.elapsed()
    );

    // The attempt is settled when the handshake ends: one event for the CONNECT, the
    // failure that ended it, and no "allowed" before it. Allow the sink a moment anyway.
    let deadline = Instant::now() + Duration::from_secs(3);
    let connects = loop {
        let metrics = get(handle.admin(), "/metrics").await?.body;
        let connects = decisions(&metrics, "http-connect");
        if !connects.is_empty() || Instant::now() >= deadline {
            break connects;
        }
        sleep(Duration::from_millis(100)).await;
    };
    let total: u64 = connects.iter().map(|(_, n)| n).sum();
    ensure!(
        total == 1,
        "expected exactly one decision for the abandoned handshake's CONNECT, got {total}: \
         {connects:?}"
    );
    let (line, _) = &connects[0];
    ensure!(
        line.contains("reason=\"mitm_handshake_timeout\"") && !line.contains("decision=\"allow\""),
        "the handshake timeout is not recorded as a failure with reason \
         mitm_handshake_timeout: {line}"
    );
    canary.assert_untouched();
    Ok(())
}

/// Issue 11: 650 connections from one client, each asking for a name whose DNS never answers
/// (`dns_timeout = "5s"`), must not make another client's name-based request fail: it is
/// answered while every flooding request is still waiting for DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_flood_from_one_client_leaves_another_answering() -> anyhow::Result<()> {
    let dns = proxyd_test_support::DnsServer::start(&[("ok.test", Ipv4Addr::LOCALHOST)], &["slow"])
        .await?;
    let origin = HttpOrigin::start().await?;
    let config =
        lib_config("allowed_domains = [\"*\"]\nallow_local_binding = true\ndns_timeout = \"5s\"")?;
    let resolver = std::sync::Arc::new(proxyd::SystemResolver::with_nameservers(&[dns.addr()]));
    let handle = start_lib(NetworkProxy::builder().config(config).resolver(resolver)).await?;
    let mut flood = Vec::new();
    for n in 0..650 {
        let mut stream = connect(handle.http()).await?;
        let head = format!("GET http://slow-{n}.test/ HTTP/1.1\r\nHost: slow-{n}.test\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        flood.push(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while dns.distinct_names("slow") < proxyd::CLIENT_SHARE && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    // Another client: the same machine, another loopback address.
    let url = format!("http://ok.test:{}/", origin.addr().port());
    let other = curl(handle.http(), &["--interface", "127.0.0.2", &url]).await?;
    ensure!(other.code == 200, "the other client's request failed during the flood: {other:?}");
    // Every flooding request is still waiting: none has been answered.
    for stream in flood.iter_mut().take(50) {
        let mut byte = [0u8; 1];
        let read = timeout(Duration::from_millis(1), stream.read(&mut byte)).await;
        ensure!(read.is_err(), "a flooding request was answered before the other client's");
    }
    let asked = dns.distinct_names("slow");
    ensure!(asked <= proxyd::CLIENT_SHARE, "one client had {asked} lookups at the nameserver");
    Ok(())
}
