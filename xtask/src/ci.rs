//! `cargo xtask ci`: the one test command, as run by `.ci/run`.
//!
//! Steps run in order and stop at the first failure; cheap checks come first so a formatting
//! slip fails in seconds rather than after a full build.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{cargo, display, e2e, fuzz, run_status};

enum Action {
    Cargo(&'static [&'static str]),
    Fuzz,
    E2e,
}

struct Step {
    name: &'static str,
    action: Action,
}

const STEPS: &[Step] = &[
    Step { name: "fmt", action: Action::Cargo(&["fmt", "--all", "--", "--check"]) },
    Step {
        name: "clippy",
        action: Action::Cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    },
    // Advisories are left out: they need the advisory database from the network (README).
    Step { name: "deny", action: Action::Cargo(&["deny", "check", "licenses", "bans", "sources"]) },
    Step { name: "test", action: Action::Cargo(&["test", "--workspace"]) },
    Step { name: "fuzz", action: Action::Fuzz },
    Step { name: "e2e", action: Action::E2e },
];

pub(crate) fn run() -> Result<()> {
    let mut timings: Vec<(&str, Duration, bool)> = Vec::new();
    let mut failure = None;
    for (i, step) in STEPS.iter().enumerate() {
        println!("\n==> ci [{}/{}] {}: {}", i + 1, STEPS.len(), step.name, describe(&step.action));
        let start = Instant::now();
        let result = match &step.action {
            Action::Cargo(args) => run_status(cargo_with(args)),
            Action::Fuzz => fuzz::run(&["--smoke".to_owned()]),
            Action::E2e => e2e::run(),
        };
        timings.push((step.name, start.elapsed(), result.is_ok()));
        if let Err(err) = result {
            failure = Some(err.context(format!("ci step `{}` failed", step.name)));
            break;
        }
    }

    println!("\n==> ci timings");
    for (name, elapsed, ok) in &timings {
        let outcome = if *ok { "ok" } else { "FAILED" };
        println!("  {name:<8} {:>8.1}s  {outcome}", elapsed.as_secs_f64());
    }
    let total: Duration = timings.iter().map(|(_, elapsed, _)| *elapsed).sum();
    println!("  {:<8} {:>8.1}s", "total", total.as_secs_f64());

    match failure {
        Some(err) => Err(err),
        None => {
            println!("ci: all {} steps passed", STEPS.len());
            Ok(())
        }
    }
    .context("ci failed")
}

fn cargo_with(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(args);
    cmd
}

fn describe(action: &Action) -> String {
    match action {
        Action::Cargo(args) => display(&cargo_with(args)),
        Action::Fuzz => "cargo xtask fuzz --smoke (in-process)".to_owned(),
        Action::E2e => "cargo xtask e2e (in-process)".to_owned(),
    }
}
