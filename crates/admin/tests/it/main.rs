//! The admin server over real HTTP with a fake [`Control`]: every endpoint of SPEC §8.1 and
//! its JSON shape, 404/405, bad bodies, and every protection of SPEC §8.3, checked both by
//! status and by what reached the control. Every port is chosen by the kernel and every wait
//! is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd_admin::{
    AdminServer, BlockedEntry, BlockedLog, BoxFuture, ConfigEntry, Control, Mode, ReloadError,
    Settings,
};
use proxyd_test_support::{ResponseHead, TIMEOUT, connect, raw_request, read_response_head};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// What the admin server may read and change, with a record of the changes.
struct Fake {
    mode: Mutex<Mode>,
    blocked: BlockedLog,
    reload_answer: Mutex<Result<Vec<String>, ReloadError>>,
    set_mode_calls: AtomicUsize,
    reload_calls: AtomicUsize,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            mode: Mutex::new(Mode::Full),
            blocked: BlockedLog::new(3),
            reload_answer: Mutex::new(Ok(Vec::new())),
            set_mode_calls: AtomicUsize::new(0),
            reload_calls: AtomicUsize::new(0),
        }
    }

    /// Calls that changed something.
    fn changes(&self) -> (usize, usize) {
        (self.set_mode_calls.load(Ordering::SeqCst), self.reload_calls.load(Ordering::SeqCst))
    }

    fn answer_reload(&self, answer: Result<Vec<String>, ReloadError>) {
        *self.reload_answer.lock().unwrap_or_else(|e| e.into_inner()) = answer;
    }
}

const HTTP: &str = "127.0.0.1:3128";
const SOCKS: &str = "127.0.0.1:8081";
/// What [`Control::metrics`] returns: OpenMetrics text.
const METRICS: &str = "# HELP fake Fakes.\n# TYPE fake counter\nfake_total 7\n# EOF\n";

impl Control for Fake {
    fn version(&self) -> &str {
        "9.9.9-test"
    }

    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_mode(&self, mode: Mode) {
        self.set_mode_calls.fetch_add(1, Ordering::SeqCst);
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    fn listeners(&self) -> Vec<(String, SocketAddr)> {
        vec![
            ("http".to_owned(), HTTP.parse().expect("literal")),
            ("socks5".to_owned(), SOCKS.parse().expect("literal")),
        ]
    }

    fn config(&self) -> Vec<ConfigEntry> {
        vec![
            ConfigEntry {
                key: "allowed_domains".into(),
                value: json!(["example.com"]),
                origin: "from /etc/proxyd.toml:3".into(),
            },
            ConfigEntry { key: "mode".into(), value: json!("full"), origin: "default".into() },
            ConfigEntry {
                key: "admin_token".into(),
                value: json!("(redacted)"),
                origin: "from -c".into(),
            },
        ]
    }

    fn patterns(&self) -> (Vec<String>, Vec<String>) {
        (vec!["example.com".into(), "**.docs.test".into()], vec!["bad.test".into()])
    }

    fn blocked(&self) -> &BlockedLog {
        &self.blocked
    }

    fn reload(&self) -> BoxFuture<'_, Result<Vec<String>, ReloadError>> {
        self.reload_calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.reload_answer.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move { answer })
    }

    fn metrics(&self) -> String {
        METRICS.to_owned()
    }
}

/// A running admin server over a [`Fake`]; aborted when dropped.
struct Server {
    addr: SocketAddr,
    fake: Arc<Fake>,
    stop: proxyd_lifecycle::Lifecycle,
    drain_timeout: Duration,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(token: Option<&str>) -> anyhow::Result<Server> {
        Server::start_with(Fake::new(), token, Duration::from_secs(10)).await
    }

    async fn start_with(
        fake: Fake,
        token: Option<&str>,
        header_read_timeout: Duration,
    ) -> anyhow::Result<Server> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let fake = Arc::new(fake);
        let settings =
            Settings { header_read_timeout, token: token.map(str::to_owned), max_connections: 16 };
        let server = AdminServer::new(fake.clone(), settings);
        let stop = proxyd_lifecycle::Lifecycle::new();
        let lifecycle = stop.clone();
        let task = tokio::spawn(async move { server.serve(listener, &lifecycle).await });
        Ok(Server { addr, fake, stop, drain_timeout: header_read_timeout, task: Some(task) })
    }

    fn host(&self) -> String {
        format!("Host: {}", self.addr)
    }

    /// Sends `METHOD PATH` with a loopback `Host`, `extra` header lines and `body`.
    async fn send(
        &self,
        method: &str,
        path: &str,
        extra: &[&str],
        body: &str,
    ) -> anyhow::Result<Answer> {
        let mut headers = vec![self.host()];
        headers.extend(extra.iter().map(|h| (*h).to_owned()));
        self.send_raw(method, path, &headers, body).await
    }

    /// Like [`Server::send`] but with exactly `headers` (no `Host` added).
    async fn send_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &str,
    ) -> anyhow::Result<Answer> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let bytes = raw_request(self.addr, request).await?;
        let head = ResponseHead::parse(&bytes)?;
        let body = String::from_utf8_lossy(&head.rest).into_owned();
        Ok(Answer { head, body })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send("GET", path, &[], "").await
    }

    async fn post(&self, path: &str, body: &str) -> anyhow::Result<Answer> {
        self.send("POST", path, &[], body).await
    }

    /// Signals shutdown and waits (bounded) for `serve` to return.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let (lifecycle, drain_timeout) = (self.stop.clone(), self.drain_timeout);
        tokio::spawn(async move { lifecycle.shutdown(drain_timeout).await });
        let task = self.task.take().context("already stopped")?;
        timeout(TIMEOUT, task).await.context("serve did not return after shutdown")??;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Answer {
    head: ResponseHead,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.head.status
    }

    /// Asserts `status` and a JSON body; returns the body.
    fn expect(&self, status: u16) -> anyhow::Result<Value> {
        ensure!(self.status() == status, "expected {status}, got {self:?}");
        ensure!(
            self.head.header("content-type") == Some("application/json"),
            "expected json: {self:?}"
        );
        serde_json::from_str(&self.body).with_context(|| format!("body is not json: {self:?}"))
    }

    /// Asserts `status` with `{"status":"error","message":…what…}`.
    fn expect_error(&self, status: u16, what: &str) -> anyhow::Result<Value> {
        let body = self.expect(status)?;
        ensure!(body["status"] == "error", "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        ensure!(message.contains(what), "expected {what:?} in {body}");
        Ok(body)
    }
}

fn entry(host: &str, protocol: &str) -> BlockedEntry {
    BlockedEntry {
        id: 0,
        timestamp: "2026-01-02T03:04:05.678Z".into(),
        host: host.into(),
        port: 443,
        protocol: protocol.into(),
        method: (protocol != "socks5").then(|| "CONNECT".to_owned()),
        reason: "not_allowed".into(),
        client: Some("127.0.0.1:50000".into()),
        mode: "full".into(),
        rule: None,
        detail: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_config_patterns_and_metrics_have_their_shapes() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    let health = server.get("/health").await?.expect(200)?;
    let expected = json!({
        "status": "ok",
        "version": "9.9.9-test",
        "mode": "full",
        "listeners": {"http": HTTP, "socks5": SOCKS},
    });
    ensure!(health == expected, "{health}");

    let config = server.get("/config").await?.expect(200)?;
    let expected = json!({
        "network": {"allowed_domains": ["example.com"], "mode": "full", "admin_token": "(redacted)"},
        "origins": {"allowed_domains": "from /etc/proxyd.toml:3", "mode": "default", "admin_token": "from -c"},
    });
    ensure!(config == expected, "{config}");

    let patterns = server.get("/patterns").await?.expect(200)?;
    ensure!(
        patterns == json!({"allowed": ["example.com", "**.docs.test"], "denied": ["bad.test"]}),
        "{patterns}"
    );

    // The Prometheus text format by default, OpenMetrics when asked for.
    let metrics = server.get("/metrics").await?;
    let text = "# HELP fake_total Fakes.\n# TYPE fake_total counter\nfake_total 7\n";
    ensure!(metrics.status() == 200 && metrics.body == text, "{metrics:?}");
    let content_type = metrics.head.header("content-type").unwrap_or_default();
    ensure!(content_type == "text/plain; version=0.0.4; charset=utf-8", "{content_type}");
    let accept = ["Accept: application/openmetrics-text; version=1.0.0"];
    let metrics = server.send("GET", "/metrics", &accept, "").await?;
    ensure!(metrics.status() == 200 && metrics.body == METRICS, "{metrics:?}");
    let content_type = metrics.head.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );

    // HEAD answers like GET, without the body.
    let head = server.send("HEAD", "/health", &[], "").await?;
    ensure!(head.status() == 200 && head.body.is_empty(), "{head:?}");
    ensure!(server.fake.changes() == (0, 0), "reads changed something");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_log_is_read_oldest_first_with_since_and_total() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    ensure!(server.get("/blocked").await?.expect(200)? == json!({"blocked": [], "total": 0}));
    // The fake's ring holds three.
    for (host, protocol) in
        [("a.test", "http"), ("b.test", "http-connect"), ("c.test", "socks5"), ("d.test", "http")]
    {
        server.fake.blocked.push(entry(host, protocol));
    }
    let all = server.get("/blocked").await?.expect(200)?;
    ensure!(all["total"] == 4, "{all}");
    let expected_b = json!({
        "id": 2, "timestamp": "2026-01-02T03:04:05.678Z", "host": "b.test", "port": 443,
        "protocol": "http-connect", "method": "CONNECT", "reason": "not_allowed",
        "client": "127.0.0.1:50000", "mode": "full",
    });
    ensure!(all["blocked"][0] == expected_b, "{all}");
    ensure!(all["blocked"][1]["method"].is_null(), "socks5 has no method: {all}");
    let ids: Vec<Value> =
        all["blocked"].as_array().context("list")?.iter().map(|e| e["id"].clone()).collect();
    ensure!(ids == [json!(2), json!(3), json!(4)], "{all}");

    for (query, expected) in
        [("0", vec![2, 3, 4]), ("1", vec![2, 3, 4]), ("3", vec![4]), ("4", vec![]), ("99", vec![])]
    {
        let answer = server.get(&format!("/blocked?since={query}")).await?.expect(200)?;
        let ids: Vec<u64> = answer["blocked"]
            .as_array()
            .context("list")?
            .iter()
            .filter_map(|e| e["id"].as_u64())
            .collect();
        ensure!(ids == expected && answer["total"] == 4, "since={query}: {answer}");
    }
    ensure!(server.get("/blocked").await?.expect(200)? == all, "reading removed entries");
    for query in ["since=abc", "since=-1", "since=", "limit=2", "since=1&x=2"] {
        server
            .get(&format!("/blocked?{query}"))
            .await?
            .expect(400)
            .with_context(|| query.to_owned())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_switches_and_bad_bodies_get_400_with_the_reason() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    let answer = server.post("/mode", r#"{"mode":"limited"}"#).await?.expect(200)?;
    ensure!(answer == json!({"status": "ok", "mode": "limited"}), "{answer}");
    ensure!(server.fake.mode() == Mode::Limited);
    ensure!(server.get("/health").await?.expect(200)?["mode"] == "limited");
    let answer = server.post("/mode", r#" { "mode" : "full" } "#).await?.expect(200)?;
    ensure!(answer["mode"] == "full" && server.fake.mode() == Mode::Full, "{answer}");
    ensure!(server.fake.changes() == (2, 0));

    let bad = [
        ("", "not json"),
        ("mode=limited", "not json"),
        ("\"limited\"", "object"),
        ("[]", "object"),
        ("{}", "\"mode\""),
        (r#"{"mode":true}"#, "\"mode\""),
        (r#"{"mode":"read-only"}"#, "\"full\" or \"limited\""),
        (r#"{"mode":"FULL"}"#, "\"full\" or \"limited\""),
        (r#"{"mode":"full","extra":1}"#, "extra"),
    ];
    for (body, reason) in bad {
        server
            .post("/mode", body)
            .await?
            .expect_error(400, reason)
            .with_context(|| body.to_owned())?;
    }
    ensure!(server.fake.changes() == (2, 0), "a bad body reached set_mode");

    // An oversized body is refused before it is parsed.
    let big = format!(r#"{{"mode":"limited","pad":"{}"}}"#, "x".repeat(70 * 1024));
    let answer = server.post("/mode", &big).await?;
    ensure!(answer.status() == 413, "{answer:?}");
    ensure!(server.fake.changes() == (2, 0) && server.fake.mode() == Mode::Full);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_answers_map_to_statuses() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    let answer = server.post("/reload", "").await?.expect(200)?;
    ensure!(answer == json!({"status": "reloaded", "pending_restart": []}), "{answer}");

    server.fake.answer_reload(Ok(vec!["drain_timeout".into()]));
    let answer = server.post("/reload", "").await?.expect(200)?;
    ensure!(answer["pending_restart"] == json!(["drain_timeout"]), "{answer}");

    let errors =
        vec!["f.toml:2: unknown key alowed_domains".to_owned(), "f.toml:3: bad".to_owned()];
    server.fake.answer_reload(Err(ReloadError::Invalid(errors.clone())));
    let answer = server.post("/reload", "").await?;
    let body = answer.expect_error(422, "stays in force")?;
    ensure!(body["errors"] == json!(errors), "{body}");

    server.fake.answer_reload(Err(ReloadError::RestartNeeded(vec![
        "proxy_url changed: restart needed".into(),
    ])));
    let body = server.post("/reload", "").await?.expect_error(409, "restart")?;
    ensure!(body["errors"] == json!(["proxy_url changed: restart needed"]), "{body}");
    ensure!(server.fake.changes() == (0, 4));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_wrong_methods_405() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    for (method, path) in [("GET", "/"), ("GET", "/nope"), ("POST", "/modes"), ("GET", "/Health")] {
        let answer = server.send(method, path, &[], "").await?;
        answer.expect_error(404, "no such endpoint").with_context(|| format!("{method} {path}"))?;
    }
    for (method, path) in [
        ("GET", "/mode"),
        ("PUT", "/mode"),
        ("GET", "/reload"),
        ("POST", "/health"),
        ("POST", "/config"),
        ("DELETE", "/patterns"),
        ("POST", "/blocked"),
        ("POST", "/metrics"),
    ] {
        let answer = server.send(method, path, &[], "").await?;
        answer.expect_error(405, "method").with_context(|| format!("{method} {path}"))?;
    }
    ensure!(server.fake.changes() == (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_must_be_loopback_or_the_listener() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    let port = server.addr.port();
    let refused = [
        vec!["Host: evil.com".to_owned()],
        vec![format!("Host: evil.com:{port}")],
        vec![format!("Host: 127.0.0.1.nip.io:{port}")],
        vec![format!("Host: localhost.evil.com:{port}")],
        vec![format!("Host: 10.0.0.1:{port}")],
        vec![format!("Host: 127.0.0.1:{}", if port == 1 { 2 } else { port - 1 })],
        vec![],
    ];
    for headers in &refused {
        let answer = server.send_raw("GET", "/health", headers, "").await?;
        answer.expect_error(403, "host").with_context(|| format!("{headers:?}"))?;
        let answer = server.send_raw("POST", "/mode", headers, r#"{"mode":"limited"}"#).await?;
        answer.expect_error(403, "host").with_context(|| format!("{headers:?}"))?;
        let answer = server.send_raw("POST", "/reload", headers, "").await?;
        answer.expect_error(403, "host").with_context(|| format!("{headers:?}"))?;
    }
    ensure!(server.fake.changes() == (0, 0), "a refused request reached the control");
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".to_owned(),
        "Localhost".to_owned(),
        format!("api.localhost:{port}"),
    ] {
        let answer = server.send_raw("GET", "/health", &[format!("Host: {host}")], "").await?;
        answer.expect(200).with_context(|| host.clone())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_403_and_never_reach_the_control() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    let refused = [
        "Origin: https://evil.com",
        "Origin: http://evil.com:80",
        "Origin: null",
        "Origin: http://localhost.evil.com",
        "Origin: file://",
        "Sec-Fetch-Site: cross-site",
        "Sec-Fetch-Site: Cross-Site",
    ];
    for header in refused {
        let answer = server.send("POST", "/mode", &[header], r#"{"mode":"limited"}"#).await?;
        answer.expect_error(403, "cross-site").with_context(|| header.to_owned())?;
        let answer = server.send("POST", "/reload", &[header], "").await?;
        answer.expect_error(403, "cross-site").with_context(|| header.to_owned())?;
    }
    ensure!(server.fake.changes() == (0, 0), "a cross-site post reached the control");
    for header in [
        "Origin: http://localhost:5173",
        "Origin: http://127.0.0.1",
        "Origin: http://[::1]:8080",
        "Sec-Fetch-Site: same-origin",
        "Sec-Fetch-Site: none",
    ] {
        let answer = server.send("POST", "/mode", &[header], r#"{"mode":"full"}"#).await?;
        answer.expect(200).with_context(|| header.to_owned())?;
    }
    ensure!(server.fake.changes() == (5, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_everywhere_but_health() -> anyhow::Result<()> {
    let server = Server::start(Some("s3cret")).await?;
    ensure!(server.get("/health").await?.expect(200)?["status"] == "ok");
    let bad_credentials: [&[&str]; 4] = [
        &[],
        &["Authorization: Bearer wrong"],
        &["Authorization: Bearer s3cret2"],
        &["Authorization: Basic czNjcmV0"],
    ];
    for (method, path, body) in [
        ("GET", "/config", ""),
        ("GET", "/patterns", ""),
        ("GET", "/blocked", ""),
        ("GET", "/metrics", ""),
        ("POST", "/mode", r#"{"mode":"limited"}"#),
        ("POST", "/reload", ""),
    ] {
        for headers in bad_credentials {
            let answer = server.send(method, path, headers, body).await?;
            answer
                .expect_error(401, "token")
                .with_context(|| format!("{method} {path} {headers:?}"))?;
            ensure!(answer.head.header("www-authenticate") == Some("Bearer"), "{answer:?}");
        }
    }
    ensure!(server.fake.changes() == (0, 0), "an unauthorised request reached the control");
    let auth = ["Authorization: Bearer s3cret"];
    ensure!(server.send("GET", "/config", &auth, "").await?.status() == 200);
    ensure!(server.send("GET", "/metrics", &auth, "").await?.status() == 200);
    let answer = server.send("POST", "/mode", &auth, r#"{"mode":"limited"}"#).await?.expect(200)?;
    ensure!(answer["mode"] == "limited", "{answer}");
    ensure!(server.send("POST", "/reload", &auth, "").await?.status() == 200);
    ensure!(server.fake.changes() == (1, 1));
    // The Host check comes first, token or not.
    let answer = server
        .send_raw(
            "GET",
            "/config",
            &["Host: evil.com".into(), "Authorization: Bearer s3cret".into()],
            "",
        )
        .await?;
    answer.expect_error(403, "host")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_post_mode_works_exactly_as_written() -> anyhow::Result<()> {
    let server = Server::start(None).await?;
    let url = format!("http://127.0.0.1:{}/mode", server.addr.port());
    let output = tokio::process::Command::new("curl")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["-X", "POST", &url, "-d", r#"{"mode":"limited"}"#])
        .kill_on_drop(true)
        .output();
    let output = timeout(TIMEOUT, output).await.context("curl did not exit")??;
    ensure!(output.status.success(), "{output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout)?;
    ensure!(answer == json!({"status": "ok", "mode": "limited"}), "{answer}");
    ensure!(server.fake.mode() == Mode::Limited);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_head_is_disconnected_after_the_header_timeout() -> anyhow::Result<()> {
    let server = Server::start_with(Fake::new(), None, Duration::from_millis(300)).await?;
    let mut stream = connect(server.addr).await?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await?;
    let mut buf = Vec::new();
    // Bounded: the server must close well within TIMEOUT.
    let read = timeout(TIMEOUT, stream.read_to_end(&mut buf)).await;
    ensure!(read.is_ok(), "a stalled head kept the connection open");
    let text = String::from_utf8_lossy(&buf);
    ensure!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_promptly_with_an_idle_keep_alive_client() -> anyhow::Result<()> {
    let mut server = Server::start(None).await?;
    let mut stream = connect(server.addr).await?;
    stream
        .write_all(format!("GET /health HTTP/1.1\r\n{}\r\n\r\n", server.host()).as_bytes())
        .await?;
    let head = read_response_head(&mut stream).await?;
    ensure!(head.status == 200, "{head:?}");
    // The connection stays open (keep-alive) until shutdown.
    server.stop().await?;
    let mut rest = Vec::new();
    timeout(TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .context("still open after shutdown")??;
    // Nothing answers any more. (A connect may still succeed for a moment: a child process
    // another test is spawning can hold a copy of the closed listener between fork and exec.)
    if let Ok(mut late) = connect(server.addr).await {
        let _ = late.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = timeout(TIMEOUT, late.read_to_end(&mut answer)).await.context("still open")?;
        ensure!(answer.is_empty(), "answered after shutdown: {answer:?}");
    }
    Ok(())
}
