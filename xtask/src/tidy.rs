//! Repository rules from STYLE.md that a machine can check, run by plain `cargo test` (as in
//! rust-analyzer's `tidy.rs`) and by `cargo xtask tidy`.
//!
//! The rules read `cargo metadata` and the members' manifests; [`check`] is a pure function of
//! both, so the rules are unit-tested against small hand-made graphs as well as the real one.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cargo_metadata;

const POLICY: &str = "proxyd-policy";
const NET: &str = "proxyd-net";
const LIFECYCLE: &str = "proxyd-lifecycle";
const CLI: &str = "proxyd";
const TEST_SUPPORT: &str = "proxyd-test-support";
const LISTENERS: &[&str] = &["proxyd-http-proxy", "proxyd-socks5", "proxyd-admin", "proxyd-dns"];

/// Crates that must not reach `proxyd-policy` through normal dependencies, however indirectly:
/// policy is pure and sync (no runtime, sockets, protocol stacks or serde).
const POLICY_FORBIDDEN: &[&str] = &[
    "tokio",
    "tokio-rustls",
    "mio",
    "socket2",
    "hyper",
    "hyper-util",
    "rustls",
    "serde",
    "serde_core",
    "serde_derive",
    "fast-socks5",
];

/// Which workspace crates a workspace crate may have as normal dependencies.
#[derive(Clone, Copy)]
enum May {
    DependOn(&'static [&'static str]),
    DependOnAny,
}

/// The dependency direction of STYLE.md as one table: `policy` ← `config`; `policy` ← `net` ←
/// {`http-proxy`, `socks5`}; `policy` ← `admin`; `lifecycle` ← {`net`, the listeners};
/// everything ← `cli`. The admin API never reaches `net` (it cannot dial). Dev-dependencies between
/// workspace crates are free (except on `cli`); a subset of a row is always fine.
const LAYERS: &[(&str, May)] = &[
    (POLICY, May::DependOn(&[])),
    (LIFECYCLE, May::DependOn(&[])),
    ("proxyd-config", May::DependOn(&[POLICY])),
    (NET, May::DependOn(&[POLICY, LIFECYCLE])),
    ("proxyd-http-proxy", May::DependOn(&[POLICY, NET, LIFECYCLE])),
    ("proxyd-socks5", May::DependOn(&[POLICY, NET, LIFECYCLE])),
    ("proxyd-admin", May::DependOn(&[POLICY, LIFECYCLE])),
    ("proxyd-dns", May::DependOn(&[POLICY, NET, LIFECYCLE])),
    (TEST_SUPPORT, May::DependOn(&[POLICY])),
    (CLI, May::DependOnAny),
    ("xtask", May::DependOn(&[])),
    ("proxyd-bench", May::DependOn(&[])),
];

/// One broken rule, naming the package, the dependency (if any) and the rule.
#[derive(Debug)]
pub(crate) struct Violation {
    package: String,
    dependency: Option<String>,
    rule: &'static str,
    why: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dependency {
            Some(dep) => write!(f, "{} -> {dep}: [{}] {}", self.package, self.rule, self.why),
            None => write!(f, "{}: [{}] {}", self.package, self.rule, self.why),
        }
    }
}

/// The outcome of [`check`]: what was looked at, and what is wrong.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) checked: Vec<String>,
    pub(crate) violations: Vec<Violation>,
}

/// `cargo xtask tidy`: the same checks as the `tidy` test, printed.
pub(crate) fn run() -> Result<()> {
    let report = check_workspace()?;
    for line in &report.checked {
        println!("tidy: checked {line}");
    }
    for violation in &report.violations {
        println!("tidy: FAIL {violation}");
    }
    if !report.violations.is_empty() {
        bail!("{} tidy violation(s)", report.violations.len());
    }
    println!("tidy: ok");
    Ok(())
}

/// Runs `cargo metadata`, reads every member's manifest and checks them.
pub(crate) fn check_workspace() -> Result<Report> {
    let metadata = cargo_metadata()?;
    let graph = Graph::parse(&metadata)?;
    let mut manifests = BTreeMap::new();
    for member in &graph.members {
        let path = &graph.packages[member].manifest_path;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", Path::new(path).display()))?;
        manifests.insert(graph.packages[member].name.clone(), text);
    }
    check(&metadata, &manifests)
}

/// All rules, over `cargo metadata --format-version 1` output and the members' `Cargo.toml`
/// texts keyed by package name. Errors only on metadata it cannot understand.
pub(crate) fn check(metadata: &Value, manifests: &BTreeMap<String, String>) -> Result<Report> {
    let graph = Graph::parse(metadata)?;
    let mut report = Report { checked: Vec::new(), violations: Vec::new() };
    check_policy_purity(&graph, &mut report);
    check_layering(&graph, &mut report);
    check_workspace_lints(&graph, manifests, &mut report);
    check_default_members(metadata, &graph, &mut report)?;
    Ok(report)
}

/// Every member is a default member, so plain `cargo test` at the root runs every crate's
/// tests, this tidy test among them (a `default-members` list that leaves one out would
/// silently skip it).
fn check_default_members(metadata: &Value, graph: &Graph, report: &mut Report) -> Result<()> {
    report.checked.push("every member is a default member (plain `cargo test` runs all)".into());
    let defaults = array(&metadata["workspace_default_members"], "workspace_default_members")?;
    for member in &graph.members {
        if !defaults.iter().any(|default| default.as_str() == Some(member)) {
            report.violations.push(Violation {
                package: graph.packages[member].name.clone(),
                dependency: None,
                rule: "default-members",
                why: "not in the workspace's `default-members`: plain `cargo test` skips it".into(),
            });
        }
    }
    Ok(())
}

fn check_policy_purity(graph: &Graph, report: &mut Report) {
    let Some(policy) = graph.members.iter().find(|id| graph.packages[*id].name == POLICY) else {
        report.checked.push(format!("no `{POLICY}` member: policy purity not checked"));
        return;
    };
    // Breadth-first over normal edges, remembering how each crate was first reached, so a
    // violation shows the shortest chain from policy to the forbidden crate.
    let mut reached_from: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([policy.as_str()]);
    let mut seen = HashSet::from([policy.as_str()]);
    while let Some(id) = queue.pop_front() {
        for edge in graph.edges(id).iter().filter(|edge| edge.normal) {
            if seen.insert(edge.to.as_str()) {
                reached_from.insert(edge.to.as_str(), id);
                queue.push_back(edge.to.as_str());
            }
        }
    }
    report.checked.push(format!(
        "{POLICY}: {} crates in its normal dependency closure, none may be {}",
        seen.len() - 1,
        POLICY_FORBIDDEN.join(", ")
    ));
    let mut reached: Vec<&str> = seen.into_iter().collect();
    reached.sort_by_key(|id| &graph.packages[*id].name);
    for id in reached {
        let name = &graph.packages[id].name;
        if !POLICY_FORBIDDEN.contains(&name.as_str()) {
            continue;
        }
        let mut chain = vec![name.as_str()];
        let mut at = id;
        while let Some(from) = reached_from.get(at) {
            chain.push(&graph.packages[*from].name);
            at = *from;
        }
        chain.reverse();
        report.violations.push(Violation {
            package: POLICY.to_owned(),
            dependency: Some(name.clone()),
            rule: "policy-purity",
            why: format!(
                "policy is pure and sync: none of {} may be a normal dependency, \
                 even indirectly (reached via {})",
                POLICY_FORBIDDEN.join(", "),
                chain.join(" -> ")
            ),
        });
    }
}

fn check_layering(graph: &Graph, report: &mut Report) {
    report.checked.push(format!(
        "layering of {} workspace members against the LAYERS table in xtask/src/tidy.rs",
        graph.members.len()
    ));
    let layers: HashMap<&str, May> = LAYERS.iter().copied().collect();
    let members: HashSet<&str> = graph.members.iter().map(String::as_str).collect();
    for member in &graph.members {
        let from = graph.packages[member].name.as_str();
        let layer = layers.get(from).copied();
        if layer.is_none() {
            report.violations.push(Violation {
                package: from.to_owned(),
                dependency: None,
                rule: "layering",
                why: "no row in LAYERS (xtask/src/tidy.rs): add one saying which workspace \
                      crates it may depend on"
                    .to_owned(),
            });
        }
        for edge in graph.edges(member) {
            if !members.contains(edge.to.as_str()) {
                continue;
            }
            let to = graph.packages[&edge.to].name.as_str();
            let broken = if to == CLI {
                Some(("no-dependency-on-cli", format!("nothing depends on the cli crate `{CLI}`")))
            } else if !edge.normal {
                None
            } else if to == TEST_SUPPORT {
                Some((
                    "test-support-dev-only",
                    format!("`{TEST_SUPPORT}` may only be a [dev-dependencies] entry"),
                ))
            } else if LISTENERS.contains(&from) && LISTENERS.contains(&to) {
                Some((
                    "listener-independence",
                    format!("no listener crate ({}) depends on another", LISTENERS.join(", ")),
                ))
            } else {
                match layer {
                    Some(May::DependOn(allowed)) if !allowed.contains(&to) => Some((
                        "layering",
                        match allowed {
                            [] => format!("{from} may depend on no workspace crate"),
                            _ => format!(
                                "{from} may depend only on {} among workspace crates",
                                allowed.join(", ")
                            ),
                        },
                    )),
                    _ => None,
                }
            };
            if let Some((rule, why)) = broken {
                report.violations.push(Violation {
                    package: from.to_owned(),
                    dependency: Some(to.to_owned()),
                    rule,
                    why,
                });
            }
        }
    }
}

fn check_workspace_lints(graph: &Graph, manifests: &BTreeMap<String, String>, report: &mut Report) {
    report
        .checked
        .push(format!("`[lints] workspace = true` in {} member manifests", graph.members.len()));
    for member in &graph.members {
        let name = &graph.packages[member].name;
        let why = match manifests.get(name) {
            Some(text) if has_workspace_lints(text) => continue,
            Some(_) => "Cargo.toml lacks `[lints] workspace = true`",
            None => "Cargo.toml was not read",
        };
        report.violations.push(Violation {
            package: name.clone(),
            dependency: None,
            rule: "workspace-lints",
            why: format!("{why}: every member inherits [workspace.lints]"),
        });
    }
}

/// Whether a manifest opts into the workspace lints, in any of TOML's spellings:
/// `[lints]` + `workspace = true`, `lints.workspace = true` or `lints = { workspace = true }`.
/// Line-based on purpose: manifests here are simple, and xtask carries no TOML parser.
fn has_workspace_lints(manifest: &str) -> bool {
    let mut table = String::new();
    for line in manifest.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let line: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if line.starts_with('[') {
            table = line.trim_matches(['[', ']']).to_owned();
            continue;
        }
        let key = if table.is_empty() { line } else { format!("{table}.{line}") };
        if key == "lints.workspace=true" || key == "lints={workspace=true}" {
            return true;
        }
    }
    false
}

struct Package {
    name: String,
    manifest_path: String,
}

struct Edge {
    to: String,
    /// A `[dependencies]` edge (kind `null`), on any target platform.
    normal: bool,
}

/// The parts of `cargo metadata` the rules need, keyed by package id.
struct Graph {
    packages: HashMap<String, Package>,
    members: Vec<String>,
    deps: HashMap<String, Vec<Edge>>,
}

impl Graph {
    fn parse(metadata: &Value) -> Result<Graph> {
        let mut packages = HashMap::new();
        for package in array(&metadata["packages"], "packages")? {
            let id = string(&package["id"], "packages[].id")?;
            let name = string(&package["name"], "packages[].name")?;
            let manifest_path = string(&package["manifest_path"], "packages[].manifest_path")?;
            packages.insert(id, Package { name, manifest_path });
        }
        let mut members = Vec::new();
        for member in array(&metadata["workspace_members"], "workspace_members")? {
            members.push(string(member, "workspace_members[]")?);
        }
        let mut deps = HashMap::new();
        for node in array(&metadata["resolve"]["nodes"], "resolve.nodes")? {
            let mut edges = Vec::new();
            for dep in array(&node["deps"], "resolve.nodes[].deps")? {
                let kinds = array(&dep["dep_kinds"], "resolve.nodes[].deps[].dep_kinds")?;
                let to = string(&dep["pkg"], "resolve.nodes[].deps[].pkg")?;
                let normal = kinds.iter().any(|kind| kind["kind"].is_null());
                edges.push(Edge { to, normal });
            }
            deps.insert(string(&node["id"], "resolve.nodes[].id")?, edges);
        }
        let ids = members.iter().chain(deps.values().flatten().map(|edge| &edge.to));
        for id in ids.chain(deps.keys()) {
            if !packages.contains_key(id) {
                bail!("cargo metadata: package id {id} is not in `packages`");
            }
        }
        Ok(Graph { packages, members, deps })
    }

    fn edges(&self, id: &str) -> &[Edge] {
        self.deps.get(id).map_or(&[], Vec::as_slice)
    }
}

fn array<'a>(value: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    value.as_array().with_context(|| format!("cargo metadata: `{what}` is not an array"))
}

fn string(value: &Value, what: &str) -> Result<String> {
    let s = value.as_str().with_context(|| format!("cargo metadata: `{what}` is not a string"))?;
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests;
