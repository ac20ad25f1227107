//! The admin API holds the kill switch: it stays reachable when its own slots are held by
//! slow heads, when thousands of slow clients sit on the HTTP proxy, and when the process has
//! run out of descriptors (issue 16).

use std::time::Duration;

use anyhow::ensure;
use proxyd_test_support::HttpOrigin;

use crate::admin_support::{curl_switch_mode, get, logged_addr};
use crate::faults::{Dribblers, cpu_share, hold_heads, raise_nofile};
use crate::support::{LogFormat, Proxyd, curl, network};

/// Every slot of the admin listener and a backlog of 200 more are slow heads that would each
/// hold a slot until the head timeout: the kill switch must still answer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_on_the_admin_listener_do_not_lock_out_the_kill_switch() -> anyhow::Result<()> {
    let toml = network(
        "allowed_domains = [\"localhost\"]\nadmin_max_connections = 16\nheader_read_timeout = \"60s\"",
    );
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let held = hold_heads(admin, 216, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await?;
    get(admin, "/health").await?.expect(200)?;
    curl_switch_mode(admin, "limited").await?;
    curl_switch_mode(admin, "full").await?;
    drop(held);
    Ok(())
}

/// The same with complete heads and bodies that never come (`POST /mode` announcing 100
/// bytes): a request is not being served until its body is in, so these are evicted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_on_the_admin_listener_do_not_lock_out_the_kill_switch() -> anyhow::Result<()> {
    let toml = network(
        "allowed_domains = [\"localhost\"]\nadmin_max_connections = 16\nheader_read_timeout = \"60s\"",
    );
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let head = b"POST /mode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{";
    let held = hold_heads(admin, 116, head).await?;
    curl_switch_mode(admin, "limited").await?;
    get(admin, "/health").await?.expect(200)?;
    drop(held);
    Ok(())
}

/// 3,000 slowloris clients on the HTTP proxy: the admin API and a normal proxy client are
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_proxy_clients_leave_the_admin_api_reachable() -> anyhow::Result<()> {
    raise_nofile(4000)?;
    let origin = HttpOrigin::start().await?;
    let toml = network("allowed_domains = [\"localhost\"]\nheader_read_timeout = \"60s\"");
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let head = b"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let slow = Dribblers::start(proxyd.addr(), 3000, head, Duration::from_millis(500)).await?;
    ensure!(slow.connected() == 3000);
    get(admin, "/health").await?.expect(200)?;
    curl_switch_mode(admin, "limited").await?;
    curl_switch_mode(admin, "full").await?;
    let response =
        curl(proxyd.addr(), &[&format!("http://localhost:{}/", origin.addr().port())]).await?;
    ensure!(response.code == 200, "{response:?}");
    ensure!(slow.cut() == 0, "slow clients were cut before header_read_timeout: {}", slow.cut());
    Ok(())
}

/// The proxy listener has used up every descriptor (a low `RLIMIT_NOFILE`): proxyd backs off
/// instead of spinning, the admin API still answers from its reserve, and the proxy serves
/// again once the clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_keeps_the_kill_switch_and_recovers() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let toml = network("allowed_domains = [\"localhost\"]\nheader_read_timeout = \"60s\"");
    // proxyd raises its soft limit to the hard one: set both.
    let wrapper = ["prlimit", "--nofile=64:64", "--"];
    let proxyd = Proxyd::start_under(&wrapper, LogFormat::Json, &toml, &[]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let held = hold_heads(proxyd.addr(), 100, b"GET http://localhost/ HTTP/1.1\r\n").await?;
    proxyd
        .wait_for_event("the accept backoff", |event| {
            event["fields"]["message"] == "accept failed, backing off"
        })
        .await?;
    let share = cpu_share(proxyd.pid()?, Duration::from_secs(2)).await?;
    ensure!(share < 0.5, "proxyd used {:.0}% of a core while out of descriptors", share * 100.0);

    get(admin, "/health").await?.expect(200)?;
    curl_switch_mode(admin, "limited").await?;
    curl_switch_mode(admin, "full").await?;

    drop(held);
    let url = format!("http://localhost:{}/", origin.addr().port());
    let response = curl(proxyd.addr(), &[&url]).await?;
    ensure!(response.code == 200, "no recovery after the clients left: {response:?}");
    Ok(())
}
