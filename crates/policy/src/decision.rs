//! The decision procedure (SPEC §6) and how each outcome is reported (SPEC §6.1).
//!
//! Two calls decide a connection: [`Policy::decide`] before any DNS lookup, and
//! [`Policy::check_resolved`] on the addresses that are about to be dialled. A deny is data
//! ([`Decision::Block`]), never an error.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::local::is_local;
use crate::pattern_set::{MatchKind, PatternSet};
use crate::rules::{PathError, RequestFacts, RuleSet, RuleVerdict};
use crate::target::Target;

/// `full` allows every method; `limited` is read-only (SPEC §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    #[default]
    Full,
    Limited,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Limited => "limited",
        }
    }

    pub fn parse(input: &str) -> Option<Mode> {
        match input {
            "full" => Some(Mode::Full),
            "limited" => Some(Mode::Limited),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The entry point a request came through, as named in logs and the blocked log (SPEC §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    HttpConnect,
    Socks5,
    Socks5Udp,
    UnixSocket,
    /// A query to proxyd's DNS service.
    Dns,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::HttpConnect => "http-connect",
            Protocol::Socks5 => "socks5",
            Protocol::Socks5Udp => "socks5-udp",
            Protocol::UnixSocket => "unix-socket",
            Protocol::Dns => "dns",
        }
    }

    /// Tunnels carry bytes proxyd cannot inspect, so limited mode refuses them all, except a
    /// `CONNECT` that proxyd terminates itself ([`Request::inspected`]).
    fn is_opaque(self) -> bool {
        matches!(self, Protocol::HttpConnect | Protocol::Socks5 | Protocol::Socks5Udp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ways a read-only method could still write (SPEC §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SideDoors {
    /// `Content-Length` > 0 or any `Transfer-Encoding`.
    pub body: bool,
    /// An `Upgrade` header.
    pub upgrade: bool,
    /// `X-HTTP-Method-Override`, `X-HTTP-Method` or `X-Method-Override`.
    pub method_override: bool,
}

impl SideDoors {
    /// Reads the side doors from request headers (names compared case-insensitively).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> SideDoors {
        let mut doors = SideDoors::default();
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("content-length") {
                // Anything but a plain zero counts as a body, including unparsable values.
                doors.body |= value.is_empty() || value.iter().any(|b| *b != b'0');
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                doors.body = true;
            } else if name.eq_ignore_ascii_case("upgrade") {
                doors.upgrade = true;
            } else if ["x-http-method-override", "x-http-method", "x-method-override"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                doors.method_override = true;
            }
        }
        doors
    }

    fn any(self) -> bool {
        self.body || self.upgrade || self.method_override
    }
}

/// What is being decided: one request or connection.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub protocol: Protocol,
    pub target: &'a Target,
    /// The HTTP method; `None` for SOCKS5.
    pub method: Option<&'a str>,
    pub mode: Mode,
    pub side_doors: SideDoors,
    /// Only for `CONNECT`: proxyd terminates TLS on this tunnel and decides every request
    /// inside it again, on its own, as `https` (limited-mode interception, `mitm = true`). The
    /// tunnel is then not opaque, so limited mode lets the `CONNECT` itself through; its method
    /// and side doors are still checked. A SOCKS5 `CONNECT` the listener intercepts (port 443)
    /// is inspected the same way; ignored for every other protocol (UDP is never inspected).
    pub inspected: bool,
    /// The request line and headers of an HTTP request (`http`, `https`), for the request
    /// rules of its host; `None` for tunnels and SOCKS5. A host with rules refuses requests
    /// that come without them.
    pub http: Option<&'a RequestFacts<'a>>,
}

/// Why a request was blocked (SPEC §6.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    ProxyDisabled,
    Denied,
    NotAllowed,
    NotAllowedLocal,
    MethodNotAllowed,
    SelfConnection,
    /// The TLS server name (SNI) inside an inspected tunnel differs from the `CONNECT` host,
    /// or is missing for a named host.
    SniMismatch,
    /// A Unix socket entry no longer names the socket that was there when the policy was
    /// loaded (replaced, or a path component turned into a symlink).
    UnixSocketChanged,
    /// A deny from the policy decider, with its own reason.
    Decider(Box<str>),
    /// A request to a host with request rules ([`crate::rules`]) that a deny rule matched, or
    /// that no rule allowed. Holds the name of the deny rule; empty for the default deny, so
    /// the message can say which of the two it was. The code is the same for both: the rule
    /// name is for logs, not for clients to branch on.
    RuleDenied(Box<str>),
    /// A DNS query proxyd's DNS service does not answer (a type other than A and AAAA, more
    /// than one question, a class other than IN).
    UnsupportedQuery,
    /// A request to a host with rules whose path has no normal form (dot segments, encoded
    /// slashes, malformed escapes…): refused before any rule is matched. The listener answers
    /// it with 400.
    InvalidPath(PathError),
}

impl Reason {
    /// The reason as logged and sent in JSON bodies.
    pub fn code(&self) -> &str {
        match self {
            Reason::ProxyDisabled => "proxy_disabled",
            Reason::Denied => "denied",
            Reason::NotAllowed => "not_allowed",
            Reason::NotAllowedLocal => "not_allowed_local",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::SelfConnection => "self_connection",
            Reason::SniMismatch => "sni_mismatch",
            Reason::UnixSocketChanged => "unix_socket_changed",
            Reason::Decider(reason) => reason,
            Reason::RuleDenied(_) => "rule_denied",
            Reason::InvalidPath(_) => "invalid_path",
            Reason::UnsupportedQuery => "unsupported_query",
        }
    }

    /// A short message for people, sent in the JSON body of a blocked response.
    pub fn message(&self) -> &'static str {
        match self {
            Reason::ProxyDisabled => "Proxy is disabled.",
            Reason::Denied => "Domain is in the denylist.",
            Reason::NotAllowed => "Domain not in allowlist.",
            Reason::NotAllowedLocal => "Local or private address not explicitly allowlisted.",
            Reason::MethodNotAllowed => "Method not allowed in limited mode.",
            Reason::SelfConnection => "Connections to the proxy itself are refused.",
            Reason::SniMismatch => "TLS server name does not match the CONNECT host.",
            Reason::UnixSocketChanged => {
                "The Unix socket changed since the policy was loaded; reload to allow the new one."
            }
            Reason::Decider(_) => "Blocked by the policy decider.",
            Reason::RuleDenied(rule) if rule.is_empty() => "No request rule allows this request.",
            Reason::RuleDenied(_) => "Blocked by a request rule.",
            Reason::UnsupportedQuery => "Only A and AAAA queries for one name are answered.",
            Reason::InvalidPath(_) => {
                "The request path is refused (dot segments, encoded slashes or backslashes, malformed escapes)."
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Block(Reason),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Decision::Allow => None,
            Decision::Block(reason) => Some(reason),
        }
    }
}

/// The outcome of [`Policy::decide`]: final, or an allowlist miss that the policy decider
/// (SPEC §9) may overturn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Decided(Decision),
    /// Only step 5 (`not_allowed`) ever yields this; denylist and local blocks never do.
    Consult(Consult),
}

/// An allowlist miss awaiting the decider. Whatever it answers, the later steps of the
/// decision (the method policy) still apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a consult must be turned into a decision"]
pub struct Consult {
    method_block: bool,
}

impl Consult {
    /// The decider allowed the request: continue with the method policy.
    pub fn allow(self) -> Decision {
        match self.method_block {
            true => Decision::Block(Reason::MethodNotAllowed),
            false => Decision::Allow,
        }
    }

    /// The decider denied the request with its own reason.
    pub fn deny(self, reason: impl Into<Box<str>>) -> Decision {
        Decision::Block(Reason::Decider(reason.into()))
    }

    /// There is no decider: the allowlist miss stands.
    pub fn not_allowed(self) -> Decision {
        Decision::Block(Reason::NotAllowed)
    }
}

/// A compiled policy: the lists and the switches that are fixed per config.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allowed: PatternSet,
    pub denied: PatternSet,
    pub allow_local_binding: bool,
    pub enabled: bool,
    /// `allow_unix_sockets`, each pinned to the socket that was there at load (SPEC §7.7).
    pub unix_sockets: Vec<UnixSocketRule>,
    /// `[[network.rules]]`: request rules for some hosts, inside HTTP and HTTPS.
    pub rules: RuleSet,
    /// The values rules inject ([`crate::Injection::secret`] indexes this table).
    pub secrets: Secrets,
}

/// Values request rules inject (credentials). `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

/// Which file a path named when the policy was loaded: device and inode numbers, and the
/// file's birth time where the file system records one (inode numbers are reused at once on
/// some file systems, so a socket re-created at the same path can get the same number). This
/// crate touches no files: the config loader fills it in and the egress path compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// Seconds and nanoseconds since the Unix epoch; `None` where the file system has none.
    pub birth: Option<(i64, u32)>,
}

/// One `allow_unix_sockets` entry, canonicalised once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocketRule {
    /// The path as configured.
    pub configured: PathBuf,
    /// The path with every symlink resolved at load: the only path ever connected to.
    pub canonical: PathBuf,
    /// The socket found there at load; `None` when nothing was there, and then the entry
    /// refuses every request until a reload finds one.
    pub socket: Option<FileId>,
}

impl Policy {
    /// Steps 2–6 of SPEC §6, before any DNS lookup. The target was parsed (step 1) already.
    pub fn decide(&self, request: &Request<'_>) -> Verdict {
        self.decide_with_rules(request).0
    }

    /// [`Policy::decide`], with the request rules' own verdict when they were evaluated (an
    /// HTTP(S) request to a host with rules), so a caller applies the allowing rule's edits
    /// without evaluating the rules a second time.
    pub fn decide_with_rules(&self, request: &Request<'_>) -> (Verdict, Option<RuleVerdict<'_>>) {
        let block = |reason| Verdict::Decided(Decision::Block(reason));
        let target = request.target;
        if !self.enabled {
            return (block(Reason::ProxyDisabled), None);
        }
        if self.denied.matches(target).is_some() {
            return (block(Reason::Denied), None);
        }
        let allowed = self.allowed.matches(target);
        if !self.allow_local_binding
            && target.host.is_local_literal()
            && allowed != Some(MatchKind::Explicit)
        {
            return (block(Reason::NotAllowedLocal), None);
        }
        let rules = self.evaluate_rules(request);
        if let Some(reason) = self.rule_block(request, rules.as_ref()) {
            return (block(reason), rules);
        }
        let method_block = request.mode == Mode::Limited
            && method_blocked(
                request.protocol,
                request.method,
                request.side_doors,
                request.inspected,
            );
        if allowed.is_none() {
            return (Verdict::Consult(Consult { method_block }), rules);
        }
        (Verdict::Decided(Consult { method_block }.allow()), rules)
    }

    /// The request rules' verdict for an HTTP(S) request with its facts to a host with rules.
    fn evaluate_rules(&self, request: &Request<'_>) -> Option<RuleVerdict<'_>> {
        let http = matches!(request.protocol, Protocol::Http | Protocol::Https);
        match request.http {
            Some(facts) if http && self.rules.has_rules_for(request.target) => {
                Some(self.rules.evaluate(facts))
            }
            _ => None,
        }
    }

    /// The request rules of the target's host: they narrow what the lists allow. An HTTP(S)
    /// request must be allowed by a rule (first match wins; no match denies); a tunnel to a
    /// host with rules must be one the listener inspects; anything else (an opaque tunnel,
    /// SOCKS5 to another port, UDP) is refused, since rules could not see inside it.
    fn rule_block(&self, request: &Request<'_>, rules: Option<&RuleVerdict<'_>>) -> Option<Reason> {
        if !self.rules.has_rules_for(request.target) {
            return None;
        }
        match (request.protocol, rules) {
            // An upgraded stream is not HTTP the rules can read (`h2c` would carry any request
            // past them), and a method-override header would make a read rule pass a write.
            (Protocol::Http | Protocol::Https, _) if request.side_doors.upgrade => {
                Some(Reason::RuleDenied("upgrades cannot be decided by request rules".into()))
            }
            (Protocol::Http | Protocol::Https, _) if request.side_doors.method_override => {
                Some(Reason::RuleDenied(
                    "method-override headers are refused on hosts with rules".into(),
                ))
            }
            (Protocol::Http | Protocol::Https, Some(verdict)) => match verdict {
                RuleVerdict::NoRules | RuleVerdict::Allowed { .. } => None,
                RuleVerdict::Denied { reason, .. } => Some(reason.clone()),
                RuleVerdict::BadPath(error) => Some(Reason::InvalidPath(*error)),
            },
            (Protocol::HttpConnect | Protocol::Socks5, _) if request.inspected => None,
            // Names are not requests: rules apply to what is sent to them.
            (Protocol::Dns, _) => None,
            _ => Some(Reason::RuleDenied(
                "request rules need an http request proxyd can read".into(),
            )),
        }
    }

    /// A request for a Unix socket (SPEC §7.7): `requested` must be absolute and name an
    /// `allow_unix_sockets` entry exactly, as configured or in its canonical form (no lookup
    /// happens here or later: the entry's canonical path is what gets connected to). The
    /// method policy of limited mode applies as for any request. Returns the rule that allowed
    /// it.
    pub fn decide_unix_socket(
        &self,
        requested: &str,
        method: &str,
        mode: Mode,
        side_doors: SideDoors,
    ) -> (Decision, Option<&UnixSocketRule>) {
        if !self.enabled {
            return (Decision::Block(Reason::ProxyDisabled), None);
        }
        let requested = Path::new(requested);
        let rule = self.unix_sockets.iter().find(|rule| {
            requested.is_absolute() && (rule.configured == requested || rule.canonical == requested)
        });
        let Some(rule) = rule else { return (Decision::Block(Reason::NotAllowed), None) };
        if rule.socket.is_none() {
            return (Decision::Block(Reason::UnixSocketChanged), None);
        }
        if mode == Mode::Limited
            && method_blocked(Protocol::UnixSocket, Some(method), side_doors, false)
        {
            return (Decision::Block(Reason::MethodNotAllowed), None);
        }
        (Decision::Allow, Some(rule))
    }

    /// Whether `rule` (from an older snapshot) is still allowed, for the same socket.
    pub fn still_allows_unix_socket(&self, rule: &UnixSocketRule) -> bool {
        self.enabled && self.unix_sockets.iter().any(|r| r == rule)
    }

    /// Step 7 of SPEC §6 and the dialling rules of §7.1, on the addresses about to be dialled
    /// for `target` (the literal itself, the loopback pair for `localhost`, or the resolver's
    /// answers). `own_listeners` are proxyd's bound addresses.
    pub fn check_resolved(
        &self,
        target: &Target,
        addrs: &[IpAddr],
        own_listeners: &[SocketAddr],
    ) -> Decision {
        let port = target.port;
        if addrs.iter().any(|ip| self.denied.covers_addr(*ip, port)) {
            return Decision::Block(Reason::Denied);
        }
        if addrs.iter().any(|ip| is_own_listener(*ip, port, own_listeners)) {
            return Decision::Block(Reason::SelfConnection);
        }
        if self.allow_local_binding {
            return Decision::Allow;
        }
        // An explicitly allowlisted `localhost` stands for the loopback addresses only.
        let localhost_allowed = target.host.is_localhost_name()
            && self.allowed.matches(target) == Some(MatchKind::Explicit);
        let blocked = addrs.iter().any(|ip| {
            is_local(*ip)
                && !self.allowed.contains_addr(*ip, port)
                && !(localhost_allowed && ip.to_canonical().is_loopback())
        });
        match blocked {
            true => Decision::Block(Reason::NotAllowedLocal),
            false => Decision::Allow,
        }
    }
}

/// Step 6: the method policy of limited mode and its side doors. An inspected `CONNECT`
/// ([`Request::inspected`]) is only the opening of a tunnel whose requests are each decided
/// again, so its own method must be `CONNECT`; every other opaque tunnel is refused.
fn method_blocked(
    protocol: Protocol,
    method: Option<&str>,
    side_doors: SideDoors,
    inspected: bool,
) -> bool {
    // A DNS lookup writes nothing (what it could leak, the policy decided: the name).
    if protocol == Protocol::Dns {
        return false;
    }
    let inspected = inspected && matches!(protocol, Protocol::HttpConnect | Protocol::Socks5);
    if protocol.is_opaque() && !inspected {
        return true;
    }
    let read_only = match (inspected, protocol) {
        (true, Protocol::Socks5) => method.is_none(),
        (true, _) => method == Some("CONNECT"),
        (false, _) => matches!(method, Some("GET" | "HEAD" | "OPTIONS")),
    };
    !read_only || side_doors.any()
}

/// Whether dialling `ip:port` would reach one of proxyd's own listeners (SPEC §7.1). A
/// listener on a loopback or unspecified address is reached through any loopback address, and
/// one on an unspecified address through any local one; proxyd cannot know every public
/// address of the machine, so those are compared literally.
fn is_own_listener(ip: IpAddr, port: u16, own: &[SocketAddr]) -> bool {
    let ip = ip.to_canonical();
    let loopbackish = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    own.iter().any(|listener| {
        let lip = listener.ip().to_canonical();
        listener.port() == port
            && (lip == ip
                || (loopbackish(lip) && loopbackish(ip))
                || (lip.is_unspecified() && is_local(ip)))
    })
}
