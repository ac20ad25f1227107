//! Regressions for bugs found while covering issue 5: each failed before its fix.

use anyhow::{Context as _, ensure};
use proxyd::{Mode, NetworkProxy};
use proxyd_test_support::EchoTcp;

use crate::admin_support::{
    CLOSE_WITHIN, closed_within, lib_config, logged_addr, open_tunnel, request, start_lib,
};
use crate::support::{BOUND, Proxyd, network};

/// SPEC §6.2: switching to limited closes open tunnels at once, even when the mode is switched
/// back to full right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_then_full_still_closes_open_tunnels() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let config = lib_config("allowed_domains = [\"localhost\"]")?;
    let mut handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let mut tunnel =
        open_tunnel(handle.http(), &format!("localhost:{}", echo.addr().port())).await?;
    handle.get().set_mode(Mode::Limited);
    handle.get().set_mode(Mode::Full);
    closed_within(&mut tunnel, CLOSE_WITHIN)
        .await
        .context("tunnel survived a switch to limited")?;
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

/// RFC 9110 §15.5.6: a 405 response MUST carry an Allow header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_405_names_the_allowed_methods() -> anyhow::Result<()> {
    let proxyd = Proxyd::start(&network("allowed_domains = [\"localhost\"]"), &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let reply = request(admin, "/mode", &[]).await?;
    ensure!(reply.status == 405, "{reply:?}");
    ensure!(reply.head.header("allow") == Some("POST"), "no Allow header: {reply:?}");
    let reply = request(admin, "/health", &["-X", "POST"]).await?;
    ensure!(
        reply.head.header("allow").is_some_and(|a| a.contains("GET")),
        "no Allow header: {reply:?}"
    );
    Ok(())
}

/// The exec summary counts every blocked request, not only those still in the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_summary_counts_requests_beyond_the_blocked_log_size() -> anyhow::Result<()> {
    let dir = proxyd_test_support::temp_dir("proxyd-bug")?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[network]\nallowed_domains = [\"localhost\"]\nblocked_log_size = 1\n",
    )?;
    let script = "for h in a b c; do /usr/bin/curl -s http://$h.test/ >/dev/null; done";
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_proxyd"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CODEX_HOME", dir.path())
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--", "sh", "-c", script])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BOUND, output).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("proxyd: blocked 3 request(s):"), "{stderr}");
    Ok(())
}

/// SPEC §9: shutdown finishes within drain_timeout; an admin client stuck mid-body must not
/// hold it up for header_read_timeout (30 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_admin_request_does_not_hold_shutdown_beyond_the_drain() -> anyhow::Result<()> {
    use crate::admin_support::write_all;
    let config = lib_config("allowed_domains = [\"localhost\"]\ndrain_timeout = \"500ms\"")?;
    let mut handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let mut admin = proxyd_test_support::connect(handle.admin()).await?;
    write_all(
        &mut admin,
        b"POST /mode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"mo",
    )
    .await?;
    // The admin server has the head (a refused Host would answer at once; this one waits for the body).
    let probe = request(handle.admin(), "/health", &[]).await?;
    ensure!(probe.status == 200);
    let took = handle.shutdown_within(std::time::Duration::from_secs(6)).await?;
    ensure!(took < std::time::Duration::from_secs(6), "{took:?}");
    Ok(())
}
