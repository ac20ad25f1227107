//! `[[network.rules]]` (request rules inside HTTP and HTTPS) and `[[network.credentials]]`
//! (tokens `proxyd exec` brokers): arrays of tables, every field checked where it is written
//! so an error names its file and line. Secrets are read when the config is loaded (start and
//! reload), never logged, and never shown by `/config` or `proxyd check`.

use std::fmt;
use std::path::{Path, PathBuf};

use proxyd_policy::{
    HeaderMatcher, HeaderTest, Injection, ListKind, PathPattern, Pattern, QueryMatcher, QueryTest,
    Rule, RuleSet, Secrets,
};
use toml::Spanned;
use toml::de::DeValue;

use crate::error::{ConfigError, ErrorKind};
use crate::sources::Src;

type Errors = Vec<ConfigError>;

/// Whether a matching rule lets the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Deny,
}

/// A header condition: `"name"` (present), `"name: value"` (equal), `"name: prefix*"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpec {
    pub name: String,
    pub value: Option<String>,
    pub prefix: bool,
}

/// A query condition: `"name"` (present) or `"name=value"` (equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySpec {
    pub name: String,
    pub value: Option<String>,
}

/// Where a secret comes from; its value is read at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env {name}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A secret value. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// A header to add from a secret: `inject_header` = `inject_prefix` + the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSpec {
    pub header: String,
    pub prefix: String,
    pub source: SecretSource,
    /// Read at load; `None` until then.
    pub secret: Option<Secret>,
}

/// One `[[network.rules]]` entry, as written (checked, not yet compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    pub host: String,
    /// `None`: any method.
    pub methods: Option<Vec<String>>,
    /// Empty: any path.
    pub paths: Vec<String>,
    pub query: Vec<QuerySpec>,
    pub headers: Vec<HeaderSpec>,
    pub action: RuleAction,
    pub strip_headers: Vec<String>,
    pub inject: Option<InjectSpec>,
}

/// One `[[network.credentials]]` entry: a token `proxyd exec` hands the command only as a
/// placeholder, swapped for the real value on its way to `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    pub name: String,
    /// The variable the command reads the token from (`GITHUB_TOKEN`).
    pub env: String,
    pub hosts: Vec<String>,
    pub source: SecretSource,
    pub dangerously_allow_plain_http: bool,
    /// Read at load; `None` until then.
    pub secret: Option<Secret>,
}

const RULE_KEYS: &[&str] = &[
    "name",
    "host",
    "methods",
    "paths",
    "query",
    "headers",
    "action",
    "strip_headers",
    "inject_header",
    "inject_prefix",
    "secret_env",
    "secret_file",
];
const CREDENTIAL_KEYS: &[&str] =
    &["name", "env", "hosts", "secret_env", "secret_file", "dangerously_allow_plain_http"];

/// One table of an array, with what error reports need.
struct Entry<'a> {
    key: &'static str,
    index: usize,
    table: &'a Spanned<DeValue<'a>>,
    src: &'a Src<'a>,
    errors: &'a mut Errors,
}

impl<'a> Entry<'a> {
    fn fail(&mut self, span: std::ops::Range<usize>, reason: String) {
        let kind = ErrorKind::Invalid {
            key: self.key,
            reason: format!("entry {}: {reason}", self.index + 1),
        };
        self.errors.push(ConfigError::new(self.src.location(span), kind));
    }

    fn field(&self, name: &str) -> Option<&'a Spanned<DeValue<'a>>> {
        self.table.get_ref().as_table()?.get(name)
    }

    fn string(&mut self, name: &str) -> Option<String> {
        let value = self.field(name)?;
        match value.get_ref().as_str() {
            Some(text) => Some(text.to_owned()),
            None => {
                self.fail(value.span(), format!("{name} must be a string"));
                None
            }
        }
    }

    fn required(&mut self, name: &str) -> Option<String> {
        let found = self.string(name);
        if found.is_none() && self.field(name).is_none() {
            let span = self.table.span();
            self.fail(span, format!("{name} is required"));
        }
        found
    }

    fn strings(&mut self, name: &str) -> Option<Vec<String>> {
        let value = self.field(name)?;
        let Some(array) = value.get_ref().as_array() else {
            self.fail(value.span(), format!("{name} must be an array of strings"));
            return None;
        };
        let mut out = Vec::new();
        for item in array.iter() {
            match item.get_ref().as_str() {
                Some(text) => out.push(text.to_owned()),
                None => self.fail(item.span(), format!("{name} must be an array of strings")),
            }
        }
        Some(out)
    }

    fn bool(&mut self, name: &str) -> bool {
        let Some(value) = self.field(name) else { return false };
        match value.get_ref().as_bool() {
            Some(b) => b,
            None => {
                self.fail(value.span(), format!("{name} must be a boolean"));
                false
            }
        }
    }

    fn unknown_fields(&mut self, known: &[&str]) {
        let Some(table) = self.table.get_ref().as_table() else { return };
        let unknown: Vec<(String, std::ops::Range<usize>)> = table
            .iter()
            .filter(|(k, _)| !known.contains(&k.get_ref().as_ref()))
            .map(|(k, _)| (k.get_ref().to_string(), k.span()))
            .collect();
        for (name, span) in unknown {
            self.fail(span, format!("unknown field {name:?} (known: {})", known.join(", ")));
        }
    }

    fn secret_source(&mut self, base: Option<&Path>) -> Option<SecretSource> {
        let env = self.string("secret_env");
        let file = self.string("secret_file");
        match (env, file) {
            (Some(env), None) => Some(SecretSource::Env(env)),
            (None, Some(file)) => {
                let path = Path::new(&file);
                Some(SecretSource::File(match base {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.to_owned(),
                }))
            }
            (Some(_), Some(_)) => {
                let span = self.table.span();
                self.fail(span, "set secret_env or secret_file, not both".into());
                None
            }
            (None, None) => None,
        }
    }
}

fn tables<'a>(
    key: &'static str,
    value: &'a Spanned<DeValue<'a>>,
    src: &'a Src<'a>,
    errors: &mut Errors,
) -> Option<Vec<&'a Spanned<DeValue<'a>>>> {
    let array =
        value.get_ref().as_array().filter(|a| a.iter().all(|t| t.get_ref().as_table().is_some()));
    if array.is_none() {
        let kind = ErrorKind::WrongType {
            key: format!("network.{key}"),
            expected: "an array of tables ([[network.KEY]])",
            found: value.get_ref().type_str(),
        };
        errors.push(ConfigError::new(src.location(value.span()), kind));
    }
    array.map(|a| a.iter().collect())
}

/// `[[network.rules]]`.
pub(crate) fn parse_rules(
    value: &Spanned<DeValue<'_>>,
    src: &Src<'_>,
) -> Result<Vec<RuleSpec>, Errors> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let Some(items) = tables("rules", value, src, &mut errors) else { return Err(errors) };
    for (index, table) in items.into_iter().enumerate() {
        let before = errors.len();
        let mut e = Entry { key: "rules", index, table, src, errors: &mut errors };
        e.unknown_fields(RULE_KEYS);
        let name = e.required("name");
        let host = e.required("host");
        if let (Some(host), Some(field)) = (&host, e.field("host")) {
            if let Err(err) = Pattern::parse(host, ListKind::Allowed) {
                e.fail(field.span(), format!("host {host:?}: {err}"));
            } else if host == "*" {
                e.fail(field.span(), "host \"*\" is too broad for a rule: name the host".into());
            }
        }
        let methods = e.strings("methods");
        let paths = e.strings("paths").unwrap_or_default();
        let query = e.strings("query").unwrap_or_default().into_iter().map(query_spec).collect();
        let headers =
            e.strings("headers").unwrap_or_default().into_iter().map(header_spec).collect();
        let action = match e.string("action").as_deref() {
            None | Some("allow") => RuleAction::Allow,
            Some("deny") => RuleAction::Deny,
            Some(other) => {
                let span = e.field("action").map_or(table.span(), Spanned::span);
                e.fail(span, format!("action must be \"allow\" or \"deny\", found {other:?}"));
                RuleAction::Deny
            }
        };
        let strip_headers = e.strings("strip_headers").unwrap_or_default();
        let inject_header = e.string("inject_header");
        let inject_prefix = e.string("inject_prefix").unwrap_or_default();
        let source = e.secret_source(src.base_dir());
        let inject = match (inject_header, source) {
            (Some(header), Some(source)) => {
                Some(InjectSpec { header, prefix: inject_prefix, source, secret: None })
            }
            (None, None) => None,
            (Some(_), None) => {
                e.fail(table.span(), "inject_header needs secret_env or secret_file".into());
                None
            }
            (None, Some(_)) => {
                e.fail(table.span(), "a secret needs inject_header to name its header".into());
                None
            }
        };
        if errors.len() == before
            && let (Some(name), Some(host)) = (name, host)
        {
            rules.push(RuleSpec {
                name,
                host,
                methods,
                paths,
                query,
                headers,
                action,
                strip_headers,
                inject,
            });
        }
    }
    match errors.is_empty() {
        true => Ok(rules),
        false => Err(errors),
    }
}

/// `[[network.credentials]]`.
pub(crate) fn parse_credentials(
    value: &Spanned<DeValue<'_>>,
    src: &Src<'_>,
) -> Result<Vec<CredentialSpec>, Errors> {
    let mut errors = Vec::new();
    let mut credentials = Vec::new();
    let Some(items) = tables("credentials", value, src, &mut errors) else { return Err(errors) };
    for (index, table) in items.into_iter().enumerate() {
        let before = errors.len();
        let mut e = Entry { key: "credentials", index, table, src, errors: &mut errors };
        e.unknown_fields(CREDENTIAL_KEYS);
        let name = e.required("name");
        let env = e.required("env");
        let hosts = e.strings("hosts").unwrap_or_default();
        if hosts.is_empty() {
            e.fail(table.span(), "hosts is required: the hosts the real token may go to".into());
        }
        for host in &hosts {
            if let Err(err) = Pattern::parse(host, ListKind::Allowed) {
                let span = e.field("hosts").map_or(table.span(), Spanned::span);
                e.fail(span, format!("host {host:?}: {err}"));
            }
        }
        let source = e.secret_source(src.base_dir());
        if source.is_none() && e.field("secret_env").is_none() && e.field("secret_file").is_none() {
            e.fail(table.span(), "secret_env or secret_file is required".into());
        }
        let dangerously_allow_plain_http = e.bool("dangerously_allow_plain_http");
        if errors.len() == before
            && let (Some(name), Some(env), Some(source)) = (name, env, source)
        {
            credentials.push(CredentialSpec {
                name,
                env,
                hosts,
                source,
                dangerously_allow_plain_http,
                secret: None,
            });
        }
    }
    match errors.is_empty() {
        true => Ok(credentials),
        false => Err(errors),
    }
}

fn query_spec(text: String) -> QuerySpec {
    match text.split_once('=') {
        Some((name, value)) => QuerySpec { name: name.to_owned(), value: Some(value.to_owned()) },
        None => QuerySpec { name: text, value: None },
    }
}

fn header_spec(text: String) -> HeaderSpec {
    match text.split_once(':') {
        Some((name, value)) => {
            let value = value.trim();
            let (value, prefix) = match value.strip_suffix('*') {
                Some(prefix) => (prefix, true),
                None => (value, false),
            };
            HeaderSpec {
                name: name.trim().to_ascii_lowercase(),
                value: Some(value.to_owned()),
                prefix,
            }
        }
        None => HeaderSpec { name: text.trim().to_ascii_lowercase(), value: None, prefix: false },
    }
}

/// Reads a secret (at load). Errors name the source, never a value.
pub(crate) fn read_secret(source: &SecretSource) -> Result<Secret, String> {
    let value = match source {
        SecretSource::Env(name) => std::env::var(name)
            .map_err(|_| format!("{source}: not set (or not unicode) in proxyd's environment"))?,
        SecretSource::File(path) => std::fs::read_to_string(path)
            .map_err(|err| format!("{source}: {err}"))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
    };
    if value.is_empty() {
        return Err(format!("{source}: empty"));
    }
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("{source}: contains control characters"));
    }
    Ok(Secret(value))
}

/// The policy's form of the rules: compiled, with the values they inject in a table of their
/// own. Errors name the rule.
pub(crate) fn compile(specs: &[RuleSpec]) -> Result<(RuleSet, Secrets), Vec<String>> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut secrets = Vec::new();
    for spec in specs {
        let host = match Pattern::parse(&spec.host, ListKind::Allowed) {
            Ok(host) => host,
            Err(err) => {
                errors.push(format!("rule {:?}: {err}", spec.name));
                continue;
            }
        };
        let mut paths = Vec::new();
        for path in &spec.paths {
            match PathPattern::parse(path) {
                Ok(pattern) => paths.push(pattern),
                Err(err) => errors.push(format!("rule {:?}: path {path:?}: {err}", spec.name)),
            }
        }
        let query = spec
            .query
            .iter()
            .map(|q| QueryMatcher {
                name: q.name.clone(),
                test: match &q.value {
                    Some(value) => QueryTest::Equals(value.clone()),
                    None => QueryTest::Present,
                },
            })
            .collect();
        let headers = spec
            .headers
            .iter()
            .map(|h| HeaderMatcher {
                name: h.name.clone(),
                test: match (&h.value, h.prefix) {
                    (None, _) => HeaderTest::Present,
                    (Some(value), true) => HeaderTest::Prefix(value.clone()),
                    (Some(value), false) => HeaderTest::Equals(value.clone()),
                },
            })
            .collect();
        let inject = spec.inject.as_ref().and_then(|inject| {
            let secret = inject.secret.as_ref()?;
            secrets.push(format!("{}{}", inject.prefix, secret.expose()));
            Some(Injection { header: inject.header.clone(), secret: secrets.len() - 1 })
        });
        rules.push(Rule {
            name: spec.name.clone(),
            host,
            methods: spec.methods.clone(),
            paths,
            query,
            headers,
            action: match spec.action {
                RuleAction::Allow => proxyd_policy::RuleAction::Allow,
                RuleAction::Deny => proxyd_policy::RuleAction::Deny,
            },
            strip_headers: spec.strip_headers.clone(),
            inject,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    RuleSet::compile(rules)
        .map(|set| (set, Secrets(secrets)))
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}
