//! The running proxy's shared state: the engine, the config in force and where it came from,
//! and reloads (SPEC §2.3, §8.2), implementing the admin API's [`Control`]; and the
//! [`Recorder`] (blocked log, metrics, observer), the engine's [`EventSink`], built before the
//! engine and handed to it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use proxyd_admin::{
    BlockedEntry, BlockedLog, BoxFuture, ConfigEntry, Control, PendingAnswer, PendingQuestion,
    ReloadError,
};
use proxyd_config::{Config, Sources, Value};
use proxyd_net::{Connections, Engine, Event, EventSink, Outcome};
use proxyd_policy::Mode;
use tokio::sync::mpsc;

use crate::exec::FailedRequest;
use crate::metrics::Metrics;

/// Blocked requests waiting for the observer; beyond this, new ones are dropped for it (the
/// blocked log still has them), so a slow observer never delays a request.
const OBSERVER_QUEUE: usize = 1024;

/// Failed requests (not policy blocks) kept for `proxyd exec`'s summary; older ones are
/// dropped, and only counted.
const FAILURE_RING: usize = 32;

/// A blocked-request observer (SPEC §9).
pub(crate) type BlockedObserver = Arc<dyn Fn(&BlockedEntry) + Send + Sync>;

/// Where decision events go: metrics, the blocked log and the embedder's observer.
pub(crate) struct Recorder {
    pub(crate) blocked: BlockedLog,
    pub(crate) metrics: Metrics,
    observer: Option<mpsc::Sender<BlockedEntry>>,
    /// The most recent failures that are not policy decisions, and how many there were.
    failures: std::sync::Mutex<(VecDeque<FailedRequest>, u64)>,
}

impl Recorder {
    pub(crate) fn new(blocked_log_size: usize, observer: Option<BlockedObserver>) -> Recorder {
        let observer = observer.map(|observer| {
            let (tx, mut rx) = mpsc::channel::<BlockedEntry>(OBSERVER_QUEUE);
            tokio::spawn(async move {
                while let Some(entry) = rx.recv().await {
                    observer(&entry);
                }
            });
            tx
        });
        Recorder {
            blocked: BlockedLog::new(blocked_log_size),
            metrics: Metrics::new(),
            observer,
            failures: std::sync::Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// The most recent failures, oldest first, and how many were recorded since start.
    pub(crate) fn failures(&self) -> (Vec<FailedRequest>, u64) {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        (failures.0.iter().cloned().collect(), failures.1)
    }

    fn record_failure(&self, event: &Event, code: &str) {
        // The client hanging up is its own doing, not something to diagnose.
        if code == "client_gone" {
            return;
        }
        let entry = FailedRequest {
            host: event.host.clone(),
            port: event.port,
            protocol: event.protocol.as_str().to_owned(),
            reason: code.to_owned(),
        };
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.0.len() == FAILURE_RING {
            failures.0.pop_front();
        }
        failures.0.push_back(entry);
        failures.1 += 1;
    }
}

pub(crate) struct Live {
    pub(crate) engine: Engine,
    config: RwLock<Arc<Config>>,
    /// Where a reload reads from; `None` for a config given directly to the library.
    sources: Option<Sources>,
    pub(crate) recorder: Arc<Recorder>,
    listeners: RwLock<Vec<(String, SocketAddr, Connections)>>,
    tunnels: RwLock<Vec<(String, Connections)>>,
    reload_lock: std::sync::Mutex<()>,
    /// Set once the mode is switched at runtime (admin API or handle): from then on reloads
    /// leave the mode alone, so file edits cannot walk an API-set limited mode back to full.
    mode_pinned: AtomicBool,
}

impl Live {
    pub(crate) fn new(
        engine: Engine,
        config: Config,
        sources: Option<Sources>,
        recorder: Arc<Recorder>,
    ) -> Live {
        Live {
            engine,
            config: RwLock::new(Arc::new(config)),
            sources,
            recorder,
            listeners: RwLock::new(Vec::new()),
            tunnels: RwLock::new(Vec::new()),
            reload_lock: std::sync::Mutex::new(()),
            mode_pinned: AtomicBool::new(false),
        }
    }

    /// A mode switch at runtime (admin API, library handle): applied at once and kept over
    /// every later reload.
    pub(crate) fn set_mode_at_runtime(&self, mode: Mode) {
        self.mode_pinned.store(true, Ordering::SeqCst);
        self.engine.set_mode(mode);
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn add_listener(&self, name: &str, addr: SocketAddr, connections: Connections) {
        let mut listeners = self.listeners.write().unwrap_or_else(|e| e.into_inner());
        listeners.push((name.to_owned(), addr, connections));
    }

    pub(crate) fn add_tunnels(&self, name: &str, tunnels: Connections) {
        self.tunnels.write().unwrap_or_else(|e| e.into_inner()).push((name.to_owned(), tunnels));
    }

    /// Re-reads every source; applies the policy and mode, keeps the old config on any error.
    pub(crate) fn reload_now(&self) -> Result<Vec<String>, ReloadError> {
        // One reload at a time: SIGHUP and `POST /reload` racing must not apply an older file
        // last. Loading is synchronous file reading; nothing here awaits.
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sources) = &self.sources else {
            self.recorder.metrics.reload("error");
            let why = "this proxy was given its config directly: there are no sources to re-read";
            return Err(ReloadError::Invalid(vec![why.to_owned()]));
        };
        let untrusted = crate::trust::untrusted(sources);
        if !untrusted.is_empty() {
            self.recorder.metrics.reload("error");
            return Err(ReloadError::Invalid(untrusted));
        }
        let new = match Config::load(sources) {
            Ok(new) => new,
            Err(errors) => {
                self.recorder.metrics.reload("error");
                return Err(ReloadError::Invalid(errors.iter().map(|e| e.to_string()).collect()));
            }
        };
        let old = self.config();
        let changed = old.restart_required(&new);
        if !changed.is_empty() {
            self.recorder.metrics.reload("restart_needed");
            return Err(ReloadError::RestartNeeded(
                changed.iter().map(|key| format!("{key} changed: restart needed")).collect(),
            ));
        }
        self.apply(&old, new)
    }

    /// Applies a validated config that passed the restart check.
    pub(crate) fn apply(&self, old: &Config, new: Config) -> Result<Vec<String>, ReloadError> {
        // A mode switched at runtime stays over every reload; otherwise a changed file mode
        // applies. Lists and mode change in one step, and every live exchange the result
        // refuses is revoked before this returns.
        let pinned = self.mode_pinned.load(Ordering::SeqCst);
        let mode_change = (new.mode != old.mode && !pinned)
            .then(|| format!("{} -> {}", old.mode.as_str(), new.mode.as_str()));
        let changes = describe_changes(old, &new, mode_change.as_deref());
        match new.mode != old.mode && !pinned {
            true => self.engine.set(new.policy(), new.mode),
            false => self.engine.set_policy(new.policy()),
        }
        let mut pending = pending_restart(old, &new);
        if pinned && new.mode != self.engine.mode() {
            pending.push(
                "mode (switched at runtime; the file's mode applies at the next start)".to_owned(),
            );
        }
        for warning in &new.warnings {
            tracing::warn!("{warning}");
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.recorder.metrics.reload("ok");
        tracing::info!(pending_restart = ?pending, changes = %changes, "config reloaded: {changes}");
        Ok(pending)
    }
}

/// What a reload changed, in one line: the allow and deny entries added and removed, and the
/// mode when it switched; `no policy change` when neither did.
fn describe_changes(old: &Config, new: &Config, mode: Option<&str>) -> String {
    fn diff<'a>(old: &'a [String], new: &'a [String]) -> (Vec<&'a str>, Vec<&'a str>) {
        let added = new.iter().filter(|e| !old.contains(e)).map(String::as_str).collect();
        let removed = old.iter().filter(|e| !new.contains(e)).map(String::as_str).collect();
        (added, removed)
    }
    let mut parts = Vec::new();
    for (list, (added, removed)) in [
        ("allowed_domains", diff(old.allowed_domains(), new.allowed_domains())),
        ("denied_domains", diff(old.denied_domains(), new.denied_domains())),
    ] {
        if !added.is_empty() {
            parts.push(format!("{list} +[{}]", added.join(", ")));
        }
        if !removed.is_empty() {
            parts.push(format!("{list} -[{}]", removed.join(", ")));
        }
    }
    if old.rules.len() != new.rules.len() {
        parts.push(format!("rules {} -> {}", old.rules.len(), new.rules.len()));
    }
    if let Some(mode) = mode {
        parts.push(format!("mode {mode}"));
    }
    match parts.is_empty() {
        true => "no policy change".to_owned(),
        false => parts.join("; "),
    }
}

/// Keys whose new values only a restart applies (they are baked into running listeners).
fn pending_restart(old: &Config, new: &Config) -> Vec<String> {
    let keys: [(&str, bool); 13] = [
        ("connect_timeout", old.connect_timeout != new.connect_timeout),
        ("dns_timeout", old.dns_timeout != new.dns_timeout),
        ("header_read_timeout", old.header_read_timeout != new.header_read_timeout),
        ("idle_timeout", old.idle_timeout != new.idle_timeout),
        ("response_timeout", old.response_timeout != new.response_timeout),
        ("decider_timeout", old.decider_timeout != new.decider_timeout),
        ("drain_timeout", old.drain_timeout != new.drain_timeout),
        ("max_connections", old.max_connections != new.max_connections),
        ("admin_max_connections", old.admin_max_connections != new.admin_max_connections),
        ("blocked_log_size", old.blocked_log_size != new.blocked_log_size),
        ("allow_upstream_proxy", old.allow_upstream_proxy != new.allow_upstream_proxy),
        ("mitm", old.mitm != new.mitm),
        ("ca_dir", old.ca_dir != new.ca_dir),
    ];
    let mut pending: Vec<String> =
        keys.iter().filter(|(_, changed)| *changed).map(|(key, _)| (*key).to_owned()).collect();
    if old.admin_token.as_ref().map(|t| t.as_str()) != new.admin_token.as_ref().map(|t| t.as_str())
    {
        pending.push("admin_token".to_owned());
    }
    // Rules for HTTPS hosts need the interception CA, made at start only.
    if !old.mitm && old.rules.is_empty() && !new.rules.is_empty() {
        pending.push(
            "rules (https hosts with rules are refused until a restart makes the interception ca)"
                .to_owned(),
        );
    }
    // The new allowlist applies at once; the interception CA keeps the name constraints it
    // was made with, so names it does not cover are refused (`mitm_ca_scope`) until a restart.
    if old.mitm && old.allowed_domains() != new.allowed_domains() {
        pending.push("allowed_domains (interception ca name constraints)".to_owned());
    }
    pending
}

impl EventSink for Recorder {
    fn record(&self, event: &Event) {
        self.metrics.observe(event);
        let reason = match &event.outcome {
            Outcome::Blocked(reason) => reason,
            Outcome::Failed(code) => return self.record_failure(event, code),
            Outcome::Allowed => return,
        };
        let entry = BlockedEntry {
            id: 0,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            host: event.host.clone(),
            port: event.port,
            protocol: event.protocol.as_str().to_owned(),
            method: event.method.clone(),
            reason: reason.code().to_owned(),
            client: event.client.map(|c| c.to_string()),
            mode: event.mode.as_str().to_owned(),
            rule: match reason {
                proxyd_policy::Reason::RuleDenied(rule) if !rule.is_empty() => {
                    Some(rule.to_string())
                }
                _ => None,
            },
            detail: event.detail.clone(),
        };
        let id = self.blocked.push(entry.clone());
        if let Some(observer) = &self.observer {
            // Never waits: a full queue drops the notification, not the request.
            let _ = observer.try_send(BlockedEntry { id, ..entry });
        }
    }

    fn tunnel_bytes(&self, protocol: &str, up: u64, down: u64) {
        self.metrics.tunnel_bytes(protocol, up, down);
    }
}

impl Control for Live {
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    fn mode(&self) -> Mode {
        self.engine.mode()
    }

    fn set_mode(&self, mode: Mode) {
        self.set_mode_at_runtime(mode);
    }

    fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        listeners.iter().map(|(name, addr, _)| (name.clone(), *addr)).collect()
    }

    fn config(&self) -> Vec<ConfigEntry> {
        self.config()
            .settings()
            .into_iter()
            .map(|setting| ConfigEntry {
                key: setting.key.to_owned(),
                value: match setting.value {
                    Value::Bool(b) => serde_json::Value::Bool(b),
                    Value::Integer(n) => serde_json::Value::from(n),
                    Value::String(s) => serde_json::Value::String(s),
                    Value::List(list) | Value::Summary(list) => serde_json::Value::from(list),
                    Value::Redacted => serde_json::Value::String("(redacted)".to_owned()),
                    Value::Unset => serde_json::Value::Null,
                },
                origin: setting.origin.to_string(),
            })
            .collect()
    }

    fn patterns(&self) -> (Vec<String>, Vec<String>) {
        let policy = self.engine.policy();
        let list = |set: &proxyd_policy::PatternSet| {
            set.patterns().iter().map(|p| p.to_string()).collect()
        };
        (list(&policy.allowed), list(&policy.denied))
    }

    fn blocked(&self) -> &BlockedLog {
        &self.recorder.blocked
    }

    fn reload(&self) -> BoxFuture<'_, Result<Vec<String>, ReloadError>> {
        Box::pin(async move {
            let result = self.reload_now();
            if let Err(err) = &result {
                // Display, one readable line: the file, the line and what is wrong.
                tracing::error!(
                    error = %err,
                    "admin api: reload refused; the running config stays in force: {err}"
                );
            }
            result
        })
    }

    fn pending(&self) -> Vec<PendingQuestion> {
        let Some(asker) = self.engine.asker() else { return Vec::new() };
        asker
            .pending()
            .into_iter()
            .map(|q| PendingQuestion {
                id: q.id,
                protocol: q.protocol.as_str().to_owned(),
                host: q.host,
                port: q.port,
                method: q.method,
                client: q.client.map(|c| c.to_string()),
                waited_ms: u64::try_from(q.asked_at.elapsed().as_millis()).unwrap_or(u64::MAX),
                waiting: q.waiting,
            })
            .collect()
    }

    fn answer(&self, id: u64, answer: PendingAnswer) -> bool {
        let Some(asker) = self.engine.asker() else { return false };
        let answer = match answer {
            PendingAnswer::AllowOnce => proxyd_net::Answer::AllowOnce,
            PendingAnswer::AllowAlways => proxyd_net::Answer::AllowAlways,
            PendingAnswer::Deny => proxyd_net::Answer::Deny,
        };
        let answered = asker.answer(id, answer);
        if answered {
            tracing::info!(id, ?answer, "pending question answered through the admin api");
        }
        answered
    }

    fn metrics(&self) -> String {
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        let tunnels = self.tunnels.read().unwrap_or_else(|e| e.into_inner());
        // Listeners without tunnels (admin, dns) get no tunnel series.
        let active: Vec<(&str, usize, Option<usize>)> = listeners
            .iter()
            .map(|(name, _, connections)| {
                let open_tunnels = tunnels
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, t)| t.active())
                    .reduce(|a, b| a + b);
                (name.as_str(), connections.active(), open_tunnels)
            })
            .collect();
        self.recorder.metrics.render(self.engine.mode(), &active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_toml_str(toml, "test.toml").expect("valid config")
    }

    #[test]
    fn a_reload_names_what_changed() {
        let old = config("[network]\nallowed_domains = [\"a.test\", \"b.test\"]\n");
        let new = config(
            "[network]\nallowed_domains = [\"b.test\", \"c.test\"]\ndenied_domains = [\"x.test\"]\n",
        );
        assert_eq!(
            describe_changes(&old, &new, Some("full -> limited")),
            "allowed_domains +[c.test]; allowed_domains -[a.test]; denied_domains +[x.test]; \
             mode full -> limited"
        );
        assert_eq!(describe_changes(&old, &old, None), "no policy change");
    }
}
