//! Limited-mode HTTPS through the `proxyd` binary with real curl (`mitm = true`): `proxyd
//! exec` handing its child a trust bundle, a long-running proxyd whose CA curl trusts with
//! `--cacert`, the `proxyd ca` commands, and the cases that must stay as they were.
//!
//! The origin is a TLS server with a test CA; proxyd trusts that CA through its own
//! `SSL_CERT_FILE`, which `proxyd exec` replaces for the child with the bundle.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Output, Stdio};

use anyhow::{Context as _, bail, ensure};
use proxyd_test_support::{TempDir, TestCa, TlsOrigin, temp_dir};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::support::{BOUND, Proxyd, assert_blocked, curl, network};

const PROXYD: &str = env!("CARGO_BIN_EXE_proxyd");
const CURL: &str = "/usr/bin/curl";

/// A TLS origin for `localhost`, the test CA's PEM (for proxyd's `SSL_CERT_FILE`), and a
/// config file for limited mode with interception and `ca_dir` inside the temp dir.
struct Setup {
    origin: TlsOrigin,
    dir: TempDir,
    test_ca: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Setup {
    async fn new(extra: &str) -> anyhow::Result<Setup> {
        Setup::with_origin(extra, false).await
    }

    /// [`Setup::new`] with an origin that speaks HTTP/2 when offered (`h2`).
    async fn with_origin(extra: &str, h2: bool) -> anyhow::Result<Setup> {
        let dir = temp_dir("proxyd-cli-mitm")?;
        let ca = TestCa::new()?;
        let origin = match h2 {
            true => TlsOrigin::start_h2(&ca, &["localhost"]).await?,
            false => TlsOrigin::start(&ca, &["localhost"]).await?,
        };
        let test_ca = ca.write_pem(&dir)?;
        let ca_dir = dir.join("ca");
        let toml = network(&format!(
            "mode = \"limited\"\nmitm = true\nca_dir = {:?}\n{extra}",
            ca_dir.display().to_string()
        ));
        let config = dir.join("limited.toml");
        std::fs::write(&config, toml).context("write config")?;
        Ok(Setup { origin, dir, test_ca, config })
    }

    fn ca_dir(&self) -> std::path::PathBuf {
        self.dir.join("ca")
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.origin.addr().port())
    }

    /// `proxyd --config limited.toml ARGS...` with a clean environment: proxyd trusts the test
    /// CA, and `CODEX_HOME` keeps any user config out.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(PROXYD);
        command
            .env_clear()
            .env("CODEX_HOME", self.dir.path())
            .env("SSL_CERT_FILE", &self.test_ca)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).output();
        timeout(BOUND * 2, output).await.context("proxyd did not exit")?.context("run proxyd")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_curl_reads_over_https_and_writes_are_blocked() -> anyhow::Result<()> {
    let setup = Setup::new("allowed_domains = [\"localhost\"]").await?;
    let curl_args = ["-q", "-sS", "--max-time", "10"];

    let get = setup.url("/get?x=1");
    let mut args = vec!["exec", "--", CURL];
    args.extend(curl_args);
    args.push(&get);
    let output = setup.run(&args).await?;
    ensure!(output.status.success(), "exec curl GET: {output:?}");
    ensure!(text(&output.stdout) == "origin GET /get?x=1\n", "{output:?}");

    let post = setup.url("/post");
    let mut args = vec!["exec", "--", CURL];
    args.extend(curl_args);
    args.extend(["-D", "-", "-X", "POST", "-d", "data", &post]);
    let output = setup.run(&args).await?;
    let stdout = text(&output.stdout);
    // The proxy's answer to CONNECT first, then the one to the POST inside the tunnel, over
    // HTTP/2, which curl negotiates inside the tunnel by default.
    ensure!(stdout.starts_with("HTTP/1.1 200") && stdout.contains("HTTP/2 403"), "{stdout}");
    ensure!(stdout.contains("x-proxy-error: blocked-by-method-policy"), "{stdout}");
    ensure!(stdout.contains("\"protocol\":\"https\""), "{stdout}");
    let summary = format!("localhost:{} method_not_allowed via https", setup.origin.addr().port());
    ensure!(text(&output.stderr).contains(&summary), "{output:?}");
    ensure!(setup.origin.hits() == 1, "the POST reached the origin");

    // The key was never written, and the run's bundle is gone with the child.
    let left: Vec<_> = match std::fs::read_dir(setup.ca_dir()) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    };
    ensure!(left.is_empty(), "files left in ca_dir: {left:?}");
    Ok(())
}

/// A long-running `proxyd` with JSON logs on stderr.
struct Daemon {
    _child: Child,
    addr: SocketAddr,
    log: watch::Receiver<Vec<String>>,
}

impl Daemon {
    async fn start(setup: &Setup) -> anyhow::Result<Daemon> {
        let mut child = setup
            .command(&["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn proxyd")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, log) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|lines| lines.push(line));
            }
        });
        let mut daemon = Daemon { _child: child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), log };
        let line = daemon
            .wait_for("the http listener", |e| {
                e["fields"]["message"] == "listening" && e["fields"]["listener"] == "http"
            })
            .await?;
        daemon.addr = line["fields"]["addr"].as_str().context("addr")?.parse()?;
        Ok(daemon)
    }

    async fn wait_for(
        &self,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let parse = |line: &String| serde_json::from_str::<Value>(line).ok();
        let mut log = self.log.clone();
        let found = timeout(
            BOUND,
            log.wait_for(|lines| lines.iter().filter_map(parse).any(|e| matches(&e))),
        );
        match found.await {
            Ok(Ok(lines)) => {
                Ok(lines.iter().filter_map(parse).find(|e| matches(e)).unwrap_or_default())
            }
            _ => bail!("proxyd did not log {what}; stderr:\n{}", self.log.borrow().join("\n")),
        }
    }

    async fn decision(&self, protocol: &str, host: &str, reason: &str) -> anyhow::Result<Value> {
        self.wait_for(&format!("{protocol} {host} {reason}"), |e| {
            let f = &e["fields"];
            f["message"] == "decision"
                && f["protocol"] == protocol
                && f["host"] == host
                && f["reason"] == reason
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_proxyd_intercepts_for_curl_trusting_its_ca() -> anyhow::Result<()> {
    let setup = Setup::new("allowed_domains = [\"localhost\", \"127.0.0.1\"]").await?;
    let daemon = Daemon::start(&setup).await?;
    let written = daemon
        .wait_for("the ca certificate", |e| {
            e["fields"]["message"] == "interception ca certificate written"
        })
        .await?;

    // `proxyd ca path` and `proxyd ca export` name and copy what the daemon wrote.
    let path = setup.run(&["ca", "path"]).await?;
    let cert = setup.ca_dir().join("ca.pem");
    ensure!(text(&path.stdout) == format!("{}\n", cert.display()), "{path:?}");
    ensure!(written["fields"]["path"] == cert.display().to_string(), "{written}");
    let pem = std::fs::read_to_string(&cert)?;
    ensure!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    ensure!(std::fs::metadata(&cert)?.permissions().mode() & 0o777 == 0o644);
    let dir_mode = std::fs::metadata(setup.ca_dir())?.permissions().mode() & 0o777;
    ensure!(dir_mode == 0o700, "ca_dir mode {dir_mode:o}");
    let exported = setup.run(&["ca", "export"]).await?;
    ensure!(exported.status.success() && text(&exported.stdout) == pem, "{exported:?}");
    let copy = setup.dir.join("copy.pem");
    let to_file = setup.run(&["ca", "export", copy.to_str().context("path")?]).await?;
    ensure!(to_file.status.success() && std::fs::read_to_string(&copy)? == pem, "{to_file:?}");
    let mut names: Vec<String> = std::fs::read_dir(setup.ca_dir())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    ensure!(
        names == ["ca.pem", "ca.pid"],
        "only the certificate (and its pid) is written, never a key: {names:?}"
    );
    for name in &names {
        let text = std::fs::read_to_string(setup.ca_dir().join(name))?;
        ensure!(!text.contains("PRIVATE KEY"), "{name} holds a key");
    }

    let cacert = cert.to_str().context("path")?;
    let get = curl(daemon.addr, &["--cacert", cacert, &setup.url("/x")]).await?;
    ensure!(get.connect == 200 && get.code == 200, "{get:?}");
    ensure!(get.body_text() == "origin GET /x\n", "{get:?}");
    daemon.decision("https", "localhost", "allowed").await?;

    let post = curl(daemon.addr, &["--cacert", cacert, "-d", "x", &setup.url("/y")]).await?;
    let body = assert_blocked(&post, 403, "blocked-by-method-policy", "method_not_allowed")?;
    ensure!(body["protocol"] == "https" && body["method"] == "POST", "{body}");
    daemon.decision("https", "localhost", "method_not_allowed").await?;

    let other =
        curl(daemon.addr, &["--cacert", cacert, "-H", "Host: other.test", &setup.url("/")]).await?;
    ensure!(other.code == 400, "host mismatch: {other:?}");

    // The tunnel goes to 127.0.0.1 while the TLS server name stays `localhost`.
    let port = setup.origin.addr().port();
    let connect_to = format!("localhost:{port}:127.0.0.1:{port}");
    let sni =
        curl(daemon.addr, &["--cacert", cacert, "--connect-to", &connect_to, &setup.url("/")])
            .await?;
    ensure!(sni.connect == 200 && sni.code == 0 && sni.exit != 0, "sni mismatch: {sni:?}");
    daemon.decision("http-connect", "127.0.0.1", "sni_mismatch").await?;
    ensure!(setup.origin.hits() == 1, "only the first GET reached the origin");
    Ok(())
}

/// `curl --http2` through interception: curl negotiates h2 inside the tunnel, proxyd answers
/// over HTTP/2 and speaks HTTP/2 to an origin that offers it; every request is still decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_proxyd_intercepts_curl_http2() -> anyhow::Result<()> {
    let version = Command::new(CURL).arg("-V").output().await.context("curl -V")?;
    ensure!(text(&version.stdout).contains("HTTP2"), "curl without HTTP/2: {version:?}");
    let setup = Setup::with_origin("allowed_domains = [\"localhost\"]", true).await?;
    let daemon = Daemon::start(&setup).await?;
    daemon
        .wait_for("the ca certificate", |e| {
            e["fields"]["message"] == "interception ca certificate written"
        })
        .await?;
    let cert = setup.ca_dir().join("ca.pem");
    let cacert = cert.to_str().context("path")?;

    let url = setup.url("/h2?x=1");
    let get = curl(daemon.addr, &["--http2", "--cacert", cacert, &url]).await?;
    ensure!(get.connect == 200 && get.code == 200, "{get:?}");
    ensure!(get.http_version == "2", "the response came over h2 from proxyd: {get:?}");
    ensure!(get.head()?.header("via") == Some("2 proxyd"), "{get:?}");
    // The HTTP/2 origin sees the absolute target.
    ensure!(get.body_text() == format!("origin GET {url}\n"), "{get:?}");
    let seen = setup.origin.requests();
    ensure!(seen.len() == 1 && format!("{:?}", seen[0].version) == "HTTP/2.0", "{seen:?}");
    daemon.decision("https", "localhost", "allowed").await?;

    let post =
        curl(daemon.addr, &["--http2", "--cacert", cacert, "-d", "x", &setup.url("/y")]).await?;
    ensure!(post.http_version == "2", "{post:?}");
    let body = assert_blocked(&post, 403, "blocked-by-method-policy", "method_not_allowed")?;
    ensure!(body["protocol"] == "https" && body["method"] == "POST", "{body}");
    daemon.decision("https", "localhost", "method_not_allowed").await?;
    ensure!(setup.origin.hits() == 1, "only the GET reached the origin");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_mitm_limited_mode_still_refuses_connect() -> anyhow::Result<()> {
    let setup = Setup::new("").await?;
    let config = network("mode = \"limited\"\nallowed_domains = [\"localhost\"]");
    let proxyd = Proxyd::start(&config, &[]).await?;
    let response =
        curl(proxyd.addr(), &["--cacert", path(&setup.test_ca)?, &setup.url("/")]).await?;
    ensure!(response.connect == 403 && response.exit != 0, "{response:?}");
    proxyd.wait_for_decision("http-connect", "localhost", "block", "method_not_allowed").await?;
    ensure!(setup.origin.hits() == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_tunnels_are_not_intercepted() -> anyhow::Result<()> {
    let setup = Setup::new("").await?;
    let config = network("mitm = true\nallowed_domains = [\"localhost\"]");
    let proxyd = Proxyd::start(&config, &[]).await?;
    // curl trusts only the origin's test CA: the origin's own certificate must come through.
    let response =
        curl(proxyd.addr(), &["--cacert", path(&setup.test_ca)?, &setup.url("/f")]).await?;
    ensure!(response.connect == 200 && response.code == 200, "{response:?}");
    ensure!(response.body_text() == "origin GET /f\n", "{response:?}");
    Ok(())
}

fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("non-utf-8 path")
}
