//! The local origin the bench measures against: an HTTP/1.1 keep-alive server answering a small
//! fixed body, and a bulk port that is a byte source (download) or sink (upload).
//!
//! Both listen on 127.0.0.1 ephemeral ports and run in the bench's tokio runtime until it is
//! dropped. They do as little as possible per request so that "direct" is the physical limit.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::client::head_end;

/// The fixed answer; `Content-Length` framing, so every proxy can keep the connection.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n";
/// The same answer to a request that asked to close (or was HTTP/1.0 without keep-alive).
const RESPONSE_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\nhello, world\n";

/// Bulk protocol, first byte of the 9-byte request header (then a big-endian u64 length).
pub(super) const BULK_DOWNLOAD: u8 = b'D';
pub(super) const BULK_UPLOAD: u8 = b'U';
/// What the sink answers once it has read every byte of an upload.
pub(super) const BULK_ACK: u8 = b'k';
/// The buffer size of both bulk ends.
pub(super) const BULK_CHUNK: usize = 256 * 1024;
static ZEROS: [u8; BULK_CHUNK] = [0; BULK_CHUNK];

/// Addresses of the running origin.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    /// HTTP/1.1 keep-alive server with a 13-byte body.
    pub(super) http: SocketAddr,
    /// Bulk source and sink.
    pub(super) bulk: SocketAddr,
}

/// Binds both listeners and spawns their accept loops on the current runtime.
pub(super) async fn start() -> Result<Origin> {
    let http = listen().context("bind the origin HTTP listener")?;
    let bulk = listen().context("bind the origin bulk listener")?;
    let origin = Origin { http: http.local_addr()?, bulk: bulk.local_addr()? };
    tokio::spawn(accept_loop(http, |s| tokio::spawn(serve_http(s))));
    tokio::spawn(accept_loop(bulk, |s| tokio::spawn(serve_bulk(s))));
    Ok(origin)
}

fn listen() -> Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    // A deep backlog: the connect-rate and idle-tunnel tests open connections in bursts.
    Ok(socket.listen(4096)?)
}

async fn accept_loop<F>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> tokio::task::JoinHandle<()>,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                serve(stream);
            }
            // EMFILE and friends: back off instead of spinning; the clients will time out.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers every complete request head in the buffer (pipelining works), ignoring bodies:
/// the bench only sends `GET` without one.
async fn serve_http(mut stream: TcpStream) {
    let mut buf = vec![0u8; 8 * 1024];
    let (mut start, mut end) = (0, 0);
    let mut out = Vec::with_capacity(1024);
    loop {
        let mut close = false;
        while let Some(len) = head_end(&buf[start..end]) {
            close = wants_close(&buf[start..start + len]);
            out.extend_from_slice(if close { RESPONSE_CLOSE } else { RESPONSE });
            start += len;
            if close {
                break;
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
            if end == buf.len() {
                return; // a head larger than the buffer: not a bench client
            }
        }
        match stream.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => end += n,
        }
    }
}

/// HTTP/1.0 without `keep-alive`, or any `Connection: close`.
fn wants_close(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let mut lines = text.split("\r\n");
    let http10 = lines.next().is_some_and(|line| line.ends_with("http/1.0"));
    let connection = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim() == "connection")
        .map(|(_, value)| value.trim().to_owned());
    match connection {
        Some(value) if value.contains("close") => true,
        Some(value) if value.contains("keep-alive") => false,
        _ => http10,
    }
}

/// One bulk request: `D` + length sends that many bytes then half-closes; `U` + length reads
/// that many bytes then answers one ack byte.
async fn serve_bulk(mut stream: TcpStream) {
    let mut header = [0u8; 9];
    if stream.read_exact(&mut header).await.is_err() {
        return;
    }
    let mut len = u64::from_be_bytes(header[1..].try_into().unwrap_or_default());
    match header[0] {
        BULK_DOWNLOAD => {
            while len > 0 {
                let n = usize::try_from(len).unwrap_or(BULK_CHUNK).min(BULK_CHUNK);
                if stream.write_all(&ZEROS[..n]).await.is_err() {
                    return;
                }
                len -= n as u64;
            }
            let _ = stream.shutdown().await;
        }
        BULK_UPLOAD => {
            let mut buf = vec![0u8; BULK_CHUNK];
            while len > 0 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len = len.saturating_sub(n as u64),
                }
            }
            if stream.write_all(&[BULK_ACK]).await.is_err() {
                return;
            }
        }
        _ => return,
    }
    // Wait for the client to close so that neither side resets the connection.
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wants_close;

    #[test]
    fn close_rules() {
        assert!(!wants_close(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(wants_close(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(wants_close(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"));
        assert!(!wants_close(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }
}
