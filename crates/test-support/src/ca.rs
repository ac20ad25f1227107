//! A throw-away certificate authority and the rustls configurations tests build from it.
//!
//! Everything uses the ring provider explicitly: only `cli` installs a process-wide default.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Common name of the test CA, so a stray certificate is recognisable.
const CA_NAME: &str = "proxyd test ca";

/// The ALPN protocol every TLS server and client here speaks.
const HTTP_1_1: &[u8] = b"http/1.1";

/// A certificate authority generated in memory for one test run.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("cn", &CA_NAME).finish_non_exhaustive()
    }
}

impl TestCa {
    /// Generates a new CA (ECDSA P-256, CN "proxyd test ca").
    pub fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generate ca key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-sign ca")?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns that path.
    pub fn write_pem(&self, dir: impl AsRef<Path>) -> anyhow::Result<PathBuf> {
        let path = dir.as_ref().join("ca.pem");
        std::fs::write(&path, self.cert_pem())
            .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// A server certificate for `names` signed by this CA: each name that parses as an IP
    /// address becomes an IP SAN, every other one a DNS SAN. Returns the chain (leaf only) and
    /// its PKCS#8 key.
    pub fn leaf(
        &self,
        names: &[&str],
    ) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*name).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()
            .context("subject alt names")?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generate leaf key")?;
        let cert = params.signed_by(&key, &self.issuer).context("sign leaf")?;
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok((vec![cert.der().clone()], key.into()))
    }

    /// A rustls server configuration presenting [`TestCa::leaf`] for `names`, ALPN http/1.1.
    pub fn server_config(&self, names: &[&str]) -> anyhow::Result<Arc<ServerConfig>> {
        let (chain, key) = self.leaf(names)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("tls protocol versions")?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .context("server certificate")?;
        config.alpn_protocols = vec![HTTP_1_1.to_vec()];
        Ok(Arc::new(config))
    }

    /// A rustls client configuration trusting only this CA, ALPN http/1.1; use it with
    /// `tokio_rustls::TlsConnector::from`.
    pub fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der()).context("trust test ca")?;
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("tls protocol versions")?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![HTTP_1_1.to_vec()];
        Ok(Arc::new(config))
    }
}
