//! Medians of the rounds, the side-by-side table (each figure with its ratio to direct and to
//! the best peer), the goal beside each row, and `report.md` / `report.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::systems::System;

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// Every figure of the table, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Metric {
    HttpRps,
    HttpP50,
    HttpP99,
    Http1P50,
    Http1P99,
    Http1P50OneCpu,
    Http1P99OneCpu,
    ConnectRate,
    ConnectTput1,
    ConnectTput8,
    SocksRate,
    SocksTput1,
    SocksTput8,
    RssRest,
    RssRestAnon,
    RssIdle,
    RssPerTunnelFirst,
    RssPerTunnel,
    IdleTunnels,
    Decide10,
    Decide10k,
    SoakRequests,
    SoakRssStart,
    SoakRssEnd,
    SoakFdsStart,
    SoakFdsEnd,
    BurstRssStart,
    BurstRssPeak,
    BurstRssAfter,
    LogBytesPerDecision,
    LogRateInfo,
    LogRateQuiet,
}

impl Metric {
    const ALL: [Metric; 32] = [
        Metric::HttpRps,
        Metric::HttpP50,
        Metric::HttpP99,
        Metric::Http1P50,
        Metric::Http1P99,
        Metric::Http1P50OneCpu,
        Metric::Http1P99OneCpu,
        Metric::ConnectRate,
        Metric::ConnectTput1,
        Metric::ConnectTput8,
        Metric::SocksRate,
        Metric::SocksTput1,
        Metric::SocksTput8,
        Metric::RssRest,
        Metric::RssRestAnon,
        Metric::RssIdle,
        Metric::RssPerTunnelFirst,
        Metric::RssPerTunnel,
        Metric::IdleTunnels,
        Metric::Decide10,
        Metric::Decide10k,
        Metric::SoakRequests,
        Metric::SoakRssStart,
        Metric::SoakRssEnd,
        Metric::SoakFdsStart,
        Metric::SoakFdsEnd,
        Metric::BurstRssStart,
        Metric::BurstRssPeak,
        Metric::BurstRssAfter,
        Metric::LogBytesPerDecision,
        Metric::LogRateInfo,
        Metric::LogRateQuiet,
    ];

    pub(super) fn key(self) -> &'static str {
        match self {
            Metric::HttpRps => "http_requests_per_s",
            Metric::HttpP50 => "http_p50_us",
            Metric::HttpP99 => "http_p99_us",
            Metric::Http1P50 => "http_1client_p50_us",
            Metric::Http1P99 => "http_1client_p99_us",
            Metric::Http1P50OneCpu => "http_1client_one_cpu_p50_us",
            Metric::Http1P99OneCpu => "http_1client_one_cpu_p99_us",
            Metric::ConnectRate => "connect_tunnels_per_s",
            Metric::ConnectTput1 => "connect_mib_per_s_1stream",
            Metric::ConnectTput8 => "connect_mib_per_s_8streams",
            Metric::SocksRate => "socks5_connects_per_s",
            Metric::SocksTput1 => "socks5_mib_per_s_1stream",
            Metric::SocksTput8 => "socks5_mib_per_s_8streams",
            Metric::RssRest => "rss_at_rest_mib",
            Metric::RssRestAnon => "rss_at_rest_anonymous_mib",
            Metric::RssIdle => "rss_idle_tunnels_mib",
            Metric::RssPerTunnelFirst => "rss_per_idle_tunnel_first_batch_kib",
            Metric::RssPerTunnel => "rss_per_idle_tunnel_kib",
            Metric::IdleTunnels => "idle_tunnels_open",
            Metric::Decide10 => "decide_hit_10_patterns_ns",
            Metric::Decide10k => "decide_hit_10000_patterns_ns",
            Metric::SoakRequests => "soak_requests",
            Metric::SoakRssStart => "soak_rss_start_mib",
            Metric::SoakRssEnd => "soak_rss_end_mib",
            Metric::SoakFdsStart => "soak_descriptors_start",
            Metric::SoakFdsEnd => "soak_descriptors_end",
            Metric::BurstRssStart => "burst_rss_start_mib",
            Metric::BurstRssPeak => "burst_rss_peak_mib",
            Metric::BurstRssAfter => "burst_rss_after_idle_mib",
            Metric::LogBytesPerDecision => "log_bytes_per_decision_info",
            Metric::LogRateInfo => "requests_per_s_log_info",
            Metric::LogRateQuiet => "requests_per_s_decision_lines_off",
        }
    }

    fn better(self) -> Better {
        match self {
            Metric::HttpRps
            | Metric::ConnectRate
            | Metric::ConnectTput1
            | Metric::ConnectTput8
            | Metric::SocksRate
            | Metric::SocksTput1
            | Metric::SocksTput8
            | Metric::IdleTunnels
            | Metric::SoakRequests
            | Metric::LogRateInfo
            | Metric::LogRateQuiet => Better::Higher,
            _ => Better::Lower,
        }
    }

    /// Whether the row is a figure to compare with direct and the peers (not a count or a
    /// proxyd-only soak or burst reading).
    fn compared(self) -> bool {
        !matches!(
            self,
            Metric::IdleTunnels
                | Metric::SoakRequests
                | Metric::SoakRssStart
                | Metric::SoakRssEnd
                | Metric::SoakFdsStart
                | Metric::SoakFdsEnd
                | Metric::BurstRssStart
                | Metric::BurstRssPeak
                | Metric::BurstRssAfter
                | Metric::LogBytesPerDecision
                | Metric::LogRateInfo
                | Metric::LogRateQuiet
        )
    }

    fn is_latency(self) -> bool {
        matches!(
            self,
            Metric::HttpP50
                | Metric::HttpP99
                | Metric::Http1P50
                | Metric::Http1P99
                | Metric::Http1P50OneCpu
                | Metric::Http1P99OneCpu
        )
    }
}

/// What the labels and the header need to know about the run.
#[derive(Debug, Clone)]
pub(super) struct Setup {
    pub(super) command: String,
    pub(super) clients: usize,
    pub(super) size: u64,
    pub(super) streams: usize,
    pub(super) tunnels: usize,
    pub(super) rounds: usize,
    pub(super) direction: &'static str,
    pub(super) options: Value,
}

/// A row's goal and whether proxyd met it (`None`: not measured).
#[derive(Debug)]
struct Goal {
    text: String,
    met: Option<bool>,
}

/// Per-round figures of every system, plus notes and the machine.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) setup: Setup,
    pub(super) machine: Vec<(String, String)>,
    pub(super) versions: Vec<(String, String)>,
    pub(super) systems: Vec<System>,
    pub(super) notes: Vec<String>,
    pub(super) elapsed_s: f64,
    rounds: BTreeMap<System, BTreeMap<Metric, Vec<f64>>>,
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// A figure with three significant digits and a `k`/`M` suffix for large counts.
fn number(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn ratio(value: f64) -> String {
    if value >= 10.0 { format!("{value:.0}×") } else { format!("{value:.2}×") }
}

fn size_label(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} B")
    }
}

impl Report {
    pub(super) fn new(setup: Setup, systems: Vec<System>) -> Self {
        Self {
            setup,
            machine: Vec::new(),
            versions: Vec::new(),
            systems,
            notes: Vec::new(),
            elapsed_s: 0.0,
            rounds: BTreeMap::new(),
        }
    }

    pub(super) fn record(&mut self, system: System, metric: Metric, value: f64) {
        self.rounds.entry(system).or_default().entry(metric).or_default().push(value);
    }

    fn median(&self, system: System, metric: Metric) -> Option<f64> {
        median(self.rounds.get(&system)?.get(&metric)?)
    }

    fn label(&self, metric: Metric) -> String {
        let s = &self.setup;
        let size = size_label(s.size);
        let dir = s.direction;
        match metric {
            Metric::HttpRps => format!("HTTP forward req/s, {} keep-alive clients", s.clients),
            Metric::HttpP50 => format!("HTTP p50 latency µs (+added), {} clients", s.clients),
            Metric::HttpP99 => format!("HTTP p99 latency µs (+added), {} clients", s.clients),
            Metric::Http1P50 => "HTTP p50 latency µs (+added), 1 client".to_owned(),
            Metric::Http1P99 => "HTTP p99 latency µs (+added), 1 client".to_owned(),
            Metric::Http1P50OneCpu => "same, p50, everything on one CPU".to_owned(),
            Metric::Http1P99OneCpu => "same, p99, everything on one CPU".to_owned(),
            Metric::ConnectRate => "CONNECT new tunnels/s (connect, 1 request, close)".to_owned(),
            Metric::ConnectTput1 => format!("CONNECT MiB/s, {size} {dir}, 1 stream"),
            Metric::ConnectTput8 => format!("CONNECT MiB/s, {size} {dir}, {} streams", s.streams),
            Metric::SocksRate => "SOCKS5 connects/s (connect, 1 request, close)".to_owned(),
            Metric::SocksTput1 => format!("SOCKS5 MiB/s, {size} {dir}, 1 stream"),
            Metric::SocksTput8 => format!("SOCKS5 MiB/s, {size} {dir}, {} streams", s.streams),
            Metric::RssRest => "RSS at rest, MiB (fresh process)".to_owned(),
            Metric::RssRestAnon => {
                "of it anonymous (RssAnon: heap and stacks, no file pages), MiB".to_owned()
            }
            Metric::RssIdle => format!("RSS with {} idle tunnels, MiB (2nd batch)", s.tunnels),
            Metric::RssPerTunnelFirst => "RSS per idle tunnel, KiB (1st batch)".to_owned(),
            Metric::RssPerTunnel => "RSS per idle tunnel, KiB (2nd batch)".to_owned(),
            Metric::IdleTunnels => format!("idle tunnels held (of {})", s.tunnels),
            Metric::Decide10 => "policy decision ns, 10 patterns (criterion)".to_owned(),
            Metric::Decide10k => "policy decision ns, 10,000 patterns (criterion)".to_owned(),
            Metric::SoakRequests => "soak: forwarded keep-alive requests".to_owned(),
            Metric::SoakRssStart => "soak: RSS before (after a 10% warm-up), MiB".to_owned(),
            Metric::SoakRssEnd => "soak: RSS after, MiB".to_owned(),
            Metric::SoakFdsStart => "soak: descriptors before".to_owned(),
            Metric::SoakFdsEnd => "soak: descriptors after".to_owned(),
            Metric::BurstRssStart => "slowloris burst: RSS at start, MiB".to_owned(),
            Metric::BurstRssPeak => "slowloris burst: RSS at the peak, MiB".to_owned(),
            Metric::BurstRssAfter => "slowloris burst: RSS 10 s after, MiB".to_owned(),
            Metric::LogBytesPerDecision => {
                "log bytes per allowed request (default level, INFO)".to_owned()
            }
            Metric::LogRateInfo => {
                format!("forwarded req/s, {} clients, log at INFO (default)", s.clients)
            }
            Metric::LogRateQuiet => {
                "same, decision lines off (RUST_LOG=info,proxyd::decision=warn)".to_owned()
            }
        }
    }

    /// The best peer's median for a metric, and which peer it is.
    fn best_peer(&self, metric: Metric) -> Option<(System, f64)> {
        let peers = self.systems.iter().filter(|s| s.is_peer());
        let values = peers.filter_map(|&s| Some((s, self.median(s, metric)?)));
        match metric.better() {
            Better::Higher => values.max_by(|a, b| a.1.total_cmp(&b.1)),
            Better::Lower => values.min_by(|a, b| a.1.total_cmp(&b.1)),
        }
    }

    fn cell(&self, system: System, metric: Metric) -> String {
        let Some(value) = self.median(system, metric) else { return "—".to_owned() };
        let mut text = number(value);
        if system == System::Direct || !metric.compared() {
            return text;
        }
        let mut ratios = Vec::new();
        let direct = self.median(System::Direct, metric);
        if let Some(direct) = direct.filter(|d| *d > 0.0) {
            if metric.is_latency() {
                ratios.push(format!("+{}", number(value - direct)));
            }
            ratios.push(format!("{}d", ratio(value / direct)));
        }
        if let Some((_, best)) = self.best_peer(metric).filter(|(_, best)| *best > 0.0) {
            ratios.push(format!("{}p", ratio(value / best)));
        }
        if !ratios.is_empty() {
            let _ = write!(text, " ({})", ratios.join(", "));
        }
        text
    }

    /// The markdown table: a row per metric that any system measured.
    pub(super) fn table(&self) -> String {
        let mut out = String::from("| metric |");
        for system in &self.systems {
            let _ = write!(out, " {} |", system.name());
        }
        out.push_str(" goal (proxyd) |\n|---|");
        out.push_str(&"---|".repeat(self.systems.len() + 1));
        out.push('\n');
        for metric in Metric::ALL {
            if self.systems.iter().all(|&s| self.median(s, metric).is_none()) {
                continue;
            }
            let _ = write!(out, "| {} |", self.label(metric));
            for &system in &self.systems {
                let _ = write!(out, " {} |", self.cell(system, metric));
            }
            let goal = match self.goal(metric) {
                Some(Goal { text, met: Some(true), .. }) => format!("{text}: met"),
                Some(Goal { text, met: Some(false), .. }) => format!("{text}: **not met**"),
                Some(Goal { text, met: None, .. }) => format!("{text}: not measured"),
                None => String::new(),
            };
            let _ = writeln!(out, " {goal} |");
        }
        out
    }

    /// The goal of issue 15 (and issue 6 where 15 set none) for a row, judged on proxyd's
    /// median.
    fn goal(&self, metric: Metric) -> Option<Goal> {
        let m = |system, metric| self.median(system, metric);
        let proxyd = m(System::Proxyd, metric);
        let direct = m(System::Direct, metric);
        let peer = |system| m(system, metric);
        let best = self.best_peer(metric);
        let goal = |text: String, met: Option<bool>| Some(Goal { text, met });
        match metric {
            Metric::ConnectTput1
            | Metric::ConnectTput8
            | Metric::SocksTput1
            | Metric::SocksTput8 => {
                goal("≥ 0.8× direct".to_owned(), proxyd.zip(direct).map(|(p, d)| p >= 0.8 * d))
            }
            Metric::ConnectRate => goal(
                "≥ 1.2× tinyproxy".to_owned(),
                proxyd.zip(peer(System::Tinyproxy)).map(|(p, t)| p >= 1.2 * t),
            ),
            Metric::SocksRate => goal(
                "≥ 1.2× microsocks".to_owned(),
                proxyd.zip(peer(System::Microsocks)).map(|(p, t)| p >= 1.2 * t),
            ),
            Metric::HttpRps => {
                goal("above every peer".to_owned(), proxyd.zip(best).map(|(p, (_, b))| p > b))
            }
            Metric::Http1P99 => {
                goal("below every peer".to_owned(), proxyd.zip(best).map(|(p, (_, b))| p < b))
            }
            Metric::RssPerTunnelFirst | Metric::RssPerTunnel => {
                goal("≤ 6 KiB".to_owned(), proxyd.map(|p| p <= 6.0))
            }
            Metric::RssRest => goal("≤ 3 MiB".to_owned(), proxyd.map(|p| p <= 3.0)),
            Metric::Decide10k => goal(
                "≤ 1.25× the 10-pattern figure".to_owned(),
                proxyd.zip(m(System::Proxyd, Metric::Decide10)).map(|(n, f)| n <= 1.25 * f),
            ),
            Metric::SoakRssEnd => goal(
                "≤ 1.25× before".to_owned(),
                proxyd.zip(m(System::Proxyd, Metric::SoakRssStart)).map(|(e, s)| e <= 1.25 * s),
            ),
            Metric::SoakFdsEnd => goal(
                "≤ before (no descriptor kept per request)".to_owned(),
                proxyd.zip(m(System::Proxyd, Metric::SoakFdsStart)).map(|(e, s)| e <= s),
            ),
            Metric::BurstRssAfter => goal(
                "≤ 2× RSS at rest".to_owned(),
                proxyd.zip(m(System::Proxyd, Metric::RssRest)).map(|(a, r)| a <= 2.0 * r),
            ),
            _ => None,
        }
    }

    pub(super) fn markdown(&self) -> String {
        let mut out = String::from("# proxyd benchmark\n\n");
        let _ = writeln!(out, "Command: `{}`\n", self.setup.command);
        let machine: Vec<String> = self.machine.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(out, "Machine: {}.\n", machine.join("; "));
        let versions: Vec<String> = self.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if !versions.is_empty() {
            let _ = writeln!(out, "Peers: {}.\n", versions.join(", "));
        }
        let _ = writeln!(
            out,
            "Medians of {} round(s); run time {:.0} s. A cell reads `value (+added over direct, \
             ×direct d, ×best peer p)`; the best peer is the highest rate or the lowest latency \
             or memory among the peers that ran that row. Direct is the load generator talking \
             to the origin itself; its SOCKS5 rows repeat its plain-connection figures.\n",
            self.setup.rounds, self.elapsed_s
        );
        out.push_str(&self.table());
        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    pub(super) fn json(&self) -> Value {
        let mut results = serde_json::Map::new();
        for (system, metrics) in &self.rounds {
            let mut entry = serde_json::Map::new();
            for (metric, rounds) in metrics {
                let mut figure = json!({ "median": median(rounds), "rounds": rounds });
                if let Some(direct) =
                    self.median(System::Direct, *metric).filter(|_| *system != System::Direct)
                    && let Some(value) = median(rounds)
                {
                    figure["ratio_to_direct"] = json!(value / direct);
                    if metric.is_latency() {
                        figure["added_us"] = json!(value - direct);
                    }
                }
                if let (Some((peer, best)), Some(value)) = (self.best_peer(*metric), median(rounds))
                {
                    figure["best_peer"] = json!(peer.name());
                    figure["ratio_to_best_peer"] = json!(value / best);
                }
                entry.insert(metric.key().to_owned(), figure);
            }
            results.insert(system.name().to_owned(), Value::Object(entry));
        }
        let goals: Vec<Value> = Metric::ALL
            .into_iter()
            .filter_map(|metric| {
                let goal = self.goal(metric)?;
                Some(json!({ "metric": metric.key(), "goal": goal.text, "met": goal.met }))
            })
            .collect();
        json!({
            "command": self.setup.command,
            "machine": self.machine.iter().cloned().collect::<BTreeMap<_, _>>(),
            "peers": self.versions.iter().cloned().collect::<BTreeMap<_, _>>(),
            "systems": self.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "options": self.setup.options,
            "run_time_s": self.elapsed_s,
            "results": results,
            "goals": goals,
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Metric, Report, Setup, median, number};
    use crate::systems::System;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(number(41_234.0), "41.2k");
        assert_eq!(number(312.4), "312");
        assert_eq!(number(1.234), "1.23");
    }

    #[test]
    fn ratios_to_direct_and_best_peer() {
        let setup = Setup {
            command: "cargo xtask bench".to_owned(),
            clients: 64,
            size: 1 << 30,
            streams: 8,
            tunnels: 10_000,
            rounds: 1,
            direction: "down",
            options: serde_json::Value::Null,
        };
        let systems = vec![System::Direct, System::Proxyd, System::Squid, System::Tinyproxy];
        let mut report = Report::new(setup, systems);
        for (system, rps, p99) in [
            (System::Direct, 100_000.0, 100.0),
            (System::Proxyd, 50_000.0, 300.0),
            (System::Squid, 25_000.0, 400.0),
            (System::Tinyproxy, 10_000.0, 900.0),
        ] {
            report.record(system, Metric::HttpRps, rps);
            report.record(system, Metric::Http1P99, p99);
        }
        assert_eq!(report.cell(System::Proxyd, Metric::HttpRps), "50.0k (0.50×d, 2.00×p)");
        assert_eq!(report.cell(System::Proxyd, Metric::Http1P99), "300 (+200, 3.00×d, 0.75×p)");
        assert_eq!(report.cell(System::Direct, Metric::HttpRps), "100.0k");
        let table = report.table();
        assert!(
            table.starts_with("| metric | direct | proxyd | squid | tinyproxy | goal (proxyd) |"),
            "{table}"
        );
        assert!(table.contains("| above every peer: met |"), "{table}");
        assert!(table.contains("| below every peer: met |"), "{table}");
        assert_eq!(report.goal(Metric::RssRest).map(|g| g.met), Some(None));
        report.record(System::Proxyd, Metric::RssRest, 7.0);
        assert_eq!(report.goal(Metric::RssRest).map(|g| g.met), Some(Some(false)));
    }
}
