//! Responses proxyd makes itself: policy blocks (SPEC §6.1) and client or upstream errors,
//! and the mapping of the admission path's [`Refusal`]s to HTTP status and `x-proxy-error`
//! (wire presentation belongs to the listener, not to `policy` or `net`). No upstream error
//! text ever reaches the client: bodies carry a fixed message per reason.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use proxyd_net::{Failure, Refusal};
use proxyd_policy::{Mode, Reason, Target, TargetError};

use crate::Body;
use crate::exchange::Overdue;

/// Everything a blocked response names besides the reason.
#[derive(Clone, Copy)]
pub(crate) struct Blocked<'a> {
    pub(crate) target: &'a Target,
    pub(crate) protocol: &'a str,
    pub(crate) method: &'a str,
    pub(crate) mode: Mode,
}

/// The `x-proxy-error` header value; `None` when the block is not a policy decision.
pub(crate) fn x_proxy_error(reason: &Reason) -> Option<&'static str> {
    match reason {
        Reason::ProxyDisabled => None,
        Reason::Denied => Some("blocked-by-denylist"),
        Reason::NotAllowed | Reason::NotAllowedLocal => Some("blocked-by-allowlist"),
        Reason::MethodNotAllowed => Some("blocked-by-method-policy"),
        Reason::SelfConnection
        | Reason::SniMismatch
        | Reason::UnixSocketChanged
        | Reason::RuleDenied(_)
        | Reason::Decider(_) => Some("blocked-by-policy"),
        // A malformed request, not a policy decision.
        Reason::InvalidPath(_) | Reason::UnsupportedQuery => None,
    }
}

fn blocked_status(reason: &Reason) -> StatusCode {
    match reason {
        Reason::ProxyDisabled => StatusCode::SERVICE_UNAVAILABLE,
        Reason::InvalidPath(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    }
}

/// 403 (or 503 when disabled) with `x-proxy-error` and a JSON body.
pub(crate) fn blocked(reason: &Reason, b: &Blocked<'_>) -> Response<Body> {
    blocked_with(reason, b, None)
}

/// [`blocked`], with what a person needs to fix it (`detail` in the JSON body).
pub(crate) fn blocked_with(
    reason: &Reason,
    b: &Blocked<'_>,
    detail: Option<&str>,
) -> Response<Body> {
    let body = serde_json::json!({
        "status": "blocked",
        "reason": reason.code(),
        "host": b.target.host.to_string(),
        "port": b.target.port,
        "protocol": b.protocol,
        "method": b.method,
        "mode": b.mode.as_str(),
        "message": reason.message(),
    });
    let mut body = body;
    match reason {
        Reason::RuleDenied(rule) if !rule.is_empty() => body["rule"] = rule.to_string().into(),
        Reason::InvalidPath(error) => body["detail"] = error.to_string().into(),
        _ => {}
    }
    if let Some(detail) = detail {
        body["detail"] = detail.into();
    }
    let mut response = json(blocked_status(reason), &body);
    if let Some(value) = x_proxy_error(reason) {
        response.headers_mut().insert("x-proxy-error", HeaderValue::from_static(value));
    }
    response
}

/// A refusal from the admission path: the block, or 502/504 without upstream details.
pub(crate) fn refusal(refusal: &Refusal, b: &Blocked<'_>) -> Response<Body> {
    match refusal {
        Refusal::Blocked { reason, mode, detail } => {
            blocked_with(reason, &Blocked { mode: *mode, ..*b }, detail.as_deref())
        }
        Refusal::Failed { failure, .. } => {
            let (status, message) = failure_answer(*failure);
            error(status, failure.code(), message)
        }
    }
}

fn failure_answer(failure: Failure) -> (StatusCode, &'static str) {
    match failure {
        Failure::DnsFailed => (StatusCode::BAD_GATEWAY, "dns lookup failed"),
        Failure::ConnectRefused => (StatusCode::BAD_GATEWAY, "connection refused"),
        Failure::ConnectUnreachable => (StatusCode::BAD_GATEWAY, "destination unreachable"),
        Failure::ConnectTimeout => (StatusCode::GATEWAY_TIMEOUT, "connect timed out"),
        Failure::UpstreamProxy => (StatusCode::BAD_GATEWAY, "the upstream proxy failed"),
        Failure::UpstreamTls => (StatusCode::BAD_GATEWAY, "tls with the origin failed"),
        Failure::UpstreamFailed => {
            (StatusCode::BAD_GATEWAY, "the upstream server failed to answer")
        }
        Failure::UnixSocket => (StatusCode::BAD_GATEWAY, "connecting to the unix socket failed"),
        Failure::MitmCaScope => (
            StatusCode::BAD_GATEWAY,
            "the interception ca does not cover this host; restart proxyd to apply the allowlist",
        ),
        Failure::MitmNotTls
        | Failure::MitmHelloTimeout
        | Failure::MitmLeafFailed
        | Failure::MitmHandshakeFailed
        | Failure::MitmHandshakeTimeout
        | Failure::ClientGone
        | Failure::UdpRelay => (StatusCode::BAD_GATEWAY, "the proxy failed to serve this request"),
    }
}

/// 400 for a target that failed SPEC §3.
pub(crate) fn malformed(err: &TargetError) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "malformed", &err.to_string())
}

/// 400 with a reason of proxyd's own.
pub(crate) fn bad_request(message: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A JSON error body: `{"status":"error","reason":…,"message":…}`.
pub(crate) fn error(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "status": "error", "reason": reason, "message": message }))
}

/// A forwarded request whose response head did not come in time: `504` when the origin kept
/// it waiting, `408` when the client stopped sending its body; closed when the request body
/// was not read whole.
pub(crate) fn overdue(overdue: Overdue) -> Response<Body> {
    let mut response = match overdue {
        Overdue::Response => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "response_timeout",
                "the upstream server did not answer in time",
            );
        }
        Overdue::Upload => error(
            StatusCode::GATEWAY_TIMEOUT,
            "upload_stalled",
            "the upstream server stopped reading the request body",
        ),
        Overdue::Client => error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body stopped arriving",
        ),
    };
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `408 Request Timeout` with a JSON error body and `Connection: close`, as bytes: written
/// by the head clock (`idle.rs`), which hyper does not answer for.
pub(crate) fn request_timeout() -> Vec<u8> {
    let body = serde_json::json!({
        "status": "error",
        "reason": "request_timeout",
        "message": "the request head did not arrive in time",
    });
    let body = format!("{body}\n");
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_status_and_header() {
        let table = [
            (Reason::Denied, 403, Some("blocked-by-denylist")),
            (Reason::NotAllowed, 403, Some("blocked-by-allowlist")),
            (Reason::NotAllowedLocal, 403, Some("blocked-by-allowlist")),
            (Reason::MethodNotAllowed, 403, Some("blocked-by-method-policy")),
            (Reason::SelfConnection, 403, Some("blocked-by-policy")),
            (Reason::SniMismatch, 403, Some("blocked-by-policy")),
            (Reason::UnixSocketChanged, 403, Some("blocked-by-policy")),
            (Reason::Decider("x".into()), 403, Some("blocked-by-policy")),
            (Reason::RuleDenied("r".into()), 403, Some("blocked-by-policy")),
            (Reason::InvalidPath(proxyd_policy::PathError::DotSegment), 400, None),
            (Reason::ProxyDisabled, 503, None),
        ];
        for (reason, status, header) in table {
            assert_eq!(blocked_status(&reason).as_u16(), status, "{reason}");
            assert_eq!(x_proxy_error(&reason), header, "{reason}");
        }
    }

    #[test]
    fn failures_map_to_502_or_504() {
        assert_eq!(failure_answer(Failure::ConnectTimeout).0, StatusCode::GATEWAY_TIMEOUT);
        for failure in [Failure::DnsFailed, Failure::ConnectRefused, Failure::UpstreamTls] {
            assert_eq!(failure_answer(failure).0, StatusCode::BAD_GATEWAY, "{failure:?}");
        }
    }
}
