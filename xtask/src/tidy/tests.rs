use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The real workspace: this is the test STYLE.md asks for, run by plain `cargo test`.
#[test]
fn workspace_is_tidy() {
    let report = super::check_workspace().expect("cargo metadata and manifests are readable");
    let violations: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "tidy found {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

const MEMBERS: &[&str] = &[
    "proxyd-policy",
    "proxyd-config",
    "proxyd-net",
    "proxyd-http-proxy",
    "proxyd-socks5",
    "proxyd-admin",
    "proxyd-test-support",
    "proxyd",
    "xtask",
];

const LINTS: &str = "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n";

/// A hand-made `cargo metadata` document: `edges` are `(from, to, kind)` with kind
/// `normal`, `dev` or `build`; every name in `members` is a workspace member.
fn metadata(members: &[&str], edges: &[(&str, &str, &str)]) -> Value {
    let id = |name: &str| format!("{name} 0.1.0 (fake)");
    let mut names: Vec<&str> = members.to_vec();
    names.extend(edges.iter().flat_map(|(from, to, _)| [*from, *to]));
    names.sort_unstable();
    names.dedup();
    let packages: Vec<Value> = names
        .iter()
        .map(|name| json!({ "id": id(name), "name": name, "manifest_path": "" }))
        .collect();
    let nodes: Vec<Value> = names
        .iter()
        .map(|name| {
            let deps: Vec<Value> = edges
                .iter()
                .filter(|(from, _, _)| from == name)
                .map(|(_, to, kind)| {
                    let kind = if *kind == "normal" { Value::Null } else { json!(kind) };
                    json!({
                        "name": to.replace('-', "_"),
                        "pkg": id(to),
                        "dep_kinds": [{ "kind": kind, "target": null }],
                    })
                })
                .collect();
            json!({ "id": id(name), "deps": deps })
        })
        .collect();
    let members: Vec<String> = members.iter().map(|name| id(name)).collect();
    json!({
        "packages": packages,
        "workspace_members": members,
        "workspace_default_members": members,
        "resolve": { "nodes": nodes },
    })
}

fn manifests(members: &[&str]) -> BTreeMap<String, String> {
    members.iter().map(|name| (name.to_string(), LINTS.to_owned())).collect()
}

/// Checks the real member set with the given edges; `expect` holds a prefix of each violation
/// (`package -> dependency: [rule]`), in order.
#[track_caller]
fn check(edges: &[(&str, &str, &str)], expect: &[&str]) {
    check_members(MEMBERS, edges, expect);
}

#[track_caller]
fn check_members(members: &[&str], edges: &[(&str, &str, &str)], expect: &[&str]) {
    let report =
        super::check(&metadata(members, edges), &manifests(members)).expect("fake metadata parses");
    let got: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), expect.len(), "violations: {got:#?}");
    for (got, want) in got.iter().zip(expect) {
        assert!(got.starts_with(want), "violation {got:?} does not start with {want:?}");
    }
}

#[test]
fn intended_graph_is_tidy() {
    check(
        &[
            ("proxyd-policy", "idna", "normal"),
            ("proxyd-policy", "criterion", "dev"),
            ("criterion", "serde", "normal"),
            ("proxyd-policy", "proxyd-test-support", "dev"),
            ("proxyd-config", "proxyd-policy", "normal"),
            ("proxyd-config", "serde", "normal"),
            ("proxyd-net", "proxyd-policy", "normal"),
            ("proxyd-net", "tokio", "normal"),
            ("proxyd-http-proxy", "proxyd-policy", "normal"),
            ("proxyd-http-proxy", "proxyd-net", "normal"),
            ("proxyd-http-proxy", "proxyd-test-support", "dev"),
            ("proxyd-socks5", "proxyd-net", "normal"),
            ("proxyd-admin", "proxyd-policy", "normal"),
            ("proxyd-test-support", "proxyd-policy", "normal"),
            ("proxyd", "proxyd-config", "normal"),
            ("proxyd", "proxyd-http-proxy", "normal"),
            ("proxyd", "proxyd-socks5", "normal"),
            ("proxyd", "proxyd-admin", "normal"),
            ("proxyd", "proxyd-test-support", "dev"),
            ("xtask", "serde_json", "normal"),
        ],
        &[],
    );
}

#[test]
fn policy_purity() {
    check(&[("proxyd-policy", "tokio", "normal")], &["proxyd-policy -> tokio: [policy-purity]"]);
    check(
        &[("proxyd-policy", "serde_derive", "normal")],
        &["proxyd-policy -> serde_derive: [policy-purity]"],
    );
    check(&[("proxyd-policy", "tokio", "dev")], &[]);
    check(&[("proxyd-policy", "tokio", "build")], &[]);
    check(
        &[("proxyd-policy", "ipnet", "normal"), ("ipnet", "serde", "normal")],
        &["proxyd-policy -> serde: [policy-purity]"],
    );
    check(
        &[("proxyd-policy", "hyper", "normal"), ("hyper", "tokio", "normal")],
        &["proxyd-policy -> hyper: [policy-purity]", "proxyd-policy -> tokio: [policy-purity]"],
    );
    // A crate that only other members use may pull in anything.
    check(&[("proxyd-net", "socket2", "normal")], &[]);
}

#[test]
fn policy_purity_names_the_chain() {
    let edges = [
        ("proxyd-policy", "ipnet", "normal"),
        ("ipnet", "schemars", "normal"),
        ("schemars", "serde", "normal"),
    ];
    let report = super::check(&metadata(MEMBERS, &edges), &manifests(MEMBERS)).unwrap();
    let message = report.violations[0].to_string();
    assert!(message.contains("via proxyd-policy -> ipnet -> schemars -> serde"), "{message}");
}

#[test]
fn layering() {
    check(
        &[("proxyd-policy", "proxyd-config", "normal")],
        &["proxyd-policy -> proxyd-config: [layering]"],
    );
    check(
        &[("proxyd-config", "proxyd-net", "normal")],
        &["proxyd-config -> proxyd-net: [layering]"],
    );
    check(&[("proxyd-admin", "proxyd-net", "normal")], &["proxyd-admin -> proxyd-net: [layering]"]);
    check(&[("xtask", "proxyd-policy", "normal")], &["xtask -> proxyd-policy: [layering]"]);
    check(&[("proxyd-config", "proxyd-net", "dev")], &[]);
    check(&[("proxyd", "proxyd-net", "normal")], &[]);
}

#[test]
fn listeners_are_independent() {
    check(
        &[("proxyd-http-proxy", "proxyd-socks5", "normal")],
        &["proxyd-http-proxy -> proxyd-socks5: [listener-independence]"],
    );
    check(
        &[("proxyd-admin", "proxyd-http-proxy", "normal")],
        &["proxyd-admin -> proxyd-http-proxy: [listener-independence]"],
    );
}

#[test]
fn nothing_depends_on_cli() {
    check(
        &[("proxyd-admin", "proxyd", "normal")],
        &["proxyd-admin -> proxyd: [no-dependency-on-cli]"],
    );
    check(
        &[("proxyd-admin", "proxyd", "dev")],
        &["proxyd-admin -> proxyd: [no-dependency-on-cli]"],
    );
    check(&[("xtask", "proxyd", "build")], &["xtask -> proxyd: [no-dependency-on-cli]"]);
}

#[test]
fn test_support_is_dev_only() {
    check(&[("proxyd-socks5", "proxyd-test-support", "dev")], &[]);
    check(
        &[("proxyd", "proxyd-test-support", "normal")],
        &["proxyd -> proxyd-test-support: [test-support-dev-only]"],
    );
    check(
        &[("proxyd-config", "proxyd-test-support", "normal")],
        &["proxyd-config -> proxyd-test-support: [test-support-dev-only]"],
    );
}

#[test]
fn every_member_needs_a_layer() {
    let mut members = MEMBERS.to_vec();
    members.push("proxyd-extra");
    check_members(&members, &[], &["proxyd-extra: [layering] no row in LAYERS"]);
}

#[test]
fn missing_workspace_lints() {
    let mut texts = manifests(MEMBERS);
    texts.insert("proxyd-admin".to_owned(), "[package]\nname = \"proxyd-admin\"\n".to_owned());
    texts.remove("proxyd-net");
    let report = super::check(&metadata(MEMBERS, &[]), &texts).unwrap();
    let got: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "proxyd-net: [workspace-lints] Cargo.toml was not read: \
             every member inherits [workspace.lints]",
            "proxyd-admin: [workspace-lints] Cargo.toml lacks `[lints] workspace = true`: \
             every member inherits [workspace.lints]",
        ]
    );
}

#[test]
fn workspace_lints_spellings() {
    let check = |manifest: &str, want: bool| {
        assert_eq!(super::has_workspace_lints(manifest), want, "{manifest:?}");
    };
    check("[lints]\nworkspace = true\n", true);
    check("[package]\nname = \"a\"\n\n[lints]  # inherit\nworkspace=true\n", true);
    check("lints.workspace = true\n[package]\n", true);
    check("lints = { workspace = true }\n", true);
    check("[package]\nlints.workspace = true\n", false);
    check("[lints]\nworkspace = false\n", false);
    check("[lints]\n# workspace = true\n", false);
    check("[lints.rust]\nworkspace = true\n", false);
    check("[workspace]\n[lints]\n", false);
    check("", false);
}

#[test]
fn malformed_metadata_is_an_error() {
    let err = super::check(&json!({ "packages": [] }), &BTreeMap::new()).unwrap_err();
    assert_eq!(err.to_string(), "cargo metadata: `workspace_members` is not an array");
}

#[test]
fn every_member_is_a_default_member() {
    let mut metadata = metadata(MEMBERS, &[]);
    metadata["workspace_default_members"] = json!(["proxyd-policy 0.1.0 (fake)"]);
    let report = super::check(&metadata, &manifests(MEMBERS)).expect("fake metadata parses");
    let got: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
    assert_eq!(got.len(), MEMBERS.len() - 1, "violations: {got:#?}");
    assert!(got.iter().all(|v| v.contains("[default-members]")), "violations: {got:#?}");
    assert!(!got.iter().any(|v| v.starts_with("proxyd-policy")), "violations: {got:#?}");
}
