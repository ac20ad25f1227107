//! proxyd's one admission and egress path, shared by every listener.
//!
//! This crate owns everything between "a listener parsed a destination" and "bytes flow":
//! - `admission`: [`Engine::admit`], the only place that knows the order of the steps (one
//!   snapshot, decide, resolve, check, dial, one event), the [`Admission`] that alone can dial
//!   or open, the [`Refusal`] a listener presents, and the [`Lease`] every live exchange runs
//!   under;
//! - `engine`: the live [`Engine`]: policy and mode snapshots, the decider hook, decision
//!   events, and the registry of leases that every reload and mode switch re-checks;
//! - `dial`: the [`Dialer`] (SPEC §6 steps 7–8, §7.1): resolve once under `dns_timeout`, check
//!   every answer, connect only to those checked addresses, happy-eyeballs style;
//! - `unix`: the Unix-socket egress, to the socket pinned at load only;
//! - `udp`: the SOCKS5 UDP sockets: the client-facing relay and the outbound sockets, which
//!   send only along an admitted [`UdpRoute`];
//! - `resolve`: the injectable [`Resolver`] ([`SystemResolver`], an asynchronous DNS client, in
//!   production; [`StaticResolver`] in tests); `lookups`: coalescing and per-client shares of
//!   every lookup, so one client cannot starve the others;
//! - `splice`: the tunnel [`Relay`]: `splice(2)` through pooled pipes between two TCP sockets
//!   on Linux, a copy through borrowed buffers otherwise, with half-close and one idle clock.
//!
//! It must not parse protocols or present refusals on a wire (status codes, `x-proxy-error`,
//! SOCKS replies belong to the listeners), nor hand a host name to anything that resolves it
//! again. `clippy.toml` forbids `TcpStream::connect`, `UnixStream::connect`,
//! `UdpSocket::bind`/`send_to`/`connect` and `lookup_host` everywhere; the scoped exceptions
//! live in `dial.rs`, `unix.rs`, `udp.rs` and `resolve.rs`. It installs no global state.
//!
//! # Decisions
//! - **One snapshot per attempt**: the decision and the resolved-address check use the same
//!   policy and mode, read once in [`Engine::admit`].
//! - **Leases**: a change of policy or mode re-checks every live exchange before it returns
//!   (synchronously, under one lock), and revokes those it would refuse; a decider's allow
//!   stands for the exchange's life, the method policy and the lists do not.
//! - **Happy eyeballs** (RFC 8305 §4–5): addresses are interleaved by family starting with the
//!   resolver's first answer's family; the next attempt starts [`CONNECTION_ATTEMPT_DELAY`]
//!   (250 ms) after the previous one, or at once when an attempt fails. The whole race is
//!   bounded by `connect_timeout`.
//! - **No second resolution**: `localhost` names and IP literals use `Host::fixed_addrs()` and
//!   never reach the resolver. Answers are deduplicated, order kept.
//! - **Relay** polls both directions in the caller's task. A direction holds a pipe (zero
//!   copy) or a [`SPLICE_BUFFER_SIZE`] buffer (copy) only while bytes flow; both come from
//!   pools of at most [`RELAY_POOL_SIZE`] in the engine's [`Relay`], which lets at most
//!   [`MAX_PIPES`] pipes exist and copies a chunk when none is to be had.

mod admission;
mod ask;
mod dial;
mod engine;
mod error;
mod happy_eyeballs;
mod lookups;
mod resolve;
mod splice;
mod stub;
mod udp;
#[cfg(unix)]
mod unix;

pub use admission::{Admission, Attempt, Failure, HttpFacts, Lease, Refusal, RuleEdits};
pub use ask::{Answer, Asker, Question};
pub use dial::{CONNECTION_ATTEMPT_DELAY, Checked, Connected, Dialer, OperatorEndpoint};
pub use engine::{
    Decider, DeciderAnswer, DeciderRequest, Engine, EngineBuilder, Event, EventSink, Outcome,
};
pub use lookups::{CLIENT_SHARE, MAX_LOOKUPS};
pub use proxyd_lifecycle::{Connections, Lifecycle, Tracked};
pub use resolve::{BoxFuture, Resolver, StaticResolver, SystemResolver};

/// A listener that can terminate a tunnel and decide each request inside it (the HTTP
/// listener's interception), offered to another listener (SOCKS5) through `cli`, since no
/// listener crate depends on another.
pub trait Interceptor: Send + Sync + 'static {
    /// What must hold before the tunnel is answered (the CA covers the host, the name resolves
    /// to allowed addresses); a failure is settled on the admission.
    fn prepare<'a>(&'a self, admission: &'a mut Admission) -> BoxFuture<'a, Result<(), Refusal>>;

    /// Serves the tunnel on `stream`; the admission is settled when the TLS handshake ends.
    fn serve(&self, admission: Admission, stream: tokio::net::TcpStream) -> BoxFuture<'static, ()>;
}
pub use splice::{
    MAX_PIPES, RELAY_POOL_SIZE, Relay, RelayEnd, RelayPath, RelayStats, SPLICE_BUFFER_SIZE, Side,
    Spliced,
};
pub use udp::{Association, UDP_BATCH, UdpRoute};
