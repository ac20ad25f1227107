//! `proxyd exec [--config FILE] -- COMMAND`: the command runs behind a fresh proxy on
//! ephemeral loopback ports with the proxy environment set, blocked requests are summarised on
//! stderr, and proxyd exits with the command's status.

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use anyhow::{Context as _, ensure};
use proxyd_test_support::{HttpOrigin, TempDir, temp_dir};
use tokio::process::Command;
use tokio::time::timeout;

use crate::admin_support::{CURL, write};
use crate::support::BOUND;

/// The binary under test.
const PROXYD: &str = env!("CARGO_BIN_EXE_proxyd");

/// A config allowlisting `localhost`, with the default listener addresses: `exec` must move
/// them to ephemeral ports.
const ALLOW_LOCALHOST: &str = "[network]\nallowed_domains = [\"localhost\"]\n";

struct Exec {
    output: Output,
    _dir: TempDir,
}

impl Exec {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code(), self.stdout(), self.stderr())
    }
}

/// Runs `proxyd exec --config FILE -- COMMAND...` with `toml` in FILE, a clean environment
/// (`PATH` only, `CODEX_HOME` pointing at an empty directory) and waits for it to exit.
async fn exec(toml: &str, command: &[&str]) -> anyhow::Result<Exec> {
    let dir = temp_dir("proxyd-exec-it")?;
    let config = dir.join("config.toml");
    write(&config, toml)?;
    let output = Command::new(PROXYD)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CODEX_HOME", dir.path())
        .arg("exec")
        .arg("--config")
        .arg(&config)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(BOUND + BOUND, output)
        .await
        .with_context(|| format!("proxyd exec {command:?} did not exit"))?
        .context("run proxyd exec")?;
    Ok(Exec { output, _dir: dir })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_url_reaches_the_origin_and_exits_0() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let url = format!("http://localhost:{}/", origin.addr().port());
    let run = exec(ALLOW_LOCALHOST, &[CURL, "-sS", &url]).await?;
    ensure!(run.code() == Some(0), "{run:?}");
    ensure!(run.stdout() == "origin GET /\n", "{run:?}");
    ensure!(!run.stderr().contains("blocked"), "nothing was blocked: {run:?}");
    // It went through proxyd, which adds a Via header (SPEC §7.2).
    let requests = origin.requests();
    ensure!(requests.len() == 1 && requests[0].header("via").is_some(), "{requests:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_url_exits_with_curls_status_and_a_summary() -> anyhow::Result<()> {
    let run = exec(ALLOW_LOCALHOST, &[CURL, "-sS", "-f", "http://unknown.test/"]).await?;
    ensure!(run.code() == Some(22), "curl -f exits 22 on the 403: {run:?}");
    let stderr = run.stderr();
    ensure!(stderr.contains("proxyd: blocked 1 request(s):"), "{run:?}");
    ensure!(
        stderr.lines().any(|l| l.contains("unknown.test:80")
            && l.contains("not_allowed")
            && l.contains("http")),
        "the summary names the host and the reason: {run:?}"
    );

    // Through CONNECT, twice: one line with the count.
    let url = "https://unknown.test/";
    let run = exec(ALLOW_LOCALHOST, &["sh", "-c", &format!("{CURL} -sS {url}; {CURL} -sS {url}")])
        .await?;
    ensure!(run.code() == Some(56), "curl exits 56 on a refused CONNECT: {run:?}");
    ensure!(run.stderr().contains("proxyd: blocked 2 request(s):"), "{run:?}");
    let line = run.stderr().lines().find(|l| l.contains("unknown.test:443")).map(str::to_owned);
    let line = line.with_context(|| format!("no summary line: {run:?}"))?;
    ensure!(
        line.contains("not_allowed") && line.contains("http-connect") && line.contains("2 times"),
        "{line}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_sees_the_proxy_environment() -> anyhow::Result<()> {
    let script = "echo \"$HTTP_PROXY $ALL_PROXY\"; \
                  echo \"$http_proxy|$HTTPS_PROXY|$https_proxy|$all_proxy|$NO_PROXY|$no_proxy|${NO_PROXY+set}\"";
    let run = exec(ALLOW_LOCALHOST, &["sh", "-c", script]).await?;
    ensure!(run.code() == Some(0), "{run:?}");
    let stdout = run.stdout();
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default();
    let (http, all) = first.split_once(' ').with_context(|| format!("{run:?}"))?;
    let http_addr: SocketAddr =
        http.strip_prefix("http://").context("HTTP_PROXY is http://")?.parse()?;
    let socks_addr: SocketAddr =
        all.strip_prefix("socks5h://").context("ALL_PROXY is socks5h://")?.parse()?;
    for addr in [http_addr, socks_addr] {
        ensure!(addr.ip().is_loopback(), "{run:?}");
    }
    // Not the config's defaults: exec uses ephemeral ports.
    ensure!(http_addr.port() != 3128 && socks_addr.port() != 8081, "{run:?}");
    ensure!(http_addr != socks_addr, "{run:?}");
    let second = lines.next().unwrap_or_default();
    ensure!(second == format!("{http}|{http}|{http}|{all}|||set"), "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxyd_exits_with_the_commands_status() -> anyhow::Result<()> {
    let run = exec(ALLOW_LOCALHOST, &["sh", "-c", "exit 7"]).await?;
    ensure!(run.code() == Some(7), "{run:?}");
    let run = exec(ALLOW_LOCALHOST, &["sh", "-c", "kill -TERM $$"]).await?;
    ensure!(run.code() == Some(128 + 15), "a child killed by SIGTERM: {run:?}");
    Ok(())
}

/// Issue 11: the confined command rewrites the `--config` file and sends SIGHUP to proxyd (its
/// parent): the policy must not change. `proxyd exec` reads its config once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_from_the_command_cannot_lift_the_policy() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let dir = temp_dir("proxyd-exec-hup")?;
    let config = dir.join("config.toml");
    write(&config, "[network]\nallowed_domains = [\"first.localhost\"]\n")?;
    let url = format!("http://second.localhost:{}/", origin.addr().port());
    let script = format!(
        "{CURL} -s -o /dev/null -w '%{{http_code}}\\n' {url}; \
         printf '[network]\\nallowed_domains = [\"second.localhost\"]\\n' > {config}; \
         kill -HUP $PPID; sleep 1; \
         {CURL} -s -o /dev/null -w '%{{http_code}}\\n' {url}",
        config = config.display()
    );
    let output = Command::new(PROXYD)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CODEX_HOME", dir.path())
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(BOUND + BOUND, output).await.context("exec did not exit")??;
    let run = Exec { output, _dir: dir };
    ensure!(run.code() == Some(0), "{run:?}");
    ensure!(
        run.stdout() == "403\n403\n",
        "the rewritten file and SIGHUP changed the policy: {run:?}"
    );
    ensure!(origin.hits() == 0, "{run:?}");
    Ok(())
}

/// Issue 12: a brokered credential. The command is given a placeholder in `GITHUB_TOKEN`; the
/// origin it is bound to (over TLS, intercepted in full mode) receives the real token; another
/// host receives the placeholder; the command itself never sees the real value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brokered_token_reaches_only_its_host_and_the_command_never_sees_it() -> anyhow::Result<()>
{
    let ca = proxyd_test_support::TestCa::new()?;
    let bound = proxyd_test_support::TlsOrigin::start(&ca, &["api.localhost"]).await?;
    let other = proxyd_test_support::TlsOrigin::start(&ca, &["other.localhost"]).await?;
    let dir = temp_dir("proxyd-exec-broker")?;
    let ca_file = ca.write_pem(dir.path())?;
    let config = dir.join("config.toml");
    let real = "ghp_RealTokenValue0123456789abcdefghij";
    write(
        &config,
        "[network]\nallowed_domains = [\"api.localhost\", \"other.localhost\"]\n\
         [[network.credentials]]\nname = \"github\"\nenv = \"GITHUB_TOKEN\"\n\
         hosts = [\"api.localhost\"]\nsecret_env = \"REAL_GITHUB_TOKEN\"\n",
    )?;
    let script = format!(
        "echo \"child sees: $GITHUB_TOKEN\"; \
         {CURL} -sS -o /dev/null -w '%{{http_code}}\\n' -H \"Authorization: Bearer $GITHUB_TOKEN\" https://api.localhost:{}/repos; \
         {CURL} -sS -o /dev/null -w '%{{http_code}}\\n' -H \"Authorization: Bearer $GITHUB_TOKEN\" https://other.localhost:{}/",
        bound.addr().port(),
        other.addr().port()
    );
    let output = Command::new(PROXYD)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CODEX_HOME", dir.path())
        .env("SSL_CERT_FILE", &ca_file)
        .env("REAL_GITHUB_TOKEN", real)
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--", "/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(BOUND + BOUND, output).await.context("exec did not exit")??;
    let run = Exec { output, _dir: dir };
    ensure!(run.code() == Some(0), "{run:?}");
    let stdout = run.stdout();
    ensure!(stdout.ends_with("200\n200\n"), "{run:?}");
    ensure!(!stdout.contains(real), "the command saw the real token: {run:?}");
    let seen = stdout.lines().next().and_then(|l| l.strip_prefix("child sees: ")).unwrap_or("");
    ensure!(seen.starts_with("ghp_") && seen.len() == real.len(), "placeholder shape: {seen:?}");
    let at_bound = bound.requests();
    ensure!(
        at_bound.len() == 1
            && at_bound[0].header("authorization") == Some(&format!("Bearer {real}")[..]),
        "the bound host did not get the real token: {at_bound:?}"
    );
    let at_other = other.requests();
    ensure!(
        at_other.len() == 1
            && at_other[0].header("authorization") == Some(&format!("Bearer {seen}")[..]),
        "the unbound host must get the placeholder: {at_other:?}"
    );
    Ok(())
}
