//! `[[network.rules]]` and `[[network.credentials]]`: fields checked where they are written,
//! secrets read at load and never shown.

use proxyd_config::{RuleAction, Value};

use crate::support::{TempDir, load_err, load_ok};

const READ_ONLY: &str = r#"allowed_domains = ["api.example.com"]
[[network.rules]]
name = "org-read"
host = "api.example.com"
methods = ["GET", "HEAD"]
paths = ["/repos/our-org/**"]
query = ["per_page", "state=open"]
headers = ["accept: application/*", "x-trace"]
"#;

#[test]
fn a_rule_is_read_with_every_field() {
    let config = load_ok(READ_ONLY);
    assert_eq!(config.rules.len(), 1);
    let rule = &config.rules[0];
    assert_eq!(rule.name, "org-read");
    assert_eq!(rule.host, "api.example.com");
    assert_eq!(rule.methods.as_deref(), Some(&["GET".to_owned(), "HEAD".to_owned()][..]));
    assert_eq!(rule.paths, ["/repos/our-org/**"]);
    assert_eq!(rule.action, RuleAction::Allow);
    assert_eq!(rule.query[1].value.as_deref(), Some("open"));
    assert!(rule.headers[0].prefix && rule.headers[0].value.as_deref() == Some("application/"));
    assert_eq!(rule.headers[1].value, None);
}

#[track_caller]
fn check_err(body: &str, expected: &[&str]) {
    assert_eq!(load_err(body), expected, "{body}");
}

#[test]
fn bad_rules_name_the_line_and_the_field() {
    check_err(
        "[[network.rules]]\nhost = \"a.example.com\"\nactoin = \"allow\"",
        &[
            "/t/config.toml:2: network.rules: entry 1: name is required",
            "/t/config.toml:4: network.rules: entry 1: unknown field \"actoin\" (known: name, host, methods, paths, query, headers, action, strip_headers, inject_header, inject_prefix, secret_env, secret_file)",
        ],
    );
    check_err(
        "[[network.rules]]\nname = \"x\"\nhost = \"*.com\"\naction = \"maybe\"",
        &[
            "/t/config.toml:4: network.rules: entry 1: host \"*.com\": invalid pattern \"*.com\": a wildcard needs at least two fixed labels after it (`*.example.com`, not `*.com`)",
            "/t/config.toml:5: network.rules: entry 1: action must be \"allow\" or \"deny\", found \"maybe\"",
        ],
    );
    check_err(
        "[[network.rules]]\nname = \"x\"\nhost = \"a.example.com\"\ninject_header = \"authorization\"",
        &[
            "/t/config.toml:2: network.rules: entry 1: inject_header needs secret_env or secret_file",
        ],
    );
    check_err(
        "rules = [\"x\"]",
        &[
            "/t/config.toml:2: network.rules: expected an array of tables ([[network.KEY]]), found array",
        ],
    );
}

#[test]
fn an_injected_secret_is_read_at_load_and_never_shown() {
    let dir = TempDir::new();
    let file = dir.write("token", "s3cr3t-value\n");
    let body = format!(
        "[[network.rules]]\nname = \"token\"\nhost = \"api.example.com\"\n\
         inject_header = \"authorization\"\ninject_prefix = \"Bearer \"\nsecret_file = \"{}\"",
        file.display()
    );
    let config = load_ok(&body);
    let inject = config.rules[0].inject.as_ref().expect("inject");
    assert_eq!(inject.secret.as_ref().map(|s| s.expose()), Some("s3cr3t-value"));
    assert!(!format!("{config:?}").contains("s3cr3t"));
    assert!(!config.render().contains("s3cr3t"));
    let rules = config.settings().into_iter().find(|s| s.key == "rules").expect("rules key");
    assert!(matches!(&rules.value, Value::Summary(entries) if entries[0].starts_with("token (")));
    // A missing secret is an error of the load (a failed reload keeps the old config).
    let missing = body.replace(&file.display().to_string(), "/nonexistent/token");
    let errors = load_err(&missing);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("rule \"token\": file /nonexistent/token"), "{errors:?}");
}

#[test]
fn credentials_need_hosts_and_a_secret() {
    check_err(
        "[[network.credentials]]\nname = \"gh\"\nenv = \"GITHUB_TOKEN\"",
        &[
            "/t/config.toml:2: network.credentials: entry 1: hosts is required: the hosts the real token may go to",
            "/t/config.toml:2: network.credentials: entry 1: secret_env or secret_file is required",
        ],
    );
    let errors = load_err(
        "[[network.credentials]]\nname = \"gh\"\nenv = \"GITHUB_TOKEN\"\nhosts = [\"api.github.example\"]\nsecret_env = \"PROXYD_TEST_UNSET_TOKEN_VAR\"",
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("env PROXYD_TEST_UNSET_TOKEN_VAR: not set"), "{errors:?}");
}
