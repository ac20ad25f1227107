//! Tunnels end on idle, on a switch to limited mode, and at the end of a drain; a shutdown
//! stops accepting.

use std::time::Duration;

use proxyd_policy::Mode;
use proxyd_test_support::{EchoTcp, connect, read_to_eof};

use tokio::io::AsyncWriteExt;

use crate::client::{Addr, UDP_ASSOCIATE, greeted, request, send_request, tunnel, write};
use crate::support::{Setup, bounded};

#[tokio::test]
async fn shutdown_stops_accepting_and_closes_tunnels_after_the_drain() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let mut proxy = Setup::new()
        .allow(&[&echo.addr().to_string()])
        .drain_timeout(Duration::from_millis(300))
        .start()
        .await?;
    let mut open = tunnel(proxy.addr, echo.addr()).await?;
    write(&mut open, b"still here").await?;
    let started = tokio::time::Instant::now();
    proxy.shutdown().await?;
    assert!(started.elapsed() >= Duration::from_millis(300), "serve returned before the drain");
    // The tunnel worked during the drain and is closed after it.
    assert_eq!(read_to_eof(&mut open).await?, b"still here");
    assert!(connect(proxy.addr).await.is_err(), "the listener still accepts");
    Ok(())
}

#[tokio::test]
async fn shutdown_without_connections_is_prompt() -> anyhow::Result<()> {
    let mut proxy = Setup::new().drain_timeout(Duration::from_secs(30)).start().await?;
    bounded(proxy.shutdown()).await??;
    Ok(())
}

#[tokio::test]
async fn switching_to_limited_mode_closes_open_tunnels() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let mut open = tunnel(proxy.addr, echo.addr()).await?;
    proxy.engine.set_mode(Mode::Limited);
    assert_eq!(read_to_eof(&mut open).await?, b"");
    Ok(())
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let proxy = Setup::new()
        .allow(&[&echo.addr().to_string()])
        .settings(|s| s.idle_timeout = Duration::from_millis(200))
        .start()
        .await?;
    let mut open = tunnel(proxy.addr, echo.addr()).await?;
    assert_eq!(read_to_eof(&mut open).await?, b"");
    Ok(())
}

#[tokio::test]
async fn connections_and_tunnels_are_counted() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let udp_echo = proxyd_test_support::UdpEcho::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let (connections, tunnels) = (proxy.socks.connections(), proxy.socks.tunnels());
    let idle = greeted(proxy.addr).await?;
    let mut open = tunnel(proxy.addr, echo.addr()).await?;
    let any = Addr::Ip(udp_echo.addr().ip());
    let (mut control, reply) = send_request(proxy.addr, &request(UDP_ASSOCIATE, any, 0)).await?;
    assert_eq!(reply.code, 0);
    assert_eq!((connections.active(), tunnels.active()), (3, 2));
    drop(idle);
    open.shutdown().await?;
    assert_eq!(read_to_eof(&mut open).await?, b"");
    control.shutdown().await?;
    assert_eq!(read_to_eof(&mut control).await?, b"");
    bounded(tunnels.wait_idle()).await?;
    bounded(connections.wait_idle()).await?;
    Ok(())
}
