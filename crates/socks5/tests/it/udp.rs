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

/// A loopback UDP sink that counts datagrams on its own thread, with a receive buffer large
/// enough for a whole burst, so what it misses was lost at proxyd's sockets, not at its own.
struct Sink {
    addr: SocketAddr,
    counted: std::sync::mpsc::Receiver<usize>,
}

impl Sink {
    fn start(expected: usize) -> anyhow::Result<Sink> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(LOCALHOST, 0))?;
        rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 8 << 20)?;
        // The sink stops counting after a quiet spell: every datagram still in flight is in a
        // socket buffer on loopback, so seconds of silence mean the burst is over.
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let addr = socket.local_addr()?;
        let (tx, counted) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            let mut count = 0;
            while count < expected && socket.recv_from(&mut buf).is_ok() {
                count += 1;
            }
            let _ = tx.send(count);
        });
        Ok(Sink { addr, counted })
    }

    /// How many datagrams arrived before the burst ended (bounded).
    fn count(&self) -> anyhow::Result<usize> {
        Ok(self.counted.recv_timeout(std::time::Duration::from_secs(30))?)
    }
}

/// 1,000 datagrams sent back to back, as fast as the client can: proxyd's relay must hold or
/// drain them, not drop half at its own socket (issue 16). Loopback loses nothing by itself
/// and the sink's buffer takes the whole burst, so every datagram missing was lost by proxyd:
/// none may be (before the fix 229-377 arrived; a batch loop that dropped the datagram after
/// each full batch delivered 997). Needs `net.core.rmem_max` of about 2 MiB (README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_datagrams_is_relayed() -> anyhow::Result<()> {
    const BURST: usize = 1000;
    let sink = Sink::start(BURST)?;
    let proxy = Setup::new().allow(&[&sink.addr.to_string()]).start().await?;
    let association = Association::open(&proxy, true).await?;
    // One datagram first: the route is decided and the outbound socket bound before the burst.
    let packet = datagram(0, Addr::Ip(sink.addr.ip()), sink.addr.port(), &[7; 512]);
    association.send(&packet).await?;
    let client = association.socket.into_std()?;
    client.set_nonblocking(false)?;
    let relay = association.relay;
    let sent = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        for _ in 1..BURST {
            client.send_to(&packet, relay)?;
        }
        Ok(BURST)
    })
    .await??;
    let delivered = tokio::task::spawn_blocking(move || sink.count()).await??;
    assert_eq!(delivered, sent, "only {delivered} of {sent} datagrams reached the sink");
    drop(association.control);
    Ok(())
}

/// The other direction: a peer answers a burst of 1,000 with a burst of 1,000, and every reply
/// reaches the client (the outbound socket's buffer and the batched reply path). The echo and
/// the client have buffers for the whole burst, so a missing reply was lost by proxyd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_replies_reaches_the_client() -> anyhow::Result<()> {
    const BURST: usize = 1000;
    let echo = std::net::UdpSocket::bind(SocketAddr::new(LOCALHOST, 0))?;
    rustix::net::sockopt::set_socket_recv_buffer_size(&echo, 8 << 20)?;
    echo.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let echo_addr = echo.local_addr()?;
    let proxy = Setup::new().allow(&[&echo_addr.to_string()]).start().await?;
    let association = Association::open(&proxy, true).await?;
    rustix::net::sockopt::set_socket_recv_buffer_size(&association.socket, 8 << 20)?;
    // The route is decided and the outbound socket bound before the burst.
    association.send_to(echo_addr, b"first").await?;
    let mut buf = vec![0; 64 * 1024];
    let (_, relay_side) = echo.recv_from(&mut buf)?;
    // The echo answers only once the whole burst is in, back to back.
    let packet = datagram(0, Addr::Ip(echo_addr.ip()), echo_addr.port(), &[7; 512]);
    for _ in 0..BURST {
        association.send(&packet).await?;
    }
    let answered = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut buf = vec![0; 64 * 1024];
        // Whatever arrived (the other test counts that direction), then the replies.
        echo.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        for _ in 0..BURST {
            if echo.recv_from(&mut buf).is_err() {
                break;
            }
        }
        for _ in 0..BURST {
            echo.send_to(&[9; 512], relay_side)?;
        }
        Ok(BURST)
    })
    .await??;
    let mut delivered = 0;
    while delivered < answered {
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            association.socket.recv_from(&mut buf),
        )
        .await;
        match got {
            Ok(received) => {
                received?;
                delivered += 1;
            }
            Err(_quiet) => break,
        }
    }
    assert_eq!(delivered, answered, "only {delivered} of {answered} replies reached the client");
    Ok(())
}
