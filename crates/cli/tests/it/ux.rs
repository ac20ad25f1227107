//! What a new user trips on (issue 17): `proxyd exec` behaving as a wrapper (signals passed
//! on, unknown options refused, shell-like exit codes for a command that cannot start, the CA
//! variables of every common tool, failures in the summary), a proxyd whose own proxy
//! variables point at itself, and the log saying what is running.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use anyhow::{Context as _, bail, ensure};
use proxyd_test_support::{TempDir, temp_dir};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::admin_support::{CURL, write};
use crate::support::{BOUND, Proxyd, network, run};

/// The binary under test.
const PROXYD: &str = env!("CARGO_BIN_EXE_proxyd");

const ALLOW_LOCALHOST: &str = "[network]\nallowed_domains = [\"localhost\"]\n";

/// `proxyd exec --config FILE ARGS...` with a clean environment, in a process group of its
/// own (so no terminal's signals reach it, and SIGINT is passed on like the others), stdout
/// and stderr piped.
fn exec_command(dir: &Path, toml: &str, args: &[&str]) -> anyhow::Result<Command> {
    let config = dir.join("config.toml");
    write(&config, toml)?;
    let mut command = Command::new(PROXYD);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CODEX_HOME", dir)
        .arg("exec")
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    Ok(command)
}

#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

async fn exec(toml: &str, args: &[&str]) -> anyhow::Result<Finished> {
    let dir = temp_dir("proxyd-ux-exec")?;
    let output = exec_command(&dir, toml, args)?.output();
    let output = timeout(BOUND + BOUND, output)
        .await
        .with_context(|| format!("proxyd exec {args:?} did not exit"))?
        .context("run proxyd exec")?;
    Ok(Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs a command that prints `ready` once its trap is set, sends `signal` to proxyd (not to
/// the command), and returns how proxyd ended. Errors carry proxyd's stderr.
async fn signal_exec(signal: &str, script: &str) -> anyhow::Result<Finished> {
    let dir = temp_dir("proxyd-ux-signal")?;
    let mut child: Child =
        exec_command(&dir, ALLOW_LOCALHOST, &["--", "sh", "-c", script])?.spawn()?;
    let pid = child.id().context("proxyd exited at once")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut stderr = child.stderr.take().context("stderr")?;
    let stderr = tokio::spawn(async move {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        err
    });
    let steps = async {
        let mut out = String::new();
        timeout(BOUND, stdout.read_line(&mut out)).await.context("no ready line")??;
        ensure!(out == "ready\n", "unexpected first line {out:?}");
        let kill = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        ensure!(timeout(BOUND, kill).await??.success(), "kill -{signal} failed");
        let status = timeout(BOUND, child.wait()).await.context("proxyd did not exit")??;
        timeout(BOUND, stdout.read_to_string(&mut out)).await.context("stdout not closed")??;
        Ok((status, out))
    };
    let result = steps.await;
    if result.is_err() {
        // The whole process group (proxyd and the command, which holds stderr open too), so
        // the error below is the step that failed and not "stderr not closed".
        let group = format!("-{pid}");
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status().await;
        let _ = child.start_kill();
    }
    let err = timeout(BOUND, stderr).await.context("stderr not closed")??;
    let (status, stdout) = result.with_context(|| format!("proxyd's stderr: {err}"))?;
    Ok(Finished { status, stdout, stderr: err })
}

/// A trap that reports the signal and exits 7. The shell runs a trap once its foreground
/// command ends, so it sleeps in short steps: the trap runs within 0.1 s of the signal, and
/// nothing outlives the shell to hold stdout open. (`sleep 30 & wait` was flaky: a signal
/// that lands between `echo ready` and the `wait` builtin's suspend is seen only when the
/// background `sleep` ends.)
fn trap_script(signal: &str) -> String {
    format!("trap 'echo got {signal}; exit 7' {signal}; echo ready; while :; do sleep 0.1; done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_sigterm_on_and_exits_with_the_commands_status() -> anyhow::Result<()> {
    let run = signal_exec("TERM", &trap_script("TERM")).await?;
    ensure!(run.status.code() == Some(7), "the trap's exit status: {run:?}");
    ensure!(run.stdout.contains("got TERM"), "the command's trap ran: {run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_sigint_and_sigquit_on() -> anyhow::Result<()> {
    for signal in ["INT", "QUIT"] {
        let run = signal_exec(signal, &trap_script(signal)).await?;
        ensure!(run.status.code() == Some(7), "{signal}: {run:?}");
        ensure!(run.stdout.contains(&format!("got {signal}")), "{signal}: {run:?}");
    }
    // A command without a trap dies of the signal: 128 + 15, as a shell reports it.
    let run = signal_exec("TERM", "echo ready; exec sleep 30").await?;
    ensure!(run.status.code() == Some(128 + 15), "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_refuses_an_unknown_option_instead_of_running_it() -> anyhow::Result<()> {
    let run = exec(ALLOW_LOCALHOST, &["--confg", "x.toml", "--", "sh", "-c", "echo ran"]).await?;
    ensure!(run.status.code() == Some(2), "{run:?}");
    ensure!(run.stderr.contains("--confg"), "the error names the option: {run:?}");
    ensure!(!run.stdout.contains("ran"), "the command must not run: {run:?}");
    // Options after `--` still belong to the command, and so do those after its name.
    let run = exec(ALLOW_LOCALHOST, &["--", "sh", "-c", "echo \"$0 $1\"", "-x", "--y"]).await?;
    ensure!(run.status.code() == Some(0) && run.stdout == "-x --y\n", "{run:?}");
    let run = exec(ALLOW_LOCALHOST, &["sh", "-c", "echo \"$0\"", "-z"]).await?;
    ensure!(run.status.code() == Some(0) && run.stdout == "-z\n", "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_missing_or_unexecutable_command_exits_like_a_shell() -> anyhow::Result<()> {
    let run = exec(ALLOW_LOCALHOST, &["--", "/nonexistent/proxyd-no-such-command"]).await?;
    ensure!(run.status.code() == Some(127), "{run:?}");
    ensure!(
        run.stderr.contains("/nonexistent/proxyd-no-such-command: command not found"),
        "{run:?}"
    );
    let dir = temp_dir("proxyd-ux-noexec")?;
    let script = dir.join("script.sh");
    write(&script, "#!/bin/sh\necho hi\n")?;
    let run = exec(ALLOW_LOCALHOST, &["--", script.to_str().context("utf-8")?]).await?;
    ensure!(run.status.code() == Some(126), "{run:?}");
    ensure!(run.stderr.contains("permission denied"), "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_interception_points_every_tools_ca_variable_at_the_bundle() -> anyhow::Result<()>
{
    let vars = [
        "SSL_CERT_FILE",
        "npm_config_cafile",
        "NPM_CONFIG_CAFILE",
        "CARGO_HTTP_CAINFO",
        "BUNDLE_SSL_CA_CERT",
        "AWS_CA_BUNDLE",
        "HTTPLIB2_CA_CERTS",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
    ];
    let script: String = vars.iter().map(|v| format!("echo \"{v}=${v}\"; ")).collect();
    let script = format!("{script} test -s \"$SSL_CERT_FILE\" && echo bundle-exists");
    let toml = "[network]\nmode = \"limited\"\nmitm = true\nallowed_domains = [\"localhost\"]\n";
    let run = exec(toml, &["--", "sh", "-c", &script]).await?;
    ensure!(run.status.code() == Some(0), "{run:?}");
    let bundle = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("SSL_CERT_FILE="))
        .filter(|b| !b.is_empty())
        .with_context(|| format!("no SSL_CERT_FILE: {run:?}"))?
        .to_owned();
    for var in vars {
        ensure!(run.stdout.contains(&format!("{var}={bundle}\n")), "{var}: {run:?}");
    }
    ensure!(run.stdout.contains("bundle-exists"), "{run:?}");
    let notices: Vec<&str> =
        run.stderr.lines().filter(|l| l.contains("interception is on")).collect();
    ensure!(notices.len() == 1, "one notice: {run:?}");
    ensure!(notices[0].contains(&bundle), "the notice names the bundle: {run:?}");
    // Without interception: no notice.
    let run = exec(ALLOW_LOCALHOST, &["--", "true"]).await?;
    ensure!(!run.stderr.contains("interception"), "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_summary_lists_failures_apart_from_blocks() -> anyhow::Result<()> {
    // Port 1 on loopback: nothing unprivileged listens there, so the connection is refused.
    let script = format!("{CURL} -sS http://localhost:1/; {CURL} -sS http://blocked.test/");
    let run = exec(ALLOW_LOCALHOST, &["--", "sh", "-c", &script]).await?;
    ensure!(run.stderr.contains("proxyd: blocked 1 request(s):"), "{run:?}");
    ensure!(run.stderr.contains("proxyd: 1 request(s) failed"), "{run:?}");
    let line = run.stderr.lines().find(|l| l.contains("localhost:1 ")).map(str::to_owned);
    let line = line.with_context(|| format!("no failure line: {run:?}"))?;
    ensure!(line.contains("connect_refused") && line.contains("via http"), "{line}");
    Ok(())
}

/// A running `proxyd` (serve) with an environment of the test's choosing, its stderr lines
/// collected.
struct Served {
    child: Child,
    log: watch::Receiver<Vec<String>>,
    _dir: TempDir,
}

impl Served {
    fn stderr(&self) -> String {
        self.log.borrow().join("\n")
    }

    /// Waits for the `listening` line of the http listener, or for proxyd to exit.
    async fn wait_listening(&mut self) -> anyhow::Result<bool> {
        let mut log = self.log.clone();
        let listening = |lines: &Vec<String>| {
            lines.iter().any(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|e| {
                    e["fields"]["message"] == "listening" && e["fields"]["listener"] == "http"
                })
            })
        };
        match timeout(BOUND, log.wait_for(listening)).await {
            Ok(Ok(_)) => Ok(true),
            // stderr closed: proxyd exited (the port was taken, most likely).
            Ok(Err(_)) => Ok(false),
            Err(_) => bail!("proxyd did not start within {BOUND:?}: {}", self.stderr()),
        }
    }
}

async fn serve(toml: &str, env: &[(&str, String)]) -> anyhow::Result<Served> {
    let dir = temp_dir("proxyd-ux-serve")?;
    let config = dir.join("config.toml");
    write(&config, toml)?;
    let mut child = Command::new(PROXYD)
        .env_clear()
        .env("CODEX_HOME", dir.path())
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, log) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tx.send_modify(|lines| lines.push(line));
        }
    });
    Ok(Served { child, log, _dir: dir })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_variable_naming_proxyds_own_listener_is_ignored() -> anyhow::Result<()> {
    // The listener's port must be known before start: take a free one, release it, and try
    // again if another process takes it before proxyd binds it.
    for _attempt in 0..5 {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let toml = network(r#"allowed_domains = ["localhost"]"#)
            .replace("proxy_url = \"127.0.0.1:0\"", &format!("proxy_url = \"127.0.0.1:{port}\""));
        let env = [
            ("HTTP_PROXY", format!("http://localhost:{port}")),
            // Another port: a real upstream proxy, kept.
            ("HTTPS_PROXY", format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1))),
        ];
        let mut served = serve(&toml, &env).await?;
        if !served.wait_listening().await? {
            let _ = served.child.kill().await;
            continue;
        }
        let stderr = served.stderr();
        let warnings: Vec<Value> = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["level"] == "WARN" && e["fields"]["variable"].is_string())
            .collect();
        ensure!(warnings.len() == 1, "one warning: {stderr}");
        ensure!(warnings[0]["fields"]["variable"] == "HTTP_PROXY", "{stderr}");
        let message = warnings[0]["fields"]["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("own listener") && message.contains(&port.to_string()),
            "{message}"
        );
        return Ok(());
    }
    bail!("could not bind a free port for proxyd in 5 attempts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_logs_the_files_mode_and_lists() -> anyhow::Result<()> {
    let proxyd = Proxyd::start(
        &network("allowed_domains = [\"localhost\", \"a.test\"]\ndenied_domains = [\"b.test\"]"),
        &[],
    )
    .await?;
    let event = proxyd
        .wait_for_event("the config summary", |e| {
            e["fields"]["message"].as_str().is_some_and(|m| m.starts_with("config: "))
        })
        .await?;
    let fields = &event["fields"];
    ensure!(fields["files"].as_str().is_some_and(|f| f.ends_with("config.toml")), "{event}");
    ensure!(fields["mode"] == "full", "{event}");
    ensure!(fields["allowed"] == 2 && fields["denied"] == 1 && fields["rules"] == 0, "{event}");
    ensure!(!proxyd.stderr().contains("nothing can pass"), "{}", proxyd.stderr());

    let empty = Proxyd::start(&network(""), &[]).await?;
    let warning = empty
        .wait_for_event("the empty allowlist warning", |e| {
            e["level"] == "WARN"
                && e["fields"]["message"].as_str().is_some_and(|m| m.contains("nothing can pass"))
        })
        .await?;
    ensure!(warning["fields"]["message"].as_str().unwrap_or_default().contains("allowed_domains"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_logs_what_changed_and_a_refused_one_why() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-ux-reload")?;
    let policy = dir.join("policy.toml");
    write(&policy, "[network]\nallowed_domains = [\"a.localhost\", \"b.localhost\"]\n")?;
    let path = policy.to_str().context("utf-8")?;
    let proxyd = Proxyd::start(&network(""), &["--config", path]).await?;
    write(
        &policy,
        "[network]\nmode = \"limited\"\nallowed_domains = [\"b.localhost\", \"c.localhost\"]\n",
    )?;
    proxyd.signal("HUP").await?;
    let event = proxyd
        .wait_for_event("the reload's changes", |e| {
            e["fields"]["message"].as_str().is_some_and(|m| m.starts_with("config reloaded"))
        })
        .await?;
    let changes = event["fields"]["changes"].as_str().unwrap_or_default();
    ensure!(
        changes
            == "allowed_domains +[c.localhost]; allowed_domains -[a.localhost]; mode full -> limited",
        "{event}"
    );

    write(&policy, "[network]\nallowed_domains = \"not a list\"\n")?;
    proxyd.signal("HUP").await?;
    let event = proxyd
        .wait_for_event("the refused reload", |e| {
            e["level"] == "ERROR"
                && e["fields"]["message"].as_str().is_some_and(|m| m.contains("reload refused"))
        })
        .await?;
    let message = event["fields"]["message"].as_str().unwrap_or_default();
    ensure!(message.contains(&format!("{path}:2")), "names file and line: {message}");
    ensure!(!message.contains("Invalid(") && !message.contains("[\""), "Display: {message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_at_start_honour_the_json_log_format() -> anyhow::Result<()> {
    let toml = "[network]\nmode = \"sideways\"\nallowed_domains = \"nope\"\n";
    let run = run(toml, &["--log-format", "json"]).await?;
    ensure!(run.status.code() == Some(2), "{run:?}");
    let path = run.config.display().to_string();
    let events: Vec<Value> = run
        .stderr
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<_, _>>()
        .with_context(|| format!("every stderr line is json: {run:?}"))?;
    // The file is both $CODEX_HOME/config.toml and --config here: each read reports its two.
    ensure!(events.len() == 4, "one event per error: {run:?}");
    for event in &events {
        ensure!(event["level"] == "ERROR", "{event}");
        ensure!(event["fields"]["file"] == path.as_str(), "{event}");
        let message = event["fields"]["message"].as_str().unwrap_or_default();
        ensure!(message.starts_with("invalid configuration: network."), "{event}");
    }
    for line in [2, 3] {
        ensure!(events.iter().any(|e| e["fields"]["line"] == line), "line {line}: {run:?}");
    }
    Ok(())
}
