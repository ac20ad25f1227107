//! The bypass table (`testdata/bypass.toml`) through the parser and the decision: every row on
//! every entry point, with the addresses a literal stands for and proxyd's own listeners on the
//! table's placeholder ports. Whole request heads are the listeners' business (their tests and
//! e2e send them); rows that need a hosts-file name need a resolver, so only e2e runs them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proxyd_test_support::bypass::{Case, Entry, Expect, Group, Ports, Wire, table};

use crate::decision::{Decision, Mode, Policy, Protocol, Request, SideDoors, Verdict};
use crate::pattern::ListKind;
use crate::pattern_set::PatternSet;
use crate::target::{Host, Target, TargetError};

fn policy(group: &Group) -> Policy {
    let compile = |entries: &[String], list| match PatternSet::compile(entries, list) {
        Ok(set) => set,
        Err(errors) => panic!("group {}: {errors:?}", group.name),
    };
    Policy {
        allowed: compile(&group.allowed_domains, ListKind::Allowed),
        denied: compile(&group.denied_domains, ListKind::Denied),
        allow_local_binding: group.allow_local_binding,
        enabled: true,
        ..Policy::default()
    }
}

/// The target an entry point's parser makes of the case; `None` for whole heads.
fn parse(case: &Case) -> Option<Result<Target, TargetError>> {
    Some(match (&case.wire, case.entry, &case.authority) {
        // The head carries the authority in the URL and in `Host`, and the listener refuses
        // the request unless both parse to the same target (`http-proxy/src/forward.rs`): a `?`
        // or `#` cuts the URL's authority short, never `Host`'s.
        (Wire::Http(_), Entry::Absolute, Some(authority)) => {
            let url = Target::parse_absolute_url(&format!("http://{authority}/"));
            let host = Target::parse_authority(authority, Some(80));
            match (url, host) {
                (Err(error), _) | (Ok(_), Err(error)) => Err(error),
                (Ok(url), Ok(host)) if url.target == host => Ok(url.target),
                (Ok(_), Ok(_)) => Err(TargetError::NotAbsolute),
            }
        }
        (Wire::Http(_), Entry::Connect, Some(authority)) => {
            Target::parse_authority(authority, None)
        }
        (Wire::Http(_), _, _) => return None,
        (Wire::SocksDomain(name, port), _, _) => Target::from_socks_domain(name, *port),
        (Wire::SocksIp(ip, port), _, _) => Target::from_host(Host::Ip(*ip), *port),
    })
}

/// What the policy makes of a parsed target: steps 2–6, then step 7 on the addresses a literal
/// or `localhost` stands for.
fn decide(policy: &Policy, protocol: Protocol, target: &Target, own: &[SocketAddr]) -> Expect {
    let method = match protocol {
        Protocol::Http => Some("GET"),
        Protocol::HttpConnect => Some("CONNECT"),
        _ => None,
    };
    let request = Request {
        protocol,
        target,
        method,
        mode: Mode::Full,
        side_doors: SideDoors::default(),
        inspected: false,
        http: None,
    };
    let blocked = |reason: &crate::Reason| Expect::Blocked(reason.code().to_owned());
    match policy.decide(&request) {
        Verdict::Decided(Decision::Block(reason)) => return blocked(&reason),
        Verdict::Consult(_) => return Expect::Blocked("not_allowed".into()),
        Verdict::Decided(Decision::Allow) => {}
    }
    let Some(addrs) = target.host.fixed_addrs() else {
        panic!("{target}: allowed, and a name needs DNS: not a row for this table")
    };
    match policy.check_resolved(target, &addrs, own) {
        Decision::Block(reason) => blocked(&reason),
        Decision::Allow => Expect::Reaches,
    }
}

#[test]
fn every_row_is_parsed_and_decided_as_the_table_says() {
    let table = table();
    let ports = Ports::from(table.ports);
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let own: Vec<SocketAddr> =
        [ports.http, ports.socks, ports.admin].map(|port| SocketAddr::new(loopback, port)).into();
    let mut failures = Vec::new();
    let mut checked = 0;
    for group in &table.groups {
        let policy = policy(group);
        for case in group.cases(&ports) {
            let Some(parsed) = parse(&case) else { continue };
            checked += 1;
            let what = format!("{} via {} {}", group.name, case.entry.name(), case.label);
            match (parsed, &case.meaning) {
                (Err(error), Expect::Malformed) => {
                    let got = format!("{error:?}");
                    if case.error.as_ref().is_some_and(|want| *want != got) {
                        failures.push(format!("{what}: error {got}, want {:?}", case.error));
                    }
                }
                (Err(error), want) => failures.push(format!("{what}: {error:?}, want {want:?}")),
                (Ok(target), want) => {
                    if let Some(canonical) = case.canonical.as_ref()
                        && target.host.to_string() != *canonical
                    {
                        failures.push(format!("{what}: canonical {}", target.host));
                    }
                    // A SOCKS5 destination is also a UDP datagram's, through the same parser.
                    let protocols: &[Protocol] = match case.entry {
                        Entry::Absolute => &[Protocol::Http],
                        Entry::Connect => &[Protocol::HttpConnect],
                        Entry::SocksDomain | Entry::SocksIp => {
                            &[Protocol::Socks5, Protocol::Socks5Udp]
                        }
                    };
                    for protocol in protocols {
                        let got = decide(&policy, *protocol, &target, &own);
                        if got != *want {
                            failures.push(format!(
                                "{what} ({protocol:?}): parsed as {target}, {got:?}, want {want:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} cases:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 300, "only {checked} cases checked");
}
