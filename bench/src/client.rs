//! Hand-written clients: a loopback dial, tunnels through an HTTP proxy (`CONNECT`) or a SOCKS5
//! proxy, and an HTTP/1.1 exchange that reads one whole response (`Content-Length`, chunked,
//! or until close).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the load generator reaches a target.
#[derive(Debug, Clone, Copy)]
pub(super) enum Via {
    /// Straight to the target: the physical limit.
    Direct,
    /// An HTTP proxy: absolute-form requests, `CONNECT` tunnels.
    Http(SocketAddr),
    /// A SOCKS5 proxy without authentication, `CONNECT` with an address type of IPv4 or IPv6.
    Socks5(SocketAddr),
}

/// Connects to a loopback address with `TCP_NODELAY`, as every bench client does.
#[expect(
    clippy::disallowed_methods,
    reason = "the bench client dials loopback listeners it started itself; no policy applies"
)]
pub(super) async fn dial(addr: SocketAddr) -> Result<TcpStream> {
    ensure!(addr.ip().is_loopback(), "the bench dials loopback only, not {addr}");
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A byte stream to `target`: a plain connection, or a tunnel through the proxy.
pub(super) async fn open(via: Via, target: SocketAddr) -> Result<TcpStream> {
    match via {
        Via::Direct => dial(target).await,
        Via::Http(proxy) => connect_tunnel(proxy, target).await,
        Via::Socks5(proxy) => socks5_tunnel(proxy, target).await,
    }
}

async fn connect_tunnel(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let mut stream = dial(proxy).await?;
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // The target speaks only after the client does, so the proxy's answer is the only thing
    // to read: any byte after the head would be a protocol error.
    let mut buf = [0u8; 2048];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        ensure!(n > 0, "the proxy closed the connection during CONNECT");
        filled += n;
        if let Some(len) = head_end(&buf[..filled]) {
            let head = parse_head(&buf[..len])?;
            ensure!(head.status == 200, "CONNECT answered {}", head.status);
            ensure!(len == filled, "the proxy sent bytes after its CONNECT answer");
            return Ok(stream);
        }
        ensure!(filled < buf.len(), "the CONNECT answer's head is too long");
    }
}

async fn socks5_tunnel(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let mut stream = dial(proxy).await?;
    stream.write_all(&[5, 1, 0]).await?;
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).await.context("SOCKS5 method selection")?;
    ensure!(method == [5, 0], "SOCKS5 method selection answered {method:?}");
    let mut request = vec![5, 1, 0];
    match target.ip() {
        IpAddr::V4(ip) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
    }
    request.extend_from_slice(&target.port().to_be_bytes());
    stream.write_all(&request).await?;
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).await.context("SOCKS5 reply")?;
    ensure!(reply[0] == 5 && reply[1] == 0, "SOCKS5 CONNECT answered {}", reply[1]);
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        other => bail!("SOCKS5 reply with address type {other}"),
    };
    let mut bound = [0u8; 258];
    stream.read_exact(&mut bound[..rest]).await?;
    Ok(stream)
}

/// The length of the head (through the blank line) at the start of `buf`, once it is complete.
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// How a response body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

fn parse_head(head: &[u8]) -> Result<Head> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    ensure!(version.starts_with("HTTP/1."), "not an HTTP/1 response: {status_line:?}");
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked, mut connection) = (None, false, String::new());
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<u64>().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("proxy-connection")
        {
            connection.push_str(&value.to_ascii_lowercase());
        }
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        _ if status == 204 || status == 304 || (100..200).contains(&status) => Framing::Length(0),
        _ => Framing::UntilClose,
    };
    let keep_alive = if connection.contains("close") {
        false
    } else if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        true
    };
    let keep_alive = keep_alive && framing != Framing::UntilClose;
    Ok(Head { status, framing, keep_alive })
}

/// One client connection speaking HTTP/1.1, with its read buffer.
pub(super) struct HttpConn {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl HttpConn {
    pub(super) fn new(stream: TcpStream) -> Self {
        Self { stream, buf: vec![0; 16 * 1024].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Sends `request`, reads one whole `200` response, and says whether the connection can
    /// carry another request.
    pub(super) async fn exchange(&mut self, request: &[u8]) -> Result<bool> {
        self.stream.write_all(request).await?;
        let len = loop {
            if let Some(len) = head_end(&self.buf[self.start..self.end]) {
                break len;
            }
            self.fill().await?;
        };
        let head = parse_head(&self.buf[self.start..self.start + len])?;
        self.start += len;
        ensure!(head.status == 200, "answered {}", head.status);
        match head.framing {
            Framing::Length(n) => self.skip(n).await?,
            Framing::Chunked => loop {
                let size = self.chunk_size().await?;
                if size == 0 {
                    // Trailers, then the blank line.
                    while self.line_len().await? > 0 {}
                    break;
                }
                self.skip(size + 2).await?;
            },
            Framing::UntilClose => {
                (self.start, self.end) = (0, 0);
                while self.stream.read(&mut self.buf).await? > 0 {}
                return Ok(false);
            }
        }
        Ok(head.keep_alive)
    }

    /// After a response that closes the connection: waits for the server's FIN, so that the
    /// server closes first and the TIME_WAIT state lands on its side. A client that closes
    /// first keeps its ephemeral port in TIME_WAIT, and tens of thousands of connections per
    /// second exhaust them on loopback (and starve the proxies that bind theirs explicitly).
    pub(super) async fn until_eof(mut self) -> Result<()> {
        while self.stream.read(&mut self.buf).await? > 0 {}
        Ok(())
    }

    /// Reads more bytes into the buffer; fails at EOF.
    async fn fill(&mut self) -> Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            ensure!(self.end < self.buf.len(), "response head larger than the read buffer");
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        ensure!(n > 0, "the connection closed before the response was complete");
        self.end += n;
        Ok(())
    }

    /// Consumes `n` bytes of body.
    async fn skip(&mut self, mut n: u64) -> Result<()> {
        loop {
            let buffered = (self.end - self.start) as u64;
            let take = buffered.min(n);
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Consumes one line and returns its length without the CRLF.
    async fn line_len(&mut self) -> Result<usize> {
        loop {
            let buffered = &self.buf[self.start..self.end];
            if let Some(i) = buffered.windows(2).position(|w| w == b"\r\n") {
                self.start += i + 2;
                return Ok(i);
            }
            self.fill().await?;
        }
    }

    /// Consumes a chunk-size line and returns the size.
    async fn chunk_size(&mut self) -> Result<u64> {
        let len = self.line_len().await?;
        // The line ends just before `start` (any compaction happened before it was found).
        let line = &self.buf[self.start - len - 2..self.start - 2];
        let text = std::str::from_utf8(line).context("chunk size is not UTF-8")?;
        let digits = text.split(';').next().unwrap_or_default().trim();
        u64::from_str_radix(digits, 16).with_context(|| format!("bad chunk size {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{Framing, head_end, parse_head};

    #[test]
    fn heads() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n").unwrap();
        assert_eq!((head.status, head.framing, head.keep_alive), (200, Framing::Length(13), true));
        let head = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, false));
        let head = parse_head(b"HTTP/1.0 200 Connection established\r\n\r\n").unwrap();
        assert_eq!(head.status, 200);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
