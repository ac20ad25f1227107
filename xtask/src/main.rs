//! Project automation, run as `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! Plain Rust instead of shell scripts, so it runs wherever cargo does. Commands:
//!
//! - `ci`: fmt check, clippy `-D warnings`, `cargo deny`, `cargo test --workspace`, the fuzz
//!   smoke, then `e2e`.
//! - `e2e`: builds the release `proxyd` binary and drives it with real clients.
//! - `bench`: runs the `proxyd-bench` harness (`bench/`) in release mode: proxyd side by side
//!   with direct, squid, tinyproxy, dante and microsocks, plus the
//!   criterion benchmarks (never part of `ci`: timings are not assertions).
//! - `tidy`: the repository rules of STYLE.md, also run as a `#[test]` by `cargo test`.
//! - `fuzz`: the fuzz targets of `fuzz/` on stable: `--smoke` (part of `ci`), one target long,
//!   or `--seeds` to regenerate their seed corpora from the bypass table.

/// The bypass table's loader, shared with the tests (`crates/test-support/src/bypass.rs`):
/// compiled here as a module because xtask may not depend on a workspace crate (tidy).
#[path = "../../crates/test-support/src/bypass.rs"]
#[allow(dead_code, unreachable_pub, reason = "shared with the tests, which use all of it")]
mod bypass_table;
mod ci;
mod e2e;
mod fuzz;
mod tidy;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci      fmt --check, clippy -D warnings, deny, test --workspace, fuzz --smoke, then e2e
  e2e     build the release proxyd binary and run the end-to-end scenarios
  bench   proxyd vs direct and peer proxies, and the criterion benchmarks (not part of ci)
  tidy    check dependency layering, policy purity and workspace lints
  fuzz    --smoke: every fuzz target briefly (part of ci); TARGET [-- ARGS]: one target, long;
          --seeds: rewrite fuzz/corpus from testdata/bypass.toml";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.as_slice() {
        [command] => command.as_str(),
        [command, ..] if command == "bench" => command.as_str(), // flags: see bench.rs
        [command, ..] if command == "fuzz" => command.as_str(),  // arguments: see fuzz.rs
        _ => {
            eprintln!("xtask: expected exactly one command\n");
            return usage();
        }
    };
    let result = match command {
        "ci" => ci::run(),
        "e2e" => e2e::run(),
        "bench" => bench(),
        "tidy" => tidy::run(),
        "fuzz" => fuzz::run(&args[1..]),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        unknown => {
            eprintln!("xtask: unknown command `{unknown}`\n");
            return usage();
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask {command}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bench ARGS`: the harness is its own workspace member (`bench/`, package
/// `proxyd-bench`) so xtask stays thin; it runs in release mode so the load generator is never
/// the bottleneck.
fn bench() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--quiet", "-p", "proxyd-bench", "--"])
        .args(std::env::args().skip(2));
    run_status(cmd)
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// The workspace root: xtask always lives one level below it.
fn project_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// A `cargo` command run from the workspace root, using the same cargo that started us.
fn cargo() -> Command {
    // `cargo run` and `cargo test` set $CARGO to the cargo binary of the active toolchain.
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(project_root());
    cmd
}

/// Runs `cmd` with inherited stdio and fails unless it exits successfully.
fn run_status(mut cmd: Command) -> Result<()> {
    let shown = display(&cmd);
    let status = cmd.status().with_context(|| format!("failed to start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd`, captures its stdout, and fails (showing its stderr) unless it exits successfully.
fn run_output(mut cmd: Command) -> Result<Vec<u8>> {
    let shown = display(&cmd);
    let output = cmd.output().with_context(|| format!("failed to start `{shown}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        if stderr.is_empty() {
            bail!("`{shown}` failed ({})", output.status);
        }
        bail!("`{shown}` failed ({}): {stderr}", output.status);
    }
    Ok(output.stdout)
}

/// `cargo metadata --format-version 1` for the whole workspace, parsed.
///
/// No `--offline`: on a fresh machine cargo may need to fetch the index once. With a
/// `Cargo.lock` and fetched dependencies it does not touch the network.
fn cargo_metadata() -> Result<serde_json::Value> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1"]);
    let stdout = run_output(cmd)?;
    serde_json::from_slice(&stdout).context("cargo metadata printed invalid JSON")
}

/// A command as a user would type it: `cargo` rather than the full path in $CARGO.
fn display(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy();
    let mut shown = program.into_owned();
    for arg in cmd.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}
