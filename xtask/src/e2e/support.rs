//! Process and filesystem helpers shared by the scenarios: temporary directories, commands run
//! with a deadline, background children killed on drop, and the one place the harness dials.
//! Every wait is bounded, so a hang fails in seconds.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// How long any single wait may take before the scenario fails.
pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// How often a bounded wait on a child process checks whether it exited.
const POLL: Duration = Duration::from_millis(5);

/// Proxy and TLS variables that would silently change what a client does.
const CLIENT_ENV: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "ftp_proxy",
    "FTP_PROXY",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_PROXY",
    "GIT_PROXY_COMMAND",
];

/// Long-lived children (proxyd, servers) not yet reaped. A scenario that times out leaves its
/// thread, and so its children, behind: the runner kills them by id at the end.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub(crate) fn track(child: &Child) {
    lock(&LIVE).push(child.id());
}

fn untrack(child: &Child) {
    lock(&LIVE).retain(|pid| *pid != child.id());
}

/// Kills every tracked child that is still running (never reaped, so its id is still its own).
pub(crate) fn kill_leftovers() {
    let pids = std::mem::take(&mut *lock(&LIVE));
    for pid in pids {
        let _ = signal(pid, "KILL");
    }
}

/// Kills and reaps a tracked child.
pub(crate) fn stop(child: &mut Child) {
    untrack(child);
    let _ = child.kill();
    let _ = child.wait();
}

/// Locks `mutex`, ignoring poisoning: a panicking scenario thread must not take others down.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Connects to one of the harness's own servers or to proxyd's listeners.
#[expect(clippy::disallowed_methods, reason = "the e2e client dials proxyd, not proxyd's egress")]
pub(crate) fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream =
        TcpStream::connect_timeout(&addr, BOUND).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(BOUND)).context("set read timeout")?;
    stream.set_write_timeout(Some(BOUND)).context("set write timeout")?;
    Ok(stream)
}

/// A directory under the system temp dir, removed with everything in it when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> Result<TempDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "proxyd-e2e-{what}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `program` with stdin closed and none of the proxy or CA variables of our own environment.
pub(crate) fn client(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in CLIENT_ENV {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    /// Fails with both streams unless the command exited 0.
    pub(crate) fn ok(self, what: &str) -> Result<Output> {
        if !self.status.success() {
            bail!("{what} failed ({}): {}{}", self.status, self.stderr.trim(), self.stdout.trim());
        }
        Ok(self)
    }
}

/// Runs `cmd` to completion, killing it after `bound`.
pub(crate) fn run(mut cmd: Command, bound: Duration) -> Result<Output> {
    let shown = crate::display(&cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start `{shown}` (is it installed?)"))?;
    let stdout = read_to_end(child.stdout.take());
    let stderr = read_to_end(child.stderr.take());
    let status = wait_child(&mut child, bound);
    let stderr = stderr.join().unwrap_or_default();
    let stdout = stdout.join().unwrap_or_default();
    match status {
        Ok(status) => Ok(Output { status, stdout, stderr }),
        Err(err) => Err(err.context(format!("`{shown}`; stderr: {}", stderr.trim()))),
    }
}

fn read_to_end(stream: Option<impl std::io::Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits up to `bound` for `child` to exit; kills it when the bound passes.
pub(crate) fn wait_child(child: &mut Child, bound: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().context("wait for child")? {
            untrack(child);
            return Ok(status);
        }
        if Instant::now() >= deadline {
            stop(child);
            bail!("did not exit within {bound:?}");
        }
        thread::sleep(POLL);
    }
}

/// A server child that prints one line (its port) when ready; killed when dropped.
pub(crate) struct Background {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    /// Starts `cmd` and returns it with the first line it prints on stdout.
    pub(crate) fn start(mut cmd: Command, what: &str) -> Result<(Background, String)> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {what} (`{}`)", crate::display(&cmd)))?;
        track(&child);
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut sink = lock(&sink);
                    sink.push_str(&line);
                    sink.push('\n');
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            thread::spawn(move || {
                let mut lines = BufReader::new(pipe).lines();
                let _ = tx.send(lines.next());
                // Keep draining so the child never blocks on a full pipe.
                for _ in lines {}
            });
        }
        let background = Background { child, stderr };
        match rx.recv_timeout(BOUND) {
            Ok(Some(Ok(line))) => Ok((background, line)),
            _ => bail!("{what} did not start within {BOUND:?}; stderr: {}", background.stderr()),
        }
    }

    pub(crate) fn stderr(&self) -> String {
        lock(&self.stderr).trim().to_owned()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Sends `signal` (`TERM`, `HUP`) to `pid` with the shell's `kill` builtin (no procps needed).
pub(crate) fn signal(pid: u32, signal: &str) -> Result<()> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal, &pid.to_string()]);
    run(cmd, BOUND)?.ok(&format!("kill -s {signal} {pid}"))?;
    Ok(())
}
