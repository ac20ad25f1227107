//! `cargo xtask e2e`: the built `proxyd` binary, driven from outside by real clients.
//!
//! Each scenario gets the path of the release binary, starts it with its own temporary config
//! on ephemeral loopback ports, and asserts what a client sees (status codes, `x-proxy-error`,
//! SOCKS5 replies) and that a canary listener was never reached for blocked cases. The clients
//! are curl, Python's `urllib`, `git` and `pip`, and under `proxyd exec` pip, curl, npm and cargo
//! against local package registries; the bypass suite writes raw bytes. Adding a scenario is one
//! entry in [`scenarios`].

mod allowed;
mod blocked;
mod bypass;
mod clients;
mod control;
mod exec;
mod fixtures;
mod proxyd;
mod servers;
mod support;
mod wire;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, run_output};

/// Bound of one client scenario (each of its waits is bounded more tightly).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Bound of one bypass group on one entry point.
const BYPASS_TIMEOUT: Duration = Duration::from_secs(60);

/// What every scenario gets from the runner.
pub(crate) struct Env {
    /// The release `proxyd` binary built by [`run`].
    pub(crate) proxyd: PathBuf,
}

type Body = dyn Fn(&Env) -> Result<()> + Send + Sync;

/// A scenario written as a plain function.
type ScenarioFn = fn(&Env) -> Result<()>;

pub(crate) struct Scenario {
    pub(crate) name: String,
    /// Upper bound for the whole scenario, so a hang fails in seconds instead of stalling ci.
    pub(crate) timeout: Duration,
    pub(crate) run: Arc<Body>,
}

impl Scenario {
    pub(crate) fn new(
        name: impl Into<String>,
        timeout: Duration,
        run: impl Fn(&Env) -> Result<()> + Send + Sync + 'static,
    ) -> Scenario {
        Scenario { name: name.into(), timeout, run: Arc::new(run) }
    }
}

/// Every end-to-end scenario, run in order.
fn scenarios() -> Vec<Scenario> {
    let client_scenarios: [(&str, ScenarioFn); 18] = [
        ("allowlisted: curl -x absolute-form", allowed::curl_absolute_form),
        ("allowlisted: curl --proxy-header", allowed::curl_proxy_header),
        ("allowlisted: curl https via CONNECT, test CA", allowed::curl_https_connect),
        ("allowlisted: curl --socks5 and --socks5-hostname", allowed::curl_socks5),
        ("allowlisted: python urllib with proxy env", allowed::python_urllib),
        ("allowlisted: git clone over http", allowed::git_clone_http),
        ("allowlisted: pip download from a local index", allowed::pip_download_index),
        ("denied", blocked::denied),
        ("allowlist miss", blocked::allowlist_miss),
        ("local blocked", blocked::local_blocked),
        ("names that resolve to loopback", blocked::loopback_names),
        ("limited mode", blocked::limited_mode),
        ("admin mode switch and reload", control::admin_mode_and_reload),
        ("SIGTERM drain", control::sigterm_drain),
        ("proxyd exec: pip download, full and limited+mitm", exec::pip),
        ("proxyd exec: curl, full and limited+mitm (POST refused)", exec::curl),
        ("proxyd exec: npm install, full and limited+mitm (npm publish refused)", exec::npm),
        ("proxyd exec: cargo fetch, full and limited+mitm (cargo publish refused)", exec::cargo),
    ];
    let mut all: Vec<Scenario> =
        client_scenarios.into_iter().map(|(name, run)| Scenario::new(name, TIMEOUT, run)).collect();
    all.extend(bypass::scenarios());
    all
}

pub(crate) fn run() -> Result<()> {
    let env = Env { proxyd: build_proxyd()? };
    println!("e2e: binary {}", env.proxyd.display());
    let start = Instant::now();
    let mut scenarios = scenarios();
    // `PROXYD_E2E_ONLY=TEXT` runs only the scenarios whose name contains TEXT (for development).
    if let Some(only) = std::env::var("PROXYD_E2E_ONLY").ok().filter(|only| !only.is_empty()) {
        scenarios.retain(|scenario| scenario.name.contains(&only));
        println!("e2e: PROXYD_E2E_ONLY={only:?}: {} scenario(s)", scenarios.len());
    }
    let summary = run_scenarios(Arc::new(env), &scenarios);
    support::kill_leftovers();
    println!("e2e: {:.1}s", start.elapsed().as_secs_f64());
    println!("{} passed, {} failed", summary.passed, summary.failed);
    if summary.failed > 0 {
        bail!("{} of {} e2e scenarios failed", summary.failed, summary.passed + summary.failed);
    }
    Ok(())
}

/// Builds the release binary and returns its path as cargo reports it (honours
/// `CARGO_TARGET_DIR`). Compiler output still goes to the terminal via stderr.
fn build_proxyd() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "proxyd", "--bin", "proxyd"]);
    cmd.arg("--message-format=json-render-diagnostics");
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let stdout = run_output(cmd)?;
    let stdout = String::from_utf8(stdout).context("cargo build printed non-UTF-8 JSON")?;
    for line in stdout.lines() {
        let message: serde_json::Value =
            serde_json::from_str(line).context("cargo build printed an invalid JSON message")?;
        if message["reason"] != "compiler-artifact" || message["target"]["name"] != "proxyd" {
            continue;
        }
        if let Some(path) = message["executable"].as_str() {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("cargo build reported no `proxyd` executable")
}

#[derive(Debug, PartialEq, Eq)]
struct Summary {
    passed: usize,
    failed: usize,
}

/// Runs each scenario on its own thread, printing `PASS name` or `FAIL name: why`.
///
/// A separate thread lets the runner enforce the timeout and survive a panicking scenario;
/// a timed-out thread is left behind and dies with the process.
fn run_scenarios(env: Arc<Env>, scenarios: &[Scenario]) -> Summary {
    let mut summary = Summary { passed: 0, failed: 0 };
    for scenario in scenarios {
        match run_one(&env, scenario) {
            Ok(()) => {
                summary.passed += 1;
                println!("PASS {}", scenario.name);
            }
            Err(why) => {
                summary.failed += 1;
                println!("FAIL {}: {why}", scenario.name);
            }
        }
    }
    summary
}

fn run_one(env: &Arc<Env>, scenario: &Scenario) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    let env = Arc::clone(env);
    let body = Arc::clone(&scenario.run);
    let spawned =
        thread::Builder::new().name(scenario.name.clone()).spawn(move || tx.send(body(&env)).ok());
    if let Err(err) = spawned {
        return Err(format!("could not spawn a thread: {err}"));
    }
    match rx.recv_timeout(scenario.timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("{err:#}")),
        Err(RecvTimeoutError::Timeout) => {
            Err(format!("timed out after {:.1}s", scenario.timeout.as_secs_f64()))
        }
        // The sender is dropped without sending only when the scenario panicked.
        Err(RecvTimeoutError::Disconnected) => Err("panicked".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes(_: &Env) -> Result<()> {
        Ok(())
    }

    fn fails(_: &Env) -> Result<()> {
        bail!("status 502, want 403")
    }

    fn panics(_: &Env) -> Result<()> {
        panic!("scenario bug")
    }

    fn hangs(_: &Env) -> Result<()> {
        // Parked forever: the runner must give up after the scenario's timeout.
        loop {
            thread::park();
        }
    }

    /// Only `hangs` ever waits for its timeout; the others get a generous one so a loaded
    /// machine cannot turn a pass into a timeout.
    fn scenario(name: &'static str, run: ScenarioFn) -> Scenario {
        let timeout = if name == "hangs" { 200 } else { 10_000 };
        Scenario::new(name, Duration::from_millis(timeout), run)
    }

    fn env() -> Arc<Env> {
        Arc::new(Env { proxyd: PathBuf::from("proxyd") })
    }

    #[test]
    fn runner_counts_passes_and_failures() {
        let scenarios = [
            scenario("passes", passes),
            scenario("fails", fails),
            scenario("panics", panics),
            scenario("hangs", hangs),
        ];
        assert_eq!(run_scenarios(env(), &scenarios), Summary { passed: 1, failed: 3 });
    }

    #[test]
    fn failure_reasons() {
        let check = |name, run, want: Result<(), &str>| {
            assert_eq!(run_one(&env(), &scenario(name, run)), want.map_err(str::to_owned));
        };
        check("passes", passes, Ok(()));
        check("fails", fails, Err("status 502, want 403"));
        check("panics", panics, Err("panicked"));
        check("hangs", hangs, Err("timed out after 0.2s"));
    }

    #[test]
    fn no_scenarios_is_a_pass() {
        assert_eq!(run_scenarios(env(), &[]), Summary { passed: 0, failed: 0 });
    }
}
