//! `CONNECT` (RFC 1928 §4, SPEC §6): admitted and dialled through the one admission path, and
//! only then answered success, with the address the upstream connection is bound to; then
//! relayed under the lease.

use std::net::SocketAddr;

use fast_socks5::consts;
use proxyd_net::{Attempt, Failure, Lease, RelayEnd, Side, Tracked};
use proxyd_policy::{Protocol, Target};
use tokio::net::TcpStream;

use crate::error::refusal_reply;
use crate::server::Shared;
use crate::wire::{UNSPECIFIED, send_reply};

/// Relays an opened tunnel under its lease until it ends.
pub(crate) async fn relay(shared: &Shared, open: Open) {
    let Open { lease, client, upstream, peer, _tunnel } = open;
    let idle = shared.settings.idle_timeout;
    let spliced = lease.splice(Side::tcp(client), Side::tcp(upstream), idle).await;
    let (up, down) = (spliced.a_to_b, spliced.b_to_a);
    match spliced.end {
        RelayEnd::Failed(error) => {
            tracing::debug!(up, down, %peer, %error, "tunnel ended with an error");
        }
        _ => tracing::debug!(up, down, %peer, "tunnel closed"),
    }
}

/// An admitted, dialled and answered tunnel, ready to relay.
pub(crate) struct Open {
    lease: Lease,
    client: TcpStream,
    upstream: TcpStream,
    /// The upstream's address.
    peer: SocketAddr,
    _tunnel: (Tracked, Tracked),
}

/// Decides, dials and answers; `None` when the request was refused, or intercepted and
/// served.
pub(crate) async fn open(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    target: Target,
) -> Option<Open> {
    let limit = shared.settings.handshake_timeout;
    // Limited mode refuses every SOCKS5 command here (`method_not_allowed`, SPEC §6.2).
    let intercept = shared.settings.interceptor.clone().filter(|_| target.port == 443);
    let attempt =
        Attempt::new(Protocol::Socks5, target, Some(peer)).inspectable(intercept.is_some());
    let admitted = match shared.engine.admit(attempt).await {
        Ok(mut admission) if admission.inspected() && intercept.is_some() => {
            let interceptor = intercept?;
            if let Err(refusal) = interceptor.prepare(&mut admission).await {
                send_reply(&mut client, refusal_reply(&refusal), UNSPECIFIED, limit).await;
                return None;
            }
            let _tunnel = (shared.tunnels.track(), shared.engine.lifecycle().track());
            if send_reply(&mut client, consts::SOCKS5_REPLY_SUCCEEDED, UNSPECIFIED, limit).await {
                interceptor.serve(admission, client).await;
            }
            return None;
        }
        Ok(mut admission) => admission.dial().await.map(|connected| (admission, connected)),
        Err(refusal) => Err(refusal),
    };
    let (mut admission, connected) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            send_reply(&mut client, refusal_reply(&refusal), UNSPECIFIED, limit).await;
            return None;
        }
    };
    // RFC 1928 §6: BND.ADDR/BND.PORT are the address the server assigned to connect to the
    // target, i.e. the upstream socket's local address.
    let bound = match connected.stream.local_addr() {
        Ok(bound) => bound,
        Err(error) => {
            tracing::debug!(%error, "upstream socket has no local address");
            let refusal = admission.fail(Failure::ConnectUnreachable);
            send_reply(&mut client, refusal_reply(&refusal), UNSPECIFIED, limit).await;
            return None;
        }
    };
    let lease = match admission.admit() {
        Ok(lease) => lease,
        Err(refusal) => {
            send_reply(&mut client, refusal_reply(&refusal), UNSPECIFIED, limit).await;
            return None;
        }
    };
    // Counted before the client hears of it, so a client that saw the reply sees the count.
    let _tunnel = (shared.tunnels.track(), shared.engine.lifecycle().track());
    if !send_reply(&mut client, consts::SOCKS5_REPLY_SUCCEEDED, bound, limit).await {
        return None;
    }
    Some(Open { lease, client, upstream: connected.stream, peer: connected.peer, _tunnel })
}
