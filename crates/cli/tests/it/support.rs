//! Shared helpers: a temporary config, the built `proxyd` binary as a child process whose
//! stderr is collected line by line, and real `curl` runs through it. Every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use proxyd_test_support::{ResponseHead, TempDir, temp_dir};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::timeout;

/// How long any single wait in these tests may take before the test fails.
pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// The binary under test, built by cargo for this test run.
const PROXYD: &str = env!("CARGO_BIN_EXE_proxyd");

/// The real curl.
const CURL: &str = "/usr/bin/curl";

/// A `[network]` table with every listener on loopback port 0 and SOCKS5 off, followed by
/// `extra` (one key per line). `extra` starts on line 6 of the file.
pub(crate) fn network(extra: &str) -> String {
    format!(
        "[network]\n\
         proxy_url = \"127.0.0.1:0\"\n\
         admin_url = \"127.0.0.1:0\"\n\
         socks_url = \"127.0.0.1:0\"\n\
         enable_socks5 = false\n\
         {extra}\n"
    )
}

/// `proxyd` with a clean environment: no proxy variables (proxyd would chain to them), no
/// `SSL_CERT_FILE`, no `RUST_LOG` but `info`, and `CODEX_HOME` pointing at `dir` so no user
/// config is read.
fn proxyd_command(dir: &Path) -> Command {
    proxyd_command_under(&[], dir)
}

/// [`proxyd_command`] run as `WRAPPER... proxyd` (e.g. `prlimit --nofile=64:64 --`), where the
/// wrapper execs proxyd in its own process.
fn proxyd_command_under(wrapper: &[&str], dir: &Path) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(PROXYD);
            command
        }
        None => Command::new(PROXYD),
    };
    command
        .env_clear()
        .env("CODEX_HOME", dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Writes `toml` to `dir/config.toml` and returns its path.
fn write_config(dir: &Path, toml: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The result of a `proxyd` run that is expected to exit by itself.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// The config file it was given.
    pub(crate) config: PathBuf,
    _dir: TempDir,
}

/// Runs `proxyd ARGS... --config FILE` (text logs) with `toml` in FILE and waits for it to exit.
pub(crate) async fn run(toml: &str, args: &[&str]) -> anyhow::Result<Run> {
    let dir = temp_dir("proxyd-cli-it")?;
    let config = write_config(&dir, toml)?;
    let child = proxyd_command(&dir)
        .args(args)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn proxyd")?;
    // Dropping the future on timeout kills the child (kill_on_drop).
    let output = timeout(BOUND, child.wait_with_output())
        .await
        .with_context(|| format!("proxyd {args:?} did not exit within {BOUND:?}"))?
        .context("wait for proxyd")?;
    Ok(Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        config,
        _dir: dir,
    })
}

/// A running `proxyd`, killed when dropped.
#[derive(Debug)]
pub(crate) struct Proxyd {
    child: Child,
    addr: SocketAddr,
    /// Every stderr line so far; the sender is dropped at EOF.
    log: watch::Receiver<Vec<String>>,
    _dir: TempDir,
}

/// How `proxyd` is asked to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Proxyd {
    /// Starts `proxyd --log-format json --config FILE ARGS...` with `toml` in FILE and waits
    /// until it logs the HTTP listener's address.
    pub(crate) async fn start(toml: &str, args: &[&str]) -> anyhow::Result<Proxyd> {
        Self::start_with(LogFormat::Json, toml, args).await
    }

    pub(crate) async fn start_with(
        format: LogFormat,
        toml: &str,
        args: &[&str],
    ) -> anyhow::Result<Proxyd> {
        Self::start_under(&[], format, toml, args).await
    }

    /// [`Proxyd::start_with`], run as `WRAPPER... proxyd ...` (see [`proxyd_command_under`]).
    pub(crate) async fn start_under(
        wrapper: &[&str],
        format: LogFormat,
        toml: &str,
        args: &[&str],
    ) -> anyhow::Result<Proxyd> {
        let dir = temp_dir("proxyd-cli-it")?;
        let config = write_config(&dir, toml)?;
        let format_arg = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let mut child = proxyd_command_under(wrapper, &dir)
            .args(["--log-format", format_arg, "--config"])
            .arg(&config)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn proxyd")?;
        let stderr = child.stderr.take().context("proxyd stderr")?;
        let (lines_tx, log) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                lines_tx.send_modify(|lines| lines.push(line));
            }
        });
        let mut proxyd =
            Proxyd { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), log, _dir: dir };
        let line = proxyd.wait_for_line("the http listener's address", listening_line).await?;
        let addr = listening_addr(&line).context("listening line without an address")?;
        proxyd.addr =
            addr.parse().with_context(|| format!("bad listener address {addr:?} in {line:?}"))?;
        Ok(proxyd)
    }

    /// The bound HTTP proxy address, as logged.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id (for `/proc/PID/...`).
    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("proxyd already exited")
    }

    /// Everything written to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.log.borrow().join("\n")
    }

    /// Waits until a stderr line satisfies `matches`, and returns it.
    pub(crate) async fn wait_for_line(
        &self,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let mut log = self.log.clone();
        let found = timeout(BOUND, log.wait_for(|lines| lines.iter().any(|l| matches(l)))).await;
        match found {
            Ok(Ok(lines)) => Ok(lines.iter().find(|l| matches(l)).cloned().unwrap_or_default()),
            Ok(Err(_)) => {
                bail!("proxyd closed stderr before logging {what}; stderr:\n{}", self.stderr())
            }
            Err(_) => {
                bail!("proxyd did not log {what} within {BOUND:?}; stderr:\n{}", self.stderr())
            }
        }
    }

    /// Waits until a JSON log event satisfies `matches`, and returns it.
    pub(crate) async fn wait_for_event(
        &self,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let line = self
            .wait_for_line(what, |line| serde_json::from_str(line).is_ok_and(|e| matches(&e)))
            .await?;
        serde_json::from_str(&line).context("parse log event")
    }

    /// Waits for the decision event (SPEC §10) about `host` with `decision` and `reason`.
    pub(crate) async fn wait_for_decision(
        &self,
        protocol: &str,
        host: &str,
        decision: &str,
        reason: &str,
    ) -> anyhow::Result<Value> {
        let what = format!("a {protocol} decision {decision}/{reason} for {host}");
        self.wait_for_event(&what, |event| {
            let fields = &event["fields"];
            fields["message"] == "decision"
                && fields["protocol"] == protocol
                && fields["host"] == host
                && fields["decision"] == decision
                && fields["reason"] == reason
        })
        .await
    }

    /// Sends `signal` (e.g. `TERM`) with `kill(1)`.
    pub(crate) async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("proxyd already exited")?;
        let status = timeout(
            BOUND,
            Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status(),
        )
        .await
        .context("kill timed out")?
        .context("run kill")?;
        ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
        Ok(())
    }

    /// Waits for the process to exit.
    pub(crate) async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        match timeout(BOUND, self.child.wait()).await {
            Ok(status) => status.context("wait for proxyd"),
            Err(_) => bail!("proxyd did not exit within {BOUND:?}; stderr:\n{}", self.stderr()),
        }
    }
}

/// The start-up line for the HTTP listener, in either log format.
fn listening_line(line: &str) -> bool {
    match serde_json::from_str::<Value>(line) {
        Ok(event) => {
            event["fields"]["message"] == "listening" && event["fields"]["listener"] == "http"
        }
        Err(_) => line.contains("listening") && line.contains("listener=\"http\""),
    }
}

/// `addr` of a [`listening_line`].
fn listening_addr(line: &str) -> Option<String> {
    match serde_json::from_str::<Value>(line) {
        Ok(event) => event["fields"]["addr"].as_str().map(str::to_owned),
        Err(_) => {
            let rest = &line[line.find(" addr=")? + " addr=".len()..];
            Some(rest.split_whitespace().next()?.to_owned())
        }
    }
}

/// What one `curl` run through the proxy produced.
#[derive(Debug)]
pub(crate) struct Curl {
    /// curl's exit code (0 on success; 56 when a CONNECT was refused).
    pub(crate) exit: i64,
    /// The final response's status (`0` when there was none).
    pub(crate) code: u64,
    /// The proxy's answer to `CONNECT` (`0` when no tunnel was asked for).
    pub(crate) connect: u64,
    /// Every response head received, in order: the `CONNECT` answer first when tunnelling.
    pub(crate) heads: Vec<ResponseHead>,
    /// The final response's HTTP version as curl's `%{http_version}` has it: `1.1`, `2`.
    pub(crate) http_version: String,
    pub(crate) body: Vec<u8>,
    pub(crate) stderr: String,
}

impl Curl {
    /// The last response head.
    pub(crate) fn head(&self) -> anyhow::Result<&ResponseHead> {
        self.heads
            .last()
            .with_context(|| format!("no response head; curl said {:?}: {self:?}", self.stderr))
    }

    pub(crate) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn body_json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not json: {:?}", self.body_text()))
    }
}

/// Runs `curl -x http://PROXY ARGS...` with a clean environment and no `.curlrc`.
pub(crate) async fn curl(proxy: SocketAddr, args: &[&str]) -> anyhow::Result<Curl> {
    let dir = temp_dir("proxyd-cli-curl")?;
    let (head_file, body_file) = (dir.join("head"), dir.join("body"));
    let child = Command::new(CURL)
        // `-q` must come first: it skips any .curlrc.
        .args(["-q", "-sS", "--max-time", "10", "-w", "%{json}", "-x"])
        .arg(format!("http://{proxy}"))
        .arg("-D")
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file)
        .args(args)
        // No http_proxy, https_proxy, all_proxy, no_proxy or HOME leak in.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn curl")?;
    let output = timeout(BOUND + Duration::from_secs(5), child.wait_with_output())
        .await
        .with_context(|| format!("curl {args:?} did not exit"))?
        .context("wait for curl")?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stats: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "curl -w %{{json}} output: {:?}, stderr {stderr:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let number = |key: &str| stats[key].as_u64().unwrap_or(0);
    let heads = match std::fs::read(&head_file) {
        Ok(bytes) => parse_heads(&bytes)?,
        Err(_) => Vec::new(),
    };
    Ok(Curl {
        exit: stats["exitcode"].as_i64().unwrap_or(-1),
        code: number("http_code"),
        connect: number("http_connect"),
        heads,
        http_version: stats["http_version"].as_str().unwrap_or_default().to_owned(),
        body: std::fs::read(&body_file).unwrap_or_default(),
        stderr,
    })
}

/// Splits curl's `-D` output into its response heads.
fn parse_heads(bytes: &[u8]) -> anyhow::Result<Vec<ResponseHead>> {
    let mut heads = Vec::new();
    let mut rest = bytes.to_vec();
    while !rest.is_empty() {
        let mut head = ResponseHead::parse(&rest)?;
        rest = std::mem::take(&mut head.rest);
        heads.push(head);
    }
    Ok(heads)
}

/// Asserts that curl got a blocked response from proxyd (SPEC §6.1): `status`, `x-proxy-error`
/// and a JSON body carrying `reason`. Returns the body.
pub(crate) fn assert_blocked(
    response: &Curl,
    status: u64,
    header: &str,
    reason: &str,
) -> anyhow::Result<Value> {
    ensure!(response.code == status, "expected {status}, got {response:?}");
    let head = response.head()?;
    ensure!(
        head.header("x-proxy-error") == Some(header),
        "expected x-proxy-error {header}, got {head:?}"
    );
    ensure!(
        head.header("content-type") == Some("application/json"),
        "expected a json body, got {head:?}"
    );
    let body = response.body_json()?;
    ensure!(body["status"] == "blocked", "body {body}");
    ensure!(body["reason"] == reason, "expected reason {reason}, body {body}");
    ensure!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "no message in {body}");
    Ok(body)
}

/// `dig @dns NAME A` with `flags` (e.g. `+tcp`, `+tries=1`, `+time=5`): the answer's status
/// (`NOERROR`, `REFUSED`, …, or `none` when dig printed no answer).
pub(crate) async fn dig_status(
    dns: SocketAddr,
    name: &str,
    flags: &[&str],
) -> anyhow::Result<String> {
    let output = Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string()])
        .args(flags)
        .args([name, "A"])
        .kill_on_drop(true)
        .output();
    let output = timeout(BOUND, output).await.context("dig did not exit")?.context("run dig")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
        .to_owned())
}
