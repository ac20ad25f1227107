//! Why a SOCKS5 handshake failed, and the reply each failure gets (RFC 1928 §6, SPEC §6.1).
//!
//! Only the client's faults live here: a policy block is a `Decision` and an upstream failure
//! a `DialError`, both data that carry their own reply codes.

use std::io;

use fast_socks5::consts;
use proxyd_policy::TargetError;

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
