//! Request rules: which HTTP requests to a host may pass, by method, path, query and headers
//! ("allow `GET https://api.example.com/repos/our-org/*`, nothing else on that host").
//!
//! A host that any rule's host pattern matches is *ruled*: every request to it must be allowed
//! by a rule, and everything else is denied by default. The listeners can only apply rules to
//! requests they can read, so a `CONNECT` to a ruled host must be intercepted
//! ([`RuleSet::has_rules_for`]); hosts no rule names are untouched and keep the plain
//! allowlist decision of [`crate::decision`]. Rules only narrow: a request they allow must still
//! pass that decision (the denylist, the local-address rules, limited mode).
//!
//! Rules match the *normal form* of the path ([`normalize_path`]), and paths that have no
//! single unambiguous meaning (dot segments, encoded slashes, `//`, …) are refused outright
//! rather than normalised, because an upstream server may resolve them differently from us:
//! that mismatch is the classic way past a path ACL. Allow rules are the robust tool here: with
//! default deny, any spelling we do not recognise is refused. Deny rules carve exceptions out
//! of broader allow rules and match the normal form literally.
//!
//! Credentials stay out of the policy: a rule names which secret slot to inject
//! ([`Injection::secret`]); the caller owns the values.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashSet;
use std::fmt;

use crate::decision::Reason;
use crate::pattern::{self, Pattern};
use crate::pattern_set::PatternSet;
use crate::target::Target;

/// Why a request path has no normal form. The caller answers such requests with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PathError {
    #[error("path must start with `/`")]
    NotAbsolute,
    #[error("dot segment (`.` or `..`) in a path")]
    DotSegment,
    #[error("empty segment (`//`) in a path")]
    EmptySegment,
    #[error("encoded slash (`%2f`) in a path")]
    EncodedSlash,
    #[error("backslash in a path, raw or encoded")]
    Backslash,
    #[error("malformed percent-encoding in a path")]
    MalformedEscape,
    #[error("control byte or nul in a path, raw or encoded")]
    ControlByte,
    #[error("whitespace in a path")]
    Whitespace,
    #[error("non-ascii character in a path (it must be percent-encoded)")]
    NonAscii,
    #[error("query or fragment in a path")]
    QueryOrFragment,
    /// Servers disagree on `;` parameters (Tomcat, Jetty and Spring drop them, most others
    /// keep them), so `/admin;x` could be `/admin` to the origin and something else to a rule.
    #[error("path parameter (`;`) in a path")]
    Parameters,
    /// `%25` followed by hex digits: a server that decodes twice would see another character
    /// (`%252e` as `.`) than the rules did.
    #[error("double percent-encoding (`%25` then hex digits) in a path")]
    DoubleEncoded,
}

/// Normalises the path of a request target (without its query) for matching.
///
/// The normal form is canonical, so two spellings an upstream server reads alike compare
/// equal:
/// - percent-encoding is decoded exactly once, and only for unreserved characters (RFC 3986
///   §2.3: `A-Z a-z 0-9 - . _ ~`): `%7E` becomes `~`, `%41` becomes `A`. Every other escape
///   stays encoded with upper-case hex (`%3a` becomes `%3A`), and `%252e` stays `%252E`: the
///   literal text `%2e`, never a dot.
/// - characters that are not allowed raw in a path (`" < > [ ] ^ ` { | }`) are encoded, the way
///   browsers send them.
///
/// Refused ([`PathError`]), because servers disagree about what they mean:
/// - a path not starting with `/` (also `*` and the empty path: the caller handles those);
/// - dot segments `.` and `..`, however spelled (`%2e`, `.%2E`, `%2e%2e`), also when followed by
///   `;` parameters (Tomcat reads `/..;/` as `/../`);
/// - empty segments: `//` is refused, not collapsed. Collapsing would make `/a//b` match rules
///   for `/a/b` while some servers route it elsewhere, and `//host/...` reads as a
///   scheme-relative URL to others. A single trailing slash is kept (`/a/` is not `/a`), and
///   so is the root `/`. A segment made only of `;` parameters counts as empty too;
/// - `%2F` (an encoded slash: one segment here, two segments to a decoding server), a raw `\`
///   or `%5C` (a separator on some servers);
/// - malformed escapes (`%`, `%2`, `%zz`);
/// - control bytes and NUL, raw or encoded (`%00` truncates paths in C backends, `%0D%0A`
///   splits headers where paths are echoed), and raw whitespace;
/// - non-ASCII characters: they must arrive percent-encoded;
/// - `?` and `#`: the caller splits the query off first, and a fragment is never sent.
///
/// The output is its own normal form: `normalize_path(&normalize_path(p)?) == normalize_path(p)`.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?))
                    .ok_or(PathError::MalformedEscape)?;
                match value {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    v if v.is_ascii_control() => return Err(PathError::ControlByte),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => push_escape(&mut out, v),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Parameters),
            b'?' | b'#' => return Err(PathError::QueryOrFragment),
            b' ' => return Err(PathError::Whitespace),
            b if b.is_ascii_control() => return Err(PathError::ControlByte),
            b if !b.is_ascii() => return Err(PathError::NonAscii),
            b if is_unreserved(b) || is_sub_delim_or_separator(b) => out.push(char::from(b)),
            b => push_escape(&mut out, b),
        }
        i += 1;
    }
    check_segments(&out)?;
    Ok(out)
}

/// The segment rules of [`normalize_path`], on a path whose escapes are already normalised.
fn check_segments(path: &str) -> Result<(), PathError> {
    // In the normal form, an encoded `%` followed by two hex digits is what a server that
    // decodes twice reads as another character (`%252e`, or `%25%32%65` once decoded).
    let bytes = path.as_bytes();
    if bytes
        .windows(5)
        .any(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit())
    {
        return Err(PathError::DoubleEncoded);
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let base = segment.split(';').next().unwrap_or(segment);
        if base == "." || base == ".." {
            return Err(PathError::DotSegment);
        }
        if base.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The other characters RFC 3986 §3.3 allows raw in a path: sub-delims, `:`, `@` and `/`.
fn is_sub_delim_or_separator(b: u8) -> bool {
    matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
        || matches!(b, b':' | b'@' | b'/')
}

/// A rule, or a path pattern of one, refused at load time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request rule {entry:?}: {kind}")]
pub struct RuleError {
    /// The rule's name, or the pattern text for [`PathPattern::parse`].
    pub entry: String,
    pub kind: RuleErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleErrorKind {
    #[error("path pattern: {0}")]
    Path(PathError),
    #[error("`**` is only allowed as a whole path segment")]
    MisplacedDoubleStar,
    #[error("a rule needs a name")]
    EmptyName,
    #[error("another rule has the same name")]
    DuplicateName,
    #[error("an empty method list matches nothing (leave it out to match every method)")]
    NoMethods,
    #[error("method {0:?} is not an http token")]
    InvalidMethod(String),
    #[error("method {0:?} is not upper-case: methods are case-sensitive and would never match")]
    LowerCaseMethod(String),
    #[error("header name {0:?} is not an http token")]
    InvalidHeaderName(String),
    #[error("a query matcher needs a parameter name")]
    EmptyQueryName,
    #[error("strip_headers and inject only apply to allow rules")]
    StripOrInjectOnDeny,
}

/// A segment-aware glob over normalised paths.
///
/// - a literal segment compares exactly (case-sensitive, in the normal form);
/// - `*` inside a segment matches any run of characters, the empty one too, but never a `/`:
///   `/repos/*` matches `/repos/x` and `/repos/`, not `/repos/x/y`;
/// - `**` as a whole segment matches zero or more segments: `/a/**/b` matches `/a/b` and
///   `/a/x/y/b`, and a trailing `/**` matches the prefix itself and everything below it
///   (`/a/**` matches `/a`, `/a/` and `/a/x/y`, not `/ab`).
///
/// `*` is always a wildcard; there is no `?` (a path never holds one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The normalised pattern, as displayed.
    source: Box<str>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Glob(Box<str>),
    AnyDepth,
}

impl PathPattern {
    /// Parses a pattern, normalising it with the rules of [`normalize_path`] (it is refused for
    /// the same reasons: a pattern with `..` could never match a path).
    pub fn parse(pattern: &str) -> Result<PathPattern, RuleError> {
        let error = |kind| RuleError { entry: pattern.to_owned(), kind };
        let source = normalize_path(pattern).map_err(|e| error(RuleErrorKind::Path(e)))?;
        let mut segments: Vec<Segment> = Vec::new();
        for segment in source[1..].split('/') {
            let segment = match segment {
                "**" if segments.last() == Some(&Segment::AnyDepth) => continue,
                "**" => Segment::AnyDepth,
                s if s.contains("**") => return Err(error(RuleErrorKind::MisplacedDoubleStar)),
                s if s.contains('*') => Segment::Glob(s.into()),
                s => Segment::Literal(s.into()),
            };
            segments.push(segment);
        }
        Ok(PathPattern { source: source.into(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path`, already in normal form ([`normalize_path`]), matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else { return false };
        let path: Vec<&str> = rest.split('/').collect();
        segments_match(&self.segments, &path)
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Segment {
    fn matches(&self, segment: &str) -> bool {
        match self {
            Segment::Literal(literal) => **literal == *segment,
            Segment::Glob(glob) => pattern::label_matches(glob.as_bytes(), segment.as_bytes()),
            Segment::AnyDepth => true,
        }
    }
}

/// Glob matching over segments, `**` standing for any run of them. Backtracking only to the
/// latest `**` is enough (as in [`pattern::label_matches`]), so the cost is at most the product
/// of the two lengths, whatever the pattern.
fn segments_match(pattern: &[Segment], path: &[&str]) -> bool {
    let (mut p, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(segment) = path.get(s) {
        match pattern.get(p) {
            Some(Segment::AnyDepth) => {
                star = Some((p, s));
                p += 1;
            }
            Some(pat) if pat.matches(segment) => {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    p = sp + 1;
                    s = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|seg| *seg == Segment::AnyDepth)
}

/// A test on one query parameter.
///
/// The query is split on `&` into `name=value` pairs (`name` alone has an empty value); names
/// and values are percent-decoded once, `+` read as a space, as servers parse forms. A
/// malformed escape is kept as it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMatcher {
    /// Decoded.
    pub name: String,
    pub test: QueryTest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryTest {
    Present,
    /// The decoded value, exactly.
    Equals(String),
}

/// A test on one request header. The name is compared case-insensitively, the value as bytes,
/// exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatcher {
    pub name: String,
    pub test: HeaderTest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    Present,
    Equals(String),
    Prefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Deny,
}

/// Which header an allowed request gets a credential in, and which of the caller's secrets:
/// the policy never holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub header: String,
    /// An index into the secrets table the caller owns (and checks at load).
    pub secret: usize,
}

/// One request rule. Every test given must pass for the rule to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// For logs and the deny reason; unique in a [`RuleSet`].
    pub name: String,
    /// The hosts the rule is about, in the allowlist grammar; a port-scoped pattern
    /// (`api.example.com:443`) rules that port only.
    pub host: Pattern,
    /// `None` matches every method. Methods are case-sensitive (RFC 9110 §9.1) and compared
    /// exactly, so entries must be upper-case: `get` is refused rather than left never to
    /// match.
    pub methods: Option<Vec<String>>,
    /// Empty matches every path; otherwise any one of them must match.
    pub paths: Vec<PathPattern>,
    pub query: Vec<QueryMatcher>,
    pub headers: Vec<HeaderMatcher>,
    pub action: RuleAction,
    /// Request headers to remove before forwarding (allow rules only).
    pub strip_headers: Vec<String>,
    /// A credential header to add before forwarding (allow rules only).
    pub inject: Option<Injection>,
}

/// What the listener knows about one request to decide it.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub target: &'a Target,
    pub method: &'a str,
    /// The path as sent, without the query.
    pub path: &'a str,
    /// The query as sent, without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// The outcome of [`RuleSet::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleVerdict<'a> {
    /// No rule names this host: the request is decided by the lists alone.
    NoRules,
    Allowed {
        rule: &'a str,
        /// Header names to remove, lower-case: the rule's `strip_headers` and the injected
        /// header, so a client-sent value of it is never forwarded next to the injected one.
        strip: &'a [Box<str>],
        inject: Option<&'a Injection>,
    },
    /// A deny rule matched (`rule` is its name), or no rule did (`None`: default deny).
    Denied { rule: Option<&'a str>, reason: Reason },
    /// The host is ruled but the path has no normal form: the caller answers 400.
    BadPath(PathError),
}

#[derive(Debug, Clone)]
struct CompiledRule {
    rule: Rule,
    host: PatternSet,
    strip: Vec<Box<str>>,
}

/// Compiled request rules, evaluated in order.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    /// Every rule's host: whether a host is ruled at all, at hash-lookup cost.
    hosts: PatternSet,
}

impl RuleSet {
    /// Checks and compiles the rules, reporting every bad one rather than the first.
    pub fn compile(rules: Vec<Rule>) -> Result<RuleSet, Vec<RuleError>> {
        let mut set = RuleSet::default();
        let mut errors = Vec::new();
        let mut names = HashSet::new();
        for rule in rules {
            let kind = match check(&rule) {
                Err(kind) => Some(kind),
                Ok(()) if !names.insert(rule.name.clone()) => Some(RuleErrorKind::DuplicateName),
                Ok(()) => None,
            };
            if let Some(kind) = kind {
                errors.push(RuleError { entry: rule.name, kind });
                continue;
            }
            let mut strip: Vec<Box<str>> = Vec::new();
            let injected = rule.inject.iter().map(|inject| &inject.header);
            for name in rule.strip_headers.iter().chain(injected) {
                let name: Box<str> = name.to_ascii_lowercase().into();
                if !strip.contains(&name) {
                    strip.push(name);
                }
            }
            let mut host = PatternSet::default();
            host.insert(rule.host.clone());
            set.hosts.insert(rule.host.clone());
            set.rules.push(CompiledRule { rule, host, strip });
        }
        match errors.is_empty() {
            true => Ok(set),
            false => Err(errors),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in evaluation order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|compiled| &compiled.rule)
    }

    /// Whether any rule's host pattern matches `target`. Such a host is default-deny for the
    /// requests no rule allows, and a `CONNECT` to it must be intercepted so its requests can
    /// be evaluated: an opaque tunnel would bypass every rule.
    pub fn has_rules_for(&self, target: &Target) -> bool {
        self.hosts.matches(target).is_some()
    }

    /// Decides one request. The rules whose host matches are tried in order and the first one
    /// that matches wins, allow or deny; so a narrow deny rule must come before the broad allow
    /// rule it carves out of. When none matches, the request is denied.
    ///
    /// A query or header test on a repeated name is judged so that the server's choice between
    /// the copies cannot matter: an allow rule needs every copy to pass, a deny rule any one.
    pub fn evaluate(&self, request: &RequestFacts<'_>) -> RuleVerdict<'_> {
        if !self.has_rules_for(request.target) {
            return RuleVerdict::NoRules;
        }
        let path = match normalize_path(request.path) {
            Ok(path) => path,
            Err(err) => return RuleVerdict::BadPath(err),
        };
        // The query is parsed only when a rule tests it, then once.
        let parsed = OnceCell::new();
        let query = || parsed.get_or_init(|| parse_query(request.query.unwrap_or_default()));
        let matched = self.rules.iter().find(|compiled| {
            compiled.host.matches(request.target).is_some()
                && rule_matches(&compiled.rule, request, &path, query)
        });
        match matched {
            Some(CompiledRule { rule, strip, .. }) if rule.action == RuleAction::Allow => {
                RuleVerdict::Allowed { rule: &rule.name, strip, inject: rule.inject.as_ref() }
            }
            Some(CompiledRule { rule, .. }) => RuleVerdict::Denied {
                rule: Some(&rule.name),
                reason: Reason::RuleDenied(rule.name.as_str().into()),
            },
            None => RuleVerdict::Denied { rule: None, reason: Reason::RuleDenied("".into()) },
        }
    }
}

type QueryPairs<'q> = Vec<(Cow<'q, [u8]>, Cow<'q, [u8]>)>;

fn rule_matches<'q>(
    rule: &Rule,
    request: &RequestFacts<'_>,
    path: &str,
    query: impl Fn() -> &'q QueryPairs<'q>,
) -> bool {
    // Allow rules need every copy of a repeated name to pass; deny rules any one.
    let every = rule.action == RuleAction::Allow;
    rule.methods.as_ref().is_none_or(|methods| methods.iter().any(|m| m == request.method))
        && (rule.paths.is_empty() || rule.paths.iter().any(|pattern| pattern.matches(path)))
        && rule.query.iter().all(|matcher| {
            let values = query().iter().filter(|(k, _)| **k == *matcher.name.as_bytes());
            let test = |value: &[u8]| match &matcher.test {
                QueryTest::Present => true,
                QueryTest::Equals(expected) => value == expected.as_bytes(),
            };
            judge(values.map(|(_, v)| &**v), every, test)
        })
        && rule.headers.iter().all(|matcher| {
            let values =
                request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(&matcher.name));
            let test = |value: &[u8]| match &matcher.test {
                HeaderTest::Present => true,
                HeaderTest::Equals(expected) => value == expected.as_bytes(),
                HeaderTest::Prefix(prefix) => value.starts_with(prefix.as_bytes()),
            };
            judge(values.map(|(_, v)| *v), every, test)
        })
}

/// At least one value, and then every one (`every`) or any one passes.
fn judge<'v>(
    values: impl Iterator<Item = &'v [u8]>,
    every: bool,
    test: impl Fn(&[u8]) -> bool,
) -> bool {
    let mut values = values.peekable();
    if values.peek().is_none() {
        return false;
    }
    match every {
        true => values.all(test),
        false => values.any(test),
    }
}

fn parse_query(query: &str) -> QueryPairs<'_> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(name), decode_component(value))
        })
        .collect()
}

/// Percent-decodes once, `+` as a space; a malformed escape stays as written.
fn decode_component(raw: &str) -> Cow<'_, [u8]> {
    let bytes = raw.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match b {
            b'%' => bytes
                .get(i + 1..i + 3)
                .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?)),
            _ => None,
        };
        match (escaped, b) {
            (Some(value), _) => {
                out.push(value);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// The load-time checks of one rule, apart from name uniqueness.
fn check(rule: &Rule) -> Result<(), RuleErrorKind> {
    if rule.name.is_empty() {
        return Err(RuleErrorKind::EmptyName);
    }
    if let Some(methods) = &rule.methods {
        if methods.is_empty() {
            return Err(RuleErrorKind::NoMethods);
        }
        for method in methods {
            if !is_token(method) {
                return Err(RuleErrorKind::InvalidMethod(method.clone()));
            }
            if method.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(RuleErrorKind::LowerCaseMethod(method.clone()));
            }
        }
    }
    if rule.query.iter().any(|matcher| matcher.name.is_empty()) {
        return Err(RuleErrorKind::EmptyQueryName);
    }
    let mut header_names = (rule.headers.iter().map(|matcher| &matcher.name))
        .chain(&rule.strip_headers)
        .chain(rule.inject.iter().map(|inject| &inject.header));
    if let Some(name) = header_names.find(|name| !is_token(name)) {
        return Err(RuleErrorKind::InvalidHeaderName(name.clone()));
    }
    if rule.action == RuleAction::Deny && (!rule.strip_headers.is_empty() || rule.inject.is_some())
    {
        return Err(RuleErrorKind::StripOrInjectOnDeny);
    }
    Ok(())
}

/// An RFC 9110 §5.6.2 token: what methods and header names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}
