//! Opening the connection a forwarded request goes out on: direct to the checked addresses
//! (pooled), through an upstream proxy (SPEC §7.6), or to a Unix socket (SPEC §7.7).
//!
//! Over TLS (`https://`, and every request of an intercepted tunnel) proxyd offers ALPN `h2`
//! and `http/1.1` and speaks what the origin picks; a request that asks for an upgrade offers
//! `http/1.1` only, since `101 Switching Protocols` exists only there (RFC 9113 §8.6). Plain
//! `http://`, upstream proxies in absolute-form and Unix sockets are HTTP/1.1.

use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxyd_net::{Admission, Checked, Connected, Failure, Lease, Refusal};
use proxyd_policy::{AbsoluteUrl, Host, Scheme};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::exchange::Upload;
use crate::leased::Leased;
use crate::pool::PoolKey;
use crate::server::Shared;
use crate::upstream::{ProxyEndpoint, connect_via};

/// A connection to an origin that can take a request: HTTP/1.1, one request at a time, or
/// HTTP/2, multiplexed (its handle is cloned for every request it carries).
pub(crate) enum Sender {
    Http1(http1::SendRequest<Leased<Upload>>),
    Http2(http2::SendRequest<Leased<Upload>>),
}

impl Sender {
    /// The version requests on this connection must carry.
    pub(crate) fn version(&self) -> Version {
        match self {
            Sender::Http1(_) => Version::HTTP_11,
            Sender::Http2(_) => Version::HTTP_2,
        }
    }

    pub(crate) async fn send_request(
        &mut self,
        req: Request<Leased<Upload>>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::Http1(sender) => sender.send_request(req).await,
            Sender::Http2(sender) => sender.send_request(req).await,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }

    /// Whether a request can be sent now: an HTTP/1.1 connection whose previous response is
    /// still streaming cannot.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match self {
            Sender::Http1(sender) => sender.poll_ready(cx),
            Sender::Http2(sender) => sender.poll_ready(cx),
        }
    }
}

/// Where a request goes.
pub(crate) enum Route<'a> {
    Direct,
    Upstream(&'a ProxyEndpoint),
    Unix,
}

/// A connection ready for the request.
pub(crate) struct Opened {
    pub(crate) sender: Sender,
    /// Set when the connection goes back to the pool once the response has arrived (HTTP/1.1;
    /// an HTTP/2 connection is pooled, shared, from the moment it is opened).
    pub(crate) key: Option<PoolKey>,
    /// `Some` when the request goes to an upstream proxy in absolute-form, with its credentials.
    pub(crate) proxy_authorization: Option<Option<HeaderValue>>,
    /// The checked addresses of a direct request whose connection came from the pool: where a
    /// fresh one goes if it turns out dead ([`reopen`]).
    pub(crate) reused: Option<Checked>,
}

/// Opens the connection for an admitted request. Every failure is settled on the admission
/// (one event) and returned as the refusal to present.
pub(crate) async fn open(
    shared: &Shared,
    admission: &mut Admission,
    url: &AbsoluteUrl,
    route: Route<'_>,
    upgrade: bool,
) -> Result<Opened, Refusal> {
    let opened = match route {
        Route::Direct => open_direct(shared, admission, url, upgrade).await,
        Route::Upstream(proxy) => open_upstream(shared, admission, url, proxy, upgrade).await,
        Route::Unix => open_unix(admission, upgrade).await,
    };
    opened.map_err(|failure| match failure {
        Step::Refused(refusal) => refusal,
        Step::Failed(failure) => admission.fail(failure),
    })
}

/// A step that failed: the admission path refused (already settled), or a step of ours.
enum Step {
    Refused(Refusal),
    Failed(Failure),
}

impl From<Refusal> for Step {
    fn from(refusal: Refusal) -> Step {
        Step::Refused(refusal)
    }
}

impl From<Failure> for Step {
    fn from(failure: Failure) -> Step {
        Step::Failed(failure)
    }
}

async fn open_direct(
    shared: &Shared,
    admission: &mut Admission,
    url: &AbsoluteUrl,
    upgrade: bool,
) -> Result<Opened, Step> {
    let checked = admission.resolve().await?;
    if !upgrade && let Some((sender, key)) = shared.pool.checkout(url.scheme, &checked) {
        // An HTTP/2 connection stayed in the pool, shared.
        let key = matches!(sender, Sender::Http1(_)).then_some(key);
        return Ok(Opened { sender, key, proxy_authorization: None, reused: Some(checked) });
    }
    let connected = admission.connect(&checked).await?;
    let (sender, key) = establish(shared, connected, url, upgrade).await?;
    Ok(Opened { sender, key, proxy_authorization: None, reused: None })
}

/// A fresh connection, under the exchange's own lease, to the addresses its admission checked,
/// for a request whose pooled connection failed before answering (no new decision). `None`
/// when it cannot be opened.
pub(crate) async fn reopen(
    shared: &Shared,
    lease: &Lease,
    checked: &Checked,
    url: &AbsoluteUrl,
) -> Option<(Sender, Option<PoolKey>)> {
    let connected = lease.reconnect(checked).await?;
    match establish(shared, connected, url, false).await {
        // A change made while the connection was opened (TLS included) may have revoked the
        // exchange since `reconnect` checked it: nothing is sent then.
        Ok(_) if lease.is_revoked() => None,
        Ok(opened) => Some(opened),
        Err(failure) => {
            tracing::debug!(?failure, "a fresh connection for a retry failed");
            None
        }
    }
}

/// TLS and the HTTP handshake on a new direct connection. An HTTP/2 one goes into the pool at
/// once, shared; an HTTP/1.1 one comes back with the key it is checked in under once answered.
async fn establish(
    shared: &Shared,
    connected: Connected,
    url: &AbsoluteUrl,
    upgrade: bool,
) -> Result<(Sender, Option<PoolKey>), Failure> {
    let key = PoolKey {
        scheme: url.scheme,
        host: url.target.host.clone(),
        port: url.target.port,
        addr: connected.peer,
    };
    let sender = match url.scheme {
        Scheme::Http => handshake(connected.stream, upgrade).await?,
        Scheme::Https => {
            let stream = tls(shared, &url.target.host, connected.stream, upgrade).await?;
            handshake_tls(stream, upgrade).await?
        }
    };
    match &sender {
        Sender::Http2(h2) if !upgrade => {
            shared.pool.checkin(key, Sender::Http2(h2.clone()));
            Ok((sender, None))
        }
        _ => Ok((sender, Some(key))),
    }
}

async fn open_upstream(
    shared: &Shared,
    admission: &mut Admission,
    url: &AbsoluteUrl,
    proxy: &ProxyEndpoint,
    upgrade: bool,
) -> Result<Opened, Step> {
    let connected = admission.dial_upstream(&proxy.endpoint).await?;
    let (sender, proxy_authorization) = match url.scheme {
        // Plain HTTP goes to the proxy in absolute-form.
        Scheme::Http => {
            (handshake(connected.stream, upgrade).await?, Some(proxy.authorization.clone()))
        }
        // HTTPS goes through a tunnel, with TLS from proxyd to the origin inside it.
        Scheme::Https => {
            let stream = tunnel_via(shared, connected.stream, proxy, &url.target)
                .await
                .map_err(|()| Failure::UpstreamProxy)?;
            let stream = tls(shared, &url.target.host, stream, upgrade).await?;
            (handshake_tls(stream, upgrade).await?, None)
        }
    };
    Ok(Opened { sender, key: None, proxy_authorization, reused: None })
}

/// `CONNECT` through the upstream proxy, bounded by `connect_timeout`. A server speaks only
/// after the client in TLS and plain HTTP alike, so bytes before that are refused.
pub(crate) async fn tunnel_via(
    shared: &Shared,
    stream: TcpStream,
    proxy: &ProxyEndpoint,
    target: &proxyd_policy::Target,
) -> Result<TcpStream, ()> {
    let timeout = shared.engine.dialer().connect_timeout();
    match tokio::time::timeout(timeout, connect_via(stream, proxy, target)).await {
        Ok(Ok((stream, early))) if early.is_empty() => Ok(stream),
        Ok(Ok(_)) => {
            tracing::warn!(proxy = %proxy.target, "upstream proxy sent bytes before the client");
            Err(())
        }
        Ok(Err(err)) => {
            tracing::warn!(proxy = %proxy.target, error = %err, "upstream proxy refused the tunnel");
            Err(())
        }
        Err(_) => {
            tracing::warn!(proxy = %proxy.target, "upstream proxy tunnel timed out");
            Err(())
        }
    }
}

#[cfg(unix)]
async fn open_unix(admission: &mut Admission, upgrade: bool) -> Result<Opened, Step> {
    let stream = admission.open_unix().await?;
    let sender = handshake(stream, upgrade).await?;
    Ok(Opened { sender, key: None, proxy_authorization: None, reused: None })
}

#[cfg(not(unix))]
async fn open_unix(_: &mut Admission, _: bool) -> Result<Opened, Step> {
    Err(Step::Failed(Failure::UnixSocket))
}

/// TLS to the origin, offering `h2` unless the request asks for an upgrade.
async fn tls<S>(
    shared: &Shared,
    host: &Host,
    stream: S,
    upgrade: bool,
) -> Result<tokio_rustls::client::TlsStream<S>, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = match host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(name) => {
            ServerName::try_from(name.to_string()).map_err(|_| Failure::UpstreamTls)?
        }
    };
    let connector = match upgrade {
        true => &shared.tls_http1,
        false => &shared.tls,
    };
    let timeout = shared.engine.dialer().connect_timeout();
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "tls handshake with the origin failed");
            Err(Failure::UpstreamTls)
        }
        Err(_) => Err(Failure::ConnectTimeout),
    }
}

/// HTTP/2 when the origin chose it in ALPN, else HTTP/1.1.
async fn handshake_tls<S>(
    stream: tokio_rustls::client::TlsStream<S>,
    upgrade: bool,
) -> Result<Sender, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if upgrade || stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return handshake(stream, upgrade).await;
    }
    let (sender, conn) =
        http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.map_err(|err| {
            tracing::debug!(error = %err, "http/2 handshake with the origin failed");
            Failure::UpstreamTls
        })?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "upstream http/2 connection ended with an error");
        }
    });
    Ok(Sender::Http2(sender))
}

async fn handshake<S>(stream: S, upgrade: bool) -> Result<Sender, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|err| {
        tracing::debug!(error = %err, "http handshake with the origin failed");
        Failure::UpstreamTls
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
    Ok(Sender::Http1(sender))
}
