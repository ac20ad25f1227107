//! `/metrics` of the running binary in both exposition formats: the Prometheus text format
//! 0.0.4 by default, checked by the real `promtool check metrics` (installed by `.ci/run`), and
//! OpenMetrics 1.0.0 when `Accept` asks for it. Plus the generated docs: `proxyd completions`
//! and `proxyd man`.

use std::process::Stdio;

use anyhow::{Context as _, ensure};
use proxyd_test_support::HttpOrigin;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use tokio::time::timeout;

use crate::admin_support::{Reply, curl_switch_mode, get, logged_addr, post, request};
use crate::support::{BOUND, Proxyd, curl};

/// Where `.ci/run` (Debian's `prometheus` package) puts promtool.
const PROMTOOL: &str = "promtool";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// Every listener (http, socks5, admin, dns), some traffic and one reload: a `/metrics` with
/// every family populated.
async fn busy_proxyd() -> anyhow::Result<(Proxyd, std::net::SocketAddr, HttpOrigin)> {
    let toml = "[network]\nproxy_url = \"127.0.0.1:0\"\nadmin_url = \"127.0.0.1:0\"\n\
                socks_url = \"127.0.0.1:0\"\ndns_url = \"127.0.0.1:0\"\n\
                allowed_domains = [\"localhost\"]\n";
    let proxyd = Proxyd::start(toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let origin = HttpOrigin::start().await?;
    let ok = curl(proxyd.addr(), &[&format!("http://localhost:{}/", origin.addr().port())]).await?;
    ensure!(ok.code == 200, "{ok:?}");
    let blocked = curl(proxyd.addr(), &["http://unknown.test/"]).await?;
    ensure!(blocked.code == 403, "{blocked:?}");
    post(admin, "/reload", "").await?.expect(200)?;
    Ok((proxyd, admin, origin))
}

/// `promtool check metrics` on `text`: its exit status and what it printed.
async fn promtool_check(text: &str) -> anyhow::Result<(bool, String)> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run promtool (Debian package `prometheus`; .ci/run installs it)")?;
    let mut stdin = child.stdin.take().context("promtool stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let output = timeout(BOUND, child.wait_with_output()).await.context("promtool hangs")??;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), printed))
}

fn has_line(metrics: &str, line: &str) -> anyhow::Result<()> {
    ensure!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_that_promtool_accepts() -> anyhow::Result<()> {
    let (_proxyd, admin, _origin) = busy_proxyd().await?;
    for reply in [
        get(admin, "/metrics").await?,
        request(admin, "/metrics", &["-H", "Accept: text/plain"]).await?,
    ] {
        ensure!(reply.status == 200, "{reply:?}");
        let content_type = reply.head.header("content-type").unwrap_or_default();
        ensure!(content_type == "text/plain; version=0.0.4; charset=utf-8", "{content_type:?}");
        let metrics = &reply.body;
        ensure!(!metrics.contains("# EOF"), "an openmetrics marker in the text format:\n{metrics}");
        let (ok, printed) = promtool_check(metrics).await?;
        ensure!(
            ok && printed.trim().is_empty(),
            "promtool check metrics:\n{printed}\non:\n{metrics}"
        );

        has_line(metrics, "# TYPE proxyd_decisions_total counter")?;
        has_line(
            metrics,
            r#"proxyd_decisions_total{protocol="http",decision="allow",reason="allowed"} 1"#,
        )?;
        has_line(
            metrics,
            &format!("proxyd_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        )?;
        has_line(metrics, r#"proxyd_mode{mode="full"} 1"#)?;
        has_line(metrics, r#"proxyd_mode{mode="limited"} 0"#)?;
        has_line(metrics, r#"proxyd_reloads_total{result="ok"} 1"#)?;
        has_line(metrics, r#"proxyd_reloads_total{result="error"} 0"#)?;
        has_line(metrics, r#"proxyd_reloads_total{result="restart_needed"} 0"#)?;
        has_line(metrics, "# TYPE process_start_time_seconds gauge")?;
        let start = metrics
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds "))
            .context("no process_start_time_seconds sample")?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let start: f64 = start.parse()?;
        ensure!(start <= now && now - start < 600.0, "start {start}, now {now}");
        // Every listener has a connection gauge; only those that can tunnel a tunnel gauge.
        for listener in ["http", "socks5", "admin", "dns"] {
            let prefix = format!("proxyd_active_connections{{listener=\"{listener}\"}} ");
            ensure!(metrics.lines().any(|l| l.starts_with(&prefix)), "no {prefix:?}:\n{metrics}");
        }
        has_line(metrics, r#"proxyd_active_tunnels{listener="http"} 0"#)?;
        has_line(metrics, r#"proxyd_active_tunnels{listener="socks5"} 0"#)?;
        for listener in ["admin", "dns"] {
            let series = format!("proxyd_active_tunnels{{listener=\"{listener}\"}}");
            ensure!(!metrics.contains(&series), "{series} cannot be anything but 0:\n{metrics}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_when_accept_asks_for_it() -> anyhow::Result<()> {
    let (_proxyd, admin, _origin) = busy_proxyd().await?;
    // Prometheus' own scrape header ranks OpenMetrics first.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for header in [accept, "Accept: application/openmetrics-text"] {
        let reply: Reply = request(admin, "/metrics", &["-H", header]).await?;
        ensure!(reply.status == 200, "{reply:?}");
        let content_type = reply.head.header("content-type").unwrap_or_default();
        ensure!(content_type.starts_with(OPENMETRICS), "{content_type:?}");
        let metrics = &reply.body;
        ensure!(metrics.ends_with("\n# EOF\n"), "no final # EOF:\n{metrics}");
        ensure!(metrics.matches("# EOF").count() == 1, "{metrics}");
        // OpenMetrics names counter families without `_total`; every family has HELP and TYPE
        // before its samples.
        has_line(metrics, "# TYPE proxyd_decisions counter")?;
        has_line(metrics, "# TYPE proxyd_build_info gauge")?;
        has_line(metrics, r#"proxyd_reloads_total{result="ok"} 1"#)?;
        let mut described = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        for line in metrics.lines().filter(|l| *l != "# EOF") {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let family = rest.split(' ').next().unwrap_or_default().to_owned();
                ensure!(helped.contains(&family), "TYPE before HELP for {family}");
                described.insert(family);
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let known = described.iter().any(|family| {
                    name == family
                        || ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
                            .iter()
                            .any(|suffix| name.strip_suffix(suffix) == Some(family))
                });
                ensure!(known, "sample {line:?} of no described family:\n{metrics}");
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_mode_in_force() -> anyhow::Result<()> {
    let toml = crate::support::network("allowed_domains = [\"localhost\"]");
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    curl_switch_mode(admin, "limited").await?;
    let metrics = get(admin, "/metrics").await?.body;
    has_line(&metrics, r#"proxyd_mode{mode="limited"} 1"#)?;
    has_line(&metrics, r#"proxyd_mode{mode="full"} 0"#)?;
    Ok(())
}

/// `proxyd ARGS` with no config and an empty environment: (success, stdout).
async fn proxyd(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_proxyd"))
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(BOUND, output).await.context("proxyd did not exit")??;
    Ok((output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_man_page_are_generated_from_the_cli() -> anyhow::Result<()> {
    let (ok, bash) = proxyd(&["completions", "bash"]).await?;
    ensure!(ok && bash.contains("_proxyd()") && bash.contains("exec"), "{bash}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (ok, script) = proxyd(&["completions", shell]).await?;
        ensure!(ok && script.contains("exec"), "{shell}: {script}");
    }
    let (ok, page) = proxyd(&["man"]).await?;
    ensure!(ok, "{page}");
    // clap_mangen defines the apostrophe string (`Aq`) first, then the title.
    let title = page.lines().find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "));
    ensure!(title.is_some_and(|l| l.starts_with(".TH proxyd 1")), "{page}");
    ensure!(page.contains(".SH SUBCOMMANDS") && page.contains("exec"), "{page}");
    // An unknown shell is a usage error.
    let (ok, _) = proxyd(&["completions", "nosuchshell"]).await?;
    ensure!(!ok, "an unknown shell was accepted");
    Ok(())
}
