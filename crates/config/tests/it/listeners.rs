//! Listener addresses, clamping to loopback, and the restart-needed rule.

use proxyd_config::Config;

use crate::support::{load_err, load_ok};

/// `proxy_url = input` is accepted and binds `expected`.
fn binds(input: &str, expected: &str) {
    let config =
        load_ok(&format!("dangerously_allow_non_loopback_proxy = true\nproxy_url = {input:?}"));
    assert_eq!(config.http_addr.to_string(), expected, "{input}");
    assert!(config.warnings.is_empty(), "{input}: {:?}", config.warnings);
}

/// `proxy_url = input` is refused on line 2 with `reason`.
fn refused(input: &str, reason: &str) {
    let errors = load_err(&format!("proxy_url = {input:?}"));
    assert_eq!(errors, [format!("/t/config.toml:2: network.proxy_url: {reason}")], "{input}");
}

#[test]
fn listener_addresses_parse() {
    binds("127.0.0.1:3128", "127.0.0.1:3128");
    binds("http://127.0.0.1:3128", "127.0.0.1:3128");
    binds("http://127.0.0.1:3128/", "127.0.0.1:3128");
    binds("socks5h://127.0.0.1:1080", "127.0.0.1:1080");
    binds("https://10.1.2.3:443", "10.1.2.3:443");
    binds("[::1]:3128", "[::1]:3128");
    binds("http://[2001:db8::1]:3128", "[2001:db8::1]:3128");
    binds("localhost:3128", "127.0.0.1:3128");
    binds("http://localhost:0", "127.0.0.1:0");
    binds("0.0.0.0:0", "0.0.0.0:0");
}

#[test]
fn bad_listener_addresses_are_refused() {
    refused("127.0.0.1:70000", "port 70000 is out of range 0-65535");
    refused("127.0.0.1", "missing port (write host:port; port 0 lets the os pick)");
    refused(
        "proxy.internal:3128",
        "host \"proxy.internal\" is not an ip address or localhost (listener names are not resolved)",
    );
    refused(
        "127.1:3128",
        "host \"127.1\" is not an ip address or localhost (listener names are not resolved)",
    );
    refused("::1:3128", "an ipv6 address needs brackets, as in [::1]:3128");
    refused("http://127.0.0.1:3128/path", "a listener address has no path (found \"/path\")");
    refused("", "empty address");
}

#[test]
fn non_loopback_binds_are_clamped_with_a_warning_naming_the_flag() {
    let config = load_ok(
        "proxy_url = \"0.0.0.0:3128\"\nsocks_url = \"[::]:1080\"\nadmin_url = \"192.168.1.2:0\"",
    );
    assert_eq!(config.http_addr.to_string(), "127.0.0.1:3128");
    assert_eq!(config.socks_addr.to_string(), "[::1]:1080");
    assert_eq!(config.admin_addr.to_string(), "127.0.0.1:0");
    assert_eq!(
        config.warnings,
        [
            "network.proxy_url 0.0.0.0:3128 is not a loopback address: bound to 127.0.0.1:3128 \
             instead (set network.dangerously_allow_non_loopback_proxy = true to bind it)",
            "network.admin_url 192.168.1.2:0 is not a loopback address: bound to 127.0.0.1:0 \
             instead (set network.dangerously_allow_non_loopback_admin = true to bind it)",
            "network.socks_url [::]:1080 is not a loopback address: bound to [::1]:1080 \
             instead (set network.dangerously_allow_non_loopback_proxy = true to bind it)",
        ]
    );
    assert!(config.render().contains("# warning: network.proxy_url 0.0.0.0:3128"));
}

#[test]
fn each_flag_unlocks_only_its_listeners() {
    let body = "proxy_url = \"0.0.0.0:1\"\nsocks_url = \"0.0.0.0:2\"\nadmin_url = \"0.0.0.0:3\"";
    let proxy = load_ok(&format!("{body}\ndangerously_allow_non_loopback_proxy = true"));
    assert_eq!(proxy.http_addr.to_string(), "0.0.0.0:1");
    assert_eq!(proxy.socks_addr.to_string(), "0.0.0.0:2");
    assert_eq!(proxy.admin_addr.to_string(), "127.0.0.1:3");
    assert_eq!(proxy.warnings.len(), 1);
    assert!(proxy.warnings[0].contains("dangerously_allow_non_loopback_admin"));

    let admin = load_ok(&format!("{body}\ndangerously_allow_non_loopback_admin = true"));
    assert_eq!(admin.http_addr.to_string(), "127.0.0.1:1");
    assert_eq!(admin.socks_addr.to_string(), "127.0.0.1:2");
    assert_eq!(admin.admin_addr.to_string(), "0.0.0.0:3");
    assert_eq!(admin.warnings.len(), 2);
}

#[test]
fn unix_sockets_keep_every_listener_on_loopback() {
    let config = load_ok(
        "proxy_url = \"0.0.0.0:1\"\nsocks_url = \"[::]:2\"\nadmin_url = \"10.0.0.1:3\"\n\
         dangerously_allow_non_loopback_proxy = true\ndangerously_allow_non_loopback_admin = true\n\
         allow_unix_sockets = [\"/run/docker.sock\"]",
    );
    assert_eq!(config.http_addr.to_string(), "127.0.0.1:1");
    assert_eq!(config.socks_addr.to_string(), "[::1]:2");
    assert_eq!(config.admin_addr.to_string(), "127.0.0.1:3");
    let clamps: Vec<&String> =
        config.warnings.iter().filter(|w| w.contains("is not a loopback address")).collect();
    assert_eq!(clamps.len(), 3, "{:?}", config.warnings);
    for warning in clamps {
        assert!(warning.contains("because allow_unix_sockets is set"), "{warning}");
    }
    // Loopback listeners need no clamp warning; the missing socket is warned about.
    let warnings = load_ok("allow_unix_sockets = [\"/run/a.sock\"]").warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("/run/a.sock") && warnings[0].contains("refused"), "{warnings:?}");
}

#[test]
fn reloads_that_change_listeners_or_switches_need_a_restart() {
    let old = load_ok("proxy_url = \"127.0.0.1:0\"");
    let same =
        load_ok("proxy_url = \"localhost:0\"\nmode = \"limited\"\nallowed_domains = [\"a.com\"]");
    assert_eq!(old.restart_required(&same), Vec::<&str>::new());
    let changed = load_ok(
        "proxy_url = \"127.0.0.1:1\"\nadmin_url = \"[::1]:8080\"\nsocks_url = \"127.0.0.1:8082\"\n\
         enabled = false\nenable_socks5 = false\nenable_socks5_udp = false",
    );
    assert_eq!(
        old.restart_required(&changed),
        ["enabled", "proxy_url", "admin_url", "enable_socks5", "socks_url", "enable_socks5_udp"]
    );
    assert_eq!(Config::default().restart_required(&Config::default()), Vec::<&str>::new());
}
