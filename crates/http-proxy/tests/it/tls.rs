//! Absolute-form `https://` requests: proxyd originates TLS itself (SPEC §7.2).

use proxyd_net::Outcome;
use proxyd_policy::Protocol;
use proxyd_test_support::{TestCa, TlsOrigin, temp_dir};

use crate::harness::{get, proxy};

#[tokio::test]
async fn https_absolute_form_is_fetched_over_tls() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-http-proxy-tls")?;
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, &["localhost"]).await?;
    let proxy = proxy().trust(ca.write_pem(&dir)?).start().await?;
    let url = format!("https://localhost:{}/over-tls?x=1", origin.addr().port());

    let response = proxy.send(get(&url)).await?;

    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "origin GET /over-tls?x=1\n");
    assert_eq!(response.header("via"), Some("1.1 proxyd"));
    assert_eq!(origin.sni(), ["localhost"], "proxyd sends the target name as SNI");
    let seen = &origin.requests()[0];
    assert_eq!(seen.target, "/over-tls?x=1");
    assert_eq!(seen.header("host"), Some(format!("localhost:{}", origin.addr().port()).as_str()));
    assert_eq!(proxy.outcomes(), [(Protocol::Https, Outcome::Allowed)]);
    Ok(())
}

#[tokio::test]
async fn untrusted_origin_certificate_is_502() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, &["localhost"]).await?;
    // No extra trust root: the test CA is not among the system roots.
    let proxy = proxy().start().await?;
    let url = format!("https://localhost:{}/", origin.addr().port());

    let response = proxy.send(get(&url)).await?;

    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), None);
    assert_eq!(response.json()?["reason"], "upstream_tls_failed");
    let text = response.text().to_lowercase();
    assert!(!text.contains("certificate") && !text.contains("unknownissuer"), "{text}");
    assert_eq!(origin.hits(), 0, "no request may be sent over an unverified connection");
    assert_eq!(proxy.outcomes(), [(Protocol::Https, Outcome::Failed("upstream_tls_failed"))]);
    Ok(())
}
