//! Review 2: bypasses of request rules and brokered credentials, reproduced from outside with
//! real listeners on `127.0.0.1:0`. Every test here failed against the code it was written for.

use std::time::Duration;

use proxyd_http_proxy::{Broker, Credential};
use proxyd_policy::{ListKind, PathPattern, Pattern, Rule, RuleAction};
use proxyd_test_support::{HttpOrigin, UnixOrigin, temp_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{get, proxy, request};

const PLACEHOLDER: &str = "ghp_PLACEHOLDER0000000000000000000000";
const REAL: &str = "ghp_RealSecretToken11111111111111111111";

fn broker(host: &str) -> anyhow::Result<Broker> {
    Broker::new(vec![Credential {
        name: "github".into(),
        placeholder: PLACEHOLDER.into(),
        real: REAL.into(),
        hosts: vec![host.into()],
        allow_plain_http: false,
    }])
    .map_err(|why| anyhow::anyhow!(why))
}

fn rule(
    name: &str,
    host: &str,
    methods: Option<&[&str]>,
    paths: &[&str],
    action: RuleAction,
) -> Rule {
    Rule {
        name: name.into(),
        host: Pattern::parse(host, ListKind::Allowed).expect("host"),
        methods: methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
        paths: paths.iter().map(|p| PathPattern::parse(p).expect("path")).collect(),
        query: Vec::new(),
        headers: Vec::new(),
        action,
        strip_headers: Vec::new(),
        inject: None,
    }
}

/// A brokered credential's real value may go only to its bound hosts, over TLS. An
/// absolute-form `https://BOUND-HOST/` request with `x-unix-socket` is routed to the Unix
/// socket in plain HTTP/1.1, yet the broker sees scheme `https` and a bound target and swaps the
/// real token in: the token leaves proxyd in clear text, to a socket that is not the bound host.
#[tokio::test]
async fn a_brokered_token_is_never_sent_to_a_unix_socket() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-review2-unix")?;
    let origin = UnixOrigin::start(dir.join("other-service.sock")).await?;
    let proxy = proxy()
        .unix_socket(origin.path().to_path_buf())
        .broker(broker("allowed.test")?)
        .start()
        .await?;
    let socket = format!("X-Unix-Socket: {}", origin.path().display());
    let auth = format!("Authorization: Bearer {PLACEHOLDER}");
    let response =
        proxy.send(request("GET", "https://allowed.test/user", &[&socket, &auth])).await?;
    let seen = origin.requests();
    let leaked: Vec<_> = seen
        .iter()
        .filter_map(|r| r.header("authorization"))
        .filter(|v| v.contains(REAL))
        .collect();
    assert!(
        leaked.is_empty(),
        "the real token went in plain text to a unix socket ({} -> {leaked:?}); response {response:?}",
        origin.path().display()
    );
    Ok(())
}

/// Same, over plain `http://` for comparison: here the broker keeps the placeholder (tls=false).
/// Passes; kept to show the difference is only the scheme named in the request line.
#[tokio::test]
async fn a_brokered_token_over_plain_http_to_a_unix_socket_stays_a_placeholder()
-> anyhow::Result<()> {
    let dir = temp_dir("proxyd-review2-unix")?;
    let origin = UnixOrigin::start(dir.join("other-service.sock")).await?;
    let proxy = proxy()
        .unix_socket(origin.path().to_path_buf())
        .broker(broker("allowed.test")?)
        .start()
        .await?;
    let socket = format!("X-Unix-Socket: {}", origin.path().display());
    let auth = format!("Authorization: Bearer {PLACEHOLDER}");
    let response =
        proxy.send(request("GET", "http://allowed.test/user", &[&socket, &auth])).await?;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(
        origin.requests()[0].header("authorization"),
        Some(&*format!("Bearer {PLACEHOLDER}"))
    );
    Ok(())
}

/// README example 1: "Read-only API access" is `methods = ["GET", "HEAD"]`. proxyd itself treats
/// `X-HTTP-Method-Override` as a write (limited mode's side doors), but a request rule lets a
/// `GET` carrying `X-HTTP-Method-Override: DELETE` through, and origins that honour the header
/// (Google APIs, Express/ASP.NET/Symfony middleware) run it as a `DELETE`.
#[tokio::test]
async fn a_read_only_rule_does_not_pass_a_method_override() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let port = origin.addr().port();
    let read = rule(
        "org-read",
        "localhost",
        Some(&["GET", "HEAD"]),
        &["/repos/our-org/**"],
        RuleAction::Allow,
    );
    let proxy = proxy().allow(&["localhost"]).rules(vec![read], &[]).start().await?;
    // Sanity: the rule does refuse a real DELETE.
    let delete = proxy
        .send(request("DELETE", &format!("http://localhost:{port}/repos/our-org/repo"), &[]))
        .await?;
    assert_eq!(delete.status(), 403, "{delete:?}");
    for header in
        ["X-HTTP-Method-Override: DELETE", "X-HTTP-Method: DELETE", "X-Method-Override: PUT"]
    {
        let response = proxy
            .send(request("GET", &format!("http://localhost:{port}/repos/our-org/repo"), &[header]))
            .await?;
        assert_eq!(
            response.status(),
            403,
            "`GET` + `{header}` passed a GET/HEAD-only rule: origin saw {:?}",
            origin.requests().last().map(|r| (
                &r.method,
                &r.target,
                r.header("x-http-method-override")
            ))
        );
    }
    Ok(())
}

/// A deny rule carving `/admin/**` out of a broad allow. Tomcat, Jetty and Spring strip `;`
/// path parameters from every segment before routing (the normaliser knows: it refuses `/..;/`
/// for that reason), so `/admin;x/users` is `/admin/users` there; proxyd matches the segment
/// `admin;x` literally and the deny rule does not fire.
#[tokio::test]
async fn a_deny_rule_is_not_bypassed_by_path_parameters() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let port = origin.addr().port();
    let rules = vec![
        rule("no-admin", "localhost", None, &["/admin/**"], RuleAction::Deny),
        rule("rest", "localhost", None, &["/**"], RuleAction::Allow),
    ];
    let proxy = proxy().allow(&["localhost"]).rules(rules, &[]).start().await?;
    let direct = proxy.send(get(&format!("http://localhost:{port}/admin/users"))).await?;
    assert_eq!(direct.status(), 403, "{direct:?}");
    for path in ["/admin;x/users", "/admin;/users", "/admin;jsessionid=1"] {
        let response = proxy.send(get(&format!("http://localhost:{port}{path}"))).await?;
        assert_ne!(
            response.status(),
            200,
            "{path} reached the origin past the `/admin/**` deny rule: {:?}",
            origin.requests().last().map(|r| r.target.clone())
        );
    }
    Ok(())
}

/// An origin that switches to any protocol asked for (as an `h2c`-capable server does), then
/// reads what comes next on the connection as a new HTTP request, and reports its request line.
async fn switching_origin() -> anyhow::Result<(u16, tokio::sync::mpsc::Receiver<String>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = false;
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let line = head.lines().next().unwrap_or_default().to_owned();
                        let _ = tx.send(line).await;
                        let reply: &[u8] = match answered {
                            false => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
                            true => b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsecret\n",
                        };
                        answered = true;
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((port, rx))
}

/// A rule allows `GET /ok/**` only. An upgrade request to an allowed path (`Upgrade: h2c`, the
/// classic h2c smuggling) turns the connection into a raw pipe to the origin, and every later
/// request on it (`/admin`, any method) is never decided: the rules are bypassed wholesale.
#[tokio::test]
async fn an_upgrade_to_a_host_with_rules_does_not_open_a_raw_pipe() -> anyhow::Result<()> {
    let (port, mut seen) = switching_origin().await?;
    let read = rule("read", "localhost", Some(&["GET"]), &["/ok/**"], RuleAction::Allow);
    let proxy = proxy().allow(&["localhost"]).rules(vec![read], &[]).start().await?;
    let denied = proxy
        .send(request("POST", &format!("http://localhost:{port}/admin"), &["Content-Length: 0"]))
        .await?;
    assert_eq!(denied.status(), 403, "{denied:?}");

    let mut client = proxy.client().await?;
    client
        .write(request(
            "GET",
            &format!("http://localhost:{port}/ok/x"),
            &[
                "Upgrade: h2c",
                "Connection: Upgrade, HTTP2-Settings",
                "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
            ],
        ))
        .await?;
    let head = client.head().await?;
    if head.status == 101 {
        client
            .write("POST /admin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
            .await?;
    }
    let mut lines = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(500), seen.recv()).await {
        lines.push(line);
    }
    assert!(
        !lines.iter().any(|l| l.contains("/admin")),
        "a request no rule allows reached the origin through an upgraded connection \
         (status {}): origin saw {lines:?}",
        head.status
    );
    Ok(())
}

/// README example 3 injects a registry token with a request rule. Brokered credentials go out
/// only over TLS unless `dangerously_allow_plain_http`; a rule's injected secret has no such
/// guard: a plain `http://` request to the ruled host (any port, since the host pattern has
/// none) gets the real secret added and sent in clear text.
#[tokio::test]
async fn a_rule_injected_secret_is_not_sent_over_plain_http() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let port = origin.addr().port();
    let mut inject = rule("registry-token", "localhost", None, &[], RuleAction::Allow);
    inject.strip_headers = vec!["authorization".into()];
    inject.inject = Some(proxyd_policy::Injection { header: "authorization".into(), secret: 0 });
    let proxy = proxy()
        .allow(&["localhost"])
        .rules(vec![inject], &["Bearer registry-secret-value"])
        .start()
        .await?;
    let _ = proxy.send(get(&format!("http://localhost:{port}/v2/"))).await?;
    let seen = origin.requests();
    assert!(
        seen.iter().all(|r| r.header("authorization") != Some("Bearer registry-secret-value")),
        "the injected secret went out over plain http: {:?}",
        seen.iter().map(|r| r.header("authorization")).collect::<Vec<_>>()
    );
    Ok(())
}
