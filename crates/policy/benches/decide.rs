//! The cost of one decision against 10, 1,000 and 10,000 patterns (SPEC §4.2): exact and
//! suffix lookups are hash lookups, so the three figures should be about equal.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use proxyd_policy::{ListKind, Mode, PatternSet, Policy, Protocol, Request, SideDoors, Target};

/// `n` patterns: exact names, `*.` and `**.` suffixes, and a few port-scoped entries.
fn patterns(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("host{i}.example{i}.com"),
            1 => format!("*.svc{i}.example.org"),
            2 => format!("**.team{i}.example.net"),
            _ => format!("api{i}.example.io:443"),
        })
        .collect()
}

fn policy(n: usize) -> Policy {
    let denied: Vec<String> = (0..n / 10).map(|i| format!("*.blocked{i}.example.com")).collect();
    Policy {
        allowed: PatternSet::compile(&patterns(n), ListKind::Allowed).expect("allowlist"),
        denied: PatternSet::compile(&denied, ListKind::Denied).expect("denylist"),
        allow_local_binding: false,
        enabled: true,
        unix_sockets: Vec::new(),
        rules: Default::default(),
        secrets: Default::default(),
    }
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    // A subdomain of the first suffix rule (a hit after walking the labels) and a miss that
    // walks every suffix of a deep name.
    let hit = Target::parse_authority("a.b.svc1.example.org:443", None).expect("target");
    let miss = Target::parse_authority("x.y.z.nowhere.example.com:443", None).expect("target");
    for n in [10, 1_000, 10_000] {
        let policy = policy(n);
        for (name, target) in [("hit", &hit), ("miss", &miss)] {
            group.bench_with_input(BenchmarkId::new(name, n), target, |b, target| {
                b.iter(|| {
                    let request = Request {
                        protocol: Protocol::HttpConnect,
                        target: black_box(target),
                        method: Some("CONNECT"),
                        mode: Mode::Full,
                        side_doors: SideDoors::default(),
                        inspected: false,
                        http: None,
                    };
                    black_box(policy.decide(&request))
                })
            });
        }
    }
    // Parsing plus deciding, as a request does it.
    let policy = policy(10_000);
    group.bench_function("parse_and_decide/10000", |b| {
        b.iter(|| {
            let target = Target::parse_authority(black_box("A.B.svc1.Example.org:443"), None)
                .expect("target");
            let request = Request {
                protocol: Protocol::HttpConnect,
                target: &target,
                method: Some("CONNECT"),
                mode: Mode::Full,
                side_doors: SideDoors::default(),
                inspected: false,
                http: None,
            };
            black_box(policy.decide(&request))
        })
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
