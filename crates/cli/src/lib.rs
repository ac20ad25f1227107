//! proxyd as a library: the embeddable [`NetworkProxy`] (SPEC §9), which the `proxyd` binary
//! also uses.
//!
//! This crate is the only one that wires the others together: it turns a validated
//! [`Config`] into an engine, binds the HTTP, SOCKS5 and admin listeners, owns their lifetime,
//! and keeps the live state the admin API reads and changes (`live.rs`: config in force,
//! reloads, blocked log, metrics). Global state (the tracing subscriber, the rustls crypto
//! provider, signal handlers) is installed by the binary in `main.rs`, never by the library.
//! With `mitm = true` the proxy makes its interception CA in memory when it is built
//! ([`NetworkProxy::ca_cert_pem`]); `ca.rs` writes the certificate and `proxyd exec`'s trust
//! bundle, never the key.

#![warn(missing_docs)]

pub mod ca;
mod decider;
pub mod exec;
mod live;
mod metrics;
mod proxy;
mod trust;

pub use decider::{NetworkDecision, NetworkPolicyDecider, NetworkPolicyRequest};
pub use proxy::{Error, NetworkProxy, NetworkProxyBuilder, NetworkProxyHandle};

/// Why each config file of `sources` is not trusted for a reload (writable by group or others,
/// or owned by someone other than this user or root); empty when all are. Reloads refuse while
/// any is.
pub fn untrusted_config_files(sources: &Sources) -> Vec<String> {
    trust::untrusted(sources)
}
pub use proxyd_admin::{BlockedEntry, ReloadError};
pub use proxyd_config::{Config, ConfigErrors, Sources};
pub use proxyd_http_proxy::{Broker, Credential};
pub use proxyd_net::{Answer, Question};
pub use proxyd_net::{CLIENT_SHARE, MAX_LOOKUPS, Resolver, StaticResolver, SystemResolver};
pub use proxyd_policy::Mode;

/// The README's library snippet, compiled as a doctest (`cargo test --doc -p proxyd`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
