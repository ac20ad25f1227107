//! The DNS service through the library (`dns_url`), under the same policy and reloads as the
//! proxies, queried with real `dig`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use proxyd::{NetworkProxy, Sources};
use proxyd_test_support::{DnsServer, temp_dir};

use crate::admin_support::{start_lib, write};
use crate::support::{dig_status, network};

async fn status(dns: std::net::SocketAddr, name: &str) -> anyhow::Result<String> {
    dig_status(dns, name, &["+tries=1", "+time=5"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dns_service_follows_reloads() -> anyhow::Result<()> {
    let public = Ipv4Addr::new(93, 184, 216, 34);
    let upstream =
        DnsServer::start(&[("first.test", public), ("second.test", public)], &[]).await?;
    let dir = temp_dir("proxyd-dns-reload")?;
    let file = dir.join("config.toml");
    let config = |allowed: &str| {
        network(&format!("allowed_domains = [\"{allowed}\"]\ndns_url = \"127.0.0.1:0\""))
    };
    write(&file, &config("first.test"))?;
    let sources = Sources { files: vec![file.clone()], ..Sources::default() };
    let resolver = Arc::new(proxyd::SystemResolver::with_nameservers(&[upstream.addr()]));
    let handle = start_lib(NetworkProxy::builder().sources(sources).resolver(resolver)).await?;
    let dns = handle.get().dns_addr().context("the dns service runs")?;
    ensure!(status(dns, "first.test").await? == "NOERROR");
    ensure!(status(dns, "second.test").await? == "REFUSED");
    write(&file, &config("second.test"))?;
    handle.get().reload().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(status(dns, "first.test").await? == "REFUSED");
    ensure!(status(dns, "second.test").await? == "NOERROR");
    let blocked = handle.get().blocked();
    ensure!(blocked.iter().any(|b| b.protocol == "dns" && b.host == "second.test"), "{blocked:?}");
    Ok(())
}
