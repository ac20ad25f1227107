//! Prometheus metrics (SPEC §8.1 `/metrics`), fed by the decision events and rendered by
//! prometheus-client in the OpenMetrics 1.0.0 text format (HELP and TYPE for every family,
//! `# EOF` last). The admin API serves that as asked by `Accept`, converted to the Prometheus
//! text format 0.0.4 by default (`proxyd-admin`'s `routes.rs`).

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use proxyd_net::Event;
use proxyd_policy::Mode;

type Labels = Vec<(&'static str, String)>;

/// The results [`Metrics::reload`] counts, each exported from the start (0 until it happens).
const RELOAD_RESULTS: [&str; 3] = ["ok", "error", "restart_needed"];

/// When this process started serving, as seconds since the Unix epoch: the time the first
/// proxy of the process was made (for the binary, its start), the same for every later one.
fn start_time() -> f64 {
    static START: OnceLock<f64> = OnceLock::new();
    *START.get_or_init(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
    })
}

/// Every metric proxyd exports.
pub(crate) struct Metrics {
    registry: Registry,
    decisions: Family<Labels, Counter>,
    dns_seconds: Histogram,
    connect_seconds: Histogram,
    bytes: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    mode: Family<Labels, Gauge>,
    active_connections: Family<Labels, Gauge>,
    active_tunnels: Family<Labels, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        // The standard process metric, unprefixed.
        let start = Gauge::<f64, AtomicU64>::default();
        start.set(start_time());
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            start,
        );
        let proxyd = registry.sub_registry_with_prefix("proxyd");
        let build_info = Family::<Labels, Gauge>::default();
        build_info.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_owned())]).set(1);
        proxyd.register("build_info", "proxyd's version, as a label of a constant 1", build_info);
        let mode = Family::<Labels, Gauge>::default();
        proxyd.register("mode", "The mode in force: 1 for it, 0 for the other", mode.clone());
        let decisions = Family::<Labels, Counter>::default();
        proxyd.register(
            "decisions",
            "Decisions by protocol, decision and reason",
            decisions.clone(),
        );
        // 100 µs to ~3 s.
        let dns_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        proxyd.register(
            "dns_seconds",
            "DNS resolution time of allowed requests",
            dns_seconds.clone(),
        );
        let connect_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        proxyd.register(
            "connect_seconds",
            "Connect time of allowed requests",
            connect_seconds.clone(),
        );
        let bytes = Family::<Labels, Counter>::default();
        proxyd.register(
            "tunnel_bytes",
            "Bytes relayed through tunnels, by direction",
            bytes.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        for result in RELOAD_RESULTS {
            let _ = reloads.get_or_create(&vec![("result", result.to_owned())]);
        }
        proxyd.register(
            "reloads",
            "Config reloads by result (ok, error: invalid, restart_needed: refused)",
            reloads.clone(),
        );
        let active_connections = Family::<Labels, Gauge>::default();
        proxyd.register(
            "active_connections",
            "Open client connections by listener",
            active_connections.clone(),
        );
        let active_tunnels = Family::<Labels, Gauge>::default();
        proxyd.register(
            "active_tunnels",
            "Open tunnels and upgraded connections by listener (http, socks5)",
            active_tunnels.clone(),
        );
        Metrics {
            registry,
            decisions,
            dns_seconds,
            connect_seconds,
            bytes,
            reloads,
            mode,
            active_connections,
            active_tunnels,
        }
    }

    pub(crate) fn observe(&self, event: &Event) {
        let labels = vec![
            ("protocol", event.protocol.as_str().to_owned()),
            ("decision", event.outcome.decision().to_owned()),
            ("reason", event.outcome.reason().to_owned()),
        ];
        self.decisions.get_or_create(&labels).inc();
        if let Some(dns) = event.dns_time {
            self.dns_seconds.observe(dns.as_secs_f64());
        }
        if let Some(connect) = event.connect_time {
            self.connect_seconds.observe(connect.as_secs_f64());
        }
    }

    pub(crate) fn tunnel_bytes(&self, protocol: &str, up: u64, down: u64) {
        let labels = |direction: &str| {
            vec![("protocol", protocol.to_owned()), ("direction", direction.to_owned())]
        };
        self.bytes.get_or_create(&labels("up")).inc_by(up);
        self.bytes.get_or_create(&labels("down")).inc_by(down);
    }

    /// Counts one reload by its result, one of [`RELOAD_RESULTS`].
    pub(crate) fn reload(&self, result: &str) {
        debug_assert!(RELOAD_RESULTS.contains(&result), "unknown reload result {result:?}");
        self.reloads.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// Renders the registry (OpenMetrics text) after setting the mode gauge to `mode` and
    /// the listener gauges to `(listener, connections, tunnels)`; `tunnels` is `None` for a
    /// listener that has none (admin, dns), which then has no tunnel series at all.
    pub(crate) fn render(&self, mode: Mode, active: &[(&str, usize, Option<usize>)]) -> String {
        for each in [Mode::Full, Mode::Limited] {
            let labels = vec![("mode", each.as_str().to_owned())];
            self.mode.get_or_create(&labels).set(i64::from(each == mode));
        }
        for (listener, connections, tunnels) in active {
            let labels = vec![("listener", (*listener).to_owned())];
            self.active_connections.get_or_create(&labels).set(*connections as i64);
            if let Some(tunnels) = tunnels {
                self.active_tunnels.get_or_create(&labels).set(*tunnels as i64);
            }
        }
        let mut out = String::new();
        if let Err(err) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %err, "encoding metrics failed");
        }
        out
    }
}
