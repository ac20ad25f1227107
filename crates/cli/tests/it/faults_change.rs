//! Changes under load (issue 16): reloads (SIGHUP and the admin API) and mode switches while
//! requests are in flight lose none that the new policy still allows, and shutdown drains
//! every listener under one `drain_timeout`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use proxyd_test_support::{EchoTcp, HttpOrigin, ResponseHead, raw_request, temp_dir};

use crate::admin_support::{
    closed_within, curl_switch_mode, get, logged_addr, open_socks_tunnel, open_tunnel,
    open_udp_association, post, write,
};
use crate::faults::{all_listeners, hold_heads};
use crate::support::{BOUND, Proxyd, curl, network};

/// Requests each load worker sends, and workers.
const REQUESTS: usize = 40;
const WORKERS: usize = 4;

/// Four clients send GETs (quick ones and ones the origin answers 200 ms later) while the
/// policy file is edited and reloaded ten times (SIGHUP and `POST /reload` in turn) and the
/// mode flips between full and limited: GETs to an allowed host are allowed throughout, so
/// every one of them must get its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_mode_switches_under_load_lose_no_request() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let dir = temp_dir("proxyd-faults-reload")?;
    let file = dir.join("policy.toml");
    let policy =
        |n: usize| format!("[network]\nallowed_domains = [\"localhost\", \"other{n}.example\"]\n");
    write(&file, &policy(0))?;
    let path = file.to_str().context("temp path is not utf-8")?;
    let proxyd = Proxyd::start(&network(""), &["--config", path]).await?;
    let admin = logged_addr(&proxyd, "admin").await?;
    let (proxy, port) = (proxyd.addr(), origin.addr().port());

    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in 0..REQUESTS {
                let path = if (worker + n) % 2 == 0 { "/" } else { "/slow?ms=200" };
                let request = format!(
                    "GET http://localhost:{port}{path} HTTP/1.1\r\nHost: localhost:{port}\r\n\
                     Connection: close\r\n\r\n"
                );
                let answer = raw_request(proxy, request).await?;
                statuses.push(ResponseHead::parse(&answer).map_or(0, |head| head.status));
            }
            anyhow::Ok(statuses)
        }));
    }
    for n in 1..=10 {
        write(&file, &policy(n))?;
        if n % 2 == 0 {
            proxyd.signal("HUP").await?;
        } else {
            post(admin, "/reload", "").await?.expect(200)?;
        }
        curl_switch_mode(admin, if n % 2 == 0 { "full" } else { "limited" }).await?;
    }
    let mut statuses = Vec::new();
    for worker in workers {
        statuses.extend(worker.await.context("load worker")??);
    }
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    let patterns = get(admin, "/patterns").await?.expect(200)?;
    ensure!(
        patterns.to_string().contains("other10.example"),
        "last reload not in force: {patterns}"
    );
    Ok(())
}

/// Something open on every listener (a request the origin answers in 1 s, a CONNECT tunnel, a
/// SOCKS5 tunnel and a UDP association, slow heads on the admin and DNS listeners): SIGTERM
/// lets the request finish, closes the rest when the one `drain_timeout` (3 s) runs out, and
/// the process exits 0 well before four listeners draining in turn could have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_listener_under_one_deadline() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let echo = EchoTcp::start().await?;
    let toml = all_listeners("allowed_domains = [\"localhost\"]\ndrain_timeout = \"3s\"");
    let mut proxyd = Proxyd::start(&toml, &[]).await?;
    let (http, socks, admin, dns) = (
        proxyd.addr(),
        logged_addr(&proxyd, "socks5").await?,
        logged_addr(&proxyd, "admin").await?,
        logged_addr(&proxyd, "dns").await?,
    );
    let url = format!("http://localhost:{}/slow?ms=1000", origin.addr().port());
    let in_flight = tokio::spawn(async move { curl(http, &[&url]).await });
    origin.wait_for_hits(1).await?;
    let echo_port = echo.addr().port();
    let mut open = vec![
        open_tunnel(http, &format!("localhost:{echo_port}")).await?,
        open_socks_tunnel(socks, "localhost", echo_port).await?,
        open_udp_association(socks).await?,
    ];
    open.extend(hold_heads(admin, 1, b"GET /health HTTP/1.1\r\n").await?);
    open.extend(hold_heads(dns, 1, &[0, 64, 0]).await?);

    let stopped = Instant::now();
    proxyd.signal("TERM").await?;
    let status = proxyd.wait().await?;
    let took = stopped.elapsed();
    ensure!(status.code() == Some(0), "exit {status}; stderr:\n{}", proxyd.stderr());
    let response = in_flight.await.context("curl task")??;
    ensure!(response.code == 200, "the in-flight request was cut: {response:?}");
    for (n, stream) in open.iter_mut().enumerate() {
        closed_within(stream, BOUND).await.with_context(|| format!("connection {n}"))?;
    }
    // One drain (3 s) plus the close grace (2 s), not one drain per listener (12 s and more).
    ensure!(took < Duration::from_secs(9), "shutdown took {took:?}");
    Ok(())
}
