//! The SOCKS5 handshake on the wire (RFC 1928 §3–6).
//!
//! Method negotiation is fast-socks5's typestate `Socks5ServerProtocol::negotiate_auth`. The
//! request is read here rather than with its `read_command`, which answers some failures by
//! itself with the wrong code (a truncated request or a non-UTF-8 domain name gets 0x05,
//! "connection refused") and then consumes the protocol state, so no correct reply can follow.
//! The address itself is still read by fast-socks5's `read_address`. Replies are written here
//! too: fast-socks5 can only reply from the state `read_command` returns.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fast_socks5::consts;
use fast_socks5::server::{AuthMethodSuccessState, NoAuthentication, Socks5ServerProtocol};
use fast_socks5::util::target_addr::{AddrError, TargetAddr, read_address};
use proxyd_policy::{Host, Target, TargetError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Socks5Error;

/// `BND.ADDR`/`BND.PORT` of a failure reply: RFC 1928 gives them no meaning there.
pub(crate) const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// The commands proxyd carries out (RFC 1928 §4); `BIND` is a non-goal (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Connect,
    UdpAssociate,
}

/// A request whose framing is valid; its address is not yet a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) command: Command,
    pub(crate) addr: TargetAddr,
}

impl Request {
    pub(crate) fn target(&self) -> Result<Target, Socks5Error> {
        Ok(target_of(&self.addr)?)
    }
}

/// A SOCKS5 address (of a request or a UDP datagram) through the one target parser (SPEC §3):
/// IP literals as they are, domain names from their raw bytes (so NUL, control bytes, spaces,
/// numeric spellings such as `2130706433` and empty names are refused); port 0 is refused.
pub(crate) fn target_of(addr: &TargetAddr) -> Result<Target, TargetError> {
    match addr {
        TargetAddr::Ip(addr) => Target::from_host(Host::Ip(addr.ip()), addr.port()),
        TargetAddr::Domain(name, port) => Target::from_socks_domain(name.as_bytes(), *port),
    }
}

/// Negotiates "no authentication" (RFC 1928 §3). A client that does not offer it gets `05 FF`
/// from fast-socks5; every failure here closes the connection without a further reply.
pub(crate) async fn negotiate<T>(stream: &mut T) -> Result<(), Socks5Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let negotiated = Socks5ServerProtocol::start(&mut *stream)
        .negotiate_auth(&[NoAuthentication])
        .await
        .map_err(|error| Socks5Error::Greeting(error.to_string()))?;
    // Nothing more to do for this method: hand the stream back to the request reader.
    let _stream: &mut T = negotiated.into_inner();
    Ok(())
}

/// Reads one request (RFC 1928 §4): `VER CMD RSV ATYP DST.ADDR DST.PORT`. The address is read
/// before the command is judged, so an unknown address type is reported as such (0x08) even
/// for an unsupported command.
pub(crate) async fn read_request<T>(stream: &mut T) -> Result<Request, Socks5Error>
where
    T: AsyncRead + Unpin,
{
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.map_err(|e| Socks5Error::from_io(&e))?;
    let [version, command, reserved, atyp] = head;
    if version != consts::SOCKS5_VERSION {
        return Err(Socks5Error::Malformed("request version is not 5"));
    }
    if reserved != 0 {
        return Err(Socks5Error::Malformed("reserved byte is not zero"));
    }
    let addr = read_address(stream, atyp).await.map_err(|error| match error {
        AddrError::IncorrectAddressType => Socks5Error::AddressType(atyp),
        AddrError::Utf8(_) => Socks5Error::Malformed("domain name is not utf-8"),
        other => {
            tracing::debug!(error = %other, "reading the address failed");
            Socks5Error::Truncated
        }
    })?;
    let command = match command {
        consts::SOCKS5_CMD_TCP_CONNECT => Command::Connect,
        consts::SOCKS5_CMD_UDP_ASSOCIATE => Command::UdpAssociate,
        other => return Err(Socks5Error::Command(other)),
    };
    Ok(Request { command, addr })
}

/// A reply (RFC 1928 §6): `VER REP RSV ATYP BND.ADDR BND.PORT`, with an IP address.
pub(crate) fn reply(code: u8, bound: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[consts::SOCKS5_VERSION, code, 0]);
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(consts::SOCKS5_ADDR_TYPE_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(consts::SOCKS5_ADDR_TYPE_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// Writes a reply within `limit`; `false` when the client is gone or stalled.
pub(crate) async fn send_reply<T>(
    stream: &mut T,
    code: u8,
    bound: SocketAddr,
    limit: Duration,
) -> bool
where
    T: AsyncWrite + Unpin,
{
    let bytes = reply(code, bound);
    match tokio::time::timeout(limit, stream.write_all(&bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::debug!(%error, code, "writing the reply failed");
            false
        }
        Err(_elapsed) => {
            tracing::debug!(code, "writing the reply timed out");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `bytes` as a request and turns its address into a target.
    fn parse(bytes: &[u8]) -> Result<(Command, Target), String> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut input = bytes;
        let request = runtime.block_on(read_request(&mut input)).map_err(|e| format!("{e:?}"))?;
        let target = request.target().map_err(|e| format!("{e:?}"))?;
        Ok((request.command, target))
    }

    fn domain(name: &[u8], port: u16) -> Vec<u8> {
        let mut out = vec![5, 1, 0, 3, name.len() as u8];
        out.extend_from_slice(name);
        out.extend_from_slice(&port.to_be_bytes());
        out
    }

    #[track_caller]
    fn check(bytes: &[u8], expected: Result<(Command, &str), &str>) {
        let got = parse(bytes).map(|(command, target)| (command, target.to_string()));
        let expected = expected.map(|(c, t)| (c, t.to_owned())).map_err(str::to_owned);
        match (&got, &expected) {
            (Err(got), Err(want)) => assert!(got.contains(want), "{bytes:?}: {got} !~ {want}"),
            _ => assert_eq!(got, expected, "{bytes:?}"),
        }
    }

    #[test]
    fn requests() {
        use Command::*;
        check(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 80], Ok((Connect, "127.0.0.1:80")));
        check(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0], Err("PortOutOfRange"));
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x1f, 0x90]);
        check(&v6, Ok((Connect, "[::1]:8080")));
        check(&domain(b"Example.COM.", 443), Ok((Connect, "example.com:443")));
        check(&domain(b"127.0.0.1", 443), Ok((Connect, "127.0.0.1:443")));
        check(&domain(b"2130706433", 80), Err("AmbiguousNumericHost"));
        check(&domain(b"0x7f000001", 80), Err("AmbiguousNumericHost"));
        check(&domain(b"127.1", 80), Err("AmbiguousNumericHost"));
        check(&domain(b"a\0b.test", 80), Err("ControlByte"));
        check(&domain(b"a\x07b.test", 80), Err("ControlByte"));
        check(&domain(b"a b.test", 80), Err("Whitespace"));
        check(&domain(b"a..b", 80), Err("EmptyLabel"));
        check(&domain(b"", 80), Err("EmptyHost"));
        check(&domain(b"user@host", 80), Err("Userinfo"));
        check(&domain(b"a%2eb", 80), Err("PercentEncoding"));
        check(&domain(b"\xff\xfe", 80), Err("not utf-8"));
        check(&domain(b"example.com", 0), Err("PortOutOfRange"));
        check(&domain(&[b'a'; 255], 80), Err("NameTooLong"));
        check(&[5, 2, 0, 1, 10, 0, 0, 1, 0, 80], Err("Command(2)"));
        check(&[5, 9, 0, 1, 10, 0, 0, 1, 0, 80], Err("Command(9)"));
        check(&[5, 2, 0, 2, 10, 0, 0, 1, 0, 80], Err("AddressType(2)"));
        check(&[5, 1, 0, 5], Err("AddressType(5)"));
        check(&[4, 1, 0, 1, 10, 0, 0, 1, 0, 80], Err("version"));
        check(&[5, 1, 1, 1, 10, 0, 0, 1, 0, 80], Err("reserved"));
        check(&[5, 1, 0], Err("Truncated"));
        check(&[5, 1, 0, 1, 10, 0], Err("Truncated"));
        check(&[5, 1, 0, 1, 10, 0, 0, 1, 0], Err("Truncated"));
        check(&[5, 1, 0, 3, 5, b'a'], Err("Truncated"));
        check(&[5, 1, 0, 4, 0, 0], Err("Truncated"));
    }

    #[test]
    fn target_errors_are_kept() {
        let request = Request {
            command: Command::Connect,
            addr: TargetAddr::Domain("2130706433".into(), 80),
        };
        assert!(matches!(
            request.target(),
            Err(Socks5Error::Target(TargetError::AmbiguousNumericHost))
        ));
    }

    #[test]
    fn replies() {
        assert_eq!(reply(0x02, UNSPECIFIED), [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
        let v4: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(reply(0, v4), [5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]);
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let mut want = vec![5, 0, 0, 4];
        want.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        want.extend_from_slice(&[0, 1]);
        assert_eq!(reply(0, v6), want);
    }
}
