//! The routes every origin here serves (plain, TLS, Unix); the table is in the crate docs.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};

use crate::record::Recorder;
use crate::server::{Body, empty, text};

/// Size of each data frame `/big` sends.
const BIG_CHUNK: usize = 16 * 1024;
/// Largest body `/big` agrees to send.
const BIG_MAX: u64 = 1024 * 1024 * 1024;
/// Longest delay `/slow` agrees to.
const SLOW_MAX: Duration = Duration::from_secs(60);

/// Records `req` in `recorder` and answers it from the routes above.
pub(crate) async fn origin(req: Request<Incoming>, recorder: Arc<Recorder>) -> Response<Body> {
    let (parts, body, trailers) = match recorder.receive(req).await {
        Ok(received) => received,
        Err(response) => return response,
    };
    let grpc = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if grpc.is_some_and(|ct| ct.starts_with("application/grpc")) {
        return grpc_echo(body, trailers);
    }
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    if path == "/big" {
        return big(query);
    }
    if path == "/slow" {
        let Some(ms) = param(query, "ms").and_then(|ms| ms.parse::<u64>().ok()) else {
            return text(StatusCode::BAD_REQUEST, "slow needs ?ms=N\n");
        };
        tokio::time::sleep(Duration::from_millis(ms).min(SLOW_MAX)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return status(code);
    }
    let mut answer = format!("origin {} {}\n", parts.method, parts.uri).into_bytes();
    answer.extend_from_slice(&body);
    text(StatusCode::OK, answer)
}

/// A gRPC-style answer: the request body back, `content-type: application/grpc`, and the
/// trailers `grpc-status: 0` and `x-echo-trailers` (the request trailer names, comma-separated).
fn grpc_echo(body: Bytes, trailers: Option<HeaderMap>) -> Response<Body> {
    let names: Vec<&str> = trailers.iter().flat_map(|t| t.keys()).map(|k| k.as_str()).collect();
    let mut out = HeaderMap::new();
    out.insert("grpc-status", HeaderValue::from_static("0"));
    if let Ok(value) = HeaderValue::from_str(&names.join(",")) {
        out.insert("x-echo-trailers", value);
    }
    let body = Full::new(body).with_trailers(async move { Some(Ok(out)) });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The value of `key` in an `a=1&b=2` query string.
fn param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn big(query: &str) -> Response<Body> {
    let Some(len) = param(query, "n").and_then(|n| n.parse::<u64>().ok()).filter(|n| *n <= BIG_MAX)
    else {
        return text(StatusCode::BAD_REQUEST, "big needs ?n=BYTES (at most 1 GiB)\n");
    };
    let chunked = param(query, "chunked") == Some("1");
    let body = Repeat { remaining: len, chunk: Bytes::from(vec![b'x'; BIG_CHUNK]), chunked };
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn status(code: &str) -> Response<Body> {
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
    else {
        return text(StatusCode::BAD_REQUEST, "status needs a code in 200..=599\n");
    };
    // RFC 9110 §15.3.5 and §15.4.5: 204 and 304 carry no content.
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut response = Response::new(empty());
        *response.status_mut() = status;
        return response;
    }
    text(status, format!("status {}\n", status.as_u16()))
}

/// A body of `remaining` bytes of `x`, produced a frame at a time rather than buffered.
struct Repeat {
    remaining: u64,
    chunk: Bytes,
    /// Hide the length so hyper uses chunked transfer-coding.
    chunked: bool,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(this.chunk.len() as u64);
        this.remaining -= n;
        // `n` is at most BIG_CHUNK, so it fits a usize.
        let n = usize::try_from(n).unwrap_or(BIG_CHUNK);
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked { SizeHint::default() } else { SizeHint::with_exact(self.remaining) }
    }
}

#[cfg(test)]
mod tests {
    use super::param;

    #[test]
    fn query_params() {
        fn check(query: &str, key: &str, expected: Option<&str>) {
            assert_eq!(param(query, key), expected, "{query:?} {key:?}");
        }
        check("n=10", "n", Some("10"));
        check("a=1&n=10&chunked=1", "chunked", Some("1"));
        check("nn=10", "n", None);
        check("n", "n", None);
        check("", "n", None);
    }
}
