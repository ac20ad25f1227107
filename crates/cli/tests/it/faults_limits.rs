//! Limits under hostile load (issue 16): slowloris on every listener while normal clients are
//! served, and `max_connections` reached and recovered. Descriptor exhaustion is in
//! `faults_admin.rs`, with the kill switch it must leave reachable.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd_test_support::{EchoTcp, HttpOrigin};

use crate::admin_support::{get, logged_addr, open_tunnel};
use crate::faults::{Dribblers, all_listeners, raise_nofile};
use crate::support::{Proxyd, curl, dig_status};

/// Slow clients per listener.
const SLOW: usize = 300;

/// 300 clients on each listener (HTTP, SOCKS5, admin, DNS over TCP) send a partial request one
/// byte every 200 ms; a normal client of each listener is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_every_listener_while_normal_clients_are_served() -> anyhow::Result<()> {
    raise_nofile(4 * SLOW as u64 + 200)?;
    let origin = HttpOrigin::start().await?;
    let toml = all_listeners("allowed_domains = [\"localhost\"]\nheader_read_timeout = \"60s\"");
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let (http, socks, admin, dns) = (
        proxyd.addr(),
        logged_addr(&proxyd, "socks5").await?,
        logged_addr(&proxyd, "admin").await?,
        logged_addr(&proxyd, "dns").await?,
    );
    let every = Duration::from_millis(200);
    let http_head =
        b"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: slow\r\n\r\n";
    let admin_head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n";
    // A greeting that offers 255 methods, and a DNS length prefix for a 512-byte message:
    // neither is complete before the test ends.
    let socks_head: &'static [u8] =
        Box::leak([&[5u8, 255][..], &[0u8; 255]].concat().into_boxed_slice());
    let dns_head: &'static [u8] =
        Box::leak([&[2u8, 0][..], &[0u8; 512]].concat().into_boxed_slice());
    let slow = [
        Dribblers::start(http, SLOW, http_head, every).await?,
        Dribblers::start(socks, SLOW, socks_head, every).await?,
        Dribblers::start(admin, SLOW, admin_head, every).await?,
        Dribblers::start(dns, SLOW, dns_head, every).await?,
    ];
    ensure!(slow.iter().all(|s| s.connected() == SLOW));

    let url = format!("http://localhost:{}/", origin.addr().port());
    let response = curl(http, &[&url]).await?;
    ensure!(response.code == 200, "http: {response:?}");
    let response = curl(http, &["--socks5-hostname", &socks.to_string(), &url]).await?;
    ensure!(response.code == 200, "socks5: {response:?}");
    get(admin, "/health").await?.expect(200)?;
    let status = dig_status(dns, "refused.test", &["+tcp", "+tries=1", "+time=8"]).await?;
    ensure!(status == "REFUSED", "dns over tcp answered {status}");
    // The admin listener may close slow heads (its head wait is short); the proxies keep
    // theirs until header_read_timeout.
    ensure!(slow[0].cut() == 0, "http slow clients cut early: {}", slow[0].cut());
    Ok(())
}

/// `max_connections` held by open tunnels: the next client waits in the backlog, is served
/// when a slot comes back, and every slot comes back when the clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_reached_and_recovered() -> anyhow::Result<()> {
    const SLOTS: usize = 4;
    let origin = HttpOrigin::start().await?;
    let echo = EchoTcp::start().await?;
    let toml = crate::support::network(&format!(
        "allowed_domains = [\"localhost\"]\nmax_connections = {SLOTS}"
    ));
    let proxyd = Proxyd::start(&toml, &[]).await?;
    let (proxy, port) = (proxyd.addr(), origin.addr().port());
    let url = format!("http://localhost:{port}/");
    for round in 0..3 {
        let mut tunnels = Vec::new();
        for _ in 0..SLOTS {
            tunnels.push(open_tunnel(proxy, &format!("localhost:{}", echo.addr().port())).await?);
        }
        let hits = origin.hits();
        let waiting = tokio::spawn({
            let url = url.clone();
            async move { curl(proxy, &[&url]).await }
        });
        // Every slot is held: the request cannot reach the origin.
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(origin.hits() == hits, "round {round}: served past max_connections");
        ensure!(!waiting.is_finished(), "round {round}: answered past max_connections");
        tunnels.pop();
        let response = waiting.await.context("curl task")??;
        ensure!(response.code == 200, "round {round}: {response:?}");
        drop(tunnels);
        // Every slot is back: SLOTS clients at once are all served.
        let mut all = Vec::new();
        for _ in 0..SLOTS {
            let url = url.clone();
            all.push(tokio::spawn(async move { curl(proxy, &[&url]).await }));
        }
        for one in all {
            let response = one.await.context("curl task")??;
            ensure!(response.code == 200, "round {round}: {response:?}");
        }
    }
    Ok(())
}
