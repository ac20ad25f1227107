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
