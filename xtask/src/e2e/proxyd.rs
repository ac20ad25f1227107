//! The release `proxyd` binary as a child process: a temporary config with every listener on
//! `127.0.0.1:0`, JSON logs on stderr collected line by line, and the bound addresses read from
//! the `listening` events (SPEC §1, §10). Killed when dropped.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::Env;
use super::support::{BOUND, TempDir, lock, signal, stop, track, wait_child};

/// Every stderr line so far, and whether stderr reached EOF.
#[derive(Default)]
struct Log {
    state: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

pub(crate) struct Proxyd {
    child: Child,
    config: PathBuf,
    log: Arc<Log>,
    pub(crate) http: SocketAddr,
    pub(crate) socks: SocketAddr,
    pub(crate) admin: SocketAddr,
    _dir: TempDir,
}

/// The `[network]` table: every listener on an ephemeral loopback port, SOCKS5 on, then
/// `extra` (one key per line).
pub(crate) fn network(extra: &str) -> String {
    format!(
        "[network]\n\
         proxy_url = \"127.0.0.1:0\"\n\
         admin_url = \"127.0.0.1:0\"\n\
         socks_url = \"127.0.0.1:0\"\n\
         enable_socks5 = true\n\
         enable_socks5_udp = false\n\
         {extra}\n"
    )
}

impl Proxyd {
    /// Starts `proxyd --log-format json --config FILE` with [`network`]`(extra)` in FILE and
    /// waits until all three listeners are logged.
    pub(crate) fn start(env: &Env, extra: &str) -> Result<Proxyd> {
        let dir = TempDir::new("proxyd")?;
        let config = dir.join("config.toml");
        std::fs::write(&config, network(extra)).context("write the proxyd config")?;
        // A clean environment: no proxy variables (proxyd would chain to them) and no user
        // config (`CODEX_HOME` is the temp dir).
        let mut child = Command::new(&env.proxyd)
            .env_clear()
            .env("CODEX_HOME", dir.path())
            .env("RUST_LOG", "info")
            .args(["--log-format", "json", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", env.proxyd.display()))?;
        track(&child);
        let log = Arc::new(Log::default());
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lock(&log.state).0.push(line);
                    log.changed.notify_all();
                }
                lock(&log.state).1 = true;
                log.changed.notify_all();
            });
        }
        let unbound: SocketAddr = ([0, 0, 0, 0], 0).into();
        let mut proxyd =
            Proxyd { child, config, log, http: unbound, socks: unbound, admin: unbound, _dir: dir };
        proxyd.http = proxyd.listener("http")?;
        proxyd.socks = proxyd.listener("socks5")?;
        proxyd.admin = proxyd.listener("admin")?;
        Ok(proxyd)
    }

    fn listener(&self, name: &str) -> Result<SocketAddr> {
        let event = self.wait_for_event(&format!("the {name} listener's address"), |e| {
            e["fields"]["message"] == "listening" && e["fields"]["listener"] == name
        })?;
        let addr = event["fields"]["addr"].as_str().context("listening event without addr")?;
        addr.parse().with_context(|| format!("bad {name} address {addr:?}"))
    }

    /// `http://ADDR` of the HTTP proxy listener.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Replaces the config file with [`network`]`(extra)` (for a reload).
    pub(crate) fn rewrite_config(&self, extra: &str) -> Result<()> {
        std::fs::write(&self.config, network(extra)).context("rewrite the proxyd config")
    }

    /// Everything written to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        lock(&self.log.state).0.join("\n")
    }

    /// Waits until a stderr line satisfies `matches`, and returns it.
    pub(crate) fn wait_for_line(
        &self,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + BOUND;
        let mut state = lock(&self.log.state);
        loop {
            if let Some(line) = state.0.iter().find(|l| matches(l)) {
                return Ok(line.clone());
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                drop(state);
                let why = if now >= deadline { "within the bound" } else { "before exiting" };
                bail!("proxyd did not log {what} {why}; stderr:\n{}", self.stderr());
            }
            state = self
                .log
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until a JSON log event satisfies `matches`, and returns it.
    pub(crate) fn wait_for_event(
        &self,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let line = self.wait_for_line(what, |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|e| matches(&e))
        })?;
        serde_json::from_str(&line).context("parse a log event")
    }

    /// Waits for the decision event (SPEC §10) about `host:port`.
    pub(crate) fn wait_for_decision(
        &self,
        protocol: &str,
        host: &str,
        port: u16,
        decision: &str,
        reason: &str,
    ) -> Result<Value> {
        let what = format!("a {protocol} decision {decision}/{reason} for {host}:{port}");
        self.wait_for_event(&what, |event| {
            let fields = &event["fields"];
            fields["message"] == "decision"
                && fields["protocol"] == protocol
                && fields["host"] == host
                && fields["port"] == port
                && fields["decision"] == decision
                && fields["reason"] == reason
        })
    }

    /// Sends `signal` (`TERM`, `HUP`).
    pub(crate) fn signal(&self, name: &str) -> Result<()> {
        signal(self.child.id(), name)
    }

    /// Waits for the process to exit.
    pub(crate) fn wait(&mut self, bound: Duration) -> Result<ExitStatus> {
        wait_child(&mut self.child, bound)
            .with_context(|| format!("proxyd; stderr:\n{}", self.stderr()))
    }
}

impl Drop for Proxyd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// `key = ["a", "b"]` as a TOML line (JSON string quoting is valid TOML for these names).
pub(crate) fn list(key: &str, items: &[&str]) -> String {
    let items: Vec<String> =
        items.iter().map(|i| serde_json::Value::from(*i).to_string()).collect();
    format!("{key} = [{}]", items.join(", "))
}
