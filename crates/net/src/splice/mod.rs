//! The tunnel relay (SPEC §7.3): half-close handled, one idle clock across both directions,
//! an external `close` signal for drain and limited-mode switches, and the bytes moved
//! counted whatever ends the tunnel.
//!
//! Two ways to move the bytes, chosen per tunnel by what the two ends are:
//! - `zero_copy` (Linux, both ends plain TCP sockets): `splice(2)` from one socket into a pipe
//!   and from the pipe into the other, so the payload never enters user space. A direction
//!   holds a pipe only while bytes flow: the pipe comes from the [`Relay`]'s small pool when
//!   the source is readable and goes back when it is empty and the source would block. A pipe
//!   with bytes left in it is closed, never pooled. When no pipe is to be had ([`MAX_PIPES`]
//!   exist, or no descriptor is left), the chunk goes through a borrowed buffer.
//! - `copy` (TLS, hyper's upgraded connections that are not plain sockets, other systems):
//!   reads into a buffer borrowed from the relay's pool for the call, so an idle tunnel holds
//!   no buffer; one is kept only while its bytes wait for the writer.
//!
//! Both directions are polled from the caller's task, so a tunnel costs no task spawns.

mod copy;
#[cfg(target_os = "linux")]
mod zero_copy;

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until};

/// Size of the relay buffers the copy path borrows (and of a pipe the kernel would not
/// enlarge).
pub const SPLICE_BUFFER_SIZE: usize = 64 * 1024;

/// How many idle pipes (two descriptors each) and copy buffers the relay keeps for reuse.
/// Beyond that they are closed or freed when a direction is done with them.
pub const RELAY_POOL_SIZE: usize = 32;

/// How many pipes may exist at once (two descriptors each, pooled or in use). A direction
/// that finds none to spare, or none the system will make (`EMFILE`), moves its next chunk
/// through a borrowed buffer instead.
pub const MAX_PIPES: usize = 512;

/// An end of a tunnel. A plain TCP socket can be relayed without copies; anything else is
/// copied.
pub struct Side(SideKind);

enum SideKind {
    Tcp { stream: TcpStream, pending: Vec<u8> },
    Io(Box<dyn Io>),
}

/// What the copy path relays: any byte stream.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Side {
    /// A plain TCP socket.
    pub fn tcp(stream: TcpStream) -> Side {
        Side::tcp_with_pending(stream, Vec::new())
    }

    /// A plain TCP socket from which `pending` was already read (hyper's read buffer at an
    /// upgrade): those bytes are relayed before anything else read from it.
    pub fn tcp_with_pending(stream: TcpStream, pending: Vec<u8>) -> Side {
        Side(SideKind::Tcp { stream, pending })
    }

    /// Any other stream (TLS, an upgraded connection hyper keeps wrapped): always copied.
    pub fn io(io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static) -> Side {
        Side(SideKind::Io(Box::new(io)))
    }
}

/// How a tunnel was relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPath {
    /// `splice(2)` through pipes.
    ZeroCopy,
    /// Through a user-space buffer.
    Copy,
}

/// Why a tunnel ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions finished (EOF read and passed on as a shutdown).
    Done,
    /// No byte moved in either direction for `idle_timeout`.
    Idle,
    /// The close signal fired.
    Closed,
    /// An I/O error on either side (log it; never show its text to a client).
    Failed(io::Error),
}

/// What a relayed tunnel did: the bytes moved whatever ended it.
#[derive(Debug)]
pub struct Spliced {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub end: RelayEnd,
    pub path: RelayPath,
}

/// What a [`Relay`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Tunnels relayed with `splice(2)`.
    pub zero_copy: u64,
    /// Tunnels relayed through user-space buffers.
    pub copied: u64,
    /// Pipes created (each reused from the pool afterwards while it has room).
    pub pipes_created: u64,
    /// Empty pipes in the pool now.
    pub pipes_pooled: usize,
    /// Chunks a zero-copy tunnel copied because no pipe was to be had.
    pub pipe_shortages: u64,
}

/// Relays tunnels, and owns what they borrow while bytes flow: the pipe pool and the copy
/// buffers. One per engine.
pub struct Relay {
    #[cfg(target_os = "linux")]
    pipes: Mutex<Vec<zero_copy::Pipe>>,
    buffers: Mutex<Vec<Box<[u8]>>>,
    /// Pipes that exist now, pooled or in use, and how many may.
    #[cfg(target_os = "linux")]
    live_pipes: std::sync::atomic::AtomicUsize,
    #[cfg_attr(not(target_os = "linux"), expect(dead_code, reason = "no pipes here"))]
    max_pipes: usize,
    zero_copy: AtomicU64,
    copied: AtomicU64,
    pipes_created: AtomicU64,
    pipe_shortages: AtomicU64,
}

impl Default for Relay {
    fn default() -> Relay {
        Relay::with_max_pipes(MAX_PIPES)
    }
}

impl Relay {
    pub fn new() -> Relay {
        Relay::default()
    }

    /// A relay that keeps at most `max_pipes` pipes at once ([`MAX_PIPES`] by default).
    pub fn with_max_pipes(max_pipes: usize) -> Relay {
        Relay {
            #[cfg(target_os = "linux")]
            pipes: Mutex::default(),
            buffers: Mutex::default(),
            #[cfg(target_os = "linux")]
            live_pipes: Default::default(),
            max_pipes,
            zero_copy: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            pipes_created: AtomicU64::new(0),
            pipe_shortages: AtomicU64::new(0),
        }
    }

    /// Relays `a → b` and `b → a` until both directions are done, and returns the bytes
    /// moved as `a_to_b`, `b_to_a`.
    ///
    /// - Half-close: EOF read from one side shuts down the write half of the other side, and
    ///   the other direction keeps flowing (a client may send its request, shut down its write
    ///   half, and still read the whole reply).
    /// - One idle clock: when no byte moves in either direction for `idle_timeout`, both
    ///   streams are dropped (closed).
    /// - When `close` completes, both streams are dropped.
    /// - An I/O error on either side ends both directions.
    pub fn splice<'a>(
        &'a self,
        a: Side,
        b: Side,
        idle_timeout: Duration,
        close: impl Future<Output = ()> + Send + 'a,
    ) -> impl Future<Output = Spliced> + Send + 'a {
        // Boxed once here: each async layer below would otherwise keep a copy of it for the
        // tunnel's whole life (rustc does not overlap a moved-out argument), which is most of
        // what an idle tunnel's task weighs.
        let close: Pin<Box<dyn Future<Output = ()> + Send + 'a>> = Box::pin(close);
        self.relay(a, b, idle_timeout, close)
    }

    async fn relay(
        &self,
        a: Side,
        b: Side,
        idle_timeout: Duration,
        close: Pin<Box<dyn Future<Output = ()> + Send + '_>>,
    ) -> Spliced {
        let spliced = match (a.0, b.0) {
            #[cfg(target_os = "linux")]
            (
                SideKind::Tcp { stream: a, pending: a_pending },
                SideKind::Tcp { stream: b, pending: b_pending },
            ) => {
                self.zero_copy.fetch_add(1, Ordering::Relaxed);
                zero_copy::relay(self, (a, a_pending), (b, b_pending), idle_timeout, close).await
            }
            (a, b) => {
                self.copied.fetch_add(1, Ordering::Relaxed);
                let (a, a_pending) = a.into_io();
                let (b, b_pending) = b.into_io();
                copy::relay(self, (a, a_pending), (b, b_pending), idle_timeout, close).await
            }
        };
        let (a_to_b, b_to_a) = (spliced.a_to_b, spliced.b_to_a);
        match &spliced.end {
            RelayEnd::Done => tracing::trace!(a_to_b, b_to_a, "splice done"),
            RelayEnd::Idle => tracing::debug!(a_to_b, b_to_a, "splice idle"),
            RelayEnd::Closed => tracing::debug!(a_to_b, b_to_a, "splice closed"),
            RelayEnd::Failed(error) => tracing::debug!(a_to_b, b_to_a, %error, "splice failed"),
        }
        spliced
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            zero_copy: self.zero_copy.load(Ordering::Relaxed),
            copied: self.copied.load(Ordering::Relaxed),
            pipes_created: self.pipes_created.load(Ordering::Relaxed),
            #[cfg(target_os = "linux")]
            pipes_pooled: lock(&self.pipes).len(),
            #[cfg(not(target_os = "linux"))]
            pipes_pooled: 0,
            pipe_shortages: self.pipe_shortages.load(Ordering::Relaxed),
        }
    }

    /// A relay buffer, from the pool when it has one.
    fn take_buffer(&self) -> Box<[u8]> {
        let pooled = lock(&self.buffers).pop();
        pooled.unwrap_or_else(|| vec![0; SPLICE_BUFFER_SIZE].into_boxed_slice())
    }

    /// Gives a relay buffer back; freed when the pool is full.
    fn give_buffer(&self, buffer: Box<[u8]>) {
        let mut buffers = lock(&self.buffers);
        if buffers.len() < RELAY_POOL_SIZE && buffer.len() == SPLICE_BUFFER_SIZE {
            buffers.push(buffer);
        }
    }
}

impl SideKind {
    /// The side as a stream for the copy path, and the bytes to send first.
    fn into_io(self) -> (Box<dyn Io>, Vec<u8>) {
        match self {
            SideKind::Tcp { stream, pending } => (Box::new(stream), pending),
            SideKind::Io(io) => (io, Vec::new()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drives both directions under one idle clock and the close signal. `pumps` polls both
/// directions, sets its flag when a byte moved, and is ready when both are done.
async fn drive(
    idle_timeout: Duration,
    close: impl Future<Output = ()>,
    mut pumps: impl FnMut(&mut Context<'_>, &mut bool) -> Poll<io::Result<()>>,
) -> RelayEnd {
    let mut last_progress = Instant::now();
    let idle = sleep_until(last_progress + idle_timeout);
    tokio::pin!(idle, close);
    poll_fn(|cx| {
        if close.as_mut().poll(cx).is_ready() {
            return Poll::Ready(RelayEnd::Closed);
        }
        let mut progressed = false;
        let pumped = pumps(cx, &mut progressed);
        match pumped {
            Poll::Ready(Ok(())) => return Poll::Ready(RelayEnd::Done),
            Poll::Ready(Err(error)) => return Poll::Ready(RelayEnd::Failed(error)),
            Poll::Pending => {}
        }
        if progressed {
            last_progress = Instant::now();
        }
        poll_idle(cx, idle.as_mut(), last_progress + idle_timeout)
    })
    .await
}

/// The idle check: the timer is re-armed only when it fires early (some progress since it was
/// set), not on every chunk.
fn poll_idle(cx: &mut Context<'_>, mut idle: Pin<&mut Sleep>, deadline: Instant) -> Poll<RelayEnd> {
    loop {
        ready!(idle.as_mut().poll(cx));
        if Instant::now() >= deadline {
            return Poll::Ready(RelayEnd::Idle);
        }
        idle.as_mut().reset(deadline);
    }
}

/// Polls both directions; ready when both are, or at the first error.
fn both(forward: Poll<io::Result<()>>, backward: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
    match (forward, backward) {
        (Poll::Ready(Err(error)), _) | (_, Poll::Ready(Err(error))) => Poll::Ready(Err(error)),
        (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
        _ => Poll::Pending,
    }
}

/// Shuts down `writer`'s write half after its direction read EOF. A peer that is already gone
/// entirely has nobody left to tell.
fn poll_shutdown<W: AsyncWrite + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    writer: &mut W,
) -> Poll<io::Result<()>> {
    match ready!(Pin::new(writer).poll_shutdown(cx)) {
        Err(error) if error.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
        result => Poll::Ready(result),
    }
}
