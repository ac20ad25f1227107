//! The dialler against real loopback listeners (SPEC §6 steps 7–8, §7.1).

use std::future::pending;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proxyd_net::{
    Attempt, BoxFuture, Checked, Connected, Dialer, Engine, Failure, Refusal, Resolver,
    StaticResolver,
};
use proxyd_policy::{Host, Reason, Target};
use proxyd_policy::{Mode, Policy, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    BOUND, Canary, V4, V6, bounded, has_ipv6_loopback, listener, policy, refusing,
};

fn dialer(resolver: &Arc<StaticResolver>) -> Dialer {
    Dialer::new(Arc::clone(resolver) as Arc<dyn Resolver>, BOUND, BOUND)
}

fn name(name: &str, port: u16) -> Target {
    Target::new(Host::Name(name.into()), port)
}

fn literal(ip: IpAddr, port: u16) -> Target {
    Target::new(Host::Ip(ip), port)
}

#[tokio::test]
async fn an_allowed_name_is_dialled_at_its_checked_address() -> anyhow::Result<()> {
    let upstream = listener(V4).await?;
    let addr = upstream.local_addr()?;
    let resolver = Arc::new(StaticResolver::new().with("x.test", [V4]));
    let dialer = dialer(&resolver);

    let mut connected =
        bounded(dial(&dialer, &policy(&["x.test"], true), &name("x.test", addr.port()))).await??;
    assert_eq!(connected.peer, addr);
    assert!(connected.stream.nodelay()?);
    assert_eq!(resolver.lookups("x.test"), 1);

    let (mut accepted, _) = bounded(upstream.accept()).await??;
    connected.stream.write_all(b"ping").await?;
    let mut buf = [0; 4];
    bounded(accepted.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn resolve_checked_returns_every_answer_with_the_port() -> anyhow::Result<()> {
    let resolver = Arc::new(StaticResolver::new().with("x.test", [V4, V6, V4]));
    let checked = bounded(resolve_checked(
        &dialer(&resolver),
        &policy(&["x.test"], true),
        &name("x.test", 8080),
    ))
    .await??;
    assert_eq!(checked.addrs(), [SocketAddr::new(V4, 8080), SocketAddr::new(V6, 8080)]);
    assert_eq!(*checked.target(), name("x.test", 8080));
    Ok(())
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_blocked_without_local_binding() -> anyhow::Result<()> {
    let canary = Canary::new(V4)?;
    let resolver = Arc::new(StaticResolver::new().with("x.test", [V4]));
    let result = bounded(dial(
        &dialer(&resolver),
        &policy(&["x.test"], false),
        &name("x.test", canary.addr()?.port()),
    ))
    .await?;
    assert_eq!(result.err().map(undetailed), Some(blocked(Reason::NotAllowedLocal)));
    assert_eq!(canary.accepts(), 0);
    Ok(())
}

#[tokio::test]
async fn one_local_answer_among_public_ones_blocks_the_whole_name() -> anyhow::Result<()> {
    let public: IpAddr = "93.184.215.14".parse()?;
    let resolver = Arc::new(StaticResolver::new().with("x.test", [public, V4]));
    // `resolve_checked` only: nothing here may dial outside loopback.
    let result = bounded(resolve_checked(
        &dialer(&resolver),
        &policy(&["x.test"], false),
        &name("x.test", 443),
    ))
    .await?;
    assert_eq!(result.err().map(undetailed), Some(blocked(Reason::NotAllowedLocal)));
    Ok(())
}

#[tokio::test]
async fn localhost_never_reaches_the_resolver() -> anyhow::Result<()> {
    let upstream = listener(V4).await?;
    let port = upstream.local_addr()?.port();
    let resolver = Arc::new(StaticResolver::new());
    let connected =
        bounded(dial(&dialer(&resolver), &policy(&["localhost"], false), &name("localhost", port)))
            .await??;
    assert_eq!(connected.peer, SocketAddr::new(V4, port));
    assert_eq!(resolver.total_lookups(), 0);
    Ok(())
}

#[tokio::test]
async fn an_ip_literal_never_reaches_the_resolver() -> anyhow::Result<()> {
    let upstream = listener(V4).await?;
    let addr = upstream.local_addr()?;
    let resolver = Arc::new(StaticResolver::new());
    let connected = bounded(dial(
        &dialer(&resolver),
        &policy(&["127.0.0.1"], false),
        &literal(V4, addr.port()),
    ))
    .await??;
    assert_eq!(connected.peer, addr);

    assert_eq!(resolver.total_lookups(), 0);
    Ok(())
}

#[tokio::test]
async fn an_unknown_name_or_an_empty_answer_is_dns_failed() -> anyhow::Result<()> {
    let resolver = Arc::new(StaticResolver::new().with("empty.test", []));
    let dialer = dialer(&resolver);
    let policy = policy(&["nx.test", "empty.test"], true);
    let unknown = bounded(dial(&dialer, &policy, &name("nx.test", 80))).await?;
    assert_eq!(unknown.err(), Some(failed(Failure::DnsFailed)));
    let empty = bounded(dial(&dialer, &policy, &name("empty.test", 80))).await?;
    assert_eq!(empty.err(), Some(failed(Failure::DnsFailed)));
    assert_eq!(resolver.lookups("nx.test"), 1);
    assert_eq!(resolver.lookups("empty.test"), 1);
    Ok(())
}

/// A resolver that never answers.
struct Silent;

impl Resolver for Silent {
    fn resolve<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(pending())
    }
}

#[tokio::test]
async fn a_slow_resolver_is_dns_timeout() -> anyhow::Result<()> {
    let dns_timeout = Duration::from_millis(100);
    let dialer = Dialer::new(Arc::new(Silent), dns_timeout, BOUND);
    let result = bounded(dial(&dialer, &policy(&["x.test"], true), &name("x.test", 80))).await?;
    let error = result.err();
    assert_eq!(error, Some(failed(Failure::DnsFailed)));
    assert_eq!(error.map(|e| e.code().to_owned()).as_deref(), Some("dns_failed"));
    Ok(())
}

#[tokio::test]
async fn a_closed_port_is_refused() -> anyhow::Result<()> {
    let closed = refusing(SocketAddr::new(V4, 0))?;
    let port = closed.local_addr()?.port();
    let resolver = Arc::new(StaticResolver::new());
    let result =
        bounded(dial(&dialer(&resolver), &policy(&["127.0.0.1"], true), &literal(V4, port)))
            .await?;
    assert_eq!(result.err(), Some(failed(Failure::ConnectRefused)));
    Ok(())
}

#[tokio::test]
async fn proxyds_own_listeners_are_self_connections() -> anyhow::Result<()> {
    let canary = Canary::new(V4)?;
    let own = canary.addr()?;
    let resolver = Arc::new(StaticResolver::new().with("x.test", [V4]));
    let dialer = dialer(&resolver);
    dialer.set_own_listeners(vec![own]);
    assert_eq!(dialer.clone().own_listeners(), [own]);
    let policy = policy(&["x.test", "localhost", "127.0.0.1"], true);

    for target in
        [name("x.test", own.port()), name("localhost", own.port()), literal(V4, own.port())]
    {
        let result = bounded(dial(&dialer, &policy, &target)).await?;
        assert_eq!(result.err().map(undetailed), Some(blocked(Reason::SelfConnection)), "{target}");
    }
    assert_eq!(canary.accepts(), 0);
    Ok(())
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_refused_first_address_falls_through_to_the_next() -> anyhow::Result<()> {
    // All of 127.0.0.0/8 is loopback on Linux: the listener takes a port on 127.0.0.2 and the
    // same port on 127.0.0.1 refuses.
    // The kernel's port for 127.0.0.2 may be taken on 127.0.0.1 by another test: try again.
    let mut attempt = 0;
    let (upstream, _closed) = loop {
        let upstream = listener("127.0.0.2".parse()?).await?;
        let port = upstream.local_addr()?.port();
        match refusing(SocketAddr::new(V4, port)) {
            Ok(closed) => break (upstream, closed),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && attempt < 20 => attempt += 1,
            Err(err) => return Err(err.into()),
        }
    };
    let addr = upstream.local_addr()?;
    let resolver = Arc::new(StaticResolver::new().with("x.test", [V4, addr.ip()]));
    let connected =
        bounded(dial(&dialer(&resolver), &policy(&["x.test"], true), &name("x.test", addr.port())))
            .await??;
    assert_eq!(connected.peer, addr);
    Ok(())
}

#[tokio::test]
async fn mixed_families_connect_to_whichever_listens() -> anyhow::Result<()> {
    if !has_ipv6_loopback().await {
        eprintln!("no ipv6 loopback here: skipping the mixed-family dial");
        return Ok(());
    }
    for (listening, refusing_ip) in [(V4, V6), (V6, V4)] {
        let upstream = listener(listening).await?;
        let addr = upstream.local_addr()?;
        let _closed = refusing(SocketAddr::new(refusing_ip, addr.port()))?;
        // The refusing family comes first, so it is tried first.
        let resolver = Arc::new(StaticResolver::new().with("x.test", [refusing_ip, listening]));
        let connected = bounded(dial(
            &dialer(&resolver),
            &policy(&["x.test"], true),
            &name("x.test", addr.port()),
        ))
        .await??;
        assert_eq!(connected.peer, addr);
    }
    Ok(())
}

/// A listener whose accept queue is full drops new SYNs (Linux), so a connect to it hangs
/// until `connect_timeout`, all on loopback.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_backlog_is_connect_timeout() -> anyhow::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(V4, 0))?;
    let full = socket.listen(0)?;
    let addr = full.local_addr()?;
    // With a backlog of 0, one connection that is never accepted fills the queue.
    let _filler = bounded(crate::support::connect(addr)).await??;

    let resolver = Arc::new(StaticResolver::new());
    let dialer = Dialer::new(resolver, BOUND, Duration::from_millis(200));
    let result =
        bounded(dial(&dialer, &policy(&["127.0.0.1"], true), &literal(V4, addr.port()))).await?;
    assert_eq!(result.err(), Some(failed(Failure::ConnectTimeout)));
    Ok(())
}

/// The one admission path for a plain `GET` of `target` under `policy`: admit, then dial.
async fn dial(dialer: &Dialer, policy: &Policy, target: &Target) -> Result<Connected, Refusal> {
    let mut admission = admit(dialer, policy, target).await?;
    admission.dial().await
}

/// The one admission path, stopping after the resolved-address check.
async fn resolve_checked(
    dialer: &Dialer,
    policy: &Policy,
    target: &Target,
) -> Result<Checked, Refusal> {
    let mut admission = admit(dialer, policy, target).await?;
    admission.resolve().await
}

async fn admit(
    dialer: &Dialer,
    policy: &Policy,
    target: &Target,
) -> Result<proxyd_net::Admission, Refusal> {
    let engine = Engine::builder(policy.clone(), Mode::Full, dialer.clone()).build();
    engine.admit(Attempt::new(Protocol::Http, target.clone(), None).method("GET")).await
}

fn blocked(reason: Reason) -> Refusal {
    Refusal::Blocked { reason, mode: Mode::Full, detail: None }
}

/// The refusal without its human-readable detail, to compare reasons.
fn undetailed(refusal: Refusal) -> Refusal {
    match refusal {
        Refusal::Blocked { reason, mode, .. } => Refusal::Blocked { reason, mode, detail: None },
        failed => failed,
    }
}

fn failed(failure: Failure) -> Refusal {
    Refusal::Failed { failure, mode: Mode::Full }
}
