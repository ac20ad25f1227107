use std::panic::{AssertUnwindSafe, catch_unwind};

use proxyd_test_support::{Canary, TIMEOUT, UdpCanary, connect};
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

#[tokio::test]
async fn canary_counts_connections_and_closes_them() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    canary.assert_untouched();

    let mut stream = connect(canary.addr()).await?;
    // Closed at once, so a wrongly dialling proxy fails fast instead of hanging.
    let mut buf = [0; 8];
    let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let _second = connect(canary.addr()).await?;
    // Counted as soon as `connect` returned, with no waiting.
    assert_eq!(canary.hits(), 2);
    assert_eq!(canary.connections()[0], stream.local_addr()?);

    let panic = catch_unwind(AssertUnwindSafe(|| canary.assert_untouched()))
        .expect_err("a reached canary must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("must never be dialled"), "{message}");
    assert!(message.contains(&canary.addr().to_string()), "{message}");
    Ok(())
}

#[tokio::test]
async fn udp_canary_counts_datagrams() -> anyhow::Result<()> {
    let canary = UdpCanary::start().await?;
    canary.assert_untouched();
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    client.send_to(b"leak", canary.addr()).await?;
    assert_eq!(canary.hits(), 1);
    assert_eq!(canary.datagrams(), [(client.local_addr()?, b"leak".to_vec())]);
    assert!(catch_unwind(AssertUnwindSafe(|| canary.assert_untouched())).is_err());
    Ok(())
}
