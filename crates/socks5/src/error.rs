//! Why a SOCKS5 handshake failed, and the reply each failure gets (RFC 1928 §6, SPEC §6.1):
//! the client's faults ([`Socks5Error`]) and the admission path's refusals
//! ([`refusal_reply`]). Wire presentation lives here, not in `policy` or `net`.

use std::io;

use fast_socks5::consts;
use proxyd_net::{Failure, Refusal};
use proxyd_policy::{Reason, TargetError};

/// The reply code for a refusal (RFC 1928 §6): 0x02 for every policy block (0x01 when the
/// proxy is disabled), 0x04 host unreachable, 0x05 connection refused, 0x06 TTL expired (the
/// conventional answer to a connect timeout), 0x01 for anything else.
pub(crate) fn refusal_reply(refusal: &Refusal) -> u8 {
    match refusal {
        Refusal::Blocked { reason: Reason::ProxyDisabled, .. } => {
            consts::SOCKS5_REPLY_GENERAL_FAILURE
        }
        Refusal::Blocked { .. } => consts::SOCKS5_REPLY_CONNECTION_NOT_ALLOWED,
        Refusal::Failed { failure, .. } => match failure {
            Failure::DnsFailed | Failure::ConnectUnreachable => {
                consts::SOCKS5_REPLY_HOST_UNREACHABLE
            }
            Failure::ConnectRefused => consts::SOCKS5_REPLY_CONNECTION_REFUSED,
            Failure::ConnectTimeout => consts::SOCKS5_REPLY_TTL_EXPIRED,
            _ => consts::SOCKS5_REPLY_GENERAL_FAILURE,
        },
    }
}

/// A failed greeting or request. The variants say what the client did wrong; `Display` is
/// for logs only and is never sent (a SOCKS5 reply is a code, not a text).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Socks5Error {
    /// The greeting failed: wrong version, truncated, or no acceptable method (fast-socks5
    /// has answered `05 FF` for the latter). No reply can be framed before a method is chosen.
    #[error("bad greeting: {0}")]
    Greeting(String),
    /// The request broke RFC 1928 §4: wrong version, non-zero reserved byte, a domain name
    /// that is not UTF-8.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The destination failed the target parser (SPEC §3).
    #[error("malformed target: {0}")]
    Target(#[from] TargetError),
    /// The client closed or reset before the request was complete.
    #[error("truncated request")]
    Truncated,
    /// The request did not arrive within `handshake_timeout`.
    #[error("request timed out")]
    Timeout,
    #[error("unsupported address type {0:#04x}")]
    AddressType(u8),
    /// `BIND` (0x02) or a command RFC 1928 does not define.
    #[error("unsupported command {0:#04x}")]
    Command(u8),
}

impl Socks5Error {
    /// The reply code for a failure after method selection.
    pub(crate) fn reply_code(&self) -> u8 {
        match self {
            Socks5Error::AddressType(_) => consts::SOCKS5_REPLY_ADDRESS_TYPE_NOT_SUPPORTED,
            Socks5Error::Command(_) => consts::SOCKS5_REPLY_COMMAND_NOT_SUPPORTED,
            Socks5Error::Greeting(_)
            | Socks5Error::Malformed(_)
            | Socks5Error::Target(_)
            | Socks5Error::Truncated
            | Socks5Error::Timeout => consts::SOCKS5_REPLY_GENERAL_FAILURE,
        }
    }

    /// A failed read: the peer went away, or sent less than the request needs.
    pub(crate) fn from_io(error: &io::Error) -> Socks5Error {
        tracing::debug!(%error, "reading the request failed");
        Socks5Error::Truncated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(error: Socks5Error, code: u8) {
        assert_eq!(error.reply_code(), code, "{error:?}");
        let text = error.to_string();
        assert_eq!(text, text.to_lowercase());
        assert!(!text.ends_with('.'), "{text}");
    }

    #[test]
    fn refusal_replies() {
        use proxyd_policy::Mode;
        let blocked =
            |reason| refusal_reply(&Refusal::Blocked { reason, mode: Mode::Full, detail: None });
        let failed = |failure| refusal_reply(&Refusal::Failed { failure, mode: Mode::Full });
        assert_eq!(blocked(Reason::Denied), 0x02);
        assert_eq!(blocked(Reason::NotAllowed), 0x02);
        assert_eq!(blocked(Reason::NotAllowedLocal), 0x02);
        assert_eq!(blocked(Reason::MethodNotAllowed), 0x02);
        assert_eq!(blocked(Reason::SelfConnection), 0x02);
        assert_eq!(blocked(Reason::Decider("x".into())), 0x02);
        assert_eq!(blocked(Reason::ProxyDisabled), 0x01);
        assert_eq!(failed(Failure::DnsFailed), 0x04);
        assert_eq!(failed(Failure::ConnectUnreachable), 0x04);
        assert_eq!(failed(Failure::ConnectRefused), 0x05);
        assert_eq!(failed(Failure::ConnectTimeout), 0x06);
        assert_eq!(failed(Failure::UdpRelay), 0x01);
    }

    #[test]
    fn reply_codes() {
        check(Socks5Error::Malformed("reserved byte is not zero"), 0x01);
        check(Socks5Error::Target(TargetError::AmbiguousNumericHost), 0x01);
        check(Socks5Error::Truncated, 0x01);
        check(Socks5Error::Timeout, 0x01);
        check(Socks5Error::Command(0x02), 0x07);
        check(Socks5Error::Command(0x09), 0x07);
        check(Socks5Error::AddressType(0x02), 0x08);
    }
}
