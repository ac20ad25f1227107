//! Responses proxyd makes itself: policy blocks (SPEC §6.1) and client or upstream errors.
//! No upstream error text ever reaches the client: bodies carry a fixed message per reason.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use proxyd_net::DialError;
use proxyd_policy::{Mode, Reason, Target, TargetError};

use crate::Body;

/// Everything a blocked response names besides the reason.
pub(crate) struct Blocked<'a> {
    pub(crate) target: &'a Target,
    pub(crate) protocol: &'a str,
    pub(crate) method: &'a str,
    pub(crate) mode: Mode,
}

/// 403 (or 503 when disabled) with `x-proxy-error` and a JSON body.
pub(crate) fn blocked(reason: &Reason, b: &Blocked<'_>) -> Response<Body> {
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
    let status = StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = json(status, &body);
    if let Some(value) = reason.x_proxy_error() {
        response.headers_mut().insert("x-proxy-error", HeaderValue::from_static(value));
    }
    response
}

/// A failed dial: 502/504 without details, or a block when the resolved-address check refused.
pub(crate) fn dial_failed(err: &DialError, b: &Blocked<'_>) -> Response<Body> {
    match err.reason() {
        Some(reason) => blocked(reason, b),
        None => {
            let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
            error(status, err.code(), &err.to_string())
        }
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
