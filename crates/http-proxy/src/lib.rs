//! proxyd's HTTP proxy listener (SPEC §7): HTTP/1.1 on hyper; HTTP/2 only inside intercepted
//! tunnels and towards `https://` origins that negotiate it.
//!
//! This crate owns the wire side of HTTP proxying:
//! - `server`: the accept loop, per-connection hyper service (HTTP/1.1, or HTTP/2 for an
//!   intercepted tunnel), graceful shutdown;
//! - `forward`: absolute-form `http://` and `https://` forwarding and relayed upgrades
//!   (SPEC §7.2, §7.4);
//! - `origin`: opening the outgoing connection: direct, via an upstream proxy, or to a Unix
//!   socket (SPEC §7.6, §7.7), HTTP/2 when an `https://` origin negotiates it; `pool`: reuse
//!   of direct ones (HTTP/2 ones shared);
//! - `upstream`: the upstream proxy settings from the environment and `NO_PROXY`;
//! - `connect`: `CONNECT` tunnels (SPEC §7.3);
//! - `mitm`: limited-mode TLS interception (`mitm = true`): a `CONNECT` terminated with a leaf
//!   from `ca` (the in-memory interception CA and its bounded leaf cache), every request
//!   inside decided again and forwarded like an `https://` request;
//! - `headers`: hop-by-hop removal, `Via`, limited-mode side doors;
//! - `broker`: brokered credentials, swapped in request headers on their way to bound hosts;
//! - `idle`: the idle clock of client connections and the head clock of HTTP/1.1 ones
//!   (`header_read_timeout`, `408`);
//! - `exchange`: the clocks of a forwarded exchange (`response_timeout`, body progress);
//! - `leased`: request and response bodies that stop the moment their lease is revoked;
//! - `respond`: blocked and error responses (SPEC §6.1);
//! - `tls`: the rustls client configuration for `https://` origins.
//!
//! It must not decide policy or dial by itself: every target goes through
//! `proxyd_policy::Target`'s parser and [`proxyd_net::Engine::admit`], and every connection
//! (TCP, upstream proxy, Unix socket) through the admission it returns. It maps refusals to
//! status codes and `x-proxy-error` (`respond`). It installs no global state.

mod broker;
mod ca;
mod connect;
mod exchange;
mod forward;
mod headers;
mod idle;
mod leased;
mod mitm;
mod origin;
mod pool;
mod respond;
mod server;
mod tls;
mod upstream;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

pub use broker::{Broker, Credential};
pub use ca::{CaError, CaScope, InterceptCa, LEAF_CACHE_SIZE};
pub use server::HttpProxy;
pub use tls::client_config;
pub use upstream::UpstreamProxies;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Listener settings (SPEC §2.2).
#[derive(Debug, Clone)]
pub struct Settings {
    /// A request head must be complete this long after its first byte (the first request's
    /// after the connection opened); `408` if it started and did not finish.
    pub header_read_timeout: Duration,
    /// One idle clock: a keep-alive connection between requests, and the bodies of a
    /// forwarded exchange, both directions together.
    pub idle_timeout: Duration,
    /// How long a forwarded request waits for its response head once it has been sent
    /// (`504` when it does not come).
    pub response_timeout: Duration,
    pub max_connections: usize,
    /// TLS for `https://` absolute-form requests.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// Upstream proxies from proxyd's environment (empty when `allow_upstream_proxy = false`).
    pub upstream: UpstreamProxies,
    /// The CA that terminates `CONNECT` tunnels where interception is needed: in limited mode
    /// with `mitm = true`, and in every mode for hosts with request rules or brokered
    /// credentials. `None` keeps limited mode refusing every `CONNECT` (SPEC §6.2).
    pub mitm: Option<std::sync::Arc<InterceptCa>>,
    /// `proxyd exec`'s brokered credentials.
    pub broker: Option<std::sync::Arc<Broker>>,
}
