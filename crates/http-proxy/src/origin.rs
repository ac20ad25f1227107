//! Opening the connection a forwarded request goes out on: direct to the checked addresses
//! (pooled), through an upstream proxy (SPEC §7.6), or to a Unix socket (SPEC §7.7).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self as client, SendRequest};
use hyper_util::rt::TokioIo;
use proxyd_net::{Attempt, DialError, Outcome};
use proxyd_policy::{AbsoluteUrl, Decision, Host, Scheme};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::Body;
use crate::pool::PoolKey;
use crate::respond::{self, Blocked};
use crate::server::{Shared, refuse};
use crate::upstream::{ProxyEndpoint, connect_via};

/// Where a request goes.
pub(crate) enum Route<'a> {
    Direct,
    Upstream(&'a ProxyEndpoint),
    Unix(&'a Path),
}

/// A connection ready for the request.
pub(crate) struct Opened {
    pub(crate) sender: SendRequest<Incoming>,
    /// Set when the connection may be pooled.
    pub(crate) key: Option<PoolKey>,
    pub(crate) dns_time: Option<Duration>,
    pub(crate) connect_time: Option<Duration>,
    /// `Some` when the request goes to an upstream proxy in absolute-form, with its credentials.
    pub(crate) proxy_authorization: Option<Option<HeaderValue>>,
}

/// Why no connection could be opened.
#[derive(Debug)]
pub(crate) enum Failure {
    Dial(DialError),
    Tls,
    UpstreamProxy,
    UnixSocket,
}

impl Failure {
    /// Records the failure and answers the client without upstream details.
    pub(crate) fn respond(
        &self,
        shared: &Shared,
        attempt: &Attempt<'_>,
        cx: &Blocked<'_>,
    ) -> Response<Body> {
        let (code, message) = match self {
            Failure::Dial(err) => return refuse(shared, attempt, err, cx),
            Failure::Tls => ("upstream_tls_failed", "tls with the origin failed"),
            Failure::UpstreamProxy => ("upstream_proxy_failed", "the upstream proxy failed"),
            Failure::UnixSocket => ("unix_socket_failed", "connecting to the unix socket failed"),
        };
        shared.engine.record(shared.engine.event(attempt, Outcome::Failed(code.to_owned())));
        respond::error(StatusCode::BAD_GATEWAY, code, message)
    }
}

pub(crate) async fn open(
    shared: &Shared,
    url: &AbsoluteUrl,
    route: Route<'_>,
    upgrade: bool,
) -> Result<Opened, Failure> {
    match route {
        Route::Direct => open_direct(shared, url, upgrade).await,
        Route::Upstream(proxy) => open_upstream(shared, url, proxy, upgrade).await,
        Route::Unix(path) => open_unix(shared, path, upgrade).await,
    }
}

async fn open_direct(shared: &Shared, url: &AbsoluteUrl, upgrade: bool) -> Result<Opened, Failure> {
    let checked = shared.engine.resolve_checked(&url.target).await.map_err(Failure::Dial)?;
    let dns_time = Some(checked.dns_time);
    if !upgrade && let Some((sender, key)) = shared.pool.checkout(url.scheme, &checked) {
        let key = Some(key);
        return Ok(Opened { sender, key, dns_time, connect_time: None, proxy_authorization: None });
    }
    let connected = shared.engine.dialer().connect(&checked).await.map_err(Failure::Dial)?;
    let key = PoolKey {
        scheme: url.scheme,
        host: url.target.host.clone(),
        port: url.target.port,
        addr: connected.peer,
    };
    let sender = match url.scheme {
        Scheme::Http => handshake(connected.stream, upgrade).await?,
        Scheme::Https => {
            handshake(tls(shared, &url.target.host, connected.stream).await?, upgrade).await?
        }
    };
    let connect_time = Some(connected.connect_time);
    Ok(Opened { sender, key: Some(key), dns_time, connect_time, proxy_authorization: None })
}

async fn open_upstream(
    shared: &Shared,
    url: &AbsoluteUrl,
    proxy: &ProxyEndpoint,
    upgrade: bool,
) -> Result<Opened, Failure> {
    let connected = dial_proxy(shared, proxy).await?;
    let connect_time = Some(connected.connect_time);
    let (sender, proxy_authorization) = match url.scheme {
        // Plain HTTP goes to the proxy in absolute-form.
        Scheme::Http => {
            (handshake(connected.stream, upgrade).await?, Some(proxy.authorization.clone()))
        }
        // HTTPS goes through a tunnel, with TLS from proxyd to the origin inside it.
        Scheme::Https => {
            let stream = tunnel_via(shared, connected.stream, proxy, &url.target).await?;
            (handshake(tls(shared, &url.target.host, stream).await?, upgrade).await?, None)
        }
    };
    Ok(Opened { sender, key: None, dns_time: None, connect_time, proxy_authorization })
}

/// Dials the upstream proxy itself (an endpoint the operator configured).
pub(crate) async fn dial_proxy(
    shared: &Shared,
    proxy: &ProxyEndpoint,
) -> Result<proxyd_net::Connected, Failure> {
    shared.engine.dialer().dial_trusted(&proxy.target).await.map_err(|err| {
        tracing::warn!(proxy = %proxy.target, reason = err.code(), "cannot reach the upstream proxy");
        Failure::UpstreamProxy
    })
}

/// `CONNECT` through the upstream proxy, bounded by `connect_timeout`. A server speaks only
/// after the client in TLS and plain HTTP alike, so bytes before that are refused.
pub(crate) async fn tunnel_via(
    shared: &Shared,
    stream: TcpStream,
    proxy: &ProxyEndpoint,
    target: &proxyd_policy::Target,
) -> Result<TcpStream, Failure> {
    let timeout = shared.engine.dialer().connect_timeout();
    match tokio::time::timeout(timeout, connect_via(stream, proxy, target)).await {
        Ok(Ok((stream, early))) if early.is_empty() => Ok(stream),
        Ok(Ok(_)) => {
            tracing::warn!(proxy = %proxy.target, "upstream proxy sent bytes before the client");
            Err(Failure::UpstreamProxy)
        }
        Ok(Err(err)) => {
            tracing::warn!(proxy = %proxy.target, error = %err, "upstream proxy refused the tunnel");
            Err(Failure::UpstreamProxy)
        }
        Err(_) => {
            tracing::warn!(proxy = %proxy.target, "upstream proxy tunnel timed out");
            Err(Failure::UpstreamProxy)
        }
    }
}

#[cfg(unix)]
async fn open_unix(shared: &Shared, path: &Path, upgrade: bool) -> Result<Opened, Failure> {
    let started = std::time::Instant::now();
    let timeout = shared.engine.dialer().connect_timeout();
    let stream = match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(path = %path.display(), error = %err, "unix socket connect failed");
            return Err(Failure::UnixSocket);
        }
        Err(_) => return Err(Failure::UnixSocket),
    };
    let connect_time = Some(started.elapsed());
    let sender = handshake(stream, upgrade).await?;
    Ok(Opened { sender, key: None, dns_time: None, connect_time, proxy_authorization: None })
}

#[cfg(not(unix))]
async fn open_unix(_: &Shared, _: &Path, _: bool) -> Result<Opened, Failure> {
    Err(Failure::UnixSocket)
}

/// Decides a request carrying `x-unix-socket` (SPEC §7.7): the path must be absolute and
/// equal, after canonicalisation, to an `allow_unix_sockets` entry. Returns the path to use.
pub(crate) async fn decide_unix_socket(
    shared: &Shared,
    value: &HeaderValue,
    attempt: &Attempt<'_>,
) -> (Decision, PathBuf) {
    let requested = PathBuf::from(value.to_str().unwrap_or_default());
    let resolved = canonical(&requested).await;
    let mut allowed = false;
    if cfg!(unix) && requested.is_absolute() {
        for entry in &shared.settings.unix_sockets {
            if canonical(entry).await == resolved {
                allowed = true;
                break;
            }
        }
    }
    let policy = shared.engine.policy();
    let method = attempt.method.unwrap_or_default();
    let decision =
        policy.decide_unix_socket(allowed, method, shared.engine.mode(), attempt.side_doors);
    (decision, resolved)
}

/// The canonical form of a path, or the path itself when it does not exist (yet).
async fn canonical(path: &Path) -> PathBuf {
    tokio::fs::canonicalize(path).await.unwrap_or_else(|_| path.to_path_buf())
}

async fn tls<S>(
    shared: &Shared,
    host: &Host,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = match host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(name) => ServerName::try_from(name.to_string()).map_err(|_| Failure::Tls)?,
    };
    let timeout = shared.engine.dialer().connect_timeout();
    match tokio::time::timeout(timeout, shared.tls.connect(name, stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "tls handshake with the origin failed");
            Err(Failure::Tls)
        }
        Err(_) => Err(Failure::Dial(DialError::Timeout)),
    }
}

async fn handshake<S>(stream: S, upgrade: bool) -> Result<SendRequest<Incoming>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await.map_err(|err| {
        tracing::debug!(error = %err, "http handshake with the origin failed");
        Failure::Tls
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
