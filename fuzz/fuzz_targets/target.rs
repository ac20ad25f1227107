//! The target parser (SPEC §3) through each of its entry points: a bare host, an authority
//! (`CONNECT`, `Host`), an absolute-form request-target and a SOCKS5 domain name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyd_fuzz::{check_host, check_target};
use proxyd_policy::{Host, Target};

fuzz_target!(|data: &[u8]| {
    // SOCKS5 takes raw bytes; the others take text.
    if let Ok(target) = Target::from_socks_domain(data, 1080) {
        let name = std::str::from_utf8(data).expect("a non-utf-8 name was accepted");
        check_target(name, &target);
    }
    let Ok(input) = std::str::from_utf8(data) else { return };
    if let Ok(host) = Host::parse(input) {
        check_host(input, &host);
    }
    for default_port in [None, Some(80)] {
        if let Ok(target) = Target::parse_authority(input, default_port) {
            check_target(host_of(input), &target);
        }
    }
    if let Ok(url) = Target::parse_absolute_url(input) {
        let rest = input.split_once("://").map_or(input, |(_, rest)| rest);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        check_target(host_of(authority), &url.target);
        let pq = &url.path_and_query;
        assert!(pq.starts_with('/'), "{input:?}: path {pq:?}");
        assert!(!pq.contains('#'), "{input:?}: fragment kept in {pq:?}");
        assert!(!pq.chars().any(|c| c.is_whitespace() || c.is_control()), "{input:?}: {pq:?}");
        // The parts put back together are a request-target that parses to the same parts.
        let again = format!("{}://{}{}", url.scheme.as_str(), url.target, pq);
        assert_eq!(Target::parse_absolute_url(&again).as_ref(), Ok(&url), "{input:?}: {again:?}");
    }
});

/// The host part of an authority as sent: without a trailing `:port`.
fn host_of(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}
