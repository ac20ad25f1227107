//! Request rules: the path normal form, path patterns, and rule evaluation.

use crate::decision::Reason;
use crate::pattern::{ListKind, Pattern};
use crate::rules::{
    HeaderMatcher, HeaderTest, Injection, PathError as P, PathPattern, QueryMatcher, QueryTest,
    RequestFacts, Rule, RuleAction, RuleErrorKind as K, RuleSet, RuleVerdict, normalize_path,
};
use crate::target::Target;

/// The path rows of the bypass table (`testdata/bypass.toml`): each normalises to its normal
/// form or is refused for its reason.
#[test]
fn paths_normalise_as_the_bypass_table_says() {
    let table = proxyd_test_support::bypass::table();
    assert!(table.paths.len() > 80, "only {} path rows", table.paths.len());
    for row in &table.paths {
        let got = match normalize_path(&row.raw) {
            Ok(normal) => Ok(normal),
            Err(error) => Err(format!("{error:?}")),
        };
        let want = match (&row.normal, &row.error) {
            (Some(normal), None) => Ok(normal.clone()),
            (None, Some(error)) => Err(error.clone()),
            _ => panic!("path row {:?}: exactly one of `normal` and `error`", row.raw),
        };
        assert_eq!(got, want, "path {:?}", row.raw);
    }
}

#[test]
fn normal_forms_are_fixed_points() {
    for raw in ["/%7e/%3a/%c3%a9", "/a{b}", "/%25zz", "/a/", "/%41%42p=%3d"] {
        let once = normalize_path(raw).expect("normalises");
        assert_eq!(normalize_path(&once).as_deref(), Ok(once.as_str()), "{raw:?}");
    }
}

/// Does `pattern` match the path `raw` (normalised first)?
#[track_caller]
fn check_pattern(pattern: &str, raw: &str, expected: bool) {
    let compiled = PathPattern::parse(pattern).expect("pattern parses");
    let path = normalize_path(raw).expect("path normalises");
    assert_eq!(compiled.matches(&path), expected, "{pattern:?} vs {raw:?}");
}

#[test]
fn single_star_stays_in_one_segment() {
    check_pattern("/repos/our-org/*", "/repos/our-org/x", true);
    check_pattern("/repos/our-org/*", "/repos/our-org/x-y.z", true);
    check_pattern("/repos/our-org/*", "/repos/our-org/", true); // `*` matches the empty run
    check_pattern("/repos/our-org/*", "/repos/our-org", false);
    check_pattern("/repos/our-org/*", "/repos/our-org/x/y", false);
    check_pattern("/repos/our-org/*", "/repos/other/x", false);
    check_pattern("/repos/our-org/*", "/repos/our-org-evil/x", false);
    check_pattern("/repos/our-org/*", "/repos/OUR-ORG/x", false); // case-sensitive
    check_pattern("/repos/*/issues", "/repos/a/issues", true);
    check_pattern("/repos/*/issues", "/repos/a/b/issues", false);
    check_pattern("/u/*.bin", "/u/a.bin", true);
    check_pattern("/u/*.bin", "/u/.bin", true);
    check_pattern("/u/*.bin", "/u/a.bin.exe", false);
    check_pattern("/u/a*b*c", "/u/abbbc", true);
    check_pattern("/u/a*b*c", "/u/acb", false);
    check_pattern("/*", "/", true);
    check_pattern("/*", "/x", true);
    check_pattern("/*", "/x/", false);
}

#[test]
fn double_star_spans_segments() {
    check_pattern("/repos/our-org/**", "/repos/our-org", true);
    check_pattern("/repos/our-org/**", "/repos/our-org/", true);
    check_pattern("/repos/our-org/**", "/repos/our-org/x", true);
    check_pattern("/repos/our-org/**", "/repos/our-org/x/y/z", true);
    check_pattern("/repos/our-org/**", "/repos/our-orgx", false);
    check_pattern("/repos/our-org/**", "/repos/other/x", false);
    check_pattern("/repos/our-org/**", "/repos", false);
    check_pattern("/a/**/b", "/a/b", true);
    check_pattern("/a/**/b", "/a/x/b", true);
    check_pattern("/a/**/b", "/a/x/y/b", true);
    check_pattern("/a/**/b", "/a/x/y/c", false);
    check_pattern("/a/**/b", "/a/b/c", false);
    check_pattern("/a/**/b/**", "/a/x/b/y/z", true);
    check_pattern("/a/**/**/b", "/a/b", true);
    check_pattern("/**", "/", true);
    check_pattern("/**", "/anything/at/all", true);
    check_pattern("/**/x", "/x", true);
    check_pattern("/**/x", "/a/b/x", true);
    check_pattern("/**/x", "/a/b/x/y", false);
    check_pattern("/**/*.json", "/a/b.json", true);
    check_pattern("/**/*.json", "/a/b.json/c", false);
}

#[test]
fn literal_segments_compare_in_normal_form() {
    check_pattern("/a", "/a", true);
    check_pattern("/a", "/%61", true);
    check_pattern("/%61", "/a", true);
    check_pattern("/a", "/a/", false);
    check_pattern("/a/", "/a", false);
    check_pattern("/a", "/A", false);
    check_pattern("/a%3a", "/a%3A", true);
    check_pattern("/a:b", "/a%3Ab", false); // reserved characters are not decoded
    check_pattern("/%25zz", "/%25zz", true);
    check_pattern("/%2Ex", "/.x", true);
    check_pattern("/a{b}", "/a%7bb%7d", true);
    check_pattern("/x", "/x%3Bp=1", false);
    check_pattern("/", "/", true);
    check_pattern("/", "/a", false);
}

#[test]
fn path_patterns_are_normalised_and_checked() {
    let parse = |p: &str| PathPattern::parse(p).map(|p| p.to_string()).map_err(|e| e.kind);
    assert_eq!(parse("/%7e/%3a/**/**"), Ok("/~/%3A/**/**".to_owned()));
    assert_eq!(parse("/a/../b"), Err(K::Path(P::DotSegment)));
    assert_eq!(parse("/a/%2e%2e"), Err(K::Path(P::DotSegment)));
    assert_eq!(parse("/a//b"), Err(K::Path(P::EmptySegment)));
    assert_eq!(parse("/a%2fb"), Err(K::Path(P::EncodedSlash)));
    assert_eq!(parse("a/b"), Err(K::Path(P::NotAbsolute)));
    assert_eq!(parse("/a?b"), Err(K::Path(P::QueryOrFragment)));
    assert_eq!(parse("/a**"), Err(K::MisplacedDoubleStar));
    assert_eq!(parse("/***"), Err(K::MisplacedDoubleStar));
    let err = PathPattern::parse("/a/..").expect_err("dot segment");
    assert_eq!(
        err.to_string(),
        "invalid request rule \"/a/..\": path pattern: dot segment (`.` or `..`) in a path"
    );
}

fn host(pattern: &str) -> Pattern {
    Pattern::parse(pattern, ListKind::Allowed).expect("host pattern parses")
}

fn paths(patterns: &[&str]) -> Vec<PathPattern> {
    patterns.iter().map(|p| PathPattern::parse(p).expect("path pattern parses")).collect()
}

fn methods(methods: &[&str]) -> Option<Vec<String>> {
    Some(methods.iter().map(|m| (*m).to_owned()).collect())
}

fn rule(name: &str, host_pattern: &str, action: RuleAction) -> Rule {
    Rule {
        name: name.to_owned(),
        host: host(host_pattern),
        methods: None,
        paths: Vec::new(),
        query: Vec::new(),
        headers: Vec::new(),
        action,
        strip_headers: Vec::new(),
        inject: None,
    }
}

fn query(name: &str, value: Option<&str>) -> QueryMatcher {
    let test = value.map_or(QueryTest::Present, |v| QueryTest::Equals(v.to_owned()));
    QueryMatcher { name: name.to_owned(), test }
}

fn header(name: &str, test: HeaderTest) -> HeaderMatcher {
    HeaderMatcher { name: name.to_owned(), test }
}

/// The rules every evaluation case runs against, in order.
fn rules() -> RuleSet {
    use RuleAction::{Allow, Deny};
    let rules = vec![
        Rule {
            paths: paths(&["/repos/our-org/secret/**"]),
            ..rule("no-secret", "api.example.com", Deny)
        },
        Rule {
            methods: methods(&["GET", "HEAD"]),
            paths: paths(&["/repos/our-org/**", "/orgs/our-org"]),
            strip_headers: vec!["Cookie".to_owned()],
            inject: Some(Injection { header: "Authorization".to_owned(), secret: 0 }),
            ..rule("read", "api.example.com", Allow)
        },
        Rule {
            methods: methods(&["POST"]),
            paths: paths(&["/repos/our-org/*/issues"]),
            headers: vec![header("content-type", HeaderTest::Prefix("application/json".into()))],
            ..rule("file-issue", "api.example.com", Allow)
        },
        Rule {
            methods: methods(&["GET"]),
            paths: paths(&["/search/code"]),
            query: vec![query("q", None), query("org", Some("our org"))],
            ..rule("search", "api.example.com", Allow)
        },
        Rule { query: vec![query("debug", None)], ..rule("no-debug", "**.internal.example", Deny) },
        Rule {
            headers: vec![header("x-role", HeaderTest::Equals("admin".into()))],
            ..rule("no-admins", "**.internal.example", Deny)
        },
        rule("internal", "**.internal.example", Allow),
        Rule {
            methods: methods(&["GET"]),
            headers: vec![header("X-Token", HeaderTest::Equals("t1".into()))],
            ..rule("git-8443", "git.example.com:8443", Allow)
        },
        Rule {
            methods: methods(&["PUT"]),
            paths: paths(&["/u/*.bin"]),
            ..rule("uploads", "uploads.example.com", Allow)
        },
    ];
    RuleSet::compile(rules).expect("rules compile")
}

/// Outcome names: `allow RULE`, `deny RULE`, `deny default`, `no rules`, or `bad KIND`.
fn outcome(verdict: RuleVerdict<'_>) -> String {
    match verdict {
        RuleVerdict::NoRules => "no rules".to_owned(),
        RuleVerdict::Allowed { rule, .. } => format!("allow {rule}"),
        RuleVerdict::Denied { rule: Some(rule), .. } => format!("deny {rule}"),
        RuleVerdict::Denied { rule: None, .. } => "deny default".to_owned(),
        RuleVerdict::BadPath(err) => format!("bad {err:?}"),
    }
}

/// Evaluates `method url` with `headers` against [`rules`].
#[track_caller]
fn check(method: &str, url: &str, headers: &[(&str, &str)], expected: &str) {
    let url = Target::parse_absolute_url(url).expect("url parses");
    let (path, query) = match url.path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url.path_and_query.as_str(), None),
    };
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let facts = RequestFacts { target: &url.target, method, path, query, headers: &headers };
    assert_eq!(outcome(rules().evaluate(&facts)), expected, "{method} {url:?} {headers:?}");
}

const H: &[(&str, &str)] = &[];

#[test]
fn methods_and_paths() {
    check("GET", "https://api.example.com/repos/our-org/x", H, "allow read");
    check("HEAD", "https://api.example.com/repos/our-org/x/y/z", H, "allow read");
    check("GET", "https://api.example.com/repos/our-org", H, "allow read");
    check("GET", "https://api.example.com/orgs/our-org", H, "allow read");
    check("GET", "https://api.example.com/orgs/our-org/members", H, "deny default");
    check("GET", "https://api.example.com/repos/other-org/x", H, "deny default");
    check("GET", "https://api.example.com/", H, "deny default");
    check("get", "https://api.example.com/repos/our-org/x", H, "deny default"); // exact
    check("DELETE", "https://api.example.com/repos/our-org/x", H, "deny default");
    check("GET", "https://API.example.com.:443/repos/our-org/x", H, "allow read");
    check("GET", "https://api.example.com/repos/%6Fur-org/x", H, "allow read");
    check("PUT", "https://uploads.example.com/u/a.bin", H, "allow uploads");
    check("PUT", "https://uploads.example.com/u/a.bin/x", H, "deny default");
    check("PUT", "https://uploads.example.com/u/d/a.bin", H, "deny default");
}

#[test]
fn first_matching_rule_wins() {
    // `no-secret` comes before `read`, so it carves its subtree out of it, for any method.
    check("GET", "https://api.example.com/repos/our-org/secret", H, "deny no-secret");
    check("GET", "https://api.example.com/repos/our-org/secret/k", H, "deny no-secret");
    check("POST", "https://api.example.com/repos/our-org/secret/issues", H, "deny no-secret");
    check("GET", "https://api.example.com/repos/our-org/secrets", H, "allow read");
    check("GET", "https://api.example.com/repos/our-org/x/secret", H, "allow read");
    // Later rules are reached when earlier ones do not match.
    check("GET", "https://a.internal.example/", H, "allow internal");
    check("GET", "https://a.internal.example/?debug", H, "deny no-debug");
    check("POST", "https://internal.example/x", &[("X-Role", "admin")], "deny no-admins");
    check("POST", "https://internal.example/x", &[("X-Role", "user")], "allow internal");
}

#[test]
fn bad_paths_on_ruled_hosts() {
    check("GET", "https://api.example.com/repos/our-org/../admin", H, "bad DotSegment");
    check("GET", "https://api.example.com/repos/our-org/%2e%2e/admin", H, "bad DotSegment");
    check("GET", "https://api.example.com/repos/our-org/x%2F..", H, "bad EncodedSlash");
    check("GET", "https://api.example.com/repos//our-org/x", H, "bad EmptySegment");
    check("GET", "https://api.example.com/repos/our-org/%zz", H, "bad MalformedEscape");
    check("GET", "https://a.internal.example/%5c", H, "bad Backslash");
    // `%252e` is decoded once: a literal `%2e` segment, under the allowed prefix.
    check("GET", "https://api.example.com/repos/our-org/%252e%252e", H, "bad DoubleEncoded");
    // Hosts without rules are not judged here, bad path or not.
    check("GET", "https://other.example.com/a/../b", H, "no rules");
}

#[test]
fn query_matchers() {
    let search = "https://api.example.com/search/code";
    check("GET", &format!("{search}?q=x&org=our+org"), H, "allow search");
    check("GET", &format!("{search}?org=our%20org&q"), H, "allow search");
    check("GET", &format!("{search}?%71=x&%6Frg=our%20org"), H, "allow search");
    check("GET", &format!("{search}?&&q=&org=our+org&"), H, "allow search");
    check("GET", &format!("{search}?q=x"), H, "deny default");
    check("GET", &format!("{search}?q=x&org=other"), H, "deny default");
    check("GET", &format!("{search}?q=x&org=our+orgs"), H, "deny default");
    check("GET", &format!("{search}?q=x&org=Our+Org"), H, "deny default");
    check("GET", &format!("{search}?q=x&org=our%2520org"), H, "deny default"); // decoded once
    check("GET", search, H, "deny default");
    // A repeated name: an allow rule needs every copy to pass, a deny rule any one.
    check("GET", &format!("{search}?q=x&org=our+org&org=other"), H, "deny default");
    check("GET", &format!("{search}?q=x&org=our+org&org=our%20org"), H, "allow search");
    check("GET", "https://x.internal.example/?a=1&debug=0&debug=1", H, "deny no-debug");
    check("GET", "https://x.internal.example/?debugx=1&xdebug", H, "allow internal");
}

#[test]
fn header_matchers() {
    let issues = "https://api.example.com/repos/our-org/r/issues";
    check("POST", issues, &[("Content-Type", "application/json")], "allow file-issue");
    check(
        "POST",
        issues,
        &[("content-type", "application/json; charset=utf-8")],
        "allow file-issue",
    );
    check("POST", issues, &[("CONTENT-TYPE", "application/jsonx")], "allow file-issue"); // prefix
    check("POST", issues, &[("Content-Type", "text/plain")], "deny default");
    check("POST", issues, &[("Content-Type", "Application/JSON")], "deny default");
    check("POST", issues, H, "deny default");
    check(
        "POST",
        issues,
        &[("Content-Type", "application/json"), ("content-type", "text/plain")],
        "deny default",
    );
    let admin = [("Accept", "*/*"), ("x-role", "user"), ("X-ROLE", "admin")];
    check("GET", "https://x.internal.example/", &admin, "deny no-admins");
    check("GET", "https://x.internal.example/", &[("x-role", "admin ")], "allow internal");
}

#[test]
fn port_scoped_hosts_and_hosts_without_rules() {
    let token = &[("x-token", "t1")];
    check("GET", "https://git.example.com:8443/a/b", token, "allow git-8443");
    check("GET", "https://git.example.com:8443/", &[("X-Token", "t2")], "deny default");
    check("GET", "https://git.example.com:8443/", H, "deny default");
    check("POST", "https://git.example.com:8443/", token, "deny default");
    check("GET", "https://git.example.com/a", H, "no rules"); // port 443: not ruled
    check("GET", "http://git.example.com:8443/a", token, "allow git-8443");
    check("GET", "https://example.com/", H, "no rules");
    check("GET", "https://www.api.example.com/", H, "no rules");
    check("GET", "https://internal.example.evil/", H, "no rules");
    check("GET", "http://api.example.com:80/repos/our-org/x", H, "allow read");
}

#[test]
fn has_rules_for_names_the_hosts_to_intercept() {
    let set = rules();
    let ruled = |t: &str| set.has_rules_for(&Target::parse_authority(t, Some(443)).expect("t"));
    assert!(ruled("api.example.com:443"));
    assert!(ruled("API.EXAMPLE.COM"));
    assert!(ruled("internal.example:1"));
    assert!(ruled("a.b.internal.example"));
    assert!(ruled("git.example.com:8443"));
    assert!(!ruled("git.example.com:443"));
    assert!(!ruled("example.com"));
    assert!(!RuleSet::default().has_rules_for(&Target::parse_authority("a.b:1", None).expect("t")));
}

#[test]
fn allowed_requests_carry_what_to_strip_and_inject() {
    let set = rules();
    let target = Target::parse_authority("api.example.com", Some(443)).expect("target");
    let facts = RequestFacts {
        target: &target,
        method: "GET",
        path: "/repos/our-org/x",
        query: None,
        headers: &[],
    };
    let RuleVerdict::Allowed { rule, strip, inject } = set.evaluate(&facts) else {
        panic!("allowed");
    };
    assert_eq!(rule, "read");
    assert_eq!(strip, ["cookie".into(), "authorization".into()]);
    assert_eq!(inject, Some(&Injection { header: "Authorization".to_owned(), secret: 0 }));
    let denied = set.evaluate(&RequestFacts { path: "/repos/our-org/secret", ..facts });
    let named = Reason::RuleDenied("no-secret".into());
    assert_eq!(denied, RuleVerdict::Denied { rule: Some("no-secret"), reason: named });
    let default = set.evaluate(&RequestFacts { path: "/nope", ..facts });
    assert_eq!(default, RuleVerdict::Denied { rule: None, reason: Reason::RuleDenied("".into()) });
    assert_eq!(set.rules().count(), 9);
}

#[test]
fn bad_rules_are_refused_and_all_reported() {
    use RuleAction::{Allow, Deny};
    let bad = vec![
        rule("ok", "example.com", Allow),
        rule("", "example.com", Allow),
        rule("ok", "example.com", Allow),
        Rule { methods: Some(Vec::new()), ..rule("no-methods", "example.com", Allow) },
        Rule { methods: methods(&["get"]), ..rule("lower", "example.com", Allow) },
        Rule { methods: methods(&["GE T"]), ..rule("space", "example.com", Allow) },
        Rule { strip_headers: vec!["bad:name".into()], ..rule("strip", "example.com", Allow) },
        Rule {
            headers: vec![header("", HeaderTest::Present)],
            ..rule("empty-header", "example.com", Allow)
        },
        Rule { query: vec![query("", None)], ..rule("empty-query", "example.com", Allow) },
        Rule {
            inject: Some(Injection { header: "Authorization".into(), secret: 1 }),
            ..rule("deny-inject", "example.com", Deny)
        },
        Rule { strip_headers: vec!["cookie".into()], ..rule("deny-strip", "example.com", Deny) },
    ];
    let errors = RuleSet::compile(bad).expect_err("bad rules");
    let got: Vec<(&str, &K)> = errors.iter().map(|e| (e.entry.as_str(), &e.kind)).collect();
    assert_eq!(
        got,
        [
            ("", &K::EmptyName),
            ("ok", &K::DuplicateName),
            ("no-methods", &K::NoMethods),
            ("lower", &K::LowerCaseMethod("get".into())),
            ("space", &K::InvalidMethod("GE T".into())),
            ("strip", &K::InvalidHeaderName("bad:name".into())),
            ("empty-header", &K::InvalidHeaderName("".into())),
            ("empty-query", &K::EmptyQueryName),
            ("deny-inject", &K::StripOrInjectOnDeny),
            ("deny-strip", &K::StripOrInjectOnDeny),
        ]
    );
    assert_eq!(
        errors[3].to_string(),
        "invalid request rule \"lower\": method \"get\" is not upper-case: methods are \
         case-sensitive and would never match"
    );
    let custom = Rule { methods: methods(&["PROPFIND", "M-SEARCH"]), ..rule("dav", "x.io", Allow) };
    assert!(RuleSet::compile(vec![custom]).is_ok());
}
