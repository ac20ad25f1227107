//! SPEC §4: the grammar, its normalisation, its load-time rejections, and matching.

use crate::pattern::{ListKind, Pattern, PatternErrorKind as K, Subtree};
use crate::pattern_set::{MatchKind, PatternSet};
use crate::target::Target;

/// Parses an allowlist entry; `Ok` holds its normalised display.
#[track_caller]
fn check_parse(entry: &str, expected: Result<&str, K>) {
    let got = Pattern::parse(entry, ListKind::Allowed).map(|p| p.to_string()).map_err(|e| e.kind);
    assert_eq!(got.as_deref().map_err(Clone::clone), expected, "pattern {entry:?}");
}

/// Does `pattern` match the authority `target` (default port 443)?
#[track_caller]
fn check(pattern: &str, target: &str, expected: Option<MatchKind>) {
    let set = PatternSet::compile(&[pattern], ListKind::Allowed).expect("pattern compiles");
    let target = Target::parse_authority(target, Some(443)).expect("target parses");
    assert_eq!(set.matches(&target), expected, "{pattern:?} vs {target}");
}

const E: Option<MatchKind> = Some(MatchKind::Explicit);
const W: Option<MatchKind> = Some(MatchKind::Wildcard);
const NO: Option<MatchKind> = None;

#[test]
fn entries_are_normalised() {
    check_parse("example.com", Ok("example.com"));
    check_parse("Example.COM.", Ok("example.com"));
    check_parse("*.Example.com", Ok("*.example.com"));
    check_parse("**.example.com.", Ok("**.example.com"));
    check_parse("API-*.Example.com", Ok("api-*.example.com"));
    check_parse("bücher.example", Ok("xn--bcher-kva.example"));
    check_parse("*.bücher.example", Ok("*.xn--bcher-kva.example"));
    check_parse("*", Ok("*"));
    check_parse("*:443", Ok("*:443"));
    check_parse("**.*", Ok("*"));
    check_parse("localhost:8000", Ok("localhost:8000"));
    check_parse("10.1.2.3", Ok("10.1.2.3"));
    check_parse("::1", Ok("::1"));
    check_parse("[::1]", Ok("::1"));
    check_parse("[::1]:8080", Ok("[::1]:8080"));
    check_parse("10.0.0.0/8", Ok("10.0.0.0/8"));
    check_parse("10.0.0.0/8:443", Ok("10.0.0.0/8:443"));
    check_parse("fd00::/8", Ok("fd00::/8"));
    check_parse("[fd00::/8]:443", Ok("[fd00::/8]:443"));
    check_parse("*.example.com:443", Ok("*.example.com:443"));
    check_parse("a.*.example.com", Ok("a.*.example.com"));
    check_parse("*.*.example.com", Ok("*.*.example.com"));
    check_parse("1.2.example.com", Ok("1.2.example.com"));
    // IPv4-mapped entries are written as the IPv4 address or range they map.
    check_parse("::ffff:1.2.3.4", Ok("1.2.3.4"));
    check_parse("[::ffff:127.0.0.1]:80", Ok("127.0.0.1:80"));
    check_parse("::ffff:10.0.0.0/104", Ok("10.0.0.0/8"));
    check_parse("::ffff:0:0/96", Ok("0.0.0.0/0"));
    check_parse("::fffe:0:0/95", Ok("::fffe:0:0/95"));
}

#[test]
fn load_time_rejections() {
    check_parse("", Err(K::Empty));
    check_parse("https://example.com", Err(K::SchemeOrPath));
    check_parse("example.com/path", Err(K::SchemeOrPath));
    check_parse("user@example.com", Err(K::SchemeOrPath));
    check_parse("*.com", Err(K::TooBroad));
    check_parse("**.org", Err(K::TooBroad));
    check_parse("*.com.", Err(K::TooBroad));
    check_parse("api-*.com", Err(K::TooBroad));
    check_parse("example.*", Err(K::TooBroad));
    check_parse("*.example.*", Err(K::TooBroad));
    check_parse("foo*", Err(K::TooBroad));
    check_parse("a.**.example.com", Err(K::MisplacedDoubleStar));
    check_parse("***.example.com", Err(K::MisplacedDoubleStar));
    check_parse("10.0.0.0/33", Err(K::InvalidCidr));
    check_parse("10.0.0.0/", Err(K::InvalidCidr));
    check_parse("10.0.0/8", Err(K::InvalidCidr));
    check_parse("fd00::/129", Err(K::InvalidCidr));
    check_parse("10.1.2.3/8", Err(K::CidrHostBits("10.0.0.0/8".parse().unwrap())));
    check_parse("127.1", Err(K::InvalidIp));
    check_parse("0x7f000001", Err(K::InvalidIp));
    check_parse("1.2.3.256", Err(K::InvalidIp));
    check_parse("::1::2", Err(K::InvalidIp));
    check_parse("[::1", Err(K::InvalidIp));
    check_parse("*.10.0.0.1", Err(K::InvalidIp));
    check_parse("example.com:0", Err(K::Port(crate::TargetError::PortOutOfRange)));
    check_parse("example.com:65536", Err(K::Port(crate::TargetError::PortOutOfRange)));
    check_parse("example.com:http", Err(K::Port(crate::TargetError::InvalidPort)));
    check_parse("a..example.com", Err(K::Name(crate::TargetError::EmptyLabel)));
    check_parse("example.com..", Err(K::Name(crate::TargetError::EmptyLabel)));
    check_parse("*.example.com..", Err(K::Name(crate::TargetError::EmptyLabel)));
    check_parse("exa mple.com", Err(K::Name(crate::TargetError::Whitespace)));
    check_parse("exa!mple.com", Err(K::Name(crate::TargetError::InvalidCharacter('!'))));
    check_parse("a!*.example.com", Err(K::Name(crate::TargetError::InvalidCharacter('!'))));
    let denied = |e: &str| Pattern::parse(e, ListKind::Denied).map_err(|e| e.kind);
    assert_eq!(denied("*"), Err(K::GlobalInDenylist));
    assert_eq!(denied("**.*"), Err(K::GlobalInDenylist));
    assert_eq!(denied("*:443"), Err(K::GlobalInDenylist));
    assert!(denied("*.example.com").is_ok());
}

#[test]
fn errors_name_the_entry_and_all_are_reported() {
    let errors = PatternSet::compile(&["ok.com", "*.com", "", "x/y"], ListKind::Allowed)
        .expect_err("three bad entries");
    assert_eq!(errors.len(), 3);
    assert_eq!(
        errors[0].to_string(),
        "invalid pattern \"*.com\": a wildcard needs at least two fixed labels after it \
         (`*.example.com`, not `*.com`)"
    );
    assert_eq!(errors[2].entry, "x/y");
}

#[test]
fn exact_names() {
    check("example.com", "example.com", E);
    check("example.com", "EXAMPLE.com.", E);
    check("example.com", "www.example.com", NO);
    check("example.com", "evilexample.com", NO);
    check("example.com", "example.com.evil.com", NO);
    check("example.com", "example.co", NO);
    check("example.com", "xn--xample-2of.com", NO);
    check("example.com", "еxample.com", NO); // Cyrillic homoglyph
    check("bücher.example", "xn--bcher-kva.example", E);
    check("xn--bcher-kva.example", "bücher.example", E);
    check("localhost", "localhost", E);
    check("localhost", "a.localhost", NO);
}

#[test]
fn suffix_wildcards() {
    check("*.example.com", "a.example.com", W);
    check("*.example.com", "a.b.example.com", W);
    check("*.example.com", "example.com", NO);
    check("*.example.com", "evilexample.com", NO);
    check("*.example.com", "example.com.evil.com", NO);
    check("*.example.com", "a.example.com.evil.com", NO);
    check("*.example.com", "aexample.com", NO);
    check("**.example.com", "example.com", W);
    check("**.example.com", "a.example.com", W);
    check("**.example.com", "a.b.c.example.com", W);
    check("**.example.com", "evilexample.com", NO);
    check("**.example.com", "example.com.evil.com", NO);
    check("*.localhost.test", "localhost.test", NO);
    check("*", "anything.example", W);
    check("*", "127.0.0.1", W);
    check("*", "[::1]", W);
}

#[test]
fn in_label_wildcards_never_cross_a_dot() {
    check("api-*.example.com", "api-1.example.com", W);
    check("api-*.example.com", "api-.example.com", W);
    check("api-*.example.com", "api-eu-west.example.com", W);
    check("api-*.example.com", "api-x.y.example.com", NO);
    check("api-*.example.com", "x.api-1.example.com", NO);
    check("api-*.example.com", "api.example.com", NO);
    check("api-*.example.com", "apix.example.com", NO);
    check("api-?.example.com", "api-1.example.com", W);
    check("api-?.example.com", "api-12.example.com", NO);
    check("api-?.example.com", "api-.example.com", NO);
    check("a*b.example.com", "ab.example.com", W);
    check("a*b.example.com", "axxb.example.com", W);
    check("a*b.example.com", "a.b.example.com", NO);
    check("a*b*c.example.com", "abbbc.example.com", W);
    check("a*b*c.example.com", "acbc.example.com", W);
    check("a*b*c.example.com", "acb.example.com", NO);
    check("*-api.example.com", "eu-api.example.com", W);
    check("*.api-*.example.com", "x.api-1.example.com", W);
    check("*.api-*.example.com", "api-1.example.com", NO);
    check("**.api-*.example.com", "api-1.example.com", W);
    check("a.*.example.com", "a.b.example.com", W);
    check("a.*.example.com", "a.b.c.example.com", NO);
    check("s3.*.amazonaws.com", "s3.eu-west-1.amazonaws.com", W);
}

#[test]
fn port_scoped_entries() {
    check("example.com:443", "example.com:443", E);
    check("example.com:443", "example.com:80", NO);
    check("localhost:8000", "localhost:8000", E);
    check("localhost:8000", "localhost:8001", NO);
    check("*.example.com:443", "a.example.com:443", W);
    check("*.example.com:443", "a.example.com:8443", NO);
    check("**.example.com:8080", "example.com:8080", W);
    check("api-*.example.com:443", "api-1.example.com:443", W);
    check("api-*.example.com:443", "api-1.example.com:444", NO);
    check("[::1]:8080", "[::1]:8080", E);
    check("[::1]:8080", "[::1]:8081", NO);
    check("127.0.0.1:22", "127.0.0.1:22", E);
    check("127.0.0.1:22", "127.0.0.1:443", NO);
    check("10.0.0.0/8:443", "10.9.9.9:443", E);
    check("10.0.0.0/8:443", "10.9.9.9:80", NO);
    check("*:443", "example.com:443", W);
    check("*:443", "example.com:80", NO);
}

#[test]
fn ip_and_cidr_entries() {
    check("10.1.2.3", "10.1.2.3", E);
    check("10.1.2.3", "10.1.2.4", NO);
    check("::1", "[::1]", E);
    check("::1", "[0::1]", E);
    check("127.0.0.1", "[::ffff:127.0.0.1]", E);
    check("10.0.0.0/8", "10.255.0.1", E);
    check("10.0.0.0/8", "11.0.0.0", NO);
    check("10.0.0.0/8", "[::ffff:10.1.1.1]", E);
    check("10.0.0.0/8", "[64:ff9b::10.1.1.1]", E);
    // An IPv6 range that contains a mapped or NAT64 spelling is no explicit entry for the IPv4
    // address behind it.
    check("::/0", "[::ffff:127.0.0.1]", W);
    check("::/0", "[::1]", E);
    check("64:ff9b::/96", "[64:ff9b::a9fe:a9fe]", W);
    check("::ffff:127.0.0.1", "127.0.0.1", E);
    check("172.16.0.0/12", "172.31.255.255", E);
    check("172.16.0.0/12", "172.32.0.0", NO);
    check("fd00::/8", "[fd12::1]", E);
    check("fd00::/8", "[fe00::1]", NO);
    check("0.0.0.0/0", "8.8.8.8", E);
    check("10.0.0.0/8", "ten.example.com", NO);
    check("10.1.2.3", "example.com", NO);
}

#[test]
fn lookups_mix_many_entries() {
    let entries = ["a.com", "*.b.com", "**.c.com", "d-*.e.com", "10.0.0.0/8", "::1", "f.com:81"];
    let set = PatternSet::compile(&entries, ListKind::Allowed).expect("compiles");
    let m = |t: &str| set.matches(&Target::parse_authority(t, Some(80)).expect("parses"));
    assert_eq!(m("a.com"), E);
    assert_eq!(m("x.b.com"), W);
    assert_eq!(m("b.com"), NO);
    assert_eq!(m("c.com"), W);
    assert_eq!(m("d-1.e.com"), W);
    assert_eq!(m("10.2.3.4"), E);
    assert_eq!(m("[::1]"), E);
    assert_eq!(m("f.com:81"), E);
    assert_eq!(m("f.com"), NO);
    assert_eq!(m("z.com"), NO);
    assert_eq!(set.patterns().len(), entries.len());
    assert!(set.contains_addr("10.9.9.9".parse().unwrap(), 1));
    assert!(!set.contains_addr("11.9.9.9".parse().unwrap(), 1));
}

/// The name constraint an allowlist entry becomes for the interception CA.
#[track_caller]
fn check_subtree(entry: &str, expected: &str) {
    let pattern = Pattern::parse(entry, ListKind::Allowed).expect("pattern parses");
    let got = match pattern.subtree() {
        Subtree::Dns(name) => format!("dns {name}"),
        Subtree::Ip(net) => format!("ip {net}"),
        Subtree::Everything => "everything".to_owned(),
    };
    assert_eq!(got, expected, "{entry:?}");
}

#[test]
fn subtrees_for_name_constraints() {
    check_subtree("example.com", "dns example.com");
    check_subtree("Example.COM.:443", "dns example.com");
    check_subtree("*.example.com", "dns example.com");
    check_subtree("**.example.com", "dns example.com");
    check_subtree("api-*.example.io", "dns example.io");
    check_subtree("*.api-?.example.io", "dns example.io");
    check_subtree("bücher.example", "dns xn--bcher-kva.example");
    check_subtree("localhost", "dns localhost");
    check_subtree("10.1.2.3", "ip 10.1.2.3/32");
    check_subtree("::1", "ip ::1/128");
    check_subtree("10.0.0.0/8", "ip 10.0.0.0/8");
    check_subtree("2001:db8::/32", "ip 2001:db8::/32");
    check_subtree("*", "everything");
    check_subtree("**.*", "everything");
}
