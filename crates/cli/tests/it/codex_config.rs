//! `proxyd check` on Codex-shaped config files: the permission profile chosen by
//! `default_permissions` or `--profile`, the tables named in the output, the warnings for what
//! is not applied.

use anyhow::ensure;

use crate::support::{Run, run};

/// A Codex `config.toml` with two permission profiles, `workspace` selected.
const CODEX: &str = r#"model = "gpt-5.5"
model_provider = "openai"
approval_policy = "on-request"
default_permissions = "workspace"

[profiles.fast]
model = "gpt-5.4-mini"
approval_policy = "never"

[mcp_servers.docs]
command = "npx"
args = ["-y", "@example/docs-mcp"]

[tui]
notifications = true

[history]
persistence = "save-all"

[permissions.workspace]
extends = ":workspace"

[permissions.workspace.network]
enabled = true
proxy_url = "http://127.0.0.1:0"

[permissions.workspace.network.domains]
"api.model.example" = "allow"
"evil.example" = "deny"

[permissions.ci.network]
enabled = true
mode = "limited"
proxy_url = "http://127.0.0.1:0"
domains = { "registry.npm.example" = "allow" }
"#;

fn has_line(run: &Run, line: &str) -> bool {
    run.stdout.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_profile_table_chosen_by_default_permissions() -> anyhow::Result<()> {
    let run = run(CODEX, &["check"]).await?;
    ensure!(run.status.success(), "{run:?}");
    let path = run.config.display().to_string();
    let table = "[permissions.workspace.network]";
    let header =
        format!("# {path}: {table} line 23 (profile from default_permissions at {path}:4)");
    ensure!(has_line(&run, &header), "missing {header:?}: {run:?}");
    let allowed =
        format!(r#"allowed_domains = ["api.model.example"]  # from {path}:27 in {table}"#);
    let denied = format!(r#"denied_domains = ["evil.example"]  # from {path}:27 in {table}"#);
    ensure!(has_line(&run, &allowed), "missing {allowed:?}: {run:?}");
    ensure!(has_line(&run, &denied), "missing {denied:?}: {run:?}");
    // The other profile is named, with its line and what to do; nothing else is warned about.
    let warning = format!("{path}:31: [permissions.ci.network] is not applied");
    ensure!(run.stderr.contains(&warning), "missing {warning:?}: {run:?}");
    ensure!(run.stdout.contains(&format!("# warning: {warning}")), "{run:?}");
    let warnings = run.stderr.lines().filter(|l| l.contains("WARN")).count();
    // The file is both $CODEX_HOME/config.toml and --config here: each read warns once.
    ensure!(warnings == 2, "only the unselected profile is warned about: {run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_profile_reads_that_profile() -> anyhow::Result<()> {
    let run = run(CODEX, &["check", "--profile", "ci"]).await?;
    ensure!(run.status.success(), "{run:?}");
    let path = run.config.display().to_string();
    let table = "[permissions.ci.network]";
    let header = format!("# {path}: {table} line 31 (profile from --profile)");
    ensure!(has_line(&run, &header), "missing {header:?}: {run:?}");
    let mode = format!(r#"mode = "limited"  # from {path}:33 in {table}"#);
    ensure!(has_line(&run, &mode), "missing {mode:?}: {run:?}");
    let allowed =
        format!(r#"allowed_domains = ["registry.npm.example"]  # from {path}:35 in {table}"#);
    ensure!(has_line(&run, &allowed), "missing {allowed:?}: {run:?}");
    let warning = format!("{path}:23: [permissions.workspace.network] is not applied");
    ensure!(run.stderr.contains(&warning), "missing {warning:?}: {run:?}");

    // --print-config takes the flag the same way.
    let print = run_print(&["--print-config", "--profile", "ci"]).await?;
    ensure!(print.stdout.contains("(profile from --profile)"), "{print:?}");
    Ok(())
}

async fn run_print(args: &[&str]) -> anyhow::Result<Run> {
    let print = run(CODEX, args).await?;
    ensure!(print.status.success(), "{print:?}");
    Ok(print)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_no_file_defines_exits_2() -> anyhow::Result<()> {
    let run = run(CODEX, &["check", "--profile", "wrokspace"]).await?;
    ensure!(run.status.code() == Some(2), "{run:?}");
    ensure!(
        run.stderr
            .contains("--profile wrokspace: no source defines [permissions.wrokspace.network]"),
        "{run:?}"
    );
    ensure!(run.stdout.is_empty(), "{run:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pattern_in_the_profile_exits_2_at_its_line() -> anyhow::Result<()> {
    let toml = CODEX.replace(r#""evil.example" = "deny""#, r#""*.com" = "deny""#);
    let run = run(&toml, &["check"]).await?;
    ensure!(run.status.code() == Some(2), "{run:?}");
    let location = format!(
        "{}:29: permissions.workspace.network.domains: invalid pattern \"*.com\"",
        run.config.display()
    );
    ensure!(run.stderr.contains(&location), "missing {location:?}: {run:?}");
    Ok(())
}
