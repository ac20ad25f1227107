//! The effective config as text, with each key's origin.

use proxyd_config::{Config, Origin, Value};

use crate::support::{TempDir, sources};

#[test]
fn render_names_each_keys_origin() {
    let dir = TempDir::new();
    let file = dir.write("c.toml", "[other]\nx = 1\n[network]\nallowed_domains = [\"a.com\"]\n");
    let config =
        Config::load(&sources(&[&file], &["network.mode=limited", "network.admin_token=t"]))
            .unwrap();
    let text = config.render();
    let header = format!("# {}: [network] line 3\n", file.display());
    assert!(text.starts_with(&format!("{header}[network]\nenabled = true  # default\n")), "{text}");
    assert!(text.contains("mode = \"limited\"  # from -c\n"), "{text}");
    assert!(
        text.contains(&format!("allowed_domains = [\"a.com\"]  # from {}:4\n", file.display())),
        "{text}"
    );
    assert!(text.contains("proxy_url = \"127.0.0.1:3128\"  # default\n"), "{text}");
    assert!(text.contains("idle_timeout = \"5m\"  # default\n"), "{text}");
    assert!(text.contains("response_timeout = \"30s\"  # default\n"), "{text}");
    assert!(text.contains("# admin_token = (redacted)  # from -c\n"), "{text}");
    assert!(text.contains("# admin_token_file = (not set)  # default\n"), "{text}");
    assert!(text.contains("mitm = false  # default\n"), "{text}");
    assert_eq!(text.lines().count(), 36, "{text}");
}

#[test]
fn rendered_config_loads_back_to_the_same_values() {
    let config = Config::from_toml_str(
        "[network]\nmode = \"limited\"\nallowed_domains = ['x.com', \"q\\\"\"]\n",
        "a.toml",
    );
    // The odd entry is refused; render a valid one instead.
    assert!(config.is_err());
    let config = Config::from_toml_str(
        "[network]\nmode = \"limited\"\nallowed_domains = ['x.com', '*.y.org:443']\n\
         proxy_url = \"[::1]:0\"\ndecider_timeout = \"90s\"\nallow_unix_sockets = ['/a b/c.sock']\n",
        "a.toml",
    )
    .unwrap();
    let again = Config::from_toml_str(&config.render(), "rendered.toml").unwrap();
    let values =
        |c: &Config| c.settings().into_iter().map(|s| (s.key, s.value)).collect::<Vec<_>>();
    assert_eq!(values(&again), values(&config));
}

#[test]
fn settings_list_every_key_once_with_typed_values() {
    let config = Config::default();
    let settings = config.settings();
    assert_eq!(settings.len(), 34);
    let mut keys: Vec<_> = settings.iter().map(|s| s.key).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 34);
    let get = |key: &str| settings.iter().find(|s| s.key == key).unwrap().value.clone();
    assert_eq!(get("enabled"), Value::Bool(true));
    assert_eq!(get("max_connections"), Value::Integer(4096));
    assert_eq!(get("allowed_domains"), Value::List(vec![]));
    assert_eq!(get("admin_token"), Value::Unset);
    assert_eq!(config.origin("no_such_key"), &Origin::Default);
}
