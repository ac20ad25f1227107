//! proxyd's network policy: pure, synchronous decisions about where traffic may go.
//!
//! This crate owns the meaning of a destination and of a rule:
//! - [`target`]: the one parser every entry point uses to turn what a client sent into a
//!   canonical [`Target`] (SPEC §3);
//! - [`pattern`] and [`pattern_set`]: the `allowed_domains`/`denied_domains` grammar and its
//!   compiled, constant-cost form (SPEC §4);
//! - [`local`]: the local/private address classifier (SPEC §5.1);
//! - [`decision`]: the decision procedure and its reasons (SPEC §6);
//! - [`rules`]: request rules by method, path, query and headers, for hosts whose requests
//!   proxyd reads, and the path normal form they match.
//!
//! It must not know about tokio, sockets, DNS, files, clocks or serde: resolved addresses and
//! the current mode arrive as arguments, so every rule is testable as a plain function call.
//! The `xtask` tidy test enforces this.

pub mod decision;
pub mod local;
pub mod pattern;
pub mod pattern_set;
pub mod rules;
pub mod target;

pub use decision::{
    Consult, Decision, FileId, Mode, Policy, Protocol, Reason, Request, Secrets, SideDoors,
    UnixSocketRule, Verdict,
};
pub use local::{embedded_v4, is_local};
pub use pattern::{ListKind, Pattern, PatternError, PatternErrorKind, Subtree};
pub use pattern_set::{MatchKind, PatternSet};
pub use rules::{
    HeaderMatcher, HeaderTest, Injection, PathError, PathPattern, QueryMatcher, QueryTest,
    RequestFacts, Rule, RuleAction, RuleError, RuleErrorKind, RuleSet, RuleVerdict, normalize_path,
};
pub use target::{AbsoluteUrl, Host, Scheme, Target, TargetError};

#[cfg(test)]
mod tests;
