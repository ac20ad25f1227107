use std::time::Instant;

use http::StatusCode;
use proxyd_test_support::{HttpOrigin, ResponseHead, TIMEOUT, connect, raw_request};
use tokio::io::AsyncReadExt;

use crate::{get, request, send_all};

#[tokio::test]
async fn default_route_echoes_method_target_and_body_and_records() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let stream = connect(origin.addr()).await?;
    let answers = send_all(
        stream,
        vec![request("GET", "/hello?x=1", "")?, request("POST", "/submit", "payload")?],
    )
    .await?;

    assert_eq!(answers[0].status, StatusCode::OK);
    assert_eq!(answers[0].headers["content-type"], "text/plain");
    assert_eq!(answers[0].body, "origin GET /hello?x=1\n");
    assert_eq!(answers[1].body, "origin POST /submit\npayload");

    // Both went over one keep-alive connection.
    assert_eq!(origin.hits(), 2);
    let requests = origin.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!((requests[0].method.as_str(), requests[0].target.as_str()), ("GET", "/hello?x=1"));
    assert_eq!(requests[0].header("HOST"), Some("origin.test"));
    assert_eq!(requests[1].body, b"payload");
    assert_eq!(requests[1].header("content-length"), Some("7"));
    Ok(())
}

#[tokio::test]
async fn chunked_request_body_is_recorded_and_echoed() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let raw = raw_request(
        origin.addr(),
        "POST /upload HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await?;
    let head = ResponseHead::parse(&raw)?;
    assert_eq!(head.status, 200);
    assert!(head.rest.ends_with(b"origin POST /upload\nhello world"), "{head:?}");

    let requests = origin.requests();
    assert_eq!(requests[0].body, b"hello world");
    assert_eq!(requests[0].header("transfer-encoding"), Some("chunked"));
    // Names are lower-case and in arrival order.
    let names: Vec<&str> = requests[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["host", "transfer-encoding", "connection"]);
    Ok(())
}

#[tokio::test]
async fn big_streams_the_requested_length() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;

    let sized = get(origin.addr(), "/big?n=100000").await?;
    assert_eq!(sized.status, StatusCode::OK);
    assert_eq!(sized.headers["content-length"], "100000");
    assert_eq!(sized.body.len(), 100_000);
    assert!(sized.body.iter().all(|b| *b == b'x'));

    let chunked = get(origin.addr(), "/big?n=40000&chunked=1").await?;
    assert_eq!(chunked.headers["transfer-encoding"], "chunked");
    assert_eq!(chunked.body.len(), 40_000);

    assert_eq!(get(origin.addr(), "/big").await?.status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn slow_counts_the_hit_before_answering_late() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let started = Instant::now();
    let addr = origin.addr();
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=300").await });

    origin.wait_for_hits(1).await?;
    assert!(!slow.is_finished(), "the slow answer came before its delay");
    let answer = slow.await??;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "origin GET /slow?ms=300\n");
    assert!(started.elapsed().as_millis() >= 300);
    Ok(())
}

#[tokio::test]
async fn status_route_answers_the_code() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let missing = get(origin.addr(), "/status/404").await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body, "status 404\n");

    let bad_gateway = get(origin.addr(), "/status/502").await?;
    assert_eq!(bad_gateway.status, StatusCode::BAD_GATEWAY);

    let no_content = get(origin.addr(), "/status/204").await?;
    assert_eq!(no_content.status, StatusCode::NO_CONTENT);
    assert!(no_content.body.is_empty());

    for bad in ["/status/abc", "/status/101", "/status/600"] {
        assert_eq!(get(origin.addr(), bad).await?.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(origin.hits(), 6);
    Ok(())
}

#[tokio::test]
async fn absolute_form_target_is_recorded_as_received() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let raw = raw_request(
        origin.addr(),
        "GET http://origin.test/p?q HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(raw.ends_with(b"origin GET http://origin.test/p?q\n"));
    assert_eq!(origin.requests()[0].target, "http://origin.test/p?q");
    Ok(())
}

#[tokio::test]
async fn dropping_the_origin_closes_its_listener() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let addr = origin.addr();
    let mut open = connect(addr).await?;
    drop(origin);

    // The accepted connection is aborted with the server.
    let mut buf = [0; 16];
    let read = tokio::time::timeout(TIMEOUT, open.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // New connections are refused once the aborted task is dropped.
    let deadline = Instant::now() + TIMEOUT;
    while connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still accepting after drop");
        tokio::task::yield_now().await;
    }
    Ok(())
}
