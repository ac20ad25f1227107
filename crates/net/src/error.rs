//! Why a dial failed, inside the egress path. The admission path turns each into a
//! [`crate::Refusal`]: a policy block, or a [`crate::Failure`]. No variant carries an I/O
//! error: its text must never reach a client, so the dialler logs it and keeps only its kind.

use proxyd_policy::Reason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DialError {
    /// A resolved (or literal) address failed `Policy::check_resolved`: `denied`,
    /// `not_allowed_local` or `self_connection`; with the addresses the name resolved to.
    Blocked(Reason, Vec<std::net::IpAddr>),
    /// The lookup failed or returned no address.
    DnsFailed,
    /// The lookup did not answer within `dns_timeout`; reported as `dns_failed`.
    DnsTimeout,
    /// Every address refused the connection (the last attempt got a RST).
    Refused,
    /// Every attempt failed with something other than a refusal (no route, host unreachable).
    Unreachable,
    /// No attempt connected within `connect_timeout`.
    Timeout,
}
