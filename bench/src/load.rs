//! The load tests. Each is bounded in time (a warm-up, a measured window, per-operation
//! timeouts) or in count, and talks only to loopback addresses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::client::{HttpConn, Via, open};
use super::origin::{BULK_ACK, BULK_CHUNK, BULK_DOWNLOAD, BULK_UPLOAD};

/// One request (or one tunnel) that takes longer than this counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// A bulk transfer slower than this (about 3.5 MB/s for 1 GiB) is abandoned.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Tunnels opened at once by the idle-tunnel test.
const OPEN_CONCURRENCY: usize = 128;

/// A warm-up, then the measured window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) warmup: Duration,
    pub(super) measure: Duration,
}

/// Operations per second over the window and their latency.
#[derive(Debug, Clone)]
pub(super) struct Rate {
    pub(super) per_second: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    pub(super) ops: u64,
    pub(super) errors: u64,
    /// Connections opened (HTTP test: a proxy that closes after each response reconnects).
    pub(super) connects: u64,
    /// Requests retried because a kept-alive connection turned out to be closed.
    pub(super) stale: u64,
    pub(super) first_error: Option<String>,
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 µs to 60 s, 3 significant figures.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What one worker saw.
struct Tally {
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    connects: u64,
    stale: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self { hist: histogram(), ops: 0, errors: 0, connects: 0, stale: 0, first_error: None }
    }

    fn error(&mut self, counted: bool, error: anyhow::Error) {
        if counted {
            self.errors += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(format!("{error:#}"));
        }
    }
}

async fn gather(mut set: JoinSet<Tally>, window: Window) -> Result<Rate> {
    let mut hist = histogram();
    let (mut ops, mut errors, mut connects, mut stale, mut first_error) = (0, 0, 0, 0, None);
    while let Some(tally) = set.join_next().await {
        let tally = tally.context("a load worker panicked")?;
        hist.add(&tally.hist).context("merging histograms")?;
        ops += tally.ops;
        errors += tally.errors;
        connects += tally.connects;
        stale += tally.stale;
        first_error = first_error.or(tally.first_error);
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    Ok(Rate {
        per_second: ops as f64 / window.measure.as_secs_f64(),
        p50_us: us(0.50),
        p99_us: us(0.99),
        ops,
        errors,
        connects,
        stale,
        first_error,
    })
}

/// `clients` keep-alive connections each sending `GET` requests back to back to the origin's
/// HTTP port: origin-form directly, absolute-form through an HTTP proxy. A connection that the
/// server closes is reopened, and the reconnect counts in that request's latency.
pub(super) async fn http_keepalive(
    via: Via,
    origin: SocketAddr,
    clients: usize,
    window: Window,
) -> Result<Rate> {
    let request: Arc<[u8]> = match via {
        Via::Http(_) => format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
        _ => format!("GET / HTTP/1.1\r\nHost: {origin}\r\n\r\n"),
    }
    .into_bytes()
    .into();
    // The proxy (or the origin) is what the client connects to for a plain request.
    let server = match via {
        Via::Http(proxy) => proxy,
        _ => origin,
    };
    let begin = Instant::now() + window.warmup;
    let end = begin + window.measure;
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let request = Arc::clone(&request);
        set.spawn(async move {
            let mut tally = Tally::new();
            let mut conn: Option<HttpConn> = None;
            while Instant::now() < end {
                let t0 = Instant::now();
                let result = tokio::time::timeout(OP_TIMEOUT, async {
                    // A reused connection that the server closed without saying so (tinyproxy
                    // answers HTTP/1.1 and then closes) fails at once: retry on a fresh one,
                    // as real clients do, inside the same timed request.
                    if let Some(c) = &mut conn {
                        match c.exchange(&request).await {
                            Ok(true) => return anyhow::Ok(()),
                            Ok(false) => {
                                conn = None;
                                return Ok(());
                            }
                            Err(_) => {
                                conn = None;
                                tally.stale += 1;
                            }
                        }
                    }
                    tally.connects += 1;
                    let mut fresh = HttpConn::new(open(Via::Direct, server).await?);
                    if fresh.exchange(&request).await? {
                        conn = Some(fresh);
                    }
                    Ok(())
                })
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("request timed out")));
                let t1 = Instant::now();
                match result {
                    Ok(()) if t0 >= begin && t1 <= end => {
                        tally.ops += 1;
                        let _ = tally.hist.record((t1 - t0).as_nanos() as u64);
                    }
                    Ok(()) => {}
                    Err(error) => {
                        conn = None;
                        tally.error(t0 >= begin, error);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    gather(set, window).await
}

/// The request that makes the origin answer and then close (see [`HttpConn::until_eof`]).
fn closing_request(origin: SocketAddr) -> Arc<[u8]> {
    format!("GET / HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n").into_bytes().into()
}

/// `workers` loops of: open a connection or tunnel to the origin's HTTP port, one request,
/// close (the origin closes first, the client follows).
pub(super) async fn connect_rate(
    via: Via,
    origin: SocketAddr,
    workers: usize,
    window: Window,
) -> Result<Rate> {
    let request = closing_request(origin);
    let begin = Instant::now() + window.warmup;
    let end = begin + window.measure;
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let request = Arc::clone(&request);
        set.spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < end {
                let t0 = Instant::now();
                let result = tokio::time::timeout(OP_TIMEOUT, async {
                    let mut conn = HttpConn::new(open(via, origin).await?);
                    conn.exchange(&request).await?;
                    conn.until_eof().await
                })
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("tunnel timed out")));
                let t1 = Instant::now();
                match result {
                    Ok(()) if t0 >= begin && t1 <= end => {
                        tally.ops += 1;
                        tally.connects += 1;
                        let _ = tally.hist.record((t1 - t0).as_nanos() as u64);
                    }
                    Ok(()) => {}
                    Err(error) => {
                        tally.error(t0 >= begin, error);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    gather(set, window).await
}

/// Which way the bulk bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Origin to client (the source).
    Down,
    /// Client to origin (the sink).
    Up,
}

/// Moves `total` bytes through `streams` tunnels at once (split evenly) and returns bytes per
/// second, timed from the first request to the last byte; the tunnels are opened beforehand.
pub(super) async fn throughput(
    via: Via,
    bulk: SocketAddr,
    streams: usize,
    total: u64,
    direction: Direction,
) -> Result<f64> {
    let mut tunnels = Vec::with_capacity(streams);
    for _ in 0..streams {
        let tunnel = tokio::time::timeout(OP_TIMEOUT, open(via, bulk))
            .await
            .context("opening a tunnel timed out")??;
        tunnels.push(tunnel);
    }
    let per_stream = total / streams as u64;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for (i, tunnel) in tunnels.into_iter().enumerate() {
        let len =
            if i + 1 == streams { total - per_stream * (streams as u64 - 1) } else { per_stream };
        set.spawn(transfer(tunnel, len, direction));
    }
    let all = async {
        while let Some(done) = set.join_next().await {
            done.context("a transfer task panicked")??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(TRANSFER_TIMEOUT, all).await.context("the transfer timed out")??;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn transfer(mut stream: TcpStream, len: u64, direction: Direction) -> Result<()> {
    let op = if direction == Direction::Down { BULK_DOWNLOAD } else { BULK_UPLOAD };
    let mut header = [0u8; 9];
    header[0] = op;
    header[1..].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&header).await?;
    let mut buf = vec![0u8; BULK_CHUNK];
    match direction {
        Direction::Down => {
            let mut got = 0u64;
            while got < len {
                let n = stream.read(&mut buf).await?;
                ensure!(n > 0, "the download ended after {got} of {len} bytes");
                got += n as u64;
            }
        }
        Direction::Up => {
            let mut left = len;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(BULK_CHUNK).min(BULK_CHUNK);
                stream.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            let mut ack = [0u8; 1];
            stream.read_exact(&mut ack).await.context("waiting for the upload's ack")?;
            ensure!(ack[0] == BULK_ACK, "the sink answered {:?}", ack[0]);
        }
    }
    Ok(())
}

/// Idle tunnels held open by [`idle_tunnels`].
pub(super) struct Idle {
    pub(super) tunnels: Vec<TcpStream>,
    pub(super) failures: u64,
    pub(super) first_error: Option<String>,
}

/// Opens up to `n` tunnels to `target` (which holds them without a word), `OPEN_CONCURRENCY`
/// at a time, and keeps them. Stops early after 200 failures or two minutes.
pub(super) async fn idle_tunnels(via: Via, target: SocketAddr, n: usize) -> Idle {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle = Idle { tunnels: Vec::with_capacity(n), failures: 0, first_error: None };
    let mut set = JoinSet::new();
    let mut launched = 0;
    loop {
        let stop = idle.failures >= 200 || Instant::now() >= deadline;
        while !stop && launched < n && set.len() < OPEN_CONCURRENCY {
            launched += 1;
            set.spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), open(via, target))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("opening the tunnel timed out")))
            });
        }
        let Some(done) = set.join_next().await else { break };
        match done {
            Ok(Ok(tunnel)) => idle.tunnels.push(tunnel),
            Ok(Err(error)) => {
                idle.failures += 1;
                idle.first_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Err(error) => {
                idle.failures += 1;
                idle.first_error.get_or_insert_with(|| format!("{error}"));
            }
        }
    }
    idle
}

/// Closes idle tunnels to the origin's HTTP port the way [`connect_rate`] does (one closing
/// request each, then wait for EOF), so that no ephemeral port is left in TIME_WAIT; a tunnel
/// that does not finish within the bound is simply dropped.
pub(super) async fn close_idle(tunnels: Vec<TcpStream>, origin: SocketAddr) {
    let request = closing_request(origin);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut set = JoinSet::new();
    let mut tunnels = tunnels.into_iter();
    loop {
        while set.len() < 4 * OPEN_CONCURRENCY {
            let Some(tunnel) = tunnels.next() else { break };
            let request = Arc::clone(&request);
            set.spawn(async move {
                let mut conn = HttpConn::new(tunnel);
                let close = async {
                    conn.exchange(&request).await?;
                    conn.until_eof().await
                };
                let _ = tokio::time::timeout(OP_TIMEOUT, close).await;
            });
        }
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    set.abort_all();
}

/// `clients` keep-alive clients send plain forwarded requests until `total` have been
/// answered (or ten minutes pass); returns how many were answered and how many failed.
pub(super) async fn http_soak(
    proxy: SocketAddr,
    origin: SocketAddr,
    clients: usize,
    total: u64,
) -> (u64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let request: Arc<[u8]> =
        format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\n\r\n").into_bytes().into();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (request, done, failed) =
            (Arc::clone(&request), Arc::clone(&done), Arc::clone(&failed));
        set.spawn(async move {
            let mut conn: Option<HttpConn> = None;
            while done.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                let exchange = async {
                    let c = match &mut conn {
                        Some(c) => c,
                        None => conn.insert(HttpConn::new(open(Via::Direct, proxy).await?)),
                    };
                    c.exchange(&request).await
                };
                match tokio::time::timeout(OP_TIMEOUT, exchange).await {
                    Ok(Ok(keep)) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        if !keep {
                            conn = None;
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Opens `n` connections to `proxy` that each send the start of a request head and then
/// nothing more (slowloris), `OPEN_CONCURRENCY` at a time; returns the ones that opened.
pub(super) async fn slowloris(proxy: SocketAddr, origin: SocketAddr, n: usize) -> Vec<TcpStream> {
    let head: Arc<[u8]> =
        format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\nX-Slow: ").into_bytes().into();
    let mut held = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut launched = 0;
    loop {
        while launched < n && set.len() < OPEN_CONCURRENCY {
            launched += 1;
            let head = Arc::clone(&head);
            set.spawn(async move {
                let mut stream =
                    tokio::time::timeout(OP_TIMEOUT, open(Via::Direct, proxy)).await.ok()?.ok()?;
                stream.write_all(&head).await.ok()?;
                Some(stream)
            });
        }
        let Some(done) = set.join_next().await else { break };
        if let Ok(Some(stream)) = done {
            held.push(stream);
        }
    }
    held
}
