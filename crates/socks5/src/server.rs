//! The listener: accept loop, one handshake per client under `handshake_timeout`, dispatch on
//! the command, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use fast_socks5::consts;
use proxyd_lifecycle::accept_loop;
use proxyd_net::{Connections, Engine};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};

use crate::error::Socks5Error;
use crate::wire::{self, Command, UNSPECIFIED};
use crate::{Settings, connect, udp};

/// State shared by every connection of one listener.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) settings: Settings,
    /// Client connections, from accept to close.
    pub(crate) connections: Connections,
    /// Open tunnels and UDP associations (a subset of the accept loop's connections), for the
    /// drain log and metrics.
    pub(crate) tunnels: Connections,
}

/// The SOCKS5 listener.
#[derive(Clone)]
pub struct Socks5Proxy {
    shared: Arc<Shared>,
}

impl Socks5Proxy {
    pub fn new(engine: Engine, settings: Settings) -> Socks5Proxy {
        let shared = Shared {
            engine,
            settings,
            connections: Connections::new(),
            tunnels: Connections::new(),
        };
        Socks5Proxy { shared: Arc::new(shared) }
    }

    /// Open client connections (for metrics).
    pub fn connections(&self) -> Connections {
        self.shared.connections.clone()
    }

    /// Open `CONNECT` tunnels and UDP associations (for metrics).
    pub fn tunnels(&self) -> Connections {
        self.shared.tunnels.clone()
    }

    /// Serves until the lifecycle stops; connections, tunnels and UDP associations are then
    /// drained and closed by the lifecycle's one shutdown (SPEC §7.5).
    pub async fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let handler = move |stream: TcpStream, peer: SocketAddr| {
            serve_connection(shared.clone(), stream, peer)
        };
        accept_loop(
            listener,
            self.shared.settings.max_connections,
            self.shared.engine.lifecycle(),
            self.shared.connections.clone(),
            handler,
        )
        .await;
    }
}

/// One client until it ends, or until the lifecycle closes: a request still being decided,
/// resolved or dialled then is dropped with it, and nothing is dialled after shutdown.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let closing = shared.engine.lifecycle().closing();
    // Boxed, so that the handshake, the decision and the dial are freed before a tunnel
    // relays: the relay keeps this task for as long as the tunnel is open. The relay ends
    // with the lifecycle's close by itself (its lease's `ended`).
    let opened = tokio::select! {
        opened = Box::pin(handle_connection(&shared, stream, peer)) => opened,
        () = closing => {
            tracing::debug!("socks5 connection closed by shutdown");
            None
        }
    };
    if let Some(open) = opened {
        connect::relay(&shared, open).await;
    }
}

/// Negotiation and request under one `handshake_timeout`, then the command; a `CONNECT`
/// comes back opened, to be relayed.
async fn handle_connection(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<connect::Open> {
    let limit = shared.settings.handshake_timeout;
    let deadline = Instant::now() + limit;
    match timeout_at(deadline, wire::negotiate(&mut stream)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%error, "greeting refused");
            return None;
        }
        Err(_elapsed) => {
            tracing::debug!("greeting timed out");
            return None;
        }
    }
    let request = match timeout_at(deadline, wire::read_request(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            refuse(&mut stream, &error, limit).await;
            return None;
        }
        Err(_elapsed) => {
            refuse(&mut stream, &Socks5Error::Timeout, limit).await;
            return None;
        }
    };
    match request.command {
        Command::Connect => match request.target() {
            Ok(target) => return connect::open(shared, stream, peer, target).await,
            Err(error) => refuse(&mut stream, &error, limit).await,
        },
        Command::UdpAssociate if shared.settings.enable_udp => {
            udp::handle(shared, stream, peer, &request.addr).await;
        }
        Command::UdpAssociate => {
            tracing::debug!("udp associate refused: disabled");
            let code = consts::SOCKS5_REPLY_COMMAND_NOT_SUPPORTED;
            wire::send_reply(&mut stream, code, UNSPECIFIED, limit).await;
        }
    }
    None
}

/// Answers a request that failed before any decision; nothing is recorded, as for a malformed
/// HTTP request: there is no target to record.
async fn refuse(stream: &mut TcpStream, error: &Socks5Error, limit: std::time::Duration) {
    tracing::debug!(%error, "request refused");
    wire::send_reply(stream, error.reply_code(), UNSPECIFIED, limit).await;
}
