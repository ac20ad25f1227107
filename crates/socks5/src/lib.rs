//! proxyd's SOCKS5 listener (SPEC §1, §6.1, RFC 1928): `CONNECT` and `UDP ASSOCIATE`, decided
//! by the same policy and dialled through the same egress path as HTTP.
//!
//! This crate owns the wire side of SOCKS5:
//! - `server`: the accept loop, the per-connection handshake under `handshake_timeout`, the
//!   dispatch on the command, graceful shutdown;
//! - `wire`: method negotiation (fast-socks5's protocol-level `Socks5ServerProtocol`), the
//!   request reader and the reply writer (RFC 1928 §4–6, written here for exact reply codes);
//! - `connect`: `CONNECT`: admit and dial, reply with the real bound address, relay;
//! - `udp`: `UDP ASSOCIATE`: the relay loop of one association (RFC 1928 §7);
//! - `udp_state`: what an association remembers: its client, its per-target decisions and
//!   the peers it sent to;
//! - `error`: `Socks5Error`, the client's faults, and the reply code of each.
//! - `fuzzing` (`#[doc(hidden)]`, not an API): the request and UDP header readers over a byte
//!   slice, for the fuzz targets in `fuzz/`.
//!
//! It must not decide policy or dial by itself: every destination goes through
//! `proxyd_policy::Target`'s parser and [`proxyd_net::Engine::admit`], every TCP connection
//! through the admission it returns, and every datagram through `proxyd_net::Association`,
//! which sends only along admitted routes. It never uses fast-socks5's high-level server, which resolves and dials by
//! itself. It installs no global state.
//!
//! # Decisions
//! - **Authentication**: "no authentication" (0x00) only; a client that does not offer it
//!   gets `05 FF` and is closed (RFC 1928 §3).
//! - **Phases**: before a method is selected no reply can be framed, so a bad greeting is
//!   closed silently. After it, every failure gets a reply (0x01 malformed or truncated,
//!   0x07 `BIND` and unknown commands, 0x08 unknown address types) and the connection closes.
//! - **Limited mode** refuses `CONNECT` through the normal decision (`method_not_allowed`,
//!   0x02) and `UDP ASSOCIATE` up front with the same reason; both are recorded. A `CONNECT` to
//!   port 443 is the exception when the HTTP listener can intercept (`mitm`): it is answered
//!   success (BND.ADDR all zeros, since nothing is dialled yet) and served like an intercepted
//!   HTTPS `CONNECT`, every request inside decided on its own. The same holds in every mode for
//!   hosts with request rules. `BIND` and
//!   unknown commands are not commands proxyd carries out in any mode: 0x07.
//! - **UDP**: the relay binds to the IP the client reached the listener on; only the TCP
//!   peer's IP may send, from the port named in the request or, when that is 0, from the port
//!   of its first datagram. Decisions (allowed, blocked or failed) are cached per target for
//!   5 s (`UDP_DECISION_TTL`) within one generation of policy and mode: every reload and mode
//!   switch ends them all at once, and a switch to limited ends the association.

mod connect;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod server;
mod udp;
mod udp_state;
mod wire;

use std::time::Duration;

pub use server::Socks5Proxy;

/// Listener settings (SPEC §2.2).
#[derive(Clone)]
pub struct Settings {
    /// Bounds the greeting and the request, and each reply write.
    pub handshake_timeout: Duration,
    /// Ends a tunnel, or a UDP association, after this long without traffic either way.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Whether `UDP ASSOCIATE` is served (`enable_socks5_udp`); off, it is answered 0x07.
    pub enable_udp: bool,
    /// The HTTP listener's interception: a `CONNECT` to port 443 is intercepted like an HTTPS
    /// `CONNECT` (limited mode, hosts with rules). `None` refuses those as opaque tunnels.
    pub interceptor: Option<std::sync::Arc<dyn proxyd_net::Interceptor>>,
}
