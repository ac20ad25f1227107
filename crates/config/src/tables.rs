//! Which tables of a Codex `config.toml` proxyd reads, and in which order (SPEC §2.1).
//!
//! Codex configures its proxy in more than one place, and a policy written in a table proxyd
//! does not read would silently do nothing. So proxyd reads, in each file and in this order:
//!
//! 1. `[features.network_proxy]`, where older Codex versions keep the proxy's policy;
//! 2. `[permissions.NAME.network]` of the selected permission profile, `NAME` being `--profile`
//!    or else the last `default_permissions` of any source (a profile named in one file may be
//!    defined in another, so the choice is made over every source before any is applied);
//! 3. `[network]`, proxyd's own table, which therefore wins within a file.
//!
//! Across files the usual layering holds: every table of a later file is applied after every
//! table of an earlier one. Every other network-looking table, and every key of Codex's tables
//! proxyd cannot honour, is a warning naming its file and line; only proxyd's own `[network]`
//! refuses unknown keys, because in Codex's tables an unknown key may be a newer Codex key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use proxyd_policy::{ListKind, Pattern};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::config::Config;
use crate::error::{self, ConfigError, ErrorKind, Location};
use crate::keys;
use crate::sources::Src;

/// The permission profile a load selected, and what selected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub chosen_by: ProfileChoice,
}

/// What selected the permission profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileChoice {
    /// `--profile NAME`, which overrides every `default_permissions`.
    Flag,
    /// The last `default_permissions` of any source, at this 1-based line.
    DefaultPermissions { path: PathBuf, line: usize },
}

impl fmt::Display for ProfileChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileChoice::Flag => f.write_str("--profile"),
            ProfileChoice::DefaultPermissions { path, line } => {
                write!(f, "default_permissions at {}:{line}", path.display())
            }
        }
    }
}

/// The tables one file contributed, in the order they were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTables {
    pub path: PathBuf,
    pub tables: Vec<TableUse>,
}

/// One table read: its dotted name (`network`, `permissions.workspace.network`) and the line
/// where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableUse {
    pub table: String,
    pub line: usize,
}

/// Keys of Codex's network tables that mean what the `[network]` key of the same name means.
/// `allowed_domains`, `denied_domains` and `allow_unix_sockets` are the list spellings of older
/// Codex versions.
const SAME_KEYS: &[&str] = &[
    "enabled",
    "proxy_url",
    "socks_url",
    "enable_socks5",
    "enable_socks5_udp",
    "allow_upstream_proxy",
    "dangerously_allow_non_loopback_proxy",
    "mode",
    "allow_local_binding",
    "allowed_domains",
    "denied_domains",
    "allow_unix_sockets",
];

/// Keys of Codex's network tables with a meaning of their own here.
const MAPPED_KEYS: &[&str] = &["domains", "unix_sockets", "dangerously_allow_all_unix_sockets"];

/// Codex's built-in permission profiles (`:workspace`): they have no table to read.
fn built_in(name: &str) -> bool {
    name.starts_with(':')
}

/// One parsed config file. A file with syntax errors keeps them and has no table.
pub(crate) struct Doc<'a> {
    path: &'a Path,
    text: &'a str,
    root: Option<DeTable<'a>>,
    syntax: Vec<ConfigError>,
}

impl<'a> Doc<'a> {
    pub(crate) fn parse(path: &'a Path, text: &'a str) -> Doc<'a> {
        let src = Src::File { path, text, table: None };
        let (root, syntax) = DeTable::parse_recoverable(text);
        if syntax.is_empty() {
            return Doc { path, text, root: Some(root.into_inner()), syntax: Vec::new() };
        }
        // What was recovered from a broken document is a guess: report the syntax errors and
        // nothing else about this file.
        let syntax = syntax
            .into_iter()
            .map(|err| {
                let location = src.location(err.span().unwrap_or(0..0));
                let message = err.message().trim_end().to_owned();
                ConfigError::new(location, ErrorKind::Syntax(message))
            })
            .collect();
        Doc { path, text, root: None, syntax }
    }

    fn line(&self, span: std::ops::Range<usize>) -> usize {
        Src::line(self.text, span.start)
    }

    /// `PATH:LINE`, to start a warning with.
    fn at(&self, span: std::ops::Range<usize>) -> String {
        format!("{}:{}", self.path.display(), self.line(span))
    }
}

/// The profile chosen over every source, and which profiles have a network table somewhere.
pub(crate) struct Selection {
    pub(crate) profile: Option<Profile>,
    networked: BTreeSet<String>,
}

/// Chooses the permission profile: `flag`, or else the last `default_permissions` that is a
/// string (a wrong type is reported when its file is applied). A choice that no network table
/// backs is a warning, except `--profile` naming a profile no source defines at all, which is
/// an error: it is a typo on the command line, not an old config.
pub(crate) fn select(
    docs: &[&Doc<'_>],
    flag: Option<&str>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Selection {
    let mut last = None;
    let mut defined = BTreeSet::new();
    let mut networked = BTreeSet::new();
    for doc in docs {
        let Some(root) = &doc.root else { continue };
        if let Some((key, value)) = root.get_key_value("default_permissions")
            && let Some(name) = value.get_ref().as_str()
        {
            let chosen_by = ProfileChoice::DefaultPermissions {
                path: doc.path.to_owned(),
                line: doc.line(key.span()),
            };
            last = Some(Profile { name: name.to_owned(), chosen_by });
        }
        for (name, profile) in
            root.get("permissions").and_then(|p| p.get_ref().as_table()).into_iter().flatten()
        {
            defined.insert(name.get_ref().to_string());
            if profile.get_ref().as_table().is_some_and(|t| t.contains_key("network")) {
                networked.insert(name.get_ref().to_string());
            }
        }
    }
    let profile = match flag {
        Some(name) => Some(Profile { name: name.to_owned(), chosen_by: ProfileChoice::Flag }),
        None => last,
    };
    if let Some(Profile { name, chosen_by }) = &profile
        && !networked.contains(name)
    {
        let chosen = match chosen_by {
            ProfileChoice::Flag => format!("--profile {name}"),
            ProfileChoice::DefaultPermissions { path, line } => {
                format!("{}:{line}: default_permissions = {}", path.display(), quoted(name))
            }
        };
        let table = format!("[{}]", dotted(&["permissions", name, "network"]));
        if built_in(name) {
            warnings.push(format!(
                "{chosen}: {name} is a Codex built-in profile, which has no network table for \
                 proxyd to read: only [features.network_proxy] and [network] apply; list the \
                 domains in [network], or in a profile of your own that you select instead"
            ));
        } else if !defined.contains(name) && *chosen_by == ProfileChoice::Flag {
            let known = match defined.iter().filter(|n| networked.contains(*n)).count() {
                0 => "no source defines a profile with a network table".to_owned(),
                _ => format!(
                    "profiles with a network table: {}",
                    networked.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                ),
            };
            let message = format!("--profile {name}: no source defines {table} ({known})");
            errors.push(ConfigError::new(Location::Flag("--profile"), ErrorKind::Profile(message)));
        } else {
            let what = match defined.contains(name) {
                true => "has no network table",
                false => "is not defined",
            };
            warnings.push(format!(
                "{chosen}: profile {} {what}, so no profile policy applies (only \
                 [features.network_proxy] and [network]); add {table} or select a profile that \
                 has one",
                quoted(name)
            ));
        }
    }
    Selection { profile, networked }
}

/// What one file's tables add to a load, kept apart so they can be sorted by line.
struct Found {
    errors: Vec<ConfigError>,
    /// Warnings with the line they are about.
    warnings: Vec<(usize, String)>,
    tables: Vec<TableUse>,
}

/// Applies the tables of one document in order (see the module documentation), adding its
/// errors (sorted by line) to `errors` and its warnings to the config.
pub(crate) fn apply(
    config: &mut Config,
    doc: &Doc<'_>,
    selection: &Selection,
    errors: &mut Vec<ConfigError>,
) {
    let Some(root) = &doc.root else {
        errors.extend(doc.syntax.iter().cloned());
        return;
    };
    let mut found = Found { errors: Vec::new(), warnings: Vec::new(), tables: Vec::new() };
    let selected = selection.profile.as_ref().map(|p| p.name.as_str());

    if let Some(value) = root.get("default_permissions")
        && value.get_ref().as_str().is_none()
    {
        found.errors.push(wrong_type(doc, "default_permissions", value, "a profile name string"));
    }

    // 1. [features.network_proxy]: a table, or the feature's on/off switch, which proxyd,
    // being the proxy, has no use for.
    if let Some(features) = root.get("features").and_then(|f| f.get_ref().as_table())
        && let Some((key, value)) = features.get_key_value("network_proxy")
    {
        match value.get_ref() {
            DeValue::Table(table) => {
                codex_table(config, doc, "features.network_proxy", key, table, &mut found);
            }
            DeValue::Boolean(_) => {}
            _ => found.errors.push(wrong_type(
                doc,
                "features.network_proxy",
                value,
                "a table or a boolean",
            )),
        }
    }

    // 2. The profiles: the selected one's network table is read, the others are warned about.
    if let Some(permissions) = root.get("permissions").and_then(|p| p.get_ref().as_table()) {
        for (name, profile) in permissions.iter() {
            let Some(profile) = profile.get_ref().as_table() else { continue };
            profile_tables(config, doc, selection, name, profile, &mut found);
        }
    }

    // 3. proxyd's own table.
    if let Some((key, network)) = root.get_key_value("network") {
        match network.get_ref() {
            DeValue::Table(table) => {
                let src = Src::File { path: doc.path, text: doc.text, table: None };
                for (key, value) in table.iter() {
                    keys::apply(config, key, value, &src, &mut found.errors);
                }
                found.tables.push(TableUse { table: "network".into(), line: doc.line(key.span()) });
            }
            other => {
                let kind = ErrorKind::WrongType {
                    key: "network".into(),
                    expected: "a table",
                    found: other.type_str(),
                };
                found.errors.push(ConfigError::new(
                    Src::File { path: doc.path, text: doc.text, table: None }.location(key.span()),
                    kind,
                ));
            }
        }
    }

    // Network-looking tables proxyd does not read.
    if let Some((key, _)) = root.get_key_value("network_proxy") {
        found.warnings.push((
            doc.line(key.span()),
            format!(
                "{}: [network_proxy] is an older Codex table that proxyd does not read, so its \
                 keys are ignored: move them to [network] (or to a [permissions.NAME.network] \
                 profile, selected with default_permissions)",
                doc.at(key.span())
            ),
        ));
    }
    if let Some(profiles) = root.get("profiles").and_then(|p| p.get_ref().as_table()) {
        for (name, profile) in profiles.iter() {
            let Some(profile) = profile.get_ref().as_table() else { continue };
            config_profile(doc, name.get_ref(), profile, selected, &mut found);
        }
    }

    error::sort_by_line(&mut found.errors);
    errors.extend(found.errors);
    found.warnings.sort_by_key(|(line, _)| *line);
    config.warnings.extend(found.warnings.into_iter().map(|(_, warning)| warning));
    if !found.tables.is_empty() {
        config.tables.push(SourceTables { path: doc.path.to_owned(), tables: found.tables });
    }
}

/// `[permissions.NAME]`: its network table is applied when NAME is selected, and warned about
/// otherwise.
fn profile_tables(
    config: &mut Config,
    doc: &Doc<'_>,
    selection: &Selection,
    name: &Spanned<DeString<'_>>,
    profile: &DeTable<'_>,
    found: &mut Found,
) {
    let span = name.span();
    let name = name.get_ref().as_ref();
    let selected = selection.profile.as_ref().filter(|p| p.name == name);
    let table = dotted(&["permissions", name, "network"]);
    match profile.get_key_value("network") {
        Some((key, value)) if selected.is_some() => match value.get_ref() {
            DeValue::Table(network) => codex_table(config, doc, &table, key, network, found),
            _ => found.errors.push(wrong_type(doc, &table, value, "a table")),
        },
        Some((key, _)) => {
            let why = match &selection.profile {
                Some(Profile { name: chosen, chosen_by }) => {
                    format!("the selected profile is {} (from {chosen_by})", quoted(chosen))
                }
                None => "no profile is selected".to_owned(),
            };
            found.warnings.push((
                doc.line(key.span()),
                format!(
                    "{}: [{table}] is not applied: {why}; to use it, set default_permissions = \
                     {} or pass --profile {name}",
                    doc.at(key.span()),
                    quoted(name)
                ),
            ));
        }
        // `[permissions.network]` holding the proxy keys themselves: an older form.
        None if name == "network" && profile.iter().any(|(k, _)| codex_key(k.get_ref())) => {
            found.warnings.push((
                doc.line(span.clone()),
                format!(
                    "{}: [permissions.network] is an older Codex form that proxyd does not read, \
                     so its keys are ignored: move them to [permissions.NAME.network] and select \
                     NAME with default_permissions, or to [network]",
                    doc.at(span.clone())
                ),
            ));
        }
        None => {}
    }
    // proxyd applies one profile's table, not the profiles it extends: say so when the parent
    // has a network table whose keys are therefore lost.
    if selected.is_some()
        && let Some((key, parent)) = profile.get_key_value("extends")
        && let Some(parent) = parent.get_ref().as_str()
        && !built_in(parent)
        && selection.networked.contains(parent)
    {
        found.warnings.push((
            doc.line(key.span()),
            format!(
                "{}: permissions.{}.extends = {}: proxyd does not follow extends, so \
                 [{}] is not applied; copy the keys you need into [{table}]",
                doc.at(key.span()),
                dotted(&[name]),
                quoted(parent),
                dotted(&["permissions", parent, "network"])
            ),
        ));
    }
}

/// `[profiles.NAME]` is a Codex config profile (chosen with Codex's own `--profile`), which
/// proxyd does not read: its network-looking keys are warned about, everything else in it
/// (models, approval policies) is none of proxyd's business.
fn config_profile(
    doc: &Doc<'_>,
    name: &str,
    profile: &DeTable<'_>,
    selected: Option<&str>,
    found: &mut Found,
) {
    let mut spotted = Vec::new();
    for (key, value) in profile.iter() {
        match key.get_ref().as_ref() {
            "default_permissions" | "permissions" | "network" | "network_proxy" => {
                spotted.push((key, key.get_ref().to_string()));
            }
            "features" => {
                if let Some((key, _)) = value
                    .get_ref()
                    .as_table()
                    .and_then(|features| features.get_key_value("network_proxy"))
                {
                    spotted.push((key, "features.network_proxy".to_owned()));
                }
            }
            _ => {}
        }
    }
    for (key, what) in spotted {
        let hint = match selected {
            Some(_) => "",
            None => " or pass proxyd --profile NAME",
        };
        found.warnings.push((
            doc.line(key.span()),
            format!(
                "{}: {}.{what} is ignored: proxyd does not read Codex config profiles \
                 ([profiles.{}]); set it at the top level of the file{hint}",
                doc.at(key.span()),
                dotted(&["profiles", name]),
                dotted(&[name])
            ),
        ));
    }
}

/// Whether `key` is a key of Codex's network tables.
fn codex_key(key: &str) -> bool {
    SAME_KEYS.contains(&key) || MAPPED_KEYS.contains(&key)
}

/// Applies one of Codex's network tables, named `table` (dotted), whose name is `name`.
fn codex_table(
    config: &mut Config,
    doc: &Doc<'_>,
    table: &str,
    name: &Spanned<DeString<'_>>,
    entries: &DeTable<'_>,
    found: &mut Found,
) {
    let src = Src::File { path: doc.path, text: doc.text, table: Some(table) };
    let first = found.errors.len();
    let mut maps = Vec::new();
    for (key, value) in entries.iter() {
        match key.get_ref().as_ref() {
            k if SAME_KEYS.contains(&k) => keys::apply(config, key, value, &src, &mut found.errors),
            "domains" | "unix_sockets" => maps.push((key, value)),
            "dangerously_allow_all_unix_sockets" => match value.get_ref().as_bool() {
                Some(false) => {}
                Some(true) => found.errors.push(ConfigError::new(
                    src.location(value.span()),
                    ErrorKind::InTable {
                        table: table.to_owned(),
                        key: "dangerously_allow_all_unix_sockets".into(),
                        reason: "proxyd does not open every unix socket: list the ones to allow \
                                 in unix_sockets (\"/path/to.sock\" = \"allow\")"
                            .into(),
                    },
                )),
                None => found.errors.push(wrong_type(
                    doc,
                    &format!("{table}.dangerously_allow_all_unix_sockets"),
                    value,
                    "a boolean",
                )),
            },
            _ => {
                let path = format!("{table}.{}", dotted(&[key.get_ref()]));
                unsupported(doc, &path, key, value, false, found);
            }
        }
    }
    // The maps after the lists of the same table, so `domains` adds to `allowed_domains`.
    for (key, value) in maps {
        match key.get_ref().as_ref() {
            "domains" => domains(config, &src, table, key, value, &mut found.errors),
            _ => unix_sockets(config, &src, table, key, value, &mut found.errors),
        }
    }
    for error in &mut found.errors[first..] {
        error.kind = in_table(std::mem::replace(&mut error.kind, ErrorKind::NotFound), table);
    }
    found.tables.push(TableUse { table: table.to_owned(), line: doc.line(name.span()) });
}

/// A warning for each value of a key proxyd cannot honour, down to the leaves of sub-tables
/// (`mitm.hooks`), so each names its own line. `nested`: inside such a sub-table, where a
/// name proxyd knows (`enabled`) means something else.
fn unsupported(
    doc: &Doc<'_>,
    path: &str,
    key: &Spanned<DeString<'_>>,
    value: &Spanned<DeValue<'_>>,
    nested: bool,
    found: &mut Found,
) {
    let name = key.get_ref().as_ref();
    let near = keys::nearest(name, SAME_KEYS.iter().chain(MAPPED_KEYS).copied());
    if let (false, Some(near)) = (nested, near) {
        found.warnings.push((
            doc.line(key.span()),
            format!("{}: {path} is ignored: did you mean {near}?", doc.at(key.span())),
        ));
        return;
    }
    if let DeValue::Table(table) = value.get_ref() {
        for (key, value) in table.iter() {
            let path = format!("{path}.{}", dotted(&[key.get_ref()]));
            unsupported(doc, &path, key, value, true, found);
        }
        return;
    }
    let what = if !nested && keys::KEYS.iter().any(|(known, _)| *known == name) {
        format!("proxyd reads {name} only from its own [network] table: move it there")
    } else {
        "proxyd does not support it: remove it".to_owned()
    };
    found
        .warnings
        .push((doc.line(key.span()), format!("{}: {path} is ignored: {what}", doc.at(key.span()))));
}

/// Codex's `domains` map (pattern = "allow" or "deny") as `allowed_domains` and
/// `denied_domains`. Each entry upserts its pattern, as in Codex, where config layers merge
/// these maps entry by entry: a later `"allow"` moves a pattern out of the denied list and a
/// later `"deny"` out of the allowed one, and entries of earlier sources stay.
fn domains(
    config: &mut Config,
    src: &Src<'_>,
    table: &str,
    key: &Spanned<DeString<'_>>,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(map) = permission_map(src, table, "domains", value, &["allow", "deny"], errors) else {
        return;
    };
    let mut entries = Vec::new();
    let mut bad = false;
    for (pattern, allow) in map {
        let list = match allow {
            "allow" => ListKind::Allowed,
            _ => ListKind::Denied,
        };
        match Pattern::parse(pattern.get_ref(), list) {
            Ok(_) => entries.push((pattern.get_ref().to_string(), list)),
            Err(err) => {
                bad = true;
                errors.push(invalid(src, table, "domains", pattern.span(), err.to_string()));
            }
        }
    }
    if bad {
        return;
    }
    let (mut allowed, mut denied) = (false, false);
    for (pattern, list) in entries {
        let (add, remove) = match list {
            ListKind::Allowed => (&mut config.allowed_domains, &mut config.denied_domains),
            ListKind::Denied => (&mut config.denied_domains, &mut config.allowed_domains),
        };
        let removed = upsert(add, remove, &pattern, |a, b| a.eq_ignore_ascii_case(b));
        let (added, taken) = match list {
            ListKind::Allowed => (&mut allowed, &mut denied),
            ListKind::Denied => (&mut denied, &mut allowed),
        };
        *added = true;
        *taken |= removed;
    }
    let origin = src.origin(key.span());
    if allowed {
        config.set_origin("allowed_domains", origin.clone());
    }
    if denied {
        config.set_origin("denied_domains", origin);
    }
}

/// Codex's `unix_sockets` map (path = "allow", or "none"/"deny"): "allow" entries join
/// `allow_unix_sockets`; the others are the default and only take back an earlier "allow".
fn unix_sockets(
    config: &mut Config,
    src: &Src<'_>,
    table: &str,
    key: &Spanned<DeString<'_>>,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) {
    let allowed = ["allow", "none", "deny"];
    let Some(map) = permission_map(src, table, "unix_sockets", value, &allowed, errors) else {
        return;
    };
    let total = map.len();
    let mut entries = Vec::new();
    for (path, permission) in map {
        match Path::new(path.get_ref().as_ref()).is_absolute() {
            true => entries.push((PathBuf::from(path.get_ref().as_ref()), permission == "allow")),
            false => errors.push(invalid(
                src,
                table,
                "unix_sockets",
                path.span(),
                format!("{:?} is not an absolute path", path.get_ref()),
            )),
        }
    }
    // Like a list with a bad entry, a map with a bad path changes nothing.
    if entries.len() < total {
        return;
    }
    let mut changed = false;
    for (path, allow) in entries {
        let sockets = &mut config.allow_unix_sockets;
        match allow {
            true => {
                if !sockets.contains(&path) {
                    sockets.push(path);
                }
                changed = true;
            }
            false => {
                let before = sockets.len();
                sockets.retain(|p| *p != path);
                changed |= sockets.len() != before;
            }
        }
    }
    if changed {
        config.set_origin("allow_unix_sockets", src.origin(key.span()));
    }
}

/// The entries of a `KEY = "PERMISSION"` map whose permissions are among `permissions`; `None`
/// (with the errors added) if it is not a table or any permission is not one of them.
fn permission_map<'v, 'i>(
    src: &Src<'_>,
    table: &str,
    key: &str,
    value: &'v Spanned<DeValue<'i>>,
    permissions: &[&'static str],
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<(&'v Spanned<DeString<'i>>, &'static str)>> {
    let expected = match key {
        "domains" => "a table of \"pattern\" = \"allow\" or \"deny\"",
        _ => "a table of \"/path\" = \"allow\" or \"none\"",
    };
    let Some(map) = value.get_ref().as_table() else {
        let kind = ErrorKind::WrongType {
            key: format!("{table}.{key}"),
            expected,
            found: value.get_ref().type_str(),
        };
        errors.push(ConfigError::new(src.location(value.span()), kind));
        return None;
    };
    let mut entries = Vec::new();
    let mut bad = false;
    for (entry, permission) in map.iter() {
        match permission.get_ref().as_str().and_then(|p| permissions.iter().find(|k| **k == p)) {
            Some(permission) => entries.push((entry, *permission)),
            None => {
                bad = true;
                let found = match permission.get_ref().as_str() {
                    Some(text) => format!("{text:?}"),
                    None => permission.get_ref().type_str().to_owned(),
                };
                let reason = format!(
                    "{:?}: expected {}, found {found}",
                    entry.get_ref(),
                    permissions.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(" or ")
                );
                errors.push(invalid(src, table, key, permission.span(), reason));
            }
        }
    }
    (!bad).then_some(entries)
}

/// Adds `item` to `add` unless it is there, and takes it out of `remove`; whether `remove`
/// changed.
fn upsert(
    add: &mut Vec<String>,
    remove: &mut Vec<String>,
    item: &str,
    same: impl Fn(&str, &str) -> bool,
) -> bool {
    let before = remove.len();
    remove.retain(|p| !same(p, item));
    if !add.iter().any(|p| same(p, item)) {
        add.push(item.to_owned());
    }
    remove.len() != before
}

fn invalid(
    src: &Src<'_>,
    table: &str,
    key: &str,
    span: std::ops::Range<usize>,
    reason: String,
) -> ConfigError {
    let kind = ErrorKind::InTable { table: table.to_owned(), key: key.to_owned(), reason };
    ConfigError::new(src.location(span), kind)
}

fn wrong_type(
    doc: &Doc<'_>,
    key: &str,
    value: &Spanned<DeValue<'_>>,
    expected: &'static str,
) -> ConfigError {
    let kind =
        ErrorKind::WrongType { key: key.to_owned(), expected, found: value.get_ref().type_str() };
    let src = Src::File { path: doc.path, text: doc.text, table: None };
    ConfigError::new(src.location(value.span()), kind)
}

/// An error `keys.rs` wrote about a `[network]` key, renamed after the Codex table the key was
/// read from, so it names what the user wrote.
fn in_table(kind: ErrorKind, table: &str) -> ErrorKind {
    match kind {
        ErrorKind::Invalid { key, reason } => {
            ErrorKind::InTable { table: table.to_owned(), key: key.to_owned(), reason }
        }
        ErrorKind::WrongType { key, expected, found } => {
            let key = match key.strip_prefix("network.") {
                Some(key) => format!("{table}.{key}"),
                None => key,
            };
            ErrorKind::WrongType { key, expected, found }
        }
        other => other,
    }
}

/// A TOML string literal.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Keys joined with dots, each quoted unless it is a bare key.
pub(crate) fn dotted(keys: &[&str]) -> String {
    let bare = |key: &str| {
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    keys.iter()
        .map(|key| match bare(key) {
            true => (*key).to_owned(),
            false => quoted(key),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_quote_what_is_not_a_bare_key() {
        assert_eq!(
            dotted(&["permissions", "workspace", "network"]),
            "permissions.workspace.network"
        );
        assert_eq!(
            dotted(&["permissions", "my.profile", "network"]),
            "permissions.\"my.profile\".network"
        );
        assert_eq!(dotted(&["permissions", ":workspace"]), "permissions.\":workspace\"");
    }

    #[test]
    fn upsert_moves_an_entry_between_lists() {
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let mut allowed = vec!["a.com".to_owned()];
        let mut denied = vec!["B.com".to_owned()];
        assert!(upsert(&mut allowed, &mut denied, "b.com", same));
        assert_eq!(
            (allowed.as_slice(), denied.as_slice()),
            (&["a.com".to_owned(), "b.com".to_owned()][..], &[][..])
        );
        assert!(!upsert(&mut allowed, &mut denied, "A.COM", same));
        assert_eq!(allowed.len(), 2);
    }
}
