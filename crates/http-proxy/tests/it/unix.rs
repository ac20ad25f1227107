//! Requests routed to a Unix socket with `x-unix-socket` (SPEC §7.7).

use proxyd_net::Outcome;
use proxyd_policy::{Protocol, Reason};
use proxyd_test_support::{UnixOrigin, temp_dir};

use crate::harness::{proxy, request};

#[tokio::test]
async fn allowed_unix_socket_is_reached_and_the_header_not_forwarded() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-http-proxy-unix")?;
    let origin = UnixOrigin::start(dir.join("origin.sock")).await?;
    let proxy = proxy().unix_socket(origin.path().to_path_buf()).start().await?;
    let header = format!("X-Unix-Socket: {}", origin.path().display());

    let response = proxy.send(request("GET", "http://localhost/over-unix", &[&header])).await?;

    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "origin GET /over-unix\n");
    let seen = &origin.requests()[0];
    assert_eq!(seen.header("x-unix-socket"), None, "the routing header was forwarded");
    assert_eq!(seen.header("host"), Some("localhost"));
    assert_eq!(proxy.outcomes(), [(Protocol::UnixSocket, Outcome::Allowed)]);
    Ok(())
}

#[tokio::test]
async fn unix_socket_not_in_the_list_is_403() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-http-proxy-unix")?;
    let allowed = UnixOrigin::start(dir.join("allowed.sock")).await?;
    let other = UnixOrigin::start(dir.join("other.sock")).await?;
    let proxy = proxy().unix_socket(allowed.path().to_path_buf()).start().await?;
    for path in [
        other.path().display().to_string(),
        // Relative paths never match, even when they name an allowed socket.
        "allowed.sock".to_owned(),
    ] {
        let header = format!("X-Unix-Socket: {path}");
        let response = proxy.send(request("GET", "http://localhost/", &[&header])).await?;
        assert_eq!(response.status(), 403, "{path}: {response:?}");
        assert_eq!(response.header("x-proxy-error"), Some("blocked-by-allowlist"));
        assert_eq!(response.json()?["reason"], "not_allowed");
    }
    assert_eq!(other.hits(), 0);
    assert_eq!(allowed.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn limited_mode_applies_over_unix_sockets() -> anyhow::Result<()> {
    let dir = temp_dir("proxyd-http-proxy-unix")?;
    let origin = UnixOrigin::start(dir.join("origin.sock")).await?;
    let proxy = proxy().limited().unix_socket(origin.path().to_path_buf()).start().await?;
    let header = format!("X-Unix-Socket: {}", origin.path().display());

    let response = proxy
        .send(request("POST", "http://localhost/", &[&header, "Content-Length: 2"]) + "hi")
        .await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(response.header("x-proxy-error"), Some("blocked-by-method-policy"));
    assert_eq!(origin.hits(), 0);

    let response = proxy.send(request("GET", "http://localhost/", &[&header])).await?;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(
        proxy.outcomes(),
        [
            (Protocol::UnixSocket, Outcome::Blocked(Reason::MethodNotAllowed)),
            (Protocol::UnixSocket, Outcome::Allowed),
        ]
    );
    Ok(())
}
