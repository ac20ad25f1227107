//! The embeddable library API (SPEC §9): the builder and handle, the admin API through
//! `handle.admin_addr()`, the policy decider (allow, own deny reason, timeout, when it is
//! consulted, what it is told), the blocked observer, reloads from sources, mode switches that
//! close tunnels, shutdown and `enabled = false`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd::{
    BlockedEntry, Config, Mode, NetworkDecision, NetworkPolicyRequest, NetworkProxy, ReloadError,
    Sources, StaticResolver,
};
use proxyd_test_support::{Canary, EchoTcp, HttpOrigin, connect, read_response_head, temp_dir};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::admin_support::{
    CLOSE_WITHIN, closed_within, connect_head, get, lib_config, open_socks_tunnel, open_tunnel,
    open_udp_association, post, start_lib, write, write_all,
};
use crate::support::{BOUND, assert_blocked, curl, network};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Checks that nothing answers on `addr` after shutdown. A connect may still succeed for a
/// moment: a child process another test is spawning can hold a copy of the closed listener's
/// descriptor between its fork and its exec. Such a connection must be closed unanswered.
async fn not_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let Ok(mut stream) = connect(addr).await else { return Ok(()) };
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let answer = closed_within(&mut stream, CLOSE_WITHIN).await?;
    ensure!(answer.is_empty(), "{addr} still answers after shutdown: {answer:?}");
    Ok(())
}

/// `lib_config(extra)` with the SOCKS5 listener on (port 0).
fn socks_config(extra: &str) -> anyhow::Result<Config> {
    let toml = network(extra).replace("enable_socks5 = false", "enable_socks5 = true");
    Config::from_toml_str(&toml, "lib.toml")
        .map_err(|e| anyhow::anyhow!("invalid test config:\n{e}"))
}

fn any_port() -> SocketAddr {
    (LOOPBACK, 0).into()
}

/// Every request the decider was asked about, and its answer for them.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<NetworkPolicyRequest>>>);

impl Recorder {
    fn push(&self, request: NetworkPolicyRequest) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }

    fn calls(&self) -> Vec<NetworkPolicyRequest> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A decider that allows `decided.test` and denies everything else with `policy_denied`.
fn decider(
    recorder: &Recorder,
) -> impl Fn(NetworkPolicyRequest) -> std::future::Ready<NetworkDecision> + Send + Sync + 'static {
    let recorder = recorder.clone();
    move |request: NetworkPolicyRequest| {
        let allow = request.host == "decided.test";
        recorder.push(request);
        std::future::ready(match allow {
            true => NetworkDecision::Allow,
            false => NetworkDecision::deny("policy_denied"),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_addresses_override_the_config_and_the_admin_api_answers() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    // Default listener addresses (3128, 8081, 8080): the builder's port-0 overrides win.
    let config = Config::from_toml_str(
        "[network]\nallowed_domains = [\"localhost\", \"Example.COM.\"]\n",
        "lib.toml",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = NetworkProxy::builder()
        .config(config)
        .http_addr(any_port())
        .socks_addr(any_port())
        .admin_addr(any_port());
    let proxy = timeout(BOUND, proxy.build()).await??;
    ensure!(proxy.config().http_addr.port() == 3128, "the config is the one given");
    let handle = timeout(BOUND, proxy.run()).await??;
    let mut handle = crate::admin_support::Handle::from(handle);
    let h = handle.get();
    let (http, socks, admin) = (h.http_addr(), h.socks_addr(), h.admin_addr());
    let (Some(http), Some(socks), Some(admin)) = (http, socks, admin) else {
        anyhow::bail!("missing addresses: {http:?} {socks:?} {admin:?}");
    };
    for addr in [http, socks, admin] {
        ensure!(addr.ip() == LOOPBACK && addr.port() != 0, "{addr}");
    }
    ensure!(h.mode() == Some(Mode::Full));

    let health = get(admin, "/health").await?.expect(200)?;
    let listeners =
        json!({"http": http.to_string(), "socks5": socks.to_string(), "admin": admin.to_string()});
    ensure!(health["listeners"] == listeners && health["mode"] == "full", "{health}");
    let patterns = get(admin, "/patterns").await?.expect(200)?;
    ensure!(
        patterns == json!({"allowed": ["localhost", "example.com"], "denied": []}),
        "{patterns}"
    );
    let config = get(admin, "/config").await?.expect(200)?;
    ensure!(config["network"]["proxy_url"] == "127.0.0.1:3128", "{config}");

    // Mode through the admin API is the handle's mode, and the other way round.
    let reply = post(admin, "/mode", r#"{"mode":"limited"}"#).await?.expect(200)?;
    ensure!(reply == json!({"status": "ok", "mode": "limited"}), "{reply}");
    ensure!(handle.get().mode() == Some(Mode::Limited));
    let post_url = format!("http://localhost:{}/p", origin.addr().port());
    let blocked = curl(http, &["-X", "POST", "-d", "x", &post_url]).await?;
    assert_blocked(&blocked, 403, "blocked-by-method-policy", "method_not_allowed")?;
    handle.get().set_mode(Mode::Full);
    ensure!(get(admin, "/health").await?.expect(200)?["mode"] == "full");
    let allowed = curl(http, &["-X", "POST", "-d", "x", &post_url]).await?;
    ensure!(allowed.code == 200, "{allowed:?}");

    // The blocked log: the handle and /blocked agree, with ?since.
    for host in ["one.test", "two.test"] {
        let response = curl(http, &[&format!("http://{host}/")]).await?;
        assert_blocked(&response, 403, "blocked-by-allowlist", "not_allowed")?;
    }
    let entries = handle.get().blocked();
    let hosts: Vec<(u64, &str)> = entries.iter().map(|e| (e.id, e.host.as_str())).collect();
    ensure!(hosts == [(1, "localhost"), (2, "one.test"), (3, "two.test")], "{entries:?}");
    let blocked = get(admin, "/blocked?since=1").await?.expect(200)?;
    ensure!(blocked["total"] == 3, "{blocked}");
    let ids: Vec<_> =
        blocked["blocked"].as_array().context("blocked")?.iter().map(|e| e["id"].clone()).collect();
    ensure!(ids == [json!(2), json!(3)], "{blocked}");

    let metrics = get(admin, "/metrics").await?.body;
    for line in [
        r#"proxyd_decisions_total{protocol="http",decision="allow",reason="allowed"} 1"#,
        r#"proxyd_decisions_total{protocol="http",decision="block",reason="not_allowed"} 2"#,
        r#"proxyd_decisions_total{protocol="http",decision="block",reason="method_not_allowed"} 1"#,
    ] {
        ensure!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    }
    handle.shutdown_within(BOUND).await?;
    not_serving(http).await.context("http listener")?;
    not_serving(admin).await.context("admin listener")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decider_allows_an_allowlist_miss_and_hears_command_and_hint() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let echo = EchoTcp::start().await?;
    let recorder = Recorder::default();
    let resolver = StaticResolver::new().with("decided.test", [LOOPBACK]);
    let config = socks_config("allowed_domains = [\"allowed.test\"]\nallow_local_binding = true")?;
    let mut handle = start_lib(
        NetworkProxy::builder()
            .config(config)
            .resolver(Arc::new(resolver))
            .policy_decider(decider(&recorder))
            .command("curl -sS http://decided.test/")
            .exec_policy_hint("hint-42"),
    )
    .await?;

    let url = format!("http://decided.test:{}/d", origin.addr().port());
    let response = curl(handle.http(), &[&url]).await?;
    ensure!(response.code == 200 && response.body_text() == "origin GET /d\n", "{response:?}");
    let tunnel = format!("decided.test:{}", echo.addr().port());
    let _tunnel = open_tunnel(handle.http(), &tunnel).await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;
    let _socks_tunnel = open_socks_tunnel(socks, "decided.test", echo.addr().port()).await?;

    let calls = recorder.calls();
    ensure!(calls.len() == 3, "{calls:?}");
    let protocols: Vec<&str> = calls.iter().map(|c| c.protocol.as_str()).collect();
    ensure!(protocols == ["http", "http-connect", "socks5"], "{calls:?}");
    let expected = [
        (origin.addr().port(), Some("GET")),
        (echo.addr().port(), Some("CONNECT")),
        (echo.addr().port(), None),
    ];
    for (call, (port, method)) in calls.iter().zip(expected) {
        ensure!(call.host == "decided.test" && call.port == port, "{call:?}");
        ensure!(call.method.as_deref() == method, "{call:?}");
        ensure!(call.client_addr.is_some_and(|c| c.ip() == LOOPBACK), "{call:?}");
        ensure!(call.command.as_deref() == Some("curl -sS http://decided.test/"), "{call:?}");
        ensure!(call.exec_policy_hint.as_deref() == Some("hint-42"), "{call:?}");
    }
    // Allowed by the decider, it is not in the blocked log.
    ensure!(handle.get().blocked().is_empty(), "{:?}", handle.get().blocked());

    // A decider's allow does not lift limited mode.
    handle.get().set_mode(Mode::Limited);
    let post = curl(handle.http(), &["-X", "POST", "-d", "x", &url]).await?;
    assert_blocked(&post, 403, "blocked-by-method-policy", "method_not_allowed")?;
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decider_denies_with_its_own_reason_before_any_lookup() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let recorder = Recorder::default();
    let resolver = Arc::new(StaticResolver::new().with("other.test", [LOOPBACK]));
    let config = lib_config("allowed_domains = [\"allowed.test\"]\nallow_local_binding = true")?;
    let mut handle = start_lib(
        NetworkProxy::builder()
            .config(config)
            .resolver(resolver.clone())
            .policy_decider(decider(&recorder)),
    )
    .await?;

    let url = format!("http://other.test:{}/", canary.addr().port());
    let response = curl(handle.http(), &[&url]).await?;
    let body = assert_blocked(&response, 403, "blocked-by-policy", "policy_denied")?;
    ensure!(body["host"] == "other.test" && body["protocol"] == "http", "{body}");
    let head = connect_head(handle.http(), &format!("other.test:{}", canary.addr().port())).await?;
    ensure!(
        head.status == 403 && head.header("x-proxy-error") == Some("blocked-by-policy"),
        "{head:?}"
    );

    // A denied name is never resolved nor dialled.
    ensure!(
        resolver.lookups("other.test") == 0,
        "looked up {} times",
        resolver.lookups("other.test")
    );
    canary.assert_untouched();
    let calls = recorder.calls();
    ensure!(calls.len() == 2, "{calls:?}");
    ensure!(calls.iter().all(|c| c.command.is_none() && c.exec_policy_hint.is_none()), "{calls:?}");

    let blocked = get(handle.admin(), "/blocked").await?.expect(200)?;
    let reasons: Vec<_> = blocked["blocked"]
        .as_array()
        .context("blocked")?
        .iter()
        .map(|e| (e["protocol"].clone(), e["reason"].clone()))
        .collect();
    ensure!(
        reasons
            == [
                (json!("http"), json!("policy_denied")),
                (json!("http-connect"), json!("policy_denied"))
            ],
        "{blocked}"
    );
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_decider_times_out_into_a_deny() -> anyhow::Result<()> {
    let canary = Canary::start().await?;
    let calls = Recorder::default();
    let recorder = calls.clone();
    let slow = move |request: NetworkPolicyRequest| {
        recorder.push(request);
        async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            NetworkDecision::Allow
        }
    };
    let config = lib_config(
        "allowed_domains = [\"allowed.test\"]\nallow_local_binding = true\ndecider_timeout = \"200ms\"",
    )?;
    let resolver = StaticResolver::new().with("slow.test", [LOOPBACK]);
    let mut handle = start_lib(
        NetworkProxy::builder().config(config).resolver(Arc::new(resolver)).policy_decider(slow),
    )
    .await?;

    let started = tokio::time::Instant::now();
    let url = format!("http://slow.test:{}/", canary.addr().port());
    let response = curl(handle.http(), &[&url]).await?;
    let elapsed = started.elapsed();
    let body = assert_blocked(&response, 403, "blocked-by-policy", "decider_timeout")?;
    ensure!(body["host"] == "slow.test", "{body}");
    ensure!(elapsed < Duration::from_secs(5), "the 200ms decider timeout took {elapsed:?}");
    ensure!(calls.calls().len() == 1, "{:?}", calls.calls());
    canary.assert_untouched();
    let entries = handle.get().blocked();
    ensure!(entries.len() == 1 && entries[0].reason == "decider_timeout", "{entries:?}");
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decider_is_consulted_for_allowlist_misses_only() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let canary = Canary::start().await?;
    let recorder = Recorder::default();
    // allowed.test resolves to loopback, which the 127.0.0.1 entry allows (SPEC §5.2).
    let resolver = StaticResolver::new()
        .with("allowed.test", [LOOPBACK])
        .with("denied.test", [LOOPBACK])
        .with("decided.test", [LOOPBACK]);
    let config = lib_config(
        "allowed_domains = [\"allowed.test\", \"denied.test\", \"127.0.0.1\"]\n\
         denied_domains = [\"denied.test\"]",
    )?;
    let mut handle = start_lib(
        NetworkProxy::builder()
            .config(config)
            .resolver(Arc::new(resolver))
            .policy_decider(decider(&recorder)),
    )
    .await?;
    let http = handle.http();
    let (origin_port, canary_port) = (origin.addr().port(), canary.addr().port());

    let allowed = curl(http, &[&format!("http://allowed.test:{origin_port}/")]).await?;
    ensure!(allowed.code == 200, "{allowed:?}");
    let denied = curl(http, &[&format!("http://denied.test:{canary_port}/")]).await?;
    assert_blocked(&denied, 403, "blocked-by-denylist", "denied")?;
    for local in ["127.0.0.2", "localhost", "[::1]"] {
        let response = curl(http, &["-g", &format!("http://{local}:{canary_port}/")]).await?;
        assert_blocked(&response, 403, "blocked-by-allowlist", "not_allowed_local")
            .with_context(|| local.to_owned())?;
    }
    let head = connect_head(http, &format!("denied.test:{canary_port}")).await?;
    ensure!(
        head.status == 403 && head.header("x-proxy-error") == Some("blocked-by-denylist"),
        "{head:?}"
    );
    // Nor for a method block on an allowlisted host.
    handle.get().set_mode(Mode::Limited);
    let post =
        curl(http, &["-X", "POST", "-d", "x", &format!("http://allowed.test:{origin_port}/")])
            .await?;
    assert_blocked(&post, 403, "blocked-by-method-policy", "method_not_allowed")?;
    handle.get().set_mode(Mode::Full);
    ensure!(recorder.calls().is_empty(), "consulted for {:?}", recorder.calls());

    // Only a miss reaches it.
    let decided = curl(http, &[&format!("http://decided.test:{origin_port}/")]).await?;
    ensure!(decided.code == 200, "{decided:?}");
    let calls = recorder.calls();
    ensure!(calls.len() == 1 && calls[0].host == "decided.test", "{calls:?}");
    canary.assert_untouched();
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_observer_receives_every_blocked_entry() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<BlockedEntry>();
    let config = lib_config("allowed_domains = [\"localhost\"]")?;
    let mut handle = start_lib(NetworkProxy::builder().config(config).blocked_observer(
        move |entry: &BlockedEntry| {
            let _ = tx.send(entry.clone());
        },
    ))
    .await?;
    let http = handle.http();

    let allowed = curl(http, &[&format!("http://localhost:{}/", origin.addr().port())]).await?;
    ensure!(allowed.code == 200, "{allowed:?}");
    let blocked = curl(http, &["http://unknown.test/x"]).await?;
    assert_blocked(&blocked, 403, "blocked-by-allowlist", "not_allowed")?;
    let head = connect_head(http, "127.0.0.1:443").await?;
    ensure!(head.status == 403, "{head:?}");

    let mut seen = Vec::new();
    for _ in 0..2 {
        let entry = timeout(BOUND, rx.recv()).await.context("observer not called")?;
        seen.push(entry.context("observer channel closed")?);
    }
    // The observer got exactly what the blocked log holds, ids included.
    ensure!(seen == handle.get().blocked(), "{seen:?} vs {:?}", handle.get().blocked());
    let (first, second) = (&seen[0], &seen[1]);
    ensure!(first.id == 1 && first.host == "unknown.test" && first.port == 80, "{first:?}");
    ensure!(first.protocol == "http" && first.method.as_deref() == Some("GET"), "{first:?}");
    ensure!(first.reason == "not_allowed" && first.mode == "full", "{first:?}");
    ensure!(first.client.as_deref().is_some_and(|c| c.starts_with("127.0.0.1:")), "{first:?}");
    ensure!(second.id == 2 && second.host == "127.0.0.1" && second.port == 443, "{second:?}");
    ensure!(
        second.protocol == "http-connect" && second.reason == "not_allowed_local",
        "{second:?}"
    );
    ensure!(rx.try_recv().is_err(), "the allowed request was observed");
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

/// A library proxy over a config file, for reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_the_sources_and_keeps_the_old_config_on_errors() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let dir = temp_dir("proxyd-lib-reload")?;
    let file = dir.join("config.toml");
    write(&file, &network("allowed_domains = [\"first.localhost\"]"))?;
    let sources = Sources { files: vec![file.clone()], ..Sources::default() };
    let mut handle = start_lib(NetworkProxy::builder().sources(sources)).await?;
    let (http, admin) = (handle.http(), handle.admin());
    let fetch = |host: &'static str| {
        let url = format!("http://{host}:{}/", origin.addr().port());
        async move { curl(http, &[&url]).await }
    };
    ensure!(fetch("first.localhost").await?.code == 200);
    ensure!(fetch("second.localhost").await?.code == 403);

    // Good: through the handle.
    write(&file, &network("allowed_domains = [\"second.localhost\"]"))?;
    let pending = timeout(BOUND, handle.get().reload()).await?;
    ensure!(pending == Ok(vec![]), "{pending:?}");
    ensure!(fetch("second.localhost").await?.code == 200);
    ensure!(fetch("first.localhost").await?.code == 403);

    // Broken: the error names the key, and the old policy answers.
    write(&file, &network("allowed_domains = [\"first.localhost\"]\nmax_conections = 5"))?;
    match timeout(BOUND, handle.get().reload()).await? {
        Err(ReloadError::Invalid(errors)) => {
            let all = errors.join("\n");
            ensure!(all.contains("max_conections") && all.contains("max_connections"), "{all}");
            ensure!(all.contains(&file.display().to_string()), "{all}");
        }
        other => anyhow::bail!("expected an invalid-config error, got {other:?}"),
    }
    ensure!(fetch("second.localhost").await?.code == 200, "the old policy stays in force");
    ensure!(fetch("first.localhost").await?.code == 403);

    // A listener change: restart needed, through the admin API on the handle's address.
    write(
        &file,
        &network("allowed_domains = [\"first.localhost\"]")
            .replace("enable_socks5 = false", "enable_socks5 = true"),
    )?;
    let body = post(admin, "/reload", "").await?.expect(409)?;
    ensure!(body["errors"] == json!(["enable_socks5 changed: restart needed"]), "{body}");
    match timeout(BOUND, handle.get().reload()).await? {
        Err(ReloadError::RestartNeeded(changed)) => {
            ensure!(changed == ["enable_socks5 changed: restart needed"], "{changed:?}");
        }
        other => anyhow::bail!("expected restart needed, got {other:?}"),
    }
    ensure!(fetch("second.localhost").await?.code == 200, "the old policy stays in force");

    // And a good one through the admin API.
    write(&file, &network("allowed_domains = [\"first.localhost\"]"))?;
    let body = post(admin, "/reload", "").await?.expect(200)?;
    ensure!(body["status"] == "reloaded", "{body}");
    ensure!(fetch("first.localhost").await?.code == 200);
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_sources_is_an_error() -> anyhow::Result<()> {
    let mut handle =
        start_lib(NetworkProxy::builder().config(lib_config("allowed_domains = [\"localhost\"]")?))
            .await?;
    match timeout(BOUND, handle.get().reload()).await? {
        Err(ReloadError::Invalid(errors)) => {
            ensure!(errors.join(" ").contains("sources"), "{errors:?}")
        }
        other => anyhow::bail!("expected an error, got {other:?}"),
    }
    let body = post(handle.admin(), "/reload", "").await?.expect(422)?;
    ensure!(body["status"] == "error", "{body}");
    let patterns = get(handle.admin(), "/patterns").await?.expect(200)?;
    ensure!(patterns["allowed"] == json!(["localhost"]), "{patterns}");
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_limited_closes_tunnels_from_the_handle_and_the_admin_api()
-> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let config = socks_config("allowed_domains = [\"localhost\"]")?;
    let mut handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let socks = handle.get().socks_addr().context("socks5 is enabled")?;
    let authority = format!("localhost:{}", echo.addr().port());

    // Through the handle.
    let mut tunnel = open_tunnel(handle.http(), &authority).await?;
    let mut socks_tunnel = open_socks_tunnel(socks, "localhost", echo.addr().port()).await?;
    let mut association = open_udp_association(socks).await?;
    handle.get().set_mode(Mode::Limited);
    closed_within(&mut tunnel, CLOSE_WITHIN).await.context("http tunnel, set_mode")?;
    closed_within(&mut socks_tunnel, CLOSE_WITHIN).await.context("socks5 tunnel, set_mode")?;
    closed_within(&mut association, CLOSE_WITHIN).await.context("udp association, set_mode")?;
    handle.get().set_mode(Mode::Full);

    // Through the admin API on the handle's address.
    let mut tunnel = open_tunnel(handle.http(), &authority).await?;
    let reply = post(handle.admin(), "/mode", r#"{"mode":"limited"}"#).await?.expect(200)?;
    ensure!(reply["mode"] == "limited", "{reply}");
    closed_within(&mut tunnel, CLOSE_WITHIN).await.context("http tunnel, admin api")?;
    ensure!(handle.get().mode() == Some(Mode::Limited));
    handle.shutdown_within(BOUND).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_live_tunnel_within_the_drain_timeout() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let config = lib_config("allowed_domains = [\"localhost\"]\ndrain_timeout = \"500ms\"")?;
    let mut handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let http = handle.http();
    let mut tunnel = open_tunnel(http, &format!("localhost:{}", echo.addr().port())).await?;

    let took = handle.shutdown_within(Duration::from_millis(500) + CLOSE_WITHIN).await?;
    closed_within(&mut tunnel, CLOSE_WITHIN).await.context("the tunnel outlived shutdown")?;
    ensure!(took < Duration::from_millis(500) + CLOSE_WITHIN, "shutdown took {took:?}");
    not_serving(http).await?;
    Ok(())
}

/// An upstream that reads until the client's EOF and then holds its side open, neither
/// writing nor closing, until `release` is dropped: a half-closed tunnel, client to upstream
/// done, upstream to client still open.
struct HoldingUpstream {
    addr: SocketAddr,
    eof: mpsc::UnboundedReceiver<()>,
    _release: tokio::sync::oneshot::Sender<()>,
}

async fn holding_upstream() -> anyhow::Result<HoldingUpstream> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let addr = listener.local_addr()?;
    let (eof_tx, eof) = mpsc::unbounded_channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok(Ok((mut stream, _))) = timeout(BOUND, listener.accept()).await else { return };
        let mut buf = [0; 1024];
        while let Ok(Ok(n)) = timeout(BOUND, stream.read(&mut buf)).await {
            if n == 0 {
                let _ = eof_tx.send(());
                break;
            }
        }
        // Hold the connection open until the test is done (bounded).
        let _ = timeout(BOUND * 3, released).await;
        drop(stream);
    });
    Ok(HoldingUpstream { addr, eof, _release: release })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_tunnel_and_idle_keep_alive_end_within_the_drain_time() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let mut upstream = holding_upstream().await?;
    let drain = Duration::from_millis(500);
    let config = lib_config("allowed_domains = [\"localhost\"]\ndrain_timeout = \"500ms\"")?;
    let mut handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let http = handle.http();

    // The half-closed tunnel.
    let mut tunnel = connect(http).await?;
    let authority = format!("localhost:{}", upstream.addr.port());
    write_all(
        &mut tunnel,
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
    )
    .await?;
    let head = read_response_head(&mut tunnel).await?;
    ensure!(head.status == 200, "{head:?}");
    tunnel.shutdown().await?;
    timeout(BOUND, upstream.eof.recv()).await.context("the upstream never saw the client's EOF")?;

    // The idle keep-alive connection, after one answered request.
    let mut keep_alive = connect(http).await?;
    let url = format!("http://localhost:{}/k", origin.addr().port());
    write_all(
        &mut keep_alive,
        format!("GET {url} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n", origin.addr().port())
            .as_bytes(),
    )
    .await?;
    let head = read_response_head(&mut keep_alive).await?;
    ensure!(head.status == 200, "{head:?}");
    let length: usize = head.header("content-length").context("content-length")?.parse()?;
    let mut body = head.rest.clone();
    if body.len() < length {
        let mut more = vec![0; length - body.len()];
        timeout(BOUND, keep_alive.read_exact(&mut more)).await??;
        body.extend(more);
    }
    ensure!(body == b"origin GET /k\n", "{:?}", String::from_utf8_lossy(&body));

    let took = handle.shutdown_within(drain + CLOSE_WITHIN).await?;
    ensure!(took < drain + CLOSE_WITHIN, "shutdown took {took:?}");
    closed_within(&mut tunnel, CLOSE_WITHIN).await.context("half-closed tunnel")?;
    closed_within(&mut keep_alive, CLOSE_WITHIN).await.context("keep-alive connection")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_does_not_hold_a_long_drain() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    // Far longer than the shutdown bound below: only a prompt return passes.
    let config = lib_config("allowed_domains = [\"localhost\"]\ndrain_timeout = \"5m\"")?;
    let mut handle = start_lib(NetworkProxy::builder().config(config)).await?;
    let mut keep_alive = connect(handle.http()).await?;
    let port = origin.addr().port();
    let request =
        format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    write_all(&mut keep_alive, request.as_bytes()).await?;
    let head = read_response_head(&mut keep_alive).await?;
    ensure!(head.status == 200 && head.header("connection") != Some("close"), "{head:?}");
    // An admin connection left open does not hold it up either.
    let mut admin = connect(handle.admin()).await?;
    write_all(&mut admin, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await?;
    ensure!(read_response_head(&mut admin).await?.status == 200);

    handle.shutdown_within(BOUND).await?;
    closed_within(&mut keep_alive, CLOSE_WITHIN).await.context("keep-alive connection")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_proxy_binds_nothing_and_its_handle_is_a_no_op() -> anyhow::Result<()> {
    // Hold a port and name it: binding it would fail, so a built proxy proves nothing was bound.
    let held = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = held.local_addr()?;
    let toml =
        format!("[network]\nenabled = false\nproxy_url = \"{addr}\"\nadmin_url = \"{addr}\"\n");
    let config = Config::from_toml_str(&toml, "lib.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = timeout(BOUND, NetworkProxy::builder().config(config).build()).await??;
    ensure!(!proxy.config().enabled);
    let handle = timeout(BOUND, proxy.run()).await??;
    ensure!(
        handle.http_addr().is_none()
            && handle.socks_addr().is_none()
            && handle.admin_addr().is_none()
    );
    ensure!(handle.mode().is_none());
    handle.set_mode(Mode::Limited);
    ensure!(handle.mode().is_none());
    ensure!(handle.blocked().is_empty());
    ensure!(timeout(BOUND, handle.reload()).await? == Ok(vec![]));
    timeout(BOUND, handle.shutdown()).await.context("shutdown of a disabled proxy hung")??;
    drop(held);
    Ok(())
}
