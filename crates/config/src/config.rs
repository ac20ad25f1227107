//! The validated configuration, and the rules that hold between keys (SPEC §2.3).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxyd_policy::{FileId, ListKind, Mode, PatternSet, Policy, RuleSet, Secrets, UnixSocketRule};

use crate::error::{ConfigError, ConfigErrors, ErrorKind};
use crate::listen::{self, Clamp};
use crate::provenance::Origin;
use crate::rules::{CredentialSpec, RuleSpec};
use crate::sources::{self, Sources};
use crate::tables::{self, Doc, Profile, SourceTables};

/// A validated configuration: every value typed and checked, listener addresses clamped,
/// pattern lists compiled.
///
/// Loading with no sources gives [`Config::default`]. The pattern lists are read-only (through
/// [`Config::allowed_domains`] and [`Config::denied_domains`]) because their compiled form,
/// [`Config::policy`], is built from them at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub enabled: bool,
    /// `proxy_url`, after clamping.
    pub http_addr: SocketAddr,
    /// `admin_url`, after clamping.
    pub admin_addr: SocketAddr,
    /// `socks_url`, after clamping.
    pub socks_addr: SocketAddr,
    /// `dns_url`: the DNS service's address (UDP and TCP); `None` (the default) runs none.
    pub dns_addr: Option<SocketAddr>,
    pub enable_socks5: bool,
    pub enable_socks5_udp: bool,
    pub allow_upstream_proxy: bool,
    pub dangerously_allow_non_loopback_proxy: bool,
    pub dangerously_allow_non_loopback_admin: bool,
    pub mode: Mode,
    pub(crate) allowed_domains: Vec<String>,
    pub(crate) denied_domains: Vec<String>,
    pub allow_local_binding: bool,
    pub allow_unix_sockets: Vec<PathBuf>,
    pub connect_timeout: Duration,
    pub dns_timeout: Duration,
    pub header_read_timeout: Duration,
    /// One clock for both directions of a tunnel, a keep-alive connection between requests,
    /// and a forwarded exchange's bodies.
    pub idle_timeout: Duration,
    /// How long a forwarded request waits for its response head once it has been sent.
    pub response_timeout: Duration,
    pub decider_timeout: Duration,
    /// How long shutdown waits for connections to finish; zero closes them at once.
    pub drain_timeout: Duration,
    /// Per listener.
    pub max_connections: usize,
    /// Connections the admin listener serves at once (`admin_max_connections`).
    pub admin_max_connections: usize,
    pub blocked_log_size: usize,
    /// From `admin_token`, or the trimmed content of `admin_token_file` (setting both is an
    /// error).
    pub admin_token: Option<AdminToken>,
    pub admin_token_file: Option<PathBuf>,
    /// Limited-mode TLS interception: a `CONNECT` to an allowed host is terminated with a
    /// certificate from proxyd's local CA, and every request inside is decided on its own.
    pub mitm: bool,
    /// Where the interception CA's certificate is written; `$CODEX_HOME/proxy` by default
    /// (`CODEX_HOME` defaults to `~/.codex`). `None` when neither variable is set.
    pub ca_dir: Option<PathBuf>,
    /// `on_miss = "ask"`: an allowlist miss waits for a person's answer instead of failing.
    pub on_miss_ask: bool,
    /// How long an asked request waits before it is denied (`ask_timeout`).
    pub ask_timeout: Duration,
    /// At most this many questions wait at once (`ask_max_pending`).
    pub ask_max_pending: usize,
    /// `[[network.rules]]`: request rules inside HTTP and HTTPS, in order (secrets read).
    pub rules: Vec<RuleSpec>,
    /// `[[network.credentials]]`: tokens `proxyd exec` brokers (secrets read).
    pub credentials: Vec<CredentialSpec>,
    /// What was adjusted rather than refused (listener clamping), and network-looking tables
    /// and keys that were not applied, each naming its file and line, for the caller to log.
    pub warnings: Vec<String>,
    /// The Codex permission profile selected (`--profile`, else the last
    /// `default_permissions`), whether or not a network table backs it.
    pub profile: Option<Profile>,
    /// The network tables each file contributed, in the order they were applied.
    pub tables: Vec<SourceTables>,
    /// The keys set by some source; the others are defaults.
    origins: BTreeMap<&'static str, Origin>,
    compiled: Compiled,
}

/// The compiled pattern lists: a pure function of `allowed_domains` and `denied_domains`.
#[derive(Debug, Clone, Default)]
struct Compiled {
    allowed: PatternSet,
    denied: PatternSet,
    /// `allow_unix_sockets`, canonicalised and pinned to the socket found at load.
    unix_sockets: Vec<UnixSocketRule>,
    /// `[[network.rules]]`, compiled, and the values they inject.
    rules: RuleSet,
    secrets: Secrets,
}

impl PartialEq for Compiled {
    fn eq(&self, other: &Compiled) -> bool {
        self.allowed.patterns() == other.allowed.patterns()
            && self.denied.patterns() == other.denied.patterns()
            && self.unix_sockets == other.unix_sockets
            && self.secrets == other.secrets
    }
}

const fn local(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

impl Default for Config {
    /// The built-in defaults of SPEC §2.2.
    fn default() -> Config {
        Config {
            enabled: true,
            http_addr: local(3128),
            admin_addr: local(8080),
            socks_addr: local(8081),
            dns_addr: None,
            enable_socks5: true,
            enable_socks5_udp: true,
            allow_upstream_proxy: true,
            dangerously_allow_non_loopback_proxy: false,
            dangerously_allow_non_loopback_admin: false,
            mode: Mode::Full,
            allowed_domains: Vec::new(),
            denied_domains: Vec::new(),
            allow_local_binding: false,
            allow_unix_sockets: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            dns_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(5 * 60),
            response_timeout: Duration::from_secs(30),
            decider_timeout: Duration::from_secs(5 * 60),
            drain_timeout: Duration::from_secs(10),
            max_connections: 4096,
            admin_max_connections: 256,
            blocked_log_size: 200,
            admin_token: None,
            admin_token_file: None,
            mitm: false,
            ca_dir: sources::default_ca_dir(|name| std::env::var_os(name)),
            warnings: Vec::new(),
            profile: None,
            tables: Vec::new(),
            origins: BTreeMap::new(),
            compiled: Compiled::default(),
            on_miss_ask: false,
            ask_timeout: Duration::from_secs(60),
            ask_max_pending: 16,
            rules: Vec::new(),
            credentials: Vec::new(),
        }
    }
}

static DEFAULT_ORIGIN: Origin = Origin::Default;

impl Config {
    /// Loads and merges every source (SPEC §2.1), reporting every error found.
    pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
        let optional = sources.system.iter().chain(&sources.user).map(|path| (path, false));
        let explicit = sources.files.iter().map(|path| (path, true));
        let read: Vec<_> = optional
            .chain(explicit)
            .map(|(path, required)| (path.as_path(), sources::read(path, required)))
            .collect();
        Config::load_read(&read, sources.profile.as_deref(), &sources.overrides)
    }

    /// Loads one TOML document over the defaults, as if it were the only `--config` file;
    /// `origin` names it in errors and origins.
    pub fn from_toml_str(text: &str, origin: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        Config::load_read(&[(origin.as_ref(), Ok(Some(text.to_owned())))], None, &[])
    }

    /// Merges the files as read (`None`: an optional file that does not exist), then the
    /// overrides. Every file is parsed before any is applied: the permission profile a file's
    /// `[permissions.NAME.network]` belongs to may be selected by a later file.
    fn load_read(
        read: &[(&Path, Result<Option<String>, ConfigError>)],
        profile: Option<&str>,
        overrides: &[String],
    ) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        let mut errors = Vec::new();
        let docs: Vec<_> = read
            .iter()
            .map(|(path, text)| match text {
                Ok(Some(text)) => Ok(Some(Doc::parse(path, text))),
                Ok(None) => Ok(None),
                Err(err) => Err(err.clone()),
            })
            .collect();
        let parsed: Vec<&Doc<'_>> = docs.iter().flat_map(|doc| doc.iter().flatten()).collect();
        let mut warnings = Vec::new();
        let mut selection_errors = Vec::new();
        let selection = tables::select(&parsed, profile, &mut selection_errors, &mut warnings);
        // In source order, so errors read file by file.
        for doc in &docs {
            match doc {
                Ok(Some(doc)) => tables::apply(&mut config, doc, &selection, &mut errors),
                Ok(None) => {}
                Err(err) => errors.push(err.clone()),
            }
        }
        errors.extend(selection_errors);
        config.warnings.extend(warnings);
        config.profile = selection.profile;
        for arg in overrides {
            sources::apply_override(&mut config, arg, &mut errors);
        }
        config.finish(errors)
    }

    /// `allowed_domains` as written.
    pub fn allowed_domains(&self) -> &[String] {
        &self.allowed_domains
    }

    /// `denied_domains` as written.
    pub fn denied_domains(&self) -> &[String] {
        &self.denied_domains
    }

    /// The compiled policy for the decision procedure (SPEC §6).
    pub fn policy(&self) -> Policy {
        Policy {
            allowed: self.compiled.allowed.clone(),
            denied: self.compiled.denied.clone(),
            allow_local_binding: self.allow_local_binding,
            enabled: self.enabled,
            unix_sockets: self.compiled.unix_sockets.clone(),
            rules: self.compiled.rules.clone(),
            secrets: self.compiled.secrets.clone(),
        }
    }

    /// Where `key` of `[network]` got its value; [`Origin::Default`] for keys no source set
    /// and for unknown keys.
    pub fn origin(&self, key: &str) -> &Origin {
        self.origins.get(key).unwrap_or(&DEFAULT_ORIGIN)
    }

    pub(crate) fn set_origin(&mut self, key: &'static str, origin: Origin) {
        self.origins.insert(key, origin);
    }

    /// The keys whose change a reload must refuse because only a restart can apply them
    /// (SPEC §8.2): the listener addresses and the on/off switches. Empty when `new` can
    /// replace `self` at runtime. Addresses are compared as configured, so port `0` stays
    /// equal to port `0`.
    pub fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        [
            ("enabled", self.enabled != new.enabled),
            ("proxy_url", self.http_addr != new.http_addr),
            ("admin_url", self.admin_addr != new.admin_addr),
            ("enable_socks5", self.enable_socks5 != new.enable_socks5),
            ("socks_url", self.socks_addr != new.socks_addr),
            ("dns_url", self.dns_addr != new.dns_addr),
            ("enable_socks5_udp", self.enable_socks5_udp != new.enable_socks5_udp),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// The rules between keys, applied to the merged values.
    fn finish(mut self, mut errors: Vec<ConfigError>) -> Result<Config, ConfigErrors> {
        if let Err(err) = self.read_token_file() {
            errors.push(err);
        }
        if self.mitm && self.ca_dir.is_none() {
            let reason = "needs network.ca_dir: neither CODEX_HOME nor HOME is set".to_owned();
            let kind = ErrorKind::Invalid { key: "mitm", reason };
            errors.push(ConfigError::new(self.origin("mitm").location(), kind));
        }
        self.clamp_listeners();
        self.read_secrets(&mut errors);
        let allowed = PatternSet::compile(&self.allowed_domains, ListKind::Allowed);
        let denied = PatternSet::compile(&self.denied_domains, ListKind::Denied);
        // Every entry was checked where it was written, so these fail only if the policy
        // crate and `keys.rs` disagree; report rather than panic all the same.
        match (allowed, denied) {
            (Ok(allowed), Ok(denied)) => {
                let unix_sockets = self.pin_unix_sockets();
                match crate::rules::compile(&self.rules) {
                    Ok((rules, secrets)) => {
                        self.compiled = Compiled { allowed, denied, unix_sockets, rules, secrets };
                    }
                    Err(reasons) => {
                        for reason in reasons {
                            let kind = ErrorKind::Invalid { key: "rules", reason };
                            errors.push(ConfigError::new(self.origin("rules").location(), kind));
                        }
                    }
                }
            }
            (allowed, denied) => {
                let failures =
                    [("allowed_domains", allowed.err()), ("denied_domains", denied.err())];
                for (key, failed) in failures {
                    for err in failed.into_iter().flatten() {
                        let kind = ErrorKind::Invalid { key, reason: err.to_string() };
                        errors.push(ConfigError::new(self.origin(key).location(), kind));
                    }
                }
            }
        }
        match errors.is_empty() {
            true => Ok(self),
            false => Err(ConfigErrors(errors)),
        }
    }

    fn read_token_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(());
        };
        let origin = self.origin("admin_token_file").clone();
        let fail = |reason: String| {
            ConfigError::new(
                origin.location(),
                ErrorKind::Invalid { key: "admin_token_file", reason },
            )
        };
        if self.admin_token.is_some() {
            return Err(fail("admin_token is set as well: set only one of the two".into()));
        }
        let text = read_small(path).map_err(|err| fail(format!("{}: {err}", path.display())))?;
        let token = AdminToken::new(text.trim())
            .map_err(|reason| fail(format!("{}: {reason}", path.display())))?;
        self.admin_token = Some(token);
        self.set_origin("admin_token", origin);
        Ok(())
    }

    /// Canonicalises every `allow_unix_sockets` entry once and notes which socket is there
    /// (SPEC §7.7): requests reach only that socket, at that canonical path, until a reload
    /// looks again. An entry with no socket behind it refuses requests and is warned about.
    fn pin_unix_sockets(&mut self) -> Vec<UnixSocketRule> {
        let mut rules = Vec::with_capacity(self.allow_unix_sockets.len());
        for configured in &self.allow_unix_sockets {
            let (canonical, socket) = match pin_socket(configured) {
                Ok((canonical, id)) => (canonical, Some(id)),
                Err(why) => {
                    self.warnings.push(format!(
                        "allow_unix_sockets: {}: {why}; requests for it are refused until a reload finds a socket there",
                        configured.display()
                    ));
                    (configured.clone(), None)
                }
            };
            rules.push(UnixSocketRule { configured: configured.clone(), canonical, socket });
        }
        rules
    }

    /// Clamps an address given in place of a configured listener's (the library's builder
    /// overrides) by the same rule as the config's own: loopback unless its
    /// `dangerously_allow_non_loopback_*` flag is set and `allow_unix_sockets` is empty.
    /// `key` is `proxy_url`, `socks_url` or `admin_url`.
    pub fn clamp_listener(&self, key: &str, addr: SocketAddr) -> (SocketAddr, Option<String>) {
        let (flag, flag_set) = match key {
            "admin_url" => {
                ("dangerously_allow_non_loopback_admin", self.dangerously_allow_non_loopback_admin)
            }
            _ => {
                ("dangerously_allow_non_loopback_proxy", self.dangerously_allow_non_loopback_proxy)
            }
        };
        let unix_sockets = !self.allow_unix_sockets.is_empty();
        listen::clamp(key, addr, Clamp { flag, flag_set, unix_sockets })
    }

    /// Reads every rule's and credential's secret now (at start and at every reload), so a
    /// missing one is a config error naming its source, not a failure at the first request.
    fn read_secrets(&mut self, errors: &mut Vec<ConfigError>) {
        let mut failures = Vec::new();
        for rule in &mut self.rules {
            if let Some(inject) = &mut rule.inject {
                match crate::rules::read_secret(&inject.source) {
                    Ok(secret) => inject.secret = Some(secret),
                    Err(why) => failures.push(("rules", format!("rule {:?}: {why}", rule.name))),
                }
            }
        }
        for credential in &mut self.credentials {
            match crate::rules::read_secret(&credential.source) {
                Ok(secret) => credential.secret = Some(secret),
                Err(why) => failures
                    .push(("credentials", format!("credential {:?}: {why}", credential.name))),
            }
        }
        for (key, reason) in failures {
            let kind = ErrorKind::Invalid { key, reason };
            errors.push(ConfigError::new(self.origin(key).location(), kind));
        }
    }

    fn clamp_listeners(&mut self) {
        let unix_sockets = !self.allow_unix_sockets.is_empty();
        let proxy = Clamp {
            flag: "dangerously_allow_non_loopback_proxy",
            flag_set: self.dangerously_allow_non_loopback_proxy,
            unix_sockets,
        };
        let admin = Clamp {
            flag: "dangerously_allow_non_loopback_admin",
            flag_set: self.dangerously_allow_non_loopback_admin,
            unix_sockets,
        };
        let listeners = [
            ("proxy_url", &mut self.http_addr, proxy),
            ("admin_url", &mut self.admin_addr, admin),
            ("socks_url", &mut self.socks_addr, proxy),
        ];
        for (key, addr, rule) in listeners {
            let (clamped, warning) = listen::clamp(key, *addr, rule);
            *addr = clamped;
            self.warnings.extend(warning);
        }
        if let Some(addr) = &mut self.dns_addr {
            let (clamped, warning) = listen::clamp("dns_url", *addr, proxy);
            *addr = clamped;
            self.warnings.extend(warning);
        }
    }
}

/// Reads a token file, refusing anything larger than a token could be (`/dev/zero` must not
/// hang the load).
fn read_small(path: &Path) -> Result<String, String> {
    const LIMIT: u64 = 4096;
    let file = std::fs::File::open(path).map_err(|err| err.to_string())?;
    let mut text = String::new();
    file.take(LIMIT + 1).read_to_string(&mut text).map_err(|err| err.to_string())?;
    match text.len() as u64 > LIMIT {
        true => Err(format!("larger than {LIMIT} bytes")),
        false => Ok(text),
    }
}

/// The admin API's bearer token (SPEC §8.3). Its `Debug` form never shows the value, so a
/// logged `Config` does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token must be non-empty visible ASCII, as it travels in an `Authorization` header
    /// (RFC 6750 §2.1).
    pub fn new(token: &str) -> Result<AdminToken, String> {
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ascii without spaces".into());
        }
        Ok(AdminToken(token.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The canonical path of a Unix socket and the socket's identity.
#[cfg(unix)]
fn pin_socket(path: &Path) -> Result<(PathBuf, FileId), String> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let canonical = std::fs::canonicalize(path).map_err(|err| err.to_string())?;
    let meta = std::fs::metadata(&canonical).map_err(|err| err.to_string())?;
    if !meta.file_type().is_socket() {
        return Err("not a unix socket".to_owned());
    }
    let birth = meta.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let birth = birth.map(|d| (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()));
    Ok((canonical, FileId { dev: meta.dev(), ino: meta.ino(), birth }))
}

#[cfg(not(unix))]
fn pin_socket(_: &Path) -> Result<(PathBuf, FileId), String> {
    Err("unix sockets are not supported on this system".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mitm_needs_a_ca_dir() {
        let config = Config { mitm: true, ca_dir: None, ..Config::default() };
        let errors = config.finish(Vec::new()).expect_err("mitm without ca_dir");
        assert_eq!(
            errors.to_string(),
            "config: network.mitm: needs network.ca_dir: neither CODEX_HOME nor HOME is set"
        );
        let config = Config { mitm: true, ca_dir: Some("/ca".into()), ..Config::default() };
        assert!(config.finish(Vec::new()).is_ok());
        assert!(Config { ca_dir: None, ..Config::default() }.finish(Vec::new()).is_ok());
    }
}
