//! Blocks that say why (issue 17): a name that resolves to a private address names the address
//! and the entry that would allow it, in the 403 body, the blocked log and the exec summary;
//! limited mode refusing a `CONNECT` without `mitm` says that `mitm = true` lets reads through.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use proxyd::{NetworkProxy, StaticResolver};
use serde_json::Value;

use crate::admin_support::{lib_config, start_lib};
use crate::support::curl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_answer_names_the_address_and_the_fix() -> anyhow::Result<()> {
    let config = lib_config("allowed_domains = [\"internal.test\"]")?;
    let resolver =
        StaticResolver::new().with("internal.test", [IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))]);
    let handle =
        start_lib(NetworkProxy::builder().config(config).resolver(Arc::new(resolver))).await?;
    let answer = curl(handle.http(), &["http://internal.test/"]).await?;
    ensure!(answer.code == 403, "{answer:?}");
    let body: Value = serde_json::from_slice(&answer.body)?;
    let detail = body["detail"].as_str().context("detail")?;
    ensure!(body["reason"] == "not_allowed_local", "{body}");
    ensure!(
        detail.contains("internal.test resolved to 10.1.2.3")
            && detail.contains("add \"10.1.2.3\" to allowed_domains"),
        "{detail}"
    );
    let logged = handle.get().blocked();
    ensure!(
        logged.iter().any(|b| b.detail.as_deref().is_some_and(|d| d.contains("10.1.2.3"))),
        "{logged:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_mode_without_mitm_says_how_reads_get_through() -> anyhow::Result<()> {
    let config = lib_config("allowed_domains = [\"localhost\"]\nmode = \"limited\"")?;
    let handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let mut stream = proxyd_test_support::connect(handle.http()).await?;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n").await?;
    let mut answer = Vec::new();
    tokio::time::timeout(crate::support::BOUND, stream.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer);
    ensure!(text.starts_with("HTTP/1.1 403"), "{text}");
    ensure!(text.contains("mitm = true"), "{text}");
    Ok(())
}

/// The README's first command runs with `examples/proxyd.toml`: the file loads, and it allows
/// the hosts the README's client examples reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_loads_and_allows_the_readme_examples() -> anyhow::Result<()> {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/proxyd.toml");
    let text = std::fs::read_to_string(example).context("read the example config")?;
    let config = proxyd::Config::from_toml_str(&text, example)
        .map_err(|e| anyhow::anyhow!("the example config does not load:\n{e}"))?;
    let policy = config.policy();
    for authority in ["pypi.example:443", "git.example.org:443", "localhost:8000"] {
        let target = proxyd_policy::Target::parse_authority(authority, None)?;
        ensure!(
            policy.allowed.matches(&target).is_some(),
            "{authority} is not allowed by {example}"
        );
    }
    Ok(())
}
