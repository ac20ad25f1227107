//! The endpoints of SPEC §8.1 and their JSON shapes.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use crate::{Control, Mode, PendingAnswer, ReloadError};

pub(crate) type Body = Full<Bytes>;

/// Largest request body accepted (`POST /mode`).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The Prometheus text format, served by default.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// OpenMetrics, served when `Accept` ranks it above the Prometheus text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Routes one request whose protections already passed.
pub(crate) async fn route(
    control: &dyn Control,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<Body> {
    match (method.as_str(), path) {
        ("GET" | "HEAD", "/health") => health(control),
        ("GET" | "HEAD", "/config") => config(control),
        ("GET" | "HEAD", "/patterns") => patterns(control),
        ("GET" | "HEAD", "/blocked") => blocked(control, query),
        ("GET" | "HEAD", "/metrics") => metrics(control, headers),
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

/// `GET /metrics`: [`Control::metrics`] (OpenMetrics text) as OpenMetrics when `Accept` asks
/// for it, else converted to the Prometheus text format 0.0.4.
fn metrics(control: &dyn Control, headers: &HeaderMap) -> Response<Body> {
    let openmetrics = wants_openmetrics(headers);
    let (body, content_type) = match openmetrics {
        true => (control.metrics(), OPENMETRICS),
        false => (prometheus_text(&control.metrics()), PROMETHEUS_TEXT),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// Whether `Accept` ranks `application/openmetrics-text` strictly above `text/plain` (and the
/// wildcards that cover it), as Prometheus' own scrape header does. No `Accept`, `*/*`, a tie
/// or anything unparsable gets the Prometheus text format.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
    }
    openmetrics > 0.0 && openmetrics > text
}

/// OpenMetrics text (as prometheus-client writes it) in the Prometheus text format 0.0.4: no
/// `# EOF` or `# UNIT`, counter families named by their `_total` samples, `info` as a gauge of
/// its `_info` samples, `unknown` as `untyped`, and HELP without OpenMetrics' `\"` escape.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" {
            break;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take());
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" if !family.ends_with("_total") => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" => (family.to_owned(), "gauge"),
                "gaugehistogram" => (family.to_owned(), "histogram"),
                "unknown" => (family.to_owned(), "untyped"),
                other => (family.to_owned(), other),
            };
            match help.take() {
                Some((of, text)) if of == family => flush_help(&mut out, Some((&name, text))),
                other => flush_help(&mut out, other),
            }
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        flush_help(&mut out, help.take());
        if line.starts_with("# UNIT ") {
            continue;
        }
        // A sample; exemplars (` # {...}` after the value) are OpenMetrics only.
        let labels_end = labels_end(line);
        let sample = match line[labels_end..].find(" # ") {
            Some(at) => &line[..labels_end + at],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    flush_help(&mut out, help);
    out
}

/// Where a sample line's name and labels end (label values may hold `}`, `#` and spaces).
fn labels_end(line: &str) -> usize {
    let name_end = line.find([' ', '{']).unwrap_or(line.len());
    if !line[name_end..].starts_with('{') {
        return name_end;
    }
    let (mut quoted, mut escaped) = (false, false);
    for (at, c) in line.char_indices().skip(name_end) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return at + 1,
            _ => {}
        }
    }
    line.len()
}

/// Writes a pending `# HELP NAME TEXT`, unescaping `\"` (not an escape in format 0.0.4).
fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    let Some((name, text)) = help else { return };
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('"')) => {}
            ('\\', Some('\\')) => {
                out.push_str("\\\\");
                chars.next();
            }
            (c, _) => out.push(c),
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn openmetrics_only_when_accept_ranks_it_first() {
        assert!(!wants_openmetrics(&HeaderMap::new()));
        assert!(!wants_openmetrics(&accept("*/*")));
        assert!(!wants_openmetrics(&accept("text/plain")));
        assert!(!wants_openmetrics(&accept("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(&accept("application/openmetrics-text;q=0,text/plain")));
        assert!(!wants_openmetrics(&accept("application/openmetrics-text;q=0.5,*/*")));
        assert!(wants_openmetrics(&accept("application/openmetrics-text")));
        assert!(wants_openmetrics(&accept("Application/OpenMetrics-Text; version=1.0.0")));
        // Prometheus' own scrape header.
        assert!(wants_openmetrics(&accept(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
    }

    #[test]
    fn openmetrics_converts_to_the_prometheus_text_format() {
        let openmetrics = concat!(
            "# HELP up_seconds A \\\"quoted\\\" \\\\ help.\n",
            "# TYPE up_seconds gauge\n",
            "# UNIT up_seconds seconds\n",
            "up_seconds 3.5\n",
            "# HELP hits Hits by path.\n",
            "# TYPE hits counter\n",
            "hits_total{path=\"/a # b}\"} 2 # {trace=\"x\"} 1\n",
            "# HELP build Build.\n",
            "# TYPE build info\n",
            "build_info{version=\"1\"} 1\n",
            "# EOF\n",
        );
        let expected = concat!(
            "# HELP up_seconds A \"quoted\" \\\\ help.\n",
            "# TYPE up_seconds gauge\n",
            "up_seconds 3.5\n",
            "# HELP hits_total Hits by path.\n",
            "# TYPE hits_total counter\n",
            "hits_total{path=\"/a # b}\"} 2\n",
            "# HELP build_info Build.\n",
            "# TYPE build_info gauge\n",
            "build_info{version=\"1\"} 1\n",
        );
        assert_eq!(prometheus_text(openmetrics), expected);
    }
}
