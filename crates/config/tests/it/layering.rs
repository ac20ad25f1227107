//! Sources and their precedence (SPEC §2.1).

use std::path::PathBuf;

use proxyd_config::{Config, Origin, Sources};
use proxyd_policy::Mode;

use crate::support::{TempDir, sources, value};

fn file_origin(path: &std::path::Path, line: usize) -> Origin {
    Origin::File { path: path.to_owned(), line, table: None }
}

#[test]
fn later_sources_override_earlier_ones_key_by_key() {
    let dir = TempDir::new();
    let system = dir.write(
        "system.toml",
        "[network]\nmode = \"limited\"\nmax_connections = 1\nblocked_log_size = 1\n\
         dns_timeout = \"1s\"\nidle_timeout = \"1s\"\n",
    );
    let user = dir.write("user.toml", "[network]\nmax_connections = 2\nblocked_log_size = 2\n");
    let first =
        dir.write("first.toml", "[network]\n\nblocked_log_size = 3\ndns_timeout = \"3s\"\n");
    let second = dir.write("second.toml", "[network]\ndns_timeout = \"4s\"\n");
    let sources = Sources {
        system: Some(system.clone()),
        user: Some(user.clone()),
        files: vec![first.clone(), second.clone()],
        overrides: vec!["network.idle_timeout=\"9s\"".into(), "network.idle_timeout=7s".into()],
        profile: None,
    };
    let config = Config::load(&sources).unwrap();
    assert_eq!(config.mode, Mode::Limited);
    assert_eq!(config.origin("mode"), &file_origin(&system, 2));
    assert_eq!(config.max_connections, 2);
    assert_eq!(config.origin("max_connections"), &file_origin(&user, 2));
    assert_eq!(config.blocked_log_size, 3);
    assert_eq!(config.origin("blocked_log_size"), &file_origin(&first, 3));
    assert_eq!(value(&config, "dns_timeout"), "\"4s\"");
    assert_eq!(config.origin("dns_timeout"), &file_origin(&second, 2));
    assert_eq!(value(&config, "idle_timeout"), "\"7s\"");
    assert_eq!(config.origin("idle_timeout"), &Origin::Override);
    assert_eq!(config.origin("connect_timeout"), &Origin::Default);
}

#[test]
fn overrides_parse_as_toml_or_fall_back_to_a_string() {
    let config = Config::load(&sources(
        &[],
        &[
            "network.mode=limited",
            "network.allowed_domains=[\"a.com\", '*.b.com']",
            "network.enable_socks5=false",
            "network.max_connections=12",
            "network.proxy_url=127.0.0.1:0",
            " network.connect_timeout = 3s ",
            "network.admin_token=abc=def",
        ],
    ))
    .unwrap();
    assert_eq!(config.mode, Mode::Limited);
    assert_eq!(config.allowed_domains(), ["a.com", "*.b.com"]);
    assert!(!config.enable_socks5);
    assert_eq!(config.max_connections, 12);
    assert_eq!(config.http_addr.to_string(), "127.0.0.1:0");
    assert_eq!(value(&config, "connect_timeout"), "\"3s\"");
    assert_eq!(config.admin_token.as_ref().map(|t| t.as_str()), Some("abc=def"));
    assert_eq!(config.origin("mode"), &Origin::Override);
}

#[test]
fn overrides_must_name_a_network_key() {
    let cases = [
        (
            "mode=limited",
            "-c: invalid override \"mode\": only keys of the [network] table can be set, as network.KEY",
        ),
        (
            "other.x=1",
            "-c: invalid override \"other.x\": only keys of the [network] table can be set, as network.KEY",
        ),
        ("network.mode", "-c: invalid override \"network.mode\": expected network.KEY=VALUE"),
        (
            "network.alowed_domains=[]",
            "-c: unknown key network.alowed_domains (did you mean allowed_domains?)",
        ),
        ("network.enabled=maybe", "-c: network.enabled: expected a boolean, found string"),
        (
            "network.allowed_domains=[1]",
            "-c: network.allowed_domains: expected an array of strings, found integer",
        ),
    ];
    for (arg, expected) in cases {
        let errors = Config::load(&sources(&[], &[arg])).unwrap_err();
        assert_eq!(errors.to_string(), expected, "-c {arg}");
    }
}

#[test]
fn a_missing_explicit_file_is_an_error_but_missing_system_and_user_files_are_not() {
    let dir = TempDir::new();
    let missing = dir.path().join("missing.toml");
    let sources = Sources {
        system: Some(dir.path().join("no-system.toml")),
        user: Some(dir.path().join("no-user.toml")),
        files: vec![],
        overrides: vec![],
        profile: None,
    };
    assert_eq!(Config::load(&sources).unwrap(), Config::default());

    let sources = Sources { files: vec![missing.clone()], ..sources };
    let errors = Config::load(&sources).unwrap_err();
    assert_eq!(errors.to_string(), format!("{}: config file not found", missing.display()));
}

#[test]
fn an_unreadable_system_file_is_an_error() {
    // A directory exists but cannot be read as a file: existing sources are never skipped.
    let dir = TempDir::new();
    let sources = Sources { system: Some(dir.path().to_owned()), ..Sources::default() };
    let errors = Config::load(&sources).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors.to_string().contains("cannot read config file"), "{errors}");
}

#[test]
fn other_top_level_tables_are_ignored() {
    let text = "model = \"o3\"\nunknown_top = [1, 2]\n[profiles.fast]\nmode = 3\n\
                [network]\nmode = \"limited\"\n[mcp_servers.x]\ncommand = \"y\"\nenabled = \"no\"\n";
    let config = Config::from_toml_str(text, "codex.toml").unwrap();
    assert_eq!(config.mode, Mode::Limited);
    assert!(config.enabled);
    let no_network = Config::from_toml_str("[tui]\nmode = 1\n", "codex.toml").unwrap();
    assert_eq!(no_network, Config::default());
}

#[test]
fn dotted_and_inline_network_tables_are_read() {
    let dotted = Config::from_toml_str("network.mode = \"limited\"\n", "a.toml").unwrap();
    assert_eq!(dotted.mode, Mode::Limited);
    let inline = Config::from_toml_str("network = { mode = \"limited\" }\n", "a.toml").unwrap();
    assert_eq!(inline.mode, Mode::Limited);
}

#[test]
fn standard_sources_come_from_the_environment() {
    let env = |name: &str| match name {
        "HOME" => Some("/home/u".into()),
        _ => None,
    };
    let sources =
        Sources::from_env(vec![PathBuf::from("x.toml")], vec!["network.mode=full".into()], env);
    assert_eq!(sources.system, Some(PathBuf::from("/etc/codex/config.toml")));
    assert_eq!(sources.user, Some(PathBuf::from("/home/u/.codex/config.toml")));
    assert_eq!(sources.files, [PathBuf::from("x.toml")]);
    assert_eq!(sources.overrides, ["network.mode=full"]);
}
