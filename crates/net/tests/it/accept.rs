//! The accept loop: connection limit, shutdown, and live-connection tracking (SPEC §7.5).

use std::net::SocketAddr;
use std::time::Duration;

use proxyd_lifecycle::{Lifecycle, accept_loop};
use proxyd_net::Connections;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::{V4, bounded, connect, listener};

struct Server {
    addr: SocketAddr,
    connections: Connections,
    /// The peer address of every connection a handler started on.
    started: mpsc::UnboundedReceiver<SocketAddr>,
    lifecycle: Lifecycle,
    accepting: JoinHandle<()>,
}

/// An accept loop whose handler reports the peer, then echoes until the client's EOF.
async fn server(max_connections: usize) -> anyhow::Result<Server> {
    let listener = listener(V4).await?;
    let addr = listener.local_addr()?;
    let connections = Connections::new();
    let (started_tx, started) = mpsc::unbounded_channel();
    let lifecycle = Lifecycle::new();
    let accepting = tokio::spawn({
        let (lifecycle, connections) = (lifecycle.clone(), connections.clone());
        async move {
            accept_loop(
                listener,
                max_connections,
                &lifecycle,
                connections,
                move |mut stream: TcpStream, peer| {
                    let started_tx = started_tx.clone();
                    async move {
                        let _ = started_tx.send(peer);
                        let (mut reader, mut writer) = stream.split();
                        let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    }
                },
            )
            .await;
        }
    });
    Ok(Server { addr, connections, started, lifecycle, accepting })
}

/// Proves the connection is served: one byte makes the round trip.
async fn round_trip(stream: &mut TcpStream) -> anyhow::Result<()> {
    stream.write_all(b"!").await?;
    let mut buf = [0; 1];
    bounded(stream.read_exact(&mut buf)).await??;
    Ok(())
}

#[tokio::test]
async fn handlers_get_the_stream_and_the_peer_address() -> anyhow::Result<()> {
    let mut server = server(4).await?;
    let mut client = bounded(connect(server.addr)).await??;
    let peer = bounded(server.started.recv()).await?;
    assert_eq!(peer, Some(client.local_addr()?));
    round_trip(&mut client).await?;
    assert_eq!(server.connections.active(), 1);
    Ok(())
}

#[tokio::test]
async fn a_second_client_waits_for_the_only_permit() -> anyhow::Result<()> {
    let mut server = server(1).await?;
    let mut first = bounded(connect(server.addr)).await??;
    bounded(server.started.recv()).await?;
    round_trip(&mut first).await?;

    // The kernel completes the second handshake, but no handler runs for it yet.
    let mut second = bounded(connect(server.addr)).await??;
    second.write_all(b"!").await?;
    let mut buf = [0; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), second.read_exact(&mut buf)).await;
    assert!(early.is_err(), "the second client was served while the first held the permit");
    assert!(server.started.try_recv().is_err());
    assert_eq!(server.connections.active(), 1);

    // Ending the first connection frees the permit; the second is then served, and its
    // early byte was kept.
    first.shutdown().await?;
    bounded(server.started.recv()).await?;
    bounded(second.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"!");
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_accepting_and_wait_idle_waits_for_handlers() -> anyhow::Result<()> {
    let mut server = server(4).await?;
    let mut client = bounded(connect(server.addr)).await??;
    bounded(server.started.recv()).await?;

    // Stopping, as the first step of the lifecycle's shutdown does.
    let lifecycle = server.lifecycle.clone();
    tokio::spawn(async move { lifecycle.shutdown(Duration::from_secs(30)).await });
    bounded(server.accepting).await??;
    // The listener is gone: new clients are refused.
    let refused = bounded(connect(server.addr)).await?;
    assert_eq!(refused.err().map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionRefused));

    // The connection accepted before shutdown is still served, and keeps wait_idle waiting.
    round_trip(&mut client).await?;
    assert_eq!(server.connections.active(), 1);
    let idle = tokio::spawn({
        let connections = server.connections.clone();
        async move { connections.wait_idle().await }
    });
    assert!(!idle.is_finished());
    client.shutdown().await?;
    bounded(idle).await??;
    assert_eq!(server.connections.active(), 0);
    Ok(())
}

#[tokio::test]
async fn a_panicking_handler_releases_its_permit_and_its_count() -> anyhow::Result<()> {
    let listener = listener(V4).await?;
    let addr = listener.local_addr()?;
    let connections = Connections::new();
    let (served_tx, mut served) = mpsc::unbounded_channel::<()>();
    let accepting = tokio::spawn({
        let connections = connections.clone();
        async move {
            let lifecycle = Lifecycle::new();
            accept_loop(listener, 1, &lifecycle, connections, move |_stream, _peer| {
                let served_tx = served_tx.clone();
                async move {
                    let _ = served_tx.send(());
                    panic!("test panic in a handler");
                }
            })
            .await;
        }
    });
    // With a limit of 1, a later connection is served only if the panicked handler's permit
    // was released.
    for _ in 0..4 {
        let _client = bounded(connect(addr)).await??;
        bounded(served.recv()).await?;
    }
    bounded(connections.wait_idle()).await?;
    accepting.abort();
    Ok(())
}
