//! Limited mode and its side doors (SPEC §6.2).

use proxyd_test_support::HttpOrigin;

use crate::harness::{connect_request, proxy, request};

#[tokio::test]
async fn limited_mode_blocks_writes_and_side_doors() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().limited().start().await?;
    let port = origin.addr().port();
    let url = format!("http://allowed.test:{port}/");

    let blocked = [
        request("POST", &url, &["Content-Length: 3"]) + "abc",
        request("GET", &url, &["Content-Length: 3"]) + "abc",
        request("GET", &url, &["Transfer-Encoding: chunked"]) + "3\r\nabc\r\n0\r\n\r\n",
        request("GET", &url, &["X-HTTP-Method-Override: DELETE"]),
        request("GET", &url, &["X-HTTP-Method: PUT"]),
        request("GET", &url, &["X-Method-Override: PATCH"]),
        request("get", &url, &[]),
        connect_request(&format!("allowed.test:{port}")),
    ];
    for raw in &blocked {
        let response = proxy.send(raw).await?;
        assert_eq!(response.status(), 403, "{raw:?}: {response:?}");
        assert_eq!(response.header("x-proxy-error"), Some("blocked-by-method-policy"), "{raw:?}");
        assert_eq!(response.json()?["mode"], "limited");
    }
    assert_eq!(origin.hits(), 0, "a blocked request reached the origin");

    for method in ["GET", "OPTIONS"] {
        let response = proxy.send(request(method, &url, &["Content-Length: 0"])).await?;
        assert_eq!(response.status(), 200, "{method}: {response:?}");
    }
    let mut client = proxy.client().await?;
    client.write(request("HEAD", &url, &[])).await?;
    assert_eq!(client.head().await?.status, 200);
    assert_eq!(origin.hits(), 3);
    Ok(())
}

#[tokio::test]
async fn switching_mode_applies_to_the_next_request() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().start().await?;
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    let mut client = proxy.client().await?;
    let post = request("POST", &url, &["Content-Length: 2"]) + "hi";
    assert_eq!(client.request(&post).await?.status(), 200);
    proxy.engine.set_mode(proxyd_policy::Mode::Limited);
    let response = client.request(&post).await?;
    assert_eq!(response.status(), 403, "{response:?}");
    assert_eq!(origin.hits(), 1);
    Ok(())
}
