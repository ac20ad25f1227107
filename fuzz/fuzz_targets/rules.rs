//! The request-rule matcher: a rule sees the path's normal form, so a path and its normal
//! form are decided alike, a path with no normal form is refused, and what a rule allows or
//! denies it matched.
//!
//! Input: a first byte choosing allow or deny, then `PATTERN\nPATH[\nQUERY]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyd_policy::{
    Host, ListKind, PathPattern, Pattern, RequestFacts, Rule, RuleAction, RuleSet, RuleVerdict,
    Target, normalize_path,
};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(input) = std::str::from_utf8(rest) else { return };
    let mut lines = input.splitn(3, '\n');
    let (Some(pattern), Some(path)) = (lines.next(), lines.next()) else { return };
    let query = lines.next();
    let Ok(pattern) = PathPattern::parse(pattern) else { return };
    let action = if first & 1 == 0 { RuleAction::Allow } else { RuleAction::Deny };
    let rule = |name: &str, action, paths| Rule {
        name: name.to_owned(),
        host: Pattern::parse("api.example", ListKind::Allowed).expect("pattern"),
        methods: None,
        paths,
        query: Vec::new(),
        headers: Vec::new(),
        action,
        strip_headers: Vec::new(),
        inject: None,
    };
    let mut rules = vec![rule("fuzzed", action, vec![pattern.clone()])];
    if action == RuleAction::Deny {
        // A deny rule carves out of a broad allow rule.
        rules.push(rule("everything", RuleAction::Allow, Vec::new()));
    }
    let set = RuleSet::compile(rules).expect("rules");
    let ruled = Target::new(Host::Name("api.example".into()), 443);
    let other = Target::new(Host::Name("other.example".into()), 443);
    let facts = |target, path| RequestFacts { target, method: "GET", path, query, headers: &[] };
    assert_eq!(set.evaluate(&facts(&other, path)), RuleVerdict::NoRules);
    let verdict = set.evaluate(&facts(&ruled, path));
    let normal = match normalize_path(path) {
        Ok(normal) => normal,
        Err(error) => {
            assert_eq!(verdict, RuleVerdict::BadPath(error), "{path:?}");
            return;
        }
    };
    // The normal form is decided as the path was.
    assert_eq!(set.evaluate(&facts(&ruled, &normal)), verdict, "{path:?} vs {normal:?}");
    let matched = pattern.matches(&normal);
    match (&verdict, action) {
        (RuleVerdict::Allowed { rule, .. }, RuleAction::Allow) => {
            assert!(matched && *rule == "fuzzed", "{path:?}: allowed by {rule} unmatched");
        }
        (RuleVerdict::Denied { rule: None, .. }, RuleAction::Allow) => {
            assert!(!matched, "{path:?}: {pattern} matched {normal:?} but was denied");
        }
        (RuleVerdict::Denied { rule: Some(rule), .. }, RuleAction::Deny) => {
            assert!(matched && *rule == "fuzzed", "{path:?}: denied by {rule} unmatched");
        }
        (RuleVerdict::Allowed { rule, .. }, RuleAction::Deny) => {
            assert!(!matched && *rule == "everything", "{path:?}: {pattern} matched {normal:?}");
        }
        (verdict, action) => panic!("{path:?}: {action:?} rule gave {verdict:?}"),
    }
});
