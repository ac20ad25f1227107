//! Every key of `[network]` with a good and a bad value, and the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proxyd_config::{Config, Origin, Sources};
use proxyd_policy::Mode;

use crate::support::{TempDir, load_err, load_ok, value};

/// `line` is accepted and `key` then has the effective value `expected` (as TOML).
fn good(line: &str, key: &str, expected: &str) {
    let config = load_ok(line);
    assert_eq!(value(&config, key), expected, "{line}");
}

/// `line` (written on line 2) is refused with exactly one error, `expected`.
fn bad(line: &str, expected: &str) {
    let errors = load_err(line);
    assert_eq!(errors, [format!("/t/config.toml:2: {expected}")], "{line}");
}

#[test]
fn every_key_accepts_a_good_value() {
    good("enabled = false", "enabled", "false");
    good("mitm = true", "mitm", "true");
    good("ca_dir = \"/var/lib/proxyd\"", "ca_dir", "\"/var/lib/proxyd\"");
    good("ca_dir = \"ca\"", "ca_dir", "\"/t/ca\"");
    good("proxy_url = \"http://127.0.0.1:3129\"", "proxy_url", "\"127.0.0.1:3129\"");
    good("admin_url = \"127.0.0.1:0\"", "admin_url", "\"127.0.0.1:0\"");
    good("enable_socks5 = false", "enable_socks5", "false");
    good("socks_url = \"socks5h://[::1]:1080\"", "socks_url", "\"[::1]:1080\"");
    good("enable_socks5_udp = false", "enable_socks5_udp", "false");
    good("allow_upstream_proxy = false", "allow_upstream_proxy", "false");
    good(
        "dangerously_allow_non_loopback_proxy = true",
        "dangerously_allow_non_loopback_proxy",
        "true",
    );
    good(
        "dangerously_allow_non_loopback_admin = true",
        "dangerously_allow_non_loopback_admin",
        "true",
    );
    good("mode = \"limited\"", "mode", "\"limited\"");
    good("mode = \"full\"", "mode", "\"full\"");
    good(
        "allowed_domains = [\"*.model.example\", \"localhost\", \"::1\", \"10.0.0.0/8\"]",
        "allowed_domains",
        "[\"*.model.example\", \"localhost\", \"::1\", \"10.0.0.0/8\"]",
    );
    good("allowed_domains = [\"*\"]", "allowed_domains", "[\"*\"]");
    good("denied_domains = [\"evil.example\"]", "denied_domains", "[\"evil.example\"]");
    good("allow_local_binding = true", "allow_local_binding", "true");
    good("allow_unix_sockets = [\"/tmp/a.sock\"]", "allow_unix_sockets", "[\"/tmp/a.sock\"]");
    good("connect_timeout = \"500ms\"", "connect_timeout", "\"500ms\"");
    good("dns_timeout = \"2s\"", "dns_timeout", "\"2s\"");
    good("header_read_timeout = \"1m\"", "header_read_timeout", "\"1m\"");
    good("idle_timeout = \"1h\"", "idle_timeout", "\"1h\"");
    good("response_timeout = \"2m\"", "response_timeout", "\"2m\"");
    good("decider_timeout = \"90s\"", "decider_timeout", "\"1m 30s\"");
    good("drain_timeout = \"0s\"", "drain_timeout", "\"0s\"");
    good("max_connections = 10", "max_connections", "10");
    good("max_connections = 0x10", "max_connections", "16");
    good("admin_max_connections = 8", "admin_max_connections", "8");
    good("blocked_log_size = 1", "blocked_log_size", "1");
    good("admin_token = \"s3cret-token\"", "admin_token", "(redacted)");
    good("admin_token = \"\"", "admin_token", "(not set)");
}

#[test]
fn every_key_refuses_a_bad_value() {
    bad("enabled = \"yes\"", "network.enabled: expected a boolean, found string");
    bad(
        "proxy_url = \"example.com:3128\"",
        "network.proxy_url: host \"example.com\" is not an ip address or localhost (listener names are not resolved)",
    );
    bad(
        "admin_url = 8080",
        "network.admin_url: expected a string such as \"http://127.0.0.1:3128\", found integer",
    );
    bad("enable_socks5 = 1", "network.enable_socks5: expected a boolean, found integer");
    bad("socks_url = \"127.0.0.1:70000\"", "network.socks_url: port 70000 is out of range 0-65535");
    bad(
        "enable_socks5_udp = \"true\"",
        "network.enable_socks5_udp: expected a boolean, found string",
    );
    bad(
        "allow_upstream_proxy = []",
        "network.allow_upstream_proxy: expected a boolean, found array",
    );
    bad(
        "dangerously_allow_non_loopback_proxy = 1.0",
        "network.dangerously_allow_non_loopback_proxy: expected a boolean, found float",
    );
    bad(
        "dangerously_allow_non_loopback_admin = {}",
        "network.dangerously_allow_non_loopback_admin: expected a boolean, found table",
    );
    bad(
        "mode = \"readonly\"",
        "network.mode: expected \"full\" or \"limited\", found \"readonly\"",
    );
    bad("mode = \"Full\"", "network.mode: expected \"full\" or \"limited\", found \"Full\"");
    bad(
        "allowed_domains = \"a.com\"",
        "network.allowed_domains: expected an array of strings, found string",
    );
    bad(
        "allowed_domains = [\"https://a.com\"]",
        "network.allowed_domains: invalid pattern \"https://a.com\": patterns are host names or addresses, not urls or paths",
    );
    bad(
        "denied_domains = [\"*\"]",
        "network.denied_domains: invalid pattern \"*\": `*` matches everything and is only allowed in allowed_domains",
    );
    bad(
        "allow_local_binding = \"false\"",
        "network.allow_local_binding: expected a boolean, found string",
    );
    bad(
        "allow_unix_sockets = [\"a.sock\"]",
        "network.allow_unix_sockets: \"a.sock\" is not an absolute path",
    );
    bad(
        "connect_timeout = 10",
        "network.connect_timeout: expected a duration string such as \"10s\", found integer",
    );
    bad("dns_timeout = \"0s\"", "network.dns_timeout: must be longer than zero");
    bad(
        "header_read_timeout = \"30\"",
        "network.header_read_timeout: invalid duration \"30\": time unit needed, for example 30sec or 30ms",
    );
    bad(
        "idle_timeout = \"5 fortnights\"",
        "network.idle_timeout: invalid duration \"5 fortnights\": unknown time unit \"fortnights\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)",
    );
    bad("response_timeout = \"0s\"", "network.response_timeout: must be longer than zero");
    bad(
        "response_timeout = \"25h\"",
        "network.response_timeout: \"25h\" is longer than the maximum of 24h",
    );
    bad(
        "decider_timeout = \"2d\"",
        "network.decider_timeout: \"2d\" is longer than the maximum of 24h",
    );
    bad(
        "drain_timeout = \"-1s\"",
        "network.drain_timeout: invalid duration \"-1s\": expected number at 0",
    );
    bad("max_connections = 0", "network.max_connections: must be between 1 and 1000000");
    bad("max_connections = -5", "network.max_connections: must be between 1 and 1000000");
    bad(
        "max_connections = \"10\"",
        "network.max_connections: expected a positive integer, found string",
    );
    bad("blocked_log_size = 0", "network.blocked_log_size: must be between 1 and 1000000");
    bad("blocked_log_size = 10000000", "network.blocked_log_size: must be between 1 and 1000000");
    bad(
        "admin_token = \"has space\"",
        "network.admin_token: the token must be visible ascii without spaces",
    );
    bad("admin_token = true", "network.admin_token: expected a string, found boolean");
    bad("admin_token_file = 3", "network.admin_token_file: expected a path string, found integer");
    bad("mitm = \"yes\"", "network.mitm: expected a boolean, found string");
    bad("ca_dir = 1", "network.ca_dir: expected a path string, found integer");
    bad("ca_dir = \"\"", "network.ca_dir: an empty path names no directory");
    bad(
        "admin_token_file = \"/nonexistent/proxyd/token\"",
        "network.admin_token_file: /nonexistent/proxyd/token: No such file or directory (os error 2)",
    );
}

#[test]
fn defaults_match_the_spec() {
    let config = Config::default();
    assert!(config.enabled);
    assert_eq!(config.http_addr, "127.0.0.1:3128".parse::<SocketAddr>().unwrap());
    assert_eq!(config.admin_addr, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(config.socks_addr, "127.0.0.1:8081".parse::<SocketAddr>().unwrap());
    assert!(config.enable_socks5 && config.enable_socks5_udp && config.allow_upstream_proxy);
    assert!(!config.dangerously_allow_non_loopback_proxy);
    assert!(!config.dangerously_allow_non_loopback_admin);
    assert_eq!(config.mode, Mode::Full);
    assert!(config.allowed_domains().is_empty() && config.denied_domains().is_empty());
    assert!(!config.allow_local_binding);
    assert!(config.allow_unix_sockets.is_empty());
    assert_eq!(config.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.dns_timeout, Duration::from_secs(5));
    assert_eq!(config.header_read_timeout, Duration::from_secs(30));
    assert_eq!(config.idle_timeout, Duration::from_secs(300));
    assert_eq!(config.response_timeout, Duration::from_secs(30));
    assert_eq!(config.decider_timeout, Duration::from_secs(300));
    assert_eq!(config.drain_timeout, Duration::from_secs(10));
    assert_eq!(config.max_connections, 4096);
    assert_eq!(config.blocked_log_size, 200);
    assert_eq!(config.admin_token, None);
    assert_eq!(config.admin_token_file, None);
    assert!(config.warnings.is_empty());
    assert!(config.settings().iter().all(|s| s.origin == Origin::Default));
    let policy = config.policy();
    assert!(policy.enabled && !policy.allow_local_binding);
    assert!(policy.allowed.is_empty() && policy.denied.is_empty());
}

#[test]
fn no_sources_and_empty_documents_give_the_defaults() {
    assert_eq!(Config::load(&Sources::default()).unwrap(), Config::default());
    assert_eq!(Config::from_toml_str("", "empty.toml").unwrap(), Config::default());
    // An empty table sets nothing, but `proxyd check` still names it as read.
    let mut empty = Config::from_toml_str("[network]\n", "empty.toml").unwrap();
    assert_eq!(empty.tables.len(), 1);
    empty.tables.clear();
    assert_eq!(empty, Config::default());
}

#[test]
fn mitm_is_off_and_ca_dir_follows_codex_home_by_default() {
    let config = Config::default();
    assert!(!config.mitm);
    let expected = match (std::env::var_os("CODEX_HOME"), std::env::var_os("HOME")) {
        (Some(home), _) if !home.is_empty() => Some(PathBuf::from(home).join("proxy")),
        (_, Some(home)) if !home.is_empty() => Some(PathBuf::from(home).join(".codex/proxy")),
        _ => None,
    };
    assert_eq!(config.ca_dir, expected);
    let config = load_ok("mitm = true\nca_dir = \"/srv/proxyd-ca\"");
    assert!(config.mitm);
    assert_eq!(config.ca_dir, Some(PathBuf::from("/srv/proxyd-ca")));
}

#[test]
fn typed_fields_follow_the_keys() {
    let config = load_ok(
        "mode = \"limited\"\nconnect_timeout = \"1500ms\"\nallowed_domains = [\"a.com\"]\n\
         denied_domains = [\"b.a.com\"]\nallow_local_binding = true\nenabled = false",
    );
    assert_eq!(config.mode, Mode::Limited);
    assert_eq!(config.connect_timeout, Duration::from_millis(1500));
    assert_eq!(config.allowed_domains(), ["a.com"]);
    let policy = config.policy();
    assert_eq!(policy.allowed.patterns().len(), 1);
    assert_eq!(policy.denied.patterns().len(), 1);
    assert!(policy.allow_local_binding && !policy.enabled);
}

#[test]
fn admin_token_file_is_read_trimmed_and_relative_to_its_config() {
    let dir = TempDir::new();
    dir.write("token", "  tok3n-value\n");
    let config_path = dir.write("config.toml", "[network]\nadmin_token_file = \"token\"\n");
    let sources = crate::support::sources(&[&config_path], &[]);
    let config = Config::load(&sources).unwrap();
    assert_eq!(config.admin_token.as_ref().map(|t| t.as_str()), Some("tok3n-value"));
    assert_eq!(config.admin_token_file, Some(dir.path().join("token")));
    assert_eq!(value(&config, "admin_token"), "(redacted)");
    assert!(!format!("{config:?}").contains("tok3n-value"), "debug output leaks the token");
    assert!(!config.render().contains("tok3n-value"), "render leaks the token");

    let absolute = dir.write("abs-token", "abs\n");
    let config = crate::support::load_ok(&format!("admin_token_file = {:?}", absolute));
    assert_eq!(config.admin_token.as_ref().map(|t| t.as_str()), Some("abs"));
}

#[test]
fn admin_token_file_errors_name_the_key() {
    let dir = TempDir::new();
    let empty = dir.write("empty", "\n");
    let spaced = dir.write("spaced", "two words\n");
    let good = dir.write("good", "token\n");
    let missing: PathBuf = dir.path().join("missing");
    for (body, expected) in [
        (format!("admin_token_file = {empty:?}"), "the token is empty"),
        (format!("admin_token_file = {spaced:?}"), "visible ascii without spaces"),
        (format!("admin_token_file = {missing:?}"), "No such file or directory"),
        (
            format!("admin_token = \"x\"\nadmin_token_file = {good:?}"),
            "admin_token is set as well: set only one of the two",
        ),
    ] {
        let errors = load_err(&body);
        assert_eq!(errors.len(), 1, "{body}: {errors:?}");
        assert!(errors[0].starts_with("/t/config.toml:"), "{errors:?}");
        assert!(errors[0].contains("network.admin_token_file: "), "{errors:?}");
        assert!(errors[0].contains(expected), "{body}: {errors:?}");
    }
}
