//! Why a dial failed, and how each failure is reported to clients (SPEC §6.1).
//!
//! The variants say whose fault it is: [`DialError::Blocked`] is the policy's (403 / SOCKS
//! 0x02), the others are upstream's (502/504 / SOCKS 0x04–0x06). No variant carries an I/O
//! error: its text must never reach a client, so the dialler logs it and keeps only its kind.

use proxyd_policy::Reason;

/// A failed dial. `Display` is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// A resolved (or literal) address failed `Policy::check_resolved`: `denied`,
    /// `not_allowed_local` or `self_connection`.
    #[error("blocked by policy: {0}")]
    Blocked(Reason),
    /// The lookup failed or returned no address.
    #[error("dns lookup failed")]
    DnsFailed,
    /// The lookup did not answer within `dns_timeout`; reported as `dns_failed`.
    #[error("dns lookup timed out")]
    DnsTimeout,
    /// Every address refused the connection (the last attempt got a RST).
    #[error("connection refused")]
    Refused,
    /// Every attempt failed with something other than a refusal (no route, host unreachable).
    #[error("destination unreachable")]
    Unreachable,
    /// No attempt connected within `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
}

impl DialError {
    /// The status an HTTP proxy answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            DialError::Blocked(reason) => reason.http_status(),
            DialError::DnsFailed
            | DialError::DnsTimeout
            | DialError::Refused
            | DialError::Unreachable => 502,
            DialError::Timeout => 504,
        }
    }

    /// The SOCKS5 reply code (RFC 1928 §6): 0x04 host unreachable, 0x05 connection refused,
    /// 0x06 TTL expired (the conventional answer to a connect timeout).
    pub fn socks_reply(&self) -> u8 {
        match self {
            DialError::Blocked(reason) => reason.socks_reply(),
            DialError::DnsFailed | DialError::DnsTimeout | DialError::Unreachable => 0x04,
            DialError::Refused => 0x05,
            DialError::Timeout => 0x06,
        }
    }

    /// The reason as logged and sent in JSON bodies: the policy reason's code, or one of
    /// `dns_failed`, `connect_refused`, `connect_unreachable`, `connect_timeout`.
    pub fn code(&self) -> &str {
        match self {
            DialError::Blocked(reason) => reason.code(),
            DialError::DnsFailed | DialError::DnsTimeout => "dns_failed",
            DialError::Refused => "connect_refused",
            DialError::Unreachable => "connect_unreachable",
            DialError::Timeout => "connect_timeout",
        }
    }

    /// The policy reason, when the policy blocked the dial (callers send the blocked response
    /// and write the blocked log for these only).
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            DialError::Blocked(reason) => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(error: DialError, status: u16, socks: u8, code: &str) {
        assert_eq!(error.http_status(), status, "{error:?}");
        assert_eq!(error.socks_reply(), socks, "{error:?}");
        assert_eq!(error.code(), code, "{error:?}");
    }

    #[test]
    fn mapping() {
        check(DialError::Blocked(Reason::NotAllowedLocal), 403, 0x02, "not_allowed_local");
        check(DialError::Blocked(Reason::Denied), 403, 0x02, "denied");
        check(DialError::Blocked(Reason::SelfConnection), 403, 0x02, "self_connection");
        check(DialError::DnsFailed, 502, 0x04, "dns_failed");
        check(DialError::DnsTimeout, 502, 0x04, "dns_failed");
        check(DialError::Refused, 502, 0x05, "connect_refused");
        check(DialError::Unreachable, 502, 0x04, "connect_unreachable");
        check(DialError::Timeout, 504, 0x06, "connect_timeout");
    }

    #[test]
    fn display_is_lower_case_and_carries_no_os_text() {
        let all = [
            DialError::Blocked(Reason::SelfConnection),
            DialError::DnsFailed,
            DialError::DnsTimeout,
            DialError::Refused,
            DialError::Unreachable,
            DialError::Timeout,
        ];
        for error in all {
            let text = error.to_string();
            assert_eq!(text, text.to_lowercase());
            assert!(!text.ends_with('.'), "{text}");
            assert!(!text.contains("os error"), "{text}");
        }
    }

    #[test]
    fn reason_only_for_policy_blocks() {
        assert_eq!(DialError::Blocked(Reason::Denied).reason(), Some(&Reason::Denied));
        assert_eq!(DialError::Refused.reason(), None);
    }
}
