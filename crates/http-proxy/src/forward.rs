//! Absolute-form forwarding (SPEC §7.2) and relayed upgrades (SPEC §7.4).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self as client, SendRequest};
use hyper_util::rt::TokioIo;
use proxyd_net::{Attempt, Checked, Outcome, splice};
use proxyd_policy::{AbsoluteUrl, Decision, Host, Protocol, Scheme, Target};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::respond::{self, Blocked};
use crate::server::Shared;
use crate::server::refuse;
use crate::{Body, BoxError, headers};

/// Idle upstream connections kept per (scheme, host, port, address).
const MAX_IDLE_PER_KEY: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    scheme: Scheme,
    host: Host,
    port: u16,
    addr: SocketAddr,
}

/// Upstream connections, reused only for the same scheme, host, port and checked address.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<SendRequest<Incoming>>>>,
}

impl Pool {
    /// A connection that can take a request now, for any of the checked addresses.
    fn checkout(
        &self,
        scheme: Scheme,
        checked: &Checked,
    ) -> Option<(SendRequest<Incoming>, PoolKey)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut cx = Context::from_waker(Waker::noop());
        for addr in &checked.addrs {
            let key = PoolKey {
                scheme,
                host: checked.target.host.clone(),
                port: checked.target.port,
                addr: *addr,
            };
            let Some(senders) = idle.get_mut(&key) else { continue };
            senders.retain(|sender| !sender.is_closed());
            // A sender whose previous response is still streaming is not ready yet and stays.
            let ready = senders
                .iter_mut()
                .position(|sender| matches!(sender.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            if let Some(index) = ready {
                return Some((senders.swap_remove(index), key));
            }
        }
        None
    }

    fn checkin(&self, key: PoolKey, sender: SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let senders = idle.entry(key).or_default();
        if senders.len() < MAX_IDLE_PER_KEY {
            senders.push(sender);
        }
    }
}

pub(crate) async fn handle(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let url = match Target::parse_absolute_url(&req.uri().to_string()) {
        Ok(url) => url,
        Err(err) => return respond::malformed(&err),
    };
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
    let protocol = match url.scheme {
        Scheme::Http => Protocol::Http,
        Scheme::Https => Protocol::Https,
    };
    let engine = &shared.engine;
    let method = req.method().as_str().to_owned();
    let attempt = Attempt {
        protocol,
        target: &url.target,
        method: Some(&method),
        client: Some(peer),
        side_doors: headers::side_doors(req.headers()),
    };
    let cx = Blocked {
        target: &url.target,
        protocol: protocol.as_str(),
        method: &method,
        mode: engine.mode(),
    };
    if let Decision::Block(reason) = engine.decide(&attempt).await {
        engine.record(engine.event(&attempt, Outcome::Blocked(reason.clone())));
        return respond::blocked(&reason, &cx);
    }
    let checked = match engine.resolve_checked(&url.target).await {
        Ok(checked) => checked,
        Err(err) => return refuse(shared, &attempt, &err, &cx),
    };
    let upgrade = headers::is_upgrade(req.headers());
    let pooled = if upgrade { None } else { shared.pool.checkout(url.scheme, &checked) };
    let (mut sender, key, connect_time) = match pooled {
        Some((sender, key)) => (sender, key, None),
        None => match open(shared, &url, &checked, upgrade).await {
            Ok(opened) => opened,
            Err(OpenError::Dial(err)) => return refuse(shared, &attempt, &err, &cx),
            Err(OpenError::Tls) => {
                engine
                    .record(engine.event(&attempt, Outcome::Failed("upstream_tls_failed".into())));
                return respond::error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_tls_failed",
                    "tls with the origin failed",
                );
            }
        },
    };
    let mut event = engine.event(&attempt, Outcome::Allowed);
    event.dns_time = Some(checked.dns_time);
    event.connect_time = connect_time;
    engine.record(event);

    let (outgoing, client_upgrade) = rewrite_request(req, &url, upgrade);
    let response = match sender.send_request(outgoing).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(error = %err, "upstream request failed");
            return respond::error(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the upstream server failed to answer",
            );
        }
    };
    if !upgrade {
        shared.pool.checkin(key, sender);
    }
    if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return relay_upgrade(shared, response, client_upgrade);
    }
    rewrite_response(response)
}

/// Origin-form request with `Host` from the target, hop-by-hop headers removed and `Via` added.
fn rewrite_request(
    mut req: Request<Incoming>,
    url: &AbsoluteUrl,
    upgrade: bool,
) -> (Request<Incoming>, Option<hyper::upgrade::OnUpgrade>) {
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri =
        Uri::try_from(url.path_and_query.as_str()).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    let host = match url.target.port == url.scheme.default_port() {
        true => authority_host(&url.target.host),
        false => format!("{}:{}", authority_host(&url.target.host), url.target.port),
    };
    if let Ok(value) = HeaderValue::from_str(&host) {
        parts.headers.insert(header::HOST, value);
    }
    headers::add_via(&mut parts.headers);
    (Request::from_parts(parts, body), client_upgrade)
}

fn authority_host(host: &Host) -> String {
    match host {
        Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        host => host.to_string(),
    }
}

fn rewrite_response(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_11;
    headers::remove_hop_by_hop(&mut parts.headers, false);
    headers::add_via(&mut parts.headers);
    Response::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
}

/// Sends the 101 back and splices the two upgraded streams like a tunnel.
fn relay_upgrade(
    shared: &Shared,
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, true);
    headers::add_via(&mut parts.headers);
    let idle = shared.settings.idle_timeout;
    let closed = shared.engine.tunnel_closed();
    let guard = shared.tunnels.track();
    tokio::spawn(async move {
        let _guard = guard;
        let Some(client_upgrade) = client_upgrade else { return };
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let result =
                    splice(TokioIo::new(client), TokioIo::new(upstream), idle, closed).await;
                if let Err(err) = result {
                    tracing::debug!(error = %err, "upgraded connection ended with an error");
                }
            }
            Err(err) => tracing::debug!(error = %err, "upgrade failed"),
        }
    });
    Response::from_parts(parts, respond::empty())
}

/// Dials a checked address and performs the HTTP/1.1 handshake, with TLS for `https`.
async fn open(
    shared: &Shared,
    url: &AbsoluteUrl,
    checked: &Checked,
    upgrade: bool,
) -> Result<(SendRequest<Incoming>, PoolKey, Option<std::time::Duration>), OpenError> {
    let connected = shared.engine.dialer().connect(checked).await.map_err(OpenError::Dial)?;
    let key = PoolKey {
        scheme: url.scheme,
        host: url.target.host.clone(),
        port: url.target.port,
        addr: connected.peer,
    };
    let connect_time = Some(connected.connect_time);
    let sender = match url.scheme {
        Scheme::Http => handshake(connected.stream, upgrade).await?,
        Scheme::Https => {
            let name = match &url.target.host {
                Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                Host::Name(name) => {
                    ServerName::try_from(name.to_string()).map_err(|_| OpenError::Tls)?
                }
            };
            let tls = tokio::time::timeout(
                shared.engine.dialer().connect_timeout(),
                shared.tls.connect(name, connected.stream),
            )
            .await
            .map_err(|_| OpenError::Dial(proxyd_net::DialError::Timeout))?
            .map_err(|err| {
                tracing::debug!(error = %err, "tls handshake with the origin failed");
                OpenError::Tls
            })?;
            handshake(tls, upgrade).await?
        }
    };
    Ok((sender, key, connect_time))
}

async fn handshake<S>(stream: S, upgrade: bool) -> Result<SendRequest<Incoming>, OpenError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await.map_err(|err| {
        tracing::debug!(error = %err, "http handshake with the origin failed");
        OpenError::Tls
    })?;
    tokio::spawn(async move {
        let result = match upgrade {
            true => conn.with_upgrades().await,
            false => conn.await,
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

#[derive(Debug)]
enum OpenError {
    Dial(proxyd_net::DialError),
    Tls,
}
