//! The bypass suite (issue 6 item 2): the hostile targets of the policy tests that can be
//! expressed on the wire, sent as raw bytes to the built binary through every entry point:
//! absolute-form HTTP, `CONNECT`, and SOCKS5 with the domain and the IP address types.
//!
//! Each group runs against its own proxyd whose config would let the lax reading of a hostile
//! spelling through (often to the canary). One scenario per group and entry point; a failure
//! lists every failing case. Besides the status or reply (SPEC §6.1), every case asserts that
//! the canary was not reached, except the controls, which must reach it (proving the canary
//! would notice).

mod cases;
mod groups;

use std::net::IpAddr;

use anyhow::{Result, bail};
use serde_json::Value;

use super::proxyd::Proxyd;
use super::servers::Canary;
use super::wire::{self, Reply, SocksAddr};
use super::{Env, Scenario};
use cases::{Case, Expect, Ports};
use groups::{GROUPS, Group};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Absolute,
    Connect,
    SocksDomain,
    SocksIp,
}

const ENTRIES: [Entry; 4] = [Entry::Absolute, Entry::Connect, Entry::SocksDomain, Entry::SocksIp];

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Absolute => "absolute-form",
            Entry::Connect => "CONNECT",
            Entry::SocksDomain => "socks5-domain",
            Entry::SocksIp => "socks5-ip",
        }
    }

    fn applies(self, case: &Case) -> bool {
        match self {
            Entry::Absolute => case.absolute.is_some(),
            Entry::Connect => case.connect.is_some(),
            Entry::SocksDomain => case.socks.is_some(),
            Entry::SocksIp => socks_ip(case).is_some(),
        }
    }
}

/// The IP address type form of a case: its SOCKS host when that is an IP literal.
fn socks_ip(case: &Case) -> Option<IpAddr> {
    let (host, _) = case.socks.as_ref()?;
    std::str::from_utf8(host).ok()?.parse().ok()
}

/// One scenario per group and entry point that has cases other than controls.
pub(crate) fn scenarios() -> Vec<Scenario> {
    let ports = Ports::example();
    let mut scenarios = Vec::new();
    for group in GROUPS {
        let cases = (group.cases)(&ports);
        for entry in ENTRIES {
            let count = cases.iter().filter(|c| entry.applies(c)).count();
            let hostile = cases.iter().filter(|c| entry.applies(c) && c.expect != Expect::Reaches);
            if hostile.count() == 0 {
                continue;
            }
            let name = format!("bypass {} via {} ({count} cases)", group.name, entry.name());
            scenarios.push(Scenario::new(name, super::BYPASS_TIMEOUT, move |env| {
                run_group(env, group, entry)
            }));
        }
    }
    scenarios
}

fn run_group(env: &Env, group: &Group, entry: Entry) -> Result<()> {
    let canary = Canary::start()?;
    let proxyd = Proxyd::start(env, group.config)?;
    let ports = Ports::new(&canary, &proxyd);
    let cases: Vec<Case> = (group.cases)(&ports).into_iter().filter(|c| entry.applies(c)).collect();
    let mut failures = Vec::new();
    let mut hits = canary.hits()?;
    for case in &cases {
        let outcome = send(&proxyd, entry, case);
        let now = canary.hits()?;
        let reached = now > hits;
        hits = now;
        if let Err(why) = judge(case.expect, &outcome, reached) {
            let label = match (&case.socks, entry) {
                (Some((host, port)), Entry::SocksDomain | Entry::SocksIp) => {
                    format!("{:?} port {port}", String::from_utf8_lossy(host))
                }
                _ => case.label.clone(),
            };
            failures.push(format!("{label}: {why}"));
        }
    }
    if !failures.is_empty() {
        bail!("{} of {} case(s): {}", failures.len(), cases.len(), failures.join("; "));
    }
    Ok(())
}

enum Outcome {
    Http(Option<Reply>),
    Socks(Option<u8>),
    Error(String),
}

fn send(proxyd: &Proxyd, entry: Entry, case: &Case) -> Outcome {
    let result = match entry {
        Entry::Absolute | Entry::Connect => {
            let head = if entry == Entry::Absolute { &case.absolute } else { &case.connect };
            wire::http(proxyd.http, head.as_deref().unwrap_or_default()).map(Outcome::Http)
        }
        Entry::SocksDomain | Entry::SocksIp => {
            let Some((host, port)) = &case.socks else {
                return Outcome::Error("no SOCKS form".into());
            };
            let addr = match socks_ip(case) {
                Some(ip) if entry == Entry::SocksIp => SocksAddr::Ip(ip),
                _ => SocksAddr::Domain(host),
            };
            wire::socks5_connect(proxyd.socks, &addr, *port).map(Outcome::Socks)
        }
    };
    result.unwrap_or_else(|err| Outcome::Error(format!("{err:#}")))
}

/// The `x-proxy-error` of a block `reason` (SPEC §6.1).
fn header_for(reason: &str) -> &'static str {
    match reason {
        "denied" => "blocked-by-denylist",
        "not_allowed" | "not_allowed_local" => "blocked-by-allowlist",
        "method_not_allowed" => "blocked-by-method-policy",
        _ => "blocked-by-policy",
    }
}

fn judge(expect: Expect, outcome: &Outcome, reached: bool) -> Result<(), String> {
    if expect == Expect::Reaches {
        return if reached { Ok(()) } else { Err("the control did not reach the canary".into()) };
    }
    let got = match outcome {
        Outcome::Error(err) => return Err(err.clone()),
        Outcome::Http(None) => return Err("closed without a response".into()),
        Outcome::Socks(None) => return Err("closed without a SOCKS5 reply".into()),
        Outcome::Http(Some(reply)) => judge_http(expect, reply),
        Outcome::Socks(Some(rep)) => judge_socks(expect, *rep),
    };
    match (got, reached) {
        (Ok(()), false) => Ok(()),
        (Ok(()), true) => Err("the canary was reached".into()),
        (Err(why), false) => Err(why),
        (Err(why), true) => Err(format!("{why}, and the canary was reached")),
    }
}

fn judge_http(expect: Expect, reply: &Reply) -> Result<(), String> {
    let header = reply.header("x-proxy-error");
    let body: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let reason = body.as_ref().and_then(|b| b["reason"].as_str()).unwrap_or("");
    let ok = match expect {
        Expect::Malformed | Expect::Unicode => reply.status == 400 && header.is_none(),
        Expect::Blocked(want) => {
            reply.status == 403 && header == Some(header_for(want)) && reason == want
        }
        Expect::Reaches => true,
    };
    if ok {
        return Ok(());
    }
    let got = match &body {
        Some(_) => format!("{} {header:?} {reason:?}", reply.status),
        None => format!("{} {header:?} {:?}", reply.status, String::from_utf8_lossy(&reply.body)),
    };
    Err(format!("want {}, got {got}", expect.http()))
}

fn judge_socks(expect: Expect, rep: u8) -> Result<(), String> {
    let ok = match expect {
        Expect::Malformed => matches!(rep, 0x01 | 0x08),
        Expect::Blocked(_) | Expect::Unicode => rep == 0x02,
        Expect::Reaches => true,
    };
    if ok { Ok(()) } else { Err(format!("want reply {}, got {rep:#04x}", expect.socks())) }
}
