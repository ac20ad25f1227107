//! The bypass suite (issue 6 item 2): every row of the bypass table (`testdata/bypass.toml`,
//! shared with the policy unit tests and the listener tests) sent as raw bytes to the built
//! binary through every entry point it applies to: absolute-form HTTP, `CONNECT`, and SOCKS5
//! with the domain and the IP address types.
//!
//! Each group runs against its own proxyd with the group's policy, which would let the lax
//! reading of a hostile spelling through (often to the canary). One scenario per group and
//! entry point; a failure lists every failing case. Besides the status or reply (SPEC §6.1),
//! every case asserts that the canary was not reached, except the controls, which must reach
//! it (proving the canary would notice).

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::fixtures::loopback_hosts_name;
use super::proxyd::Proxyd;
use super::servers::Canary;
use super::wire::{self, Reply, SocksAddr};
use super::{Env, Scenario};

use crate::bypass_table::{self as table, Case, ENTRIES, Entry, Expect, Group, Ports, Wire};

/// One scenario per group and entry point that has cases other than controls.
pub(crate) fn scenarios() -> Vec<Scenario> {
    let table = table::table();
    let mut ports = Ports::from(table.ports);
    ports.hosts_name = loopback_hosts_name().ok();
    let mut scenarios = Vec::new();
    for (index, group) in table.groups.iter().enumerate() {
        let cases = group.cases(&ports);
        for entry in ENTRIES {
            let count = cases.iter().filter(|c| c.entry == entry).count();
            let hostile = cases.iter().filter(|c| c.entry == entry && c.expect != Expect::Reaches);
            if hostile.count() == 0 {
                continue;
            }
            let name = format!("bypass {} via {} ({count} cases)", group.name, entry.name());
            scenarios.push(Scenario::new(name, super::BYPASS_TIMEOUT, move |env| {
                run_group(env, index, entry)
            }));
        }
    }
    scenarios
}

/// The `[network]` lines of a group's policy.
fn config(group: &Group) -> Result<String> {
    let list = |entries: &[String]| serde_json::to_string(entries).context("a list as toml");
    Ok(format!(
        "allowed_domains = {}\ndenied_domains = {}\nallow_local_binding = {}",
        list(&group.allowed_domains)?,
        list(&group.denied_domains)?,
        group.allow_local_binding
    ))
}

fn run_group(env: &Env, index: usize, entry: Entry) -> Result<()> {
    let table = table::table();
    let group = &table.groups[index];
    let canary = Canary::start()?;
    let proxyd = Proxyd::start(env, &config(group)?)?;
    let ports = Ports {
        canary: canary.port(),
        http: proxyd.http.port(),
        socks: proxyd.socks.port(),
        admin: proxyd.admin.port(),
        hosts_name: loopback_hosts_name().ok(),
    };
    let cases: Vec<Case> = group.cases(&ports).into_iter().filter(|c| c.entry == entry).collect();
    let mut failures = Vec::new();
    let mut hits = canary.hits()?;
    for case in &cases {
        let outcome = send(&proxyd, case);
        let now = canary.hits()?;
        let reached = now > hits;
        hits = now;
        if let Err(why) = judge(&case.expect, &outcome, reached) {
            failures.push(format!("{}: {why}", case.label));
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

fn send(proxyd: &Proxyd, case: &Case) -> Outcome {
    let result = match &case.wire {
        Wire::Http(head) => wire::http(proxyd.http, head).map(Outcome::Http),
        Wire::SocksDomain(name, port) => {
            wire::socks5_connect(proxyd.socks, &SocksAddr::Domain(name), *port).map(Outcome::Socks)
        }
        Wire::SocksIp(ip, port) => {
            wire::socks5_connect(proxyd.socks, &SocksAddr::Ip(*ip), *port).map(Outcome::Socks)
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

fn judge(expect: &Expect, outcome: &Outcome, reached: bool) -> Result<(), String> {
    if *expect == Expect::Reaches {
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

fn judge_http(expect: &Expect, reply: &Reply) -> Result<(), String> {
    let header = reply.header("x-proxy-error");
    let body: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let reason = body.as_ref().and_then(|b| b["reason"].as_str()).unwrap_or("");
    let (ok, want) = match expect {
        Expect::Malformed => (reply.status == 400 && header.is_none(), "400".to_owned()),
        Expect::Blocked(want) => (
            reply.status == 403 && header == Some(header_for(want)) && reason == want,
            format!("403 {} {want}", header_for(want)),
        ),
        Expect::Reaches => (true, "the canary".to_owned()),
    };
    if ok {
        return Ok(());
    }
    let got = match &body {
        Some(_) => format!("{} {header:?} {reason:?}", reply.status),
        None => format!("{} {header:?} {:?}", reply.status, String::from_utf8_lossy(&reply.body)),
    };
    Err(format!("want {want}, got {got}"))
}

fn judge_socks(expect: &Expect, rep: u8) -> Result<(), String> {
    let (ok, want) = match expect {
        Expect::Malformed => (matches!(rep, 0x01 | 0x08), "0x01 or 0x08"),
        Expect::Blocked(_) => (rep == 0x02, "0x02"),
        Expect::Reaches => (true, "0x00"),
    };
    if ok { Ok(()) } else { Err(format!("want reply {want}, got {rep:#04x}")) }
}
