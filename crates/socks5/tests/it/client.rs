//! A hand-written RFC 1928 client: exact bytes out, exact bytes in, every wait bounded.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail, ensure};
use proxyd_test_support::{TIMEOUT, connect, read_to_eof};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::bounded;

pub(crate) const CONNECT: u8 = 0x01;
pub(crate) const BIND: u8 = 0x02;
pub(crate) const UDP_ASSOCIATE: u8 = 0x03;

/// Version 5, one method: "no authentication".
pub(crate) const GREETING: [u8; 3] = [5, 1, 0];

/// A destination as a client spells it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Addr<'a> {
    Ip(IpAddr),
    Domain(&'a [u8]),
}

impl From<SocketAddr> for Addr<'_> {
    fn from(addr: SocketAddr) -> Self {
        Addr::Ip(addr.ip())
    }
}

/// `ATYP DST.ADDR DST.PORT`.
pub(crate) fn address(addr: Addr<'_>, port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    match addr {
        Addr::Ip(IpAddr::V4(ip)) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        Addr::Ip(IpAddr::V6(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Addr::Domain(name) => {
            out.push(3);
            out.push(u8::try_from(name.len()).expect("test names fit in a byte"));
            out.extend_from_slice(name);
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// `VER CMD RSV ATYP DST.ADDR DST.PORT`.
pub(crate) fn request(command: u8, addr: Addr<'_>, port: u16) -> Vec<u8> {
    let mut out = vec![5, command, 0];
    out.extend(address(addr, port));
    out
}

/// A `CONNECT` request for `addr`.
pub(crate) fn connect_to(addr: SocketAddr) -> Vec<u8> {
    request(CONNECT, addr.into(), addr.port())
}

/// The reply to a refused request: the code and an all-zero IPv4 `BND`.
pub(crate) fn failure(code: u8) -> Vec<u8> {
    vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

pub(crate) async fn write(stream: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    bounded(stream.write_all(bytes)).await?.context("write")
}

pub(crate) async fn read_n(stream: &mut TcpStream, n: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    bounded(stream.read_exact(&mut buf)).await?.with_context(|| format!("read {n} bytes"))?;
    Ok(buf)
}

/// Connects and negotiates "no authentication".
pub(crate) async fn greeted(proxy: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = connect(proxy).await?;
    write(&mut stream, &GREETING).await?;
    let choice = read_n(&mut stream, 2).await?;
    ensure!(choice == [5, 0], "method selection {choice:?}");
    Ok(stream)
}

/// A parsed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u8,
    pub(crate) bound: SocketAddr,
}

pub(crate) async fn read_reply(stream: &mut TcpStream) -> anyhow::Result<Reply> {
    let head = read_n(stream, 4).await?;
    ensure!(head[0] == 5 && head[2] == 0, "reply head {head:?}");
    let ip = match head[3] {
        1 => IpAddr::from(<[u8; 4]>::try_from(read_n(stream, 4).await?).expect("4 bytes")),
        4 => IpAddr::from(<[u8; 16]>::try_from(read_n(stream, 16).await?).expect("16 bytes")),
        other => bail!("reply address type {other}"),
    };
    let port = read_n(stream, 2).await?;
    Ok(Reply { code: head[1], bound: SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])) })
}

/// Greets, sends `request`, and reads the reply.
pub(crate) async fn send_request(
    proxy: SocketAddr,
    request: &[u8],
) -> anyhow::Result<(TcpStream, Reply)> {
    let mut stream = greeted(proxy).await?;
    write(&mut stream, request).await?;
    let reply = read_reply(&mut stream).await?;
    Ok((stream, reply))
}

/// Opens a `CONNECT` tunnel to `target`, failing unless the reply is a success.
pub(crate) async fn tunnel(proxy: SocketAddr, target: SocketAddr) -> anyhow::Result<TcpStream> {
    let (stream, reply) = send_request(proxy, &connect_to(target)).await?;
    ensure!(reply.code == 0, "connect to {target} got reply {reply:?}");
    Ok(stream)
}

/// Sends raw `bytes` (greeting included, if any) and returns everything until the proxy
/// closes.
pub(crate) async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut stream = connect(proxy).await?;
    write(&mut stream, bytes).await?;
    read_to_eof(&mut stream).await
}

/// Greets, sends `request`, and returns everything after the method selection until the proxy
/// closes: a refusal is exactly `failure(code)`.
pub(crate) async fn refused(proxy: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut stream = greeted(proxy).await?;
    write(&mut stream, request).await?;
    read_to_eof(&mut stream).await
}

/// A UDP request datagram (RFC 1928 §7): `RSV FRAG ATYP DST.ADDR DST.PORT DATA`.
pub(crate) fn datagram(frag: u8, addr: Addr<'_>, port: u16, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, frag];
    out.extend(address(addr, port));
    out.extend_from_slice(data);
    out
}

/// Receives one relayed datagram: the sender named in its header, and its data.
pub(crate) async fn recv_relayed(socket: &UdpSocket) -> anyhow::Result<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0; 64 * 1024];
    let (n, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
        .await
        .context("no datagram came back")??;
    let bytes = &buf[..n];
    ensure!(bytes.len() >= 10 && bytes[..3] == [0, 0, 0], "relayed header {bytes:?}");
    let (ip, rest) = match bytes[3] {
        1 => (IpAddr::from(<[u8; 4]>::try_from(&bytes[4..8])?), &bytes[8..]),
        4 => (IpAddr::from(<[u8; 16]>::try_from(&bytes[4..20])?), &bytes[20..]),
        other => bail!("relayed address type {other}"),
    };
    let port = u16::from_be_bytes([rest[0], rest[1]]);
    Ok((SocketAddr::new(ip, port), rest[2..].to_vec()))
}

/// Sends raw `bytes` and asserts that the proxy closes without a reply: a FIN, or a RST when
/// it left some of the bytes unread.
pub(crate) async fn assert_closed_silently(proxy: SocketAddr, bytes: &[u8]) -> anyhow::Result<()> {
    let mut stream = connect(proxy).await?;
    write(&mut stream, bytes).await?;
    match read_to_eof(&mut stream).await {
        Ok(got) => ensure!(got.is_empty(), "{bytes:?} got a reply {got:?}"),
        Err(error) => {
            let reset = error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
            });
            ensure!(reset, "{bytes:?}: {error:#}");
        }
    }
    Ok(())
}
