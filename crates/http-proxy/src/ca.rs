//! The interception CA (limited mode with `mitm = true`): a certificate authority generated in
//! memory when the proxy is built, name-constrained to the allowlist, that signs a short-lived
//! leaf per intercepted host. Leaves are cached with a bound.
//!
//! The private keys never leave this process: nothing here touches files (the `proxyd` crate
//! writes the certificate where clients can read it). Everything uses the crypto provider it is
//! given; no process-wide default is installed or assumed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use proxyd_policy::{Host, Pattern, Subtree};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    SanType,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

/// Leaves kept at most; past this the least recently used one is dropped.
pub const LEAF_CACHE_SIZE: usize = 1_000;
/// How long a leaf is valid: short, so a leaked one is soon useless.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// A cached leaf is replaced once it is this old, well before it expires.
const LEAF_RENEW_AFTER: Duration = Duration::from_secs(12 * 60 * 60);
/// Certificates start this far in the past, for clients whose clock is a little behind.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// The CA lives as long as the process; a year outlasts any sensible uptime.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// RFC 6761 §6.4: a name that never exists. A CA allowed no names is constrained to it.
const NO_NAME: &str = "invalid";

/// Why the CA or a leaf could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building the tls server configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// The names the CA may sign for: its X.509 name constraints (RFC 5280 §4.2.1.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaScope {
    /// No constraint: the allowlist has `*`, or a policy decider may allow any name.
    Everything,
    /// DNS subtrees (each name and the names below it) and address ranges.
    Limited { dns: Vec<Box<str>>, ips: Vec<IpNet> },
}

impl CaScope {
    /// The smallest scope holding every host the allowlist `patterns` can match.
    pub fn from_patterns(patterns: &[Pattern]) -> CaScope {
        let (mut dns, mut ips) = (Vec::new(), Vec::new());
        for pattern in patterns {
            match pattern.subtree() {
                Subtree::Everything => return CaScope::Everything,
                Subtree::Dns(name) => dns.push(name),
                Subtree::Ip(net) => ips.push(net),
            }
        }
        dns.sort_unstable();
        dns.dedup();
        // A name below another subtree adds nothing.
        let covered = |name: &str, all: &[Box<str>]| {
            all.iter().any(|other| name.len() > other.len() && within(name, other))
        };
        let kept: Vec<Box<str>> = dns.iter().filter(|n| !covered(n, &dns)).cloned().collect();
        ips.sort_unstable();
        ips.dedup();
        CaScope::Limited { dns: kept, ips }
    }

    /// Whether a leaf for `host` satisfies the constraints.
    pub fn covers(&self, host: &Host) -> bool {
        match (self, host) {
            (CaScope::Everything, _) => true,
            (CaScope::Limited { dns, .. }, Host::Name(name)) => dns.iter().any(|d| within(name, d)),
            (CaScope::Limited { ips, .. }, Host::Ip(ip)) => ips.iter().any(|net| net.contains(ip)),
        }
    }

    /// The name constraints extension. Without an address range every address is excluded,
    /// and without a name only `.invalid` is permitted: a constraint is only enforced for the
    /// name types it lists.
    fn name_constraints(&self) -> Option<NameConstraints> {
        let CaScope::Limited { dns, ips } = self else { return None };
        let mut permitted: Vec<GeneralSubtree> = match dns.is_empty() {
            true => vec![GeneralSubtree::DnsName(NO_NAME.to_owned())],
            false => dns.iter().map(|name| GeneralSubtree::DnsName(name.to_string())).collect(),
        };
        let subnet = |net: &IpNet| CidrSubnet::from_addr_prefix(net.network(), net.prefix_len());
        permitted.extend(ips.iter().map(|net| GeneralSubtree::IpAddress(subnet(net))));
        let excluded = match ips.is_empty() {
            true => ["0.0.0.0/0", "::/0"]
                .iter()
                .filter_map(|net| net.parse::<IpNet>().ok())
                .map(|net| GeneralSubtree::IpAddress(subnet(&net)))
                .collect(),
            false => Vec::new(),
        };
        Some(NameConstraints { permitted_subtrees: permitted, excluded_subtrees: excluded })
    }
}

/// `name` is `subtree` or below it, as a dNSName constraint matches (RFC 5280 §4.2.1.10).
fn within(name: &str, subtree: &str) -> bool {
    name == subtree
        || (name.len() > subtree.len()
            && name.ends_with(subtree)
            && name.as_bytes()[name.len() - subtree.len() - 1] == b'.')
}

/// The interception CA and its leaf cache.
pub struct InterceptCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    scope: CaScope,
    provider: Arc<CryptoProvider>,
    /// Shared by every leaf's server configuration, so resumption state stays bounded.
    sessions: Arc<dyn StoresServerSessions>,
    leaves: Mutex<LeafCache>,
}

impl fmt::Debug for InterceptCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterceptCa").field("scope", &self.scope).finish_non_exhaustive()
    }
}

impl InterceptCa {
    /// Generates a new CA (ECDSA P-256) constrained to `scope`, valid from an hour ago for a
    /// year, allowed to sign leaves only (path length 0).
    pub fn generate(scope: CaScope, provider: Arc<CryptoProvider>) -> Result<InterceptCa, CaError> {
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // A per-process tag tells the CAs of different runs apart in a trust store listing.
        let tag =
            now.duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos() ^ std::process::id();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("proxyd interception CA {tag:08x}"));
        params.distinguished_name.push(DnType::OrganizationName, "proxyd");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = scope.name_constraints();
        validity(&mut params, now - BACKDATE, now + CA_VALIDITY);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(InterceptCa {
            issuer,
            scope,
            provider,
            sessions: ServerSessionMemoryCache::new(256),
            leaves: Mutex::new(LeafCache::new(LEAF_CACHE_SIZE)),
        })
    }

    /// The CA certificate, PEM-encoded, for clients to trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn scope(&self) -> &CaScope {
        &self.scope
    }

    /// Whether clients will accept a leaf for `host` under the name constraints.
    pub fn covers(&self, host: &Host) -> bool {
        self.scope.covers(host)
    }

    /// The TLS server configuration presenting a leaf for `host` (ALPN `h2`, then `http/1.1`),
    /// from the cache or freshly signed.
    pub fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, CaError> {
        self.server_config_at(host, SystemTime::now())
    }

    fn server_config_at(&self, host: &Host, now: SystemTime) -> Result<Arc<ServerConfig>, CaError> {
        if let Some(config) = self.cache().get(host, now) {
            return Ok(config);
        }
        // Signed outside the lock: other hosts are not kept waiting.
        let config = Arc::new(self.leaf_config(host, now)?);
        self.cache().insert(host.clone(), config.clone(), now + LEAF_RENEW_AFTER);
        Ok(config)
    }

    /// Cached leaves (for tests and metrics).
    pub fn cached_leaves(&self) -> usize {
        self.cache().entries.len()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        self.leaves.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn leaf_config(&self, host: &Host, now: SystemTime) -> Result<ServerConfig, CaError> {
        let (chain, key) = self.leaf(host, now)?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // rustls picks by the server's order: h2 whenever the client offers it. A client that
        // offers ALPN but neither of these fails the handshake; one that offers none gets
        // HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        Ok(config)
    }

    /// A leaf for `host` valid for a day from an hour ago, with its own key.
    fn leaf(
        &self,
        host: &Host,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        // Not a host name, so no client mistakes it for one (OpenSSL checks a name-like CN
        // against the constraints when a leaf has no DNS name).
        params.distinguished_name.push(DnType::CommonName, "proxyd interception leaf");
        params.subject_alt_names = vec![match host {
            Host::Name(name) => SanType::DnsName(name.to_string().try_into()?),
            Host::Ip(ip) => SanType::IpAddress(*ip),
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now - BACKDATE, now + LEAF_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        Ok((vec![cert.der().clone()], key.into()))
    }
}

/// Sets the validity period (rcgen's date type is reached from the epoch, so this crate needs
/// no date library of its own).
fn validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since = |time: SystemTime| time.duration_since(UNIX_EPOCH).unwrap_or_default();
    params.not_before = epoch + since(not_before);
    params.not_after = epoch + since(not_after);
}

/// Per-host leaves, least recently used dropped first past `capacity`.
struct LeafCache {
    capacity: usize,
    /// Bumped on every use; an entry's `used` is the tick of its last use.
    tick: u64,
    entries: HashMap<Host, Leaf>,
}

struct Leaf {
    config: Arc<ServerConfig>,
    renew_at: SystemTime,
    used: u64,
}

impl LeafCache {
    fn new(capacity: usize) -> LeafCache {
        LeafCache { capacity, tick: 0, entries: HashMap::new() }
    }

    fn get(&mut self, host: &Host, now: SystemTime) -> Option<Arc<ServerConfig>> {
        self.tick += 1;
        let leaf = self.entries.get_mut(host).filter(|leaf| now < leaf.renew_at)?;
        leaf.used = self.tick;
        Some(leaf.config.clone())
    }

    fn insert(&mut self, host: Host, config: Arc<ServerConfig>, renew_at: SystemTime) {
        self.tick += 1;
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&host) {
            // A linear scan, only when full: a thousand entries cost microseconds, far less
            // than signing the leaf that is being added.
            let oldest = self.entries.iter().min_by_key(|(_, leaf)| leaf.used).map(|(h, _)| h);
            if let Some(oldest) = oldest.cloned() {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(host, Leaf { config, renew_at, used: self.tick });
    }
}

#[cfg(test)]
mod tests {
    use proxyd_policy::ListKind;
    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn scope(entries: &[&str]) -> CaScope {
        let patterns: Vec<Pattern> = entries
            .iter()
            .map(|e| Pattern::parse(e, ListKind::Allowed).expect("pattern"))
            .collect();
        CaScope::from_patterns(&patterns)
    }

    fn host(text: &str) -> Host {
        Host::parse(text).expect("host")
    }

    #[track_caller]
    fn check_scope(entries: &[&str], dns: &[&str], ips: &[&str]) {
        let expected = CaScope::Limited {
            dns: dns.iter().map(|d| (*d).into()).collect(),
            ips: ips.iter().map(|n| n.parse().expect("net")).collect(),
        };
        assert_eq!(scope(entries), expected, "{entries:?}");
    }

    #[test]
    fn scope_follows_the_allowlist() {
        check_scope(&[], &[], &[]);
        check_scope(&["example.com", "www.example.com"], &["example.com"], &[]);
        check_scope(&["*.example.com", "**.example.org:443"], &["example.com", "example.org"], &[]);
        check_scope(&["api-*.example.io", "localhost"], &["example.io", "localhost"], &[]);
        check_scope(&["notexample.com", "example.com"], &["example.com", "notexample.com"], &[]);
        check_scope(
            &["10.0.0.0/8", "127.0.0.1", "::1"],
            &[],
            &["10.0.0.0/8", "127.0.0.1/32", "::1/128"],
        );
        assert_eq!(scope(&["example.com", "*"]), CaScope::Everything);
    }

    #[test]
    fn scope_covers_what_the_constraints_permit() {
        let s = scope(&["example.com", "10.0.0.0/8", "localhost"]);
        for (name, covered) in [
            ("example.com", true),
            ("a.b.example.com", true),
            ("localhost", true),
            ("notexample.com", false),
            ("com", false),
            ("10.9.8.7", true),
            ("11.0.0.1", false),
            ("[::1]", false),
        ] {
            assert_eq!(s.covers(&host(name)), covered, "{name}");
        }
        assert!(CaScope::Everything.covers(&host("anything.test")));
        assert!(!scope(&[]).covers(&host("example.com")));
    }

    /// Whether a client trusting only the CA accepts a leaf it signed for `name`: rustls
    /// (webpki) enforces the name constraints of a trust anchor.
    fn verifies(ca: &InterceptCa, name: &str) -> bool {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der()).expect("root");
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("verifier");
        let (chain, _) = ca.leaf(&host(name), SystemTime::now()).expect("leaf");
        let server_name =
            ServerName::try_from(name.trim_matches(['[', ']']).to_owned()).expect("name");
        verifier.verify_server_cert(&chain[0], &[], &server_name, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn leaves_verify_only_inside_the_name_constraints() {
        let ca =
            InterceptCa::generate(scope(&["*.example.com", "10.0.0.0/8"]), provider()).unwrap();
        assert!(verifies(&ca, "www.example.com"));
        assert!(verifies(&ca, "example.com"));
        assert!(verifies(&ca, "10.1.2.3"));
        assert!(!verifies(&ca, "evil.test"));
        assert!(!verifies(&ca, "192.168.0.1"));
        let names_only = InterceptCa::generate(scope(&["localhost"]), provider()).unwrap();
        assert!(verifies(&names_only, "localhost"));
        assert!(!verifies(&names_only, "127.0.0.1"), "no address range: every address excluded");
        let nothing = InterceptCa::generate(scope(&[]), provider()).unwrap();
        assert!(!verifies(&nothing, "example.com"));
        let everything = InterceptCa::generate(CaScope::Everything, provider()).unwrap();
        assert!(verifies(&everything, "anything.test") && verifies(&everything, "192.168.0.1"));
    }

    #[test]
    fn leaves_are_cached_and_renewed() {
        let ca = InterceptCa::generate(CaScope::Everything, provider()).unwrap();
        let now = SystemTime::now();
        let first = ca.server_config_at(&host("a.test"), now).unwrap();
        let again = ca.server_config_at(&host("a.test"), now + Duration::from_secs(60)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        let later = ca.server_config_at(&host("a.test"), now + LEAF_RENEW_AFTER).unwrap();
        assert!(!Arc::ptr_eq(&first, &later), "an old leaf is replaced before it expires");
        assert_eq!(ca.cached_leaves(), 1);
    }

    #[test]
    fn the_leaf_cache_is_bounded_and_drops_the_least_recently_used() {
        let ca = InterceptCa::generate(CaScope::Everything, provider()).unwrap();
        let now = SystemTime::now();
        let config = Arc::new(ca.leaf_config(&host("x.test"), now).unwrap());
        let renew_at = now + LEAF_RENEW_AFTER;
        let mut cache = LeafCache::new(LEAF_CACHE_SIZE);
        for i in 0..LEAF_CACHE_SIZE + 50 {
            cache.insert(host(&format!("h{i}.test")), config.clone(), renew_at);
            assert!(cache.entries.len() <= LEAF_CACHE_SIZE);
        }
        assert_eq!(cache.entries.len(), LEAF_CACHE_SIZE);
        assert!(cache.get(&host("h0.test"), now).is_none(), "the oldest entries went first");
        assert!(cache.get(&host("h1049.test"), now).is_some());

        let mut small = LeafCache::new(3);
        for name in ["a.test", "b.test", "c.test"] {
            small.insert(host(name), config.clone(), renew_at);
        }
        assert!(small.get(&host("a.test"), now).is_some());
        small.insert(host("d.test"), config.clone(), renew_at);
        let mut kept: Vec<String> = small.entries.keys().map(|h| h.to_string()).collect();
        kept.sort();
        assert_eq!(kept, ["a.test", "c.test", "d.test"], "b was used least recently");
        small.insert(host("a.test"), config, renew_at);
        assert_eq!(small.entries.len(), 3, "replacing an entry evicts nothing");
    }
}
