//! The admin API of the built binary, through real HTTP with curl (SPEC §8.1, §8.3): every
//! endpoint and its JSON shape, 404/405, and every protection.

use std::net::Ipv4Addr;

use anyhow::{Context as _, ensure};
use proxyd_test_support::{HttpOrigin, temp_dir};
use serde_json::{Value, json};

use crate::admin_support::{connect_head, curl_switch_mode, get, logged_addr, post, request};
use crate::support::{Proxyd, assert_blocked, curl, network};

/// The binary with `extra` config, and its admin address.
async fn start(extra: &str) -> anyhow::Result<(Proxyd, std::net::SocketAddr)> {
    let proxyd = Proxyd::start(&network(extra), &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    Ok((proxyd, admin))
}

async fn mode_of(admin: std::net::SocketAddr) -> anyhow::Result<Value> {
    Ok(get(admin, "/health").await?.expect(200)?["mode"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_version_mode_and_every_listener() -> anyhow::Result<()> {
    // SOCKS5 on, so all three listeners are up.
    let toml = "[network]\nproxy_url = \"127.0.0.1:0\"\nadmin_url = \"127.0.0.1:0\"\n\
                socks_url = \"127.0.0.1:0\"\nallowed_domains = [\"localhost\"]\n";
    let proxyd = Proxyd::start(toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let socks = logged_addr(&proxyd, "socks5").await?;

    let health = get(admin, "/health").await?.expect(200)?;
    let expected = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": "full",
        "listeners": {
            "http": proxyd.addr().to_string(),
            "socks5": socks.to_string(),
            "admin": admin.to_string(),
        },
    });
    ensure!(health == expected, "{health}");
    // HEAD is answered like GET, without a body.
    let head = admin_head(admin, "/health").await?;
    ensure!(head == 200, "HEAD /health: {head}");
    Ok(())
}

async fn admin_head(admin_addr: std::net::SocketAddr, path: &str) -> anyhow::Result<u16> {
    Ok(request(admin_addr, path, &["-I"]).await?.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_every_value_and_where_it_came_from() -> anyhow::Result<()> {
    let (_proxyd, admin) = start(r#"allowed_domains = ["localhost"]"#).await?;
    let config = get(admin, "/config").await?.expect(200)?;
    let network = config["network"].as_object().with_context(|| format!("{config}"))?;
    let origins = config["origins"].as_object().with_context(|| format!("{config}"))?;
    ensure!(network["allowed_domains"] == json!(["localhost"]), "{config}");
    ensure!(network["denied_domains"] == json!([]), "{config}");
    ensure!(network["mode"] == "full" && network["enable_socks5"] == false, "{config}");
    ensure!(network["proxy_url"] == "127.0.0.1:0", "configured addresses are shown: {config}");
    ensure!(network["drain_timeout"] == "10s" && network["blocked_log_size"] == 200, "{config}");
    ensure!(network["admin_token"].is_null(), "{config}");
    // Every key shown has an origin: the file and line, or the default.
    let keys: Vec<&String> = network.keys().collect();
    let origin_keys: Vec<&String> = origins.keys().collect();
    ensure!(keys == origin_keys, "{config}");
    let from_file = origins["allowed_domains"].as_str().unwrap_or_default();
    ensure!(from_file.contains("config.toml:6"), "allowed_domains origin {from_file:?}");
    ensure!(origins["mode"] == "default", "{config}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_are_shown_normalised() -> anyhow::Result<()> {
    let (_proxyd, admin) = start(
        r#"allowed_domains = ["Example.COM.", "**.Docs.Test", "localhost:8000"]
denied_domains = ["Bad.Test", "10.0.0.0/8"]"#,
    )
    .await?;
    let patterns = get(admin, "/patterns").await?.expect(200)?;
    let expected = json!({
        "allowed": ["example.com", "**.docs.test", "localhost:8000"],
        "denied": ["bad.test", "10.0.0.0/8"],
    });
    ensure!(patterns == expected, "{patterns}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_log_is_a_ring_read_with_since() -> anyhow::Result<()> {
    let (proxyd, admin) = start("blocked_log_size = 3").await?;
    let empty = get(admin, "/blocked").await?.expect(200)?;
    ensure!(empty == json!({"blocked": [], "total": 0}), "{empty}");

    for host in ["a.test", "b.test", "c.test"] {
        let response = curl(proxyd.addr(), &[&format!("http://{host}/")]).await?;
        assert_blocked(&response, 403, "blocked-by-allowlist", "not_allowed")?;
    }
    // A blocked CONNECT is logged too.
    let head = connect_head(proxyd.addr(), "d.test:443").await?;
    ensure!(head.status == 403, "{head:?}");

    let all = get(admin, "/blocked").await?.expect(200)?;
    ensure!(all["total"] == 4, "{all}");
    let entries = all["blocked"].as_array().with_context(|| format!("{all}"))?;
    // The ring holds the last three, oldest first.
    let summary: Vec<(u64, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap_or(0),
                e["host"].as_str().unwrap_or(""),
                e["protocol"].as_str().unwrap_or(""),
            )
        })
        .collect();
    ensure!(
        summary == [(2, "b.test", "http"), (3, "c.test", "http"), (4, "d.test", "http-connect")],
        "{all}"
    );
    let first = &entries[0];
    let keys: Vec<&str> =
        first.as_object().context("entry")?.keys().map(String::as_str).collect::<Vec<_>>();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    ensure!(
        sorted
            == [
                "client",
                "host",
                "id",
                "method",
                "mode",
                "port",
                "protocol",
                "reason",
                "timestamp"
            ],
        "{first}"
    );
    ensure!(first["port"] == 80 && first["method"] == "GET", "{first}");
    ensure!(first["reason"] == "not_allowed" && first["mode"] == "full", "{first}");
    ensure!(entries[2]["method"] == "CONNECT" && entries[2]["port"] == 443, "{all}");
    let client: std::net::SocketAddr =
        first["client"].as_str().context("client")?.parse().context("client address")?;
    ensure!(client.ip() == Ipv4Addr::LOCALHOST, "{first}");
    let timestamp = first["timestamp"].as_str().context("timestamp")?;
    ensure!(humantime::parse_rfc3339(timestamp).is_ok(), "timestamp {timestamp:?}");

    let newer = get(admin, "/blocked?since=3").await?.expect(200)?;
    ensure!(newer["total"] == 4, "{newer}");
    ensure!(newer["blocked"].as_array().map(Vec::len) == Some(1), "{newer}");
    ensure!(newer["blocked"][0]["id"] == 4, "{newer}");
    let none = get(admin, "/blocked?since=4").await?.expect(200)?;
    ensure!(none == json!({"blocked": [], "total": 4}), "{none}");
    // Reading never removes entries.
    let again = get(admin, "/blocked").await?.expect(200)?;
    ensure!(again == all, "{again} != {all}");

    get(admin, "/blocked?since=abc").await?.expect_error(400, "since")?;
    get(admin, "/blocked?sinse=1").await?.expect_error(400, "since")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_switch_with_curl_as_written() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let (proxyd, admin) = start(r#"allowed_domains = ["localhost"]"#).await?;
    let url = format!("http://localhost:{}/w", origin.addr().port());
    let post = curl(proxyd.addr(), &["-X", "POST", "-d", "x", &url]).await?;
    ensure!(post.code == 200, "{post:?}");

    curl_switch_mode(admin, "limited").await?;
    ensure!(mode_of(admin).await? == "limited");
    let post = curl(proxyd.addr(), &["-X", "POST", "-d", "x", &url]).await?;
    let body = assert_blocked(&post, 403, "blocked-by-method-policy", "method_not_allowed")?;
    ensure!(body["mode"] == "limited", "{body}");
    let read = curl(proxyd.addr(), &[&url]).await?;
    ensure!(read.code == 200, "{read:?}");

    curl_switch_mode(admin, "full").await?;
    ensure!(mode_of(admin).await? == "full");
    let post = curl(proxyd.addr(), &["-X", "POST", "-d", "x", &url]).await?;
    ensure!(post.code == 200, "{post:?}");
    ensure!(origin.hits() == 3, "{:?}", origin.requests());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mode_bodies_are_400_with_the_reason() -> anyhow::Result<()> {
    let (_proxyd, admin) = start(r#"allowed_domains = ["localhost"]"#).await?;
    let cases = [
        ("", "not json"),
        ("limited", "not json"),
        (r#"{"mode":"limited""#, "not json"),
        (r#"["limited"]"#, "object"),
        ("{}", r#""mode""#),
        (r#"{"mode":1}"#, r#""mode""#),
        (r#"{"mode":null}"#, r#""mode""#),
        (r#"{"mode":"turbo"}"#, r#""full" or "limited""#),
        (r#"{"mode":"Limited"}"#, r#""full" or "limited""#),
        (r#"{"mode":"limited","force":true}"#, "force"),
    ];
    for (body, reason) in cases {
        let reply = post(admin, "/mode", body).await?;
        reply.expect_error(400, reason).with_context(|| format!("body {body:?}"))?;
        ensure!(mode_of(admin).await? == "full", "body {body:?} switched the mode");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_decision_counters() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let (proxyd, admin) = start(r#"allowed_domains = ["localhost"]"#).await?;
    let ok = curl(proxyd.addr(), &[&format!("http://localhost:{}/", origin.addr().port())]).await?;
    ensure!(ok.code == 200, "{ok:?}");
    for _ in 0..2 {
        let blocked = curl(proxyd.addr(), &["http://unknown.test/"]).await?;
        ensure!(blocked.code == 403, "{blocked:?}");
    }
    let head = connect_head(proxyd.addr(), "unknown.test:443").await?;
    ensure!(head.status == 403, "{head:?}");

    let reply = get(admin, "/metrics").await?;
    ensure!(reply.status == 200, "{reply:?}");
    let content_type = reply.head.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "not a prometheus text format: {content_type:?}"
    );
    let metrics = &reply.body;
    let expected = [
        "# TYPE proxyd_decisions_total counter",
        r#"proxyd_decisions_total{protocol="http",decision="allow",reason="allowed"} 1"#,
        r#"proxyd_decisions_total{protocol="http",decision="block",reason="not_allowed"} 2"#,
        r#"proxyd_decisions_total{protocol="http-connect",decision="block",reason="not_allowed"} 1"#,
        "# TYPE proxyd_connect_seconds histogram",
        "proxyd_connect_seconds_count 1",
        "# TYPE proxyd_dns_seconds histogram",
        "# TYPE proxyd_active_connections gauge",
        r#"proxyd_active_connections{listener="http"}"#,
        "# TYPE proxyd_active_tunnels gauge",
        r#"proxyd_active_tunnels{listener="http"} 0"#,
    ];
    for line in expected {
        ensure!(metrics.lines().any(|l| l.starts_with(line)), "no {line:?} in:\n{metrics}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap_or_default();
        ensure!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() -> anyhow::Result<()> {
    let (_proxyd, admin) = start(r#"allowed_domains = ["localhost"]"#).await?;
    for (method, path) in [("GET", "/"), ("GET", "/nope"), ("POST", "/nope"), ("GET", "/health/x")]
    {
        let reply = request(admin, path, &["-X", method]).await?;
        reply.expect_error(404, "no such endpoint").with_context(|| format!("{method} {path}"))?;
    }
    let wrong = [
        ("GET", "/mode"),
        ("GET", "/reload"),
        ("POST", "/health"),
        ("POST", "/blocked"),
        ("DELETE", "/blocked"),
        ("PUT", "/config"),
        ("PATCH", "/patterns"),
        ("POST", "/metrics"),
    ];
    for (method, path) in wrong {
        let reply = request(admin, path, &["-X", method]).await?;
        reply.expect_error(405, "method").with_context(|| format!("{method} {path}"))?;
    }
    ensure!(mode_of(admin).await? == "full");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_must_name_loopback_or_the_listener() -> anyhow::Result<()> {
    let (_proxyd, admin) = start(r#"allowed_domains = ["localhost"]"#).await?;
    let port = admin.port();
    let refused = [
        "evil.com".to_owned(),
        format!("evil.com:{port}"),
        format!("127.0.0.1.evil.com:{port}"),
        format!("localhost.evil.com:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1).max(1)),
    ];
    for host in &refused {
        let header = format!("Host: {host}");
        let reply = request(admin, "/health", &["-H", &header]).await?;
        reply.expect_error(403, "host").with_context(|| header.clone())?;
        let reply =
            request(admin, "/mode", &["-H", &header, "-X", "POST", "-d", r#"{"mode":"limited"}"#])
                .await?;
        reply.expect_error(403, "host").with_context(|| header.clone())?;
    }
    ensure!(mode_of(admin).await? == "full", "a refused request switched the mode");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), "LOCALHOST".into()] {
        let reply = request(admin, "/health", &["-H", &format!("Host: {host}")]).await?;
        reply.expect(200).with_context(|| host.clone())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_403() -> anyhow::Result<()> {
    let (_proxyd, admin) = start(r#"allowed_domains = ["localhost"]"#).await?;
    let limited = r#"{"mode":"limited"}"#;
    for header in [
        "Origin: https://evil.com",
        "Origin: null",
        "Origin: http://localhost.evil.com",
        "Sec-Fetch-Site: cross-site",
    ] {
        let reply = request(admin, "/mode", &["-H", header, "-X", "POST", "-d", limited]).await?;
        reply.expect_error(403, "cross-site").with_context(|| header.to_owned())?;
        let reply = request(admin, "/reload", &["-H", header, "-X", "POST"]).await?;
        reply.expect_error(403, "cross-site").with_context(|| header.to_owned())?;
    }
    ensure!(mode_of(admin).await? == "full", "a cross-site post switched the mode");

    // A loopback origin and a same-origin fetch are fine.
    for header in ["Origin: http://localhost:3000", "Sec-Fetch-Site: same-origin"] {
        let reply = request(admin, "/mode", &["-H", header, "-X", "POST", "-d", limited]).await?;
        ensure!(reply.expect(200)?["mode"] == "limited", "{header}: {reply:?}");
        curl_switch_mode(admin, "full").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_everything_but_health() -> anyhow::Result<()> {
    let (_proxyd, admin) =
        start("allowed_domains = [\"localhost\"]\nadmin_token = \"s3cret\"").await?;
    ensure!(get(admin, "/health").await?.expect(200)?["status"] == "ok");

    for path in ["/config", "/patterns", "/blocked", "/metrics"] {
        for args in
            [&[][..], &["-H", "Authorization: Bearer wrong"], &["-H", "Authorization: s3cret"]]
        {
            let reply = request(admin, path, args).await?;
            reply.expect_error(401, "token").with_context(|| format!("{path} {args:?}"))?;
            ensure!(reply.head.header("www-authenticate") == Some("Bearer"), "{reply:?}");
        }
        let reply = request(admin, path, &["-H", "Authorization: Bearer s3cret"]).await?;
        ensure!(reply.status == 200, "{path}: {reply:?}");
    }
    let mode = post(admin, "/mode", r#"{"mode":"limited"}"#).await?;
    mode.expect_error(401, "token")?;
    let reload = request(admin, "/reload", &["-X", "POST"]).await?;
    reload.expect_error(401, "token")?;
    ensure!(mode_of(admin).await? == "full", "an unauthorised post switched the mode");

    let bearer = ["-H", "Authorization: Bearer s3cret"];
    let mode = request(
        admin,
        "/mode",
        &[&bearer[..], &["-X", "POST", "-d", r#"{"mode":"limited"}"#]].concat(),
    )
    .await?;
    ensure!(mode.expect(200)?["mode"] == "limited", "{mode:?}");
    ensure!(mode_of(admin).await? == "limited");
    // The token itself is never shown.
    let config = request(admin, "/config", &bearer).await?.expect(200)?;
    ensure!(config["network"]["admin_token"] == "(redacted)", "{config}");
    ensure!(!config.to_string().contains("s3cret"), "{config}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_file_is_read_and_trimmed() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-admin-token")?;
    let path = dir.join("token");
    std::fs::write(&path, "from-file\n")?;
    let extra = format!(
        "allowed_domains = [\"localhost\"]\nadmin_token_file = {:?}",
        path.display().to_string()
    );
    let (_proxyd, admin) = start(&extra).await?;
    request(admin, "/config", &[]).await?.expect_error(401, "token")?;
    let config =
        request(admin, "/config", &["-H", "Authorization: Bearer from-file"]).await?.expect(200)?;
    ensure!(config["network"]["admin_token"] == "(redacted)", "{config}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_admin_url_is_clamped_with_a_warning() -> anyhow::Result<()> {
    let toml = "[network]\nproxy_url = \"127.0.0.1:0\"\nadmin_url = \"0.0.0.0:0\"\n\
                enable_socks5 = false\nallowed_domains = [\"localhost\"]\n";
    let proxyd = Proxyd::start(toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    ensure!(admin.ip() == Ipv4Addr::LOCALHOST, "admin bound {admin} instead of loopback");
    let warning = proxyd
        .wait_for_event("the admin clamping warning", |event| {
            event["level"] == "WARN"
                && event["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("dangerously_allow_non_loopback_admin"))
        })
        .await?;
    ensure!(
        warning["fields"]["message"].as_str().is_some_and(|m| m.contains("admin_url")),
        "{warning}"
    );
    let health = get(admin, "/health").await?.expect(200)?;
    ensure!(health["listeners"]["admin"] == admin.to_string(), "{health}");
    Ok(())
}
