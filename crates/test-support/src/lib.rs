//! Real upstreams and client helpers for proxyd's tests. A dev-dependency only.
//!
//! Owns: servers on `127.0.0.1:0` (or a Unix socket) that record what reached them, a
//! throw-away TLS CA, and raw client helpers. Every server stops when its handle is dropped, and
//! every helper wait is bounded by [`TIMEOUT`], so a hang fails in seconds.
//!
//! Must not: dial anything except from [`connect`] (the test client; the upstream proxy answers
//! by itself), pick a port and rebind it, or install global state (no rustls default provider,
//! no tracing subscriber).
//!
//! The origins ([`HttpOrigin`], [`TlsOrigin`], [`UnixOrigin`]) share these routes:
//!
//! - `/big?n=BYTES` answers `n` bytes of `x`, streamed in 16 KiB frames with a `content-length`
//!   (`&chunked=1` omits it, so the response is chunked);
//! - `/slow?ms=N` waits `N` ms (at most a minute) before answering as below, for drain tests;
//! - `/status/CODE` answers that status (200..=599);
//! - a request with `content-type: application/grpc...` is echoed gRPC-style: its body back,
//!   `content-type: application/grpc`, trailers `grpc-status: 0` and `x-echo-trailers` (the
//!   names of the request's trailers);
//! - anything else answers 200, `content-type: text/plain`, body `origin METHOD TARGET\n`
//!   followed by the request body.
//!
//! [`bypass`] loads the bypass table (`testdata/bypass.toml`), the one list of hostile
//! spellings every layer's tests run.
//!
//! [`BodyCounter`] (plain or TLS) serves no routes: it counts request-body bytes as they
//! arrive, for uploads that must stop part-way. [`tls_connect`] and [`client_hello`] are the
//! TLS client side: a session trusting a CA given as PEM, and a ClientHello to write by hand.

mod body_counter;
pub mod bypass;
mod ca;
mod canary;
mod client;
mod dns;
mod echo;
mod http_origin;
mod record;
mod routes;
mod server;
mod temp;
mod tls_client;
mod tls_origin;
#[cfg(unix)]
mod unix_origin;
mod upgrade;
mod upstream_proxy;

pub use body_counter::BodyCounter;
pub use ca::TestCa;
pub use canary::{Canary, UdpCanary};
pub use client::{ResponseHead, connect, raw_request, read_response_head, read_to_eof};
pub use dns::DnsServer;
pub use echo::{EchoTcp, UdpEcho};
pub use http_origin::HttpOrigin;
pub use record::RecordedRequest;
pub use temp::{TempDir, temp_dir};
pub use tls_client::{client_config_from_pem, client_hello, tls_connect};
pub use tls_origin::TlsOrigin;
#[cfg(unix)]
pub use unix_origin::UnixOrigin;
pub use upgrade::UpgradeOrigin;
pub use upstream_proxy::UpstreamProxy;

/// The bound on every wait in this crate's helpers and servers.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
