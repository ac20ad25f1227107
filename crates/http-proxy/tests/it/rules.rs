//! Request rules at the listener: a tunnel to a host with rules is refused when the proxy
//! cannot read inside it, and a path with no normal form is a 400 that reaches no origin.

use proxyd_policy::{ListKind, PathPattern, Pattern, Protocol, Reason, Rule, RuleAction};
use proxyd_test_support::Canary;

use crate::harness::{connect_request, get, proxy};

fn read_only(host: &str) -> Rule {
    Rule {
        name: "read".into(),
        host: Pattern::parse(host, ListKind::Allowed).expect("host"),
        methods: Some(vec!["GET".into()]),
        paths: vec![PathPattern::parse("/ok/**").expect("path")],
        query: Vec::new(),
        headers: Vec::new(),
        action: RuleAction::Allow,
        strip_headers: Vec::new(),
        inject: None,
    }
}

#[tokio::test]
async fn a_tunnel_to_a_host_with_rules_is_refused_without_interception() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let port = canary.addr().port();
    let proxy =
        proxy().allow(&["localhost"]).rules(vec![read_only("localhost")], &[]).start().await?;
    let response = proxy.send(connect_request(&format!("localhost:{port}"))).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-policy"));
    assert_eq!(response.json()?["reason"], "rule_denied");
    canary.assert_untouched();
    let blocked = proxy.outcomes();
    assert!(
        matches!(
            &blocked[..],
            [(Protocol::HttpConnect, proxyd_net::Outcome::Blocked(Reason::RuleDenied(_)))]
        ),
        "{blocked:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_path_with_no_normal_form_is_400_and_reaches_nothing() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let port = canary.addr().port();
    let proxy =
        proxy().allow(&["localhost"]).rules(vec![read_only("localhost")], &[]).start().await?;
    for path in ["/ok/%2e%2e/admin", "/ok/..%2Fadmin", "/ok//x", "/ok/a%2fb", "/ok/%zz", "/ok\\x"] {
        let response = proxy.send(get(&format!("http://localhost:{port}{path}"))).await?;
        match response.status() {
            400 => {
                let body = response.json()?;
                assert!(
                    body["reason"] == "invalid_path" || body["reason"] == "malformed",
                    "{path}: {body}"
                );
            }
            other => panic!("{path}: expected 400, got {other}: {response:?}"),
        }
    }
    let denied = proxy.send(get(&format!("http://localhost:{port}/other"))).await?;
    assert_eq!(denied.status(), 403, "{denied:?}");
    canary.assert_untouched();
    Ok(())
}
