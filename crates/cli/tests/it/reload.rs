//! Runtime changes to the built binary (SPEC §2.3, §6.2, §8.2): `POST /reload` and `SIGHUP`
//! with good, broken and restart-needing files, and a mode switch that closes open tunnels.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, ensure};
use proxyd_test_support::{EchoTcp, HttpOrigin, TempDir, temp_dir};
use serde_json::{Value, json};

use crate::admin_support::{
    CLOSE_WITHIN, closed_within, connect_head, curl_switch_mode, get, logged_addr,
    open_socks_tunnel, open_tunnel, post, write,
};
use crate::support::{Proxyd, assert_blocked, curl, network};

/// The binary with the listeners of `network("")` in its own file, and the allowlist in a
/// second `--config` file the test edits.
struct Reloadable {
    proxyd: Proxyd,
    admin: SocketAddr,
    file: PathBuf,
    _dir: TempDir,
}

impl Reloadable {
    async fn start(allowlist: &str) -> anyhow::Result<Reloadable> {
        Reloadable::start_with(allowlist, &[]).await
    }

    async fn start_with(allowlist: &str, args: &[&str]) -> anyhow::Result<Reloadable> {
        let dir = temp_dir("proxyd-reload")?;
        let file = dir.join("policy.toml");
        write(&file, allowlist)?;
        let path = file.to_str().context("temp path is not utf-8")?;
        let mut all = vec!["--config", path];
        all.extend_from_slice(args);
        let proxyd = Proxyd::start(&network(""), &all).await?;
        let admin = logged_addr(&proxyd, "admin").await?;
        Ok(Reloadable { proxyd, admin, file, _dir: dir })
    }

    /// curl through the proxy to `host` (a `*.localhost` name) on the origin's port.
    async fn fetch(&self, origin: &HttpOrigin, host: &str) -> anyhow::Result<crate::support::Curl> {
        curl(self.proxyd.addr(), &[&format!("http://{host}:{}/", origin.addr().port())]).await
    }

    async fn expect_allowed(&self, origin: &HttpOrigin, host: &str) -> anyhow::Result<()> {
        let response = self.fetch(origin, host).await?;
        ensure!(response.code == 200, "{host} should be allowed: {response:?}");
        ensure!(response.body_text() == "origin GET /\n", "{response:?}");
        Ok(())
    }

    async fn expect_blocked(&self, origin: &HttpOrigin, host: &str) -> anyhow::Result<()> {
        let response = self.fetch(origin, host).await?;
        let reason = "not_allowed_local";
        assert_blocked(&response, 403, "blocked-by-allowlist", reason)
            .with_context(|| format!("{host} should be blocked"))?;
        Ok(())
    }

    async fn patterns(&self) -> anyhow::Result<Value> {
        get(self.admin, "/patterns").await?.expect(200)
    }

    async fn reloads(&self, result: &str) -> anyhow::Result<u64> {
        let metrics = get(self.admin, "/metrics").await?.body;
        let prefix = format!("proxyd_reloads_total{{result=\"{result}\"}} ");
        Ok(metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().unwrap_or(0)))
    }
}

const FIRST: &str = "[network]\nallowed_domains = [\"first.localhost\"]\n";
const SECOND: &str = "[network]\nallowed_domains = [\"second.localhost\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_an_edited_allowlist() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = Reloadable::start(FIRST).await?;
    proxy.expect_allowed(&origin, "first.localhost").await?;
    proxy.expect_blocked(&origin, "second.localhost").await?;

    write(&proxy.file, SECOND)?;
    let reply = post(proxy.admin, "/reload", "").await?.expect(200)?;
    ensure!(reply == json!({"status": "reloaded", "pending_restart": []}), "{reply}");

    proxy.expect_allowed(&origin, "second.localhost").await?;
    proxy.expect_blocked(&origin, "first.localhost").await?;
    ensure!(proxy.patterns().await? == json!({"allowed": ["second.localhost"], "denied": []}));
    let config = get(proxy.admin, "/config").await?.expect(200)?;
    ensure!(config["network"]["allowed_domains"] == json!(["second.localhost"]), "{config}");
    ensure!(proxy.reloads("ok").await? == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reload_is_refused_and_the_old_policy_keeps_answering() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = Reloadable::start(FIRST).await?;
    let path = proxy.file.display().to_string();
    let cases: [(&str, &[&str]); 4] = [
        // A syntax error: the file and its line.
        ("[network]\nallowed_domains = [\"second.localhost\"\n", &[":2"]),
        // An unknown key, with the suggestion.
        (
            "[network]\nalowed_domains = [\"second.localhost\"]\n",
            &[":2", "alowed_domains", "allowed_domains"],
        ),
        // Two errors of one file are reported together: a wrong type and a bad pattern.
        (
            "[network]\nallowed_domains = [\"second.localhost\"]\nenable_socks5_udp = \"yes\"\ndenied_domains = [\"*.com\"]\n",
            &[":3", "enable_socks5_udp", ":4", "*.com"],
        ),
        // A pattern error alone.
        (
            "[network]\nallowed_domains = [\"https://second.localhost\"]\n",
            &["https://second.localhost"],
        ),
    ];
    for (text, expected) in cases {
        write(&proxy.file, text)?;
        let reply = post(proxy.admin, "/reload", "").await?;
        let body = reply.expect(422).with_context(|| format!("reload of {text:?}"))?;
        ensure!(body["status"] == "error", "{body}");
        ensure!(body["message"].as_str().is_some_and(|m| m.contains("stays in force")), "{body}");
        let errors = body["errors"].as_array().with_context(|| format!("{body}"))?;
        let all = errors.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
        ensure!(all.contains(&path), "errors should name {path}: {body}");
        for what in expected {
            ensure!(all.contains(what), "errors should mention {what:?}: {body}");
        }
        // The old config is still in force.
        proxy.expect_allowed(&origin, "first.localhost").await?;
        proxy.expect_blocked(&origin, "second.localhost").await?;
        ensure!(proxy.patterns().await?["allowed"] == json!(["first.localhost"]));
    }
    // A missing file is an error too.
    std::fs::remove_file(&proxy.file)?;
    let body = post(proxy.admin, "/reload", "").await?.expect(422)?;
    ensure!(body.to_string().contains(&path), "{body}");
    proxy.expect_allowed(&origin, "first.localhost").await?;
    ensure!(proxy.reloads("error").await? == 5);
    ensure!(proxy.reloads("ok").await? == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_changes_a_listener_is_refused_with_restart_needed() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = Reloadable::start(FIRST).await?;
    let cases = [
        ("proxy_url = \"127.0.0.1:1\"", "proxy_url"),
        ("admin_url = \"127.0.0.1:1\"", "admin_url"),
        ("enable_socks5 = true", "enable_socks5"),
        ("enabled = false", "enabled"),
    ];
    for (line, key) in cases {
        // The allowlist edit in the same file is refused with the rest.
        write(&proxy.file, &format!("{SECOND}{line}\n"))?;
        let body = post(proxy.admin, "/reload", "").await?.expect(409)?;
        ensure!(body["status"] == "error", "{body}");
        ensure!(body["message"].as_str().is_some_and(|m| m.contains("restart")), "{body}");
        ensure!(body["errors"] == json!([format!("{key} changed: restart needed")]), "{body}");
        proxy.expect_allowed(&origin, "first.localhost").await?;
        proxy.expect_blocked(&origin, "second.localhost").await?;
    }
    ensure!(proxy.reloads("restart_needed").await? == 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_names_pending_keys_and_applies_a_new_mode() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let echo = EchoTcp::start().await?;
    let proxy = Reloadable::start(FIRST).await?;
    let mut tunnel =
        open_tunnel(proxy.proxyd.addr(), &format!("first.localhost:{}", echo.addr().port()))
            .await?;
    write(&proxy.file, &format!("{SECOND}drain_timeout = \"3s\"\nmode = \"limited\"\n"))?;
    let body = post(proxy.admin, "/reload", "").await?.expect(200)?;
    ensure!(body == json!({"status": "reloaded", "pending_restart": ["drain_timeout"]}), "{body}");
    // A changed mode applies at once, and limited mode closes the open tunnel.
    ensure!(get(proxy.admin, "/health").await?.expect(200)?["mode"] == "limited");
    closed_within(&mut tunnel, CLOSE_WITHIN).await.context("tunnel after a reload to limited")?;
    proxy.expect_allowed(&origin, "second.localhost").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_broken_file_keeps_the_old_policy() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = Reloadable::start(FIRST).await?;
    proxy.expect_allowed(&origin, "first.localhost").await?;

    write(&proxy.file, SECOND)?;
    proxy.proxyd.signal("HUP").await?;
    proxy
        .proxyd
        .wait_for_event("the sighup reload", |event| {
            event["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("sighup: config reloaded"))
        })
        .await?;
    proxy.expect_allowed(&origin, "second.localhost").await?;
    proxy.expect_blocked(&origin, "first.localhost").await?;

    write(&proxy.file, "[network]\nalowed_domains = [\"first.localhost\"]\n")?;
    proxy.proxyd.signal("HUP").await?;
    let refused = proxy
        .proxyd
        .wait_for_event("the refused sighup reload", |event| {
            event["level"] == "ERROR"
                && event["fields"]["message"].as_str().is_some_and(|m| m.contains("sighup"))
        })
        .await?;
    ensure!(refused.to_string().contains("alowed_domains"), "the error is logged: {refused}");
    proxy.expect_allowed(&origin, "second.localhost").await?;
    proxy.expect_blocked(&origin, "first.localhost").await?;
    ensure!(proxy.reloads("ok").await? == 1 && proxy.reloads("error").await? == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_to_limited_closes_open_tunnels() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    // SOCKS5 on: its tunnels close too.
    let toml = "[network]\nproxy_url = \"127.0.0.1:0\"\nadmin_url = \"127.0.0.1:0\"\n\
                socks_url = \"127.0.0.1:0\"\nallowed_domains = [\"localhost\"]\n";
    let proxyd = Proxyd::start(toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let socks = logged_addr(&proxyd, "socks5").await?;
    let authority = format!("localhost:{}", echo.addr().port());

    let mut http_tunnels = vec![
        open_tunnel(proxyd.addr(), &authority).await?,
        open_tunnel(proxyd.addr(), &authority).await?,
    ];
    let mut socks_tunnel = open_socks_tunnel(socks, "localhost", echo.addr().port()).await?;
    let metrics = get(admin, "/metrics").await?.body;
    ensure!(metrics.contains("proxyd_active_tunnels{listener=\"http\"} 2"), "{metrics}");

    curl_switch_mode(admin, "limited").await?;
    for tunnel in &mut http_tunnels {
        closed_within(tunnel, CLOSE_WITHIN).await.context("http tunnel")?;
    }
    closed_within(&mut socks_tunnel, CLOSE_WITHIN).await.context("socks5 tunnel")?;

    // New tunnels are refused while limited...
    let head = connect_head(proxyd.addr(), &authority).await?;
    ensure!(head.status == 403, "{head:?}");
    ensure!(head.header("x-proxy-error") == Some("blocked-by-method-policy"), "{head:?}");
    // ...and work again once back to full.
    curl_switch_mode(admin, "full").await?;
    let mut tunnel = open_tunnel(proxyd.addr(), &authority).await?;
    crate::admin_support::echo_round_trip(&mut tunnel, b"again").await?;
    Ok(())
}

async fn wait_sighup_outcome(proxy: &Reloadable, what: &str) -> anyhow::Result<Value> {
    proxy
        .proxyd
        .wait_for_event(what, |event| {
            event["fields"]["message"].as_str().is_some_and(|m| m.contains("sighup"))
        })
        .await
}

/// Issue 11: with the mode switched through the admin API, two file edits and two SIGHUPs
/// (limited, then full) must not walk it back to full: a runtime switch is kept over reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_and_sighups_cannot_walk_back_an_api_set_mode() -> anyhow::Result<()> {
    let proxy = Reloadable::start(FIRST).await?;
    curl_switch_mode(proxy.admin, "limited").await?;
    for (mode, step) in [("limited", "first"), ("full", "second")] {
        write(&proxy.file, &format!("{FIRST}mode = \"{mode}\"\n"))?;
        proxy.proxyd.signal("HUP").await?;
        let event = wait_sighup_outcome(&proxy, step).await?;
        ensure!(event["level"] != "ERROR", "the {step} reload failed: {event}");
        let health = get(proxy.admin, "/health").await?.expect(200)?;
        ensure!(health["mode"] == "limited", "after the {step} edit ({mode}): {health}");
    }
    // The API, which set it, can still switch it back.
    curl_switch_mode(proxy.admin, "full").await?;
    Ok(())
}

/// Issue 11: a config file that group or others can write is not re-read: whoever can write
/// it and signal proxyd could otherwise lift the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_others_can_write_is_not_reloaded() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let origin = HttpOrigin::start().await?;
    let proxy = Reloadable::start(FIRST).await?;
    std::fs::set_permissions(&proxy.file, std::fs::Permissions::from_mode(0o666))?;
    write(&proxy.file, SECOND)?;
    proxy.proxyd.signal("HUP").await?;
    let refused = wait_sighup_outcome(&proxy, "the refused reload").await?;
    ensure!(refused["level"] == "ERROR", "{refused}");
    ensure!(refused.to_string().contains("writable by group or others"), "{refused}");
    let answer = post(proxy.admin, "/reload", "").await?;
    ensure!(answer.status == 422 && answer.body.contains("chmod go-w"), "{answer:?}");
    proxy.expect_allowed(&origin, "first.localhost").await?;
    proxy.expect_blocked(&origin, "second.localhost").await?;
    Ok(())
}

/// Issue 11: `--no-sighup-reload` turns SIGHUP reloads off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sighup_reload_ignores_sighup() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = Reloadable::start_with(FIRST, &["--no-sighup-reload"]).await?;
    write(&proxy.file, SECOND)?;
    proxy.proxyd.signal("HUP").await?;
    let ignored = wait_sighup_outcome(&proxy, "the ignored sighup").await?;
    ensure!(ignored.to_string().contains("sighup ignored"), "{ignored}");
    proxy.expect_allowed(&origin, "first.localhost").await?;
    proxy.expect_blocked(&origin, "second.localhost").await?;
    Ok(())
}
