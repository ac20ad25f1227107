//! Origins that misbehave (issue 16): one that resets mid-body, closes early, never answers,
//! or streams faster than a slow client reads (memory stays bounded), and the client side of
//! keep-alive and slow heads. proxyd must end each exchange cleanly and go on serving.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd_test_support::{HttpOrigin, ResponseHead, connect, read_response_head};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::admin_support::{closed_within, write_all};
use crate::faults::rss_kib;
use crate::support::{BOUND, Proxyd, curl, network};

/// What a [`RawOrigin`] does once it has read a request head.
#[derive(Debug, Clone, Copy)]
enum Misbehave {
    /// Announces 1 MiB, sends 64 KiB, and resets the connection (SO_LINGER 0).
    ResetMidBody,
    /// Announces 1 MiB, sends 64 KiB, and closes cleanly.
    CloseEarly,
    /// Starts a chunked body, sends one chunk, and closes without the last chunk.
    CloseMidChunked,
    /// Never answers (holds the connection for a minute).
    NeverAnswer,
}

/// A hand-written origin on `127.0.0.1:0` that misbehaves in one way on every connection.
struct RawOrigin {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RawOrigin {
    async fn start(how: Misbehave) -> anyhow::Result<RawOrigin> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("bind origin")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = misbehave(stream, how).await;
                });
            }
        });
        Ok(RawOrigin { addr, task })
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn misbehave(mut stream: TcpStream, how: Misbehave) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(BOUND, stream.read(&mut buf)).await??;
        ensure!(n > 0, "eof before the request head");
        head.extend_from_slice(&buf[..n]);
    }
    let part = vec![b'x'; 64 * 1024];
    match how {
        Misbehave::ResetMidBody | Misbehave::CloseEarly => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n").await?;
            stream.write_all(&part).await?;
            stream.flush().await?;
            if matches!(how, Misbehave::ResetMidBody) {
                rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO))?;
            }
        }
        Misbehave::CloseMidChunked => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await?;
            stream.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await?;
            stream.write_all(&part).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await?;
        }
        Misbehave::NeverAnswer => tokio::time::sleep(Duration::from_secs(60)).await,
    }
    Ok(())
}

/// An origin that breaks a body part-way (reset, early close, unfinished chunked body): the
/// client sees a failed transfer, never a complete-looking one, and proxyd serves the next
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_breaks_a_body_fails_that_transfer_only() -> anyhow::Result<()> {
    let healthy = HttpOrigin::start().await?;
    let proxyd = Proxyd::start(&network("allowed_domains = [\"localhost\"]"), &[]).await?;
    for how in [Misbehave::ResetMidBody, Misbehave::CloseEarly, Misbehave::CloseMidChunked] {
        let origin = RawOrigin::start(how).await?;
        let url = format!("http://localhost:{}/", origin.addr.port());
        let broken = curl(proxyd.addr(), &[&url]).await?;
        ensure!(broken.exit != 0, "{how:?}: curl saw a complete transfer: {broken:?}");
        ensure!(broken.body.len() < 1024 * 1024, "{how:?}: {} bytes", broken.body.len());
        let url = format!("http://localhost:{}/", healthy.addr().port());
        let next = curl(proxyd.addr(), &[&url]).await?;
        ensure!(next.code == 200, "{how:?}: the next request failed: {next:?}");
    }
    Ok(())
}

/// An origin that reads the request and never answers gets `504` once `response_timeout`
/// runs out, and proxyd goes on serving (issue 16, item 3; the fix is in the HTTP proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_gets_504() -> anyhow::Result<()> {
    let healthy = HttpOrigin::start().await?;
    let silent = RawOrigin::start(Misbehave::NeverAnswer).await?;
    let toml = network("allowed_domains = [\"localhost\"]\nresponse_timeout = \"2s\"");
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let url = format!("http://localhost:{}/", silent.addr.port());
    let response = curl(proxyd.addr(), &[&url]).await?;
    ensure!(response.code == 504, "expected 504 from a silent origin: {response:?}");
    let url = format!("http://localhost:{}/", healthy.addr().port());
    let next = curl(proxyd.addr(), &[&url]).await?;
    ensure!(next.code == 200, "{next:?}");
    Ok(())
}

/// A keep-alive client idle between requests for longer than `header_read_timeout` (but
/// within `idle_timeout`) keeps its connection, as the README says; a slow head is cut with
/// `408` (issue 16, item 3; the fix is in the HTTP proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_waits_idle_timeout_and_slow_heads_get_408() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let toml = network(
        "allowed_domains = [\"localhost\"]\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"",
    );
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let port = origin.addr().port();
    let request =
        format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    let mut client = connect(proxyd.addr()).await?;
    for n in 0..2 {
        write_all(&mut client, request.as_bytes()).await?;
        let head = read_response_head(&mut client).await.with_context(|| format!("request {n}"))?;
        ensure!(head.status == 200, "request {n}: {head:?}");
        let len: usize = head.header("content-length").context("content-length")?.parse()?;
        let mut body = vec![0; len.saturating_sub(head.rest.len())];
        timeout(BOUND, client.read_exact(&mut body)).await??;
        // Idle for twice header_read_timeout, well within idle_timeout: the phase under test.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let mut slow = connect(proxyd.addr()).await?;
    write_all(&mut slow, format!("GET http://localhost:{port}/ HTTP/1.1\r\n").as_bytes()).await?;
    let answer = closed_within(&mut slow, BOUND).await?;
    let head = ResponseHead::parse(&answer).with_context(|| format!("no answer: {answer:?}"))?;
    ensure!(head.status == 408, "a slow head got {head:?}");
    Ok(())
}

/// An origin streams 256 MiB as fast as it can to a client that reads 64 KiB every 50 ms:
/// proxyd's memory stays bounded (backpressure, no buffering of whole bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_origin_and_a_slow_client_keep_memory_bounded() -> anyhow::Result<()> {
    const BODY: u64 = 256 * 1024 * 1024;
    let origin = HttpOrigin::start().await?;
    let proxyd = Proxyd::start(&network("allowed_domains = [\"localhost\"]"), &[]).await?;
    let pid = proxyd.pid()?;
    let before = rss_kib(pid)?;
    let port = origin.addr().port();
    let mut client = connect(proxyd.addr()).await?;
    let request = format!(
        "GET http://localhost:{port}/big?n={BODY} HTTP/1.1\r\nHost: localhost:{port}\r\n\
         Connection: close\r\n\r\n"
    );
    write_all(&mut client, request.as_bytes()).await?;
    let head = read_response_head(&mut client).await?;
    ensure!(head.status == 200, "{head:?}");
    let mut read = head.rest.len() as u64;
    let mut buf = vec![0; 64 * 1024];
    let mut peak = before;
    for _ in 0..60 {
        read += timeout(BOUND, client.read(&mut buf)).await?? as u64;
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib(pid)?);
    }
    ensure!(read < BODY / 4, "the client read {read} bytes: it was not slow");
    let grown = peak.saturating_sub(before);
    ensure!(grown < 64 * 1024, "proxyd grew by {grown} KiB streaming to a slow client");
    Ok(())
}
