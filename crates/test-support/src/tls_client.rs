//! TLS client helpers: a client trusting a CA given as PEM (e.g. proxyd's interception CA), and
//! a ClientHello as raw bytes, for a handshake a test starts and then abandons.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::TIMEOUT;

/// The ALPN protocol every TLS client here offers.
const HTTP_1_1: &[u8] = b"http/1.1";

/// A rustls client configuration trusting only the certificates in `ca_pem`, ALPN http/1.1.
pub fn client_config_from_pem(ca_pem: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("parse ca pem")?).context("trust ca")?;
    }
    anyhow::ensure!(!roots.is_empty(), "no certificate in the ca pem");
    Ok(Arc::new(config(roots)?))
}

fn config(roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("tls protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![HTTP_1_1.to_vec()];
    Ok(config)
}

/// Runs a TLS handshake over `stream` for `server_name` (also the SNI), trusting only
/// `ca_pem`, within [`TIMEOUT`].
pub async fn tls_connect<S>(
    stream: S,
    ca_pem: &str,
    server_name: &str,
) -> anyhow::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(client_config_from_pem(ca_pem)?);
    let name = ServerName::try_from(server_name.to_owned()).context("tls server name")?;
    timeout(TIMEOUT, connector.connect(name, stream))
        .await
        .context("tls handshake timed out")?
        .context("tls handshake")
}

/// The first flight of a TLS client for `server_name` (its ClientHello, with that SNI), as
/// bytes to write by hand: a test that writes them and then stays silent has started a
/// handshake it never completes.
pub fn client_hello(server_name: &str) -> anyhow::Result<Vec<u8>> {
    let name = ServerName::try_from(server_name.to_owned()).context("tls server name")?;
    let mut conn = ClientConnection::new(Arc::new(config(RootCertStore::empty())?), name)
        .context("tls client")?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).context("encode client hello")?;
    }
    anyhow::ensure!(!hello.is_empty(), "rustls produced no client hello");
    Ok(hello)
}
