//! Error reporting: file, line, suggestion, and every error of a load at once (SPEC §2.3).

use proxyd_config::{Config, ErrorKind, Location};

use crate::support::{TempDir, load_err, sources};

#[test]
fn unknown_keys_name_file_line_and_the_nearest_key() {
    let errors = load_err("mode = \"full\"\n\nalowed_domains = [\"a.com\"]\nfrobnicate = 1");
    assert_eq!(
        errors,
        [
            "/t/config.toml:4: unknown key network.alowed_domains (did you mean allowed_domains?)",
            "/t/config.toml:5: unknown key network.frobnicate",
        ]
    );
}

#[test]
fn unknown_key_errors_carry_data() {
    let errors = Config::from_toml_str("[network]\nsock_url = \"x\"\n", "/a.toml").unwrap_err();
    let error = &errors.0[0];
    assert_eq!(error.location, Location::Line("/a.toml".into(), 2));
    assert_eq!(
        error.kind,
        ErrorKind::UnknownKey { key: "sock_url".into(), suggestion: Some("socks_url") }
    );
}

#[test]
fn wrong_types_name_the_line_and_the_expected_type() {
    let errors = load_err("enabled = true\nmax_connections = \"many\"");
    assert_eq!(
        errors,
        ["/t/config.toml:3: network.max_connections: expected a positive integer, found string"]
    );
    let errors = Config::from_toml_str("network = \"on\"\n", "/a.toml").unwrap_err();
    assert_eq!(errors.to_string(), "/a.toml:1: network: expected a table, found string");
}

#[test]
fn every_error_of_a_load_is_reported_together() {
    let dir = TempDir::new();
    let first = dir.write(
        "first.toml",
        "[network]\nenabled = \"yes\"\nalowed_domains = []\nproxy_url = \"host:1\"\n",
    );
    let second = dir.write("second.toml", "[network]\ndenied_domains = [\"*.com\"]\n");
    let missing = dir.path().join("missing.toml");
    let errors =
        Config::load(&sources(&[&first, &second, &missing], &["network.mode=fast", "bogus"]))
            .unwrap_err();
    let first = first.display();
    let second = second.display();
    let missing = missing.display();
    let expected = [
        format!("{first}:2: network.enabled: expected a boolean, found string"),
        format!("{first}:3: unknown key network.alowed_domains (did you mean allowed_domains?)"),
        format!(
            "{first}:4: network.proxy_url: host \"host\" is not an ip address or localhost \
             (listener names are not resolved)"
        ),
        format!(
            "{second}:2: network.denied_domains: invalid pattern \"*.com\": a wildcard needs at \
             least two fixed labels after it (`*.example.com`, not `*.com`)"
        ),
        format!("{missing}: config file not found"),
        "-c: network.mode: expected \"full\" or \"limited\", found \"fast\"".to_owned(),
        "-c: invalid override \"bogus\": expected network.KEY=VALUE".to_owned(),
    ];
    assert_eq!(errors.to_string(), expected.join("\n"));
    assert_eq!(errors.len(), expected.len());
}

#[test]
fn toml_syntax_errors_name_file_and_line() {
    for (text, line, message) in [
        ("[network]\nmode = \"full\nenabled = true\n", 2, "invalid basic string"),
        ("[network]\nmode = \n", 2, "string values must be quoted"),
        ("[network]\nmode = \"full\"\nmode = \"limited\"\n", 3, "duplicate key"),
        ("[network\nmode = \"full\"\n", 1, "unclosed table"),
    ] {
        let errors = Config::from_toml_str(text, "/s.toml").unwrap_err();
        let first = errors.0[0].to_string();
        let prefix = format!("/s.toml:{line}: invalid toml: ");
        assert!(first.starts_with(&prefix), "{text:?}: {first}");
        assert!(first.contains(message), "{text:?}: {first}");
    }
}

#[test]
fn a_syntax_error_in_one_file_does_not_hide_errors_in_another() {
    let dir = TempDir::new();
    let broken = dir.write("broken.toml", "[network\n");
    let bad = dir.write("bad.toml", "[network]\nmode = 1\n");
    let errors = Config::load(&sources(&[&broken, &bad], &[])).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors}");
    assert!(errors.0[1].to_string().contains("network.mode: expected"), "{errors}");
}

#[test]
fn pattern_errors_name_the_key_and_the_line_of_each_entry() {
    let errors = load_err(
        "allowed_domains = [\n  \"ok.example.com\",\n  \"\",\n  \"**.org\",\n  7,\n]\n\
         denied_domains = [\"a.com:99999\"]",
    );
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].starts_with("/t/config.toml:4: network.allowed_domains: invalid pattern \"\": ")
    );
    assert!(
        errors[1]
            .starts_with("/t/config.toml:5: network.allowed_domains: invalid pattern \"**.org\": ")
    );
    assert_eq!(
        errors[2],
        "/t/config.toml:6: network.allowed_domains: expected an array of strings, found integer"
    );
    assert!(errors[3].starts_with(
        "/t/config.toml:8: network.denied_domains: invalid pattern \"a.com:99999\": "
    ));
}

#[test]
fn values_are_checked_even_when_a_later_source_overrides_them() {
    let dir = TempDir::new();
    let bad = dir.write("bad.toml", "[network]\nmode = \"fast\"\n");
    let errors = Config::load(&sources(&[&bad], &["network.mode=full"])).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors.to_string().starts_with(&format!("{}:2: network.mode", bad.display())));
}
