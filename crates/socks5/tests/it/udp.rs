//! `UDP ASSOCIATE`: allowed datagrams echoed, blocked ones dropped and recorded, spoofed
//! sources and unsolicited inbound dropped, fragments dropped, and the association's end.

#![expect(
    clippy::disallowed_methods,
    reason = "these tests play the SOCKS5 client and UDP peers, not proxyd's egress"
)]

use std::net::{IpAddr, SocketAddr};

use proxyd_policy::Mode;
use proxyd_test_support::bypass::{self, Expect, Ports, Wire};
use proxyd_test_support::{UdpCanary, UdpEcho, read_to_eof};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::client::{
    Addr, UDP_ASSOCIATE, datagram, failure, recv_relayed, refused, request, send_request,
};
use crate::support::{LOCALHOST, Proxy, Setup, bounded, event};

/// An association: its control connection, the relay address, and the client's socket.
struct Association {
    control: TcpStream,
    relay: SocketAddr,
    socket: UdpSocket,
}

impl Association {
    /// Associates, naming the client socket's address in the request (or all zeros).
    async fn open(proxy: &Proxy, name_the_client: bool) -> anyhow::Result<Association> {
        let socket = UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).await?;
        let (addr, port) = match name_the_client {
            true => (socket.local_addr()?.ip(), socket.local_addr()?.port()),
            false => ("0.0.0.0".parse()?, 0),
        };
        let (control, reply) =
            send_request(proxy.addr, &request(UDP_ASSOCIATE, Addr::Ip(addr), port)).await?;
        anyhow::ensure!(reply.code == 0, "associate got {reply:?}");
        Ok(Association { control, relay: reply.bound, socket })
    }

    async fn send(&self, bytes: &[u8]) -> anyhow::Result<()> {
        bounded(self.socket.send_to(bytes, self.relay)).await??;
        Ok(())
    }

    /// Sends `data` to `to` through the relay.
    async fn send_to(&self, to: SocketAddr, data: &[u8]) -> anyhow::Result<()> {
        self.send(&datagram(0, Addr::Ip(to.ip()), to.port(), data)).await
    }
}

async fn stranger() -> anyhow::Result<UdpSocket> {
    Ok(UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).await?)
}

#[tokio::test]
async fn an_allowed_datagram_is_echoed() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let association = Association::open(&proxy, true).await?;
    // The relay is on the listener's loopback address, never on all interfaces.
    assert_eq!(association.relay.ip(), proxy.addr.ip());
    assert_ne!(association.relay.port(), 0);
    association.send_to(echo.addr(), b"ping").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"ping".to_vec()));
    let received = echo.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].1, b"ping");
    let port = echo.addr().port();
    assert_eq!(
        proxy.events.summary(),
        [event("socks5-udp", "127.0.0.1", port, "allow", "allowed")]
    );
    Ok(())
}

#[tokio::test]
async fn a_name_is_decided_resolved_and_pinned_once_per_association() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = Setup::new()
        .allow(&["udp.test", &echo.addr().to_string()])
        .resolve("udp.test", LOCALHOST)
        .start()
        .await?;
    let association = Association::open(&proxy, false).await?;
    let port = echo.addr().port();
    for payload in [&b"one"[..], b"two", b"three"] {
        association.send(&datagram(0, Addr::Domain(b"UDP.test."), port, payload)).await?;
        assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), payload.to_vec()));
    }
    assert_eq!(proxy.resolver.lookups("udp.test"), 1);
    assert_eq!(proxy.events.summary(), [event("socks5-udp", "udp.test", port, "allow", "allowed")]);
    Ok(())
}

#[tokio::test]
async fn blocked_datagrams_are_dropped_and_recorded() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let canary = UdpCanary::start().await?;
    let proxy = Setup::new()
        .allow(&["*", &echo.addr().to_string()])
        .deny(&["denied.test"])
        .resolve("denied.test", LOCALHOST)
        .resolve("rebind.test", LOCALHOST)
        .start()
        .await?;
    let association = Association::open(&proxy, true).await?;
    let port = canary.addr().port();
    // A local literal `*` does not unlock, a denied name, a name that resolves locally.
    association.send_to(canary.addr(), b"literal").await?;
    association.send(&datagram(0, Addr::Domain(b"denied.test"), port, b"denied")).await?;
    association.send(&datagram(0, Addr::Domain(b"rebind.test"), port, b"rebind")).await?;
    // Datagrams are handled in order: once this one is echoed, the others were dropped.
    association.send_to(echo.addr(), b"after").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"after".to_vec()));
    canary.assert_untouched();
    assert_eq!(proxy.resolver.lookups("denied.test"), 0);
    assert_eq!(
        proxy.events.summary(),
        [
            event("socks5-udp", "127.0.0.1", port, "block", "not_allowed_local"),
            event("socks5-udp", "denied.test", port, "block", "denied"),
            event("socks5-udp", "rebind.test", port, "block", "not_allowed_local"),
            event("socks5-udp", "127.0.0.1", echo.addr().port(), "allow", "allowed"),
        ]
    );
    assert!(proxy.events.all().iter().all(|e| e.client.map(|c| c.ip()) == Some(LOCALHOST)));
    Ok(())
}

#[tokio::test]
async fn datagrams_from_another_source_are_dropped() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let association = Association::open(&proxy, true).await?;
    let spoofer = stranger().await?;
    let forged = datagram(0, Addr::Ip(echo.addr().ip()), echo.addr().port(), b"forged");
    bounded(spoofer.send_to(&forged, association.relay)).await??;
    association.send_to(echo.addr(), b"genuine").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"genuine".to_vec()));
    let payloads: Vec<_> = echo.received().into_iter().map(|(_, data)| data).collect();
    assert_eq!(payloads, [b"genuine".to_vec()]);
    Ok(())
}

#[tokio::test]
async fn without_a_named_port_the_first_sender_is_pinned() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let association = Association::open(&proxy, false).await?;
    association.send_to(echo.addr(), b"first").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"first".to_vec()));
    let spoofer = stranger().await?;
    let forged = datagram(0, Addr::Ip(echo.addr().ip()), echo.addr().port(), b"forged");
    bounded(spoofer.send_to(&forged, association.relay)).await??;
    association.send_to(echo.addr(), b"second").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"second".to_vec()));
    let payloads: Vec<_> = echo.received().into_iter().map(|(_, data)| data).collect();
    assert_eq!(payloads, [b"first".to_vec(), b"second".to_vec()]);
    Ok(())
}

#[tokio::test]
async fn unsolicited_inbound_datagrams_are_dropped() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let association = Association::open(&proxy, true).await?;
    association.send_to(echo.addr(), b"open").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"open".to_vec()));
    // The relay's outbound address, as the echo server saw it.
    let outbound = echo.received()[0].0;
    let intruder = stranger().await?;
    bounded(intruder.send_to(b"unsolicited", outbound)).await??;
    // Had the intruder's datagram been relayed, it would have arrived before this echo.
    association.send_to(echo.addr(), b"next").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"next".to_vec()));
    Ok(())
}

/// Fragments, framing errors, and every malformed SOCKS5 domain of the bypass table
/// (`testdata/bypass.toml`) as a datagram's destination: dropped, and nothing resolved.
#[tokio::test]
async fn fragments_and_malformed_headers_are_dropped() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let table = bypass::table();
    let ports = Ports { canary: echo.addr().port(), ..Ports::from(table.ports) };
    let names: Vec<(Vec<u8>, u16)> = table
        .groups
        .iter()
        .flat_map(|group| group.cases(&ports))
        .filter(|case| case.expect == Expect::Malformed)
        .filter_map(|case| match case.wire {
            Wire::SocksDomain(name, port) => Some((name, port)),
            _ => None,
        })
        .collect();
    // Every name resolves to the echo, so only the target parser stands in the way.
    let mut setup = Setup::new().allow(&["*", &echo.addr().to_string()]).allow_local_binding();
    for (name, _) in &names {
        setup = setup.resolve(std::str::from_utf8(name)?, LOCALHOST);
    }
    let proxy = setup.start().await?;
    let association = Association::open(&proxy, true).await?;
    let (ip, port) = (Addr::Ip(echo.addr().ip()), echo.addr().port());
    let mut reserved = datagram(0, ip, port, b"reserved");
    reserved[1] = 1;
    let mut bad: Vec<Vec<u8>> = vec![
        datagram(1, ip, port, b"fragment 1"),
        datagram(0x81, ip, port, b"last fragment"),
        reserved,
        vec![0, 0, 0, 5, 127, 0, 0, 1, 0, 80],
        vec![0, 0, 0, 1, 127, 0],
        vec![0, 0],
        datagram(0, ip, 0, b"port zero"),
    ];
    bad.extend(names.iter().map(|(name, port)| datagram(0, Addr::Domain(name), *port, b"bad")));
    for bytes in &bad {
        association.send(bytes).await?;
    }
    association.send_to(echo.addr(), b"whole").await?;
    assert_eq!(recv_relayed(&association.socket).await?, (echo.addr(), b"whole".to_vec()));
    let payloads: Vec<_> = echo.received().into_iter().map(|(_, data)| data).collect();
    assert_eq!(payloads, [b"whole".to_vec()]);
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

/// Asserts that the relay socket is gone: a datagram to it draws ICMP port unreachable.
async fn assert_relay_closed(relay: SocketAddr) -> anyhow::Result<()> {
    let probe = stranger().await?;
    probe.connect(relay).await?;
    probe.send(b"anyone there").await?;
    let mut buf = [0; 64];
    let got = bounded(probe.recv(&mut buf)).await?;
    assert_eq!(
        got.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "the relay still answers"
    );
    Ok(())
}

#[tokio::test]
async fn the_association_ends_with_its_control_connection() -> anyhow::Result<()> {
    let echo = UdpEcho::start().await?;
    let proxy = Setup::new().allow(&[&echo.addr().to_string()]).start().await?;
    let mut association = Association::open(&proxy, true).await?;
    association.send_to(echo.addr(), b"hello").await?;
    recv_relayed(&association.socket).await?;
    association.control.shutdown().await?;
    assert_eq!(read_to_eof(&mut association.control).await?, b"");
    assert_relay_closed(association.relay).await
}

#[tokio::test]
async fn the_association_ends_after_the_idle_timeout() -> anyhow::Result<()> {
    let proxy = Setup::new()
        .settings(|s| s.idle_timeout = std::time::Duration::from_millis(200))
        .start()
        .await?;
    let mut association = Association::open(&proxy, true).await?;
    assert_eq!(read_to_eof(&mut association.control).await?, b"");
    assert_relay_closed(association.relay).await
}

#[tokio::test]
async fn switching_to_limited_mode_ends_open_associations() -> anyhow::Result<()> {
    let proxy = Setup::new().start().await?;
    let mut association = Association::open(&proxy, true).await?;
    proxy.engine.set_mode(Mode::Limited);
    assert_eq!(read_to_eof(&mut association.control).await?, b"");
    assert_relay_closed(association.relay).await
}

#[tokio::test]
async fn limited_mode_refuses_udp_associate() -> anyhow::Result<()> {
    let proxy = Setup::new().mode(Mode::Limited).start().await?;
    let zeros = request(UDP_ASSOCIATE, Addr::Ip(IpAddr::from([0, 0, 0, 0])), 0);
    assert_eq!(refused(proxy.addr, &zeros).await?, failure(0x02));
    assert_eq!(
        proxy.events.summary(),
        [event("socks5-udp", "0.0.0.0", 0, "block", "method_not_allowed")]
    );
    Ok(())
}

#[tokio::test]
async fn a_disabled_proxy_refuses_udp_associate() -> anyhow::Result<()> {
    let proxy = Setup::new().disabled().start().await?;
    let zeros = request(UDP_ASSOCIATE, Addr::Ip(IpAddr::from([0, 0, 0, 0])), 0);
    assert_eq!(refused(proxy.addr, &zeros).await?, failure(0x01));
    assert_eq!(
        proxy.events.summary(),
        [event("socks5-udp", "0.0.0.0", 0, "block", "proxy_disabled")]
    );
    Ok(())
}
