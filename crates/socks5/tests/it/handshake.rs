//! Greetings and requests, malformed, truncated and stalled: exact reply bytes, and nothing
//! dialled or resolved.

use std::time::Duration;

use proxyd_test_support::bypass::{self, Expect, Ports, Wire};
use proxyd_test_support::{Canary, connect, read_to_eof};
use tokio::io::AsyncWriteExt;

use crate::client::{
    Addr, BIND, CONNECT, GREETING, UDP_ASSOCIATE, assert_closed_silently, exchange, failure,
    greeted, read_n, refused, request, write,
};
use crate::support::Setup;

#[tokio::test]
async fn no_authentication_is_chosen_among_the_offered_methods() -> anyhow::Result<()> {
    let proxy = Setup::new().start().await?;
    let mut stream = connect(proxy.addr).await?;
    write(&mut stream, &[5, 3, 2, 1, 0]).await?;
    assert_eq!(read_n(&mut stream, 2).await?, [5, 0]);
    Ok(())
}

#[tokio::test]
async fn bad_greetings_are_refused() -> anyhow::Result<()> {
    let proxy = Setup::new().start().await?;
    // No acceptable method (RFC 1928 §3): `05 FF`, then close.
    assert_eq!(exchange(proxy.addr, &[5, 1, 2]).await?, [5, 0xff]);
    assert_eq!(exchange(proxy.addr, &[5, 2, 1, 2]).await?, [5, 0xff]);
    assert_eq!(exchange(proxy.addr, &[5, 0]).await?, [5, 0xff]);
    // Not SOCKS5 (a SOCKS4 request, an HTTP request): closed without a reply.
    assert_closed_silently(proxy.addr, &[4, 1, 0, 80, 127, 0, 0, 1, 0]).await?;
    assert_closed_silently(proxy.addr, b"GET / HTTP/1.1\r\n\r\n").await?;
    Ok(())
}

#[tokio::test]
async fn truncated_greetings_are_closed_without_a_reply() -> anyhow::Result<()> {
    let proxy = Setup::new().start().await?;
    for bytes in [&[][..], &[5], &[5, 2], &[5, 3, 0, 1]] {
        let mut stream = connect(proxy.addr).await?;
        write(&mut stream, bytes).await?;
        stream.shutdown().await?;
        assert_eq!(read_to_eof(&mut stream).await?, b"", "{bytes:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_stalled_greeting_times_out() -> anyhow::Result<()> {
    let proxy =
        Setup::new().settings(|s| s.handshake_timeout = Duration::from_millis(200)).start().await?;
    let mut stream = connect(proxy.addr).await?;
    write(&mut stream, &[5, 1]).await?;
    assert_eq!(read_to_eof(&mut stream).await?, b"");
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_general_failure() -> anyhow::Result<()> {
    let proxy = Setup::new().start().await?;
    let cases: &[&[u8]] = &[
        // Wrong version, non-zero reserved byte.
        &[4, 1, 0, 1, 127, 0, 0, 1, 0, 80],
        &[5, 1, 1, 1, 127, 0, 0, 1, 0, 80],
        // Port 0, IPv4 and IPv6.
        &[5, 1, 0, 1, 192, 0, 2, 1, 0, 0],
        &[5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    ];
    for case in cases {
        assert_eq!(refused(proxy.addr, case).await?, failure(0x01), "{case:?}");
    }
    Ok(())
}

/// Every malformed SOCKS5 domain of the bypass table (`testdata/bypass.toml`), and a name that
/// is not text at all: 0x01, nothing resolved, nothing dialled.
#[tokio::test]
async fn malformed_domain_names_are_never_resolved_or_dialled() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let table = bypass::table();
    let ports = Ports { canary: canary.addr().port(), ..Ports::from(table.ports) };
    let mut names: Vec<(Vec<u8>, u16)> = table
        .groups
        .iter()
        .flat_map(|group| group.cases(&ports))
        .filter(|case| case.expect == Expect::Malformed)
        .filter_map(|case| match case.wire {
            Wire::SocksDomain(name, port) => Some((name, port)),
            _ => None,
        })
        .collect();
    assert!(names.len() > 50, "only {} malformed SOCKS5 names in the table", names.len());
    names.push((b"\xc3\x28.test".to_vec(), ports.canary));
    // Everything is allowed, and every name resolves to the canary, so only the target parser
    // stands between these and the canary.
    let mut setup = Setup::new().allow(&["*"]).allow_local_binding();
    for (name, _) in &names {
        if let Ok(name) = std::str::from_utf8(name) {
            setup = setup.resolve(name, canary.addr().ip());
        }
    }
    let proxy = setup.start().await?;
    for (name, port) in &names {
        let reply = refused(proxy.addr, &request(CONNECT, Addr::Domain(name), *port)).await?;
        assert_eq!(reply, failure(0x01), "{:?} port {port}", String::from_utf8_lossy(name));
    }
    canary.assert_untouched();
    assert_eq!(proxy.resolver.total_lookups(), 0);
    assert_eq!(proxy.events.summary(), []);
    Ok(())
}

#[tokio::test]
async fn unknown_address_types_get_0x08() -> anyhow::Result<()> {
    let proxy = Setup::new().start().await?;
    for atyp in [0, 2, 5, 0xff] {
        let bytes = [5, CONNECT, 0, atyp, 127, 0, 0, 1, 0, 80];
        assert_eq!(refused(proxy.addr, &bytes).await?, failure(0x08), "atyp {atyp}");
    }
    // The address is judged before the command.
    assert_eq!(refused(proxy.addr, &[5, BIND, 0, 2, 1, 2]).await?, failure(0x08));
    Ok(())
}

#[tokio::test]
async fn bind_and_unknown_commands_get_0x07() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = Setup::new().allow(&[&canary.addr().to_string()]).start().await?;
    let target = Addr::from(canary.addr());
    for command in [BIND, 0, 4, 0x09, 0xff] {
        let reply = refused(proxy.addr, &request(command, target, canary.addr().port())).await?;
        assert_eq!(reply, failure(0x07), "command {command}");
    }
    canary.assert_untouched();
    assert_eq!(proxy.events.summary(), []);
    Ok(())
}

#[tokio::test]
async fn udp_associate_is_refused_when_disabled() -> anyhow::Result<()> {
    let proxy = Setup::new().settings(|s| s.enable_udp = false).start().await?;
    let any = Addr::Ip("0.0.0.0".parse()?);
    assert_eq!(refused(proxy.addr, &request(UDP_ASSOCIATE, any, 0)).await?, failure(0x07));
    Ok(())
}

#[tokio::test]
async fn truncated_requests_get_general_failure() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = Setup::new().allow(&["*"]).allow_local_binding().start().await?;
    let full = request(CONNECT, Addr::from(canary.addr()), canary.addr().port());
    let domain = request(CONNECT, Addr::Domain(b"x.test"), 80);
    let v6 = request(CONNECT, Addr::Ip("::1".parse()?), 80);
    for whole in [&full, &domain, &v6] {
        for cut in 1..whole.len() {
            let mut stream = greeted(proxy.addr).await?;
            write(&mut stream, &whole[..cut]).await?;
            stream.shutdown().await?;
            assert_eq!(read_to_eof(&mut stream).await?, failure(0x01), "{:?}", &whole[..cut]);
        }
    }
    canary.assert_untouched();
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

#[tokio::test]
async fn a_stalled_request_times_out_with_general_failure() -> anyhow::Result<()> {
    let proxy =
        Setup::new().settings(|s| s.handshake_timeout = Duration::from_millis(200)).start().await?;
    let mut stream = greeted(proxy.addr).await?;
    write(&mut stream, &[5, CONNECT, 0, 3, 10, b'a']).await?;
    assert_eq!(read_to_eof(&mut stream).await?, failure(0x01));
    Ok(())
}

#[tokio::test]
async fn a_pipelined_greeting_and_request_work() -> anyhow::Result<()> {
    let echo = proxyd_test_support::EchoTcp::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let mut bytes = GREETING.to_vec();
    bytes.extend(crate::client::connect_to(echo.addr()));
    bytes.extend_from_slice(b"pipelined");
    let mut stream = connect(proxy.addr).await?;
    write(&mut stream, &bytes).await?;
    stream.shutdown().await?;
    let got = read_to_eof(&mut stream).await?;
    assert_eq!(got[..2], [5, 0]);
    assert_eq!(got[2..4], [5, 0], "{got:?}");
    assert_eq!(&got[12..], b"pipelined");
    Ok(())
}
