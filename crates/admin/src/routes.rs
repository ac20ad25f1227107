//! The endpoints of SPEC §8.1 and their JSON shapes.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use crate::{Control, Mode, PendingAnswer, ReloadError};

pub(crate) type Body = Full<Bytes>;

/// Largest request body accepted (`POST /mode`).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Routes one request whose protections already passed.
pub(crate) async fn route(
    control: &dyn Control,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Response<Body> {
    match (method.as_str(), path) {
        ("GET" | "HEAD", "/health") => health(control),
        ("GET" | "HEAD", "/config") => config(control),
        ("GET" | "HEAD", "/patterns") => patterns(control),
        ("GET" | "HEAD", "/blocked") => blocked(control, query),
        ("GET" | "HEAD", "/metrics") => text(StatusCode::OK, control.metrics()),
        ("POST", "/mode") => mode(control, body),
        ("POST", "/reload") => reload(control).await,
        ("GET" | "HEAD", "/pending") => pending(control),
        ("POST", p) if p.starts_with("/pending/") => answer(control, &p["/pending/".len()..], body),
        (_, "/health" | "/config" | "/patterns" | "/blocked" | "/metrics") => {
            method_not_allowed("GET, HEAD")
        }
        (_, "/mode" | "/reload") => method_not_allowed("POST"),
        (_, "/pending") => method_not_allowed("GET, HEAD"),
        (_, p) if p.starts_with("/pending/") => method_not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

fn pending(control: &dyn Control) -> Response<Body> {
    let questions: Vec<serde_json::Value> = control
        .pending()
        .into_iter()
        .map(|q| {
            serde_json::json!({
                "id": q.id,
                "protocol": q.protocol,
                "host": q.host,
                "port": q.port,
                "method": q.method,
                "client": q.client,
                "waited_ms": q.waited_ms,
                "waiting": q.waiting,
            })
        })
        .collect();
    json(StatusCode::OK, serde_json::json!({ "pending": questions }))
}

/// `POST /pending/ID` with `{"answer": "allow-once" | "allow-always" | "deny"}`.
fn answer(control: &dyn Control, id: &str, body: &[u8]) -> Response<Body> {
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "the question id must be a number");
    };
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let answer = match parsed.as_ref().and_then(|b| b.get("answer")).and_then(|a| a.as_str()) {
        Some("allow-once") => PendingAnswer::AllowOnce,
        Some("allow-always") => PendingAnswer::AllowAlways,
        Some("deny") => PendingAnswer::Deny,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"answer\": \"allow-once\" | \"allow-always\" | \"deny\"}",
            );
        }
    };
    match control.answer(id, answer) {
        true => json(StatusCode::OK, serde_json::json!({ "status": "answered", "id": id })),
        false => error(StatusCode::NOT_FOUND, "no such pending question (answered or timed out)"),
    }
}

fn health(control: &dyn Control) -> Response<Body> {
    let listeners: serde_json::Map<String, serde_json::Value> = control
        .listeners()
        .into_iter()
        .map(|(name, addr)| (name, serde_json::Value::String(addr.to_string())))
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "version": control.version(),
            "mode": control.mode().as_str(),
            "listeners": listeners,
        }),
    )
}

fn config(control: &dyn Control) -> Response<Body> {
    let mut network = serde_json::Map::new();
    let mut origins = serde_json::Map::new();
    for entry in control.config() {
        origins.insert(entry.key.clone(), serde_json::Value::String(entry.origin));
        network.insert(entry.key, entry.value);
    }
    json(StatusCode::OK, serde_json::json!({ "network": network, "origins": origins }))
}

fn patterns(control: &dyn Control) -> Response<Body> {
    let (allowed, denied) = control.patterns();
    json(StatusCode::OK, serde_json::json!({ "allowed": allowed, "denied": denied }))
}

fn blocked(control: &dyn Control, query: Option<&str>) -> Response<Body> {
    let mut since = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", value)) => match value.parse::<u64>() {
                Ok(value) => since = Some(value),
                Err(_) => return error(StatusCode::BAD_REQUEST, "since must be a blocked-log id"),
            },
            _ => return error(StatusCode::BAD_REQUEST, "unknown query parameter (only since=ID)"),
        }
    }
    let (entries, total) = control.blocked().since(since);
    let entries: Vec<_> = entries.iter().map(|e| e.to_json()).collect();
    json(StatusCode::OK, serde_json::json!({ "blocked": entries, "total": total }))
}

fn mode(control: &dyn Control, body: &[u8]) -> Response<Body> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("body is not json: {err}")),
    };
    let Some(object) = value.as_object() else {
        return error(StatusCode::BAD_REQUEST, r#"body must be an object like {"mode":"limited"}"#);
    };
    if let Some(key) = object.keys().find(|k| *k != "mode") {
        return error(StatusCode::BAD_REQUEST, &format!("unknown field {key:?} (only mode)"));
    }
    let Some(name) = object.get("mode").and_then(|m| m.as_str()) else {
        return error(StatusCode::BAD_REQUEST, r#"missing string field "mode""#);
    };
    let Some(mode) = Mode::parse(name) else {
        return error(StatusCode::BAD_REQUEST, r#"mode must be "full" or "limited""#);
    };
    control.set_mode(mode);
    tracing::info!(mode = mode.as_str(), "mode switched through the admin api");
    json(StatusCode::OK, serde_json::json!({ "status": "ok", "mode": mode.as_str() }))
}

async fn reload(control: &dyn Control) -> Response<Body> {
    match control.reload().await {
        Ok(pending) => json(
            StatusCode::OK,
            serde_json::json!({ "status": "reloaded", "pending_restart": pending }),
        ),
        Err(ReloadError::Invalid(errors)) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({
                "status": "error",
                "message": "the new config is invalid; the running config stays in force",
                "errors": errors,
            }),
        ),
        Err(ReloadError::RestartNeeded(changed)) => json(
            StatusCode::CONFLICT,
            serde_json::json!({
                "status": "error",
                "message": "restart needed: listener addresses and on/off switches cannot change on reload",
                "errors": changed,
            }),
        ),
    }
}

/// 405 with the `Allow` header RFC 9110 §15.5.6 requires.
fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "status": "error", "message": message }))
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
