//! The pattern grammar of `allowed_domains`/`denied_domains` (SPEC §4), and its matcher.
//!
//! Input: `PATTERN` or `PATTERN\nHOST[:PORT]`.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use proxyd_policy::{Host, ListKind, MatchKind, Pattern, PatternSet, Subtree, Target, embedded_v4};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let (entry, host) = match input.split_once('\n') {
        Some((entry, host)) => (entry, Some(host)),
        None => (input, None),
    };
    let allowed = Pattern::parse(entry, ListKind::Allowed);
    let denied = Pattern::parse(entry, ListKind::Denied);
    // The denylist grammar is the allowlist's, less the global `*`.
    if let Ok(denied) = &denied {
        assert_eq!(
            allowed.as_ref(),
            Ok(denied),
            "{entry:?}: denylist accepts what allowlist refuses"
        );
    }
    let Ok(pattern) = allowed else { return };
    // Normalised: the display is an entry that parses to the same pattern.
    let shown = pattern.to_string();
    assert_eq!(
        Pattern::parse(&shown, ListKind::Allowed).as_ref(),
        Ok(&pattern),
        "{entry:?}: {shown:?}"
    );
    if let Ok(denied) = &denied {
        assert_eq!(Pattern::parse(&shown, ListKind::Denied).as_ref(), Ok(denied), "{entry:?}");
    }
    let set = PatternSet::compile(&[&shown], ListKind::Allowed).expect("the entry parsed");
    // An explicit entry naming one host matches that host explicitly.
    if pattern.is_explicit()
        && let Ok(target) = Target::parse_authority(&shown, Some(443))
    {
        assert_eq!(set.matches(&target), Some(MatchKind::Explicit), "{entry:?}: {target}");
    }
    let Some(host) = host else { return };
    let Ok(target) = Target::parse_authority(host, Some(443)) else { return };
    let Some(kind) = set.matches(&target) else { return };
    // What the pattern matches lies inside the subtree an interception CA is constrained to.
    match (pattern.subtree(), &target.host) {
        (Subtree::Everything, _) => {}
        (Subtree::Dns(suffix), Host::Name(name)) => assert!(
            **name == *suffix || name.ends_with(&format!(".{suffix}")),
            "{entry:?} matched {name:?} outside {suffix:?}"
        ),
        (Subtree::Ip(net), Host::Ip(ip)) => {
            let embedded = match ip {
                IpAddr::V6(v6) => embedded_v4(*v6),
                IpAddr::V4(_) => Vec::new(),
            };
            assert!(
                net.contains(ip) || embedded.iter().any(|v4| net.contains(&IpAddr::V4(*v4))),
                "{entry:?} matched {ip} outside {net}"
            );
        }
        (subtree, host) => panic!("{entry:?} ({subtree:?}) matched {host} ({kind:?})"),
    }
    // Only an entry without wildcards matches explicitly (a wildcard never unlocks a local
    // destination, SPEC §5.2).
    if kind == MatchKind::Explicit {
        assert!(pattern.is_explicit(), "{entry:?}: wildcard matched {target} explicitly");
    }
});
