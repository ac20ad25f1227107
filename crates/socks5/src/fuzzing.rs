//! The wire readers, for the fuzz targets in `fuzz/`: not an API (hidden from the docs).
//!
//! Both readers are async over `AsyncRead`; over a byte slice they never wait, so they are
//! polled once here, without a runtime. `Pending` would mean a reader waits on a complete
//! input, which is a bug the targets report.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use fast_socks5::util::target_addr::TargetAddr;
use proxyd_policy::{Target, TargetError};

use crate::wire;

/// A request's command byte and the target it names; `Err` carries the reader's error.
pub type Request = Result<(u8, Result<Target, TargetError>), String>;

/// Reads `bytes` as a SOCKS5 request (RFC 1928 §4) with the listener's reader.
pub fn read_request(bytes: &[u8]) -> Request {
    let mut input = bytes;
    let request = now(wire::read_request(&mut input)).map_err(|error| format!("{error:?}"))?;
    let command = match request.command {
        wire::Command::Connect => fast_socks5::consts::SOCKS5_CMD_TCP_CONNECT,
        wire::Command::UdpAssociate => fast_socks5::consts::SOCKS5_CMD_UDP_ASSOCIATE,
    };
    Ok((command, wire::target_of(&request.addr)))
}

/// The parts of a UDP request header (RFC 1928 §7) as the relay reads them.
#[derive(Debug)]
pub struct UdpHeader<'a> {
    pub frag: u8,
    /// The destination through the target parser.
    pub target: Result<Target, TargetError>,
    /// The raw domain name when the address type is DOMAINNAME.
    pub domain: Option<String>,
    pub payload: &'a [u8],
}

/// Reads `datagram` as the UDP relay does.
pub fn read_udp_header(datagram: &[u8]) -> Result<UdpHeader<'_>, String> {
    let (frag, addr, payload) =
        now(fast_socks5::parse_udp_request(datagram)).map_err(|error| error.to_string())?;
    let domain = match &addr {
        TargetAddr::Domain(name, _) => Some(name.clone()),
        TargetAddr::Ip(_) => None,
    };
    Ok(UdpHeader { frag, target: wire::target_of(&addr), domain, payload })
}

fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a reader waited on an in-memory input"),
    }
}
