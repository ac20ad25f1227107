//! The tunnel relay over real loopback sockets: client ⇄ (a | relay | b) ⇄ upstream. Every
//! behaviour is checked on both paths: `splice(2)` between two TCP sockets (Linux) and the
//! copy that TLS and other streams take.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proxyd_net::{Relay, RelayEnd, RelayPath, Side, Spliced};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{BOUND, V4, bounded, connect, listener};

/// The paths under test on this system.
pub(crate) const PATHS: &[RelayPath] = &[
    #[cfg(target_os = "linux")]
    RelayPath::ZeroCopy,
    RelayPath::Copy,
];

/// Two connected sockets on loopback.
pub(crate) async fn pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = listener(V4).await?;
    let (client, accepted) =
        bounded(async { tokio::try_join!(connect(listener.local_addr()?), listener.accept()) })
            .await??;
    Ok((client, accepted.0))
}

/// The side `path` relays `stream` on.
fn side(path: RelayPath, stream: TcpStream, pending: &[u8]) -> Side {
    match path {
        RelayPath::ZeroCopy => Side::tcp_with_pending(stream, pending.to_vec()),
        RelayPath::Copy => {
            assert!(pending.is_empty(), "the copy path's streams carry their own buffer");
            Side::io(stream)
        }
    }
}

struct Tunnel {
    client: TcpStream,
    upstream: TcpStream,
    spliced: JoinHandle<Spliced>,
}

/// A client and an upstream joined by the relay, which runs in its own task.
async fn tunnel(
    path: RelayPath,
    idle_timeout: Duration,
    close: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Tunnel> {
    tunnel_on(Arc::new(Relay::new()), path, (b"", b""), idle_timeout, close).await
}

async fn tunnel_on(
    relay: Arc<Relay>,
    path: RelayPath,
    (a_pending, b_pending): (&[u8], &[u8]),
    idle_timeout: Duration,
    close: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Tunnel> {
    let (client, a) = pair().await?;
    let (b, upstream) = pair().await?;
    let (a, b) = (side(path, a, a_pending), side(path, b, b_pending));
    let spliced = tokio::spawn(async move { relay.splice(a, b, idle_timeout, close).await });
    Ok(Tunnel { client, upstream, spliced })
}

/// The counts of a finished relay, which must have ended as `want` on `path`.
async fn finished(
    spliced: JoinHandle<Spliced>,
    path: RelayPath,
    want: fn(&RelayEnd) -> bool,
) -> anyhow::Result<(u64, u64)> {
    let spliced = bounded(spliced).await??;
    anyhow::ensure!(want(&spliced.end), "{path:?}: ended as {:?}", spliced.end);
    anyhow::ensure!(spliced.path == path, "{path:?} relayed as {:?}", spliced.path);
    Ok((spliced.a_to_b, spliced.b_to_a))
}

fn done(end: &RelayEnd) -> bool {
    matches!(end, RelayEnd::Done)
}

fn data(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn copies_both_ways_and_counts_bytes() -> anyhow::Result<()> {
    for &path in PATHS {
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel(path, BOUND, std::future::pending()).await?;
        client.write_all(b"hello").await?;
        let mut buf = [0; 5];
        bounded(upstream.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"hello");
        upstream.write_all(b"world!!").await?;
        let mut buf = [0; 7];
        bounded(client.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"world!!");

        client.shutdown().await?;
        upstream.shutdown().await?;
        assert_eq!(finished(spliced, path, done).await?, (5, 7), "{path:?}");
    }
    Ok(())
}

#[tokio::test]
async fn half_close_lets_the_reply_through() -> anyhow::Result<()> {
    for &path in PATHS {
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel(path, BOUND, std::future::pending()).await?;
        let request = data(3_000_000);
        let reply = data(7_000_000);

        // The client sends everything and shuts down its write half; the upstream sees EOF,
        // and only then sends its reply, which the client must still receive in full.
        let upstream_side = async {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await?;
            upstream.write_all(&reply).await?;
            upstream.shutdown().await?;
            io::Result::Ok(got)
        };
        let client_side = async {
            client.write_all(&request).await?;
            client.shutdown().await?;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await?;
            io::Result::Ok(got)
        };
        let (upstream_got, client_got) =
            bounded(async { tokio::try_join!(upstream_side, client_side) }).await??;
        assert!(upstream_got == request, "{path:?}: request corrupted");
        assert!(client_got == reply, "{path:?}: reply corrupted");
        let counts = finished(spliced, path, done).await?;
        assert_eq!(counts, (3_000_000, 7_000_000), "{path:?}");
    }
    Ok(())
}

#[tokio::test]
async fn half_close_from_the_upstream_side() -> anyhow::Result<()> {
    for &path in PATHS {
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel(path, BOUND, std::future::pending()).await?;
        upstream.write_all(b"banner").await?;
        upstream.shutdown().await?;
        let mut got = Vec::new();
        bounded(client.read_to_end(&mut got)).await??;
        assert_eq!(got, b"banner");

        // The other direction still flows after the upstream's EOF reached the client.
        client.write_all(b"late").await?;
        client.shutdown().await?;
        let mut got = Vec::new();
        bounded(upstream.read_to_end(&mut got)).await??;
        assert_eq!(got, b"late");
        assert_eq!(finished(spliced, path, done).await?, (4, 6), "{path:?}");
    }
    Ok(())
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() -> anyhow::Result<()> {
    for &path in PATHS {
        let idle = Duration::from_millis(200);
        let started = Instant::now();
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel(path, idle, std::future::pending()).await?;
        client.write_all(b"x").await?;
        let mut buf = [0; 1];
        bounded(upstream.read_exact(&mut buf)).await??;

        let counts = finished(spliced, path, |end| matches!(end, RelayEnd::Idle)).await?;
        assert_eq!(counts, (1, 0), "{path:?}");
        assert!(started.elapsed() >= idle);
        // Both sides see the tunnel closed.
        let mut rest = Vec::new();
        assert_eq!(bounded(client.read_to_end(&mut rest)).await??, 0);
        assert_eq!(bounded(upstream.read_to_end(&mut rest)).await??, 0);
    }
    Ok(())
}

#[tokio::test]
async fn traffic_in_one_direction_keeps_the_whole_tunnel_alive() -> anyhow::Result<()> {
    // One idle clock for both directions: the upstream trickles bytes for longer than the idle
    // timeout while the client stays silent, and the client can still write afterwards.
    for &path in PATHS {
        let idle = Duration::from_millis(1500);
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel(path, idle, std::future::pending()).await?;
        let ticks = 6;
        let mut tick = tokio::time::interval(Duration::from_millis(400));
        for _ in 0..ticks {
            tick.tick().await;
            upstream.write_all(b"t").await?;
            let mut buf = [0; 1];
            bounded(client.read_exact(&mut buf)).await??;
        }
        assert!(!spliced.is_finished(), "{path:?}: the idle clock must count both directions");
        client.write_all(b"still here").await?;
        let mut buf = [0; 10];
        bounded(upstream.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"still here");
        client.shutdown().await?;
        upstream.shutdown().await?;
        assert_eq!(finished(spliced, path, done).await?, (10, ticks), "{path:?}");
    }
    Ok(())
}

#[tokio::test]
async fn the_close_signal_ends_the_tunnel() -> anyhow::Result<()> {
    for &path in PATHS {
        let (close_tx, close_rx) = oneshot::channel::<()>();
        let close = async move {
            let _ = close_rx.await;
        };
        let Tunnel { mut client, mut upstream, spliced } = tunnel(path, BOUND, close).await?;
        upstream.write_all(b"abc").await?;
        let mut buf = [0; 3];
        bounded(client.read_exact(&mut buf)).await??;

        close_tx.send(()).ok();
        let counts = finished(spliced, path, |end| matches!(end, RelayEnd::Closed)).await?;
        assert_eq!(counts, (0, 3), "{path:?}");
        let mut rest = Vec::new();
        assert_eq!(bounded(client.read_to_end(&mut rest)).await??, 0);
    }
    Ok(())
}

#[tokio::test]
async fn a_large_transfer_arrives_intact() -> anyhow::Result<()> {
    for &path in PATHS {
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel(path, BOUND, std::future::pending()).await?;
        let data = data(8 * 1024 * 1024);
        let sender = async {
            client.write_all(&data).await?;
            client.shutdown().await
        };
        let receiver = async {
            let mut got = Vec::with_capacity(data.len());
            upstream.read_to_end(&mut got).await?;
            upstream.shutdown().await?;
            io::Result::Ok(got)
        };
        let ((), got) = bounded(async { tokio::try_join!(sender, receiver) }).await??;
        assert!(got == data, "{path:?}: data corrupted");
        assert_eq!(finished(spliced, path, done).await?, (data.len() as u64, 0), "{path:?}");
    }
    Ok(())
}

/// An error mid-transfer (the client resets while the upstream is still sending) ends the
/// tunnel, and the bytes moved until then are still reported.
#[tokio::test]
async fn an_error_mid_transfer_keeps_the_counts() -> anyhow::Result<()> {
    for &path in PATHS {
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel(path, BOUND, std::future::pending()).await?;
        let sender = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            while upstream.write_all(&chunk).await.is_ok() {}
        });
        let mut got = vec![0; 200_000];
        bounded(client.read_exact(&mut got)).await??;
        // Closing with unread bytes in the receive buffer resets the connection.
        drop(client);
        let spliced = bounded(spliced).await??;
        assert!(matches!(spliced.end, RelayEnd::Failed(_)), "{path:?}: {:?}", spliced.end);
        assert!(spliced.b_to_a >= 200_000, "{path:?}: {spliced:?}");
        sender.abort();
    }
    Ok(())
}

/// What hyper read past an upgrade's head goes out first, on both sides.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn pending_bytes_go_out_before_the_stream() -> anyhow::Result<()> {
    let relay = Arc::new(Relay::new());
    let pending: (&[u8], &[u8]) = (b"early ", b"first ");
    let Tunnel { mut client, mut upstream, spliced } =
        tunnel_on(relay, RelayPath::ZeroCopy, pending, BOUND, std::future::pending()).await?;
    client.write_all(b"late").await?;
    client.shutdown().await?;
    upstream.write_all(b"then").await?;
    upstream.shutdown().await?;
    let (mut to_upstream, mut to_client) = (Vec::new(), Vec::new());
    bounded(upstream.read_to_end(&mut to_upstream)).await??;
    bounded(client.read_to_end(&mut to_client)).await??;
    assert_eq!(to_upstream, b"early late");
    assert_eq!(to_client, b"first then");
    assert_eq!(finished(spliced, RelayPath::ZeroCopy, done).await?, (10, 10));
    Ok(())
}

/// A direction takes a pipe only while bytes flow: an idle tunnel holds none, a finished one
/// gave both back, and the next tunnel reuses them.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn pipes_go_back_to_the_pool_and_are_reused() -> anyhow::Result<()> {
    let relay = Arc::new(Relay::new());
    let nothing: (&[u8], &[u8]) = (b"", b"");
    let Tunnel { mut client, mut upstream, spliced } =
        tunnel_on(relay.clone(), RelayPath::ZeroCopy, nothing, BOUND, std::future::pending())
            .await?;
    assert_eq!(relay.stats().pipes_created, 0, "no pipe before a byte arrives");
    client.write_all(b"ping").await?;
    let mut buf = [0; 4];
    bounded(upstream.read_exact(&mut buf)).await??;
    upstream.write_all(b"pong").await?;
    bounded(client.read_exact(&mut buf)).await??;
    // The tunnel is open and idle: every pipe it used is back in the pool.
    bounded(async {
        while relay.stats().pipes_pooled < relay.stats().pipes_created as usize {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    let first = relay.stats();
    assert!((1..=2).contains(&first.pipes_created), "{first:?}");
    client.shutdown().await?;
    upstream.shutdown().await?;
    finished(spliced, RelayPath::ZeroCopy, done).await?;

    let Tunnel { mut client, mut upstream, spliced } =
        tunnel_on(relay.clone(), RelayPath::ZeroCopy, nothing, BOUND, std::future::pending())
            .await?;
    let payload = data(1024 * 1024);
    let sender = async {
        client.write_all(&payload).await?;
        client.shutdown().await
    };
    let receiver = async {
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await?;
        upstream.shutdown().await?;
        io::Result::Ok(got)
    };
    let ((), got) = bounded(async { tokio::try_join!(sender, receiver) }).await??;
    assert!(got == payload, "data corrupted");
    finished(spliced, RelayPath::ZeroCopy, done).await?;
    let second = relay.stats();
    assert_eq!(second.pipes_created, first.pipes_created, "the pooled pipes were reused");
    assert_eq!(second.pipes_pooled, second.pipes_created as usize);
    assert_eq!((second.zero_copy, second.copied), (2, 0));
    Ok(())
}

/// A pipe that still holds bytes when the tunnel ends is closed, never pooled: the next
/// tunnel would otherwise receive them.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_pipe_with_bytes_left_is_not_pooled() -> anyhow::Result<()> {
    let relay = Arc::new(Relay::new());
    let (close_tx, close_rx) = oneshot::channel::<()>();
    let close = async move {
        let _ = close_rx.await;
    };
    let nothing: (&[u8], &[u8]) = (b"", b"");
    let Tunnel { mut client, upstream, spliced } =
        tunnel_on(relay.clone(), RelayPath::ZeroCopy, nothing, BOUND, close).await?;
    // The upstream never reads: its receive buffer and the relay's send buffer fill up, then
    // the pipe, which the relay refills only once it is empty; then the client's writes
    // stall for good. Stop at the first write that makes no progress for a second.
    let chunk = vec![1u8; 64 * 1024];
    let stalled = Duration::from_secs(1);
    while let Ok(written) = tokio::time::timeout(stalled, client.write_all(&chunk)).await {
        written?;
    }
    close_tx.send(()).ok();
    finished(spliced, RelayPath::ZeroCopy, |end| matches!(end, RelayEnd::Closed)).await?;
    let stats = relay.stats();
    assert_eq!(stats.pipes_created, 1, "{stats:?}");
    assert_eq!(stats.pipes_pooled, 0, "a pipe holding bytes went back to the pool: {stats:?}");
    drop(upstream);
    Ok(())
}

/// A stream that is not a plain socket takes the copy path, even next to a socket.
#[tokio::test]
async fn anything_but_two_sockets_is_copied() -> anyhow::Result<()> {
    let relay = Relay::new();
    let (mut client, a) = pair().await?;
    let (b, mut upstream) = pair().await?;
    let spliced = relay.splice(Side::tcp(a), Side::io(b), BOUND, std::future::pending());
    let exchange = async {
        client.write_all(b"over").await?;
        client.shutdown().await?;
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await?;
        upstream.shutdown().await?;
        io::Result::Ok(got)
    };
    let (spliced, got) = bounded(async { tokio::join!(spliced, exchange) }).await?;
    assert_eq!(got?, b"over");
    assert_eq!(spliced.path, RelayPath::Copy);
    assert_eq!((spliced.a_to_b, spliced.b_to_a), (4, 0));
    assert_eq!((relay.stats().zero_copy, relay.stats().copied), (0, 1));
    Ok(())
}

/// A relay with no pipe to spare (its `max_pipes` reached, or no descriptors left) moves the
/// bytes through a borrowed buffer instead, with the same half-close and counts; with one
/// pipe, the two directions share it or copy.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn without_a_pipe_to_spare_the_bytes_are_copied() -> anyhow::Result<()> {
    for max_pipes in [0, 1] {
        let relay = Arc::new(Relay::with_max_pipes(max_pipes));
        let nothing: (&[u8], &[u8]) = (b"", b"");
        let Tunnel { mut client, mut upstream, spliced } =
            tunnel_on(relay.clone(), RelayPath::ZeroCopy, nothing, BOUND, std::future::pending())
                .await?;
        let (request, reply) = (data(3_000_000), data(2_000_000));
        // Both ways at once, each side half-closing when it has sent everything.
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let mut to_upstream = Vec::new();
        let mut to_client = Vec::new();
        bounded(async {
            tokio::try_join!(
                async {
                    client_write.write_all(&request).await?;
                    client_write.shutdown().await
                },
                async {
                    upstream_write.write_all(&reply).await?;
                    upstream_write.shutdown().await
                },
                upstream_read.read_to_end(&mut to_upstream),
                client_read.read_to_end(&mut to_client),
            )
        })
        .await??;
        assert!(to_upstream == request, "max_pipes {max_pipes}: request corrupted");
        assert!(to_client == reply, "max_pipes {max_pipes}: reply corrupted");
        let counts = finished(spliced, RelayPath::ZeroCopy, done).await?;
        assert_eq!(counts, (3_000_000, 2_000_000), "max_pipes {max_pipes}");
        let stats = relay.stats();
        assert!(stats.pipes_created <= max_pipes as u64, "{stats:?}");
        if max_pipes == 0 {
            assert!(stats.pipe_shortages > 0, "{stats:?}");
        }
    }
    Ok(())
}
