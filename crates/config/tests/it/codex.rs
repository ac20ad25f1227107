//! Codex's own network tables in files shaped like real Codex `config.toml`s: which profile is
//! selected, how `domains` and `unix_sockets` map onto proxyd's lists, provenance, and the
//! warnings for every network-looking table that is not applied.

use std::path::{Path, PathBuf};

use proxyd_config::{Config, Origin, Profile, ProfileChoice, Sources, TableUse, Value};
use proxyd_policy::Mode;

use crate::support::{TempDir, sources, value};

/// A Codex config as written today: a permission profile selected by `default_permissions`,
/// with everything else a Codex user has in the file.
const PROFILE_CONFIG: &str = r#"model = "gpt-5.5"
model_provider = "openai"
approval_policy = "on-request"
default_permissions = "workspace"
model_reasoning_effort = "medium"

[profiles.fast]
model = "gpt-5.4-mini"
model_reasoning_effort = "low"
approval_policy = "never"

[mcp_servers.docs]
command = "npx"
args = ["-y", "@example/docs-mcp"]
env = { DOCS_TOKEN_FILE = "/home/me/.docs-token" }

[tui]
notifications = true

[history]
persistence = "save-all"

[permissions.workspace]
extends = ":workspace"

[permissions.workspace.filesystem]
":project_roots" = "write"

[permissions.workspace.network]
enabled = true
mode = "limited"
allow_local_binding = false
dangerously_allow_all_unix_sockets = false

[permissions.workspace.network.domains]
"api.model.example" = "allow"
"*.git.example.org" = "allow"
"evil.example" = "deny"

[permissions.workspace.network.unix_sockets]
"/run/docker.sock" = "none"
"#;

/// An older Codex config: the policy in `[features.network_proxy]`, with the list spellings.
const FEATURES_CONFIG: &str = r#"model = "o3"
approval_policy = "untrusted"
sandbox_mode = "workspace-write"

[sandbox_workspace_write]
network_access = true

[features]
web_search_request = true

[features.network_proxy]
enabled = true
mode = "full"
allowed_domains = ["pypi.example", "files.pypi.example"]
denied_domains = ["metadata.google.internal"]
allow_local_binding = true

[mcp_servers.docs]
command = "docs-mcp"
args = ["--stdio"]
"#;

/// Two profiles in one file, and a second file choosing between them.
const TWO_PROFILES: &str = r#"model = "gpt-5.5"
default_permissions = "workspace"

[permissions.workspace.network]
enabled = true
domains = { "api.model.example" = "allow" }

[permissions.ci.network]
enabled = true
mode = "limited"
domains = { "registry.npm.example" = "allow", "*.npm.example" = "allow" }
"#;

/// The 1-based line of the first line of `text` equal to `needle` (trimmed).
#[track_caller]
fn line_of(text: &str, needle: &str) -> usize {
    match text.lines().position(|line| line.trim() == needle) {
        Some(index) => index + 1,
        None => panic!("no line {needle:?} in\n{text}"),
    }
}

fn at(path: &Path, line: usize, table: &str) -> Origin {
    Origin::File { path: path.to_owned(), line, table: Some(table.to_owned()) }
}

fn load(files: &[&Path], profile: Option<&str>) -> Config {
    let sources = Sources { profile: profile.map(str::to_owned), ..sources(files, &[]) };
    match Config::load(&sources) {
        Ok(config) => config,
        Err(errors) => panic!("should load, got:\n{errors}"),
    }
}

fn load_errors(files: &[&Path], profile: Option<&str>) -> Vec<String> {
    let sources = Sources { profile: profile.map(str::to_owned), ..sources(files, &[]) };
    match Config::load(&sources) {
        Ok(config) => panic!("should fail, loaded {config:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    dir.write(name, text)
}

#[test]
fn a_profile_selected_by_default_permissions_is_read() {
    let dir = TempDir::new();
    let path = write(&dir, "config.toml", PROFILE_CONFIG);
    let config = load(&[&path], None);
    let table = "permissions.workspace.network";
    assert_eq!(
        config.profile,
        Some(Profile {
            name: "workspace".into(),
            chosen_by: ProfileChoice::DefaultPermissions { path: path.clone(), line: 4 },
        })
    );
    assert_eq!(config.mode, Mode::Limited);
    assert_eq!(config.allowed_domains(), ["*.git.example.org", "api.model.example"]);
    assert_eq!(config.denied_domains(), ["evil.example"]);
    assert!(config.allow_unix_sockets.is_empty(), "\"none\" allows nothing");
    assert!(config.enabled && !config.allow_local_binding);
    // Provenance: the key's own line, in the table it came from.
    let text = PROFILE_CONFIG;
    assert_eq!(config.origin("mode"), &at(&path, line_of(text, "mode = \"limited\""), table));
    let domains = line_of(text, "[permissions.workspace.network.domains]");
    assert_eq!(config.origin("allowed_domains"), &at(&path, domains, table));
    assert_eq!(config.origin("denied_domains"), &at(&path, domains, table));
    assert_eq!(config.origin("proxy_url"), &Origin::Default);
    // The models, MCP servers, config profiles, TUI and history are none of proxyd's business.
    assert_eq!(config.warnings, Vec::<String>::new());
    assert_eq!(config.tables.len(), 1);
    let header = line_of(text, "[permissions.workspace.network]");
    assert_eq!(config.tables[0].tables, [TableUse { table: table.into(), line: header }]);

    let rendered = config.render();
    let p = path.display();
    let expected = format!(
        "# {p}: [{table}] line {header} (profile from default_permissions at {p}:4)\n[network]\n"
    );
    assert!(rendered.starts_with(&expected), "{rendered}");
    let mode = line_of(text, "mode = \"limited\"");
    assert!(rendered.contains(&format!("mode = \"limited\"  # from {p}:{mode} in [{table}]\n")));
    // The rendered config still loads, to the same values.
    let again = Config::from_toml_str(&rendered, "rendered.toml").unwrap();
    let values =
        |c: &Config| c.settings().into_iter().map(|s| (s.key, s.value)).collect::<Vec<_>>();
    assert_eq!(values(&again), values(&config));
}

#[test]
fn an_older_features_table_is_read_with_either_spelling() {
    let dir = TempDir::new();
    let path = write(&dir, "config.toml", FEATURES_CONFIG);
    let config = load(&[&path], None);
    assert_eq!(config.profile, None);
    assert_eq!(config.mode, Mode::Full);
    assert_eq!(config.allowed_domains(), ["pypi.example", "files.pypi.example"]);
    assert_eq!(config.denied_domains(), ["metadata.google.internal"]);
    assert!(config.allow_local_binding);
    let line = line_of(FEATURES_CONFIG, "allow_local_binding = true");
    assert_eq!(config.origin("allow_local_binding"), &at(&path, line, "features.network_proxy"));
    assert_eq!(config.warnings, Vec::<String>::new());
    assert!(config.render().starts_with(&format!(
        "# {}: [features.network_proxy] line {}\n",
        path.display(),
        line_of(FEATURES_CONFIG, "[features.network_proxy]")
    )));

    // The map spelling, inline, in the same table; and the feature's plain on/off switch.
    let maps = "[features.network_proxy]\ndomains = { \"pypi.example\" = \"allow\", \"x.pypi.example\" = \"deny\" }\n\
                unix_sockets = { \"/run/a.sock\" = \"deny\" }\n";
    let config = Config::from_toml_str(maps, "/c/config.toml").unwrap();
    assert_eq!(config.allowed_domains(), ["pypi.example"]);
    assert_eq!(config.denied_domains(), ["x.pypi.example"]);
    assert!(config.allow_unix_sockets.is_empty());
    let switch =
        Config::from_toml_str("[features]\nnetwork_proxy = true\n", "/c/config.toml").unwrap();
    assert_eq!(switch.warnings, Vec::<String>::new());
    assert!(switch.tables.is_empty());
}

#[test]
fn within_a_file_features_then_the_profile_then_network_apply() {
    let text = r#"default_permissions = "dev"

[features.network_proxy]
mode = "limited"
allow_local_binding = true
domains = { "a.example.com" = "allow" }

[permissions.dev.network]
mode = "full"
domains = { "b.example.com" = "allow", "a.example.com" = "deny" }

[network]
enable_socks5 = false
"#;
    let dir = TempDir::new();
    let path = write(&dir, "config.toml", text);
    let config = load(&[&path], None);
    assert_eq!(config.mode, Mode::Full);
    assert_eq!(config.origin("mode"), &at(&path, 9, "permissions.dev.network"));
    assert!(config.allow_local_binding);
    assert_eq!(config.origin("allow_local_binding"), &at(&path, 5, "features.network_proxy"));
    // A later "deny" moves a pattern out of the allowed list, as Codex merges the maps.
    assert_eq!(config.allowed_domains(), ["b.example.com"]);
    assert_eq!(config.denied_domains(), ["a.example.com"]);
    assert!(!config.enable_socks5);
    assert_eq!(
        config.origin("enable_socks5"),
        &Origin::File { path: path.clone(), line: 13, table: None }
    );
    let used: Vec<_> = config.tables[0].tables.iter().map(|t| (t.table.as_str(), t.line)).collect();
    assert_eq!(
        used,
        [("features.network_proxy", 3), ("permissions.dev.network", 8), ("network", 12)]
    );
    // proxyd's own table wins within the file.
    let own = text.replace("enable_socks5 = false", "mode = \"limited\"");
    let config = Config::from_toml_str(&own, "/c/config.toml").unwrap();
    assert_eq!(config.mode, Mode::Limited);
    assert_eq!(
        config.origin("mode"),
        &Origin::File { path: "/c/config.toml".into(), line: 13, table: None }
    );
}

#[test]
fn the_last_default_permissions_wins_and_profile_overrides_it() {
    let dir = TempDir::new();
    let system = write(&dir, "system.toml", TWO_PROFILES);
    let user = write(
        &dir,
        "user.toml",
        "model = \"gpt-5.5\"\napproval_policy = \"never\"\ndefault_permissions = \"ci\"\n",
    );
    let s = system.display();
    let workspace_line = line_of(TWO_PROFILES, "[permissions.workspace.network]");
    let ci_line = line_of(TWO_PROFILES, "[permissions.ci.network]");

    // Only the first file: its own default_permissions.
    let config = load(&[&system], None);
    assert_eq!(config.allowed_domains(), ["api.model.example"]);
    assert_eq!(config.mode, Mode::Full);

    // A later file's default_permissions selects a profile defined in an earlier file.
    let config = load(&[&system, &user], None);
    let chosen_by = ProfileChoice::DefaultPermissions { path: user.clone(), line: 3 };
    assert_eq!(config.profile, Some(Profile { name: "ci".into(), chosen_by }));
    assert_eq!(config.allowed_domains(), ["*.npm.example", "registry.npm.example"]);
    assert_eq!(config.mode, Mode::Limited);
    assert_eq!(
        config.warnings,
        [format!(
            "{s}:{workspace_line}: [permissions.workspace.network] is not applied: the selected \
             profile is \"ci\" (from default_permissions at {}:3); to use it, set \
             default_permissions = \"workspace\" or pass --profile workspace",
            user.display()
        )]
    );

    // --profile overrides every default_permissions.
    let config = load(&[&system, &user], Some("workspace"));
    assert_eq!(
        config.profile,
        Some(Profile { name: "workspace".into(), chosen_by: ProfileChoice::Flag })
    );
    assert_eq!(config.allowed_domains(), ["api.model.example"]);
    assert_eq!(
        config.warnings,
        [format!(
            "{s}:{ci_line}: [permissions.ci.network] is not applied: the selected profile is \
             \"workspace\" (from --profile); to use it, set default_permissions = \"ci\" or pass \
             --profile ci"
        )]
    );
    assert!(config.render().starts_with(&format!(
        "# {s}: [permissions.workspace.network] line {workspace_line} (profile from --profile)\n"
    )));
}

#[test]
fn domains_merge_across_files_and_network_lists_replace() {
    let dir = TempDir::new();
    let system = write(
        &dir,
        "system.toml",
        "default_permissions = \"workspace\"\n[permissions.workspace.network.domains]\n\"evil.example\" = \"deny\"\n",
    );
    let user =
        write(&dir, "user.toml", "[permissions.workspace.network.domains]\n\"*\" = \"allow\"\n");
    // As in Codex, where config layers merge the maps entry by entry, the system's deny stays.
    let config = load(&[&system, &user], None);
    assert_eq!(config.allowed_domains(), ["*"]);
    assert_eq!(config.denied_domains(), ["evil.example"]);
    assert_eq!(config.origin("denied_domains"), &at(&system, 2, "permissions.workspace.network"));
    assert_eq!(config.origin("allowed_domains"), &at(&user, 1, "permissions.workspace.network"));
    // proxyd's own list replaces what came before it.
    let own = write(&dir, "own.toml", "[network]\nallowed_domains = [\"x.example.com\"]\n");
    let config = load(&[&system, &user, &own], None);
    assert_eq!(config.allowed_domains(), ["x.example.com"]);
    assert_eq!(config.denied_domains(), ["evil.example"]);
}

#[test]
fn unix_sockets_allow_entries_join_allow_unix_sockets() {
    let text = "default_permissions = \"w\"\n[permissions.w.network.unix_sockets]\n\
                \"/run/proxyd-test-missing.sock\" = \"allow\"\n\"/run/other.sock\" = \"none\"\n";
    let config = Config::from_toml_str(text, "/c/config.toml").unwrap();
    assert_eq!(config.allow_unix_sockets, [PathBuf::from("/run/proxyd-test-missing.sock")]);
    assert_eq!(value(&config, "allow_unix_sockets"), "[\"/run/proxyd-test-missing.sock\"]");
    // The socket is not there: the usual warning, nothing about the table.
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].starts_with("allow_unix_sockets: /run/proxyd-test-missing.sock"));
    // A later "none" takes an earlier "allow" back.
    let dir = TempDir::new();
    let first = write(&dir, "a.toml", text);
    let second = write(
        &dir,
        "b.toml",
        "[permissions.w.network.unix_sockets]\n\"/run/proxyd-test-missing.sock\" = \"none\"\n",
    );
    assert!(load(&[&first, &second], None).allow_unix_sockets.is_empty());
}

/// Every network-looking table or key that is not applied, with the warning it gets.
#[test]
fn tables_and_keys_that_are_not_applied_are_warned_about_with_file_and_line() {
    let text = r#"model = "gpt-5.5"
default_permissions = "workspace"

[profiles.fast]
model = "gpt-5.4-mini"
default_permissions = "ci"

[network_proxy]
enabled = true

[network_proxy.policy]
allowed_domains = ["old.example.com"]

[features.network_proxy]
enabled = true
credential_broker = true

[permissions.workspace.network]
enabled = true
admin_url = "127.0.0.1:9090"
domain = { "a.example.com" = "allow" }

[permissions.workspace.network.mitm]
hooks = [{ host = "api.example.com" }]

[permissions.ci.network]
enabled = true

[permissions.network]
allowed_domains = ["older.example.com"]
"#;
    let dir = TempDir::new();
    let path = write(&dir, "config.toml", text);
    let config = load(&[&path], None);
    let p = path.display();
    let expected = [
        format!(
            "{p}:6: profiles.fast.default_permissions is ignored: proxyd does not read Codex \
             config profiles ([profiles.fast]); set it at the top level of the file"
        ),
        format!(
            "{p}:8: [network_proxy] is an older Codex table that proxyd does not read, so its keys \
             are ignored: move them to [network] (or to a [permissions.NAME.network] profile, \
             selected with default_permissions)"
        ),
        format!(
            "{p}:16: features.network_proxy.credential_broker is ignored: proxyd does not support \
             it: remove it"
        ),
        format!(
            "{p}:20: permissions.workspace.network.admin_url is ignored: proxyd reads admin_url \
             only from its own [network] table: move it there"
        ),
        format!("{p}:21: permissions.workspace.network.domain is ignored: did you mean domains?"),
        format!(
            "{p}:24: permissions.workspace.network.mitm.hooks is ignored: proxyd does not support \
             it: remove it"
        ),
        format!(
            "{p}:26: [permissions.ci.network] is not applied: the selected profile is \
             \"workspace\" (from default_permissions at {p}:2); to use it, set \
             default_permissions = \"ci\" or pass --profile ci"
        ),
        format!(
            "{p}:29: [permissions.network] is an older Codex form that proxyd does not read, so \
             its keys are ignored: move them to [permissions.NAME.network] and select NAME with \
             default_permissions, or to [network]"
        ),
    ];
    assert_eq!(config.warnings, expected);
    // None of them applied anything.
    assert!(config.allowed_domains().is_empty(), "{:?}", config.allowed_domains());
    assert_eq!(config.admin_addr.to_string(), "127.0.0.1:8080");
    // Warnings are comments in the rendered config.
    assert!(config.render().contains(&format!("# warning: {}\n", expected[1])));
}

#[test]
fn a_selected_profile_without_a_network_table_is_warned_about() {
    let dir = TempDir::new();
    let cases = [
        (
            "default_permissions = \"workspace\"\n[permissions.workspace.filesystem]\n\":project_roots\" = \"write\"\n",
            None,
            "{p}:1: default_permissions = \"workspace\": profile \"workspace\" has no network table, \
             so no profile policy applies (only [features.network_proxy] and [network]); add \
             [permissions.workspace.network] or select a profile that has one",
        ),
        (
            "default_permissions = \"wrokspace\"\n[permissions.workspace.network]\nenabled = true\n",
            None,
            "{p}:2: [permissions.workspace.network] is not applied: the selected profile is \
             \"wrokspace\" (from default_permissions at {p}:1); to use it, set \
             default_permissions = \"workspace\" or pass --profile workspace\n\
             {p}:1: default_permissions = \"wrokspace\": profile \"wrokspace\" is not defined, so no \
             profile policy applies (only [features.network_proxy] and [network]); add \
             [permissions.wrokspace.network] or select a profile that has one",
        ),
        (
            "default_permissions = \":workspace\"\n",
            None,
            "{p}:1: default_permissions = \":workspace\": :workspace is a Codex built-in profile, \
             which has no network table for proxyd to read: only [features.network_proxy] and \
             [network] apply; list the domains in [network], or in a profile of your own that you \
             select instead",
        ),
        (
            "[permissions.workspace.filesystem]\n\":project_roots\" = \"write\"\n",
            Some("workspace"),
            "--profile workspace: profile \"workspace\" has no network table, so no profile policy \
             applies (only [features.network_proxy] and [network]); add \
             [permissions.workspace.network] or select a profile that has one",
        ),
    ];
    for (text, profile, expected) in cases {
        let path = write(&dir, "config.toml", text);
        let config = load(&[&path], profile);
        let expected = expected.replace("{p}", &path.display().to_string());
        assert_eq!(config.warnings, expected.lines().collect::<Vec<_>>(), "{text}");
    }
}

#[test]
fn a_profile_flag_naming_no_profile_is_an_error() {
    let dir = TempDir::new();
    let path = write(&dir, "config.toml", TWO_PROFILES);
    assert_eq!(
        load_errors(&[&path], Some("wrokspace")),
        ["--profile: --profile wrokspace: no source defines [permissions.wrokspace.network] \
             (profiles with a network table: ci, workspace)"]
    );
}

#[test]
fn extends_of_a_profile_with_a_network_table_is_warned_about() {
    let text = "default_permissions = \"child\"\n[permissions.base.network]\nmode = \"limited\"\n\
                [permissions.child]\nextends = \"base\"\n[permissions.child.network]\nenabled = true\n";
    let config = Config::from_toml_str(text, "/c/config.toml").unwrap();
    assert_eq!(
        config.warnings,
        [
            "/c/config.toml:2: [permissions.base.network] is not applied: the selected profile is \
             \"child\" (from default_permissions at /c/config.toml:1); to use it, set \
             default_permissions = \"base\" or pass --profile base",
            "/c/config.toml:5: permissions.child.extends = \"base\": proxyd does not follow \
             extends, so [permissions.base.network] is not applied; copy the keys you need into \
             [permissions.child.network]",
        ]
    );
    // Extending a built-in, the usual case, loses nothing proxyd could read.
    let config = Config::from_toml_str(PROFILE_CONFIG, "/c/config.toml").unwrap();
    assert_eq!(config.warnings, Vec::<String>::new());
}

/// Errors inside the selected profile name the line and the key as written there.
#[test]
fn errors_in_a_profile_name_its_table_and_line() {
    let cases: &[(&str, &str)] = &[
        (
            "[permissions.workspace.network.domains]\n\"api.model.example\" = \"allow\"\n\"*.com\" = \"allow\"",
            "/c/config.toml:4: permissions.workspace.network.domains: invalid pattern \"*.com\": a \
             wildcard needs at least two fixed labels after it (`*.example.com`, not `*.com`)",
        ),
        (
            "[permissions.workspace.network.domains]\n\"*\" = \"deny\"",
            "/c/config.toml:3: permissions.workspace.network.domains: invalid pattern \"*\": `*` \
             matches everything and is only allowed in allowed_domains",
        ),
        (
            "[permissions.workspace.network.domains]\n\"a.example.com\" = \"yes\"",
            "/c/config.toml:3: permissions.workspace.network.domains: \"a.example.com\": expected \
             \"allow\" or \"deny\", found \"yes\"",
        ),
        (
            "[permissions.workspace.network]\ndomains = [\"a.example.com\"]",
            "/c/config.toml:3: permissions.workspace.network.domains: expected a table of \
             \"pattern\" = \"allow\" or \"deny\", found array",
        ),
        (
            "[permissions.workspace.network]\ndangerously_allow_all_unix_sockets = true",
            "/c/config.toml:3: permissions.workspace.network.dangerously_allow_all_unix_sockets: \
             proxyd does not open every unix socket: list the ones to allow in unix_sockets \
             (\"/path/to.sock\" = \"allow\")",
        ),
        (
            "[permissions.workspace.network.unix_sockets]\n\"run/a.sock\" = \"allow\"",
            "/c/config.toml:3: permissions.workspace.network.unix_sockets: \"run/a.sock\" is not \
             an absolute path",
        ),
        (
            "[permissions.workspace.network]\nmode = \"fast\"",
            "/c/config.toml:3: permissions.workspace.network.mode: expected \"full\" or \
             \"limited\", found \"fast\"",
        ),
        (
            "[permissions.workspace.network]\nenabled = \"yes\"",
            "/c/config.toml:3: permissions.workspace.network.enabled: expected a boolean, found \
             string",
        ),
        (
            "[permissions.workspace.network]\nallowed_domains = [\"https://a.example.com\"]",
            "/c/config.toml:3: permissions.workspace.network.allowed_domains: invalid pattern \
             \"https://a.example.com\": patterns are host names or addresses, not urls or paths",
        ),
        (
            "[features.network_proxy]\ndomains = { \"*.org\" = \"allow\" }",
            "/c/config.toml:3: features.network_proxy.domains: invalid pattern \"*.org\": a \
             wildcard needs at least two fixed labels after it (`*.example.com`, not `*.com`)",
        ),
        (
            "[permissions.workspace]\nnetwork = 1",
            "/c/config.toml:3: permissions.workspace.network: expected a table, found integer",
        ),
    ];
    for (body, expected) in cases {
        let text = format!("default_permissions = \"workspace\"\n{body}\n");
        let errors = Config::from_toml_str(&text, "/c/config.toml").unwrap_err();
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors, [*expected], "{text}");
    }
    let errors = Config::from_toml_str("default_permissions = 1\n", "/c/config.toml").unwrap_err();
    assert_eq!(
        errors.to_string(),
        "/c/config.toml:1: default_permissions: expected a profile name string, found integer"
    );
}

#[test]
fn an_unselected_profile_is_not_checked_and_other_codex_tables_are_ignored() {
    // Not applied, so not an error: the warning says it is not applied.
    let text = "[permissions.ci.network]\nmode = \"fast\"\n";
    let config = Config::from_toml_str(text, "/c/config.toml").unwrap();
    assert_eq!(config.warnings.len(), 1);
    assert!(config.warnings[0].contains("no profile is selected"), "{:?}", config.warnings);
    // -c cannot choose the profile; the error says what can.
    let errors = Config::load(&sources(&[], &["default_permissions=ci"])).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "-c: invalid override \"default_permissions\": choose the permission profile with --profile NAME"
    );
    let config = Config::from_toml_str(FEATURES_CONFIG, "/c/config.toml").unwrap();
    assert!(matches!(
        config.settings().iter().find(|s| s.key == "mode").map(|s| &s.value),
        Some(Value::String(mode)) if mode == "full"
    ));
}
