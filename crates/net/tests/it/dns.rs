//! Fair DNS (issue 11): the system resolver is an asynchronous client of the configured
//! nameservers, asked for the exact name only; lookups are coalesced and one client's flood of
//! never-answering names leaves another client's lookup answering.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proxyd_net::{Attempt, CLIENT_SHARE, Dialer, Engine, Refusal, Resolver, SystemResolver};
use proxyd_policy::{Mode, Protocol, Target};
use proxyd_test_support::DnsServer;
use tokio::task::JoinSet;

use crate::support::{bounded, policy};

fn engine(dns: &DnsServer, dns_timeout: Duration) -> Engine {
    let resolver = Arc::new(SystemResolver::with_nameservers(&[dns.addr()]));
    let dialer = Dialer::new(resolver, dns_timeout, Duration::from_secs(2));
    Engine::builder(policy(&["*"], true), Mode::Full, dialer).build()
}

/// Admits a GET of `name:80` from `client` and resolves it (nothing is dialled).
async fn resolve(engine: Engine, name: String, client: IpAddr) -> Result<Vec<SocketAddr>, Refusal> {
    let target = Target::parse_authority(&format!("{name}:80"), None).expect("target");
    let attempt =
        Attempt::new(Protocol::Http, target, Some(SocketAddr::new(client, 40000))).method("GET");
    let mut admission = engine.admit(attempt).await?;
    Ok(admission.resolve().await?.addrs().to_vec())
}

const CLIENT_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CLIENT_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test]
async fn the_exact_name_is_asked_of_the_configured_nameserver() -> anyhow::Result<()> {
    let dns = DnsServer::start(&[("ok.test", Ipv4Addr::new(127, 0, 0, 7))], &[]).await?;
    let resolver = SystemResolver::with_nameservers(&[dns.addr()]);
    let ips = bounded(resolver.resolve("ok.test")).await??;
    assert_eq!(ips, [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7))]);
    assert!(bounded(resolver.resolve("missing.test")).await?.is_err());
    // Only the exact names: no search-list suffix was ever tried.
    for (name, _) in dns.queries() {
        assert!(name == "ok.test" || name == "missing.test", "unexpected query {name}");
    }
    Ok(())
}

/// 650 lookups from one client for names whose DNS never answers: the other client's lookup
/// still answers (before any of the flood's has ended), and the flooding client never has more
/// than its share of lookups at the nameserver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_flood_does_not_starve_another() -> anyhow::Result<()> {
    let dns = DnsServer::start(&[("ok.test", Ipv4Addr::LOCALHOST)], &["slow"]).await?;
    let engine = engine(&dns, Duration::from_secs(4));
    let mut flood = JoinSet::new();
    for n in 0..650 {
        flood.spawn(resolve(engine.clone(), format!("slow-{n}.test"), CLIENT_A));
    }
    // Let the flood reach the nameserver.
    let started = tokio::time::Instant::now();
    while dns.distinct_names("slow") < CLIENT_SHARE && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = bounded(resolve(engine.clone(), "ok.test".to_owned(), CLIENT_B)).await??;
    assert_eq!(answer, [SocketAddr::from((Ipv4Addr::LOCALHOST, 80))]);
    assert_eq!(flood.len(), 650, "the flood ended before the other client's lookup");
    assert!(flood.try_join_next().is_none(), "a flood lookup ended before the other client's");
    let asked = dns.distinct_names("slow");
    assert!(asked <= CLIENT_SHARE, "the flooding client had {asked} lookups at the nameserver");
    flood.abort_all();
    Ok(())
}

/// Twenty attempts for one name while its lookup is in flight are one lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_lookups_in_flight_are_coalesced() -> anyhow::Result<()> {
    let dns = DnsServer::start(&[], &["slow"]).await?;
    let engine = engine(&dns, Duration::from_millis(1500));
    let mut same = JoinSet::new();
    for _ in 0..20 {
        same.spawn(resolve(engine.clone(), "slow-same.test".to_owned(), CLIENT_A));
    }
    while let Some(result) = bounded(same.join_next()).await? {
        assert!(matches!(result?, Err(Refusal::Failed { .. })), "a silent name must fail");
    }
    // One lookup: an A and an AAAA query and the DNS client's own retries (at most a few);
    // twenty lookups would be at least forty queries.
    let asked = dns.queries().iter().filter(|(n, _)| n == "slow-same.test").count();
    assert!((1..=10).contains(&asked), "{asked} queries for one name");
    assert_eq!(engine.dialer().lookups_in_flight(), 0);
    Ok(())
}
