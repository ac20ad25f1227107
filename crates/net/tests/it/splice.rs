//! `splice` over real loopback sockets: client ⇄ (a | splice | b) ⇄ upstream.

use std::io;
use std::time::{Duration, Instant};

use proxyd_net::splice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{BOUND, V4, bounded, connect, listener};

/// Two connected sockets on loopback.
async fn pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = listener(V4).await?;
    let (client, accepted) =
        bounded(async { tokio::try_join!(connect(listener.local_addr()?), listener.accept()) })
            .await??;
    Ok((client, accepted.0))
}

struct Tunnel {
    client: TcpStream,
    upstream: TcpStream,
    spliced: JoinHandle<io::Result<(u64, u64)>>,
}

/// A client and an upstream joined by `splice`, which runs in its own task.
async fn tunnel(
    idle_timeout: Duration,
    close: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Tunnel> {
    let (client, a) = pair().await?;
    let (b, upstream) = pair().await?;
    let spliced = tokio::spawn(splice(a, b, idle_timeout, close));
    Ok(Tunnel { client, upstream, spliced })
}

#[tokio::test]
async fn copies_both_ways_and_counts_bytes() -> anyhow::Result<()> {
    let Tunnel { mut client, mut upstream, spliced } =
        tunnel(BOUND, std::future::pending()).await?;
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
    assert_eq!(bounded(spliced).await???, (5, 7));
    Ok(())
}

#[tokio::test]
async fn half_close_lets_the_reply_through() -> anyhow::Result<()> {
    let Tunnel { mut client, mut upstream, spliced } =
        tunnel(BOUND, std::future::pending()).await?;
    let request = vec![1u8; 300_000];
    let reply = vec![2u8; 700_000];

    // The client sends everything and shuts down its write half; the upstream sees EOF, and
    // only then sends its reply, which the client must still receive in full.
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
    assert!(upstream_got == request, "request corrupted");
    assert!(client_got == reply, "reply corrupted");
    assert_eq!(bounded(spliced).await???, (300_000, 700_000));
    Ok(())
}

#[tokio::test]
async fn half_close_from_the_upstream_side() -> anyhow::Result<()> {
    let Tunnel { mut client, mut upstream, spliced } =
        tunnel(BOUND, std::future::pending()).await?;
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
    assert_eq!(bounded(spliced).await???, (4, 6));
    Ok(())
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() -> anyhow::Result<()> {
    let idle = Duration::from_millis(200);
    let started = Instant::now();
    let Tunnel { mut client, mut upstream, spliced } = tunnel(idle, std::future::pending()).await?;
    client.write_all(b"x").await?;
    let mut buf = [0; 1];
    bounded(upstream.read_exact(&mut buf)).await??;

    assert_eq!(bounded(spliced).await???, (1, 0));
    assert!(started.elapsed() >= idle);
    // Both sides see the tunnel closed.
    let mut rest = Vec::new();
    assert_eq!(bounded(client.read_to_end(&mut rest)).await??, 0);
    assert_eq!(bounded(upstream.read_to_end(&mut rest)).await??, 0);
    Ok(())
}

#[tokio::test]
async fn traffic_in_one_direction_keeps_the_whole_tunnel_alive() -> anyhow::Result<()> {
    // One idle clock for both directions: the upstream trickles bytes for longer than the idle
    // timeout while the client stays silent, and the client can still write afterwards.
    let idle = Duration::from_millis(1500);
    let Tunnel { mut client, mut upstream, spliced } = tunnel(idle, std::future::pending()).await?;
    let ticks = 6;
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    for _ in 0..ticks {
        tick.tick().await;
        upstream.write_all(b"t").await?;
        let mut buf = [0; 1];
        bounded(client.read_exact(&mut buf)).await??;
    }
    assert!(!spliced.is_finished(), "the idle clock must count both directions");
    client.write_all(b"still here").await?;
    let mut buf = [0; 10];
    bounded(upstream.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"still here");
    client.shutdown().await?;
    upstream.shutdown().await?;
    assert_eq!(bounded(spliced).await???, (10, ticks));
    Ok(())
}

#[tokio::test]
async fn the_close_signal_ends_the_tunnel() -> anyhow::Result<()> {
    let (close_tx, close_rx) = oneshot::channel::<()>();
    let close = async move {
        let _ = close_rx.await;
    };
    let Tunnel { mut client, mut upstream, spliced } = tunnel(BOUND, close).await?;
    upstream.write_all(b"abc").await?;
    let mut buf = [0; 3];
    bounded(client.read_exact(&mut buf)).await??;

    close_tx.send(()).ok();
    assert_eq!(bounded(spliced).await???, (0, 3));
    let mut rest = Vec::new();
    assert_eq!(bounded(client.read_to_end(&mut rest)).await??, 0);
    Ok(())
}

#[tokio::test]
async fn a_large_transfer_arrives_intact() -> anyhow::Result<()> {
    let Tunnel { mut client, mut upstream, spliced } =
        tunnel(BOUND, std::future::pending()).await?;
    let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
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
    assert!(got == data, "data corrupted");
    assert_eq!(bounded(spliced).await???, (data.len() as u64, 0));
    Ok(())
}
