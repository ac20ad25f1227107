//! `Lease::reconnect`: a forwarded request retried on a fresh connection dials only what its
//! own admission checked, and nothing once its lease is revoked (issue 16).

use std::sync::Arc;
use std::time::Duration;

use proxyd_net::{Attempt, Checked, Dialer, Engine, Lease, StaticResolver};
use proxyd_policy::{Mode, Protocol, Target};

use crate::support::{V4, bounded, listener, policy};

/// Admits a GET of `authority` and connects it; returns the lease and what was checked.
async fn admitted(engine: &Engine, authority: &str) -> anyhow::Result<(Lease, Checked)> {
    let target = Target::parse_authority(authority, None)?;
    let mut admission =
        engine.admit(Attempt::new(Protocol::Http, target, None).method("GET")).await?;
    let checked = admission.resolve().await?;
    admission.connect(&checked).await?;
    Ok((admission.admit()?, checked))
}

#[tokio::test]
async fn reconnect_dials_only_the_leases_own_checked_addresses() -> anyhow::Result<()> {
    let origin = listener(V4).await?;
    let port = origin.local_addr()?.port();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = origin.accept().await {
            held.push(stream);
        }
    });
    let resolver = StaticResolver::new().with("a.test", [V4]).with("b.test", [V4]);
    let dialer = Dialer::new(Arc::new(resolver), Duration::from_secs(2), Duration::from_secs(2));
    let engine = Engine::builder(policy(&["a.test", "b.test"], true), Mode::Full, dialer).build();
    let (lease, checked) = admitted(&engine, &format!("a.test:{port}")).await?;
    let (_other, other) = admitted(&engine, &format!("b.test:{port}")).await?;

    let fresh = bounded(lease.reconnect(&checked)).await?;
    assert_eq!(fresh.map(|c| c.peer.port()), Some(port));
    // The same address, checked for another target: not this lease's.
    assert!(bounded(lease.reconnect(&other)).await?.is_none());

    // A change that refuses the exchange revokes the lease: nothing more is dialled.
    engine.set_policy(policy(&["b.test"], true));
    assert!(lease.is_revoked());
    assert!(bounded(lease.reconnect(&checked)).await?.is_none());
    accepting.abort();
    Ok(())
}
