//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (cargo-fuzz layout, libFuzzer through
//! `libfuzzer-sys`), built and run on the stable toolchain.
//!
//! No nightly and no `cargo install cargo-fuzz`: the build passes the flags cargo-fuzz would
//! (`-Cpasses=sancov-module` and the `sanitizer-coverage` options, `--cfg fuzzing`), all
//! stable, without a sanitizer (cargo-fuzz's `-s none`). Debug assertions and overflow checks
//! are on, so an arithmetic slip is a crash too.
//!
//! - `--smoke` (a step of `cargo xtask ci`): every target for [`SMOKE_RUNS`] runs over its
//!   committed seeds; any crash fails.
//! - `TARGET [-- LIBFUZZER_ARGS]`: one target until it crashes or the arguments stop it
//!   (`-max_total_time=600`), growing a corpus under the target directory.
//! - `--seeds`: rewrites `fuzz/corpus/` from the bypass table (`testdata/bypass.toml`); the
//!   `seeds_are_current` test fails when the committed seeds differ from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::bypass_table::{self, Entry, Wire};
use crate::{cargo, project_root, run_output, run_status};

/// Every target, named as its `fuzz/fuzz_targets/NAME.rs`.
pub(crate) const TARGETS: &[&str] =
    &["target", "pattern", "config", "socks5_request", "socks5_udp", "path", "rules"];

/// Runs per target in `--smoke`: a few seconds each, seeds included.
const SMOKE_RUNS: u32 = 20_000;

/// What cargo-fuzz passes to rustc for libFuzzer's coverage feedback, minus the sanitizer.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
    // The fuzz workspace is outside the main one's clippy run: at least rustc's lints hold.
    "-Dwarnings",
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    match args {
        [flag] if flag == "--smoke" => smoke(),
        [flag] if flag == "--seeds" => write_seeds(),
        [target, rest @ ..] if !target.starts_with('-') => {
            let extra = match rest {
                [] => &[][..],
                [dashes, extra @ ..] if dashes == "--" => extra,
                _ => bail!("usage: cargo xtask fuzz TARGET [-- LIBFUZZER_ARGS]"),
            };
            long(target, extra)
        }
        _ => bail!("usage: cargo xtask fuzz --smoke | --seeds | TARGET [-- LIBFUZZER_ARGS]"),
    }
}

/// Where the fuzz workspace builds: beside the main workspace's target directory, so the
/// instrumented dependencies never replace the normal ones.
fn out_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"));
    base.join("fuzz")
}

fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("-vV");
    let stdout = String::from_utf8(run_output(cmd)?).context("rustc -vV printed non-UTF-8")?;
    let host = stdout.lines().find_map(|line| line.strip_prefix("host: "));
    host.map(str::to_owned).context("rustc -vV names no host")
}

/// Builds every target; returns the directory holding the binaries.
fn build() -> Result<PathBuf> {
    let triple = host_triple()?;
    let out = out_dir();
    let mut cmd = cargo();
    // An explicit `--target` keeps the flags off build scripts and proc macros.
    cmd.args(["build", "--release", "--bins", "--manifest-path", "fuzz/Cargo.toml"]);
    cmd.args(["--target", &triple]);
    cmd.env("CARGO_TARGET_DIR", &out);
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd.env("RUSTFLAGS", RUSTFLAGS.join(" "));
    let start = Instant::now();
    run_status(cmd)?;
    println!("fuzz: built in {:.1}s", start.elapsed().as_secs_f64());
    Ok(out.join(triple).join("release"))
}

fn seeds_dir(target: &str) -> PathBuf {
    project_root().join("fuzz").join("corpus").join(target)
}

fn smoke() -> Result<()> {
    let bin = build()?;
    let mut failed = Vec::new();
    for target in TARGETS {
        // New inputs go to a scratch directory, never into the committed seeds.
        let scratch = out_dir().join("smoke").join(target);
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
        }
        std::fs::create_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
        let mut cmd = Command::new(bin.join(target));
        cmd.arg(format!("-runs={SMOKE_RUNS}"));
        cmd.arg(format!("-artifact_prefix={}/", scratch.display()));
        cmd.arg(&scratch).arg(seeds_dir(target));
        let start = Instant::now();
        let output = cmd.output().with_context(|| format!("start fuzz target {target}"))?;
        let secs = start.elapsed().as_secs_f64();
        if output.status.success() {
            println!("fuzz: {target:<15} {SMOKE_RUNS} runs in {secs:.1}s");
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "fuzz: {target} FAILED after {secs:.1}s ({}):\n{}",
                output.status,
                tail.join("\n")
            );
            failed.push(*target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets crashed: {} (inputs under {})", failed.join(", "), out_dir().display());
    }
    Ok(())
}

fn long(target: &str, extra: &[String]) -> Result<()> {
    if !TARGETS.contains(&target) {
        bail!("unknown fuzz target `{target}` (one of {})", TARGETS.join(", "));
    }
    let bin = build()?;
    let corpus = out_dir().join("corpus").join(target);
    let artifacts = out_dir().join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mut cmd = Command::new(bin.join(target));
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()));
    cmd.args(extra);
    cmd.arg(&corpus).arg(seeds_dir(target));
    println!("fuzz: corpus {}, crashes in {}", corpus.display(), artifacts.display());
    run_status(cmd)
}

/// The seed corpora, by target and file name, from the bypass table.
pub(crate) fn seeds() -> BTreeMap<(&'static str, String), Vec<u8>> {
    let table = bypass_table::table();
    let ports = bypass_table::Ports::from(table.ports);
    let mut by_target: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
    let mut add = |target: &'static str, seed: Vec<u8>| {
        let seeds = by_target.entry(target).or_default();
        if !seeds.contains(&seed) {
            seeds.push(seed);
        }
    };
    for group in &table.groups {
        let mut config = String::from("[network]\n");
        let list = |entries: &[String]| serde_json::to_string(entries).unwrap_or_default();
        config += &format!("allowed_domains = {}\n", list(&group.allowed_domains));
        config += &format!("denied_domains = {}\n", list(&group.denied_domains));
        config += &format!("allow_local_binding = {}\n", group.allow_local_binding);
        add("config", config.into_bytes());
        let entries: Vec<&String> =
            group.allowed_domains.iter().chain(&group.denied_domains).collect();
        for entry in &entries {
            add("pattern", entry.as_bytes().to_vec());
        }
        for (i, case) in group.cases(&ports).into_iter().enumerate() {
            if let Some(authority) = &case.authority {
                add("target", authority.clone().into_bytes());
                add("target", format!("http://{authority}/").into_bytes());
                // Each spelling against one of the group's entries, in turn.
                if let Some(entry) = entries.get(i % entries.len().max(1)) {
                    add("pattern", format!("{entry}\n{authority}").into_bytes());
                }
            }
            match (&case.wire, case.entry) {
                (Wire::Http(head), _) if case.authority.is_none() => {
                    let head = String::from_utf8_lossy(head);
                    if let Some(target) = head.split(' ').nth(1) {
                        add("target", target.as_bytes().to_vec());
                    }
                }
                (Wire::SocksDomain(name, port), Entry::SocksDomain) => {
                    add("target", name.clone());
                    let mut addr = vec![3, name.len().min(255) as u8];
                    addr.extend_from_slice(&name[..name.len().min(255)]);
                    add_socks(&mut add, &addr, *port);
                }
                (Wire::SocksIp(ip, port), Entry::SocksIp) => {
                    let addr = match ip {
                        std::net::IpAddr::V4(v4) => [&[1][..], &v4.octets()].concat(),
                        std::net::IpAddr::V6(v6) => [&[4][..], &v6.octets()].concat(),
                    };
                    add_socks(&mut add, &addr, *port);
                }
                _ => {}
            }
        }
    }
    for (i, row) in table.paths.iter().enumerate() {
        add("path", row.raw.clone().into_bytes());
        for (j, pattern) in ["/", "/a/**", "/repos/our-org/*", "/a/*/b"].iter().enumerate() {
            let action = u8::from((i + j) % 2 == 1);
            add("rules", [&[action][..], format!("{pattern}\n{}", row.raw).as_bytes()].concat());
        }
    }
    let mut named = BTreeMap::new();
    for (target, seeds) in by_target {
        for (i, seed) in seeds.into_iter().enumerate() {
            named.insert((target, format!("table-{i:04}")), seed);
        }
    }
    named
}

/// A SOCKS5 request and a UDP header (RFC 1928 §4, §7) to `addr` (ATYP and address).
fn add_socks(add: &mut impl FnMut(&'static str, Vec<u8>), addr: &[u8], port: u16) {
    let port = port.to_be_bytes();
    add("socks5_request", [&[5, 1, 0][..], addr, &port].concat());
    add("socks5_udp", [&[0, 0, 0][..], addr, &port, b"payload"].concat());
}

fn write_seeds() -> Result<()> {
    let seeds = seeds();
    for target in TARGETS {
        let dir = seeds_dir(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
        }
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    }
    for ((target, name), seed) in &seeds {
        let path = seeds_dir(target).join(name);
        std::fs::write(&path, seed).with_context(|| path.display().to_string())?;
    }
    println!("fuzz: wrote {} seeds under {}", seeds.len(), Path::new("fuzz/corpus").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seeds are what `cargo xtask fuzz --seeds` makes of the bypass table.
    #[test]
    fn seeds_are_current() {
        let mut on_disk = BTreeMap::new();
        for target in TARGETS {
            let dir = seeds_dir(target);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries {
                let entry = entry.expect("a directory entry");
                let name = entry.file_name().to_string_lossy().into_owned();
                let seed = std::fs::read(entry.path()).expect("a seed");
                on_disk.insert((*target, name), seed);
            }
        }
        let want = seeds();
        assert!(want.keys().any(|(t, _)| *t == "rules") && want.len() > 1000, "{}", want.len());
        assert!(on_disk == want, "fuzz/corpus is stale: run `cargo xtask fuzz --seeds`");
    }
}
