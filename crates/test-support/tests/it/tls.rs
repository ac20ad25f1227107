use std::net::{IpAddr, Ipv4Addr};

use http::StatusCode;
use proxyd_test_support::{TestCa, TlsOrigin, connect, temp_dir};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::{request, send_all};

const NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

#[tokio::test]
async fn tls_origin_serves_routes_and_records_sni() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, NAMES).await?;
    let connector = TlsConnector::from(ca.client_config()?);

    let tcp = connect(origin.addr()).await?;
    let tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let answers = send_all(tls, vec![request("POST", "/secure?x", "body")?]).await?;
    assert_eq!(answers[0].status, StatusCode::OK);
    assert_eq!(answers[0].body, "origin POST /secure?x\nbody");

    // An IP address is in the certificate too, and sends no SNI (RFC 6066 §3).
    let tcp = connect(origin.addr()).await?;
    let ip = ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into());
    let tls = connector.connect(ip, tcp).await?;
    let answers = send_all(tls, vec![request("GET", "/status/418", "")?]).await?;
    assert_eq!(answers[0].status, StatusCode::IM_A_TEAPOT);

    assert_eq!(origin.sni(), ["localhost"]);
    assert_eq!(origin.hits(), 2);
    assert_eq!(origin.requests()[0].body, b"body");
    Ok(())
}

#[tokio::test]
async fn sni_is_recorded_even_when_the_client_rejects_the_certificate() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, NAMES).await?;
    let connector = TlsConnector::from(ca.client_config()?);

    let tcp = connect(origin.addr()).await?;
    let refused = connector.connect(ServerName::try_from("not-in-cert.test")?, tcp).await;
    assert!(refused.is_err(), "a name outside the certificate must fail verification");
    assert_eq!(origin.sni(), ["not-in-cert.test"]);
    assert_eq!(origin.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn another_ca_is_not_trusted() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, NAMES).await?;
    let other = TlsConnector::from(TestCa::new()?.client_config()?);
    let tcp = connect(origin.addr()).await?;
    assert!(other.connect(ServerName::try_from("localhost")?, tcp).await.is_err());
    Ok(())
}

#[test]
fn ca_pem_is_written_and_leaves_carry_ip_sans() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let dir = temp_dir("proxyd-ca")?;
    let path = ca.write_pem(&dir)?;
    assert_eq!(path, dir.join("ca.pem"));
    let pem = std::fs::read_to_string(&path)?;
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(pem, ca.cert_pem());

    let (chain, _key) = ca.leaf(&["localhost", "127.0.0.1", "::1"])?;
    assert_eq!(chain.len(), 1);
    // The IP SANs are encoded as raw octets (GeneralName iPAddress), not as text.
    let der = chain[0].as_ref();
    assert!(der.windows(4).any(|w| w == [127, 0, 0, 1]));
    assert!(!der.windows(9).any(|w| w == b"127.0.0.1"));
    Ok(())
}
