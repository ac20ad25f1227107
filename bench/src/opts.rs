//! The flags of `cargo xtask bench`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::load::Direction;
use super::systems::System;

pub(super) const USAGE: &str = "\
usage: cargo xtask bench [flags]

Side-by-side load tests of direct, proxyd, squid, tinyproxy, dante and microsocks on loopback
(peers are installed from Debian packages when missing), plus the criterion policy bench.
Writes target/bench/report.md and target/bench/report.json.

flags:
  --quick             smoke run: 1 round, 1 s windows, 64 MiB transfers, 1,000 idle tunnels
  --only=SYSTEM[,..]  only these systems (direct always runs: it is the baseline);
                      proxyd, squid, tinyproxy, dante, microsocks
  --rounds=N          rounds; each figure is the median (default 3)
  --duration=SECS     measured window of each rate test (default 4)
  --size=BYTES        bytes per throughput test, split over the streams; K/M/G suffixes
                      are binary (default 1G)
  --tunnels=N         idle tunnels for the memory test (default 10000; capped by the
                      RLIMIT_NOFILE hard limit)
  --clients=N         keep-alive clients of the HTTP test (default 64)
  --direction=up|down throughput direction: origin to client (down, default) or back
  --proxyd-bin=PATH   measure this proxyd binary instead of building target/release/proxyd
  --soak=N            proxyd only, last round: N forwarded keep-alive requests with RSS and
                      descriptors before and after (default 1000000; 0 skips)
  --burst=N           proxyd only, last round: N slowloris connections (partial heads),
                      RSS at start, at the peak and 10 s after they closed (default 3000; 0 skips)
  --no-criterion      skip the criterion policy bench";

#[derive(Debug, Clone)]
pub(super) struct Opts {
    pub(super) quick: bool,
    pub(super) only: Vec<System>,
    pub(super) rounds: usize,
    pub(super) warmup: Duration,
    pub(super) duration: Duration,
    pub(super) size: u64,
    pub(super) streams: usize,
    pub(super) tunnels: usize,
    pub(super) clients: usize,
    pub(super) connect_workers: usize,
    pub(super) direction: Direction,
    pub(super) criterion: bool,
    pub(super) proxyd_bin: Option<std::path::PathBuf>,
    pub(super) soak: u64,
    pub(super) burst: usize,
    /// The flags as given, for the report.
    pub(super) args: Vec<String>,
}

/// `1G`, `64M`, `512K`, or plain bytes.
fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().with_context(|| format!("bad size {text:?}"))?;
    let bytes = n.checked_shl(shift).filter(|b| b >> shift == n).context("size too large")?;
    if bytes == 0 {
        bail!("size must be above zero");
    }
    Ok(bytes)
}

fn parse_count(flag: &str, text: &str) -> Result<usize> {
    let n: usize = text.parse().with_context(|| format!("{flag}: bad number {text:?}"))?;
    if n == 0 {
        bail!("{flag} must be above zero");
    }
    Ok(n)
}

impl Opts {
    /// Parses the arguments after `bench`; `Ok(None)` for `--help`.
    pub(super) fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Opts>> {
        let args: Vec<String> = args.into_iter().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut opts = Opts {
            quick,
            only: Vec::new(),
            rounds: if quick { 1 } else { 3 },
            warmup: Duration::from_millis(if quick { 300 } else { 1000 }),
            duration: Duration::from_secs(if quick { 1 } else { 4 }),
            size: if quick { 64 << 20 } else { 1 << 30 },
            streams: 8,
            tunnels: if quick { 1_000 } else { 10_000 },
            clients: 64,
            connect_workers: 32,
            direction: Direction::Down,
            criterion: true,
            proxyd_bin: None,
            soak: if quick { 20_000 } else { 1_000_000 },
            burst: if quick { 300 } else { 3_000 },
            args: args.clone(),
        };
        let mut iter = args.into_iter();
        while let Some(arg) = iter.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || -> Result<String> {
                match inline.clone() {
                    Some(value) => Ok(value),
                    None => iter.next().with_context(|| format!("{flag} needs a value")),
                }
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--quick" => {}
                "--no-criterion" => opts.criterion = false,
                "--proxyd-bin" => opts.proxyd_bin = Some(value()?.into()),
                "--only" => {
                    for name in value()?.split(',').filter(|n| !n.is_empty()) {
                        let system = System::parse(name).with_context(|| {
                            format!("--only: unknown system {name:?}\n\n{USAGE}")
                        })?;
                        opts.only.push(system);
                    }
                }
                "--rounds" => opts.rounds = parse_count(&flag, &value()?)?,
                "--duration" => {
                    let text = value()?;
                    let secs: f64 =
                        text.parse().with_context(|| format!("bad --duration {text:?}"))?;
                    if !(0.1..=600.0).contains(&secs) {
                        bail!("--duration must be between 0.1 and 600 seconds");
                    }
                    opts.duration = Duration::from_secs_f64(secs);
                }
                "--size" => opts.size = parse_size(&value()?)?,
                "--tunnels" => opts.tunnels = parse_count(&flag, &value()?)?,
                "--soak" => {
                    let text = value()?;
                    opts.soak =
                        text.parse().with_context(|| format!("--soak: bad number {text:?}"))?;
                }
                "--burst" => {
                    let text = value()?;
                    opts.burst =
                        text.parse().with_context(|| format!("--burst: bad number {text:?}"))?;
                }
                "--clients" => opts.clients = parse_count(&flag, &value()?)?,
                "--direction" => {
                    opts.direction = match value()?.as_str() {
                        "down" => Direction::Down,
                        "up" => Direction::Up,
                        other => bail!("--direction: expected up or down, not {other:?}"),
                    }
                }
                _ => bail!("unknown flag {arg:?}\n\n{USAGE}"),
            }
        }
        Ok(Some(opts))
    }

    /// Whether `system` runs in this invocation.
    pub(super) fn runs(&self, system: System) -> bool {
        system == System::Direct || self.only.is_empty() || self.only.contains(&system)
    }

    pub(super) fn direction_name(&self) -> &'static str {
        match self.direction {
            Direction::Down => "down",
            Direction::Up => "up",
        }
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "args": self.args,
            "quick": self.quick,
            "rounds": self.rounds,
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.duration.as_secs_f64(),
            "size_bytes": self.size,
            "streams": self.streams,
            "tunnels_requested": self.tunnels,
            "http_clients": self.clients,
            "connect_workers": self.connect_workers,
            "direction": self.direction_name(),
            "soak_requests": self.soak,
            "burst_connections": self.burst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Opts, parse_size};
    use crate::systems::System;

    fn parse(args: &[&str]) -> Opts {
        Opts::parse(args.iter().map(|a| (*a).to_owned())).unwrap().unwrap()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn flags() {
        let opts = parse(&[]);
        assert_eq!((opts.rounds, opts.size, opts.tunnels), (3, 1 << 30, 10_000));
        let opts = parse(&["--quick", "--only=proxyd,squid", "--rounds", "2"]);
        assert_eq!((opts.rounds, opts.size), (2, 64 << 20));
        assert!(opts.runs(System::Direct) && opts.runs(System::Squid));
        assert!(!opts.runs(System::Dante));
        assert!(Opts::parse(["--only=nginx".to_owned()]).is_err());
        assert!(Opts::parse(["--frobnicate".to_owned()]).is_err());
        assert!(Opts::parse(["--help".to_owned()]).unwrap().is_none());
    }
}
