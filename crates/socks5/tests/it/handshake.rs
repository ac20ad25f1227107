//! Greetings and requests, malformed, truncated and stalled: exact reply bytes, and nothing
//! dialled or resolved.

use std::time::Duration;

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

#[tokio::test]
async fn malformed_domain_names_are_never_resolved_or_dialled() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let port = canary.addr().port();
    // Everything is allowed, so only the target parser stands between these and the canary.
    let mut setup = Setup::new().allow(&["*"]).allow_local_binding();
    for name in ["a\0b.test", "a\x01b.test", "a b.test", "a\tb.test", "a..b", "x.test"] {
        setup = setup.resolve(name, canary.addr().ip());
    }
    let proxy = setup.start().await?;
    let names: &[&[u8]] = &[
        b"2130706433",
        b"0x7f000001",
        b"0177.0.0.1",
        b"127.1",
        b"127.000.000.001",
        b"a\0b.test",
        b"a\x01b.test",
        b"a\x7fb.test",
        b"a b.test",
        b"a\tb.test",
        b"",
        b"a..b",
        b".x.test",
        b"user@x.test",
        b"x.test%00",
        b"x.test\\",
        b"*.x.test",
        b"[::1%lo]",
        b"\xc3\x28.test",
        &[b'a'; 64],
    ];
    for name in names {
        let reply = refused(proxy.addr, &request(CONNECT, Addr::Domain(name), port)).await?;
        assert_eq!(reply, failure(0x01), "{:?}", String::from_utf8_lossy(name));
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
