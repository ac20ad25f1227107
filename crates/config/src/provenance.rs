//! Where each effective value came from, and the effective config as text for `proxyd check`
//! and `--print-config` (SPEC §2.1).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::error::Location;

/// The source that set a key last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built into proxyd.
    Default,
    /// A config file, at the 1-based line where the key is written. `table` names the Codex
    /// table the key was read from (`permissions.workspace.network`), or is `None` for proxyd's
    /// own `[network]`: the same key can come from several tables of one file.
    File { path: PathBuf, line: usize, table: Option<String> },
    /// A `-c network.KEY=VALUE` override.
    Override,
}

impl Origin {
    pub(crate) fn location(&self) -> Location {
        match self {
            Origin::Default => Location::Effective,
            Origin::File { path, line, .. } => Location::Line(path.clone(), *line),
            Origin::Override => Location::Override,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line, table: None } => write!(f, "from {}:{line}", path.display()),
            Origin::File { path, line, table: Some(table) } => {
                write!(f, "from {}:{line} in [{table}]", path.display())
            }
            Origin::Override => f.write_str("from -c"),
        }
    }
}

/// An effective value, in a form any front end can show (the admin API turns it into JSON,
/// `proxyd check` into TOML) without this crate choosing a serialisation for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Integer(u64),
    /// Strings, and addresses and durations in the form they can be written back in.
    String(String),
    List(Vec<String>),
    /// A secret that is set; its value is never shown.
    Redacted,
    /// Structured entries (`[[network.rules]]`), summarised; rendered as a comment, since the
    /// tables themselves do not fit on one line.
    Summary(Vec<String>),
    /// An optional key that is not set.
    Unset,
}

impl fmt::Display for Value {
    /// The value as TOML; `Redacted` and `Unset` are not TOML and are shown as words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Integer(n) => write!(f, "{n}"),
            Value::String(s) => write!(f, "{}", toml::Value::String(s.clone())),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", toml::Value::String(item.clone()))?;
                }
                f.write_str("]")
            }
            Value::Redacted => f.write_str("(redacted)"),
            Value::Summary(entries) => write!(f, "{}", entries.join(", ")),
            Value::Unset => f.write_str("(not set)"),
        }
    }
}

/// One key of the effective `[network]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub value: Value,
    pub origin: Origin,
}

fn duration(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn addr(addr: std::net::SocketAddr) -> Value {
    Value::String(addr.to_string())
}

fn list<T: AsRef<std::path::Path>>(items: &[T]) -> Value {
    Value::List(items.iter().map(|p| p.as_ref().display().to_string()).collect())
}

fn path(path: &std::path::Path) -> Value {
    Value::String(path.display().to_string())
}

fn count(n: usize) -> Value {
    Value::Integer(u64::try_from(n).unwrap_or(u64::MAX))
}

impl Config {
    /// Every key of `[network]` in SPEC §2.2 order with its effective value (listener
    /// addresses after clamping, the admin token redacted) and its origin.
    pub fn settings(&self) -> Vec<Setting> {
        let token = match &self.admin_token {
            Some(_) => Value::Redacted,
            None => Value::Unset,
        };
        let token_file = match &self.admin_token_file {
            Some(path) => Value::String(path.display().to_string()),
            None => Value::Unset,
        };
        let values = [
            ("enabled", Value::Bool(self.enabled)),
            ("proxy_url", addr(self.http_addr)),
            ("admin_url", addr(self.admin_addr)),
            ("enable_socks5", Value::Bool(self.enable_socks5)),
            ("socks_url", addr(self.socks_addr)),
            ("dns_url", self.dns_addr.map_or(Value::Unset, addr)),
            ("enable_socks5_udp", Value::Bool(self.enable_socks5_udp)),
            ("allow_upstream_proxy", Value::Bool(self.allow_upstream_proxy)),
            (
                "dangerously_allow_non_loopback_proxy",
                Value::Bool(self.dangerously_allow_non_loopback_proxy),
            ),
            (
                "dangerously_allow_non_loopback_admin",
                Value::Bool(self.dangerously_allow_non_loopback_admin),
            ),
            ("mode", Value::String(self.mode.as_str().to_owned())),
            ("allowed_domains", Value::List(self.allowed_domains().to_vec())),
            ("denied_domains", Value::List(self.denied_domains().to_vec())),
            ("allow_local_binding", Value::Bool(self.allow_local_binding)),
            ("allow_unix_sockets", list(&self.allow_unix_sockets)),
            ("connect_timeout", duration(self.connect_timeout)),
            ("dns_timeout", duration(self.dns_timeout)),
            ("header_read_timeout", duration(self.header_read_timeout)),
            ("idle_timeout", duration(self.idle_timeout)),
            ("response_timeout", duration(self.response_timeout)),
            ("decider_timeout", duration(self.decider_timeout)),
            ("drain_timeout", duration(self.drain_timeout)),
            ("max_connections", count(self.max_connections)),
            ("admin_max_connections", count(self.admin_max_connections)),
            ("blocked_log_size", count(self.blocked_log_size)),
            ("admin_token", token),
            ("admin_token_file", token_file),
            ("mitm", Value::Bool(self.mitm)),
            ("ca_dir", self.ca_dir.as_ref().map_or(Value::Unset, |dir| path(dir))),
            ("on_miss", Value::String(if self.on_miss_ask { "ask" } else { "deny" }.to_owned())),
            ("ask_timeout", duration(self.ask_timeout)),
            ("ask_max_pending", count(self.ask_max_pending)),
            (
                "rules",
                Value::Summary(
                    self.rules
                        .iter()
                        .map(|r| format!("{} ({} {:?})", r.name, r.host, r.action).to_lowercase())
                        .collect(),
                ),
            ),
            (
                "credentials",
                Value::Summary(
                    self.credentials.iter().map(|c| format!("{} ({})", c.name, c.env)).collect(),
                ),
            ),
        ];
        values
            .into_iter()
            .map(|(key, value)| Setting { key, value, origin: self.origin(key).clone() })
            .collect()
    }

    /// The effective config as a `[network]` TOML table with a comment per key naming its
    /// origin, e.g. `mode = "limited"  # from -c`. Unset optional keys and the redacted token
    /// are written as comments, so the text stays valid TOML. A comment per file comes first,
    /// naming the tables it contributed (and what selected the permission profile); warnings
    /// follow as comments.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for source in &self.tables {
            let tables: Vec<String> = source
                .tables
                .iter()
                .map(|used| {
                    let profile = self.profile.as_ref().filter(|p| {
                        used.table == crate::tables::dotted(&["permissions", &p.name, "network"])
                    });
                    match profile {
                        Some(p) => format!(
                            "[{}] line {} (profile from {})",
                            used.table, used.line, p.chosen_by
                        ),
                        None => format!("[{}] line {}", used.table, used.line),
                    }
                })
                .collect();
            out.push_str(&format!("# {}: {}\n", source.path.display(), tables.join(", ")));
        }
        out.push_str("[network]\n");
        for Setting { key, value, origin } in self.settings() {
            let line = match value {
                Value::Redacted | Value::Unset => format!("# {key} = {value}  # {origin}\n"),
                Value::Summary(entries) if entries.is_empty() => {
                    format!("# {key}: none  # {origin}\n")
                }
                Value::Summary(entries) => {
                    format!("# {key}: {}  # {origin}\n", entries.join(", "))
                }
                value => format!("{key} = {value}  # {origin}\n"),
            };
            out.push_str(&line);
        }
        for warning in &self.warnings {
            out.push_str(&format!("# warning: {warning}\n"));
        }
        out
    }
}
