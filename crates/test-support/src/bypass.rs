//! The bypass table (`testdata/bypass.toml`): the hostile spellings of a destination and what
//! proxyd must make of each, read by the policy unit tests, the listener integration tests and
//! `cargo xtask e2e` alike, so no layer keeps a copy of its own.
//!
//! Only std, serde and toml here: `xtask` compiles this file as a module of its own (it may not
//! depend on this crate), so the table has one loader.

use std::net::IpAddr;

use serde::Deserialize;

/// The table, as committed.
pub const SOURCE: &str = include_str!("../../../testdata/bypass.toml");

/// The whole table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Request paths and their normal form or refusal.
    pub paths: Vec<PathRow>,
    /// Placeholder ports for the layers that bind no real listeners.
    pub ports: Placeholders,
    #[serde(rename = "group")]
    pub groups: Vec<Group>,
}

/// A request path as sent, and what `normalize_path` makes of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRow {
    pub raw: String,
    /// The normal form of an accepted path.
    pub normal: Option<String>,
    /// The `PathError` (its `Debug` form) of a refused one.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placeholders {
    pub canary: u16,
    pub http: u16,
    pub socks: u16,
    pub admin: u16,
}

/// Rows that share one policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub about: String,
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    #[serde(default)]
    pub denied_domains: Vec<String>,
    #[serde(default)]
    pub allow_local_binding: bool,
    pub rows: Vec<Row>,
}

/// One hostile spelling, in exactly one of its forms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub host: Option<String>,
    pub authority: Option<String>,
    pub head: Option<String>,
    pub socks: Option<String>,
    #[serde(default)]
    pub port: Port,
    pub expect: String,
    /// The parser's `TargetError` (its `Debug` form) for a malformed spelling.
    pub error: Option<String>,
    /// The canonical host of an accepted spelling.
    pub canonical: Option<String>,
}

/// Which port a row aims at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Port {
    #[default]
    #[serde(skip)]
    Canary,
    Named(Named),
    Number(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Named {
    Canary,
    Http,
    Socks,
    Admin,
}

/// What proxyd must answer (SPEC §6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// `400` without `x-proxy-error`; SOCKS5 reply 0x01 or 0x08.
    Malformed,
    /// `403` with the reason's `x-proxy-error` and the reason in the JSON body; SOCKS5 0x02.
    Blocked(String),
    /// A control: allowed, and it must reach the canary.
    Reaches,
}

/// The entry points a spelling can arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Absolute,
    Connect,
    SocksDomain,
    SocksIp,
}

pub const ENTRIES: [Entry; 4] =
    [Entry::Absolute, Entry::Connect, Entry::SocksDomain, Entry::SocksIp];

impl Entry {
    pub fn name(self) -> &'static str {
        match self {
            Entry::Absolute => "absolute-form",
            Entry::Connect => "CONNECT",
            Entry::SocksDomain => "socks5-domain",
            Entry::SocksIp => "socks5-ip",
        }
    }

    pub fn is_http(self) -> bool {
        matches!(self, Entry::Absolute | Entry::Connect)
    }
}

/// The real ports of a run, and the name `/etc/hosts` maps to loopback if there is one.
#[derive(Debug, Clone)]
pub struct Ports {
    pub canary: u16,
    pub http: u16,
    pub socks: u16,
    pub admin: u16,
    pub hosts_name: Option<String>,
}

impl From<Placeholders> for Ports {
    fn from(p: Placeholders) -> Ports {
        Ports { canary: p.canary, http: p.http, socks: p.socks, admin: p.admin, hosts_name: None }
    }
}

/// What is sent for one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// A whole HTTP request head.
    Http(Vec<u8>),
    /// A SOCKS5 `CONNECT` to a domain name.
    SocksDomain(Vec<u8>, u16),
    /// A SOCKS5 `CONNECT` to an IP address.
    SocksIp(IpAddr, u16),
}

/// One row on one entry point, with the real ports filled in.
#[derive(Debug, Clone)]
pub struct Case {
    pub entry: Entry,
    pub wire: Wire,
    /// `HOST:PORT` as the HTTP entry points carry it (`host` and `authority` rows); `None` for
    /// whole heads and SOCKS5.
    pub authority: Option<String>,
    /// What proxyd answers on this entry point.
    pub expect: Expect,
    /// What the target parser and the policy make of the spelling itself; it differs from
    /// `expect` only for non-ASCII spellings on HTTP, which the wire refuses first.
    pub meaning: Expect,
    pub error: Option<String>,
    pub canonical: Option<String>,
    /// How a failure names the case.
    pub label: String,
}

/// The committed table; a malformed table is a bug in the test data, so this panics saying
/// where.
pub fn table() -> Table {
    let table: Table = match toml::from_str(SOURCE) {
        Ok(table) => table,
        Err(error) => panic!("testdata/bypass.toml: {error}"),
    };
    for group in &table.groups {
        for row in &group.rows {
            let forms = [&row.host, &row.authority, &row.head, &row.socks];
            let count = forms.iter().filter(|form| form.is_some()).count();
            assert_eq!(
                count, 1,
                "testdata/bypass.toml: group {}: {row:?} has {count} forms",
                group.name
            );
        }
    }
    table
}

impl Row {
    /// The row's port in this run.
    pub fn port(&self, ports: &Ports) -> u16 {
        match self.port {
            Port::Canary | Port::Named(Named::Canary) => ports.canary,
            Port::Named(Named::Http) => ports.http,
            Port::Named(Named::Socks) => ports.socks,
            Port::Named(Named::Admin) => ports.admin,
            Port::Number(port) => port,
        }
    }

    /// The expected outcome on any entry point that carries the spelling as written.
    pub fn expect(&self) -> Expect {
        match self.expect.as_str() {
            "malformed" => Expect::Malformed,
            "reaches" => Expect::Reaches,
            reason => Expect::Blocked(reason.to_owned()),
        }
    }

    /// The row on every entry point it applies to; empty when it needs a hosts name and this
    /// run has none.
    pub fn cases(&self, ports: &Ports) -> Vec<Case> {
        let port = self.port(ports);
        let fill = |text: &str| -> Option<String> {
            let mut text = text.replace("{local}", &format!("localhost:{port}"));
            text = text.replace("{port}", &port.to_string());
            if text.contains("{hosts_name}") || text.contains("{HOSTS_NAME}") {
                let name = ports.hosts_name.as_deref()?;
                text = text.replace("{hosts_name}", name);
                text = text.replace("{HOSTS_NAME}", &name.to_ascii_uppercase());
            }
            Some(text)
        };
        let case = |entry, wire, authority: Option<String>, label: String, ascii: bool| Case {
            entry,
            wire,
            authority,
            // Request targets are ASCII on the HTTP wire.
            expect: if entry.is_http() && !ascii { Expect::Malformed } else { self.expect() },
            meaning: self.expect(),
            error: self.error.clone(),
            canonical: self.canonical.clone(),
            label,
        };
        let mut cases = Vec::new();
        let http = |cases: &mut Vec<Case>, authority: &str| {
            let ascii = authority.is_ascii();
            let get = format!(
                "GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
            );
            let connect = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
            let label = format!("{authority:?}");
            let a = Some(authority.to_owned());
            cases.push(case(
                Entry::Absolute,
                Wire::Http(get.into()),
                a.clone(),
                label.clone(),
                ascii,
            ));
            cases.push(case(Entry::Connect, Wire::Http(connect.into()), a, label, ascii));
        };
        let socks = |cases: &mut Vec<Case>, name: &str| {
            let label = format!("{name:?} port {port}");
            let wire = Wire::SocksDomain(name.as_bytes().to_vec(), port);
            cases.push(case(Entry::SocksDomain, wire, None, label.clone(), true));
            if let Ok(ip) = name.parse::<IpAddr>() {
                cases.push(case(Entry::SocksIp, Wire::SocksIp(ip, port), None, label, true));
            }
        };
        if let Some(host) = self.host.as_deref().and_then(fill) {
            http(&mut cases, &format!("{host}:{port}"));
            let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&host);
            socks(&mut cases, bare);
        }
        if let Some(authority) = self.authority.as_deref().and_then(fill) {
            http(&mut cases, &authority);
        }
        if let Some(name) = self.socks.as_deref().and_then(fill) {
            socks(&mut cases, &name);
        }
        if let Some(head) = self.head.as_deref().and_then(fill) {
            let entry = if head.starts_with("CONNECT ") { Entry::Connect } else { Entry::Absolute };
            let label = format!("{:?}", head.trim_end());
            cases.push(case(entry, Wire::Http(head.into_bytes()), None, label, true));
        }
        cases
    }
}

impl Group {
    /// Every row of the group on every entry point.
    pub fn cases(&self, ports: &Ports) -> Vec<Case> {
        self.rows.iter().flat_map(|row| row.cases(ports)).collect()
    }
}
