//! Raw client helpers for tests: dial, send bytes, read what comes back, parse a response head.
//!
//! Raw bytes rather than an HTTP client so tests can send exactly what a hostile or odd client
//! would, and see exactly what proxyd answered.

use std::net::SocketAddr;

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use crate::TIMEOUT;
use crate::server::Headers;

/// Most bytes [`read_to_eof`] and [`raw_request`] collect.
const MAX_READ: usize = 16 * 1024 * 1024;
/// Longest response head [`read_response_head`] accepts.
const MAX_HEAD: usize = 64 * 1024;

/// Connects to `addr` within [`TIMEOUT`].
#[expect(clippy::disallowed_methods, reason = "test client, not proxyd's egress")]
pub async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr} timed out"))?
        .with_context(|| format!("connect to {addr}"))
}

/// Connects to `addr`, writes `bytes`, and returns everything read until EOF.
///
/// Reading stops at EOF, at [`TIMEOUT`] or at 16 MiB, whichever comes first, returning what
/// arrived; so send `Connection: close` unless the test wants to wait out the timeout.
pub async fn raw_request(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> anyhow::Result<Vec<u8>> {
    let mut stream = connect(addr).await?;
    timeout(TIMEOUT, stream.write_all(bytes.as_ref()))
        .await
        .context("write timed out")?
        .context("write request")?;
    read_to_eof(&mut stream).await
}

/// Reads until EOF, [`TIMEOUT`] or 16 MiB, whichever comes first, and returns what arrived.
///
/// A connection reset after some bytes arrived also ends the read: a server that answers and
/// closes without reading the rest of the request triggers one.
pub async fn read_to_eof<R: AsyncRead + Unpin>(reader: &mut R) -> anyhow::Result<Vec<u8>> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    while out.len() < MAX_READ {
        match timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) if !out.is_empty() => break,
            Ok(Err(error)) => return Err(error).context("read response"),
        }
    }
    Ok(out)
}

/// A parsed HTTP/1.x response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// Lower-case names, trimmed values, in wire order.
    pub headers: Headers,
    /// Bytes that followed the head: the start of the body, or of the tunnel after a 200 to
    /// CONNECT.
    pub rest: Vec<u8>,
}

impl ResponseHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Parses a response that starts with a complete head, e.g. the output of [`raw_request`].
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let Some(end) = head_end(bytes) else {
            bail!("no complete response head in {:?}", String::from_utf8_lossy(bytes));
        };
        let head = std::str::from_utf8(&bytes[..end]).context("response head is not utf-8")?;
        let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
        let status_line = lines.next().context("empty response head")?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        // `HTTP/2` is how curl's `-D` writes the head of an HTTP/2 response.
        ensure!(
            version.starts_with("HTTP/1.") || version == "HTTP/2",
            "not an HTTP status line: {status_line:?}"
        );
        let status = parts
            .next()
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|code| (100..=999).contains(code))
            .with_context(|| format!("bad status code in {status_line:?}"))?;
        let reason = parts.next().unwrap_or_default().to_owned();
        let headers = lines
            .map(|line| {
                let (name, value) =
                    line.split_once(':').with_context(|| format!("bad header line {line:?}"))?;
                Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(ResponseHead { status, reason, headers, rest: bytes[end..].to_vec() })
    }
}

/// Reads a response head from `reader` (at most 64 KiB, within [`TIMEOUT`]); bytes read past
/// the head are returned in [`ResponseHead::rest`].
pub async fn read_response_head<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> anyhow::Result<ResponseHead> {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = vec![0; 4096];
    while head_end(&buf).is_none() {
        ensure!(buf.len() <= MAX_HEAD, "response head longer than {MAX_HEAD} bytes");
        let n = timeout_at(deadline, reader.read(&mut chunk))
            .await
            .with_context(|| {
                format!("timed out reading response head, got {:?}", String::from_utf8_lossy(&buf))
            })?
            .context("read response head")?;
        ensure!(n > 0, "eof before end of response head, got {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    ResponseHead::parse(&buf)
}

/// Offset just past the blank line ending the head, if `bytes` holds a whole head.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)
}

#[cfg(test)]
mod tests {
    use super::ResponseHead;

    /// Status, reason, headers and rest of a parsed head.
    type Expected<'a> = (u16, &'a str, &'a [(&'a str, &'a str)], &'a str);

    fn check(input: &str, expected: Option<Expected<'_>>) {
        let parsed = ResponseHead::parse(input.as_bytes()).ok();
        let parsed = parsed.as_ref().map(|head| {
            let headers: Vec<(&str, &str)> =
                head.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            (head.status, head.reason.clone(), headers, String::from_utf8_lossy(&head.rest))
        });
        let expected = expected.map(|(status, reason, headers, rest)| {
            (status, reason.to_owned(), headers.to_vec(), rest.into())
        });
        assert_eq!(parsed, expected, "{input:?}");
    }

    #[test]
    fn parse_response_heads() {
        check("HTTP/1.1 200 OK\r\n\r\n", Some((200, "OK", &[], "")));
        check(
            "HTTP/1.1 403 Forbidden\r\nX-Proxy-Error: blocked-by-denylist\r\nContent-Length: 0\r\n\r\n",
            Some((
                403,
                "Forbidden",
                &[("x-proxy-error", "blocked-by-denylist"), ("content-length", "0")],
                "",
            )),
        );
        check(
            "HTTP/1.1 200 Connection Established\r\n\r\nupstream-tunnel:hi",
            Some((200, "Connection Established", &[], "upstream-tunnel:hi")),
        );
        check("HTTP/1.0 204\r\na:  b \r\n\r\n", Some((204, "", &[("a", "b")], "")));
        check("HTTP/1.1 200 OK\r\n", None);
        // curl's `-D` writes HTTP/2 heads so; raw HTTP/2 never reaches this parser.
        check("HTTP/2 200 \r\nvia: 2 proxyd\r\n\r\n", Some((200, "", &[("via", "2 proxyd")], "")));
        check("HTTP/2.0 200 OK\r\n\r\n", None);
        check("HTTP/3 200\r\n\r\n", None);
        check("HTTP/1.1 abc OK\r\n\r\n", None);
        check("HTTP/1.1 200 OK\r\nno-colon\r\n\r\n", None);
        check("", None);
    }
}
