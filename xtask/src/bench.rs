//! `cargo xtask bench`: criterion benchmarks. Not part of `ci`: timings on a shared machine are
//! measurements to compare, never assertions.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{cargo, cargo_metadata, run_status};

pub(crate) fn run() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "proxyd-policy", "--bench", "decide"]);
    run_status(cmd)?;

    let criterion = target_dir()?.join("criterion");
    println!("\nbench: results are in {}", criterion.display());
    println!("bench: per benchmark, <name>/new/estimates.json holds this run and <name>/base the");
    println!("bench: previous one; criterion prints the change against it above");
    Ok(())
}

/// The target directory as cargo sees it (honours `CARGO_TARGET_DIR` and config).
fn target_dir() -> Result<PathBuf> {
    let metadata = cargo_metadata()?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no `target_directory`")?;
    Ok(PathBuf::from(dir))
}
