//! The TLS client configuration proxyd uses when it originates TLS (`https://` absolute-form,
//! and every request of an intercepted tunnel).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// System roots plus the PEM bundle named by `SSL_CERT_FILE`, when set, so tests and corporate
/// CAs work. ALPN `h2`, then `http/1.1`; the listener sets ALPN itself on the configurations it
/// derives from this one (`http/1.1` only for requests that ask for an upgrade).
pub fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    extra_pem_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "skipping an unreadable system certificate source");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system trust roots");
    if let Some(path) = extra_pem_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| rustls::Error::General(format!("reading {}: {e}", path.display())))?
            .filter_map(Result::ok)
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        tracing::debug!(added, path = %path.display(), "extra trust roots");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
