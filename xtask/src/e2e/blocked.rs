//! Blocked destinations through every client, each pointed at a canary that must never be
//! reached: denylist, allowlist miss, local addresses, names that resolve to loopback, and the
//! method policy of limited mode (SPEC §5, §6).

use anyhow::{Context, Result, ensure};

use super::Env;
use super::clients::{curl, git_clone, pip_download, urllib};
use super::fixtures::loopback_hosts_name;
use super::proxyd::{Proxyd, list};
use super::servers::{Canary, Origin};
use super::support::TempDir;
use super::wire;

const ALLOWLIST: &str = "blocked-by-allowlist";

/// `host:port` (an IPv6 `host` in brackets) is refused with `header`/`reason` through curl
/// absolute-form, curl `CONNECT`, curl SOCKS5 (name and address types) and urllib.
fn blocked_everywhere(
    proxyd: &Proxyd,
    host: &str,
    port: u16,
    header: &str,
    reason: &str,
) -> Result<()> {
    let proxy = proxyd.url();
    let socks = proxyd.socks.to_string();
    let http = format!("http://{host}:{port}/");
    let https = format!("https://{host}:{port}/");
    curl(&["-x", &proxy, &http])?.expect_blocked(header, reason).context(http.clone())?;
    curl(&["-x", &proxy, &https])?.expect_blocked(header, reason).context(https.clone())?;
    curl(&["--socks5-hostname", &socks, &http])?
        .expect_socks_not_allowed()
        .with_context(|| format!("--socks5-hostname {http}"))?;
    curl(&["--socks5", &socks, &http])?
        .expect_socks_not_allowed()
        .with_context(|| format!("--socks5 {http}"))?;
    let got = urllib(&proxy, &http, None)?;
    ensure!(
        got["status"] == 403 && got["x_proxy_error"] == header,
        "urllib {http}: want 403 {header}, got {got}"
    );
    Ok(())
}

/// The denylist wins over an allowlist entry for the same host.
pub(crate) fn denied(env: &Env) -> Result<()> {
    let canary = Canary::start()?;
    let hosts = ["localhost", "127.0.0.1", "bad.test"];
    let config = [list("allowed_domains", &hosts), list("denied_domains", &hosts)].join("\n");
    let proxyd = Proxyd::start(env, &config)?;
    let port = canary.port();
    for host in ["localhost", "127.0.0.1"] {
        blocked_everywhere(&proxyd, host, port, "blocked-by-denylist", "denied")?;
    }
    curl(&["-x", &proxyd.url(), "http://bad.test/x"])?
        .expect_blocked("blocked-by-denylist", "denied")?;
    proxyd.wait_for_decision("http", "localhost", port, "block", "denied")?;
    proxyd.wait_for_decision("socks5", "127.0.0.1", port, "block", "denied")?;
    canary.assert_untouched()
}

/// Not on the allowlist: refused before any DNS lookup, even for local targets when local
/// binding is allowed; git and pip fail cleanly.
pub(crate) fn allowlist_miss(env: &Env) -> Result<()> {
    let canary = Canary::start()?;
    let config = [list("allowed_domains", &["allowed.test"]), "allow_local_binding = true".into()];
    let proxyd = Proxyd::start(env, &config.join("\n"))?;
    let port = canary.port();
    for host in ["localhost", "127.0.0.1"] {
        blocked_everywhere(&proxyd, host, port, ALLOWLIST, "not_allowed")?;
    }
    curl(&["-x", &proxyd.url(), "http://unknown.test/"])?
        .expect_blocked(ALLOWLIST, "not_allowed")?;
    let dir = TempDir::new("miss")?;
    let url = format!("http://localhost:{port}/repo.git");
    let clone = git_clone(&dir, &proxyd.url(), &url, &dir.join("clone"))?;
    ensure!(
        !clone.status.success() && clone.stderr.contains("403"),
        "git clone of a blocked repo: {clone:?}"
    );
    let index = format!("http://localhost:{port}/simple/");
    let pip = pip_download(&proxyd.url(), &index, &dir.join("downloads"))?;
    ensure!(!pip.status.success(), "pip download from a blocked index succeeded: {pip:?}");
    proxyd.wait_for_decision("http", "localhost", port, "block", "not_allowed")?;
    canary.assert_untouched()
}

/// Local literals need an explicit entry (SPEC §5.2): a `localhost` entry does not unlock
/// `127.0.0.1` or `::1`, and `*` unlocks nothing local.
pub(crate) fn local_blocked(env: &Env) -> Result<()> {
    let canary = Canary::start()?;
    let port = canary.port();
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["localhost"]))?;
    for host in ["127.0.0.1", "[::1]"] {
        blocked_everywhere(&proxyd, host, port, ALLOWLIST, "not_allowed_local")?;
    }
    // Every request on a keep-alive connection is a new decision (SPEC §7.2).
    let origin = Origin::start()?;
    let get = |authority: String| {
        format!("GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n")
    };
    let allowed = get(format!("localhost:{}", origin.port()));
    let local = get(format!("127.0.0.1:{port}"));
    let replies = wire::http_keep_alive(proxyd.http, &[allowed.as_bytes(), local.as_bytes()])?;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    ensure!(statuses == [200, 403], "keep-alive: allowed then local got {statuses:?}");
    drop(proxyd);
    let proxyd = Proxyd::start(env, &list("allowed_domains", &["*"]))?;
    for host in ["localhost", "127.0.0.1"] {
        blocked_everywhere(&proxyd, host, port, ALLOWLIST, "not_allowed_local")?;
    }
    for url in ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/"] {
        curl(&["-x", &proxyd.url(), url])?
            .expect_blocked(ALLOWLIST, "not_allowed_local")
            .context(url)?;
    }
    proxyd.wait_for_decision("http", "localhost", port, "block", "not_allowed_local")?;
    canary.assert_untouched()
}

/// A name that `/etc/hosts` maps to 127.0.0.1, allowlisted by name only: resolved, found
/// local, blocked (SPEC §5.2). With its address range allowlisted too it goes through, which
/// shows the block came from the resolved address.
pub(crate) fn loopback_names(env: &Env) -> Result<()> {
    let name = loopback_hosts_name()?;
    let canary = Canary::start()?;
    let port = canary.port();
    let proxyd = Proxyd::start(env, &list("allowed_domains", &[&name]))?;
    blocked_everywhere(&proxyd, &name, port, ALLOWLIST, "not_allowed_local")?;
    proxyd.wait_for_decision("http", &name, port, "block", "not_allowed_local")?;
    proxyd.wait_for_decision("socks5", &name, port, "block", "not_allowed_local")?;
    canary.assert_untouched()?;
    drop(proxyd);

    let origin = Origin::start()?;
    let proxyd = Proxyd::start(env, &list("allowed_domains", &[&name, "127.0.0.0/8"]))?;
    let url = format!("http://{name}:{}/by-name", origin.port());
    curl(&["-x", &proxyd.url(), &url])?.expect_ok("origin GET /by-name\n").context(url)?;
    Ok(())
}

/// Limited mode: `GET`, `HEAD` and `OPTIONS` pass; other methods, bodies, upgrades, method
/// overrides, `CONNECT` and SOCKS5 are refused with `method_not_allowed` (SPEC §6.2).
pub(crate) fn limited_mode(env: &Env) -> Result<()> {
    let origin = Origin::start()?;
    let canary = Canary::start()?;
    let config =
        [list("allowed_domains", &["localhost", "127.0.0.1"]), "mode = \"limited\"".into()];
    let proxyd = Proxyd::start(env, &config.join("\n"))?;
    let proxy = proxyd.url();
    let allowed = format!("http://localhost:{}/ro", origin.port());
    curl(&["-x", &proxy, &allowed])?.expect_ok("origin GET /ro\n")?;
    curl(&["-x", &proxy, "-X", "OPTIONS", &allowed])?.expect_ok("origin OPTIONS /ro\n")?;
    let head = curl(&["-x", &proxy, "-I", &allowed])?;
    ensure!(head.exit == 0 && head.code == 200, "HEAD: {}", head.summary());
    curl(&["-x", &proxy, "-H", "Content-Length: 0", &allowed])?.expect_ok("origin GET /ro\n")?;

    let target = format!("http://localhost:{}/", canary.port());
    let refused: [&[&str]; 10] = [
        &["-d", "x=1"],
        &["-X", "PUT"],
        &["-X", "get"],
        &["-X", "DELETE"],
        &["-X", "GET", "-d", "x=1"],
        &["-X", "GET", "-H", "Transfer-Encoding: chunked", "-d", "x=1"],
        &["-H", "Upgrade: websocket", "-H", "Connection: Upgrade"],
        &["-H", "X-HTTP-Method-Override: DELETE"],
        &["-H", "x-http-method: PUT"],
        &["-H", "X-Method-Override: POST"],
    ];
    for args in refused {
        curl(&[&["-x", proxy.as_str()], args, &[target.as_str()]].concat())?
            .expect_blocked("blocked-by-method-policy", "method_not_allowed")
            .with_context(|| format!("curl {args:?}"))?;
    }
    let https = format!("https://localhost:{}/", canary.port());
    curl(&["-x", &proxy, &https])?
        .expect_blocked("blocked-by-method-policy", "method_not_allowed")
        .context("CONNECT in limited mode")?;
    let socks = proxyd.socks.to_string();
    curl(&["--socks5-hostname", &socks, &target])?
        .expect_socks_not_allowed()
        .context("SOCKS5 in limited mode")?;
    let methods: Vec<String> = origin.requests().into_iter().map(|r| r.method).collect();
    ensure!(methods == ["GET", "OPTIONS", "HEAD", "GET"], "the origin saw {methods:?}");
    canary.assert_untouched()
}
