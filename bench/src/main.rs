//! `cargo xtask bench` (this crate's binary, built in release mode by xtask): proxyd side by side with the proxies people use today, on loopback.
//!
//! One invocation builds the release `proxyd`, runs the criterion policy bench, installs the
//! peers from Debian packages when missing (squid, tinyproxy, dante-server, microsocks),
//! starts every system on loopback with a permissive config in a temporary directory, starts
//! a local origin (an HTTP keep-alive server and a bulk source/sink), and drives them all with
//! the load generator in `load.rs` (tokio; hand-written absolute-form HTTP, `CONNECT` and
//! SOCKS5 clients; HDR histograms). "Direct" is the load generator talking to the origin
//! itself: the physical limit on this machine. Each figure is the median of several rounds;
//! the table goes to stdout, `target/bench/report.md` and `target/bench/report.json`.
//!
//! Not part of `ci`: timings on a shared machine are measurements to compare, never
//! assertions. Every target is on 127.0.0.1, and every loop is bounded in time or count.

mod client;
mod load;
mod opts;
mod origin;
mod report;
mod systems;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::runtime::Runtime;

use self::client::Via;
use self::load::{Rate, Window};
use self::opts::{Opts, USAGE};
use self::origin::Origin;
use self::report::{Metric, Report, Setup};
use self::systems::{Pinned, Running, System};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let Some(opts) = Opts::parse(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    // The load generator must not be the bottleneck: an unoptimised build of it would make
    // "direct" (the physical limit) a measure of the bench itself.
    if cfg!(debug_assertions) {
        bail!("build the bench in release mode: `cargo xtask bench` does");
    }
    let started = Instant::now();
    let out_dir = target_dir()?.join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    // Other work on the machine skews every figure: say how busy it was.
    let load_at_start = load_average();
    let mut notes = Vec::new();
    // Each idle tunnel costs the bench two descriptors (client and origin side) and a proxy
    // two (both sides), so the RLIMIT_NOFILE limit caps the memory test: raise it for the
    // tunnels asked for (the systems inherit it).
    let wanted = u64::try_from(opts.tunnels).unwrap_or(u64::MAX).saturating_mul(2) + 1024;
    let nofile = systems::raise_own_nofile(wanted);
    let cap = (usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(300) / 2) / 100 * 100;
    let tunnels = opts.tunnels.min(cap.max(100));
    if tunnels < opts.tunnels {
        notes.push(format!(
            "{} idle tunnels are not reachable: RLIMIT_NOFILE is {nofile} (hard limit) and a \
             proxy holds two descriptors per tunnel; the memory test uses {tunnels}",
            opts.tunnels
        ));
    }

    let wanted: Vec<System> = System::ALL.into_iter().filter(|&s| opts.runs(s)).collect();
    let proxyd_binary = if !wanted.contains(&System::Proxyd) {
        None
    } else if let Some(binary) = &opts.proxyd_bin {
        Some(
            fs::canonicalize(binary)
                .with_context(|| format!("--proxyd-bin {}", binary.display()))?,
        )
    } else {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "-p", "proxyd"]);
        run_status(cmd)?;
        Some(target_dir()?.join("release").join("proxyd"))
    };
    let peers = systems::install(&wanted, &mut notes);
    for &system in wanted.iter().filter(|s| s.is_peer()) {
        if !peers.iter().any(|(s, _)| *s == system) {
            println!("bench: {} is not available; see the notes", system.name());
        }
    }

    let decide = if opts.criterion && proxyd_binary.is_some() {
        match criterion(&opts, &out_dir) {
            Ok(figures) => Some(figures),
            Err(err) => {
                notes.push(format!("criterion bench failed: {err:#}"));
                None
            }
        }
    } else {
        None
    };

    let work = std::env::temp_dir().join(format!("proxyd-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = measure_all(&opts, proxyd_binary.as_deref(), &peers, &work, nofile, tunnels);
    let _ = fs::remove_dir_all(&work);
    let (systems_run, mut report) = result?;

    report.notes.splice(0..0, notes);
    report.systems = systems_run;
    if let Some((few, many)) = decide {
        report.record(System::Proxyd, Metric::Decide10, few);
        report.record(System::Proxyd, Metric::Decide10k, many);
    }
    report.machine = machine();
    report.machine.push(("load average at start".to_owned(), load_at_start));
    report.machine.push(("load average at end".to_owned(), load_average()));
    for (system, _) in &peers {
        if let Some(version) = system.package().and_then(|(p, _)| systems::package_version(p)) {
            report.versions.push((system.name().to_owned(), version));
        }
    }
    report.elapsed_s = started.elapsed().as_secs_f64();

    let markdown = report.markdown();
    println!("\n{markdown}");
    fs::write(out_dir.join("report.md"), &markdown)?;
    fs::write(out_dir.join("report.json"), serde_json::to_string_pretty(&report.json())?)?;
    println!("bench: wrote {} and report.json", out_dir.join("report.md").display());
    Ok(())
}

/// Starts the origin and every system, runs the rounds, stops everything.
fn measure_all(
    opts: &Opts,
    proxyd: Option<&Path>,
    peers: &[(System, PathBuf)],
    work: &Path,
    nofile: u64,
    tunnels: usize,
) -> Result<(Vec<System>, Report)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the bench runtime")?;
    let origin = rt.block_on(origin::start())?;
    // Interrupted (Ctrl-C, SIGTERM): stop every system and remove the configs, then exit.
    let dir = work.to_path_buf();
    rt.spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("bench: interrupted; stopping every system");
        systems::kill_all();
        let _ = fs::remove_dir_all(&dir);
        std::process::exit(130);
    });

    let setup = Setup {
        command: format!("cargo xtask bench {}", opts.args.join(" ")).trim_end().to_owned(),
        clients: opts.clients,
        size: opts.size,
        streams: opts.streams,
        tunnels,
        rounds: opts.rounds,
        direction: opts.direction_name(),
        options: opts.to_json(),
    };
    let mut report = Report::new(setup, Vec::new());

    let binaries: Vec<(System, PathBuf)> = proxyd
        .map(|binary| (System::Proxyd, binary.to_path_buf()))
        .into_iter()
        .chain(peers.iter().cloned())
        .collect();
    let mut running: Vec<Running> = Vec::new();
    for (system, binary) in &binaries {
        match systems::start(*system, binary, &work.join(system.name()), nofile) {
            Ok(run) => running.push(run),
            Err(err) if *system == System::Proxyd => return Err(err),
            Err(err) => report.notes.push(format!("{}: did not start: {err:#}", system.name())),
        }
    }

    let mut bench = Bench { rt: &rt, opts, origin, tunnels, report, work, nofile };
    for round in 1..=opts.rounds {
        println!("bench: round {round}/{}", opts.rounds);
        bench.direct();
        for run in &running {
            bench.system(run);
        }
        for run in &running {
            if let Some((_, binary)) = binaries.iter().find(|(s, _)| *s == run.system) {
                bench.memory(run.system, binary, round);
            }
        }
        if round == opts.rounds
            && let Some((_, binary)) = binaries.iter().find(|(s, _)| *s == System::Proxyd)
        {
            bench.soak_and_burst(binary);
        }
    }
    let systems: Vec<System> = std::iter::once(System::Direct)
        .chain(System::ALL.into_iter().filter(|s| running.iter().any(|r| r.system == *s)))
        .collect();
    drop(running); // stops every process group
    Ok((systems, bench.report))
}

struct Bench<'a> {
    rt: &'a Runtime,
    opts: &'a Opts,
    origin: Origin,
    tunnels: usize,
    report: Report,
    /// Where each system instance gets its config directory.
    work: &'a Path,
    nofile: u64,
}

impl Bench<'_> {
    fn window(&self) -> Window {
        Window { warmup: self.opts.warmup, measure: self.opts.duration }
    }

    /// Runs a rate test, prints it, notes its errors; `None` if nothing succeeded.
    fn rate(
        &mut self,
        system: System,
        what: &str,
        test: impl Future<Output = Result<Rate>>,
    ) -> Option<Rate> {
        let outcome = self.rt.block_on(test);
        let rate = match outcome {
            Ok(rate) => rate,
            Err(err) => {
                self.report.notes.push(format!("{}: {what} failed: {err:#}", system.name()));
                return None;
            }
        };
        println!(
            "bench:   {:<10} {what:<28} {:>10.0}/s  p50 {:>8.1} µs  p99 {:>8.1} µs  errors {}",
            system.name(),
            rate.per_second,
            rate.p50_us,
            rate.p99_us,
            rate.errors
        );
        if rate.errors > 0 || rate.ops == 0 {
            self.report.notes.push(format!(
                "{}: {what}: {} errors beside {} successes; first: {}",
                system.name(),
                rate.errors,
                rate.ops,
                rate.first_error.as_deref().unwrap_or("none")
            ));
        }
        (rate.ops > 0).then_some(rate)
    }

    /// `pid`: the system's process, pinned with the bench for the one-CPU latency test.
    fn http(&mut self, system: System, via: Via, pid: Option<u32>) {
        let origin = self.origin.http;
        let window = self.window();
        let clients = self.opts.clients;
        let test = load::http_keepalive(via, origin, clients, window);
        if let Some(rate) = self.rate(system, &format!("HTTP, {clients} clients"), test) {
            self.report.record(system, Metric::HttpRps, rate.per_second);
            self.report.record(system, Metric::HttpP50, rate.p50_us);
            self.report.record(system, Metric::HttpP99, rate.p99_us);
            if rate.connects > rate.ops / 2 {
                let note = format!(
                    "{}: no keep-alive to clients ({} connections for {} requests, {} of them \
                     retried after the server closed a kept connection)",
                    system.name(),
                    rate.connects,
                    rate.ops,
                    rate.stale
                );
                let prefix = format!("{}: no keep-alive", system.name());
                if !self.report.notes.iter().any(|n| n.starts_with(&prefix)) {
                    self.report.notes.push(note);
                }
            }
        }
        let test = load::http_keepalive(via, origin, 1, window);
        if let Some(rate) = self.rate(system, "HTTP, 1 client", test) {
            self.report.record(system, Metric::Http1P50, rate.p50_us);
            self.report.record(system, Metric::Http1P99, rate.p99_us);
        }
        let mut pids = vec![std::process::id()];
        pids.extend(pid);
        let pinned = Pinned::new(&pids, "0");
        let test = load::http_keepalive(via, origin, 1, window);
        let rate = self.rate(system, "HTTP, 1 client, one CPU", test);
        drop(pinned);
        if let Some(rate) = rate {
            self.report.record(system, Metric::Http1P50OneCpu, rate.p50_us);
            self.report.record(system, Metric::Http1P99OneCpu, rate.p99_us);
        }
    }

    fn connects(&mut self, system: System, via: Via, metrics: &[Metric]) {
        let (origin, window, workers) =
            (self.origin.http, self.window(), self.opts.connect_workers);
        let what = match via {
            Via::Socks5(_) => "SOCKS5 connect + request",
            _ => "CONNECT + request",
        };
        if let Some(rate) =
            self.rate(system, what, load::connect_rate(via, origin, workers, window))
        {
            for &metric in metrics {
                self.report.record(system, metric, rate.per_second);
            }
        }
    }

    fn throughput(&mut self, system: System, via: Via, streams: usize, metrics: &[Metric]) {
        let (bulk, size, direction) = (self.origin.bulk, self.opts.size, self.opts.direction);
        match self.rt.block_on(load::throughput(via, bulk, streams, size, direction)) {
            Ok(bytes_per_s) => {
                let mib = bytes_per_s / (1u64 << 20) as f64;
                println!(
                    "bench:   {:<10} {:<28} {mib:>10.0} MiB/s",
                    system.name(),
                    format!("transfer, {streams} stream(s)")
                );
                for &metric in metrics {
                    self.report.record(system, metric, mib);
                }
            }
            Err(err) => self.report.notes.push(format!(
                "{}: transfer with {streams} stream(s) failed: {err:#}",
                system.name()
            )),
        }
    }

    fn direct(&mut self) {
        let system = System::Direct;
        self.http(system, Via::Direct, None);
        self.connects(system, Via::Direct, &[Metric::ConnectRate, Metric::SocksRate]);
        let streams = self.opts.streams;
        self.throughput(system, Via::Direct, 1, &[Metric::ConnectTput1, Metric::SocksTput1]);
        self.throughput(system, Via::Direct, streams, &[Metric::ConnectTput8, Metric::SocksTput8]);
    }

    fn system(&mut self, run: &Running) {
        let system = run.system;
        let streams = self.opts.streams;
        if let Some(proxy) = run.http {
            let via = Via::Http(proxy);
            self.http(system, via, Some(run.pid()));
            self.connects(system, via, &[Metric::ConnectRate]);
            self.throughput(system, via, 1, &[Metric::ConnectTput1]);
            self.throughput(system, via, streams, &[Metric::ConnectTput8]);
        }
        if let Some(proxy) = run.socks {
            let via = Via::Socks5(proxy);
            self.connects(system, via, &[Metric::SocksRate]);
            self.throughput(system, via, 1, &[Metric::SocksTput1]);
            self.throughput(system, via, streams, &[Metric::SocksTput8]);
        }
    }

    /// proxyd only, each on a fresh instance: the soak, the cost of the per-decision log, and
    /// the slowloris burst under each allocator available.
    fn soak_and_burst(&mut self, binary: &Path) {
        if self.opts.soak > 0 {
            self.soak(binary);
        }
        if self.opts.burst > 0 {
            // The binary's own allocator (jemalloc with a purging thread). Preloading another
            // one no longer swaps it: glibc malloc, with and without `arena_max=2`, and
            // jemalloc without the thread were measured before choosing (README).
            self.burst(binary, "as built", &[], Metric::BurstRssAfter);
        }
    }

    /// `--soak` forwarded keep-alive requests with RSS and descriptors before and after (after
    /// a warm-up of a tenth as many, so "before" has the buffers of every client; "after" once
    /// the clients have closed, 2 s later); then
    /// a shorter soak at the default log level (one INFO line per decision) and one with the
    /// decision lines off (`RUST_LOG=info,proxyd::decision=warn`), for what that log costs.
    fn soak(&mut self, binary: &Path) {
        let system = System::Proxyd;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let Some(run) = self.proxyd_with("soak", binary, &[]) else { return };
        let Some(proxy) = run.http else { return };
        let pid = run.pid();
        let clients = self.opts.clients;
        let warmup = load::http_soak(proxy, self.origin.http, clients, self.opts.soak / 10);
        self.rt.block_on(warmup);
        std::thread::sleep(Duration::from_secs(2));
        let (rss0, fds0, log0) =
            (systems::memory_kib(pid).0, systems::descriptors(pid), run.log_bytes());
        let started = Instant::now();
        let soak = load::http_soak(proxy, self.origin.http, clients, self.opts.soak);
        let (done, failed) = self.rt.block_on(soak);
        let secs = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let (rss1, fds1) = (systems::memory_kib(pid).0, systems::descriptors(pid));
        let log_per = (run.log_bytes() - log0) as f64 / done.max(1) as f64;
        println!(
            "bench:   proxyd     soak: {done} requests in {secs:.0} s ({failed} failed), RSS \
             {:.1} → {:.1} MiB, descriptors {fds0} → {fds1}, {log_per:.0} log bytes/request",
            mib(rss0),
            mib(rss1)
        );
        for (metric, value) in [
            (Metric::SoakRequests, done as f64),
            (Metric::SoakRssStart, mib(rss0)),
            (Metric::SoakRssEnd, mib(rss1)),
            (Metric::SoakFdsStart, fds0 as f64),
            (Metric::SoakFdsEnd, fds1 as f64),
            (Metric::LogBytesPerDecision, log_per),
        ] {
            self.report.record(system, metric, value);
        }
        if failed > 0 {
            self.report.notes.push(format!("proxyd: soak: {failed} requests failed"));
        }
        drop(run);
        let n = self.opts.soak.min(200_000);
        let quiet = vec![("RUST_LOG".to_owned(), "info,proxyd::decision=warn".to_owned())];
        for (name, env, metric) in [
            ("log-info", Vec::new(), Metric::LogRateInfo),
            ("log-quiet", quiet, Metric::LogRateQuiet),
        ] {
            let Some(run) = self.proxyd_with(name, binary, &env) else { return };
            let Some(proxy) = run.http else { return };
            let started = Instant::now();
            let (done, _) = self.rt.block_on(load::http_soak(proxy, self.origin.http, clients, n));
            let rate = done as f64 / started.elapsed().as_secs_f64();
            println!("bench:   proxyd     {name}: {rate:.0} requests/s over {done}");
            self.report.record(system, metric, rate);
        }
    }

    /// `--burst` slowloris connections on a fresh instance with `env`: RSS at start, at the
    /// peak, and 10 s after the clients closed them (memory that comes back).
    fn burst(&mut self, binary: &Path, name: &str, env: &[(String, String)], after: Metric) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let Some(run) = self.proxyd_with(&format!("burst-{}", after.key()), binary, env) else {
            return;
        };
        let Some(proxy) = run.http else { return };
        let pid = run.pid();
        let start = systems::memory_kib(pid).0;
        let held = self.rt.block_on(load::slowloris(proxy, self.origin.http, self.opts.burst));
        std::thread::sleep(Duration::from_secs(1));
        let peak = systems::memory_kib(pid).0;
        let opened = held.len();
        drop(held);
        std::thread::sleep(Duration::from_secs(10));
        let after_idle = systems::memory_kib(pid).0;
        println!(
            "bench:   proxyd     burst, {name}: {opened} slowloris connections, RSS {:.1} → \
             {:.1} → {:.1} MiB (start, peak, 10 s after)",
            mib(start),
            mib(peak),
            mib(after_idle)
        );
        if after == Metric::BurstRssAfter {
            self.report.record(System::Proxyd, Metric::BurstRssStart, mib(start));
            self.report.record(System::Proxyd, Metric::BurstRssPeak, mib(peak));
        }
        self.report.record(System::Proxyd, after, mib(after_idle));
    }

    /// A fresh proxyd with `env`, one second after it listens; `None` (with a note) if it did
    /// not start.
    fn proxyd_with(
        &mut self,
        name: &str,
        binary: &Path,
        env: &[(String, String)],
    ) -> Option<Running> {
        let dir = self.work.join(format!("proxyd-{name}"));
        match systems::start_proxyd_with(binary, &dir, self.nofile, env) {
            Ok(run) => {
                std::thread::sleep(Duration::from_secs(1));
                Some(run)
            }
            Err(err) => {
                self.report.notes.push(format!("proxyd: {name} instance did not start: {err:#}"));
                None
            }
        }
    }

    /// Memory of a fresh instance: at rest (started, listening, nothing sent), then with
    /// `tunnels` idle tunnels to the origin's HTTP port (which holds them without a word), twice:
    /// the first batch lands on fresh zeroed pages, the second on memory the first one freed,
    /// which is what a long-running proxy sees.
    fn memory(&mut self, system: System, binary: &Path, round: usize) {
        let dir = self.work.join(format!("{}-memory-{round}", system.name()));
        let run = match systems::start(system, binary, &dir, self.nofile) {
            Ok(run) => run,
            Err(err) => {
                let note = format!("{}: memory instance did not start: {err:#}", system.name());
                self.report.notes.push(note);
                return;
            }
        };
        let via = match (run.http, run.socks) {
            (Some(proxy), _) => Via::Http(proxy),
            (None, Some(proxy)) => Via::Socks5(proxy),
            (None, None) => return,
        };
        std::thread::sleep(Duration::from_secs(1));
        let (rest, _) = systems::memory_kib(run.pid());
        self.report.record(system, Metric::RssRest, rest as f64 / 1024.0);
        let anonymous = systems::anonymous_kib(run.pid());
        self.report.record(system, Metric::RssRestAnon, anonymous as f64 / 1024.0);
        for batch in 1..=2 {
            let idle = self.rt.block_on(load::idle_tunnels(via, self.origin.http, self.tunnels));
            std::thread::sleep(Duration::from_secs(1));
            let (with, pss) = systems::memory_kib(run.pid());
            let open = idle.tunnels.len();
            println!(
                "bench:   {:<10} {:<28} {open:>10} open  RSS {:.1} → {:.1} MiB (PSS {:.1} MiB)",
                system.name(),
                format!("idle tunnels, batch {batch}"),
                rest as f64 / 1024.0,
                with as f64 / 1024.0,
                pss as f64 / 1024.0
            );
            if idle.failures > 0 {
                self.report.notes.push(format!(
                    "{}: {} of {} idle tunnels failed to open (round {round}, batch {batch}); \
                     first: {}",
                    system.name(),
                    idle.failures,
                    self.tunnels,
                    idle.first_error.as_deref().unwrap_or("?")
                ));
            }
            if open == 0 {
                break;
            }
            let per = (with as f64 - rest as f64) / open as f64;
            if batch == 1 {
                self.report.record(system, Metric::RssPerTunnelFirst, per);
            } else {
                self.report.record(system, Metric::IdleTunnels, open as f64);
                self.report.record(system, Metric::RssIdle, with as f64 / 1024.0);
                self.report.record(system, Metric::RssPerTunnel, per);
            }
            if system == System::Dante
                && !self.report.notes.iter().any(|n| n.starts_with("dante: a process"))
            {
                self.report.notes.push(format!(
                    "dante: a process per 32 clients; its RSS is the sum over its processes, \
                     which counts shared pages once per process (PSS with {open} tunnels: \
                     {:.0} MiB)",
                    pss as f64 / 1024.0
                ));
            }
            self.rt.block_on(load::close_idle(idle.tunnels, self.origin.http));
            std::thread::sleep(Duration::from_secs(1));
        }
        drop(run);
    }
}

/// Runs the criterion policy bench (hits only) and returns the medians for 10 and 10,000
/// patterns in nanoseconds.
fn criterion(opts: &Opts, out_dir: &Path) -> Result<(f64, f64)> {
    let (warm, measure) = if opts.quick { ("0.5", "1") } else { ("1", "3") };
    let log = out_dir.join("criterion.log");
    println!("bench: criterion policy bench (output in {})", log.display());
    let file = fs::File::create(&log)?;
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "proxyd-policy", "--bench", "decide", "--"])
        .args(["--warm-up-time", warm, "--measurement-time", measure, "decide/hit"])
        .stdout(file.try_clone()?)
        .stderr(file);
    let status = cmd.status().context("starting cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status}); see {}", log.display());
    }
    let criterion = target_dir()?.join("criterion").join("decide").join("hit");
    let estimate = |n: &str| -> Result<f64> {
        let path = criterion.join(n).join("new").join("estimates.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        json["median"]["point_estimate"]
            .as_f64()
            .with_context(|| format!("{} has no median.point_estimate", path.display()))
    };
    Ok((estimate("10")?, estimate("10000")?))
}

/// Cores, CPU model, kernel and memory, for the report.
fn machine() -> Vec<(String, String)> {
    let mut machine = Vec::new();
    let cores = Command::new("nproc")
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".to_owned());
    machine.push(("cores".to_owned(), cores));
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim()))
        .unwrap_or("?");
    machine.push(("cpu".to_owned(), model.to_owned()));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    machine.push(("kernel".to_owned(), kernel.trim().to_owned()));
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kib) = meminfo.lines().find_map(|line| {
        line.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok()
    }) {
        machine.push(("memory".to_owned(), format!("{:.0} GiB", kib as f64 / (1 << 20) as f64)));
    }
    machine
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The workspace root: this crate lives one level below it.
fn project_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// A `cargo` command run from the workspace root, with the cargo that ran us (`$CARGO`).
fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(program);
    cmd.current_dir(project_root());
    cmd
}

/// Runs `cmd` with inherited stdio and fails unless it exits successfully.
fn run_status(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The target directory as cargo sees it (honours `CARGO_TARGET_DIR` and config).
fn target_dir() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]).stderr(Stdio::inherit());
    let output = cmd.output().context("starting cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed ({})", output.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no `target_directory`")?;
    Ok(PathBuf::from(dir))
}
