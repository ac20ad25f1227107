//! The systems under test: proxyd and the peers people use today, each installed from Debian
//! packages when missing and started on a loopback port with a permissive config in a
//! temporary directory, in its own process group, stopped (the whole group) when dropped.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Everything the bench can measure; `Direct` is the client talking to the origin itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum System {
    Direct,
    Proxyd,
    Squid,
    Tinyproxy,
    Dante,
    Microsocks,
}

impl System {
    pub(super) const ALL: [System; 6] = [
        System::Direct,
        System::Proxyd,
        System::Squid,
        System::Tinyproxy,
        System::Dante,
        System::Microsocks,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Proxyd => "proxyd",
            System::Squid => "squid",
            System::Tinyproxy => "tinyproxy",
            System::Dante => "dante",
            System::Microsocks => "microsocks",
        }
    }

    pub(super) fn parse(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The Debian package and the binary it installs, for the peers.
    pub(super) fn package(self) -> Option<(&'static str, &'static str)> {
        match self {
            System::Direct | System::Proxyd => None,
            System::Squid => Some(("squid", "squid")),
            System::Tinyproxy => Some(("tinyproxy", "tinyproxy")),
            System::Dante => Some(("dante-server", "danted")),
            System::Microsocks => Some(("microsocks", "microsocks")),
        }
    }

    pub(super) fn is_peer(self) -> bool {
        self.package().is_some()
    }
}

/// Finds `binary` in the usual system directories and `PATH`.
fn find_binary(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.map(|dir| dir.join(binary)).find(|candidate| candidate.is_file())
}

/// Makes sure each peer in `wanted` is installed (`apt-get update` once, then
/// `apt-get install -y` per package) and returns the binaries of those that are; the others
/// get a note.
pub(super) fn install(wanted: &[System], notes: &mut Vec<String>) -> Vec<(System, PathBuf)> {
    let mut found = Vec::new();
    let mut updated = false;
    for &system in wanted {
        let Some((package, binary)) = system.package() else { continue };
        if let Some(path) = find_binary(binary) {
            found.push((system, path));
            continue;
        }
        println!("bench: {binary} is missing; installing the Debian package {package}");
        if !updated {
            updated = true;
            if let Err(err) = quiet(Command::new("apt-get").arg("update")) {
                notes.push(format!("apt-get update failed: {err:#}"));
            }
        }
        let candidate = Command::new("apt-cache")
            .args(["policy", package])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        if !candidate.contains("Candidate:") || candidate.contains("Candidate: (none)") {
            notes.push(format!("{}: skipped, no Debian package {package}", system.name()));
            continue;
        }
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive");
        match quiet(&mut cmd).map(|()| find_binary(binary)) {
            Ok(Some(path)) => found.push((system, path)),
            Ok(None) => {
                notes.push(format!("{}: skipped, {package} has no {binary}", system.name()))
            }
            Err(err) => notes.push(format!("{}: skipped, install failed: {err:#}", system.name())),
        }
    }
    found
}

fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{:?} failed ({}): {}", cmd.get_program(), out.status, stderr.trim());
    }
    Ok(())
}

/// The installed version of a Debian package, for the report.
pub(super) fn package_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Version}", package]).output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !version.is_empty()).then_some(version)
}

/// A port the OS just handed out on 127.0.0.1, for a peer that cannot report its own.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("picking a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The soft and hard `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
pub(super) fn nofile_limits() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    let mut numbers = line.split_whitespace().filter_map(|word| word.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (with `prlimit --pid`), and
/// returns the limit now in force.
pub(super) fn raise_own_nofile(wanted: u64) -> u64 {
    let Some((soft, hard)) = nofile_limits() else { return 1024 };
    // Root (CAP_SYS_RESOURCE) may raise the hard limit too, up to fs.nr_open; everyone else
    // gets the soft limit raised to the hard one.
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let pid = std::process::id().to_string();
    for limit in [wanted.min(nr_open).max(hard), hard] {
        if soft >= limit {
            break;
        }
        let arg = format!("--nofile={limit}:{limit}");
        let _ = quiet(Command::new("prlimit").args(["--pid", &pid, &arg]));
        if nofile_limits().is_some_and(|(soft, _)| soft >= limit) {
            break;
        }
    }
    nofile_limits().map_or(soft, |(soft, _)| soft)
}

/// A started system; dropping it stops its whole process group.
pub(super) struct Running {
    pub(super) system: System,
    /// The HTTP proxy listener, if it has one.
    pub(super) http: Option<SocketAddr>,
    /// The SOCKS5 listener, if it has one.
    pub(super) socks: Option<SocketAddr>,
    child: Child,
    log: PathBuf,
}

impl Running {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Bytes the system has written to its log so far.
    pub(super) fn log_bytes(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |meta| meta.len())
    }

    /// The last lines of the system's log, for error messages.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Waits until `addr` accepts connections, failing if the process exits first.
    #[expect(
        clippy::disallowed_methods,
        reason = "a readiness probe of a loopback listener the bench started; no policy applies"
    )]
    fn wait_ready(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening:\n{}",
                    self.system.name(),
                    self.log_tail()
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} is not listening on {addr} after 20s:\n{}",
                    self.system.name(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal_group(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let id = self.child.id();
        GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|group| *group != id);
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.signal_group("-KILL"); // leftover children of an exited leader
            return;
        }
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

/// A command for `program` run with the soft `RLIMIT_NOFILE` at `nofile`, in its own process
/// group, stdout and stderr into `log`.
fn command(program: &Path, nofile: u64, log: &Path) -> Result<Command> {
    let mut cmd = match find_binary("prlimit") {
        Some(prlimit) => {
            let mut cmd = Command::new(prlimit);
            cmd.arg(format!("--nofile={nofile}:{nofile}")).arg("--").arg(program);
            cmd
        }
        None => Command::new(program),
    };
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env_remove("RUST_LOG");
    Ok(cmd)
}

fn spawn(system: System, mut cmd: Command, log: PathBuf) -> Result<Running> {
    let child = cmd.spawn().with_context(|| format!("starting {}", system.name()))?;
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(child.id());
    Ok(Running { system, http: None, socks: None, child, log })
}

/// The process groups of every system still running, for [`kill_all`].
static GROUPS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Kills every system still running, by process group: for a bench stopped by a signal, which
/// runs no destructor.
pub(super) fn kill_all() {
    let groups = std::mem::take(&mut *GROUPS.lock().unwrap_or_else(|e| e.into_inner()));
    for group in groups {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
    }
}

/// Starts `system` from `binary` with its config in `dir` (created if missing).
pub(super) fn start(system: System, binary: &Path, dir: &Path, nofile: u64) -> Result<Running> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match system {
        System::Direct => bail!("direct is not a process"),
        System::Proxyd => start_proxyd(binary, dir, nofile),
        System::Squid => start_squid(binary, dir, nofile),
        System::Tinyproxy => start_tinyproxy(binary, dir, nofile),
        System::Dante => start_dante(binary, dir, nofile),
        System::Microsocks => start_microsocks(binary, dir, nofile),
    }
}

/// proxyd from `binary`: a permissive config (the origin's address allowlisted, which also
/// unlocks it as a local destination), every listener on an ephemeral port, read back from the
/// JSON log's `listening` events.
fn start_proxyd(binary: &Path, dir: &Path, nofile: u64) -> Result<Running> {
    start_proxyd_with(binary, dir, nofile, &[])
}

/// [`start_proxyd`] with extra environment variables (an allocator preloaded, glibc malloc
/// tunables, `RUST_LOG`), for the soak and burst variants.
pub(super) fn start_proxyd_with(
    binary: &Path,
    dir: &Path,
    nofile: u64,
    env: &[(String, String)],
) -> Result<Running> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("proxyd.toml");
    fs::write(
        &config,
        r#"[network]
proxy_url = "http://127.0.0.1:0"
socks_url = "http://127.0.0.1:0"
admin_url = "http://127.0.0.1:0"
enable_socks5 = true
enable_socks5_udp = false
allow_upstream_proxy = false
allowed_domains = ["127.0.0.1"]
allow_local_binding = false
max_connections = 100000
idle_timeout = "10m"
"#,
    )?;
    let log = dir.join("proxyd.log");
    let mut cmd = command(binary, nofile, &log)?;
    cmd.arg("--config").arg(&config).args(["--log-format", "json"]).env("CODEX_HOME", dir);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut running = spawn(System::Proxyd, cmd, log)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while running.http.is_none() || running.socks.is_none() {
        if let Some(status) = running.child.try_wait()? {
            bail!("proxyd exited ({status}) before listening:\n{}", running.log_tail());
        }
        if Instant::now() >= deadline {
            bail!("proxyd did not report its listeners after 20s:\n{}", running.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
        let text = fs::read_to_string(&running.log).unwrap_or_default();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let fields = &event["fields"];
            if fields["message"] != "listening" {
                continue;
            }
            let addr = fields["addr"].as_str().and_then(|addr| addr.parse().ok());
            match fields["listener"].as_str() {
                Some("http") => running.http = addr,
                Some("socks5") => running.socks = addr,
                _ => {}
            }
        }
    }
    Ok(running)
}

/// Makes `dir` writable by the unprivileged users the peers switch to.
fn open_up(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// Squid in the foreground (`-N`), no cache, no access log, every request allowed.
fn start_squid(binary: &Path, dir: &Path, nofile: u64) -> Result<Running> {
    open_up(dir)?;
    let port = free_port()?;
    let d = dir.display();
    let config = dir.join("squid.conf");
    fs::write(
        &config,
        format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             access_log none\n\
             cache_store_log none\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             coredump_dir {d}\n\
             http_access allow all\n\
             max_filedescriptors {nofile}\n\
             via off\n\
             forwarded_for transparent\n\
             pinger_enable off\n\
             netdb_filename none\n\
             shutdown_lifetime 0 seconds\n"
        ),
    )?;
    let log = dir.join("squid.out");
    let mut cmd = command(binary, nofile, &log)?;
    cmd.arg("-N").arg("-f").arg(&config);
    let mut running = spawn(System::Squid, cmd, log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    running.wait_ready(addr)?;
    running.http = Some(addr);
    Ok(running)
}

/// tinyproxy in the foreground (`-d`), every port allowed for `CONNECT` (no `ConnectPort`).
fn start_tinyproxy(binary: &Path, dir: &Path, nofile: u64) -> Result<Running> {
    open_up(dir)?;
    let port = free_port()?;
    let d = dir.display();
    let config = dir.join("tinyproxy.conf");
    fs::write(
        &config,
        format!(
            "User nobody\n\
             Group nogroup\n\
             Port {port}\n\
             Listen 127.0.0.1\n\
             Timeout 600\n\
             MaxClients {nofile}\n\
             Allow 127.0.0.1\n\
             LogLevel Error\n\
             LogFile \"{d}/tinyproxy.log\"\n\
             PidFile \"{d}/tinyproxy.pid\"\n\
             DisableViaHeader Yes\n"
        ),
    )?;
    let log = dir.join("tinyproxy.out");
    let mut cmd = command(binary, nofile, &log)?;
    cmd.arg("-d").arg("-c").arg(&config);
    let mut running = spawn(System::Tinyproxy, cmd, log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    running.wait_ready(addr)?;
    running.http = Some(addr);
    Ok(running)
}

/// Dante's `danted` in the foreground, no authentication, `CONNECT` to anything.
fn start_dante(binary: &Path, dir: &Path, nofile: u64) -> Result<Running> {
    open_up(dir)?;
    let port = free_port()?;
    let d = dir.display();
    let config = dir.join("danted.conf");
    fs::write(
        &config,
        format!(
            "logoutput: {d}/danted.log\n\
             internal: 127.0.0.1 port = {port}\n\
             external: 127.0.0.1\n\
             socksmethod: none\n\
             clientmethod: none\n\
             user.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
             socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }}\n"
        ),
    )?;
    let log = dir.join("danted.out");
    let mut cmd = command(binary, nofile, &log)?;
    cmd.arg("-f").arg(&config).arg("-p").arg(dir.join("danted.pid"));
    let mut running = spawn(System::Dante, cmd, log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    running.wait_ready(addr)?;
    running.socks = Some(addr);
    Ok(running)
}

/// microsocks on 127.0.0.1, no authentication; it logs one line per connection, to a file.
fn start_microsocks(binary: &Path, dir: &Path, nofile: u64) -> Result<Running> {
    let port = free_port()?;
    let log = dir.join("microsocks.out");
    let mut cmd = command(binary, nofile, &log)?;
    cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    let mut running = spawn(System::Microsocks, cmd, log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    running.wait_ready(addr)?;
    running.socks = Some(addr);
    Ok(running)
}

/// Every thread of `pids` (and of their descendants) on the CPUs in `cpus` (`taskset` list
/// syntax), while alive; back on every CPU when dropped. On a virtual machine a wake-up on
/// another vCPU costs an inter-processor interrupt through the hypervisor, tens of
/// microseconds when that vCPU is halted: with everything on one CPU, a one-client
/// ping-pong measures the software rather than the hypervisor.
pub(super) struct Pinned {
    pids: Vec<u32>,
    /// Every online CPU, to go back to. Not `available_parallelism`: that follows the
    /// affinity mask, which is exactly what this changes.
    online: String,
}

impl Pinned {
    pub(super) fn new(pids: &[u32], cpus: &str) -> Pinned {
        let online = fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|list| list.trim().to_owned())
            .unwrap_or_default();
        let pids: Vec<u32> = pids.iter().flat_map(|&pid| tree(pid)).collect();
        if !online.is_empty() {
            set_affinity(&pids, cpus);
        }
        Pinned { pids, online }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if !self.online.is_empty() {
            set_affinity(&self.pids, &self.online);
        }
    }
}

fn set_affinity(pids: &[u32], cpus: &str) {
    for pid in pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(child, _)| *child));
        i += 1;
    }
    tree
}

/// Open descriptors of `pid` (its `/proc/PID/fd` entries).
pub(super) fn descriptors(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

/// Resident memory of `pid` and all its descendants: the sum of `VmRSS` (which counts a page
/// shared by forked processes once per process) and of `Pss` (which splits it), in KiB.
pub(super) fn memory_kib(pid: u32) -> (u64, u64) {
    tree(pid).iter().fold((0, 0), |(rss, pss), pid| {
        (
            rss + kib_field(format!("/proc/{pid}/status"), "VmRSS:"),
            pss + kib_field(format!("/proc/{pid}/smaps_rollup"), "Pss:"),
        )
    })
}

/// The anonymous part of [`memory_kib`]'s RSS (`RssAnon`: heap, stacks, dirty data; no pages
/// of the program's files, which the page cache holds and shares), in KiB.
pub(super) fn anonymous_kib(pid: u32) -> u64 {
    tree(pid).iter().map(|pid| kib_field(format!("/proc/{pid}/status"), "RssAnon:")).sum()
}

/// A `name: N kB` line's N from a `/proc` file; 0 when it is not there.
fn kib_field(path: String, name: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
