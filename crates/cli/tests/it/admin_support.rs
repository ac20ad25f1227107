//! Helpers for the admin API, library and `exec` tests: real `curl` against the admin
//! listener, listener addresses read from the binary's start-up log, raw `CONNECT` and SOCKS5
//! tunnels, and a bounded wait for a tunnel's end. Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use proxyd::{Config, NetworkProxyBuilder, NetworkProxyHandle};
use proxyd_test_support::{ResponseHead, connect, read_response_head, temp_dir};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

use crate::support::{BOUND, Proxyd, network};

/// The real curl.
pub(crate) const CURL: &str = "/usr/bin/curl";

/// How long a connection proxyd should close may stay open after the event that closes it.
pub(crate) const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// One admin API answer, as curl saw it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) head: ResponseHead,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("body is not json: {self:?}"))
    }

    /// Asserts `status` and a JSON body; returns the body.
    pub(crate) fn expect(&self, status: u16) -> anyhow::Result<Value> {
        ensure!(self.status == status, "expected {status}, got {self:?}");
        ensure!(
            self.head.header("content-type") == Some("application/json"),
            "expected a json answer: {self:?}"
        );
        self.json()
    }

    /// Asserts `status` with an error body `{"status":"error","message":…}` containing `what`.
    pub(crate) fn expect_error(&self, status: u16, what: &str) -> anyhow::Result<Value> {
        let body = self.expect(status)?;
        ensure!(body["status"] == "error", "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        ensure!(message.contains(what), "expected {what:?} in the message: {body}");
        Ok(body)
    }
}

/// Runs `curl -q -sS --max-time 10 -D HEAD -o BODY ARGS... http://ADMIN{path}` with a clean
/// environment (no proxy variables) and returns what came back.
pub(crate) async fn request(addr: SocketAddr, path: &str, args: &[&str]) -> anyhow::Result<Reply> {
    let dir = temp_dir("proxyd-admin-curl")?;
    let (head_file, body_file) = (dir.join("head"), dir.join("body"));
    let url = format!("http://{addr}{path}");
    let output = curl_command()
        .args(["-q", "-sS", "--max-time", "10", "-D"])
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file)
        .args(args)
        .arg(&url)
        .output();
    let output = timeout(BOUND + Duration::from_secs(5), output)
        .await
        .with_context(|| format!("curl {args:?} {url} did not exit"))?
        .context("run curl")?;
    ensure!(
        output.status.success(),
        "curl {args:?} {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let head = ResponseHead::parse(&std::fs::read(&head_file).context("read curl head")?)?;
    let body = String::from_utf8_lossy(&std::fs::read(&body_file).unwrap_or_default()).into_owned();
    Ok(Reply { status: head.status, head, body })
}

/// `GET path`.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
    request(addr, path, &[]).await
}

/// `POST path` with `body`.
pub(crate) async fn post(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<Reply> {
    request(addr, path, &["-X", "POST", "--data-raw", body]).await
}

/// curl with an empty environment and no input, killed if the test gives up on it.
pub(crate) fn curl_command() -> Command {
    let mut command = Command::new(CURL);
    command.env_clear().stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// Runs exactly `curl -X POST http://ADMIN/mode -d '{"mode":"MODE"}'` (SPEC §8.3: it must
/// work as written) and checks its answer on stdout.
pub(crate) async fn curl_switch_mode(admin: SocketAddr, mode: &str) -> anyhow::Result<()> {
    let body = format!(r#"{{"mode":"{mode}"}}"#);
    let output =
        curl_command().args(["-X", "POST", &format!("http://{admin}/mode"), "-d", &body]).output();
    let output = timeout(BOUND, output).await.context("curl did not exit")?.context("run curl")?;
    ensure!(output.status.success(), "curl failed: {output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("curl printed {:?}", String::from_utf8_lossy(&output.stdout)))?;
    ensure!(answer == serde_json::json!({"status": "ok", "mode": mode}), "{answer}");
    Ok(())
}

/// The address the binary logged for `listener` (`http`, `socks5`, `admin`).
pub(crate) async fn logged_addr(proxyd: &Proxyd, listener: &str) -> anyhow::Result<SocketAddr> {
    let event = proxyd
        .wait_for_event(&format!("the {listener} listener's address"), |event| {
            event["fields"]["message"] == "listening" && event["fields"]["listener"] == listener
        })
        .await?;
    let addr = event["fields"]["addr"].as_str().with_context(|| format!("no addr in {event}"))?;
    addr.parse().with_context(|| format!("bad address in {event}"))
}

/// `network(extra)` as a validated config for the library.
pub(crate) fn lib_config(extra: &str) -> anyhow::Result<Config> {
    Config::from_toml_str(&network(extra), "lib.toml")
        .map_err(|errors| anyhow::anyhow!("invalid test config:\n{errors}"))
}

/// Builds and runs a library proxy.
pub(crate) async fn start_lib(builder: NetworkProxyBuilder) -> anyhow::Result<Handle> {
    let proxy = timeout(BOUND, builder.build()).await.context("build timed out")??;
    let handle = timeout(BOUND, proxy.run()).await.context("run timed out")??;
    Ok(Handle(Some(handle)))
}

/// A running library proxy; shut down (bounded) when the test is done with it.
pub(crate) struct Handle(Option<NetworkProxyHandle>);

impl Handle {
    pub(crate) fn get(&self) -> &NetworkProxyHandle {
        self.0.as_ref().expect("the handle is only taken by shutdown")
    }

    pub(crate) fn http(&self) -> SocketAddr {
        self.get().http_addr().expect("an enabled proxy has an http address")
    }

    pub(crate) fn admin(&self) -> SocketAddr {
        self.get().admin_addr().expect("an enabled proxy has an admin address")
    }

    /// Shuts down within `bound`, and returns how long it took.
    pub(crate) async fn shutdown_within(&mut self, bound: Duration) -> anyhow::Result<Duration> {
        let handle = self.0.take().context("already shut down")?;
        let started = tokio::time::Instant::now();
        timeout(bound, handle.shutdown())
            .await
            .with_context(|| format!("shutdown took longer than {bound:?}"))??;
        Ok(started.elapsed())
    }
}

impl From<NetworkProxyHandle> for Handle {
    fn from(handle: NetworkProxyHandle) -> Handle {
        Handle(Some(handle))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A test that failed early: stop the listeners in the background.
        if let Some(handle) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = timeout(BOUND, handle.shutdown()).await;
            });
        }
    }
}

/// Writes `text` to `path`.
pub(crate) fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Opens a `CONNECT` tunnel to `authority` through the HTTP proxy at `proxy` and checks that
/// it carries bytes both ways (the upstream must be an echo server).
pub(crate) async fn open_tunnel(proxy: SocketAddr, authority: &str) -> anyhow::Result<TcpStream> {
    let mut stream = connect(proxy).await?;
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    write_all(&mut stream, request.as_bytes()).await?;
    let head = read_response_head(&mut stream).await?;
    ensure!(head.status == 200 && head.rest.is_empty(), "CONNECT {authority}: {head:?}");
    echo_round_trip(&mut stream, b"ping").await?;
    Ok(stream)
}

/// Sends a `CONNECT` and returns the answer's head (for refusals).
pub(crate) async fn connect_head(
    proxy: SocketAddr,
    authority: &str,
) -> anyhow::Result<ResponseHead> {
    let mut stream = connect(proxy).await?;
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    write_all(&mut stream, request.as_bytes()).await?;
    read_response_head(&mut stream).await
}

/// Opens a SOCKS5 `CONNECT` to `host:port` (domain-name address type) without
/// authentication, and checks that it carries bytes both ways.
pub(crate) async fn open_socks_tunnel(
    socks: SocketAddr,
    host: &str,
    port: u16,
) -> anyhow::Result<TcpStream> {
    let mut address = vec![3, u8::try_from(host.len())?];
    address.extend_from_slice(host.as_bytes());
    address.extend_from_slice(&port.to_be_bytes());
    let mut stream = socks_request(socks, 1, &address).await?;
    echo_round_trip(&mut stream, b"socks").await?;
    Ok(stream)
}

/// Opens a SOCKS5 `UDP ASSOCIATE` and returns its control connection.
pub(crate) async fn open_udp_association(socks: SocketAddr) -> anyhow::Result<TcpStream> {
    socks_request(socks, 3, &[1, 0, 0, 0, 0, 0, 0]).await
}

/// Opens a SOCKS5 `UDP ASSOCIATE` naming `client` (an IPv4 address) as the datagram source,
/// and returns its control connection and the relay address from the reply.
pub(crate) async fn open_udp_relay(
    socks: SocketAddr,
    client: SocketAddr,
) -> anyhow::Result<(TcpStream, SocketAddr)> {
    let SocketAddr::V4(client) = client else { bail!("an ipv4 client address: {client}") };
    let mut address = vec![1];
    address.extend_from_slice(&client.ip().octets());
    address.extend_from_slice(&client.port().to_be_bytes());
    let (stream, bound) = socks_request_bound(socks, 3, &address).await?;
    let relay = bound.context("the udp associate reply names no ip address")?;
    Ok((stream, relay))
}

/// Negotiates no authentication, sends `command` with `address` (type byte first), and reads
/// a success reply.
async fn socks_request(
    socks: SocketAddr,
    command: u8,
    address: &[u8],
) -> anyhow::Result<TcpStream> {
    Ok(socks_request_bound(socks, command, address).await?.0)
}

/// [`socks_request`], also returning the reply's bound address when it is an IP address.
async fn socks_request_bound(
    socks: SocketAddr,
    command: u8,
    address: &[u8],
) -> anyhow::Result<(TcpStream, Option<SocketAddr>)> {
    let mut stream = connect(socks).await?;
    write_all(&mut stream, &[5, 1, 0]).await?;
    ensure!(read_exact(&mut stream, 2).await? == [5, 0], "no-auth method refused");
    let mut request = vec![5, command, 0];
    request.extend_from_slice(address);
    write_all(&mut stream, &request).await?;
    let reply = read_exact(&mut stream, 4).await?;
    ensure!(reply[..2] == [5, 0], "socks5 command {command} refused: {reply:?}");
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => usize::from(read_exact(&mut stream, 1).await?[0]) + 2,
        other => bail!("bad address type {other} in the socks5 reply"),
    };
    let bound = read_exact(&mut stream, rest).await?;
    let port = |b: &[u8]| u16::from_be_bytes([b[b.len() - 2], b[b.len() - 1]]);
    let bound = match reply[3] {
        1 => {
            let ip = std::net::Ipv4Addr::new(bound[0], bound[1], bound[2], bound[3]);
            Some(SocketAddr::from((ip, port(&bound))))
        }
        4 => {
            let octets: [u8; 16] = bound[..16].try_into()?;
            Some(SocketAddr::from((std::net::Ipv6Addr::from(octets), port(&bound))))
        }
        _ => None,
    };
    Ok((stream, bound))
}

/// Writes `bytes` and reads the same bytes back.
pub(crate) async fn echo_round_trip(stream: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    write_all(stream, bytes).await?;
    let echoed = read_exact(stream, bytes.len()).await?;
    ensure!(echoed == bytes, "expected the echo of {bytes:?}, got {echoed:?}");
    Ok(())
}

pub(crate) async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    timeout(BOUND, stream.write_all(bytes)).await.context("write timed out")?.context("write")
}

pub(crate) async fn read_exact(stream: &mut TcpStream, n: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    timeout(BOUND, stream.read_exact(&mut buf)).await.context("read timed out")?.context("read")?;
    Ok(buf)
}

/// Waits (at most `within`) until the peer closes `stream`, and returns the bytes that came
/// before the end. A reset counts as the end too.
pub(crate) async fn closed_within(
    stream: &mut TcpStream,
    within: Duration,
) -> anyhow::Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => bail!("still open after {within:?} (read {out:?})"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}
