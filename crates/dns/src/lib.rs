//! proxyd's DNS service (`dns_url`, off by default): answers `A` and `AAAA` queries only for
//! names the policy allows, over UDP and TCP (RFC 1035 §4.2), so a program that resolves
//! before it connects learns nothing the policy would not let it reach, and a lookup of
//! `secret.attacker.example` leaks nothing: a name that is not allowed is refused without any
//! upstream query.
//!
//! - Every query goes through the one admission path ([`proxyd_net::Engine::admit`], protocol
//!   `dns`): denylist, local names, allowlist, the decider, limited mode alike. The name is
//!   decided as "on any port" (port-scoped entries count). Allowed names are resolved by
//!   proxyd's own resolver (fair, coalesced, exact-name), and the whole answer is refused
//!   when any address is local and not explicitly allowed, as for dialling.
//! - **REFUSED** (not NXDOMAIN) for names the policy does not allow: the name may well exist,
//!   and a negative answer would be cached by resolvers as "no such name" even after the policy
//!   changes. SERVFAIL when an allowed name does not resolve. FORMERR for malformed messages
//!   and for more than one question; REFUSED for other types and classes.
//! - Answers carry a fixed TTL of [`ANSWER_TTL`] seconds (the cap: a reload applies within
//!   it); over UDP an answer that does not fit in 512 bytes is truncated (TC) so the client
//!   asks again over TCP.
//! - At most [`MAX_IN_FLIGHT`] queries are answered at once, at most [`CLIENT_IN_FLIGHT`] of
//!   them for one client IP; past that a query is refused at once, so one client cannot take
//!   the service from the others. Every refusal is a decision event (the blocked log, protocol
//!   `dns`).
//!
//! It must not resolve or dial by itself: it owns the DNS wire (hickory-proto) and the mapping
//! of refusals to response codes. Its own UDP socket is the one `disallowed-methods`
//! exception outside `net` (it only answers the client that asked).

mod server;

pub use server::{ANSWER_TTL, CLIENT_IN_FLIGHT, DnsServer, MAX_IN_FLIGHT, Settings};
