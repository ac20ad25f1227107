//! The clocks of a client connection: the idle clock (SPEC §2.2 `idle_timeout`, one clock for
//! both directions, moved by every byte read or written) and, on HTTP/1.1, the head clock
//! (`header_read_timeout`). Tunnels have their own clock in `splice`.
//!
//! The connection also counts its exchanges, from the request head to the end of the response
//! body. While one still waits for its response head it has a bound of its own (the decision,
//! DNS, connect, `response_timeout`), so the connection is not idle; once its response streams,
//! an exchange that moves no byte for `idle_timeout` is stalled and the connection is cut.
//!
//! The head clock starts at the first byte of a request head (for the first request, when the
//! connection opens) and stops when the head is complete: a client idle between requests is
//! governed by `idle_timeout` alone. A head that started and is not complete in time gets
//! `408 Request Timeout` and the connection is closed; a connection that never sent a byte is
//! closed without an answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// When a connection last moved a byte, and its exchanges. Clones share the clock.
#[derive(Clone)]
pub(crate) struct IdleClock {
    inner: Arc<State>,
}

struct State {
    start: Instant,
    /// Milliseconds from `start` to the last progress.
    last: AtomicU64,
    /// Exchanges whose response head is not there yet.
    awaiting: AtomicUsize,
    /// Exchanges whose response body has not ended.
    exchanges: AtomicUsize,
    /// The connection became a tunnel or an upgraded stream: no more request heads.
    upgraded: AtomicBool,
}

impl IdleClock {
    pub(crate) fn new() -> IdleClock {
        let state = State {
            start: Instant::now(),
            last: AtomicU64::new(0),
            awaiting: AtomicUsize::new(0),
            exchanges: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
        };
        IdleClock { inner: Arc::new(state) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `timeout` and no exchange waits for its response
    /// head. The timer is re-armed only when it fires, never per byte.
    pub(crate) async fn idle(&self, timeout: Duration) {
        loop {
            let last =
                self.inner.start + Duration::from_millis(self.inner.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                if self.inner.awaiting.load(Ordering::Acquire) == 0 {
                    return;
                }
                // Released exchanges touch the clock: it is measured from their answer.
                tokio::time::sleep(timeout).await;
                continue;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Whether an exchange's response is still streaming.
    pub(crate) fn busy(&self) -> bool {
        self.inner.exchanges.load(Ordering::Acquire) > 0
    }

    /// A request head arrived: counted until [`Exchange::answered`] and the end of its
    /// response body.
    pub(crate) fn exchange(&self) -> Exchange {
        self.inner.exchanges.fetch_add(1, Ordering::AcqRel);
        self.inner.awaiting.fetch_add(1, Ordering::AcqRel);
        Exchange { clock: self.clone(), awaiting: true }
    }

    /// The connection was handed over to a tunnel or an upgrade.
    pub(crate) fn upgraded(&self) {
        self.inner.upgraded.store(true, Ordering::Release);
    }

    /// Whether a request is being served or the connection is no longer HTTP: no head is
    /// being read.
    fn in_exchange(&self) -> bool {
        self.busy() || self.inner.upgraded.load(Ordering::Acquire)
    }
}

/// A request body the client may still be sending: counted as an exchange of its connection
/// until it ends or is dropped, so that its bytes, read after the response has ended (an
/// origin that answered before reading the upload), are not timed as the next request head.
/// It travels in the request's extensions to the body that reads it (`exchange::Upload`).
#[derive(Clone)]
pub(crate) struct Reading(#[expect(dead_code, reason = "held for its drop")] Arc<Counted>);

struct Counted(IdleClock);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.inner.exchanges.fetch_sub(1, Ordering::AcqRel);
    }
}

impl IdleClock {
    /// Counts a request body until the [`Reading`] (and every clone) is dropped.
    pub(crate) fn reading(&self) -> Reading {
        self.inner.exchanges.fetch_add(1, Ordering::AcqRel);
        Reading(Arc::new(Counted(self.clone())))
    }
}

/// One exchange of a connection, counted until dropped (with the response body that carries
/// it).
pub(crate) struct Exchange {
    clock: IdleClock,
    awaiting: bool,
}

impl Exchange {
    /// The response head is there: from now on the idle clock applies to the exchange.
    pub(crate) fn answered(&mut self) {
        if std::mem::replace(&mut self.awaiting, false) {
            self.clock.touch();
            self.clock.inner.awaiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.answered();
        self.clock.touch();
        self.clock.inner.exchanges.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that moves its [`IdleClock`] on every read and write that made progress, and on
/// HTTP/1.1 times request heads.
pub(crate) struct Clocked<S> {
    inner: S,
    clock: IdleClock,
    head: Option<HeadClock>,
}

impl<S> Clocked<S> {
    pub(crate) fn new(inner: S, clock: IdleClock) -> Clocked<S> {
        Clocked { inner, clock, head: None }
    }

    /// [`Clocked::new`], with the head clock of an HTTP/1.1 connection, started now for the
    /// first request.
    pub(crate) fn http1(inner: S, clock: IdleClock, header_read_timeout: Duration) -> Clocked<S> {
        let head = HeadClock {
            timeout: header_read_timeout,
            sleep: Box::pin(tokio::time::sleep(header_read_timeout)),
            armed: true,
            started: false,
            answer: None,
            write_blocked: false,
        };
        Clocked { inner, clock, head: Some(head) }
    }

    /// The stream, for a tunnel relay, which has its own idle clock.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

/// The head clock of an HTTP/1.1 connection (one timer, reset once per request head).
struct HeadClock {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// A head is awaited or being read.
    armed: bool,
    /// A byte of that head has arrived.
    started: bool,
    /// The `408` being written, and how much of it is out.
    answer: Option<(Vec<u8>, usize)>,
    /// hyper's last write did not complete: a `408` now could interleave with it.
    write_blocked: bool,
}

impl HeadClock {
    fn arm(&mut self) {
        self.armed = true;
        self.sleep.as_mut().reset(Instant::now() + self.timeout);
    }

    /// Writes the `408`, then fails the read so hyper closes the connection.
    fn poll_answer<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((bytes, sent)) = &mut self.answer {
            while *sent < bytes.len() {
                match Pin::new(&mut *inner).poll_write(cx, &bytes[*sent..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(n)) => *sent += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if *sent == bytes.len() && Pin::new(&mut *inner).poll_flush(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head timed out")))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Clocked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let in_exchange = this.head.is_some() && this.clock.in_exchange();
        if let Some(head) = &mut this.head {
            if head.answer.is_some() {
                return head.poll_answer(&mut this.inner, cx);
            }
            if in_exchange {
                head.armed = false;
            }
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.clock.touch();
                if let Some(head) = &mut this.head
                    && !in_exchange
                {
                    if !head.armed {
                        head.arm();
                    }
                    head.started = true;
                }
            }
            Poll::Pending => {
                if let Some(head) = &mut this.head
                    && head.armed
                    && head.sleep.as_mut().poll(cx).is_ready()
                {
                    head.armed = false;
                    if !head.started || head.write_blocked {
                        tracing::debug!("no request head in time, closing");
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                    tracing::debug!("request head incomplete in time, answering 408");
                    head.answer = Some((crate::respond::request_timeout(), 0));
                    return head.poll_answer(&mut this.inner, cx);
                }
            }
            Poll::Ready(_) => {}
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> Clocked<S> {
    /// Moves the clock on progress and remembers whether hyper's write is blocked.
    fn wrote<T>(&mut self, poll: &Poll<io::Result<T>>, moved: bool) {
        if moved {
            self.clock.touch();
        }
        if let Some(head) = &mut self.head {
            head.write_blocked = poll.is_pending();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Clocked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.wrote(&poll, moved);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        self.wrote(&poll, moved);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(&poll, false);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that carries its [`Exchange`]: the exchange ends when hyper is done with
/// the body (written, or the connection gone).
pub(crate) struct Answer {
    body: crate::Body,
    _exchange: Exchange,
}

impl Answer {
    pub(crate) fn new(body: crate::Body, exchange: Exchange) -> Answer {
        Answer { body, _exchange: exchange }
    }
}

impl hyper::body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
