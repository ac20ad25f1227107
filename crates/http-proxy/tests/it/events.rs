//! One decision event per request, with the right protocol and outcome (SPEC §10).

use proxyd_net::Outcome;
use proxyd_policy::{Mode, Protocol, Reason};
use proxyd_test_support::{Canary, EchoTcp, HttpOrigin};

use crate::harness::{connect_request, get, proxy, request};

#[tokio::test]
async fn one_event_per_decision() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let echo = EchoTcp::start().await?;
    let canary = Canary::start().await?;
    let proxy = proxy().start().await?;
    let (o, e, c) = (origin.addr().port(), echo.addr().port(), canary.addr().port());

    let mut client = proxy.client().await?;
    let client_addr = client.local_addr()?;
    let response = client
        .request(request("POST", &format!("http://allowed.test:{o}/"), &["Content-Length: 0"]))
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(client.request(get(&format!("http://evil.test:{c}/"))).await?.status(), 403);
    assert_eq!(client.request(get(&format!("http://unlisted.test:{c}/"))).await?.status(), 403);
    assert_eq!(client.request(get("http://nowhere.allowed.test/")).await?.status(), 502);
    // Not a decision: a malformed target is refused before the policy is asked.
    assert_eq!(client.request(get(&format!("http://127.1:{c}/"))).await?.status(), 400);
    let mut tunnel = proxy.client().await?;
    tunnel.write(connect_request(&format!("allowed.test:{e}"))).await?;
    assert_eq!(tunnel.head().await?.status, 200);
    assert_eq!(proxy.send(connect_request(&format!("evil.test:{c}"))).await?.status(), 403);

    let events = proxy.events();
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.protocol, e.host.as_str(), e.port, e.method.as_deref(), e.outcome.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (Protocol::Http, "allowed.test", o, Some("POST"), Outcome::Allowed),
            (Protocol::Http, "evil.test", c, Some("GET"), Outcome::Blocked(Reason::Denied)),
            (Protocol::Http, "unlisted.test", c, Some("GET"), Outcome::Blocked(Reason::NotAllowed)),
            (
                Protocol::Http,
                "nowhere.allowed.test",
                80,
                Some("GET"),
                Outcome::Failed("dns_failed")
            ),
            (Protocol::HttpConnect, "allowed.test", e, Some("CONNECT"), Outcome::Allowed),
            (
                Protocol::HttpConnect,
                "evil.test",
                c,
                Some("CONNECT"),
                Outcome::Blocked(Reason::Denied)
            ),
        ]
    );
    for event in &events[..4] {
        assert_eq!(event.client, Some(client_addr), "{event:?}");
    }
    assert!(events.iter().all(|e| e.mode == Mode::Full));
    assert!(events[0].connect_time.is_some(), "an allowed request records its connect time");
    assert!(events[4].dns_time.is_some() && events[4].connect_time.is_some());
    canary.assert_untouched();
    Ok(())
}
