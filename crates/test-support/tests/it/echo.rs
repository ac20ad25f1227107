use proxyd_test_support::{EchoTcp, TIMEOUT, UdpEcho, connect, read_to_eof};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

#[tokio::test]
async fn tcp_echo_returns_bytes_and_passes_half_close_on() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let mut stream = connect(echo.addr()).await?;
    stream.write_all(b"one ").await?;
    stream.write_all(b"two").await?;
    stream.shutdown().await?;
    assert_eq!(read_to_eof(&mut stream).await?, b"one two");
    assert_eq!(echo.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn udp_echo_answers_the_sender_and_records() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    client.send_to(b"datagram", echo.addr()).await?;
    let mut buf = [0; 64];
    let (n, from) = tokio::time::timeout(TIMEOUT, client.recv_from(&mut buf)).await??;
    assert_eq!((&buf[..n], from), (&b"datagram"[..], echo.addr()));
    assert_eq!(echo.received(), [(client.local_addr()?, b"datagram".to_vec())]);
    Ok(())
}
