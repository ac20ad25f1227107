//! Absolute-form forwarding (SPEC §7.2), relayed upgrades (SPEC §7.4), and requests routed to
//! a Unix socket (SPEC §7.7).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use proxyd_net::{Attempt, Connections, Failure, HttpFacts, Lease, RuleEdits};
use proxyd_policy::{AbsoluteUrl, Host, Mode, Protocol, Scheme, Target};

use crate::exchange::{Download, Overdue, Progress, Upload};
use crate::idle::Reading;
use crate::leased::Leased;
use crate::origin::{self, Opened, Route, Sender};
use crate::respond::{self, Blocked};
use crate::server::{Shared, track_tunnel};
use crate::{Body, headers};

/// Longest method accepted (the registered ones are at most 17 bytes).
const MAX_METHOD_LEN: usize = 32;

pub(crate) async fn handle(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
    tunnels: &Connections,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let h2 = parts.version == Version::HTTP_2;
    let reading = parts.extensions.remove::<Reading>();
    let mut body = Some((body, reading));
    let req = Request::from_parts(parts, ());
    let response = decide(shared, peer, req, &mut body, tunnels).await;
    let body = body.map(|(body, _)| body);
    match body.filter(|_| h2) {
        Some(unread) => {
            response.map(|answer| Unread { answer, request: Some(unread) }.boxed_unsync())
        }
        None => response,
    }
}

/// At most this much of a refused HTTP/2 request's body is read (and discarded) after the
/// answer, for at most `DRAIN_TIME`.
const DRAIN_MAX: usize = 64 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer to an HTTP/2 request refused before its body was read, holding that body.
/// Dropping it with the request would reset the stream (`CANCEL`) before the answer goes out.
/// Held until the answer has been sent, what the client still sends is read and thrown away,
/// within a bound, so a client that finishes its upload sees a clean stream; past the bound the
/// stream is reset with `NO_ERROR` after the answer (RFC 9113 §8.1), which some clients (curl
/// 7.88) nonetheless report as an error. Nothing read here goes anywhere.
struct Unread {
    answer: Body,
    request: Option<Incoming>,
}

impl hyper::body::Body for Unread {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::BoxError>>> {
        std::pin::Pin::new(&mut self.answer).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.answer.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.answer.size_hint()
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        let Some(mut request) = self.request.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let drain = async {
                let mut left = DRAIN_MAX;
                while let Some(Ok(frame)) = request.frame().await {
                    let len = frame.data_ref().map_or(0, bytes::Bytes::len);
                    match left.checked_sub(len) {
                        Some(rest) => left = rest,
                        None => break,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

/// Decides and forwards one request; `body` is taken only when it is forwarded.
async fn decide(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<()>,
    body: &mut Option<(Incoming, Option<Reading>)>,
    tunnels: &Connections,
) -> Response<Body> {
    // Methods are short tokens; a long one would be copied into every log line, event and
    // blocked-log entry, so it is refused before anything is decided or recorded.
    if req.method().as_str().len() > MAX_METHOD_LEN {
        return respond::bad_request("method too long");
    }
    let url = match Target::parse_absolute_url(&req.uri().to_string()) {
        Ok(url) => url,
        Err(err) => return respond::malformed(&err),
    };
    // RFC 9112 §3.2: more than one Host header is a 400, whatever they say.
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return respond::bad_request("more than one host header");
    }
    if let Some(host) = req.headers().get(header::HOST) {
        let agrees = host
            .to_str()
            .ok()
            .and_then(|h| Target::parse_authority(h, Some(url.scheme.default_port())).ok())
            .is_some_and(|h| h == url.target);
        if !agrees {
            return respond::bad_request("host header does not match the request target");
        }
    }
    let unix_socket = req.headers().get(headers::X_UNIX_SOCKET).cloned();
    let protocol = match (&unix_socket, url.scheme) {
        (Some(_), _) => Protocol::UnixSocket,
        (None, Scheme::Http) => Protocol::Http,
        (None, Scheme::Https) => Protocol::Https,
    };
    let method = req.method().as_str().to_owned();
    let mut side_doors = headers::side_doors(req.headers());
    // HTTP/2 frames bodies itself: a HEADERS frame without END_STREAM announces one (RFC 9113
    // §8.1) whether or not `Content-Length` is sent (h2 enforces it when it is).
    if req.version() == Version::HTTP_2
        && !req.headers().contains_key(header::CONTENT_LENGTH)
        && body.as_ref().is_some_and(|(body, _)| !body.is_end_stream())
    {
        side_doors.body = true;
    }
    let mut attempt = Attempt::new(protocol, url.target.clone(), Some(peer))
        .method(&method)
        .side_doors(side_doors)
        .unix_socket(unix_socket.map(|v| v.to_str().unwrap_or_default().to_owned()));
    // Request rules read the path, query and headers; copied only when some host has rules
    // (a host with rules refuses a request that comes without them).
    if !shared.engine.policy().rules.is_empty() {
        attempt = attempt.http(http_facts(&url, req.headers()));
    }
    let cx = Blocked {
        target: &url.target,
        protocol: protocol.as_str(),
        method: &method,
        mode: Mode::Full,
    };
    let mut admission = match shared.engine.admit(attempt).await {
        Ok(admission) => admission,
        Err(refusal) => return respond::refusal(&refusal, &cx),
    };
    let cx = Blocked { mode: admission.mode(), ..cx };
    let upgrade = headers::is_upgrade(req.headers());
    let route = match protocol {
        Protocol::UnixSocket => Route::Unix,
        _ => match shared.settings.upstream.for_target(url.scheme == Scheme::Https, &url.target) {
            Some(proxy) => Route::Upstream(proxy),
            None => Route::Direct,
        },
    };
    let Opened { mut sender, mut key, proxy_authorization, reused } =
        match origin::open(shared, &mut admission, &url, route, upgrade).await {
            Ok(opened) => opened,
            Err(refusal) => return respond::refusal(&refusal, &cx),
        };
    let rule_edits = admission.rule_edits().cloned();
    // From here on the exchange lives under its lease: a change that refuses it stops the
    // request body and the response body before one more byte moves.
    let lease = match admission.admit() {
        Ok(lease) => lease,
        Err(refusal) => {
            let mut response = respond::refusal(&refusal, &cx);
            // The request body, if any, was not read.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let Some((body, reading)) = body.take() else {
        return respond::error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no request body");
    };
    // A pooled connection the origin closed meanwhile fails before it answers: a request
    // that may be sent twice (RFC 9110 §9.2.2) and has no body goes once more on a fresh one.
    let retry = reused.filter(|_| replayable(req.method()) && body.is_end_stream());
    let mut progress = Progress::new();
    let (mut outgoing, client_upgrade) = rewrite_request(
        req,
        Upload::new(Some(body), reading, progress.clone()),
        &url,
        upgrade,
        proxy_authorization,
        sender.version(),
        &lease,
    );
    // Secrets leave only over TLS to the request's own host: not over plain HTTP, and not to
    // a Unix socket (its route ignores the URL's host and speaks plain HTTP).
    let tls_to_host = url.scheme == Scheme::Https && protocol != Protocol::UnixSocket;
    if let Some(edits) = &rule_edits {
        apply_rule_edits(edits, tls_to_host, outgoing.headers_mut());
    }
    if let Some(broker) = &shared.settings.broker {
        let used = broker.apply(&url.target, tls_to_host, outgoing.headers_mut());
        if !used.is_empty() {
            tracing::debug!(credentials = ?used, "brokered credentials swapped in");
        }
    }
    let replay = retry.as_ref().map(|_| copy_head(&outgoing));
    let mut sent = send(shared, &mut sender, outgoing, &progress).await;
    if let (Err(Unanswered::Failed(err)), Some(checked), Some(replay)) = (&sent, &retry, replay) {
        tracing::debug!(error = %err, "pooled upstream connection failed, retrying on a fresh one");
        if let Some((fresh, fresh_key)) = origin::reopen(shared, &lease, checked, &url).await
            && fresh.version() == replay.version()
        {
            (sender, key, progress) = (fresh, fresh_key, Progress::new());
            let outgoing = replay
                .map(|()| Leased::new(Upload::new(None, None, progress.clone()), lease.clone()));
            sent = send(shared, &mut sender, outgoing, &progress).await;
        }
    }
    let response = match sent {
        Ok(response) => response,
        Err(unanswered) => {
            if let Unanswered::Failed(err) = &unanswered {
                tracing::debug!(error = %err, "upstream request failed");
            }
            return match (lease.revoked_reason(), unanswered) {
                // Nothing was answered yet: say why, and close (the body was not read).
                (Some(reason), _) => {
                    let mut response =
                        respond::blocked(&reason, &Blocked { mode: lease.mode(), ..cx });
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    response
                }
                (None, Unanswered::Overdue(overdue)) => respond::overdue(overdue),
                (None, Unanswered::Failed(_)) => respond::error(
                    StatusCode::BAD_GATEWAY,
                    Failure::UpstreamFailed.code(),
                    "the upstream server failed to answer",
                ),
            };
        }
    };
    if let Some(key) = key.filter(|_| !upgrade) {
        shared.pool.checkin(key, sender);
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if upgrade {
            return relay_upgrade(shared, tunnels, response, client_upgrade, lease);
        }
        // RFC 9110 §15.2.2: a server switches only when asked. Relaying it would open a raw
        // channel through a request the method policy judged as a plain read.
        tracing::debug!("the origin switched protocols without being asked");
        return respond::error(
            StatusCode::BAD_GATEWAY,
            Failure::UpstreamFailed.code(),
            "the upstream server switched protocols without being asked",
        );
    }
    rewrite_response(response, lease, progress, shared.settings.idle_timeout)
}

/// Why a forwarded request got no response head.
enum Unanswered {
    Failed(hyper::Error),
    Overdue(Overdue),
}

/// Sends the request and waits for the response head, within the exchange's bounds
/// (`exchange.rs`). Dropping the wait drops the request, and the connection with it.
async fn send(
    shared: &Shared,
    sender: &mut Sender,
    outgoing: Request<Leased<Upload>>,
    progress: &Progress,
) -> Result<Response<Incoming>, Unanswered> {
    let (idle, response_timeout) = (shared.settings.idle_timeout, shared.settings.response_timeout);
    tokio::select! {
        response = sender.send_request(outgoing) => response.map_err(Unanswered::Failed),
        overdue = progress.overdue(idle, response_timeout) => {
            tracing::debug!(?overdue, "no response head in time");
            Err(Unanswered::Overdue(overdue))
        }
    }
}

/// Methods a request may be sent twice with (RFC 9110 §9.2.2), when it has no body; never
/// `POST`.
fn replayable(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE]
        .contains(method)
}

/// The head of a request as sent, to send it once more.
fn copy_head<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// What request rules read: the path and query as sent, and the headers.
fn http_facts(url: &AbsoluteUrl, headers: &http::HeaderMap) -> HttpFacts {
    let (path, query) = match url.path_and_query.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (url.path_and_query.clone(), None),
    };
    let headers =
        headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    HttpFacts { path, query, headers }
}

/// The allowing rule's edits: its headers stripped, its credential injected (marked sensitive
/// so hyper never logs it), over TLS only: a secret never goes out in clear text.
fn apply_rule_edits(edits: &RuleEdits, tls: bool, headers: &mut http::HeaderMap) {
    for name in &edits.strip {
        headers.remove(name.as_str());
    }
    if edits.inject.is_some() && !tls {
        tracing::warn!(rule = %edits.rule, "not injecting a secret into a request that is not sent over tls");
        return;
    }
    if let Some((name, value)) = &edits.inject
        && let (Ok(name), Ok(mut value)) =
            (http::HeaderName::try_from(name.as_str()), HeaderValue::from_str(value))
    {
        value.set_sensitive(true);
        headers.insert(name, value);
    }
}

/// The request as sent on, as `version` (the origin connection's): HTTP/1.1 in origin-form with
/// `Host` from the target (absolute-form with `Proxy-Authorization` when it goes to an upstream
/// proxy); HTTP/2 with the target in `:scheme` and `:authority` and no `Host` (RFC 9113
/// §8.3.1). Hop-by-hop headers removed (`TE: trailers` kept), `Via` added.
fn rewrite_request(
    mut req: Request<()>,
    body: Upload,
    url: &AbsoluteUrl,
    upgrade: bool,
    proxy_authorization: Option<Option<HeaderValue>>,
    version: Version,
    lease: &Lease,
) -> (Request<Leased<Upload>>, Option<hyper::upgrade::OnUpgrade>) {
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, ()) = req.into_parts();
    let received = parts.version;
    let host = match url.target.port == url.scheme.default_port() {
        true => authority_host(&url.target.host),
        false => format!("{}:{}", authority_host(&url.target.host), url.target.port),
    };
    let h2 = version == Version::HTTP_2;
    let target = match (&proxy_authorization, h2) {
        (Some(_), _) | (None, true) => {
            format!("{}://{host}{}", url.scheme.as_str(), url.path_and_query)
        }
        (None, false) => url.path_and_query.clone(),
    };
    parts.uri = Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = version;
    headers::remove_request_hop_by_hop(&mut parts.headers, upgrade, version);
    match h2 {
        true => drop(parts.headers.remove(header::HOST)),
        false => {
            if let Ok(value) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, value);
            }
        }
    }
    if let Some(Some(auth)) = proxy_authorization {
        parts.headers.insert(header::PROXY_AUTHORIZATION, auth);
    }
    headers::add_via(&mut parts.headers, received);
    (Request::from_parts(parts, Leased::new(body, lease.clone())), client_upgrade)
}

fn authority_host(host: &Host) -> String {
    match host {
        Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        host => host.to_string(),
    }
}

/// The response as sent back: hop-by-hop headers removed (none of them may reach an HTTP/2
/// client), `Via` added. The version is the client connection's own (hyper writes its own
/// status line and ignores it on HTTP/2); trailers are body frames and pass through `Leased`.
fn rewrite_response(
    response: Response<Incoming>,
    lease: Lease,
    progress: Arc<Progress>,
    idle: std::time::Duration,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    headers::add_via(&mut parts.headers, parts.version);
    parts.version = Version::HTTP_11;
    let body = Download::new(body, progress, idle);
    Response::from_parts(parts, Leased::new(body, lease).boxed_unsync())
}

/// Sends the 101 back and splices the two upgraded streams like a tunnel.
fn relay_upgrade(
    shared: &Shared,
    tunnels: &Connections,
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    lease: Lease,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, true);
    headers::add_via(&mut parts.headers, Version::HTTP_11);
    let idle = shared.settings.idle_timeout;
    let guard = track_tunnel(shared, tunnels);
    tokio::spawn(async move {
        let _guard = guard;
        let Some(client_upgrade) = client_upgrade else { return };
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                use crate::{connect::upgraded_side, idle::Clocked};
                use tokio::net::TcpStream;
                // Plain on both sides (not `wss`): relayed without copies.
                let client = upgraded_side(client, |io: TokioIo<Clocked<TcpStream>>| {
                    io.into_inner().into_inner()
                });
                let upstream = upgraded_side(upstream, TokioIo::<TcpStream>::into_inner);
                if let proxyd_net::RelayEnd::Failed(err) =
                    lease.splice(client, upstream, idle).await.end
                {
                    tracing::debug!(error = %err, "upgraded connection ended with an error");
                }
            }
            Err(err) => tracing::debug!(error = %err, "upgrade failed"),
        }
    });
    Response::from_parts(parts, respond::empty())
}
