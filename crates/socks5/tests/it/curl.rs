//! Real clients: `curl --socks5-hostname` (the proxy resolves) and `curl --socks5` (curl
//! resolves and sends an IPv4 address), against an HTTP origin behind the listener.

use std::net::SocketAddr;
use std::process::Output;

use anyhow::Context as _;
use proxyd_test_support::{HttpOrigin, TIMEOUT};
use tokio::process::Command;

use crate::support::Setup;

/// curl's exit code for a proxy handshake failure (`CURLE_PROXY`, curl ≥ 7.73).
const CURLE_PROXY: i32 = 97;

/// Runs curl through the proxy with no proxy settings from the environment.
async fn curl(flag: &str, proxy: SocketAddr, url: &str) -> anyhow::Result<Output> {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "10", flag])
        .arg(proxy.to_string())
        .arg(url)
        .kill_on_drop(true);
    for var in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
        command.env_remove(var).env_remove(var.to_uppercase());
    }
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .context("curl timed out")?
        .context("run curl")?;
    Ok(output)
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn curl_socks5_hostname_reaches_an_allowlisted_localhost() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = Setup::new().allow(&["localhost"]).start().await?;
    let url = format!("http://localhost:{}/hello", origin.addr().port());
    let output = curl("--socks5-hostname", proxy.addr, &url).await?;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(output.stdout, b"origin GET /hello\n");
    assert_eq!(origin.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn curl_socks5_hostname_gets_a_policy_reply_for_a_denied_name() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy =
        Setup::new().allow(&["*"]).allow_local_binding().deny(&["localhost"]).start().await?;
    let url = format!("http://localhost:{}/hello", origin.addr().port());
    let output = curl("--socks5-hostname", proxy.addr, &url).await?;
    assert_eq!(output.status.code(), Some(CURLE_PROXY), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // curl names the reply code: 2, "connection not allowed by ruleset".
    assert!(stderr.contains("(2)"), "{stderr}");
    assert_eq!(origin.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn curl_socks5_with_an_ip_address() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = Setup::new().allow(&[&origin.addr().to_string()]).start().await?;
    let output = curl("--socks5", proxy.addr, &origin.url("/by-ip")).await?;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(output.stdout, b"origin GET /by-ip\n");
    Ok(())
}

#[tokio::test]
async fn curl_socks5_to_a_local_address_without_an_explicit_entry_is_refused() -> anyhow::Result<()>
{
    let origin = HttpOrigin::start().await?;
    let proxy = Setup::new().allow(&["*"]).start().await?;
    let output = curl("--socks5", proxy.addr, &origin.url("/")).await?;
    assert_eq!(output.status.code(), Some(CURLE_PROXY), "{}", describe(&output));
    assert_eq!(origin.hits(), 0);
    Ok(())
}
