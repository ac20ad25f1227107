//! `CONNECT` tunnels (SPEC §7.3): admit and dial through the admission path, and only then
//! answer 200; the tunnel relays under its lease.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use proxyd_net::{Attempt, Connections, Failure, Refusal, RelayEnd, Side};
use proxyd_policy::{Mode, Protocol, Reason, SideDoors, Target};

use tokio::net::TcpStream;

use crate::idle::Clocked;
use crate::origin;
use crate::respond::{self, Blocked};
use crate::server::{Shared, track_tunnel};
use crate::{Body, headers, mitm};

/// Answers a `CONNECT`. Anything but a 200 also closes the connection: bytes the client
/// pipelined after the head were meant for the tunnel and must not be read as new requests.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
    tunnels: &Connections,
) -> Response<Body> {
    let mut response = open_tunnel(shared, peer, req, tunnels).await;
    if response.status() != StatusCode::OK {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn open_tunnel(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    tunnels: &Connections,
) -> Response<Body> {
    // Authority-form only (RFC 9112 §3.2.3, SPEC §7.3).
    let authority = req.uri().authority().filter(|_| req.uri().scheme().is_none());
    let Some(authority) = authority.map(|a| a.as_str().to_owned()) else {
        return respond::bad_request("connect needs an authority-form target (host:port)");
    };
    let target = match Target::parse_authority(&authority, None) {
        Ok(target) => target,
        Err(err) => return respond::malformed(&err),
    };
    let side_doors =
        SideDoors { upgrade: headers::is_upgrade(req.headers()), ..SideDoors::default() };
    // With `mitm`, limited mode terminates the tunnel and decides every request inside it
    // again (mitm.rs), so the engine admits it as inspected. In full mode a tunnel stays a
    // tunnel.
    let attempt = Attempt::new(Protocol::HttpConnect, target.clone(), Some(peer))
        .method("CONNECT")
        .side_doors(side_doors)
        .inspectable(shared.settings.mitm.is_some())
        .must_inspect(shared.settings.broker.as_ref().is_some_and(|b| b.binds(&target)));
    let cx = Blocked {
        target: &target,
        protocol: Protocol::HttpConnect.as_str(),
        method: "CONNECT",
        mode: Mode::Full,
    };
    let mut admission = match shared.engine.admit(attempt).await {
        Ok(admission) => admission,
        // Limited mode without interception: say how reads could get through.
        Err(Refusal::Blocked { reason: Reason::MethodNotAllowed, mode, detail: None })
            if shared.settings.mitm.is_none() =>
        {
            let hint = "limited mode refuses tunnels it cannot read; with mitm = true proxyd \
                        reads HTTPS and lets GET, HEAD and OPTIONS through";
            let refusal = Refusal::Blocked {
                reason: Reason::MethodNotAllowed,
                mode,
                detail: Some(hint.to_owned()),
            };
            return respond::refusal(&refusal, &cx);
        }
        Err(refusal) => return respond::refusal(&refusal, &cx),
    };
    if admission.inspected()
        && let Some(ca) = shared.settings.mitm.clone()
    {
        return mitm::open(shared, ca, admission, req, target, tunnels).await;
    }
    let stream = match shared.settings.upstream.for_target(true, &target) {
        // Through the upstream proxy: it resolves the name (SPEC §7.6).
        Some(proxy) => {
            let connected = match admission.dial_upstream(&proxy.endpoint).await {
                Ok(connected) => connected,
                Err(refusal) => return respond::refusal(&refusal, &cx),
            };
            match origin::tunnel_via(shared, connected.stream, proxy, &target).await {
                Ok(stream) => stream,
                Err(()) => {
                    return respond::refusal(&admission.fail(Failure::UpstreamProxy), &cx);
                }
            }
        }
        None => match admission.dial().await {
            Ok(connected) => connected.stream,
            Err(refusal) => return respond::refusal(&refusal, &cx),
        },
    };
    let lease = match admission.admit() {
        Ok(lease) => lease,
        Err(refusal) => return respond::refusal(&refusal, &cx),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = shared.settings.idle_timeout;
    let guard = track_tunnel(shared, tunnels);
    tokio::spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            // hyper hands over any bytes the client pipelined after the head (SPEC §7.3).
            Ok(upgraded) => {
                let client = upgraded_side(upgraded, |io: TokioIo<Clocked<TcpStream>>| {
                    io.into_inner().into_inner()
                });
                let spliced = lease.splice(client, Side::tcp(stream), idle).await;
                let (up, down) = (spliced.a_to_b, spliced.b_to_a);
                match spliced.end {
                    RelayEnd::Failed(err) => {
                        tracing::debug!(up, down, error = %err, "tunnel ended with an error");
                    }
                    _ => tracing::debug!(up, down, "tunnel closed"),
                }
            }
            Err(err) => tracing::debug!(error = %err, "connect upgrade failed"),
        }
    });
    let mut response = Response::new(respond::empty());
    *response.status_mut() = StatusCode::OK;
    response
}

/// One end of a relay from a hyper upgrade: the TCP socket under it when hyper's I/O is `T`
/// (so it can be relayed without copies), with the bytes hyper already read from it;
/// otherwise the upgraded stream itself (an upgrade inside an intercepted tunnel, or to a TLS
/// origin), which is copied.
pub(crate) fn upgraded_side<T>(upgraded: Upgraded, socket: impl FnOnce(T) -> TcpStream) -> Side
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    match upgraded.downcast::<T>() {
        Ok(parts) => Side::tcp_with_pending(socket(parts.io), Vec::from(parts.read_buf)),
        Err(upgraded) => Side::io(TokioIo::new(upgraded)),
    }
}
