use proxyd_test_support::{ResponseHead, UnixOrigin, read_to_eof, temp_dir};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[tokio::test]
async fn unix_origin_serves_and_records_then_removes_its_socket() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-unix")?;
    let path = dir.join("origin.sock");
    let origin = UnixOrigin::start(&path).await?;
    assert_eq!(origin.path(), path);

    let mut stream = UnixStream::connect(&path).await?;
    stream
        .write_all(b"PUT /over/unix HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        .await?;
    let head = ResponseHead::parse(&read_to_eof(&mut stream).await?)?;
    assert_eq!(head.status, 200);
    assert_eq!(head.rest, b"origin PUT /over/unix\nabc");

    assert_eq!(origin.hits(), 1);
    assert_eq!(origin.requests()[0].body, b"abc");
    drop(origin);
    assert!(!path.exists(), "socket file left behind");
    Ok(())
}
