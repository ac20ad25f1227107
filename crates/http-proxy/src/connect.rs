//! `CONNECT` tunnels (SPEC §7.3): decide, dial, and only then answer 200.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proxyd_net::{Attempt, Connected, Connections, Outcome, splice};
use proxyd_policy::{Decision, Mode, Protocol, SideDoors, Target};

use crate::origin::{self, Failure};
use crate::respond::{self, Blocked};
use crate::server::{Shared, refuse, track_tunnel};
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
    let engine = &shared.engine;
    let attempt = Attempt {
        protocol: Protocol::HttpConnect,
        target: &target,
        method: Some("CONNECT"),
        client: Some(peer),
        side_doors: SideDoors {
            upgrade: headers::is_upgrade(req.headers()),
            ..SideDoors::default()
        },
    };
    let mode = engine.mode();
    let cx = Blocked {
        target: &target,
        protocol: Protocol::HttpConnect.as_str(),
        method: "CONNECT",
        mode,
    };
    // Limited mode with `mitm`: proxyd terminates the tunnel and decides every request inside
    // it again (mitm.rs), so the tunnel is not opaque. In full mode a tunnel stays a tunnel.
    let intercept = shared.settings.mitm.clone().filter(|_| mode == Mode::Limited);
    let decision = match intercept {
        Some(_) => engine.decide_inspected(&attempt).await,
        None => engine.decide(&attempt).await,
    };
    if let Decision::Block(reason) = decision {
        engine.record(engine.event(&attempt, Outcome::Blocked(reason.clone())));
        return respond::blocked(&reason, &cx);
    }
    if let Some(ca) = intercept {
        return mitm::open(shared, ca, peer, req, target, tunnels).await;
    }
    let connected = match shared.settings.upstream.for_target(true, &target) {
        // Through the upstream proxy: it resolves the name (SPEC §7.6).
        Some(proxy) => {
            let via = async {
                let connected = origin::dial_proxy(shared, proxy).await?;
                let stream = origin::tunnel_via(shared, connected.stream, proxy, &target).await?;
                Ok::<_, Failure>(Connected { stream, ..connected })
            };
            match via.await {
                Ok(connected) => connected,
                Err(failure) => return failure.respond(shared, &attempt, &cx),
            }
        }
        None => match engine.dial(&target).await {
            Ok(connected) => connected,
            Err(err) => return refuse(shared, &attempt, &err, &cx),
        },
    };
    let mut event = engine.event(&attempt, Outcome::Allowed);
    event.dns_time = Some(connected.dns_time);
    event.connect_time = Some(connected.connect_time);
    engine.record(event);

    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = shared.settings.idle_timeout;
    let closed = engine.tunnel_closed();
    let guard = track_tunnel(shared, tunnels);
    let engine = engine.clone();
    tokio::spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                // hyper hands over any bytes the client pipelined after the head (SPEC §7.3).
                match splice(TokioIo::new(upgraded), connected.stream, idle, closed).await {
                    Ok((up, down)) => {
                        tracing::debug!(up, down, "tunnel closed");
                        engine.record_tunnel_bytes(Protocol::HttpConnect, up, down);
                    }
                    Err(err) => tracing::debug!(error = %err, "tunnel ended with an error"),
                }
            }
            Err(err) => tracing::debug!(error = %err, "connect upgrade failed"),
        }
    });
    let mut response = Response::new(respond::empty());
    *response.status_mut() = StatusCode::OK;
    response
}
