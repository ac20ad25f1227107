//! The `proxyd` process: config errors and exit codes (SPEC §2.3), `check`, `enabled = false`,
//! clamping warnings, start-up logs (SPEC §10) and shutdown on signals.

use std::net::Ipv4Addr;

use anyhow::{Context as _, ensure};
use proxyd_test_support::HttpOrigin;

use crate::support::{LogFormat, Proxyd, Run, curl, network, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_exits_2_naming_file_line_and_suggestion() -> anyhow::Result<()> {
    let run = run(&network(r#"alowed_domains = ["localhost"]"#), &[]).await?;
    ensure!(run.status.code() == Some(2), "{run:?}");
    let location = format!("{}:6", run.config.display());
    let reported = run.stderr.lines().any(|line| {
        line.contains(&location)
            && line.contains("alowed_domains")
            && line.contains("allowed_domains")
    });
    ensure!(reported, "expected {location}, the key and the suggestion on one line: {run:?}");
    ensure!(!run.stderr.contains("listening"), "nothing may be bound: {run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_of_a_file_is_reported() -> anyhow::Result<()> {
    let toml = network(
        r#"alowed_domains = ["localhost"]
enable_socks5_udp = "yes""#,
    );
    // Serving and `check` report the same errors.
    for args in [&[][..], &["check"][..]] {
        let run = run(&toml, args).await?;
        ensure!(run.status.code() == Some(2), "{args:?}: {run:?}");
        let path = run.config.display().to_string();
        let line = |n: usize, what: &str| {
            let location = format!("{path}:{n}");
            run.stderr.lines().any(|line| line.contains(&location) && line.contains(what))
        };
        ensure!(line(6, "alowed_domains"), "{args:?}: unknown key not reported: {run:?}");
        ensure!(line(7, "enable_socks5_udp"), "{args:?}: wrong type not reported: {run:?}");
        ensure!(run.stdout.is_empty(), "{args:?}: no config is printed: {run:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_effective_config_and_exits_0() -> anyhow::Result<()> {
    let toml = network(r#"allowed_domains = ["localhost"]"#);
    let check = run(&toml, &["check", "-c", "network.mode=limited"]).await?;
    ensure!(check.status.success(), "{check:?}");
    let path = check.config.display().to_string();
    let expected = [
        "[network]".to_owned(),
        "enabled = true  # default".to_owned(),
        format!(r#"proxy_url = "127.0.0.1:0"  # from {path}:2"#),
        format!(r#"allowed_domains = ["localhost"]  # from {path}:6"#),
        r#"mode = "limited"  # from -c"#.to_owned(),
        "denied_domains = []  # default".to_owned(),
    ];
    for line in &expected {
        ensure!(check.stdout.lines().any(|l| l == line), "missing {line:?} in {check:?}");
    }
    ensure!(!check.stderr.contains("listening"), "check binds nothing: {check:?}");

    let print = run(&toml, &["--print-config", "-c", "network.mode=limited"]).await?;
    ensure!(print.status.success(), "{print:?}");
    // Each run has its own directory, holding the config file and CODEX_HOME (so `ca_dir`).
    let normalise = |run: &Run| {
        let dir = run.config.parent().map(|d| d.display().to_string()).unwrap_or_default();
        run.stdout.replace(&dir, "DIR")
    };
    ensure!(
        normalise(&print) == normalise(&check),
        "--print-config and check differ: {print:?} vs {check:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_exits_0_without_binding() -> anyhow::Result<()> {
    // Hold a port: binding it would fail, so exiting 0 proves nothing was bound.
    let held = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind")?;
    let addr = held.local_addr()?;
    let config = |enabled: bool| {
        format!(
            "[network]\nenabled = {enabled}\nproxy_url = \"{addr}\"\n\
             admin_url = \"127.0.0.1:0\"\nenable_socks5 = false\nallowed_domains = [\"localhost\"]\n"
        )
    };

    let disabled = run(&config(false), &[]).await?;
    ensure!(disabled.status.success(), "{disabled:?}");
    ensure!(disabled.stderr.contains("enabled is false"), "no reason logged: {disabled:?}");
    ensure!(!disabled.stderr.contains("listening"), "{disabled:?}");

    // The same config enabled does try the port, and fails (exit 1, not a config error).
    let enabled = run(&config(true), &[]).await?;
    ensure!(enabled.status.code() == Some(1), "{enabled:?}");
    ensure!(enabled.stderr.contains(&addr.to_string()), "the address is named: {enabled:?}");
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request_then_exits_0() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let mut proxyd = Proxyd::start(&network(r#"allowed_domains = ["localhost"]"#), &[]).await?;
    let (proxy, port) = (proxyd.addr(), origin.addr().port());
    let slow = tokio::spawn(async move {
        curl(proxy, &[&format!("http://localhost:{port}/slow?ms=800")]).await
    });
    // The request is at the origin, which answers 800 ms later.
    origin.wait_for_hits(1).await?;
    proxyd.signal("TERM").await?;

    let status = proxyd.wait().await?;
    let response = slow.await.context("curl task")??;
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{}", proxyd.stderr());
    ensure!(response.code == 200, "the in-flight request was cut: {response:?}");
    ensure!(response.body_text() == "origin GET /slow?ms=800\n", "{response:?}");
    proxyd.wait_for_line("shutting down", |line| line.contains("shutting down")).await?;
    proxyd.wait_for_line("stopped", |line| line.contains("stopped")).await?;
    Ok(())
}

/// A supervisor may signal as soon as it reads the `listening` line: the handlers must already
/// be installed by then, or the signal kills the process instead of stopping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_or_sigterm_right_after_start_exits_0() -> anyhow::Result<()> {
    for signal in ["INT", "TERM"] {
        let toml = network(r#"allowed_domains = ["localhost"]"#);
        let mut proxyd = Proxyd::start(&toml, &[]).await?;
        proxyd.signal(signal).await?;
        let status = proxyd.wait().await?;
        ensure!(
            status.code() == Some(0),
            "SIG{signal}: exit {status}; stderr:\n{}",
            proxyd.stderr()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_proxy_url_is_clamped_with_a_warning() -> anyhow::Result<()> {
    let toml = "[network]\nproxy_url = \"0.0.0.0:0\"\nadmin_url = \"127.0.0.1:0\"\n\
                enable_socks5 = false\nallowed_domains = [\"localhost\"]\n";
    let proxyd = Proxyd::start(toml, &[]).await?;
    ensure!(proxyd.addr().ip() == Ipv4Addr::LOCALHOST, "bound {} instead", proxyd.addr());
    let warning = proxyd
        .wait_for_event("the clamping warning", |event| {
            event["level"] == "WARN"
                && event["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("dangerously_allow_non_loopback_proxy"))
        })
        .await?;
    ensure!(
        warning["fields"]["message"].as_str().is_some_and(|m| m.contains("proxy_url")),
        "{warning}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_names_the_bound_address() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let toml = network(r#"allowed_domains = ["localhost"]"#);
    // `start_with` reads the address from the text line `listener="http" addr=127.0.0.1:PORT`.
    let proxyd = Proxyd::start_with(LogFormat::Text, &toml, &[]).await?;
    ensure!(proxyd.addr().ip() == Ipv4Addr::LOCALHOST && proxyd.addr().port() != 0);
    let url = format!("http://localhost:{}/", origin.addr().port());
    let response = curl(proxyd.addr(), &[&url]).await?;
    ensure!(response.code == 200, "{response:?}");
    Ok(())
}
