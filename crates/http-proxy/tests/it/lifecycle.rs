//! Header read timeout and graceful shutdown (SPEC §7.5).

use std::time::Duration;

use proxyd_test_support::{EchoTcp, HttpOrigin, connect};

use crate::harness::{Client, RawOrigin, TIMEOUT, connect_request, get, proxy, request};

/// How long a connection the proxy should close may stay open.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Issue 16: a head that started and is not complete at `header_read_timeout` was cut without
/// an answer; it gets `408 Request Timeout` (the JSON error body), then the connection closes.
#[tokio::test]
async fn stalled_request_head_gets_408_and_is_disconnected() -> anyhow::Result<()> {
    let proxy = proxy().header_read_timeout(Duration::from_millis(300)).start().await?;
    let mut client = proxy.client().await?;
    client.write("GET http://allowed.test/ HTTP/1.1\r\nHost: allow").await?;
    let answer = client.read_to_close(CLOSE_WITHIN).await?;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains("\r\ncontent-type: application/json\r\n"), "{answer}");
    assert!(answer.contains("\"reason\":\"request_timeout\""), "{answer}");
    // Nothing was decided or forwarded.
    assert!(proxy.events().is_empty(), "{:?}", proxy.events());
    Ok(())
}

/// The same for the second head on a keep-alive connection: its clock starts at its first
/// byte.
#[tokio::test]
async fn stalled_second_request_head_gets_408() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().header_read_timeout(Duration::from_millis(300)).start().await?;
    let mut client = proxy.client().await?;
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    assert_eq!(client.request(get(&url)).await?.status(), 200);
    client.write("GET http://allowed.test/ HTTP/1.1\r\nHost: allow").await?;
    let answer = client.read_to_close(CLOSE_WITHIN).await?;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
    Ok(())
}

/// An origin that answers before reading the upload: the rest of the body, arriving after the
/// response has ended, is not timed as the next request head (no `408` in the middle).
#[tokio::test]
async fn an_upload_that_outlasts_an_early_answer_is_not_taken_for_a_late_head() -> anyhow::Result<()>
{
    const CHUNKS: usize = 8;
    let header_read_timeout = Duration::from_millis(200);
    let origin = RawOrigin::start("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly").await?;
    let proxy = proxy().header_read_timeout(header_read_timeout).start().await?;
    let url = format!("http://allowed.test:{}/", origin.addr.port());
    let mut client = proxy.client().await?;
    let length = format!("Content-Length: {CHUNKS}");
    client.write(request("PUT", &url, &[&length])).await?;
    let early = client.response().await?;
    assert_eq!((early.status(), early.text().as_str()), (200, "early"), "{early:?}");
    // The body trickles in over several header read timeouts (the state under test is
    // "nothing goes wrong meanwhile").
    for _ in 0..CHUNKS {
        tokio::time::sleep(header_read_timeout / 2).await;
        client.write("x").await?;
    }
    tokio::time::sleep(header_read_timeout * 2).await;
    // The connection is still there for the next request, and nothing else was answered.
    let next = client.request(get(&url)).await?;
    assert_eq!((next.status(), next.text().as_str()), (200, "early"), "{next:?}");
    Ok(())
}

/// A connection that never sends a byte is closed at `header_read_timeout`, without an answer
/// (no request to answer).
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() -> anyhow::Result<()>
{
    let proxy = proxy()
        .header_read_timeout(Duration::from_millis(300))
        .idle_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let mut client = proxy.client().await?;
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"");
    Ok(())
}

/// Issue 16: a keep-alive client idle between requests was closed at `header_read_timeout`;
/// the wait between requests is `idle_timeout`'s (README, SPEC §2.2).
#[tokio::test]
async fn keep_alive_client_idle_past_the_header_read_timeout_is_kept() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let header_read_timeout = Duration::from_millis(300);
    let proxy = proxy()
        .header_read_timeout(header_read_timeout)
        .idle_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    let mut client = proxy.client().await?;
    assert_eq!(client.request(get(&url)).await?.status(), 200);
    // Waits out the header read timeout several times over (not a synchronisation: the
    // state under test is "nothing happens").
    tokio::time::sleep(header_read_timeout * 4).await;
    let second = client.request(get(&url)).await?;
    assert_eq!(second.status(), 200, "{second:?}");
    Ok(())
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_refuses_new_ones() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let mut proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    client.write(get(&format!("http://allowed.test:{}/slow?ms=500", origin.addr().port()))).await?;
    // The request is in flight once the origin has its head.
    origin.wait_for_hits(1).await?;

    proxy.shutdown();
    let response = client.response().await?;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "origin GET /slow?ms=500\n");
    // After the in-flight response, the connection is closed rather than kept alive.
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"");

    proxy.stopped().await?;
    assert!(connect(proxy.addr).await.is_err(), "the listener still accepts after shutdown");
    Ok(())
}

/// Limited mode closes tunnels at once, but a drain still lets ordinary requests finish.
#[tokio::test]
async fn shutdown_in_limited_mode_still_lets_in_flight_requests_finish() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let mut proxy = proxy().limited().start().await?;
    let mut client = proxy.client().await?;
    client.write(get(&format!("http://allowed.test:{}/slow?ms=500", origin.addr().port()))).await?;
    origin.wait_for_hits(1).await?;

    proxy.shutdown();
    let response = client.response().await?;
    assert_eq!(response.status(), 200, "{response:?}");
    proxy.stopped().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_cuts_requests_still_running_after_the_drain_timeout() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let mut proxy = proxy().drain_timeout(Duration::from_millis(300)).start().await?;
    let mut client = proxy.client().await?;
    // Far longer than the drain and than CLOSE_WITHIN.
    client
        .write(get(&format!("http://allowed.test:{}/slow?ms=30000", origin.addr().port())))
        .await?;
    origin.wait_for_hits(1).await?;

    proxy.shutdown();
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"");
    proxy.stopped().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_open_tunnels_after_the_drain_timeout() -> anyhow::Result<()> {
    let echo = EchoTcp::start().await?;
    let mut proxy = proxy().drain_timeout(Duration::from_millis(300)).start().await?;
    let mut client = proxy.client().await?;
    client.write(connect_request(&format!("allowed.test:{}", echo.addr().port()))).await?;
    assert_eq!(client.head().await?.status, 200);
    client.write("ping").await?;
    assert_eq!(client.read_exact(4).await?, b"ping");

    proxy.shutdown();
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"");
    proxy.stopped().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_with_nothing_in_flight_returns_at_once() -> anyhow::Result<()> {
    // A drain longer than the wait below: only a prompt return passes.
    let mut proxy = proxy().drain_timeout(Duration::from_secs(60)).start().await?;
    // An idle keep-alive client does not hold the drain up.
    let _idle = Client::connect(proxy.addr).await?;
    proxy.shutdown();
    proxy.stopped().await?;
    Ok(())
}

/// `max_connections`: an excess client waits in the kernel backlog until a slot frees.
#[tokio::test]
async fn excess_connections_wait_for_a_free_slot() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().max_connections(1).start().await?;
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    let mut first = proxy.client().await?;
    assert_eq!(first.request(get(&url)).await?.status(), 200);

    let mut second = proxy.client().await?;
    second.write(get(&url)).await?;
    // Only a bound on how long to watch for a wrong answer: no answer is the expected state.
    let early = tokio::time::timeout(Duration::from_millis(200), second.head()).await;
    assert!(early.is_err(), "the second client was served while the first held the only slot");

    drop(first);
    let response = tokio::time::timeout(TIMEOUT, second.response()).await??;
    assert_eq!(response.status(), 200, "{response:?}");
    Ok(())
}

/// SPEC §2.2: `idle_timeout` is one clock for tunnels and keep-alive connections alike.
#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy()
        .idle_timeout(Duration::from_millis(300))
        .header_read_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    let mut client = proxy.client().await?;
    assert_eq!(client.request(get(&url)).await?.status(), 200);
    assert_eq!(client.read_to_close(CLOSE_WITHIN).await?, b"");
    Ok(())
}

/// A request waiting on a slow origin moves no byte, yet is not cut by the idle clock.
#[tokio::test]
async fn slow_response_outlives_the_idle_timeout() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let proxy = proxy().idle_timeout(Duration::from_millis(200)).start().await?;
    let url = format!("http://allowed.test:{}/slow?ms=700", origin.addr().port());
    let response = proxy.send(get(&url)).await?;
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "origin GET /slow?ms=700\n");
    Ok(())
}

/// A tunnel is a connection of the listener too: it keeps its slot while open.
#[tokio::test]
async fn open_tunnels_count_against_the_connection_limit() -> anyhow::Result<()> {
    let origin = HttpOrigin::start().await?;
    let echo = EchoTcp::start().await?;
    let proxy = proxy().max_connections(1).start().await?;
    let mut tunnel = proxy.client().await?;
    tunnel.write(connect_request(&format!("allowed.test:{}", echo.addr().port()))).await?;
    assert_eq!(tunnel.head().await?.status, 200);

    let mut second = proxy.client().await?;
    second.write(get(&format!("http://allowed.test:{}/", origin.addr().port()))).await?;
    // Only a bound on how long to watch for a wrong answer: no answer is the expected state.
    let early = tokio::time::timeout(Duration::from_millis(200), second.head()).await;
    assert!(early.is_err(), "a client was served while a tunnel held the only slot");

    drop(tunnel);
    let response = tokio::time::timeout(TIMEOUT, second.response()).await??;
    assert_eq!(response.status(), 200, "{response:?}");
    Ok(())
}
