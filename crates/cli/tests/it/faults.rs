//! Fault tests (issue 16): the built binary under hostile load, driven from outside. The
//! helpers here play slow clients and read the process's CPU time and memory from `/proc`;
//! `faults_admin.rs` (the kill switch stays reachable), `faults_limits.rs` (slow heads,
//! `max_connections`, descriptor exhaustion), `faults_origin.rs` (origins that misbehave) and
//! `faults_change.rs` (reload, mode switches and shutdown under load) hold the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use proxyd_test_support::connect;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::support::BOUND;

/// Raises this test process's open-file soft limit to its hard limit, as proxyd does for
/// itself: the slow clients need more descriptors than a default soft limit (often 1024).
/// Fails when even the hard limit cannot hold `needed`.
pub(crate) fn raise_nofile(needed: u64) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        setrlimit(Resource::Nofile, Rlimit { current: Some(maximum), maximum: Some(maximum) })
            .context("raise RLIMIT_NOFILE")?;
    }
    let now = getrlimit(Resource::Nofile).current;
    ensure!(now.is_none_or(|n| n >= needed), "RLIMIT_NOFILE {now:?} is below the {needed} needed");
    Ok(())
}

/// Connects `n` clients to `addr` and writes `partial` (a head without its end) on each; the
/// connections stay open until the returned streams are dropped.
pub(crate) async fn hold_heads(
    addr: SocketAddr,
    n: usize,
    partial: &[u8],
) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = connect(addr).await?;
        timeout(BOUND, stream.write_all(partial)).await.context("write a partial head")??;
        held.push(stream);
    }
    Ok(held)
}

/// Slowloris: `n` clients that each send `head` one byte every `every` and never its end.
/// A client whose connection proxyd closes counts in [`Dribblers::cut`]. Stops when dropped.
pub(crate) struct Dribblers {
    tasks: JoinSet<()>,
    connected: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

impl Dribblers {
    pub(crate) async fn start(
        addr: SocketAddr,
        n: usize,
        head: &'static [u8],
        every: Duration,
    ) -> anyhow::Result<Dribblers> {
        let (connected, cut) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let mut stream = connect(addr).await?;
            connected.fetch_add(1, Ordering::SeqCst);
            let cut = Arc::clone(&cut);
            tasks.spawn(async move {
                // Never the last byte: the head stays incomplete.
                for byte in head[..head.len() - 1].iter().cycle() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        cut.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
        Ok(Dribblers { tasks, connected, cut })
    }

    pub(crate) fn connected(&self) -> usize {
        self.connected.load(Ordering::SeqCst)
    }

    pub(crate) fn cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Dribblers {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// User plus system CPU time of process `pid` so far, from `/proc/PID/stat`.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read stat")?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')').context("stat without a command")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
    let ticks: u64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()?))
}

fn clock_ticks() -> anyhow::Result<f64> {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().context("getconf")?;
    let ticks: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().context("CLK_TCK")?;
    ensure!(ticks > 0.0, "CLK_TCK {ticks}");
    Ok(ticks)
}

/// Resident memory of process `pid` in KiB, from `/proc/PID/status`.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    line.split_whitespace().nth(1).context("VmRSS value")?.parse().context("VmRSS number")
}

/// CPU time `pid` used over `window`, as a fraction of the window (1.0 = one busy core).
pub(crate) async fn cpu_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_time(pid)?;
    tokio::time::sleep(window).await;
    let used = cpu_time(pid)?.saturating_sub(before);
    Ok(used.as_secs_f64() / window.as_secs_f64())
}

/// A `[network]` table with every listener on loopback port 0: HTTP, SOCKS5 (with UDP), admin
/// and the DNS service, followed by `extra` (one key per line).
pub(crate) fn all_listeners(extra: &str) -> String {
    format!(
        "[network]\n\
         proxy_url = \"127.0.0.1:0\"\n\
         admin_url = \"127.0.0.1:0\"\n\
         socks_url = \"127.0.0.1:0\"\n\
         dns_url = \"127.0.0.1:0\"\n\
         enable_socks5 = true\n\
         {extra}\n"
    )
}
