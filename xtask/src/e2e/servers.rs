//! The harness's own servers, plain `std::net` on `127.0.0.1:0` with a thread per connection:
//! an HTTP origin that records what reached it, and a canary that must never be reached.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::support::{BOUND, connect, lock};

/// How long a `/slow` request may wait for [`Origin::release`].
const SLOW_BOUND: Duration = Duration::from_secs(30);

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct OriginState {
    requests: Mutex<Vec<Request>>,
    arrived: Condvar,
    released: Mutex<bool>,
    release: Condvar,
    stop: AtomicBool,
}

/// Answers every request with `200` and the body `origin METHOD TARGET\n`. A target starting
/// with `/slow` is recorded at once but answered only after [`Origin::release`].
pub(crate) struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
}

impl Origin {
    pub(crate) fn start() -> Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the origin")?;
        let addr = listener.local_addr().context("origin address")?;
        let state = Arc::new(OriginState::default());
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Ok(Origin { addr, state })
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<Request> {
        lock(&self.state.requests).clone()
    }

    /// Waits until at least `n` requests arrived.
    pub(crate) fn wait_for_requests(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + BOUND;
        let mut requests = lock(&self.state.requests);
        while requests.len() < n {
            let now = Instant::now();
            if now >= deadline {
                bail!("the origin saw {} request(s), want {n}", requests.len());
            }
            requests = self
                .state
                .arrived
                .wait_timeout(requests, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Lets every held `/slow` request (and later ones) answer.
    pub(crate) fn release(&self) {
        *lock(&self.state.released) = true;
        self.state.release.notify_all();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wakes the accept loop so it sees `stop`.
        let _ = connect(self.addr);
    }
}

fn serve(stream: TcpStream, state: &OriginState) -> Result<()> {
    stream.set_read_timeout(Some(BOUND))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_request(&mut reader)? else { return Ok(()) };
        let body = format!("origin {} {}\n", request.method, request.target);
        let slow = request.target.starts_with("/slow");
        let head_only = request.method == "HEAD";
        lock(&state.requests).push(request);
        state.arrived.notify_all();
        if slow {
            let released = lock(&state.released);
            let _ = state.release.wait_timeout_while(released, SLOW_BOUND, |released| !*released);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        writer.write_all(head.as_bytes())?;
        if !head_only {
            writer.write_all(body.as_bytes())?;
        }
        writer.flush()?;
    }
}

/// Reads one request; `None` at a clean end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {line:?}");
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').context("bad header line")?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut request = Request { method, target, headers, body: Vec::new() };
    if request.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        request.body = read_chunked(reader)?;
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length.parse().context("bad content-length")?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        request.body = body;
    }
    Ok(Some(request))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let size = size.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).context("bad chunk size")?;
        if size == 0 {
            // Trailers up to the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..])?;
        body.truncate(start + size);
    }
}

#[derive(Default)]
struct CanaryState {
    /// Peers of every accepted connection, probes included, in accept order.
    seen: Mutex<Vec<SocketAddr>>,
    changed: Condvar,
    stop: AtomicBool,
}

/// A listener that must never be reached: it accepts and closes every connection at once (so a
/// wrongly dialling proxy fails fast) and counts them.
pub(crate) struct Canary {
    addr: SocketAddr,
    state: Arc<CanaryState>,
    /// Local addresses of our own probe connections, excluded from [`Canary::hits`].
    probes: Mutex<Vec<SocketAddr>>,
}

impl Canary {
    pub(crate) fn start() -> Result<Canary> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the canary")?;
        let addr = listener.local_addr().context("canary address")?;
        let state = Arc::new(CanaryState::default());
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream
                    && let Ok(peer) = stream.peer_addr()
                {
                    lock(&shared.seen).push(peer);
                    shared.changed.notify_all();
                }
            }
        });
        Ok(Canary { addr, state, probes: Mutex::new(Vec::new()) })
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections that reached the canary so far, settled: a probe connection goes through the
    /// kernel's accept queue behind every connection completed before this call, and the count
    /// is read once the probe has been accepted.
    pub(crate) fn hits(&self) -> Result<usize> {
        let probe = connect(self.addr).context("probe the canary")?;
        let local = probe.local_addr().context("probe address")?;
        let mut probes = lock(&self.probes);
        probes.push(local);
        let deadline = Instant::now() + BOUND;
        let mut seen = lock(&self.state.seen);
        while !seen.contains(&local) {
            let now = Instant::now();
            if now >= deadline {
                bail!("the canary did not accept its probe within {BOUND:?}");
            }
            seen = self
                .state
                .changed
                .wait_timeout(seen, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(seen.iter().filter(|peer| !probes.contains(peer)).count())
    }

    /// Fails if anything but our probes reached the canary.
    pub(crate) fn assert_untouched(&self) -> Result<()> {
        match self.hits()? {
            0 => Ok(()),
            n => bail!("the canary was reached {n} time(s)"),
        }
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = connect(self.addr);
    }
}
