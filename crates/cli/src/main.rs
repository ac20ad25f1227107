//! The `proxyd` binary: parse the command line, load the config, install global state
//! (tracing, the rustls crypto provider, signal handlers), and serve until a signal.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use proxyd::{Config, NetworkProxy, Sources};

mod docs;

/// A local network-policy enforcement proxy.
#[derive(Debug, Parser)]
#[command(name = "proxyd", version, about)]
struct Cli {
    /// A config file (Codex config.toml format); repeatable, later files win.
    #[arg(long = "config", value_name = "FILE", global = true)]
    configs: Vec<PathBuf>,
    /// Override one key, e.g. `-c network.mode=limited`; repeatable, applied last.
    #[arg(short = 'c', value_name = "network.KEY=VALUE", global = true)]
    overrides: Vec<String>,
    /// The Codex permission profile whose `[permissions.NAME.network]` is read, whatever
    /// `default_permissions` says (not Codex's own `--profile`, which picks `[profiles.NAME]`).
    #[arg(long, value_name = "NAME", global = true)]
    profile: Option<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Print the effective config and where each key came from, then exit.
    #[arg(long)]
    print_config: bool,
    /// Ignore SIGHUP instead of reloading the config files on it (`POST /reload` still
    /// reloads): for deployments where a program that can signal proxyd must not be able to
    /// make it re-read files.
    #[arg(long)]
    no_sighup_reload: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config, print the effective config, and exit (non-zero if invalid).
    Check,
    /// Run COMMAND behind a fresh proxy on ephemeral loopback ports, with the proxy
    /// environment set; report what was blocked and exit with the command's status.
    Exec {
        /// Ask on the terminal (`/dev/tty`) about each allowlist miss instead of refusing it:
        /// allow once, allow always for this run, or deny.
        #[arg(long)]
        ask: bool,
        /// The command and its arguments (after `--`; proxyd's own options come before it,
        /// and an unknown one is refused rather than taken for the command).
        #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// The interception CA of limited-mode HTTPS (`network.mitm = true`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    // Generated documentation (docs.rs); read no config.
    /// Print a shell completion script for SHELL to stdout.
    Completions { shell: docs::Shell },
    /// Print the man page (roff) to stdout.
    Man,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the path where a running proxyd writes its CA certificate.
    Path,
    /// Write the running proxyd's CA certificate (PEM) to FILE, or to stdout.
    Export {
        /// Where to write it; stdout when absent.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// jemalloc, with a background thread that returns freed memory to the system (the
/// `background_threads` feature; decay set in `.cargo/config.toml`): with glibc's malloc, RSS
/// stayed at the peak after a burst of slow clients had gone (README "Performance").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Completions { shell }) => {
            return docs::completions(<Cli as clap::CommandFactory>::command(), shell);
        }
        Some(Command::Man) => return docs::man(<Cli as clap::CommandFactory>::command()),
        _ => {}
    }
    let quiet = matches!(cli.command, Some(Command::Exec { .. }));
    // Behind `exec`, proxyd's own log would drown the command's output: warnings only.
    init_tracing(cli.log_format, if quiet { "warn" } else { "info" });
    let sources = Sources {
        profile: cli.profile.clone(),
        ..Sources::standard(cli.configs.clone(), cli.overrides.clone())
    };
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(errors) => {
            report_config_errors(cli.log_format, &errors);
            return ExitCode::from(2);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let result = match cli.command {
        Some(Command::Check) => {
            print!("{}", config.render());
            return ExitCode::SUCCESS;
        }
        _ if cli.print_config => {
            print!("{}", config.render());
            return ExitCode::SUCCESS;
        }
        Some(Command::Exec { ask, command }) => {
            runtime().and_then(|rt| rt.block_on(exec(config, command, ask)))
        }
        Some(Command::Ca { command }) => ca(&config, command).map(|()| ExitCode::SUCCESS),
        Some(Command::Completions { .. } | Command::Man) => unreachable!("answered above"),
        None if !config.enabled => {
            tracing::info!("network.enabled is false: proxyd binds nothing and exits");
            return ExitCode::SUCCESS;
        }
        None => {
            let sighup_reload = !cli.no_sighup_reload;
            runtime()
                .and_then(|rt| rt.block_on(serve(sources, config, sighup_reload)))
                .map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("proxyd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Config errors at start: a readable list, or with `--log-format json` one error event per
/// error naming its file and line, for a supervisor that parses the log.
fn report_config_errors(format: LogFormat, errors: &proxyd::ConfigErrors) {
    match format {
        LogFormat::Text => {
            eprintln!("proxyd: invalid configuration ({} error(s)):", errors.len());
            for error in errors.iter() {
                eprintln!("  {error}");
            }
        }
        LogFormat::Json => {
            for error in errors.iter() {
                let (file, line) = match &error.location {
                    proxyd_config::Location::File(path) => (Some(path.display()), None),
                    proxyd_config::Location::Line(path, line) => {
                        (Some(path.display()), Some(*line))
                    }
                    _ => (None, None),
                };
                tracing::error!(
                    file = file.map(tracing::field::display),
                    line,
                    location = %error.location,
                    "invalid configuration: {}",
                    error.kind
                );
            }
        }
    }
}

/// The start-up summary of a long-running proxyd: the files read, the mode, the lists' sizes;
/// and a warning when nothing can pass.
fn log_config_summary(sources: &Sources, config: &Config) {
    let files: Vec<String> = sources
        .system
        .iter()
        .chain(&sources.user)
        .chain(&sources.files)
        .filter(|path| path.is_file())
        .map(|path| path.display().to_string())
        .collect();
    let files = match files.is_empty() {
        true => "none (built-in defaults)".to_owned(),
        false => files.join(", "),
    };
    tracing::info!(
        files = %files,
        overrides = sources.overrides.len(),
        mode = config.mode.as_str(),
        allowed = config.allowed_domains().len(),
        denied = config.denied_domains().len(),
        rules = config.rules.len(),
        "config: {files}; mode {}, {} allowed, {} denied, {} rule(s)",
        config.mode.as_str(),
        config.allowed_domains().len(),
        config.denied_domains().len(),
        config.rules.len(),
    );
    if config.allowed_domains().is_empty() && !config.on_miss_ask {
        tracing::warn!("the allowlist is empty: nothing can pass: add entries to allowed_domains");
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        // The span list names every span a line happened in (the connection's `conn` with its
        // id and peer, a `mitm` inside it); the current span alone would repeat its last entry.
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// Process-wide protections, installed once before anything is served.
fn harden_process() {
    // A confined program usually runs as the same user: without this it could read proxyd's
    // memory (the interception CA's key, the admin token) through /proc/PID/mem or ptrace,
    // and find its admin port through /proc/PID/fd. Also disables core dumps.
    #[cfg(target_os = "linux")]
    if let Err(err) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %err, "could not make the process non-dumpable");
    }
    // Every connection, tunnel and UDP association holds descriptors: use all the hard limit
    // allows, so `max_connections` is not cut short by a low soft limit (often 1024).
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = rustix::process::Rlimit { current: Some(maximum), maximum: Some(maximum) };
        if let Err(err) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            tracing::debug!(error = %err, "could not raise the open-file limit");
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    harden_process();
    // One crypto provider for the process (STYLE.md): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `proxyd ca path|export`: the certificate a running proxyd wrote to `ca_dir`.
fn ca(config: &Config, command: CaCommand) -> anyhow::Result<()> {
    let Some(dir) = &config.ca_dir else {
        anyhow::bail!("network.ca_dir is not set, and neither CODEX_HOME nor HOME is");
    };
    let path = proxyd::ca::cert_path(dir);
    match command {
        CaCommand::Path => println!("{}", path.display()),
        CaCommand::Export { file } => {
            let pem = proxyd::ca::read_cert(dir)?;
            match file {
                Some(file) => std::fs::write(&file, pem)
                    .with_context(|| format!("writing {}", file.display()))?,
                None => print!("{pem}"),
            }
        }
    }
    Ok(())
}

async fn serve(sources: Sources, config: Config, sighup_reload: bool) -> anyhow::Result<()> {
    // Before anything is bound or logged: a supervisor may signal as soon as it reads the
    // `listening` line, and an uncaught SIGTERM would kill the process without draining.
    let mut signals = Signals::install()?;
    for why in proxyd::untrusted_config_files(&sources) {
        tracing::warn!("{why}; reloads are refused until it is fixed");
    }
    if !config.credentials.is_empty() {
        tracing::warn!(
            "network.credentials are brokered by `proxyd exec` only: a long-running proxyd ignores them"
        );
    }
    log_config_summary(&sources, &config);
    let ca_dir = config.ca_dir.clone();
    let proxy = NetworkProxy::builder().config(config).sources(sources).build().await?;
    // Clients of a long-running proxyd read the CA here; it changes at every start.
    if let (Some(pem), Some(dir)) = (proxy.ca_cert_pem(), &ca_dir) {
        let path = proxyd::ca::write_cert(dir, &pem)?;
        tracing::info!(path = %path.display(), "interception ca certificate written");
    }
    let handle = proxy.run().await?;
    // SIGHUP reloads (unless turned off); SIGINT or SIGTERM stops.
    while let Signal::Hangup = signals.wait().await {
        if !sighup_reload {
            tracing::warn!("sighup ignored: started with --no-sighup-reload");
            continue;
        }
        // The reload itself logs what changed.
        match handle.reload().await {
            Ok(pending) if pending.is_empty() => tracing::info!("sighup: config reloaded"),
            Ok(pending) => tracing::warn!(
                ?pending,
                "sighup: config reloaded; these keys apply at the next restart"
            ),
            // Display, one readable line: the file, the line and what is wrong.
            Err(err) => tracing::error!(
                error = %err,
                "sighup: reload refused; the running config stays in force: {err}"
            ),
        }
    }
    tracing::info!("shutting down: draining connections");
    handle.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// `proxyd exec`: the proxy on ephemeral loopback ports, one child, its exit status. The
/// config is read once: the proxy is given no sources, so nothing (no signal, no API) can make
/// it re-read a file the command may have rewritten.
async fn exec(config: Config, command: Vec<String>, ask: bool) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::install()?;
    let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let allow_local_binding = config.allow_local_binding;
    let ca_dir = config.ca_dir.clone();
    let (broker, credential_env) = brokered_credentials(&config)?;
    let mut builder = NetworkProxy::builder();
    if ask {
        builder = builder.ask();
    }
    if config.dns_addr.is_some() {
        builder = builder.dns_addr(loopback);
    }
    let proxy = builder
        .config(config)
        .broker(broker)
        .http_addr(loopback)
        .socks_addr(loopback)
        .without_admin()
        .command(proxyd::exec::shell_join(&command))
        .build()
        .await?;
    // The child trusts this run's CA through its own bundle; `ca_dir/ca.pem` stays the
    // long-running proxyd's.
    let bundle = match (proxy.ca_cert_pem(), &ca_dir) {
        (Some(pem), Some(dir)) => {
            Some(proxyd::ca::write_bundle(dir, &pem, |k| std::env::var(k).ok())?)
        }
        _ => None,
    };
    let handle = proxy.run().await?;
    if ask && let Some(asker) = handle.asker() {
        proxyd::exec::prompt_on_tty(asker, proxyd::exec::shell_join(&command))
            .context("--ask needs a terminal (/dev/tty)")?;
    }
    let Some(http) = handle.http_addr() else {
        anyhow::bail!("network.enabled is false: there is no proxy to run the command behind");
    };
    let mut env = proxyd::exec::proxy_env(http, handle.socks_addr(), allow_local_binding, |k| {
        std::env::var(k).ok()
    });
    if let Some(bundle) = &bundle {
        env.extend(proxyd::exec::ca_env(bundle));
        eprint!("{}", proxyd::exec::interception_notice(bundle));
    }
    env.extend(credential_env);
    // Tools that take a resolver address can use the DNS service; nothing else can be pointed
    // at it without root (README "DNS service").
    if let Some(dns) = handle.dns_addr() {
        env.push(("PROXYD_DNS".to_owned(), dns.to_string()));
    }
    let spawned = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(env)
        .kill_on_drop(true)
        .spawn();
    let status = match spawned {
        Ok(child) => wait_child(child, &mut signals).await.map(Ok),
        // Like a shell: 127 for no such command, 126 for one that cannot be executed.
        Err(err) => Ok(Err(proxyd::exec::spawn_failure(&command[0], &err))),
    };
    if let Some(bundle) = &bundle {
        let _ = std::fs::remove_file(bundle);
    }
    let code = match status? {
        Ok(status) => exit_code(status),
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    };
    if let Some(summary) = proxyd::exec::blocked_summary(&handle.blocked(), handle.blocked_total())
    {
        eprint!("{summary}");
    }
    let (failures, failed_total) = handle.failures();
    if let Some(summary) = proxyd::exec::failed_summary(&failures, failed_total) {
        eprint!("{summary}");
    }
    handle.shutdown().await?;
    Ok(ExitCode::from(code))
}

/// The command's exit code, or 128 + the signal that killed it, as a shell reports it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => 128u8.saturating_add(u8::try_from(signal).unwrap_or(0)),
        (None, None) => 1,
    }
}

/// The placeholders `proxyd exec` gives the command for `[[network.credentials]]`, and the
/// broker that swaps them for the real tokens on their way to the bound hosts.
fn brokered_credentials(
    config: &Config,
) -> anyhow::Result<(proxyd::Broker, Vec<(String, String)>)> {
    let mut credentials = Vec::new();
    let mut env = Vec::new();
    for c in &config.credentials {
        let Some(secret) = &c.secret else { continue };
        let mut random = [0u8; 64];
        let mut pool = Vec::new();
        let placeholder = proxyd::exec::placeholder(secret.expose(), || {
            if pool.is_empty() {
                let _ = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
                pool.extend_from_slice(&random);
            }
            pool.pop().unwrap_or(0)
        });
        env.push((c.env.clone(), placeholder.clone()));
        credentials.push(proxyd::Credential {
            name: c.name.clone(),
            placeholder,
            real: secret.expose().to_owned(),
            hosts: c.hosts.clone(),
            allow_plain_http: c.dangerously_allow_plain_http,
        });
    }
    let broker = proxyd::Broker::new(credentials).map_err(|why| anyhow::anyhow!(why))?;
    Ok((broker, env))
}

/// How long `proxyd exec` waits for the command after passing it SIGINT, SIGTERM or SIGQUIT
/// before it kills it.
const EXEC_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for `proxyd exec`'s child, ignoring SIGHUP (the confined command can send it: it
/// must not be a way to change the policy) and passing SIGINT, SIGTERM and SIGQUIT on, as a
/// wrapper does: the command's own handlers run, and it is killed only if it has not exited
/// [`EXEC_STOP_GRACE`] after the first of them.
async fn wait_child(
    mut child: tokio::process::Child,
    signals: &mut Signals,
) -> anyhow::Result<std::process::ExitStatus> {
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => return status.context("waiting for the command"),
            () = grace => {
                tracing::warn!(
                    "the command did not exit within {EXEC_STOP_GRACE:?} of the signal: killing it"
                );
                let _ = child.start_kill();
                deadline = None;
            }
            signal = signals.wait() => {
                let forward = match signal {
                    Signal::Hangup => {
                        tracing::warn!("sighup ignored: proxyd exec reads its config once");
                        continue;
                    }
                    // Ctrl-C on the terminal reaches the command too (same foreground process
                    // group): passing it on again would look like a second Ctrl-C.
                    Signal::Stop(StopSignal::Int) if in_terminal_foreground() => None,
                    Signal::Stop(StopSignal::Int) => Some(rustix::process::Signal::INT),
                    Signal::Stop(StopSignal::Term) => Some(rustix::process::Signal::TERM),
                    Signal::Stop(StopSignal::Quit) => Some(rustix::process::Signal::QUIT),
                };
                let pid = child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
                if let (Some(signal), Some(pid)) = (forward, pid) {
                    let _ = rustix::process::kill_process(pid, signal);
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + EXEC_STOP_GRACE);
                }
            }
        }
    }
}

/// Whether proxyd is in its terminal's foreground process group, where the terminal's
/// SIGINT reaches the command as well (Linux: `/proc/self/stat`; elsewhere: no).
fn in_terminal_foreground() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return false };
    // `pid (comm) state ppid pgrp session tty_nr tpgid …`; comm may hold spaces and parens.
    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(pgrp), Some(tty), Some(tpgid)) = (fields.get(2), fields.get(4), fields.get(5)) else {
        return false;
    };
    *tty != "0" && pgrp == tpgid
}

enum Signal {
    Hangup,
    Stop(StopSignal),
}

#[derive(Debug, Clone, Copy)]
enum StopSignal {
    Int,
    Term,
    Quit,
}

/// The handlers for SIGINT, SIGTERM, SIGQUIT and SIGHUP, registered from [`Signals::install`]
/// on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the sigint handler")?,
            term: signal(SignalKind::terminate()).context("installing the sigterm handler")?,
            quit: signal(SignalKind::quit()).context("installing the sigquit handler")?,
            hup: signal(SignalKind::hangup()).context("installing the sighup handler")?,
        })
    }

    /// Waits for the next signal.
    async fn wait(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Stop(StopSignal::Int),
            _ = self.term.recv() => Signal::Stop(StopSignal::Term),
            _ = self.quit.recv() => Signal::Stop(StopSignal::Quit),
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}
