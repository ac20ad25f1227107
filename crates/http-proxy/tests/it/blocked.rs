//! Blocked and failed requests, reported exactly as SPEC §6.1 says, and never dialled.

use std::sync::{Arc, Mutex};

use proxyd_net::{BoxFuture, Decider, DeciderAnswer, DeciderRequest, Outcome};
use proxyd_policy::{Protocol, Reason};
use proxyd_test_support::bypass::{self, Expect, Ports, Wire};
use proxyd_test_support::{Canary, HttpOrigin};
use serde_json::json;

use crate::harness::{assert_blocked, connect_request, get, proxy, refused_port, request};

#[tokio::test]
async fn denied_host_is_403_blocked_by_denylist() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let port = canary.addr().port();
    let response = proxy.send(get(&format!("http://evil.test:{port}/x"))).await?;
    assert_blocked(
        &response,
        403,
        Some("blocked-by-denylist"),
        json!({
            "status": "blocked",
            "reason": "denied",
            "host": "evil.test",
            "port": port,
            "protocol": "http",
            "method": "GET",
            "mode": "full",
            "message": "Domain is in the denylist.",
        }),
    );
    let response = proxy.send(get(&format!("https://evil.test:{port}/x"))).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.json()?["protocol"], "https");
    canary.assert_untouched();
    assert_eq!(proxy.resolver.lookups("evil.test"), 0);
    Ok(())
}

/// SPEC §6 step 7: names that are not allowed are never sent to DNS.
#[tokio::test]
async fn host_not_in_allowlist_is_403_and_never_resolved() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let port = canary.addr().port();
    let response =
        proxy.send(request("DELETE", &format!("http://unlisted.test:{port}/"), &[])).await?;
    assert_blocked(
        &response,
        403,
        Some("blocked-by-allowlist"),
        json!({
            "status": "blocked",
            "reason": "not_allowed",
            "host": "unlisted.test",
            "port": port,
            "protocol": "http",
            "method": "DELETE",
            "mode": "full",
            "message": "Domain not in allowlist.",
        }),
    );
    canary.assert_untouched();
    assert_eq!(proxy.resolver.lookups("unlisted.test"), 0, "a name was sent to DNS");
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

fn not_allowed_local(host: &str, port: u16) -> serde_json::Value {
    json!({
        "status": "blocked",
        "reason": "not_allowed_local",
        "host": host,
        "port": port,
        "protocol": "http",
        "method": "GET",
        "mode": "full",
        "message": "Local or private address not explicitly allowlisted.",
    })
}

#[tokio::test]
async fn local_ip_literal_is_not_allowed_local() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().allow_local_binding(false).allow(&["*", "rebind.test"]).start().await?;
    let port = canary.addr().port();
    for host in ["127.0.0.1", "localhost"] {
        let response = proxy.send(get(&format!("http://{host}:{port}/"))).await?;
        assert_blocked(&response, 403, Some("blocked-by-allowlist"), not_allowed_local(host, port));
    }
    canary.assert_untouched();
    Ok(())
}

/// SPEC §5.2: a name-only allowlist entry does not unlock a local DNS answer.
#[tokio::test]
async fn name_resolving_to_loopback_is_not_allowed_local() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().allow_local_binding(false).allow(&["rebind.test"]).start().await?;
    let port = canary.addr().port();
    let response = proxy.send(get(&format!("http://rebind.test:{port}/"))).await?;
    // Issue 17: the body names what the name resolved to, and the entry that would allow it.
    let mut expected = not_allowed_local("rebind.test", port);
    expected["detail"] = "rebind.test resolved to 127.0.0.1: local or private; to allow it, add \"127.0.0.1\" to allowed_domains (or a range that contains it), or set allow_local_binding = true".into();
    assert_blocked(&response, 403, Some("blocked-by-allowlist"), expected);
    canary.assert_untouched();
    assert_eq!(proxy.resolver.lookups("rebind.test"), 1);
    assert_eq!(proxy.outcomes(), [(Protocol::Http, Outcome::Blocked(Reason::NotAllowedLocal))]);
    Ok(())
}

#[tokio::test]
async fn method_not_allowed_in_limited_mode() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().limited().start().await?;
    let port = canary.addr().port();
    let url = format!("http://allowed.test:{port}/");
    let response = proxy.send(request("PUT", &url, &["Content-Length: 0"])).await?;
    assert_blocked(
        &response,
        403,
        Some("blocked-by-method-policy"),
        json!({
            "status": "blocked",
            "reason": "method_not_allowed",
            "host": "allowed.test",
            "port": port,
            "protocol": "http",
            "method": "PUT",
            "mode": "limited",
            "message": "Method not allowed in limited mode.",
        }),
    );
    canary.assert_untouched();
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

/// SPEC §3, §7.2: every malformed spelling and request head of the bypass table
/// (`testdata/bypass.toml`) on the absolute-form and `CONNECT` entry points is 400 and never
/// dialled, even under an allow-everything policy.
#[tokio::test]
async fn malformed_targets_are_400_and_never_dialled() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().allow(&["*"]).allow_local_binding(true).start().await?;
    let table = bypass::table();
    let ports = Ports { canary: canary.addr().port(), ..Ports::from(table.ports) };
    let cases: Vec<_> = table
        .groups
        .iter()
        .flat_map(|group| group.cases(&ports))
        .filter(|case| case.entry.is_http() && case.expect == Expect::Malformed)
        .collect();
    assert!(cases.len() > 100, "only {} malformed HTTP cases in the table", cases.len());
    for case in &cases {
        let Wire::Http(head) = &case.wire else { continue };
        let response = proxy.send(head).await?;
        assert_eq!(response.status(), 400, "{} {}: {response:?}", case.entry.name(), case.label);
        assert_eq!(response.header("x-proxy-error"), None, "{}", case.label);
    }
    canary.assert_untouched();
    assert_eq!(proxy.resolver.total_lookups(), 0);
    assert!(
        proxy.outcomes().iter().all(|(_, outcome)| *outcome != Outcome::Allowed),
        "{:?}",
        proxy.outcomes()
    );
    Ok(())
}

#[tokio::test]
async fn disabled_proxy_is_503() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().disabled().start().await?;
    let port = canary.addr().port();
    let response = proxy.send(get(&format!("http://allowed.test:{port}/"))).await?;
    assert_blocked(
        &response,
        503,
        None,
        json!({
            "status": "blocked",
            "reason": "proxy_disabled",
            "host": "allowed.test",
            "port": port,
            "protocol": "http",
            "method": "GET",
            "mode": "full",
            "message": "Proxy is disabled.",
        }),
    );
    let response = proxy.send(connect_request(&format!("allowed.test:{port}"))).await?;
    assert_eq!(response.status(), 503, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), None);
    canary.assert_untouched();
    assert_eq!(proxy.resolver.total_lookups(), 0);
    Ok(())
}

/// A DNS failure is 502 (not a policy block) and the resolver's error text stays inside.
#[tokio::test]
async fn dns_failure_is_502_without_upstream_error_text() -> anyhow::Result<()> {
    let proxy = proxy().allow(&["nowhere.test"]).start().await?;
    let response = proxy.send(get("http://nowhere.test/")).await?;
    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), None);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json()?;
    assert_eq!(body["reason"], "dns_failed", "{body}");
    let text = response.text();
    for leak in ["os error", "static table", "not found", "NotFound"] {
        assert!(!text.contains(leak), "{leak:?} leaked in {text}");
    }
    assert_eq!(proxy.resolver.lookups("nowhere.test"), 1);
    assert_eq!(proxy.outcomes(), [(Protocol::Http, Outcome::Failed("dns_failed"))]);
    Ok(())
}

#[tokio::test]
async fn refused_connection_is_502() -> anyhow::Result<()> {
    let proxy = proxy().start().await?;
    let port = refused_port().await?;
    let response = proxy.send(get(&format!("http://allowed.test:{port}/"))).await?;
    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), None);
    let body = response.json()?;
    assert_eq!(body["reason"], "connect_refused", "{body}");
    assert!(!response.text().contains("os error"), "{}", response.text());
    assert_eq!(proxy.outcomes(), [(Protocol::Http, Outcome::Failed("connect_refused"))]);
    Ok(())
}

/// SPEC §7.1: proxyd never dials its own listener, even when asked to by an allowed name.
#[tokio::test]
async fn request_to_the_proxy_itself_is_refused() -> anyhow::Result<()> {
    let proxy = proxy().start().await?;
    let port = proxy.addr.port();
    let response = proxy.send(get(&format!("http://allowed.test:{port}/"))).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-policy"));
    assert_eq!(response.json()?["reason"], "self_connection");
    assert_eq!(proxy.events().len(), 1, "the proxy reached itself: {:?}", proxy.events());
    Ok(())
}

/// Allows `unlisted.test`, denies everything else it is asked about, and remembers the hosts.
#[derive(Default)]
struct TestDecider(Mutex<Vec<String>>);

impl Decider for TestDecider {
    fn decide(&self, request: DeciderRequest) -> BoxFuture<'static, DeciderAnswer> {
        let answer = match request.host.as_str() {
            "unlisted.test" => DeciderAnswer::Allow,
            _ => DeciderAnswer::Deny("not_today".into()),
        };
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(request.host);
        Box::pin(std::future::ready(answer))
    }
}

/// SPEC §6 step 5 and §6.1: only allowlist misses reach the decider; its deny is
/// `blocked-by-policy` with its own reason.
#[tokio::test]
async fn the_decider_answers_allowlist_misses_only() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let canary = Canary::start().await?;
    let decider = Arc::new(TestDecider::default());
    let proxy = proxy().allow(&["127.0.0.1"]).decider(decider.clone()).start().await?;
    let (o, c) = (origin.addr().port(), canary.addr().port());

    let response = proxy.send(get(&format!("http://unlisted.test:{o}/"))).await?;
    assert_eq!(response.status(), 200, "the decider allowed it: {response:?}");

    let response = proxy.send(get(&format!("http://other.test:{c}/"))).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-policy"));
    assert_eq!(response.json()?["reason"], "not_today");

    let response = proxy.send(get(&format!("http://evil.test:{c}/"))).await?;
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-denylist"));

    assert_eq!(
        *decider.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        ["unlisted.test", "other.test"]
    );
    assert_eq!(proxy.resolver.lookups("other.test"), 0);
    canary.assert_untouched();
    Ok(())
}

/// Review finding: a huge method must not be copied into events and the blocked log.
#[tokio::test]
async fn overlong_method_is_400_before_any_decision() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let port = canary.addr().port();
    let method = "A".repeat(33);
    let response =
        proxy.send(request(&method, &format!("http://unlisted.test:{port}/"), &[])).await?;
    assert_eq!(response.status(), 400, "{response:?}");
    assert!(proxy.events().is_empty(), "nothing is decided or recorded");
    let ok = "B".repeat(32);
    let response = proxy.send(request(&ok, &format!("http://unlisted.test:{port}/"), &[])).await?;
    assert_eq!(response.status(), 403, "a 32-byte method is still decided: {response:?}");
    canary.assert_untouched();
    Ok(())
}
