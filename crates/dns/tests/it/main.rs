//! proxyd's DNS service with real clients: `dig` over UDP and TCP, and Python's socket
//! resolver through a resolv.conf pointed at it. Upstream is a recording DNS server on
//! loopback, so a refused name is seen never to leave.

#![expect(
    clippy::disallowed_methods,
    reason = "tests bind the listener's own sockets and play clients"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd_dns::{DnsServer, Settings};
use proxyd_net::{Dialer, Engine, Lifecycle, SystemResolver};
use proxyd_policy::{ListKind, Mode, PatternSet, Policy};
use proxyd_test_support::DnsServer as Upstream;
use tokio::net::{TcpListener, UdpSocket};
use tokio::process::Command;

struct Service {
    addr: SocketAddr,
    engine: Engine,
    _task: tokio::task::JoinHandle<()>,
}

async fn service(upstream: &Upstream, bind: SocketAddr) -> anyhow::Result<Service> {
    let policy = Policy {
        allowed: PatternSet::compile(
            &["ok.test", "private.test", "*.flood.example"],
            ListKind::Allowed,
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        denied: PatternSet::compile(&["denied.test"], ListKind::Denied)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        allow_local_binding: false,
        enabled: true,
        ..Policy::default()
    };
    let resolver = Arc::new(SystemResolver::with_nameservers(&[upstream.addr()]));
    let dialer = Dialer::new(resolver, Duration::from_secs(3), Duration::from_secs(2));
    let engine = Engine::builder(policy, Mode::Full, dialer).lifecycle(Lifecycle::new()).build();
    // With port 0, the kernel's UDP port may be taken for TCP: try another.
    let mut attempt = 0;
    let (udp, tcp, addr) = loop {
        let udp = UdpSocket::bind(bind).await.context("bind udp")?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, tcp, addr),
            Err(err) if bind.port() == 0 && attempt < 20 => {
                attempt += 1;
                let _ = err;
            }
            Err(err) => return Err(err).context("bind tcp"),
        }
    };
    let server = DnsServer::new(
        engine.clone(),
        Settings { tcp_timeout: Duration::from_secs(5), max_connections: 64 },
    );
    let task = tokio::spawn(async move { server.serve(udp, tcp).await });
    Ok(Service { addr, engine, _task: task })
}

/// `dig @ADDR -p PORT ARGS...`: (status, answer lines).
async fn dig(addr: SocketAddr, args: &[&str]) -> anyhow::Result<(String, Vec<String>)> {
    let output = tokio::time::timeout(
        Duration::from_secs(15),
        Command::new("dig")
            .arg(format!("@{}", addr.ip()))
            .args(["-p", &addr.port().to_string(), "+tries=1", "+time=5", "+noedns"])
            .args(args)
            .output(),
    )
    .await
    .context("dig did not finish")??;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
        .to_owned();
    let answers = dig_short(&text);
    Ok((status, answers))
}

fn dig_short(text: &str) -> Vec<String> {
    let mut in_answer = false;
    let mut answers = Vec::new();
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                break;
            }
            answers.push(line.split_whitespace().last().unwrap_or_default().to_owned());
        }
    }
    answers
}

const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_names_are_answered_and_others_never_asked_upstream() -> anyhow::Result<()> {
    let upstream = Upstream::start(
        &[
            ("ok.test", PUBLIC),
            ("private.test", Ipv4Addr::new(10, 0, 0, 5)),
            ("unlisted.test", PUBLIC),
        ],
        &["slow"],
    )
    .await?;
    let dns = service(&upstream, (Ipv4Addr::LOCALHOST, 0).into()).await?;
    assert_eq!(
        dig(dns.addr, &["ok.test", "A"]).await?,
        ("NOERROR".into(), vec![PUBLIC.to_string()])
    );
    // TCP (RFC 1035 §4.2.2), the path a truncated answer takes.
    assert_eq!(
        dig(dns.addr, &["+tcp", "ok.test", "A"]).await?,
        ("NOERROR".into(), vec![PUBLIC.to_string()])
    );
    // AAAA of a name with none: an empty answer, not an error.
    assert_eq!(dig(dns.addr, &["ok.test", "AAAA"]).await?, ("NOERROR".into(), vec![]));
    // Not allowed, denied: REFUSED, and not one upstream query for them.
    assert_eq!(dig(dns.addr, &["unlisted.test", "A"]).await?.0, "REFUSED");
    assert_eq!(dig(dns.addr, &["denied.test", "A"]).await?.0, "REFUSED");
    assert_eq!(dig(dns.addr, &["secret-data.attacker.example", "A"]).await?.0, "REFUSED");
    // An allowed name whose answer is private: the whole answer is refused.
    assert_eq!(dig(dns.addr, &["private.test", "A"]).await?.0, "REFUSED");
    // Other types: REFUSED without asking upstream.
    assert_eq!(dig(dns.addr, &["ok.test", "TXT"]).await?.0, "REFUSED");
    let asked: Vec<String> = upstream.queries().into_iter().map(|(n, _)| n).collect();
    for name in &asked {
        ensure!(
            name == "ok.test" || name == "private.test",
            "upstream was asked {name}: {asked:?}"
        );
    }
    ensure!(dns.engine.live_exchanges() == 0);
    Ok(())
}

/// 300 queries for names whose DNS never answers: the flooding client has at most its share
/// of lookups upstream, and an allowed name still answers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_queries_is_bounded() -> anyhow::Result<()> {
    let upstream = Upstream::start(&[("ok.test", PUBLIC)], &["slow"]).await?;
    let dns = service(&upstream, (Ipv4Addr::LOCALHOST, 0).into()).await?;
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    for n in 0..300u16 {
        let mut query = hickory_query(n, &format!("slow-{n}.flood.example"));
        query[0..2].copy_from_slice(&n.to_be_bytes());
        client.send_to(&query, dns.addr).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, answers) = dig(dns.addr, &["-b", "127.0.0.2", "ok.test", "A"]).await?;
    assert_eq!((status.as_str(), answers), ("NOERROR", vec![PUBLIC.to_string()]));
    let asked = upstream.distinct_names("slow");
    ensure!(asked <= proxyd_net::CLIENT_SHARE, "{asked} lookups upstream for one client");
    Ok(())
}

/// A minimal A query for `name` (RFC 1035 §4.1).
fn hickory_query(id: u16, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// Python's socket resolver (glibc's getaddrinfo) through a resolv.conf that names the
/// service, in a mount namespace of its own (`unshare -m` with the file bind-mounted; needs
/// root, as CI is). resolv.conf cannot name a port, so the service listens on 127.0.0.77:53.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pythons_resolver_pointed_at_the_service() -> anyhow::Result<()> {
    let upstream = Upstream::start(&[("ok.test", PUBLIC)], &[]).await?;
    let dns =
        service(&upstream, SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77)), 53)).await?;
    let dir = proxyd_test_support::temp_dir("proxyd-dns-python")?;
    let conf = dir.join("resolv.conf");
    std::fs::write(&conf, format!("nameserver {}\noptions attempts:1 timeout:3\n", dns.addr.ip()))?;
    let script = "import socket\n\
                  print(sorted({a[4][0] for a in socket.getaddrinfo('ok.test', 443, socket.AF_INET)}))\n\
                  try:\n    socket.getaddrinfo('unlisted.test', 443)\n    print('resolved')\n\
                  except socket.gaierror:\n    print('refused')\n";
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/resolv.conf && exec python3 -c \"$0\"",
                conf.display()
            ))
            .arg(script)
            .output(),
    )
    .await
    .context("python did not finish")??;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text == format!("['{PUBLIC}']\nrefused\n"),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
