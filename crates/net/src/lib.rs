//! proxyd's one egress path, shared by every listener.
//!
//! This crate owns everything between "the policy allowed this target" and "bytes flow":
//! - `resolve`: the injectable [`Resolver`] ([`SystemResolver`] in production,
//!   [`StaticResolver`] in tests);
//! - `dial`: the one [`Dialer`] (SPEC §6 steps 7–8, §7.1): resolve once under `dns_timeout`,
//!   check every answer with `Policy::check_resolved`, then connect only to those checked
//!   `SocketAddr`s, happy-eyeballs style, under `connect_timeout`;
//! - `engine`: the live [`Engine`] every listener decides through: policy and mode snapshots,
//!   the policy decider hook, decision events, and the signals that close tunnels;
//! - `error`: [`DialError`] and how each failure is reported (SPEC §6.1);
//! - `splice`: [`splice()`], the bidirectional copy with half-close and one idle clock (SPEC §7.3);
//! - `accept`: [`accept_loop`], the bounded accept loop, and [`Connections`] tracking (SPEC §7.5).
//!
//! It must not decide policy (it only calls `proxyd-policy`), parse protocols, or hand a host
//! name to anything that resolves it again: the only name lookup is [`Resolver::resolve`], and
//! the only connect call takes a `SocketAddr` that `check_resolved` has seen. `clippy.toml`
//! forbids `TcpStream::connect` and `lookup_host` everywhere; the two scoped exceptions live in
//! `dial.rs` and `resolve.rs`. It installs no global state.
//!
//! # Decisions
//! - **Happy eyeballs** (RFC 8305 §4–5): addresses are interleaved by family starting with the
//!   resolver's first answer's family; the next attempt starts [`CONNECTION_ATTEMPT_DELAY`]
//!   (250 ms, the RFC's recommended value) after the previous one, or at once when an attempt
//!   fails. The first success wins and the other attempts are dropped. All attempts run in the
//!   caller's task (no spawning), and the whole race is bounded by `connect_timeout`. When
//!   every attempt fails, the last error decides between `Refused` and `Unreachable`.
//! - **No second resolution**: `localhost` names and IP literals use `Host::fixed_addrs()` and
//!   never reach the resolver. Answers are deduplicated, order kept.
//! - **Splice** polls both directions in the caller's task. Each direction starts with a
//!   [`SPLICE_INITIAL_BUFFER_SIZE`] (4 KiB) buffer and moves to [`SPLICE_BUFFER_SIZE`]
//!   (64 KiB) the first time a read fills it, so idle tunnels stay small and bulk transfers
//!   are not bound by syscall count. The idle clock is an `Instant` of last progress checked
//!   when one timer fires, so no timer is re-armed per chunk.
//! - **Accept loop**: a permit is taken before `accept`, so excess clients wait in the kernel
//!   backlog rather than in proxyd's memory. Resource exhaustion (EMFILE, ENFILE, ENOBUFS,
//!   ENOMEM) backs off 5 ms doubling to 1 s. Accepted sockets get `TCP_NODELAY`.

mod accept;
mod dial;
mod engine;
mod error;
mod happy_eyeballs;
mod resolve;
mod splice;

pub use accept::{Connections, Tracked, accept_loop, drain};
pub use dial::{CONNECTION_ATTEMPT_DELAY, Checked, Connected, Dialer};
pub use engine::{
    Attempt, Decider, DeciderAnswer, DeciderRequest, Engine, EngineBuilder, Event, EventSink,
    Outcome,
};
pub use error::DialError;
pub use resolve::{BoxFuture, Resolver, StaticResolver, SystemResolver};
pub use splice::{SPLICE_BUFFER_SIZE, SPLICE_INITIAL_BUFFER_SIZE, splice};
