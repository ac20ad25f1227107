//! The `proxyd` binary: parse the command line, load the config, install global state
//! (tracing, the rustls crypto provider, signal handlers), and serve until a signal.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use proxyd::{Config, NetworkProxy, Sources};

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
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Print the effective config and where each key came from, then exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config, print the effective config, and exit (non-zero if invalid).
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let sources = Sources::standard(cli.configs.clone(), cli.overrides.clone());
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("proxyd: invalid configuration ({} error(s)):", errors.len());
            for error in errors.iter() {
                eprintln!("  {error}");
            }
            return ExitCode::from(2);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if cli.print_config || matches!(cli.command, Some(Command::Check)) {
        print!("{}", config.render());
        return ExitCode::SUCCESS;
    }
    if !config.enabled {
        tracing::info!("network.enabled is false: proxyd binds nothing and exits");
        return ExitCode::SUCCESS;
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("proxyd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    // One crypto provider for the process (STYLE.md): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        // Before anything is bound or logged: a supervisor may signal as soon as it reads the
        // `listening` line, and an uncaught SIGTERM would kill the process without draining.
        let signals = Signals::install()?;
        let proxy = NetworkProxy::builder().config(config).build().await?;
        let handle = proxy.run().await?;
        signals.wait().await;
        tracing::info!("shutting down: draining connections");
        handle.shutdown().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The handlers for SIGINT and SIGTERM, registered from [`Signals::install`] on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the sigint handler")?,
            term: signal(SignalKind::terminate()).context("installing the sigterm handler")?,
        })
    }

    /// Waits for SIGINT or SIGTERM.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
