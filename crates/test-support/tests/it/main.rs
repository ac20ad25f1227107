//! Each server in `proxyd-test-support` answering a real client on loopback.

#![expect(
    clippy::disallowed_methods,
    reason = "these tests are clients of the test servers, not proxyd's egress"
)]

mod canary;
mod echo;
mod origin;
mod tls;
#[cfg(unix)]
mod unix;
mod upgrade;
mod upstream_proxy;

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use proxyd_test_support::{TIMEOUT, connect};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

/// A response read in full.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// Sends each request in turn on one HTTP/1.1 connection over `io` and reads every answer.
async fn send_all<I>(io: I, requests: Vec<Request<Full<Bytes>>>) -> anyhow::Result<Vec<Answer>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let mut answers = Vec::new();
    for request in requests {
        let exchange = async {
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        answers.push(timeout(TIMEOUT, exchange).await.context("request timed out")??);
    }
    conn.abort();
    Ok(answers)
}

/// One GET of `path` on a new connection to `addr`.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    let stream = connect(addr).await?;
    let mut answers = send_all(stream, vec![request("GET", path, "")?]).await?;
    answers.pop().context("no answer")
}

fn request(method: &str, path: &str, body: &'static str) -> anyhow::Result<Request<Full<Bytes>>> {
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header("host", "origin.test")
        .body(Full::new(Bytes::from_static(body.as_bytes())))?)
}
