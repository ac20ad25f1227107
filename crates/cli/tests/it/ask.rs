//! Asking a person instead of failing (`on_miss = "ask"`): real curl clients held on an
//! allowlist miss while the question is answered through the admin API (allow once, allow
//! always, deny), the timeout, and the bound on pending questions.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd::{NetworkProxy, StaticResolver};
use proxyd_test_support::HttpOrigin;
use serde_json::Value;
use tokio::time::{Instant, sleep};

use crate::admin_support::{Handle, get, lib_config, post, start_lib};
use crate::support::curl;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn asking(extra: &str) -> anyhow::Result<Handle> {
    let config = lib_config(&format!(
        "allowed_domains = [\"known.test\"]\nallow_local_binding = true\non_miss = \"ask\"\n{extra}"
    ))?;
    let resolver = StaticResolver::new()
        .with("known.test", [LOOPBACK])
        .with("asked.test", [LOOPBACK])
        .with("other.test", [LOOPBACK]);
    start_lib(NetworkProxy::builder().config(config).resolver(Arc::new(resolver))).await
}

/// Waits (bounded) until `GET /pending` lists a question for `host`; returns it.
async fn question_for(handle: &Handle, host: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = get(handle.admin(), "/pending").await?.expect(200)?;
        let found = body["pending"]
            .as_array()
            .and_then(|all| all.iter().find(|q| q["host"] == host).cloned());
        if let Some(found) = found {
            return Ok(found);
        }
        ensure!(Instant::now() < deadline, "no pending question for {host}: {body}");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_is_allowed_or_denied_through_the_admin_api() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let handle = asking("").await?;
    let url = |host: &str| format!("http://{host}:{}/", origin.addr().port());
    let proxy = handle.http();

    // Allow once: the held curl completes; the next request is asked again.
    let held = tokio::spawn({
        let url = url("asked.test");
        async move { curl(proxy, &[&url]).await }
    });
    let question = question_for(&handle, "asked.test").await?;
    ensure!(question["protocol"] == "http" && question["method"] == "GET", "{question}");
    ensure!(origin.hits() == 0, "nothing is sent while the question waits");
    let id = question["id"].as_u64().context("id")?;
    post(handle.admin(), &format!("/pending/{id}"), r#"{"answer":"allow-once"}"#)
        .await?
        .expect(200)?;
    let answered = held.await??;
    ensure!(answered.code == 200, "{answered:?}");

    // Deny: 403 with the reason.
    let held = tokio::spawn({
        let url = url("asked.test");
        async move { curl(proxy, &[&url]).await }
    });
    let id = question_for(&handle, "asked.test").await?["id"].as_u64().context("id")?;
    post(handle.admin(), &format!("/pending/{id}"), r#"{"answer":"deny"}"#).await?.expect(200)?;
    let denied = held.await??;
    ensure!(denied.code == 403, "{denied:?}");
    let body: Value = serde_json::from_slice(&denied.body)?;
    ensure!(body["reason"] == "ask_denied", "{body}");

    // Allow always: later requests to that host go through without a question.
    let held = tokio::spawn({
        let url = url("other.test");
        async move { curl(proxy, &[&url]).await }
    });
    let id = question_for(&handle, "other.test").await?["id"].as_u64().context("id")?;
    post(handle.admin(), &format!("/pending/{id}"), r#"{"answer":"allow-always"}"#)
        .await?
        .expect(200)?;
    ensure!(held.await??.code == 200);
    let again = curl(proxy, &[&url("other.test")]).await?;
    ensure!(again.code == 200, "{again:?}");
    let pending = get(handle.admin(), "/pending").await?.expect(200)?;
    ensure!(pending["pending"].as_array().is_some_and(Vec::is_empty), "{pending}");

    // Unknown ids and bad answers.
    post(handle.admin(), "/pending/999", r#"{"answer":"deny"}"#)
        .await?
        .expect_error(404, "no such")?;
    post(handle.admin(), "/pending/1", r#"{"answer":"maybe"}"#)
        .await?
        .expect_error(400, "expected")?;
    // Known hosts are never asked.
    ensure!(curl(proxy, &[&url("known.test")]).await?.code == 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_time_out_and_are_bounded() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let handle = asking("ask_timeout = \"1s\"\nask_max_pending = 1").await?;
    let proxy = handle.http();
    let url = |host: &str| format!("http://{host}:{}/", origin.addr().port());
    let held = tokio::spawn({
        let url = url("asked.test");
        async move { curl(proxy, &[&url]).await }
    });
    question_for(&handle, "asked.test").await?;
    // A second question while the bound is reached: refused at once.
    let full = curl(proxy, &[&url("other.test")]).await?;
    ensure!(full.code == 403, "{full:?}");
    let body: Value = serde_json::from_slice(&full.body)?;
    ensure!(body["reason"] == "ask_queue_full", "{body}");
    // The first times out.
    let timed_out = held.await??;
    let body: Value = serde_json::from_slice(&timed_out.body)?;
    ensure!(timed_out.code == 403 && body["reason"] == "ask_timeout", "{timed_out:?}");
    ensure!(origin.hits() == 0);
    Ok(())
}

/// `proxyd exec --ask`, driven through a pseudo-terminal: the question appears on the terminal
/// with host, port, protocol and the command; "always" lets that request and every later one
/// to the same host through, with one question for the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_ask_prompts_on_the_terminal_and_allow_always_applies_to_the_run() -> anyhow::Result<()>
{
    let origin = HttpOrigin::start().await?;
    let dir = proxyd_test_support::temp_dir("proxyd-ask-pty")?;
    let config = dir.join("config.toml");
    crate::admin_support::write(
        &config,
        "[network]\nallowed_domains = [\"known.example\"]\nallow_local_binding = true\n",
    )?;
    let url = format!("http://127.0.0.1:{}/", origin.addr().port());
    let script = format!(
        "for i in 1 2; do /usr/bin/curl -s -o /dev/null -w 'code %{{http_code}}\\n' -x \"$HTTP_PROXY\" --noproxy '' {url}; done"
    );
    let driver = dir.join("drive.py");
    crate::admin_support::write(
        &driver,
        &format!(
            r#"import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv({proxyd:?}, [{proxyd:?}, "exec", "--ask", "--config", {config:?}, "--", "/bin/sh", "-c", {script:?}])
out = b""
answered = 0
deadline = time.time() + 20
while time.time() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.2)
    if not ready:
        continue
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    if out.count(b"Allow [o]nce") > answered:
        answered += 1
        os.write(fd, b"a\n")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#,
            proxyd = env!("CARGO_BIN_EXE_proxyd"),
            config = config.display().to_string(),
        ),
    )?;
    let output = tokio::process::Command::new("python3")
        .arg(&driver)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CODEX_HOME", dir.path())
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(30), output).await.context("pty driver")??;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "{text}\n{}", String::from_utf8_lossy(&output.stderr));
    ensure!(text.matches("Allow [o]nce").count() == 1, "one question for the run: {text}");
    ensure!(
        text.contains(&format!("GET 127.0.0.1:{} (http)", origin.addr().port()))
            && text.contains("/bin/sh -c"),
        "the question names host, port, protocol and the command: {text}"
    );
    ensure!(text.matches("code 200").count() == 2, "{text}");
    ensure!(origin.hits() == 2);
    Ok(())
}
