//! What the servers remember about the requests they served, for tests to assert on.

use std::sync::Mutex;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::TIMEOUT;
use crate::server::{Body, Headers, lock, text};

/// Largest request body a test server buffers; larger bodies are answered 413.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request as a server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request-target as received: `/path?query` in origin-form, `http://host/path` in
    /// absolute-form, `host:port` for CONNECT.
    pub target: String,
    /// Header names lower-case, values lossy UTF-8, in the order hyper's map yields them (first
    /// appearance of each name; repeated names grouped).
    pub headers: Headers,
    /// The whole request body, de-chunked.
    pub body: Vec<u8>,
    /// The HTTP version it arrived in (`HTTP/2` from [`crate::TlsOrigin::start_h2`] when the
    /// client negotiated it).
    pub version: Version,
    /// The trailer fields that followed the body, like [`RecordedRequest::headers`].
    pub trailers: Headers,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `proxy-authorization` value, as an upstream proxy received it.
    pub fn proxy_authorization(&self) -> Option<&str> {
        self.header("proxy-authorization")
    }

    /// The first value of trailer field `name` (case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn new(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        body: &[u8],
        trailers: Option<&HeaderMap>,
    ) -> Self {
        let list = |map: &HeaderMap| {
            map.iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect()
        };
        RecordedRequest {
            method: method.to_string(),
            target: uri.to_string(),
            headers: list(headers),
            body: body.to_vec(),
            version,
            trailers: trailers.map(list).unwrap_or_default(),
        }
    }
}

/// Request counter and log shared between a server's connections and its handle.
#[derive(Debug)]
pub(crate) struct Recorder {
    hits: watch::Sender<usize>,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { hits: watch::Sender::new(0), requests: Mutex::default() }
    }
}

impl Recorder {
    /// Counts a request head as soon as it arrives (before its body is read).
    fn hit(&self) {
        self.hits.send_modify(|hits| *hits += 1);
    }

    fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }

    /// Counts and records a request whose body is not read (an upgrade or CONNECT request).
    pub(crate) fn receive_head<B>(&self, req: &Request<B>) {
        self.hit();
        self.record(RecordedRequest::new(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            &[],
            None,
        ));
    }

    pub(crate) fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// Waits until at least `n` request heads arrived, for at most [`TIMEOUT`].
    pub(crate) async fn wait_for_hits(&self, n: usize) -> anyhow::Result<()> {
        let mut hits = self.hits.subscribe();
        match timeout(TIMEOUT, hits.wait_for(|hits| *hits >= n)).await {
            Ok(_) => Ok(()),
            Err(_) => anyhow::bail!("timed out waiting for {n} hits (saw {})", self.hits()),
        }
    }

    /// Counts `req`, reads its whole body (bounded in size and time) and records it.
    ///
    /// Returns the head, the body and the trailers, if any. On a body error, returns the
    /// response to send instead (413 or 400).
    pub(crate) async fn receive(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Parts, Bytes, Option<HeaderMap>), Response<Body>> {
        self.hit();
        let (parts, body) = req.into_parts();
        let (body, trailers) = match timeout(TIMEOUT, Limited::new(body, MAX_BODY).collect()).await
        {
            Ok(Ok(collected)) => {
                let trailers = collected.trailers().cloned();
                (collected.to_bytes(), trailers)
            }
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"));
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "reading request body failed");
                return Err(text(StatusCode::BAD_REQUEST, "body read failed\n"));
            }
            Err(_) => return Err(text(StatusCode::REQUEST_TIMEOUT, "body read timed out\n")),
        };
        self.record(RecordedRequest::new(
            &parts.method,
            &parts.uri,
            parts.version,
            &parts.headers,
            &body,
            trailers.as_ref(),
        ));
        Ok((parts, body, trailers))
    }
}
