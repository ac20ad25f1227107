//! SPEC §5.2 and §6: the decision procedure, its order, and the resolved-address check.

use std::net::{IpAddr, SocketAddr};

use crate::decision::{
    Decision, FileId, Mode, Policy, Protocol, Reason, Request, SideDoors, UnixSocketRule, Verdict,
};
use crate::pattern::ListKind;
use crate::pattern_set::PatternSet;
use crate::target::Target;

const ALLOWED: &[&str] = &[
    "example.com",
    "*.example.org",
    "**.example.net",
    "api-*.example.io",
    "localhost",
    "127.0.0.1:8000",
    "10.0.0.0/8",
    "::1",
    "both.example.com",
    "*.wild.example",
];
const DENIED: &[&str] =
    &["evil.example.com", "both.example.com", "*.bad.example.org", "10.6.6.0/24"];

fn policy(allow_local_binding: bool) -> Policy {
    Policy {
        allowed: PatternSet::compile(ALLOWED, ListKind::Allowed).expect("allowlist"),
        denied: PatternSet::compile(DENIED, ListKind::Denied).expect("denylist"),
        allow_local_binding,
        enabled: true,
        unix_sockets: Vec::new(),
        rules: Default::default(),
        secrets: Default::default(),
    }
}

/// Outcome names: "allow", a reason code, or "consult" for an allowlist miss.
fn outcome(verdict: Verdict) -> String {
    match verdict {
        Verdict::Decided(Decision::Allow) => "allow".into(),
        Verdict::Decided(Decision::Block(reason)) => reason.code().into(),
        Verdict::Consult(_) => "consult".into(),
    }
}

fn decide_with(
    policy: &Policy,
    protocol: Protocol,
    method: &str,
    mode: Mode,
    target: &str,
) -> String {
    let target = Target::parse_authority(target, Some(443)).expect("target parses");
    let method = (!method.is_empty()).then_some(method);
    let request = Request {
        protocol,
        target: &target,
        method,
        mode,
        side_doors: SideDoors::default(),
        inspected: false,
        http: None,
    };
    outcome(policy.decide(&request))
}

/// Full mode, `GET` over plain HTTP, local binding off.
#[track_caller]
fn check(target: &str, expected: &str) {
    assert_eq!(
        decide_with(&policy(false), Protocol::Http, "GET", Mode::Full, target),
        expected,
        "{target}"
    );
}

/// Local binding on.
#[track_caller]
fn check_lb(target: &str, expected: &str) {
    assert_eq!(
        decide_with(&policy(true), Protocol::Http, "GET", Mode::Full, target),
        expected,
        "{target}"
    );
}

/// Limited mode.
#[track_caller]
fn check_limited(protocol: Protocol, method: &str, target: &str, expected: &str) {
    let got = decide_with(&policy(false), protocol, method, Mode::Limited, target);
    assert_eq!(got, expected, "{protocol} {method} {target}");
}

#[test]
fn allowlist_and_denylist() {
    check("example.com", "allow");
    check("www.example.com", "consult");
    check("evilexample.com", "consult");
    check("example.com.evil.com", "consult");
    check("a.example.org", "allow");
    check("example.org", "consult");
    check("example.net", "allow");
    check("a.b.example.net", "allow");
    check("api-v2.example.io", "allow");
    check("api-v2.x.example.io", "consult");
    check("evil.example.com", "denied");
    check("both.example.com", "denied");
    check("x.bad.example.org", "denied");
    check("bad.example.org", "allow");
    check("unknown.test", "consult");
    check("10.6.6.6", "denied");
    check("[::ffff:10.6.6.6]", "denied");
    check("[64:ff9b::10.6.6.6]", "denied");
}

#[test]
fn local_literals_need_an_explicit_entry() {
    check("localhost", "allow");
    check("localhost:8080", "allow");
    check("a.localhost", "not_allowed_local");
    check("127.0.0.1:8000", "allow");
    check("127.0.0.1:8001", "not_allowed_local");
    check("127.0.0.2:8000", "not_allowed_local");
    check("10.1.2.3", "allow");
    check("[::1]", "allow");
    check("[::ffff:127.0.0.1]:8000", "allow");
    check("[::ffff:127.0.0.1]:9000", "not_allowed_local");
    check("192.168.1.1", "not_allowed_local");
    check("169.254.169.254", "not_allowed_local");
    check("[fe80::1]", "not_allowed_local");
    check("[2002:7f00:1::]", "not_allowed_local");
    check("0.0.0.0", "not_allowed_local");
    check("8.8.8.8", "consult");
    check_lb("192.168.1.1", "consult");
    check_lb("a.localhost", "consult");
    check_lb("10.6.6.6", "denied");
}

#[test]
fn wildcards_never_unlock_local_literals() {
    let star = Policy {
        allowed: PatternSet::compile(
            &["*", "**.test.localhost", "*.example.com"],
            ListKind::Allowed,
        )
        .expect("allowlist"),
        denied: PatternSet::default(),
        allow_local_binding: false,
        enabled: true,
        unix_sockets: Vec::new(),
        rules: Default::default(),
        secrets: Default::default(),
    };
    let d = |t| decide_with(&star, Protocol::Http, "GET", Mode::Full, t);
    assert_eq!(d("127.0.0.1"), "not_allowed_local");
    assert_eq!(d("localhost"), "not_allowed_local");
    assert_eq!(d("x.test.localhost"), "not_allowed_local");
    assert_eq!(d("test.localhost"), "not_allowed_local");
    assert_eq!(d("[::1]"), "not_allowed_local");
    assert_eq!(d("10.0.0.1"), "not_allowed_local");
    assert_eq!(d("8.8.8.8"), "allow");
    assert_eq!(d("anything.test"), "allow");
}

#[test]
fn limited_mode() {
    use Protocol::*;
    check_limited(Http, "GET", "example.com", "allow");
    check_limited(Http, "HEAD", "example.com", "allow");
    check_limited(Http, "OPTIONS", "example.com", "allow");
    check_limited(Https, "GET", "example.com", "allow");
    check_limited(Http, "POST", "example.com", "method_not_allowed");
    check_limited(Http, "PUT", "example.com", "method_not_allowed");
    check_limited(Http, "DELETE", "example.com", "method_not_allowed");
    check_limited(Http, "PATCH", "example.com", "method_not_allowed");
    check_limited(Http, "get", "example.com", "method_not_allowed");
    check_limited(Http, "Get", "example.com", "method_not_allowed");
    check_limited(Http, "TRACE", "example.com", "method_not_allowed");
    check_limited(Http, "", "example.com", "method_not_allowed");
    check_limited(HttpConnect, "CONNECT", "example.com", "method_not_allowed");
    check_limited(HttpConnect, "GET", "example.com", "method_not_allowed");
    check_limited(Socks5, "", "example.com", "method_not_allowed");
    check_limited(Socks5Udp, "", "example.com", "method_not_allowed");
    check_limited(UnixSocket, "GET", "example.com", "allow");
    check_limited(UnixSocket, "POST", "example.com", "method_not_allowed");
    // Earlier steps win over the method policy.
    check_limited(Http, "POST", "evil.example.com", "denied");
    check_limited(Http, "POST", "192.168.0.1", "not_allowed_local");
    check_limited(Http, "POST", "unknown.test", "consult");
}

/// Limited-mode interception (`mitm = true`): an inspected `CONNECT` opens, because every
/// request inside is decided again; nothing else changes.
#[test]
fn inspected_connect() {
    let p = policy(false);
    let check = |protocol, method: &str, target: &str, mode, inspected, doors, expected: &str| {
        let target = Target::parse_authority(target, Some(443)).expect("target parses");
        let method = (!method.is_empty()).then_some(method);
        let side_doors = match doors {
            true => SideDoors { upgrade: true, ..SideDoors::default() },
            false => SideDoors::default(),
        };
        let request =
            Request { protocol, target: &target, method, mode, side_doors, inspected, http: None };
        assert_eq!(
            outcome(p.decide(&request)),
            expected,
            "{protocol} {method:?} {target} {mode} inspected={inspected} doors={doors}"
        );
    };
    use Mode::{Full, Limited};
    use Protocol::*;
    check(HttpConnect, "CONNECT", "example.com:443", Limited, true, false, "allow");
    check(HttpConnect, "CONNECT", "example.com:8443", Limited, true, false, "allow");
    check(HttpConnect, "CONNECT", "example.com:443", Limited, false, false, "method_not_allowed");
    check(HttpConnect, "CONNECT", "example.com:443", Limited, true, true, "method_not_allowed");
    check(HttpConnect, "GET", "example.com:443", Limited, true, false, "method_not_allowed");
    check(HttpConnect, "", "example.com:443", Limited, true, false, "method_not_allowed");
    check(HttpConnect, "CONNECT", "example.com:443", Full, true, false, "allow");
    check(HttpConnect, "CONNECT", "example.com:443", Full, false, false, "allow");
    // Earlier steps still decide first.
    check(HttpConnect, "CONNECT", "evil.example.com:443", Limited, true, false, "denied");
    check(HttpConnect, "CONNECT", "192.168.0.1:443", Limited, true, false, "not_allowed_local");
    check(HttpConnect, "CONNECT", "unknown.test:443", Limited, true, false, "consult");
    // Plain HTTP is unaffected by the flag.
    // A SOCKS5 CONNECT the listener intercepts (port 443, issue 12) is not opaque either;
    // UDP never is inspected.
    check(Socks5, "", "example.com:443", Limited, true, false, "allow");
    check(Socks5, "", "example.com:443", Limited, true, true, "method_not_allowed");
    check(Socks5Udp, "", "example.com:443", Limited, true, false, "method_not_allowed");
    check(Https, "POST", "example.com:443", Limited, true, false, "method_not_allowed");
    check(Https, "GET", "example.com:443", Limited, true, false, "allow");
    // An allowlist miss the decider allows is still subject to the same rule.
    let target = Target::parse_authority("unknown.test:443", None).expect("parses");
    let request = |inspected| Request {
        protocol: HttpConnect,
        target: &target,
        method: Some("CONNECT"),
        mode: Limited,
        side_doors: SideDoors::default(),
        inspected,
        http: None,
    };
    let allowed = |inspected| match p.decide(&request(inspected)) {
        Verdict::Consult(consult) => consult.allow(),
        other => panic!("expected a consult, got {other:?}"),
    };
    assert_eq!(allowed(true), Decision::Allow);
    assert_eq!(allowed(false), Decision::Block(Reason::MethodNotAllowed));
}

#[test]
fn side_doors_in_limited_mode() {
    let p = policy(false);
    let target = Target::parse_authority("example.com", Some(80)).expect("parses");
    let check = |headers: &[(&str, &str)], expected: &str| {
        let side_doors = SideDoors::from_headers(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        for mode in [Mode::Limited, Mode::Full] {
            let request = Request {
                protocol: Protocol::Http,
                target: &target,
                method: Some("GET"),
                mode,
                side_doors,
                inspected: false,
                http: None,
            };
            let want = if mode == Mode::Full { "allow" } else { expected };
            assert_eq!(outcome(p.decide(&request)), want, "{headers:?} {mode}");
        }
    };
    check(&[], "allow");
    check(&[("Content-Length", "0")], "allow");
    check(&[("content-length", "000")], "allow");
    check(&[("Content-Length", "1")], "method_not_allowed");
    check(&[("Content-Length", "")], "method_not_allowed");
    check(&[("Content-Length", "abc")], "method_not_allowed");
    check(&[("Transfer-Encoding", "chunked")], "method_not_allowed");
    check(&[("TRANSFER-ENCODING", "identity")], "method_not_allowed");
    check(&[("Upgrade", "websocket")], "method_not_allowed");
    check(&[("X-HTTP-Method-Override", "DELETE")], "method_not_allowed");
    check(&[("x-http-method", "PUT")], "method_not_allowed");
    check(&[("X-Method-Override", "POST")], "method_not_allowed");
    check(&[("Accept", "*/*"), ("User-Agent", "curl")], "allow");
}

#[test]
fn disabled_comes_before_everything_but_parsing() {
    let mut p = policy(false);
    p.enabled = false;
    for target in ["example.com", "evil.example.com", "127.0.0.1", "unknown.test"] {
        assert_eq!(decide_with(&p, Protocol::Http, "GET", Mode::Full, target), "proxy_disabled");
    }
}

#[test]
fn the_decider_only_sees_allowlist_misses() {
    let p = policy(false);
    let target = Target::parse_authority("unknown.test", Some(443)).expect("parses");
    let request = |mode, method| Request {
        protocol: Protocol::Http,
        target: &target,
        method: Some(method),
        mode,
        side_doors: SideDoors::default(),
        inspected: false,
        http: None,
    };
    let consult = |mode, method| match p.decide(&request(mode, method)) {
        Verdict::Consult(consult) => consult,
        other => panic!("expected a consult, got {other:?}"),
    };
    assert_eq!(consult(Mode::Full, "GET").allow(), Decision::Allow);
    assert_eq!(consult(Mode::Full, "POST").allow(), Decision::Allow);
    assert_eq!(consult(Mode::Limited, "POST").allow(), Decision::Block(Reason::MethodNotAllowed));
    assert_eq!(consult(Mode::Limited, "GET").allow(), Decision::Allow);
    assert_eq!(consult(Mode::Full, "GET").not_allowed(), Decision::Block(Reason::NotAllowed));
    let denied = consult(Mode::Full, "GET").deny("policy_denied");
    assert_eq!(denied.reason().map(Reason::code), Some("policy_denied"));
}

fn addrs(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().expect("address")).collect()
}

#[track_caller]
fn check_resolved(allow_local_binding: bool, target: &str, resolved: &[&str], expected: &str) {
    let own: [SocketAddr; 2] = ["127.0.0.1:3128".parse().unwrap(), "[::]:8081".parse().unwrap()];
    let target = Target::parse_authority(target, Some(443)).expect("target parses");
    let got = match policy(allow_local_binding).check_resolved(&target, &addrs(resolved), &own) {
        Decision::Allow => "allow".to_owned(),
        Decision::Block(reason) => reason.code().to_owned(),
    };
    assert_eq!(got, expected, "{target} -> {resolved:?}");
}

#[test]
fn resolved_addresses_are_checked() {
    check_resolved(false, "example.com", &["93.184.216.34"], "allow");
    check_resolved(false, "example.com", &["93.184.216.34", "2606:2800::1"], "allow");
    check_resolved(false, "example.com", &["127.0.0.1"], "not_allowed_local");
    check_resolved(false, "example.com", &["93.184.216.34", "127.0.0.1"], "not_allowed_local");
    check_resolved(false, "example.com", &["::ffff:127.0.0.1"], "not_allowed_local");
    check_resolved(false, "example.com", &["169.254.169.254"], "not_allowed_local");
    check_resolved(false, "example.com", &["fd00:ec2::254"], "not_allowed_local");
    check_resolved(false, "example.com", &["64:ff9b::a9fe:a9fe"], "not_allowed_local");
    check_resolved(false, "example.com", &["10.1.2.3"], "allow");
    check_resolved(false, "example.com", &["10.6.6.6"], "denied");
    check_resolved(true, "example.com", &["10.6.6.6"], "denied");
    check_resolved(true, "example.com", &["::ffff:10.6.6.6"], "denied");
    check_resolved(true, "example.com", &["192.168.0.1"], "allow");
    check_resolved(true, "example.com", &["127.0.0.1"], "allow");
    check_resolved(false, "localhost", &["127.0.0.1", "::1"], "allow");
    check_resolved(false, "localhost", &["192.168.0.1"], "not_allowed_local");
    check_resolved(false, "127.0.0.1:8000", &["127.0.0.1"], "allow");
    check_resolved(false, "[::1]", &["::1"], "allow");
    check_resolved(false, "localhost:3128", &["127.0.0.1"], "self_connection");
    check_resolved(true, "example.com:3128", &["127.0.0.1"], "self_connection");
    check_resolved(true, "example.com:3128", &["127.0.0.5"], "self_connection");
    check_resolved(true, "example.com:3128", &["0.0.0.0"], "self_connection");
    check_resolved(true, "example.com:3128", &["::ffff:127.0.0.1"], "self_connection");
    check_resolved(true, "example.com:3128", &["192.168.0.1"], "allow");
    check_resolved(true, "example.com:8081", &["192.168.0.1"], "self_connection");
    check_resolved(true, "example.com:8081", &["::1"], "self_connection");
    check_resolved(true, "example.com:8081", &["93.184.216.34"], "allow");
    check_resolved(true, "example.com:3129", &["127.0.0.1"], "allow");
}

#[test]
fn every_reason_has_a_code_and_a_message() {
    let all = [
        Reason::Denied,
        Reason::NotAllowed,
        Reason::NotAllowedLocal,
        Reason::MethodNotAllowed,
        Reason::SelfConnection,
        Reason::SniMismatch,
        Reason::UnixSocketChanged,
        Reason::Decider("x".into()),
        Reason::RuleDenied("x".into()),
        Reason::RuleDenied("".into()),
        Reason::ProxyDisabled,
    ];
    for reason in all {
        assert!(!reason.code().is_empty());
        assert!(!reason.message().is_empty(), "{reason}");
    }
    assert_eq!(Reason::NotAllowed.message(), "Domain not in allowlist.");
    assert_eq!(Reason::RuleDenied("x".into()).code(), "rule_denied");
    assert_eq!(Reason::RuleDenied("x".into()).message(), "Blocked by a request rule.");
    assert_eq!(Reason::RuleDenied("".into()).message(), "No request rule allows this request.");
}

#[test]
fn unix_socket_requests() {
    let rule = |configured: &str, canonical: &str, socket: bool| UnixSocketRule {
        configured: configured.into(),
        canonical: canonical.into(),
        socket: socket.then_some(FileId { dev: 1, ino: 2, birth: None }),
    };
    let mut p = policy(false);
    p.unix_sockets = vec![
        rule("/ws/agent.sock", "/ws/agent.sock", true),
        rule("/ws/link.sock", "/run/real.sock", true),
        rule("/ws/gone.sock", "/ws/gone.sock", false),
    ];
    let body = SideDoors { body: true, ..SideDoors::default() };
    let none = SideDoors::default();
    let check = |p: &Policy, path: &str, method: &str, mode: Mode, doors: SideDoors, want: &str| {
        let (decision, rule) = p.decide_unix_socket(path, method, mode, doors);
        let got = decision.reason().map_or("allow".to_owned(), |r| r.code().to_owned());
        assert_eq!(got, want, "{path} {method} {mode}");
        assert_eq!(rule.is_some(), want == "allow", "{path}");
    };
    check(&p, "/ws/agent.sock", "POST", Mode::Full, body, "allow");
    check(&p, "/ws/link.sock", "GET", Mode::Full, none, "allow");
    check(&p, "/run/real.sock", "GET", Mode::Full, none, "allow");
    check(&p, "/ws/other.sock", "GET", Mode::Full, none, "not_allowed");
    // Compared by components (a repeated `/` or a `.` names the same entry); `..` is never
    // resolved, and whatever matched, only the entry's canonical path is connected to.
    check(&p, "/ws//agent.sock", "GET", Mode::Full, none, "allow");
    check(&p, "/ws/./agent.sock", "GET", Mode::Full, none, "allow");
    check(&p, "/ws/../ws/agent.sock", "GET", Mode::Full, none, "not_allowed");
    check(&p, "ws/agent.sock", "GET", Mode::Full, none, "not_allowed");
    check(&p, "", "GET", Mode::Full, none, "not_allowed");
    check(&p, "/ws/gone.sock", "GET", Mode::Full, none, "unix_socket_changed");
    check(&p, "/ws/agent.sock", "GET", Mode::Limited, none, "allow");
    check(&p, "/ws/agent.sock", "POST", Mode::Limited, none, "method_not_allowed");
    check(&p, "/ws/agent.sock", "GET", Mode::Limited, body, "method_not_allowed");
    check(&p, "/ws/other.sock", "POST", Mode::Limited, none, "not_allowed");
    let allowed = rule("/ws/agent.sock", "/ws/agent.sock", true);
    assert!(p.still_allows_unix_socket(&allowed));
    let mut replaced = allowed.clone();
    replaced.socket = Some(FileId { dev: 1, ino: 3, birth: None });
    assert!(!p.still_allows_unix_socket(&replaced));
    p.enabled = false;
    check(&p, "/ws/agent.sock", "GET", Mode::Full, none, "proxy_disabled");
    assert!(!p.still_allows_unix_socket(&allowed));
}

/// Review finding: a wide IPv6 range must not unlock the IPv4 addresses that mapped and NAT64
/// spellings are delivered to, and denylist entries apply to every spelling.
#[test]
fn embedded_ipv4_spellings_cannot_unlock_or_dodge() {
    let p = Policy {
        allowed: PatternSet::compile(&["::/0", "64:ff9b::/96", "*"], ListKind::Allowed)
            .expect("allow"),
        denied: PatternSet::compile(&["::ffff:5.6.7.8", "::ffff:9.9.9.0/120"], ListKind::Denied)
            .expect("deny"),
        allow_local_binding: false,
        enabled: true,
        unix_sockets: Vec::new(),
        rules: Default::default(),
        secrets: Default::default(),
    };
    let d = |t| decide_with(&p, Protocol::Http, "GET", Mode::Full, t);
    assert_eq!(d("[::ffff:127.0.0.1]"), "not_allowed_local");
    assert_eq!(d("[::ffff:169.254.169.254]"), "not_allowed_local");
    assert_eq!(d("[64:ff9b::a9fe:a9fe]"), "not_allowed_local");
    assert_eq!(d("[::1]"), "allow");
    assert_eq!(d("5.6.7.8"), "denied");
    assert_eq!(d("[::ffff:5.6.7.8]"), "denied");
    assert_eq!(d("[64:ff9b::5.6.7.8]"), "denied");
    assert_eq!(d("9.9.9.9"), "denied");
    assert_eq!(d("8.8.8.8"), "allow");
    let target = Target::parse_authority("example.com", Some(443)).expect("target");
    let resolved = |ips: &[&str]| match p.check_resolved(&target, &addrs(ips), &[]) {
        Decision::Allow => "allow".to_owned(),
        Decision::Block(reason) => reason.code().to_owned(),
    };
    assert_eq!(resolved(&["::ffff:10.0.0.1"]), "not_allowed_local");
    assert_eq!(resolved(&["5.6.7.8"]), "denied");
    assert_eq!(resolved(&["::ffff:5.6.7.8"]), "denied");
    assert_eq!(resolved(&["93.184.216.34"]), "allow");
}

/// Issue 11: an entry naming an IPv4 address explicitly does unlock its embeddings. (That a
/// wide IPv6 range never does, and that a denylisted address is caught in every spelling, are
/// rows of the bypass table: `tests/bypass.rs`.)
#[test]
fn an_explicit_ipv4_entry_unlocks_its_embeddings() {
    let explicit = Policy {
        allowed: PatternSet::compile(&["127.0.0.2"], ListKind::Allowed).expect("allow"),
        denied: PatternSet::default(),
        allow_local_binding: false,
        enabled: true,
        unix_sockets: Vec::new(),
        rules: Default::default(),
        secrets: Default::default(),
    };
    for form in ["[::127.0.0.2]", "[2002:7f00:2::]", "[::ffff:0:127.0.0.2]"] {
        assert_eq!(decide_with(&explicit, Protocol::Http, "GET", Mode::Full, form), "allow");
    }
}

/// Issue 12: a host with request rules is reachable only by requests proxyd can read: HTTP(S)
/// requests the rules allow, and tunnels it intercepts. Opaque tunnels, SOCKS5 it does not
/// intercept, and UDP are refused; hosts without rules are unaffected.
#[test]
fn hosts_with_rules_refuse_what_rules_cannot_see() {
    use crate::rules::{PathPattern, RequestFacts, Rule, RuleAction, RuleSet};
    let rule = Rule {
        name: "read".into(),
        host: crate::pattern::Pattern::parse("ruled.example.com", ListKind::Allowed).unwrap(),
        methods: Some(vec!["GET".into()]),
        paths: vec![PathPattern::parse("/ok/**").unwrap()],
        query: Vec::new(),
        headers: Vec::new(),
        action: RuleAction::Allow,
        strip_headers: Vec::new(),
        inject: None,
    };
    let p = Policy { rules: RuleSet::compile(vec![rule]).unwrap(), ..policy(false) };
    let target = Target::parse_authority("ruled.example.com:443", None).unwrap();
    let other = Target::parse_authority("example.com:443", None).unwrap();
    let decide = |protocol, inspected, target: &Target, path: Option<&str>| {
        let facts = path.map(|path| RequestFacts {
            target,
            method: "GET",
            path,
            query: None,
            headers: &[],
        });
        let request = Request {
            protocol,
            target,
            method: Some("GET"),
            mode: Mode::Full,
            side_doors: SideDoors::default(),
            inspected,
            http: facts.as_ref(),
        };
        outcome(p.decide(&request))
    };
    assert_eq!(decide(Protocol::Https, false, &target, Some("/ok/x")), "consult");
    assert_eq!(decide(Protocol::Https, false, &target, Some("/no")), "rule_denied");
    assert_eq!(decide(Protocol::Https, false, &target, Some("/ok/../x")), "invalid_path");
    assert_eq!(decide(Protocol::Https, false, &target, None), "rule_denied");
    assert_eq!(decide(Protocol::HttpConnect, false, &target, None), "rule_denied");
    assert_eq!(decide(Protocol::HttpConnect, true, &target, None), "consult");
    assert_eq!(decide(Protocol::Socks5, false, &target, None), "rule_denied");
    assert_eq!(decide(Protocol::Socks5, true, &target, None), "consult");
    assert_eq!(decide(Protocol::Socks5Udp, false, &target, None), "rule_denied");
    assert_eq!(decide(Protocol::Socks5, false, &other, None), "allow");
}
