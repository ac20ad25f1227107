//! The DNS stub behind [`crate::SystemResolver`]: asks resolv.conf's nameservers for `A` and
//! `AAAA` of one fully-qualified name, asynchronously (no thread is parked per lookup). The
//! wire format is hickory-proto's; the transport is a connected UDP socket per query (random
//! ID, random source port, answers accepted only from the nameserver asked and only for the
//! question asked), with TCP (RFC 1035 §4.2.2 framing) when the answer is truncated.
//!
//! Each query tries the nameservers in order, [`ATTEMPTS`] rounds, waiting [`PER_TRY`] for
//! each; the caller bounds the whole lookup with `dns_timeout`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

/// How long one query waits for one nameserver before asking the next.
const PER_TRY: Duration = Duration::from_millis(1500);
/// Rounds over the nameserver list.
const ATTEMPTS: usize = 2;
/// Largest UDP answer read (EDNS is not used, so servers stay under 512 bytes or truncate).
const MAX_UDP: usize = 4096;

/// The `nameserver` lines of resolv.conf text (RFC-less, resolv.conf(5)); every other line
/// (`search`, `domain`, `options`) is ignored on purpose: names are asked fully qualified.
pub(crate) fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            (fields.next() == Some("nameserver")).then(|| fields.next()).flatten()
        })
        // A scoped IPv6 address (`fe80::1%eth0`) keeps its address, not its scope.
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// `A` and `AAAA` of `name` (fully qualified, with its trailing dot), asked concurrently.
/// Either family answering is enough; both failing is the first failure.
pub(crate) async fn lookup(servers: &[SocketAddr], name: &str) -> io::Result<Vec<IpAddr>> {
    let name = Name::from_ascii(name)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
    let (v4, v6) =
        tokio::join!(query(servers, &name, RecordType::A), query(servers, &name, RecordType::AAAA));
    match (v4, v6) {
        (Ok(mut v4), Ok(v6)) => {
            v4.extend(v6);
            Ok(v4)
        }
        (Ok(ips), Err(_)) | (Err(_), Ok(ips)) => Ok(ips),
        (Err(err), Err(_)) => Err(err),
    }
}

async fn query(servers: &[SocketAddr], name: &Name, kind: RecordType) -> io::Result<Vec<IpAddr>> {
    if servers.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no nameserver configured"));
    }
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no nameserver answered");
    for _ in 0..ATTEMPTS {
        for server in servers {
            match tokio::time::timeout(PER_TRY, ask(*server, name, kind)).await {
                Ok(Ok(Answer::Addresses(ips))) => return Ok(ips),
                // Authoritative "no such name": asking elsewhere would not help.
                Ok(Ok(Answer::NoSuchName)) => {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "no such name"));
                }
                Ok(Err(err)) => last = err,
                Err(_elapsed) => {
                    last = io::Error::new(io::ErrorKind::TimedOut, "nameserver did not answer");
                }
            }
        }
    }
    Err(last)
}

enum Answer {
    Addresses(Vec<IpAddr>),
    NoSuchName,
}

async fn ask(server: SocketAddr, name: &Name, kind: RecordType) -> io::Result<Answer> {
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(name.clone(), kind));
    let bytes = request.to_vec().map_err(io::Error::other)?;
    let reply = udp_exchange(server, &bytes, request.metadata.id, name, kind).await?;
    let reply = match reply.metadata.truncation {
        true => tcp_exchange(server, &bytes, request.metadata.id, name, kind).await?,
        false => reply,
    };
    match reply.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Answer::NoSuchName),
        code => return Err(io::Error::other(format!("nameserver answered {code}"))),
    }
    let ips = reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) if kind == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) if kind == RecordType::AAAA => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    Ok(Answer::Addresses(ips))
}

/// Whether `reply` answers `request_id`'s question (anything else is ignored, as a spoofed or
/// stale datagram).
fn answers(reply: &Message, request_id: u16, name: &Name, kind: RecordType) -> bool {
    reply.metadata.id == request_id
        && reply.queries.len() == 1
        && reply.queries[0].query_type() == kind
        && reply.queries[0].name().eq_case(name)
}

#[expect(clippy::disallowed_methods, reason = "the DNS stub's own query socket (SPEC §7.1)")]
async fn udp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    name: &Name,
    kind: RecordType,
) -> io::Result<Message> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from any other address.
    socket.connect(server).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let n = socket.recv(&mut buf).await?;
        let Ok(reply) = Message::from_vec(&buf[..n]) else { continue };
        if answers(&reply, id, name, kind) {
            return Ok(reply);
        }
    }
}

#[expect(clippy::disallowed_methods, reason = "the DNS stub's TCP retry (RFC 1035 §4.2.2)")]
async fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    name: &Name,
    kind: RecordType,
) -> io::Result<Message> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len()).map_err(|_| io::Error::other("query too long"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    let reply = Message::from_vec(&buf).map_err(io::Error::other)?;
    match answers(&reply, id, name, kind) {
        true => Ok(reply),
        false => Err(io::Error::other("tcp answer does not match the question")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nameserver_lines_count() {
        let conf = "# generated\nsearch corp.internal example.com\ndomain corp.internal\n\
                    nameserver 10.255.255.53\nnameserver ::1 # local\noptions ndots:5\n\
                    nameserver fe80::1%eth0\nnameserver not-an-ip\n;nameserver 192.0.2.9\n";
        let got: Vec<String> = nameservers(conf).iter().map(|s| s.to_string()).collect();
        assert_eq!(got, ["10.255.255.53:53", "[::1]:53", "[fe80::1]:53"]);
    }
}
