//! Property tests: invariants that must hold for every input, not just the listed ones.

use proptest::prelude::*;

use crate::decision::{Decision, Mode, Policy, Protocol, Reason, Request, SideDoors, Verdict};
use crate::pattern::ListKind;
use crate::pattern_set::PatternSet;
use crate::rules::{PathPattern, normalize_path};
use crate::target::{Host, Target, is_name_char};

/// Host-ish strings: mostly plausible names and addresses, with hostile characters mixed in.
fn hostish() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_-]{1,10}(\\.[a-zA-Z0-9_-]{1,10}){0,4}\\.?",
        "[0-9]{1,4}(\\.[0-9]{1,4}){0,4}",
        "0[xX][0-9a-fA-F]{1,8}",
        "\\[[0-9a-fA-F:.]{2,30}\\]",
        "[a-z0-9.:%@\\\\\\[\\]*? \t\u{0}\u{7f}äöü。ｅ１-]{0,20}",
        any::<String>(),
    ]
}

fn authority() -> impl Strategy<Value = String> {
    (hostish(), prop::option::of(prop_oneof!["[0-9]{1,6}", ".{0,3}"])).prop_map(|(h, p)| match p {
        Some(p) => format!("{h}:{p}"),
        None => h,
    })
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Http),
        Just(Protocol::Https),
        Just(Protocol::HttpConnect),
        Just(Protocol::Socks5),
        Just(Protocol::Socks5Udp),
        Just(Protocol::UnixSocket),
    ]
}

/// Path-ish strings: segments of plausible characters, dots, escapes (some of dots, slashes
/// and percent signs) and hostile bytes.
fn pathish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just(";".to_owned()),
        "%(2[eEfF5]|5[cC]|25|[0-9a-fA-F]{2}|[g-z]{0,2})",
        "[a-zA-Z0-9._~:@!$&'()*+,={}|^\\\\ \\t\u{0}é-]{1,4}",
    ];
    (prop::collection::vec(piece, 0..12), any::<bool>()).prop_map(|(pieces, rooted)| {
        format!("{}{}", if rooted { "/" } else { "" }, pieces.concat())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn normalised_targets_parse_back_to_themselves(input in authority()) {
        if let Ok(target) = Target::parse_authority(&input, Some(443)) {
            let again = Target::parse_authority(&target.to_string(), None);
            prop_assert_eq!(again, Ok(target));
        }
    }

    #[test]
    fn parsed_names_use_only_the_allowed_characters(input in authority()) {
        if let Ok(Target { host: Host::Name(name), .. }) = Target::parse_authority(&input, Some(80)) {
            prop_assert!(name.chars().all(|c| is_name_char(c) || c == '.'), "{:?}", name);
            prop_assert!(!name.is_empty() && name.len() <= 253);
            prop_assert!(!name.starts_with('.') && !name.ends_with('.') && !name.contains(".."));
        }
    }

    #[test]
    fn deny_always_wins(
        input in authority(),
        protocol in protocol(),
        limited in any::<bool>(),
        allow_local_binding in any::<bool>(),
        method in prop_oneof![Just("GET"), Just("POST"), Just("CONNECT")],
    ) {
        let Ok(target) = Target::parse_authority(&input, Some(443)) else { return Ok(()) };
        let entry = match &target.host {
            Host::Ip(ip) => format!("[{ip}]:{}", target.port),
            Host::Name(name) => format!("{name}:{}", target.port),
        };
        let policy = Policy {
            allowed: PatternSet::compile(&["*", entry.as_str()], ListKind::Allowed).expect("allow"),
            denied: PatternSet::compile(&[entry.as_str()], ListKind::Denied).expect("deny"),
            allow_local_binding,
            enabled: true,
            unix_sockets: Vec::new(),
            rules: Default::default(),
            secrets: Default::default(),
        };
        let mode = if limited { Mode::Limited } else { Mode::Full };
        let request = Request { protocol, target: &target, method: Some(method), mode, side_doors: SideDoors::default(), inspected: false, http: None };
        prop_assert_eq!(policy.decide(&request), Verdict::Decided(Decision::Block(Reason::Denied)));
        if let Some(ip) = target.host.ip() {
            prop_assert_eq!(policy.check_resolved(&target, &[ip], &[]), Decision::Block(Reason::Denied));
        }
    }

    #[test]
    fn any_host_spelled_differently_still_matches_its_own_entry(input in authority()) {
        let Ok(target) = Target::parse_authority(&input, Some(443)) else { return Ok(()) };
        let set = PatternSet::compile(&[target.host.to_string()], ListKind::Allowed).expect("compiles");
        prop_assert!(set.matches(&target).is_some());
    }

    #[test]
    fn normal_paths_are_fixed_points_without_dot_segments(input in pathish()) {
        if let Ok(path) = normalize_path(&input) {
            let again = normalize_path(&path);
            prop_assert_eq!(again.as_ref(), Ok(&path), "{:?}", input);
            prop_assert!(path.starts_with('/') && !path.contains("//"), "{:?}", path);
            for segment in path[1..].split('/') {
                let base = segment.split(';').next().unwrap_or(segment);
                prop_assert!(base != "." && base != "..", "{:?} from {:?}", path, input);
            }
            // Nothing that still decodes to a dot, a slash or a backslash is left encoded.
            let upper = path.to_ascii_uppercase();
            prop_assert!(!["%2E", "%2F", "%5C"].iter().any(|e| upper.contains(e)), "{:?}", path);
            // A normal path without `*` is a pattern that matches itself.
            if !path.contains('*') {
                let pattern = PathPattern::parse(&path).expect("a normal path is a pattern");
                prop_assert!(pattern.matches(&path), "{:?}", path);
            }
        }
    }
}
