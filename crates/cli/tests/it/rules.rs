//! Request rules (`[[network.rules]]`) through the binary with real curl, under `proxyd exec`
//! (which hands curl the interception CA): method, path and header rules over plain HTTP and,
//! intercepted in full mode, over HTTPS; the path normalisation that refuses `%2e%2e`; a token
//! injected for one host and the client's own `Authorization` stripped.

use std::process::Stdio;

use anyhow::{Context as _, ensure};
use proxyd_test_support::{HttpOrigin, TestCa, TlsOrigin, temp_dir};
use tokio::process::Command;
use tokio::time::timeout;

use crate::admin_support::{CURL, write};
use crate::support::BOUND;

const PROXYD: &str = env!("CARGO_BIN_EXE_proxyd");

const RULES: &str = r#"[network]
allowed_domains = ["api.localhost", "tok.localhost"]

[[network.rules]]
name = "no-admin"
host = "api.localhost"
paths = ["/admin/**"]
action = "deny"

[[network.rules]]
name = "org-read"
host = "api.localhost"
methods = ["GET", "HEAD"]
paths = ["/repos/our-org/**"]

[[network.rules]]
name = "upload"
host = "api.localhost"
methods = ["POST"]
paths = ["/v1/upload"]
headers = ["content-type: application/octet-stream"]

[[network.rules]]
name = "token"
host = "tok.localhost"
strip_headers = ["authorization"]
inject_header = "authorization"
inject_prefix = "Bearer "
secret_env = "TOK_SECRET"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_allow_and_deny_by_method_path_and_header_over_http_and_https() -> anyhow::Result<()>
{
    let http = HttpOrigin::start().await?;
    let ca = TestCa::new()?;
    let https = TlsOrigin::start(&ca, &["api.localhost", "tok.localhost"]).await?;
    let dir = temp_dir("proxyd-rules")?;
    let ca_file = ca.write_pem(dir.path())?;
    let config = dir.join("config.toml");
    write(&config, RULES)?;
    let (p, t) = (http.addr().port(), https.addr().port());
    let py = dir.join("client.py");
    write(
        &py,
        &format!(
            "import urllib.request, urllib.error\n\
             for path in ('/repos/our-org/py', '/repos/other/py'):\n    \
             try:\n        \
             print('py', urllib.request.urlopen('https://api.localhost:{t}' + path).status)\n    \
             except urllib.error.HTTPError as err:\n        \
             print('py', err.code)\n"
        ),
    )?;
    let code = format!("{CURL} -s -o /dev/null -w '%{{http_code}}\\n'");
    let script = [
        format!("{code} http://api.localhost:{p}/repos/our-org/x"),
        format!("{code} http://api.localhost:{p}/repos/other/x"),
        format!("{code} -X POST -H 'content-type: application/octet-stream' --data x http://api.localhost:{p}/v1/upload"),
        format!("{code} -X POST --data x http://api.localhost:{p}/v1/upload"),
        format!("{code} --path-as-is http://api.localhost:{p}/repos/our-org/%2e%2e/secret"),
        format!("{code} https://api.localhost:{t}/repos/our-org/y"),
        format!("{code} https://api.localhost:{t}/admin/users"),
        format!("{code} -H 'authorization: Bearer client-guess' https://tok.localhost:{t}/t"),
        format!("{CURL} -s https://api.localhost:{t}/admin/users"),
        // Python's urllib, through HTTPS_PROXY and the bundle `proxyd exec` hands it.
        format!("python3 {}", py.display()),
    ]
    .join("; ");
    let output = Command::new(PROXYD)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CODEX_HOME", dir.path())
        .env("SSL_CERT_FILE", &ca_file)
        .env("TOK_SECRET", "real-secret")
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(BOUND + BOUND, output).await.context("exec did not exit")??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.len() == 11, "stdout:\n{stdout}\nstderr:\n{stderr}");
    ensure!(lines[9..] == ["py 200", "py 403"], "python: {:?}\nstderr:\n{stderr}", &lines[9..]);
    let codes = &lines[..8];
    ensure!(
        codes == ["200", "403", "200", "403", "400", "200", "403", "200"],
        "codes {codes:?}\nstderr:\n{stderr}"
    );
    let body: serde_json::Value = serde_json::from_str(lines[8]).context("blocked json")?;
    ensure!(
        body["reason"] == "rule_denied"
            && body["rule"] == "no-admin"
            && body["protocol"] == "https",
        "{body}"
    );
    // Only the allowed requests reached the origins, the refused path included in none.
    let paths: Vec<String> = http.requests().iter().map(|r| r.target.clone()).collect();
    ensure!(paths == ["/repos/our-org/x", "/v1/upload"], "{paths:?}");
    let https_paths: Vec<String> = https.requests().iter().map(|r| r.target.clone()).collect();
    ensure!(https_paths == ["/repos/our-org/y", "/t", "/repos/our-org/py"], "{https_paths:?}");
    let tok = https.requests().into_iter().find(|r| r.target == "/t").context("token request")?;
    ensure!(tok.header("authorization") == Some("Bearer real-secret"), "{tok:?}");
    ensure!(!stderr.contains("real-secret"), "the secret reached a log: {stderr}");
    ensure!(stderr.contains("rule no-admin"), "the summary names the deny rule: {stderr}");
    Ok(())
}

/// Issue 12: in limited mode with `mitm`, a SOCKS5 `CONNECT` to port 443 is intercepted like
/// an HTTPS `CONNECT`: the TLS handshake is with proxyd's CA, a read is decided and forwarded
/// (nothing listens on port 443 here, so it fails upstream), and a write is refused by the
/// method policy. Other SOCKS5 commands stay refused in limited mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_connect_to_443_is_intercepted_in_limited_mode() -> anyhow::Result<()> {
    use crate::admin_support::start_lib;
    let dir = temp_dir("proxyd-socks-mitm")?;
    let toml = crate::support::network(&format!(
        "allowed_domains = [\"secure.test\"]\nallow_local_binding = true\nmode = \"limited\"\n\
         mitm = true\nca_dir = {:?}",
        dir.join("ca").display().to_string()
    ))
    .replace("enable_socks5 = false", "enable_socks5 = true");
    let config = proxyd::Config::from_toml_str(&toml, "lib.toml")
        .map_err(|e| anyhow::anyhow!("invalid test config:\n{e}"))?;
    let resolver = proxyd::StaticResolver::new()
        .with("secure.test", [std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)]);
    let handle = start_lib(
        proxyd::NetworkProxy::builder().config(config).resolver(std::sync::Arc::new(resolver)),
    )
    .await?;
    let ca = dir.join("proxyd-ca.pem");
    write(&ca, &handle.get().ca_cert_pem().context("ca pem")?)?;
    let socks = handle.get().socks_addr().context("socks address")?;
    let run = |args: &[&str]| {
        let mut command = Command::new(CURL);
        command
            .env_clear()
            .args(["-q", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .arg("--socks5-hostname")
            .arg(socks.to_string())
            .arg("--cacert")
            .arg(&ca)
            .args(args);
        command.output()
    };
    let post = run(&["-X", "POST", "--data", "x", "https://secure.test/upload"]).await?;
    ensure!(String::from_utf8_lossy(&post.stdout) == "403", "{post:?}");
    let get = run(&["https://secure.test/read"]).await?;
    // Decided and forwarded: the failure is upstream's (nothing listens on 443).
    ensure!(String::from_utf8_lossy(&get.stdout) == "502", "{get:?}");
    // Not to 443: refused as an opaque tunnel, as before.
    let other = run(&["https://secure.test:8443/"]).await?;
    ensure!(
        String::from_utf8_lossy(&other.stdout) == "000" && !other.status.success(),
        "{other:?}"
    );
    Ok(())
}
