//! Runtime control of a running proxyd: the admin API's mode switch and reload (and `SIGHUP`),
//! and a graceful `SIGTERM` drain (SPEC §7.5, §8).

use std::io::{ErrorKind, Read as _};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::Env;
use super::clients::{Curl, curl};
use super::proxyd::{Proxyd, list};
use super::servers::{Canary, Origin};
use super::support::BOUND;
use super::wire;

/// `curl` straight to the admin API (no proxy): `method path` with an optional JSON body.
fn admin(proxyd: &Proxyd, method: &str, path: &str, body: Option<&str>) -> Result<(Curl, Value)> {
    admin_with(proxyd, &[], method, path, body)
}

/// [`admin`] with extra request headers (`-H` values).
fn admin_with(
    proxyd: &Proxyd,
    headers: &[&str],
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(Curl, Value)> {
    let url = format!("http://{}{path}", proxyd.admin);
    let mut args = vec!["-X", method];
    for header in headers {
        args.extend(["-H", header]);
    }
    if let Some(body) = body {
        args.extend(["-H", "content-type: application/json", "--data-binary", body]);
    }
    args.push(&url);
    let response = curl(&args)?;
    let json = response.body_json().with_context(|| format!("{method} {path}"))?;
    Ok((response, json))
}

/// `POST /mode` and `POST /reload` (after editing the config file) change what the very next
/// request gets; an invalid config is refused with the old one still in force; `SIGHUP` reloads.
pub(crate) fn admin_mode_and_reload(env: &Env) -> Result<()> {
    let origin = Origin::start()?;
    let canary = Canary::start()?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    let proxy = proxyd.url();
    let post = |port: u16, path: &str| {
        let url = format!("http://localhost:{port}{path}");
        curl(&["-x", &proxy, "-d", "x=1", &url])
    };
    let get =
        |path: &str| curl(&["-x", &proxy, &format!("http://localhost:{}{path}", origin.port())]);

    let (response, health) = admin(&proxyd, "GET", "/health", None)?;
    ensure!(response.code == 200 && health["mode"] == "full", "health: {health}");
    ensure!(health["listeners"]["http"] == proxyd.http.to_string(), "health: {health}");
    post(origin.port(), "/before")?.expect_ok("origin POST /before\n")?;

    // Cross-site writes and rebinding Host headers are refused (SPEC §8.3).
    let limited = Some(r#"{"mode":"limited"}"#);
    for header in ["Origin: http://evil.test", "Sec-Fetch-Site: cross-site", "Host: evil.test"] {
        let (response, json) = admin_with(&proxyd, &[header], "POST", "/mode", limited)?;
        ensure!(response.code == 403, "POST /mode with {header:?}: {} {json}", response.code);
    }
    let (response, _) = admin_with(&proxyd, &["Host: evil.test"], "GET", "/health", None)?;
    ensure!(response.code == 403, "GET /health with a rebinding Host: {}", response.summary());
    let (_, health) = admin(&proxyd, "GET", "/health", None)?;
    ensure!(health["mode"] == "full", "a refused request switched the mode: {health}");

    // Switching to limited closes open tunnels at once (SPEC §6.2).
    let mut tunnel = wire::tunnel(proxyd.http, &format!("localhost:{}", origin.port()))?;
    let (response, json) = admin(&proxyd, "POST", "/mode", limited)?;
    ensure!(response.code == 200 && json["mode"] == "limited", "POST /mode: {json}");
    let mut byte = [0u8; 1];
    match tunnel.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        other => bail!("the tunnel stayed open after the switch to limited: {other:?}"),
    }
    let (_, health) = admin(&proxyd, "GET", "/health", None)?;
    ensure!(health["mode"] == "limited", "health after the switch: {health}");
    post(canary.port(), "/")?.expect_blocked("blocked-by-method-policy", "method_not_allowed")?;
    get("/limited")?.expect_ok("origin GET /limited\n")?;
    let (response, json) = admin(&proxyd, "POST", "/mode", Some(r#"{"mode":"read-only"}"#))?;
    ensure!(response.code == 400, "a bad mode was accepted: {json}");

    let (response, json) = admin(&proxyd, "POST", "/mode", Some(r#"{"mode":"full"}"#))?;
    ensure!(response.code == 200 && json["mode"] == "full", "POST /mode: {json}");
    post(origin.port(), "/after")?.expect_ok("origin POST /after\n")?;

    // Reload with localhost gone from the allowlist.
    proxyd.rewrite_config(&list("allowed_domains", &["other.test"]))?;
    let (response, json) = admin(&proxyd, "POST", "/reload", None)?;
    ensure!(response.code == 200 && json["status"] == "reloaded", "POST /reload: {json}");
    let (_, patterns) = admin(&proxyd, "GET", "/patterns", None)?;
    ensure!(patterns["allowed"] == serde_json::json!(["other.test"]), "patterns: {patterns}");
    get("/reloaded")?.expect_blocked("blocked-by-allowlist", "not_allowed_local")?;

    // An invalid file is refused and the running config stays.
    let typo = list("alowed_domains", &["localhost"]);
    proxyd.rewrite_config(&typo)?;
    let (response, json) = admin(&proxyd, "POST", "/reload", None)?;
    ensure!(
        response.code == 422 && json.to_string().contains("alowed_domains"),
        "reload of an invalid config: {} {json}",
        response.code
    );
    let (_, patterns) = admin(&proxyd, "GET", "/patterns", None)?;
    ensure!(patterns["allowed"] == serde_json::json!(["other.test"]), "patterns: {patterns}");
    get("/still-blocked")?.expect_blocked("blocked-by-allowlist", "not_allowed_local")?;

    // SIGHUP reloads the same way.
    proxyd.rewrite_config(&list("allowed_domains", &["localhost"]))?;
    proxyd.signal("HUP")?;
    proxyd.wait_for_line("the sighup reload", |line| line.contains("sighup: config reloaded"))?;
    get("/sighup")?.expect_ok("origin GET /sighup\n")?;

    let (_, blocked) = admin(&proxyd, "GET", "/blocked", None)?;
    let reasons: Vec<&str> = blocked["blocked"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    ensure!(
        reasons == ["method_not_allowed", "not_allowed_local", "not_allowed_local"],
        "blocked log: {blocked}"
    );
    canary.assert_untouched()
}

/// `SIGTERM` with a slow response in flight: proxyd stops, the request still completes, and
/// the exit code is 0.
pub(crate) fn sigterm_drain(env: &Env) -> Result<()> {
    let origin = Origin::start()?;
    let mut proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    let (proxy, url) = (proxyd.url(), format!("http://localhost:{}/slow", origin.port()));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(curl(&["-x", &proxy, &url])));
    // The request is at the origin, which holds its answer until released.
    origin.wait_for_requests(1)?;
    proxyd.signal("TERM")?;
    proxyd.wait_for_line("the start of the drain", |line| line.contains("shutting down"))?;
    origin.release();
    let response = rx.recv_timeout(BOUND + Duration::from_secs(10)).context("curl hung")??;
    response.expect_ok("origin GET /slow\n").context("the in-flight request")?;
    let status = proxyd.wait(BOUND)?;
    ensure!(status.code() == Some(0), "proxyd exited with {status}; stderr:\n{}", proxyd.stderr());
    proxyd.wait_for_line("stopped", |line| line.contains("\"stopped\""))?;
    Ok(())
}
