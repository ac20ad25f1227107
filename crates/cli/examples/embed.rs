//! Embedding proxyd (SPEC §9): a proxy on ephemeral ports whose policy decider allows
//! allowlist misses only for `curl` commands, with a blocked-request observer.
//!
//! `cargo run -p proxyd --example embed` starts it, prints the bound addresses, and stops it
//! on Ctrl-C.

use proxyd::{Config, NetworkDecision, NetworkPolicyRequest, NetworkProxy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_toml_str(
        "[network]\nallowed_domains = [\"localhost\"]\nenable_socks5 = false\n",
        "embed.toml",
    )
    .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let proxy = NetworkProxy::builder()
        .config(config)
        .http_addr("127.0.0.1:0".parse()?)
        .admin_addr("127.0.0.1:0".parse()?)
        .command("curl -sS https://example.com/")
        .policy_decider(|request: NetworkPolicyRequest| async move {
            if request.command.as_deref().is_some_and(|c| c.starts_with("curl ")) {
                return NetworkDecision::Allow;
            }
            NetworkDecision::deny("policy_denied")
        })
        .blocked_observer(|entry| {
            eprintln!("blocked {}:{} ({})", entry.host, entry.port, entry.reason)
        })
        .build()
        .await?;
    let handle = proxy.run().await?;
    println!("http proxy on {:?}, admin API on {:?}", handle.http_addr(), handle.admin_addr());
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await?;
    Ok(())
}
