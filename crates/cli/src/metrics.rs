//! Prometheus metrics (SPEC §8.1 `/metrics`), fed by the decision events and rendered in the
//! text exposition format by prometheus-client.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use proxyd_net::Event;

type Labels = Vec<(&'static str, String)>;

/// Every metric proxyd exports.
pub(crate) struct Metrics {
    registry: Registry,
    decisions: Family<Labels, Counter>,
    dns_seconds: Histogram,
    connect_seconds: Histogram,
    bytes: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    active_connections: Family<Labels, Gauge>,
    active_tunnels: Family<Labels, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("proxyd");
        let decisions = Family::<Labels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions by protocol, decision and reason",
            decisions.clone(),
        );
        // 100 µs to ~3 s.
        let dns_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "dns_seconds",
            "DNS resolution time of allowed requests",
            dns_seconds.clone(),
        );
        let connect_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "connect_seconds",
            "Connect time of allowed requests",
            connect_seconds.clone(),
        );
        let bytes = Family::<Labels, Counter>::default();
        registry.register(
            "tunnel_bytes",
            "Bytes relayed through tunnels, by direction",
            bytes.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register("reloads", "Config reloads by result", reloads.clone());
        let active_connections = Family::<Labels, Gauge>::default();
        registry.register(
            "active_connections",
            "Open client connections by listener",
            active_connections.clone(),
        );
        let active_tunnels = Family::<Labels, Gauge>::default();
        registry.register(
            "active_tunnels",
            "Open tunnels and upgraded connections by listener",
            active_tunnels.clone(),
        );
        Metrics {
            registry,
            decisions,
            dns_seconds,
            connect_seconds,
            bytes,
            reloads,
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

    pub(crate) fn reload(&self, result: &str) {
        self.reloads.get_or_create(&vec![("result", result.to_owned())]).inc();
    }

    /// Renders the registry after setting the gauges to `(listener, connections, tunnels)`.
    pub(crate) fn render(&self, active: &[(&str, usize, usize)]) -> String {
        for (listener, connections, tunnels) in active {
            let labels = vec![("listener", (*listener).to_owned())];
            self.active_connections.get_or_create(&labels).set(*connections as i64);
            self.active_tunnels.get_or_create(&labels).set(*tunnels as i64);
        }
        let mut out = String::new();
        if let Err(err) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %err, "encoding metrics failed");
        }
        out
    }
}
