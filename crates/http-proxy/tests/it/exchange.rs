//! Forwarded exchanges against origins that misbehave: one that never answers, one that stops
//! reading an upload or stops sending a body, one that closes its keep-alive connections, and
//! many clients at once against one origin (issue 16).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd_net::Outcome;
use proxyd_test_support::{HttpOrigin, connect, read_response_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use crate::harness::{CountingRelay, LOOPBACK, TIMEOUT, get, proxy, request};

/// What a scripted origin reports about a connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A request head arrived (its request line).
    Head(String),
    /// The proxy closed the connection (EOF or reset on a read or a write).
    Closed,
}

/// An origin that runs a script on every connection it accepts, and counts them. Stops when
/// dropped.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

/// The connection a script runs on: the stream, its number (0 for the first), and where to
/// report what it saw.
struct Conn {
    stream: TcpStream,
    index: usize,
    buf: Vec<u8>,
    report: mpsc::UnboundedSender<Seen>,
}

impl Conn {
    /// Reads one request head (not its body) and reports its request line; `None` at EOF.
    async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                let head = String::from_utf8_lossy(&head).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                let _ = self.report.send(Seen::Head(line.clone()));
                return Some(line);
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout(TIMEOUT, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads (and discards) until the proxy closes, then reports it; gives up after a bound
    /// far past every test's own.
    async fn until_closed(mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let closed = timeout(3 * TIMEOUT, async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
        });
        if closed.await.is_ok() {
            let _ = self.report.send(Seen::Closed);
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> anyhow::Result<Scripted>
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind((LOOPBACK, 0)).await.context("bind origin")?;
        let addr = listener.local_addr().context("origin address")?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let (report, seen) = mpsc::unbounded_channel();
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let index = counter.fetch_add(1, Ordering::SeqCst);
                let conn = Conn { stream, index, buf: Vec::new(), report: report.clone() };
                conns.spawn(script(conn));
            }
        });
        Ok(Scripted { addr, accepted, seen, task })
    }

    fn url(&self, path: &str) -> String {
        format!("http://allowed.test:{}{path}", self.addr.port())
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The next thing a connection saw, within [`TIMEOUT`].
    async fn next(&mut self) -> anyhow::Result<Seen> {
        timeout(TIMEOUT, self.seen.recv())
            .await
            .context("the origin saw nothing more")?
            .context("the origin stopped")
    }

    /// Waits until a connection reports that the proxy closed it.
    async fn closed(&mut self) -> anyhow::Result<()> {
        loop {
            if self.next().await? == Seen::Closed {
                return Ok(());
            }
        }
    }

    /// The request lines seen so far (without waiting).
    fn heads(&mut self) -> Vec<String> {
        let mut heads = Vec::new();
        while let Ok(seen) = self.seen.try_recv() {
            if let Seen::Head(line) = seen {
                heads.push(line);
            }
        }
        heads
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 16: an origin that reads the request and never answers held the client, an upstream
/// connection and a `max_connections` slot forever. The wait for the response head is bounded
/// by `response_timeout`: `504`, and the upstream connection is closed.
#[tokio::test]
async fn an_origin_that_never_answers_gets_504_and_its_connection_closed() -> anyhow::Result<()> {
    let mut origin = Scripted::start(|mut conn| async move {
        if conn.head().await.is_some() {
            conn.until_closed().await;
        }
    })
    .await?;
    let proxy = proxy().response_timeout(Duration::from_millis(500)).start().await?;
    let response = proxy.send(get(&origin.url("/silent"))).await?;
    assert_eq!(response.status(), 504, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"), "{response:?}");
    let json = response.json()?;
    assert_eq!(json["status"], "error", "{json}");
    assert_eq!(json["reason"], "response_timeout", "{json}");
    assert_eq!(origin.next().await?, Seen::Head("GET /silent HTTP/1.1".into()));
    origin.closed().await?;
    Ok(())
}

/// Issue 16: an upload to an origin that stopped reading never ended. The idle clock applies
/// to the request body: when it has not moved for `idle_timeout`, nothing was answered yet, so
/// the client gets `504` and the connection is closed.
#[tokio::test]
async fn an_upload_the_origin_stopped_reading_gets_504() -> anyhow::Result<()> {
    let origin = Scripted::start(|mut conn| async move {
        if conn.head().await.is_some() {
            // Never reads the body, never answers; holds the connection past the test.
            tokio::time::sleep(3 * TIMEOUT).await;
        }
    })
    .await?;
    let proxy = proxy()
        .idle_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let stream = connect(proxy.addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let head = request("POST", &origin.url("/upload"), &["Content-Length: 1073741824"]);
    writer.write_all(head.as_bytes()).await?;
    // Writes until the buffers between here and the origin are full, then blocks.
    let upload = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        while writer.write_all(&chunk).await.is_ok() {}
    });
    let head = timeout(TIMEOUT, read_response_head(&mut reader))
        .await
        .context("no answer to a stalled upload")??;
    assert_eq!(head.status, 504, "{head:?}");
    assert_eq!(head.header("connection"), Some("close"), "{head:?}");
    upload.abort();
    Ok(())
}

/// A client that stops sending its request body, while the origin reads on, is the client's
/// stall: `408`, and the connection is closed (the body was not read whole).
#[tokio::test]
async fn an_upload_the_client_stopped_sending_gets_408() -> anyhow::Result<()> {
    let mut origin = Scripted::start(|mut conn| async move {
        if conn.head().await.is_some() {
            conn.until_closed().await;
        }
    })
    .await?;
    let proxy = proxy()
        .idle_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let mut client = proxy.client().await?;
    client
        .write(request("PUT", &origin.url("/slow"), &["Content-Length: 100"]) + "only ten b")
        .await?;
    let response = client.response().await?;
    assert_eq!(response.status(), 408, "{response:?}");
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    assert_eq!(response.json()?["reason"], "request_timeout", "{response:?}");
    assert_eq!(client.read_to_close(TIMEOUT).await?, b"");
    origin.closed().await?;
    Ok(())
}

/// Issue 16: the idle clock applies to a response body too. An origin that sends a head and
/// part of its body, then nothing, has its client's connection cut after `idle_timeout` (the
/// head was sent: a status can no longer be given).
#[tokio::test]
async fn a_response_body_the_origin_stopped_sending_is_cut() -> anyhow::Result<()> {
    let mut origin = Scripted::start(|mut conn| async move {
        if conn.head().await.is_none() {
            return;
        }
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this";
        if conn.write(partial).await.is_ok() {
            conn.until_closed().await;
        }
    })
    .await?;
    let proxy = proxy()
        .idle_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let mut client = proxy.client().await?;
    client.write(get(&origin.url("/partial"))).await?;
    let head = client.head().await?;
    assert_eq!(head.status, 200, "{head:?}");
    let rest = client.read_to_close(TIMEOUT).await?;
    assert_eq!(rest, b"only this");
    origin.closed().await?;
    Ok(())
}

/// Issue 16: a client that stops reading a response holds the origin's connection (blocked
/// writing) and its own slot; after `idle_timeout` without a byte moving the exchange is cut
/// and the origin's writes fail.
#[tokio::test]
async fn a_client_that_stopped_reading_is_cut_and_the_origin_freed() -> anyhow::Result<()> {
    let mut origin = Scripted::start(|mut conn| async move {
        if conn.head().await.is_none() {
            return;
        }
        let chunk = vec![b'y'; 64 * 1024];
        if conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n").await.is_err() {
            return;
        }
        // Writes until the proxy is gone; a bound far past the test's.
        let cut = timeout(3 * TIMEOUT, async { while conn.write(&chunk).await.is_ok() {} });
        if cut.await.is_ok() {
            let _ = conn.report.send(Seen::Closed);
        }
    })
    .await?;
    let proxy = proxy()
        .idle_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let mut client = proxy.client().await?;
    client.write(get(&origin.url("/flood"))).await?;
    assert_eq!(client.head().await?.status, 200);
    // The client reads nothing more and keeps its connection open.
    origin.closed().await?;
    drop(client);
    Ok(())
}

/// Issue 16: a pooled connection the origin closed right after answering (without
/// `Connection: close`) gave requests a `502` when it was handed out before its close was
/// seen (a race here, which this test does not force). Closed connections are not handed
/// out, and a request that still meets one is retried, so every request succeeds.
#[tokio::test]
async fn connections_the_origin_closed_after_answering_are_not_reused() -> anyhow::Result<()> {
    const REQUESTS: usize = 6;
    let mut origin = Scripted::start(|mut conn| async move {
        if conn.head().await.is_some() {
            let _ = conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        }
    })
    .await?;
    let proxy = proxy().start().await?;
    for i in 0..REQUESTS {
        let response = proxy.send(get(&origin.url(&format!("/{i}")))).await?;
        assert_eq!(response.status(), 200, "request {i}: {response:?}");
        assert_eq!(response.text(), "ok");
    }
    assert_eq!(origin.heads().len(), REQUESTS);
    // Every request went out on a connection of its own.
    assert_eq!(origin.accepted(), REQUESTS);
    Ok(())
}

/// An origin whose every connection answers one request, then reads the next head and closes
/// without answering: a pooled connection that looks alive until it is used.
async fn answers_once_then_drops_the_next() -> anyhow::Result<Scripted> {
    Scripted::start(|mut conn| async move {
        let Some(line) = conn.head().await else { return };
        let mut ok = format!("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok {}", conn.index % 10);
        if line.starts_with("HEAD ") {
            ok.truncate(ok.len() - 4);
        }
        if conn.write(ok.as_bytes()).await.is_ok() {
            // The next request is read, then the connection dropped unanswered.
            let _ = conn.head().await;
        }
    })
    .await
}

/// Issue 16: a bodiless idempotent request whose pooled connection fails before anything was
/// answered is retried once on a fresh connection, under the same decision.
#[tokio::test]
async fn an_idempotent_request_on_a_failed_pooled_connection_is_retried() -> anyhow::Result<()> {
    let mut origin = answers_once_then_drops_the_next().await?;
    let proxy = proxy().start().await?;
    let mut client = proxy.client().await?;
    let first = client.request(get(&origin.url("/one"))).await?;
    assert_eq!((first.status(), first.text().as_str()), (200, "ok 0"), "{first:?}");
    for (method, path) in [("GET", "/two"), ("HEAD", "/three"), ("DELETE", "/four")] {
        client.write(request(method, &origin.url(path), &[])).await?;
        let head = client.head().await?;
        assert_eq!(head.status, 200, "{method}: {head:?}");
        if method != "HEAD" {
            let len: usize = head.header("content-length").unwrap_or("0").parse()?;
            client.read_exact(len).await?;
        }
    }
    // Each retried request reached the origin twice: on the pooled connection, then on a
    // fresh one.
    let heads = origin.heads();
    let count = |line: &str| heads.iter().filter(|h| h.as_str() == line).count();
    assert_eq!(count("GET /one HTTP/1.1"), 1, "{heads:?}");
    assert_eq!(count("GET /two HTTP/1.1"), 2, "{heads:?}");
    assert_eq!(count("HEAD /three HTTP/1.1"), 2, "{heads:?}");
    assert_eq!(count("DELETE /four HTTP/1.1"), 2, "{heads:?}");
    assert_eq!(origin.accepted(), 4);
    // One decision per request, retried or not.
    let allowed = proxy.outcomes().into_iter().filter(|(_, o)| *o == Outcome::Allowed).count();
    assert_eq!(allowed, 4, "{:?}", proxy.events());
    assert_eq!(proxy.events().len(), 4, "{:?}", proxy.events());
    Ok(())
}

/// A `POST`, or a request with a body, is never sent twice: its failure on a pooled
/// connection is a `502`.
#[tokio::test]
async fn a_post_or_a_request_with_a_body_is_never_retried() -> anyhow::Result<()> {
    let mut origin = answers_once_then_drops_the_next().await?;
    let proxy = proxy().start().await?;
    let cases: [(&str, &[&str], &str); 3] = [
        ("POST", &["Content-Length: 0"], ""),
        ("POST", &["Content-Length: 4"], "data"),
        ("PUT", &["Content-Length: 4"], "data"),
    ];
    for (method, headers, body) in cases {
        let mut client = proxy.client().await?;
        // Warms a connection up: its next request is dropped by the origin.
        let warm = client.request(get(&origin.url("/warm"))).await?;
        assert_eq!(warm.status(), 200, "{warm:?}");
        let raw = request(method, &origin.url("/once"), headers) + body;
        let response = client.request(raw).await?;
        assert_eq!(response.status(), 502, "{method} {headers:?}: {response:?}");
        assert_eq!(response.json()?["reason"], "upstream_failed", "{response:?}");
    }
    let heads = origin.heads();
    let sent = heads.iter().filter(|h| h.contains(" /once ")).count();
    assert_eq!(sent, 3, "{heads:?}");
    Ok(())
}

/// Issue 16: at most 16 idle upstream connections were kept per origin, so with more clients
/// than that every round of requests opened new ones. With N keep-alive clients, the origin
/// sees at most N connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_keep_alive_clients_need_at_most_n_upstream_connections() -> anyhow::Result<()> {
    const CLIENTS: usize = 40;
    const ROUNDS: usize = 6;
    let origin = HttpOrigin::start().await?;
    let relay = CountingRelay::start(origin.addr()).await?;
    let proxy = proxy().start().await?;
    let url = format!("http://allowed.test:{}/pooled", relay.addr.port());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(proxy.client().await?);
    }
    for round in 0..ROUNDS {
        let mut requests = JoinSet::new();
        for mut client in clients.drain(..) {
            let raw = get(&url);
            requests.spawn(async move {
                let response = client.request(raw).await?;
                ensure!(response.status() == 200, "{response:?}");
                Ok::<_, anyhow::Error>(client)
            });
        }
        while let Some(done) = requests.join_next().await {
            clients.push(done.context("client task")?.with_context(|| format!("round {round}"))?);
        }
    }
    assert_eq!(origin.hits(), CLIENTS * ROUNDS);
    assert!(
        relay.accepted() <= CLIENTS,
        "{} upstream connections for {CLIENTS} keep-alive clients over {ROUNDS} rounds",
        relay.accepted()
    );
    Ok(())
}
