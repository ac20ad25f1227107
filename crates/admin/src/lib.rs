//! proxyd's admin API (SPEC §8): a small hyper HTTP/1.1 server for people and scripts.
//!
//! This crate owns the admin endpoints and their JSON shapes (`routes.rs`), the protections
//! of SPEC §8.3 (`guard.rs`: Host check against DNS rebinding, cross-site refusal, bearer
//! token), the blocked-request ring (`blocked.rs`), and its own accept loop (`server.rs`).
//!
//! It must not reach into the proxy's internals: everything it shows or changes goes through
//! the [`Control`] trait, which the `proxyd` crate implements. It depends on nothing but
//! `proxyd-policy` among proxyd's crates, and installs no global state.

mod blocked;
mod guard;
mod routes;
mod server;

use std::net::SocketAddr;

pub use blocked::{BlockedEntry, BlockedLog};
pub use proxyd_policy::Mode;
pub use server::{AdminServer, Settings};

/// Boxed future returned by [`Control::reload`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One effective config key, as `/config` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    pub key: String,
    pub value: serde_json::Value,
    /// Where the value came from: `default`, `FILE:LINE`, or `-c`.
    pub origin: String,
}

/// A question waiting for a person (`GET /pending`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingQuestion {
    pub id: u64,
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub method: Option<String>,
    pub client: Option<String>,
    /// How long it has waited.
    pub waited_ms: u64,
    /// Requests held on it.
    pub waiting: usize,
}

/// The answers `POST /pending/ID` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingAnswer {
    AllowOnce,
    AllowAlways,
    Deny,
}

/// Why a reload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The new config is invalid; the old one stays in force.
    Invalid(Vec<String>),
    /// A listener address or an on/off switch changed (SPEC §8.2).
    RestartNeeded(Vec<String>),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, lines) = match self {
            ReloadError::Invalid(lines) => ("invalid configuration", lines),
            ReloadError::RestartNeeded(lines) => ("restart needed", lines),
        };
        write!(f, "{what}: {}", lines.join("; "))
    }
}

impl std::error::Error for ReloadError {}

/// What the admin API reads and changes. Implemented by the `proxyd` crate.
pub trait Control: Send + Sync + 'static {
    /// proxyd's version.
    fn version(&self) -> &str;
    fn mode(&self) -> Mode;
    fn set_mode(&self, mode: Mode);
    /// Bound listeners by name (`http`, `socks5`, `admin`).
    fn listeners(&self) -> Vec<(String, SocketAddr)>;
    fn config(&self) -> Vec<ConfigEntry>;
    /// `(allowed, denied)`, normalised.
    fn patterns(&self) -> (Vec<String>, Vec<String>);
    fn blocked(&self) -> &BlockedLog;
    /// Re-reads every config source; on error the running config stays in force. On success,
    /// returns the changed keys that take effect only at the next restart (timeouts and limits
    /// baked into running listeners).
    fn reload(&self) -> BoxFuture<'_, Result<Vec<String>, ReloadError>>;
    /// The metrics in the OpenMetrics text format (the admin API converts them to the Prometheus text format unless asked).
    fn metrics(&self) -> String;

    /// The questions of `on_miss = "ask"` waiting for an answer, oldest first.
    fn pending(&self) -> Vec<PendingQuestion> {
        Vec::new()
    }

    /// Answers a pending question (`allow-once`, `allow-always`, `deny`); `false` when there
    /// is no such question (answered already, or timed out).
    fn answer(&self, _id: u64, _answer: PendingAnswer) -> bool {
        false
    }
}
