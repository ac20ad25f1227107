//! Review findings on the retry of a bodiless idempotent request on a fresh connection.

use std::sync::Arc;

use anyhow::Context as _;
use proxyd_policy::Mode;
use proxyd_test_support::{TestCa, temp_dir};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::harness::{LOOPBACK, TIMEOUT, get, proxy, request};

/// Reads one request head and returns its request line; `None` at EOF or on an error.
async fn head_line<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return head.lines().next().map(str::to_owned);
        }
        match timeout(TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// A `DELETE` whose pooled connection fails before answering is retried on a fresh one. The
/// lease is checked before the fresh connection is dialled, but the TLS handshake to the
/// origin comes after that check: a switch to limited mode made while the handshake runs
/// revoked the exchange, and the write was sent all the same. It must be answered as blocked,
/// and the origin must never see it a second time.
#[tokio::test]
async fn a_retry_revoked_during_its_handshake_is_not_sent() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-http-proxy-review-retry")?;
    let ca = TestCa::new()?;
    let acceptor = TlsAcceptor::from(ca.server_config(&["allowed.test"])?);
    let listener = TcpListener::bind((LOOPBACK, 0)).await.context("bind origin")?;
    let port = listener.local_addr()?.port();
    let (seen, mut heads) = mpsc::unbounded_channel::<String>();
    let (accepted, mut retried) = mpsc::unbounded_channel::<()>();
    let go = Arc::new(Notify::new());
    let handshake = go.clone();
    let origin = tokio::spawn(async move {
        // The first connection answers one request, then reads the next and drops it.
        let Ok((stream, _)) = listener.accept().await else { return };
        let Ok(mut tls) = acceptor.accept(stream).await else { return };
        if let Some(line) = head_line(&mut tls).await {
            let _ = seen.send(line);
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        }
        if let Some(line) = head_line(&mut tls).await {
            let _ = seen.send(line);
        }
        drop(tls);
        // The retry's connection: its handshake waits until the test has switched the mode.
        let Ok((stream, _)) = listener.accept().await else { return };
        let _ = accepted.send(());
        handshake.notified().await;
        let Ok(mut tls) = acceptor.accept(stream).await else { return };
        if let Some(line) = head_line(&mut tls).await {
            let _ = seen.send(line);
            let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        }
    });

    let proxy = proxy().trust(ca.write_pem(&dir)?).start().await?;
    let mut client = proxy.client().await?;
    let first = client.request(get(&format!("https://allowed.test:{port}/one"))).await?;
    assert_eq!(first.status(), 200, "{first:?}");
    client.write(request("DELETE", &format!("https://allowed.test:{port}/two"), &[])).await?;
    timeout(TIMEOUT, retried.recv()).await.context("no retry")?.context("origin stopped")?;
    proxy.engine.set_mode(Mode::Limited);
    go.notify_one();

    let response = client.response().await?;
    assert_eq!(response.status(), 403, "{response:?}");
    timeout(TIMEOUT, origin).await.context("origin did not finish")??;
    let mut lines = Vec::new();
    while let Ok(line) = heads.try_recv() {
        lines.push(line);
    }
    let deletes = lines.iter().filter(|l| l.starts_with("DELETE ")).count();
    assert_eq!(deletes, 1, "a write was sent after the switch to limited mode: {lines:?}");
    Ok(())
}
