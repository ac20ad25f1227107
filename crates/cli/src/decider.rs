//! The policy decider hook of SPEC §9: an embedding application's async function, consulted
//! only for allowlist misses (`not_allowed`) and bounded by `decider_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use proxyd_net::{BoxFuture, DeciderAnswer, DeciderRequest};

/// What the decider is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicyRequest {
    /// `http`, `https`, `http-connect`, `socks5`, `socks5-udp`.
    pub protocol: String,
    /// The destination host in canonical form (lowercase name, or an address without brackets).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The client's address on the listener, when it has one (not for the library's own calls).
    pub client_addr: Option<SocketAddr>,
    /// The HTTP method; `None` for SOCKS5.
    pub method: Option<String>,
    /// The command line the embedding application runs behind this proxy, when it said so
    /// (`proxyd exec` passes the child's command line).
    pub command: Option<String>,
    /// The embedding application's own hint from its exec policy, passed through untouched.
    pub exec_policy_hint: Option<String>,
}

/// The decider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkDecision {
    /// Allow the request (local and private destinations are still refused unless allowlisted).
    Allow,
    /// Deny, with a reason that is reported as-is (`x-proxy-error: blocked-by-policy`).
    Deny {
        /// The reason, reported in the 403 body and the blocked log.
        reason: String,
    },
    /// Ask a person (`GET /pending` and `POST /pending/ID`, or `proxyd exec --ask`'s prompt);
    /// with `on_miss = "deny"` (no asker) this is a deny (`not_allowed`).
    Ask,
}

impl NetworkDecision {
    /// A [`NetworkDecision::Deny`] with `reason`.
    pub fn deny(reason: impl Into<String>) -> NetworkDecision {
        NetworkDecision::Deny { reason: reason.into() }
    }
}

/// An async policy hook. Implemented for every `Fn(NetworkPolicyRequest) -> impl Future`.
pub trait NetworkPolicyDecider: Send + Sync + 'static {
    /// Decides one request that the allowlist did not decide (SPEC §9).
    fn decide(&self, request: NetworkPolicyRequest) -> BoxFuture<'static, NetworkDecision>;
}

impl<F, Fut> NetworkPolicyDecider for F
where
    F: Fn(NetworkPolicyRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = NetworkDecision> + Send + 'static,
{
    fn decide(&self, request: NetworkPolicyRequest) -> BoxFuture<'static, NetworkDecision> {
        Box::pin(self(request))
    }
}

/// Adapts the public decider to the engine's, adding what the embedder supplied.
pub(crate) struct Adapter {
    pub(crate) decider: Arc<dyn NetworkPolicyDecider>,
    pub(crate) command: Option<String>,
    pub(crate) exec_policy_hint: Option<String>,
}

impl proxyd_net::Decider for Adapter {
    fn decide(&self, request: DeciderRequest) -> BoxFuture<'static, DeciderAnswer> {
        let request = NetworkPolicyRequest {
            protocol: request.protocol.as_str().to_owned(),
            host: request.host,
            port: request.port,
            client_addr: request.client_addr,
            method: request.method,
            command: self.command.clone(),
            exec_policy_hint: self.exec_policy_hint.clone(),
        };
        let answer = self.decider.decide(request);
        Box::pin(async move {
            match answer.await {
                NetworkDecision::Allow => DeciderAnswer::Allow,
                NetworkDecision::Deny { reason } => DeciderAnswer::Deny(reason),
                NetworkDecision::Ask => DeciderAnswer::Ask,
            }
        })
    }
}
