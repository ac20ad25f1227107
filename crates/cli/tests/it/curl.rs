//! Real `curl` through the `proxyd` binary: allowed, denied, allowlist-miss, local-blocked and
//! limited-mode requests, in absolute-form and through `CONNECT` (SPEC §6, §7.2, §7.3).

use anyhow::{Context as _, ensure};
use proxyd_test_support::{Canary, HttpOrigin, TestCa, TlsOrigin, temp_dir};

use crate::support::{Proxyd, assert_blocked, curl, network};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_request_reaches_the_origin() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxyd = Proxyd::start(&network(r#"allowed_domains = ["localhost"]"#), &[]).await?;
    let port = origin.addr().port();

    let response = curl(proxyd.addr(), &[&format!("http://localhost:{port}/a?b=1")]).await?;
    ensure!(response.code == 200 && response.exit == 0, "{response:?}");
    ensure!(response.body_text() == "origin GET /a?b=1\n", "{response:?}");

    // Forwarded in origin-form, with a Via header (SPEC §7.2).
    let requests = origin.requests();
    ensure!(requests.len() == 1, "{requests:?}");
    ensure!(requests[0].target == "/a?b=1", "{requests:?}");
    ensure!(requests[0].header("via").is_some(), "no via header in {requests:?}");
    proxyd.wait_for_decision("http", "localhost", "allow", "allowed").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denylisted_host_is_403_denied_even_when_allowlisted() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let config = network(
        r#"allowed_domains = ["localhost", "bad.test"]
denied_domains = ["localhost", "bad.test"]"#,
    );
    let proxyd = Proxyd::start(&config, &[]).await?;

    // localhost would reach the canary if the denylist did not win.
    let url = format!("http://localhost:{}/", canary.addr().port());
    for (url, host) in [(url.as_str(), "localhost"), ("http://bad.test/x", "bad.test")] {
        let response = curl(proxyd.addr(), &[url]).await?;
        let body = assert_blocked(&response, 403, "blocked-by-denylist", "denied")?;
        ensure!(body["host"] == host && body["protocol"] == "http", "{body}");
        ensure!(body["method"] == "GET" && body["mode"] == "full", "{body}");
        proxyd.wait_for_decision("http", host, "block", "denied").await?;
    }
    canary.assert_untouched();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_miss_is_403_not_allowed() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    // With local binding allowed, localhost is decided by the allowlist alone (SPEC §5.2).
    let config = network(
        r#"allowed_domains = ["allowed.test"]
allow_local_binding = true"#,
    );
    let proxyd = Proxyd::start(&config, &[]).await?;

    let response = curl(proxyd.addr(), &["http://unknown.test/"]).await?;
    let body = assert_blocked(&response, 403, "blocked-by-allowlist", "not_allowed")?;
    ensure!(body["host"] == "unknown.test" && body["port"] == 80, "{body}");
    proxyd.wait_for_decision("http", "unknown.test", "block", "not_allowed").await?;

    let url = format!("http://localhost:{}/", canary.addr().port());
    let response = curl(proxyd.addr(), &[&url]).await?;
    let body = assert_blocked(&response, 403, "blocked-by-allowlist", "not_allowed")?;
    ensure!(body["host"] == "localhost" && body["port"] == canary.addr().port(), "{body}");
    canary.assert_untouched();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_literal_not_allowlisted_is_403_not_allowed_local() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let proxyd = Proxyd::start(&network(r#"allowed_domains = ["localhost"]"#), &[]).await?;

    let url = format!("http://127.0.0.1:{}/", canary.addr().port());
    let response = curl(proxyd.addr(), &[&url]).await?;
    let body = assert_blocked(&response, 403, "blocked-by-allowlist", "not_allowed_local")?;
    ensure!(body["host"] == "127.0.0.1", "{body}");
    proxyd.wait_for_decision("http", "127.0.0.1", "block", "not_allowed_local").await?;
    canary.assert_untouched();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_mode_from_the_command_line_allows_reads_only() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    // The file says full; the `-c` override wins (SPEC §2.1).
    let config = network(
        r#"allowed_domains = ["localhost"]
mode = "full""#,
    );
    let proxyd = Proxyd::start(&config, &["-c", "network.mode=limited"]).await?;
    let url = format!("http://localhost:{}/read", origin.addr().port());

    let get = curl(proxyd.addr(), &[&url]).await?;
    ensure!(get.code == 200 && get.body_text() == "origin GET /read\n", "{get:?}");
    let head = curl(proxyd.addr(), &["-I", &url]).await?;
    ensure!(head.code == 200, "{head:?}");
    ensure!(origin.hits() == 2, "GET and HEAD should reach the origin: {:?}", origin.requests());

    let post = curl(proxyd.addr(), &["-X", "POST", "-d", "x", &url]).await?;
    let body = assert_blocked(&post, 403, "blocked-by-method-policy", "method_not_allowed")?;
    ensure!(body["method"] == "POST" && body["mode"] == "limited", "{body}");
    proxyd.wait_for_decision("http", "localhost", "block", "method_not_allowed").await?;

    // Every CONNECT is blocked in limited mode (SPEC §6.2).
    let tunnel = curl(proxyd.addr(), &["-p", &url]).await?;
    ensure!(tunnel.connect == 403 && tunnel.exit != 0, "{tunnel:?}");
    let head = tunnel.head()?;
    ensure!(head.header("x-proxy-error") == Some("blocked-by-method-policy"), "{head:?}");

    ensure!(origin.hits() == 2, "a blocked request reached the origin: {:?}", origin.requests());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_through_connect_with_a_test_ca() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let origin = TlsOrigin::start(&ca, &["localhost"]).await?;
    let dir = temp_dir("proxyd-cli-ca")?;
    let ca_path = ca.write_pem(&dir)?;
    let ca_file = ca_path.to_str().context("ca path is not utf-8")?;
    let proxyd = Proxyd::start(&network(r#"allowed_domains = ["localhost"]"#), &[]).await?;
    let url = format!("https://localhost:{}/secure", origin.addr().port());

    let response = curl(proxyd.addr(), &["--cacert", ca_file, &url]).await?;
    ensure!(response.connect == 200 && response.code == 200, "{response:?}");
    ensure!(response.body_text() == "origin GET /secure\n", "{response:?}");
    ensure!(origin.sni() == ["localhost"], "sni {:?}", origin.sni());
    proxyd.wait_for_decision("http-connect", "localhost", "allow", "allowed").await?;

    // A header meant for the proxy only does not upset the CONNECT.
    let response =
        curl(proxyd.addr(), &["--proxy-header", "X-Test: 1", "--cacert", ca_file, &url]).await?;
    ensure!(response.connect == 200 && response.code == 200, "{response:?}");
    ensure!(origin.hits() == 2, "{:?}", origin.requests());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_connect_is_403_and_never_dialled() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let config = network(
        r#"allowed_domains = ["localhost"]
denied_domains = ["bad.localhost"]"#,
    );
    let proxyd = Proxyd::start(&config, &[]).await?;
    let port = canary.addr().port();

    let cases = [
        ("127.0.0.1", "blocked-by-allowlist", "not_allowed_local"),
        ("unknown.test", "blocked-by-allowlist", "not_allowed"),
        ("bad.localhost", "blocked-by-denylist", "denied"),
    ];
    for (host, header, reason) in cases {
        let response = curl(proxyd.addr(), &[&format!("https://{host}:{port}/")]).await?;
        // curl reports the proxy's refusal and never starts TLS.
        ensure!(response.connect == 403 && response.code == 0, "{host}: {response:?}");
        ensure!(response.exit == 56, "{host}: curl exit {}: {response:?}", response.exit);
        let head = response.head()?;
        ensure!(head.status == 403 && head.header("x-proxy-error") == Some(header), "{head:?}");
        proxyd.wait_for_decision("http-connect", host, "block", reason).await?;
    }
    canary.assert_untouched();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_is_accepted() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxyd = Proxyd::start(&network(r#"allowed_domains = ["localhost"]"#), &[]).await?;
    let url = format!("http://localhost:{}/h", origin.addr().port());

    let response = curl(proxyd.addr(), &["--proxy-header", "X-Test: 1", &url]).await?;
    ensure!(response.code == 200 && response.body_text() == "origin GET /h\n", "{response:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxytunnel_to_a_plain_http_origin() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxyd = Proxyd::start(&network(r#"allowed_domains = ["localhost"]"#), &[]).await?;
    let url = format!("http://localhost:{}/tunnelled", origin.addr().port());

    let response = curl(proxyd.addr(), &["-p", &url]).await?;
    ensure!(response.connect == 200 && response.code == 200, "{response:?}");
    ensure!(response.body_text() == "origin GET /tunnelled\n", "{response:?}");
    // Through a tunnel the request is curl's own, untouched by proxyd.
    let requests = origin.requests();
    ensure!(requests.len() == 1 && requests[0].header("via").is_none(), "{requests:?}");
    proxyd.wait_for_decision("http-connect", "localhost", "allow", "allowed").await?;
    Ok(())
}
