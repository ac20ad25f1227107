//! `CONNECT` (RFC 1928 §4, SPEC §6): decide, dial through the egress path, and only then reply
//! success, with the address the upstream connection is bound to; then splice.

use std::net::SocketAddr;

use fast_socks5::consts;
use proxyd_net::{Attempt, Outcome, splice};
use proxyd_policy::{Decision, Protocol, SideDoors, Target};
use tokio::net::TcpStream;

use crate::server::Shared;
use crate::wire::{UNSPECIFIED, send_reply};

pub(crate) async fn handle(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    target: Target,
) {
    let engine = &shared.engine;
    let limit = shared.settings.handshake_timeout;
    let attempt = Attempt {
        protocol: Protocol::Socks5,
        target: &target,
        method: None,
        client: Some(peer),
        side_doors: SideDoors::default(),
    };
    // Limited mode blocks every SOCKS5 command here (`method_not_allowed`, SPEC §6.2).
    if let Decision::Block(reason) = engine.decide(&attempt).await {
        engine.record(engine.event(&attempt, Outcome::Blocked(reason.clone())));
        send_reply(&mut client, reason.socks_reply(), UNSPECIFIED, limit).await;
        return;
    }
    let connected = match engine.dial(&target).await {
        Ok(connected) => connected,
        Err(error) => {
            let outcome = match error.reason() {
                Some(reason) => Outcome::Blocked(reason.clone()),
                None => Outcome::Failed(error.code().to_owned()),
            };
            engine.record(engine.event(&attempt, outcome));
            send_reply(&mut client, error.socks_reply(), UNSPECIFIED, limit).await;
            return;
        }
    };
    let mut event = engine.event(&attempt, Outcome::Allowed);
    event.dns_time = Some(connected.dns_time);
    event.connect_time = Some(connected.connect_time);
    engine.record(event);

    // RFC 1928 §6: BND.ADDR/BND.PORT are the address the server assigned to connect to the
    // target, i.e. the upstream socket's local address.
    let bound = match connected.stream.local_addr() {
        Ok(bound) => bound,
        Err(error) => {
            tracing::debug!(%error, "upstream socket has no local address");
            let code = consts::SOCKS5_REPLY_GENERAL_FAILURE;
            send_reply(&mut client, code, UNSPECIFIED, limit).await;
            return;
        }
    };
    // Counted before the client hears of it, so a client that saw the reply sees the count.
    let _tunnel = shared.tunnels.track();
    if !send_reply(&mut client, consts::SOCKS5_REPLY_SUCCEEDED, bound, limit).await {
        return;
    }
    let idle = shared.settings.idle_timeout;
    match splice(client, connected.stream, idle, engine.tunnel_closed()).await {
        Ok((up, down)) => {
            tracing::debug!(up, down, peer = %connected.peer, "tunnel closed");
            engine.record_tunnel_bytes(proxyd_policy::Protocol::Socks5, up, down);
        }
        Err(error) => tracing::debug!(%error, "tunnel ended with an error"),
    }
}
