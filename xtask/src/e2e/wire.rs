//! Raw bytes on a `std` TCP stream, for targets no well-behaved client would send: an HTTP
//! request head (absolute-form or `CONNECT`) and a SOCKS5 `CONNECT` (RFC 1928) with a domain or
//! an IP address type.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};

use anyhow::{Context, Result, bail};

use super::support::connect;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// What came back for one request on the wire.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `head` to the HTTP proxy on a new connection and reads the response (see
/// [`read_reply`]). `None`: the connection closed without a response.
pub(crate) fn http(proxy: SocketAddr, head: &[u8]) -> Result<Option<Reply>> {
    let mut stream = connect(proxy)?;
    stream.write_all(head).context("send the request head")?;
    read_reply(&mut stream)
}

/// Sends each head in turn on one keep-alive connection, reading each response before the
/// next request. Stops at the first connection close.
pub(crate) fn http_keep_alive(proxy: SocketAddr, heads: &[&[u8]]) -> Result<Vec<Reply>> {
    let mut stream = connect(proxy)?;
    let mut replies = Vec::new();
    for head in heads {
        stream.write_all(head).context("send the request head")?;
        match read_reply(&mut stream)? {
            Some(reply) => replies.push(reply),
            None => break,
        }
    }
    Ok(replies)
}

/// `CONNECT authority`, expecting `200`: the open tunnel.
pub(crate) fn tunnel(proxy: SocketAddr, authority: &str) -> Result<TcpStream> {
    let mut stream = connect(proxy)?;
    let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(head.as_bytes()).context("send CONNECT")?;
    match read_reply(&mut stream)? {
        Some(reply) if reply.status == 200 => Ok(stream),
        Some(reply) => bail!("CONNECT {authority} answered {}", reply.status),
        None => bail!("CONNECT {authority}: closed without a response"),
    }
}

/// Reads a response head and, for anything but a `200` to `CONNECT`, its `content-length`
/// body (every response proxyd makes itself has one). `None`: closed before any byte.
fn read_reply(stream: &mut TcpStream) -> Result<Option<Reply>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if bytes.len() > MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                if bytes.is_empty() {
                    return Ok(None);
                }
                bail!("connection closed inside the response head: {:?}", lossy(&bytes));
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset && bytes.is_empty() => {
                return Ok(None);
            }
            Err(err) => return Err(err).context("read the response head"),
        }
    };
    let text = lossy(&bytes[..end]);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut reply = Reply { status, headers, body: bytes[end..].to_vec() };
    let length = reply.header("content-length").and_then(|l| l.parse::<usize>().ok());
    if let Some(length) = length {
        while reply.body.len() < length {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.body.extend_from_slice(&buf[..n]),
            }
        }
        reply.body.truncate(length);
    }
    Ok(Some(reply))
}

/// A SOCKS5 destination address (RFC 1928 §5).
pub(crate) enum SocksAddr<'a> {
    Domain(&'a [u8]),
    Ip(IpAddr),
}

/// Sends a SOCKS5 greeting (no authentication) and a `CONNECT` to `addr:port`, and returns the
/// reply code (`REP`). `None`: the connection closed before a reply.
pub(crate) fn socks5_connect(
    proxy: SocketAddr,
    addr: &SocksAddr<'_>,
    port: u16,
) -> Result<Option<u8>> {
    let mut stream = connect(proxy)?;
    stream.write_all(&[5, 1, 0]).context("send the SOCKS5 greeting")?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).context("read the SOCKS5 method choice")?;
    if choice != [5, 0] {
        bail!("SOCKS5 method choice {choice:?}, want [5, 0]");
    }
    let mut request = vec![5, 1, 0];
    match addr {
        SocksAddr::Domain(name) => {
            let len = u8::try_from(name.len()).context("domain over 255 bytes")?;
            request.push(3);
            request.push(len);
            request.extend_from_slice(name);
        }
        SocksAddr::Ip(IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        SocksAddr::Ip(IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).context("send the SOCKS5 request")?;
    let mut reply = [0u8; 2];
    match stream.read_exact(&mut reply) {
        Ok(()) => Ok(Some(reply[1])),
        Err(err) if matches!(err.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => {
            Ok(None)
        }
        Err(err) => Err(err).context("read the SOCKS5 reply"),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
