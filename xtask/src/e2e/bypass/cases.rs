//! One hostile case and what proxyd must answer, and the ports cases may aim at.

use super::super::fixtures::loopback_hosts_name;
use super::super::proxyd::Proxyd;
use super::super::servers::Canary;

/// What proxyd must answer (SPEC §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// `400` without `x-proxy-error`; SOCKS5 reply 0x01 or 0x08.
    Malformed,
    /// `403` with the reason's `x-proxy-error` and the reason in the JSON body; SOCKS5 0x02.
    Blocked(&'static str),
    /// A Unicode spelling: malformed on the HTTP wire (request targets are ASCII), and, as a
    /// SOCKS5 domain converted with IDNA (SPEC §3), blocked (0x02).
    Unicode,
    /// A control: allowed, and it must reach the canary.
    Reaches,
}

impl Expect {
    pub(super) fn http(self) -> String {
        match self {
            Expect::Blocked(reason) => format!("403 {} {reason}", super::header_for(reason)),
            Expect::Malformed | Expect::Unicode => "400".into(),
            Expect::Reaches => "the canary".into(),
        }
    }

    pub(super) fn socks(self) -> &'static str {
        match self {
            Expect::Malformed => "0x01 or 0x08",
            Expect::Blocked(_) | Expect::Unicode => "0x02",
            Expect::Reaches => "0x00",
        }
    }
}

pub(super) const LOCAL: Expect = Expect::Blocked("not_allowed_local");
pub(super) const MISS: Expect = Expect::Blocked("not_allowed");
pub(super) const DENIED: Expect = Expect::Blocked("denied");
pub(super) const SELF: Expect = Expect::Blocked("self_connection");
pub(super) const BAD: Expect = Expect::Malformed;

pub(super) struct Case {
    /// How the case is shown in a failure.
    pub(super) label: String,
    /// The absolute-form request head, if the case can be sent that way.
    pub(super) absolute: Option<Vec<u8>>,
    /// The `CONNECT` request head, if the case can be sent that way.
    pub(super) connect: Option<Vec<u8>>,
    /// The SOCKS5 destination: domain bytes (also sent as an address type when they spell an IP
    /// literal) and port.
    pub(super) socks: Option<(Vec<u8>, u16)>,
    pub(super) expect: Expect,
}

/// `host:port` on every entry point; the SOCKS5 domain is `host` without IPv6 brackets.
pub(super) fn case(host: &str, port: u16, expect: Expect) -> Case {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Case { socks: Some((bare.as_bytes().to_vec(), port)), ..raw(&format!("{host}:{port}"), expect) }
}

/// An authority only HTTP can carry (SOCKS5 has a separate binary port): the absolute-form URI
/// and the `CONNECT` target, each with the same `Host`.
pub(super) fn raw(authority: &str, expect: Expect) -> Case {
    Case {
        label: format!("{authority:?}"),
        absolute: Some(
            format!(
                "GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
        connect: Some(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes(),
        ),
        socks: None,
        expect,
    }
}

/// A whole absolute-form request head.
pub(super) fn absolute(head: &str, expect: Expect) -> Case {
    let label = format!("{:?}", head.trim_end());
    Case { label, absolute: Some(head.as_bytes().to_vec()), connect: None, socks: None, expect }
}

/// A whole `CONNECT` request head.
pub(super) fn connect(head: &str, expect: Expect) -> Case {
    let label = format!("{:?}", head.trim_end());
    Case { label, absolute: None, connect: Some(head.as_bytes().to_vec()), socks: None, expect }
}

/// A SOCKS5 domain only.
pub(super) fn socks(domain: &str, port: u16, expect: Expect) -> Case {
    Case {
        label: format!("{domain:?} port {port}"),
        absolute: None,
        connect: None,
        socks: Some((domain.as_bytes().to_vec(), port)),
        expect,
    }
}

/// The ports a case may aim at, and the `/etc/hosts` loopback name if there is one.
pub(super) struct Ports {
    pub(super) canary: u16,
    pub(super) http: u16,
    pub(super) socks: u16,
    pub(super) admin: u16,
    pub(super) hosts_name: Option<String>,
}

impl Ports {
    pub(super) fn new(canary: &Canary, proxyd: &Proxyd) -> Ports {
        Ports {
            canary: canary.port(),
            http: proxyd.http.port(),
            socks: proxyd.socks.port(),
            admin: proxyd.admin.port(),
            hosts_name: loopback_hosts_name().ok(),
        }
    }

    /// Placeholder ports, to count the cases before anything runs.
    pub(super) fn example() -> Ports {
        Ports { canary: 1, http: 2, socks: 3, admin: 4, hosts_name: loopback_hosts_name().ok() }
    }
}
