//! The clocks of one forwarded exchange (issue 16): the wait for the response head is bounded
//! by `response_timeout` once the request has been sent, and the two bodies share one idle
//! clock (`idle_timeout`), like the two directions of a tunnel. While the request body still
//! streams, the wait is bounded by its progress: an origin that stopped reading it, or a
//! client that stopped sending it, ends the exchange after `idle_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::BoxError;
use crate::idle::Reading;

/// Not yet: the request body is still streaming.
const NOT_SENT: u64 = u64::MAX;

/// When the exchange last moved a frame either way, and when its request was sent whole.
/// Shared by the two bodies and the wait for the response head.
pub(crate) struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last frame either way.
    last: AtomicU64,
    /// Milliseconds from `start` to the end of the request body, or [`NOT_SENT`].
    sent: AtomicU64,
    /// The request body's last poll waited for the client (not for the origin to read).
    waiting_on_client: AtomicBool,
}

impl Progress {
    pub(crate) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
            sent: AtomicU64::new(NOT_SENT),
            waiting_on_client: AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NOT_SENT - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn sent_whole(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        let _ = self.sent.compare_exchange(NOT_SENT, now, Ordering::AcqRel, Ordering::Acquire);
    }

    fn last(&self) -> Instant {
        self.at(self.last.load(Ordering::Relaxed))
    }

    /// Resolves when the response head is overdue: `response_timeout` after the request was
    /// sent whole, or, while its body still streams, `idle` after the last frame. Wakes at most
    /// once per the shorter of the two while the body moves.
    pub(crate) async fn overdue(&self, idle: Duration, response_timeout: Duration) -> Overdue {
        loop {
            let sent = self.sent.load(Ordering::Acquire);
            if sent != NOT_SENT {
                tokio::time::sleep_until(self.at(sent) + response_timeout).await;
                return Overdue::Response;
            }
            let last = self.last();
            if Instant::now() >= last + idle {
                return match self.waiting_on_client.load(Ordering::Relaxed) {
                    true => Overdue::Client,
                    false => Overdue::Upload,
                };
            }
            tokio::time::sleep_until(last + idle.min(response_timeout)).await;
        }
    }
}

/// Why the wait for a response head ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overdue {
    /// The request was sent and no head came within `response_timeout`.
    Response,
    /// The origin stopped reading the request body.
    Upload,
    /// The client stopped sending the request body.
    Client,
}

/// A forwarded request's body: the client's, or none (a bodiless request sent again on a
/// fresh connection). Moves the exchange's [`Progress`] on every frame.
pub(crate) struct Upload {
    body: Option<Incoming>,
    progress: Arc<Progress>,
    /// Counts the body on its client connection until it ends.
    reading: Option<Reading>,
}

impl Upload {
    pub(crate) fn new(
        body: Option<Incoming>,
        reading: Option<Reading>,
        progress: Arc<Progress>,
    ) -> Upload {
        let mut upload = Upload { body, progress, reading };
        if upload.is_end_stream() {
            upload.sent_whole();
        }
        upload
    }

    fn sent_whole(&mut self) {
        self.progress.sent_whole();
        self.reading = None;
    }
}

impl HttpBody for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(body) = &mut this.body else { return Poll::Ready(None) };
        let poll = Pin::new(&mut *body).poll_frame(cx);
        this.progress.waiting_on_client.store(poll.is_pending(), Ordering::Relaxed);
        match &poll {
            Poll::Ready(Some(Ok(_))) if body.is_end_stream() => this.sent_whole(),
            Poll::Ready(Some(Ok(_))) => this.progress.touch(),
            Poll::Ready(None) => this.sent_whole(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// The error a response body ends with when it stalled.
#[derive(Debug, thiserror::Error)]
#[error("the response body moved nothing for the idle timeout")]
pub(crate) struct Stalled;

/// The origin's response body on its way back: moves the exchange's [`Progress`], and fails
/// when the exchange moved nothing either way for `idle` while it waits for the origin. The
/// timer exists only once the origin has kept it waiting.
pub(crate) struct Download {
    body: Incoming,
    progress: Arc<Progress>,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Download {
    pub(crate) fn new(body: Incoming, progress: Arc<Progress>, idle: Duration) -> Download {
        Download { body, progress, idle, timer: None }
    }

    /// Whether the exchange has been idle for `idle`. The timer is re-armed only when it
    /// fires, never per frame.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let (progress, idle) = (&self.progress, self.idle);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(progress.last() + idle)));
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = progress.last() + idle;
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

impl HttpBody for Download {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.progress.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.poll_stalled(cx) {
                true => {
                    tracing::debug!("response body stalled, cutting the exchange");
                    Poll::Ready(Some(Err(Box::new(Stalled))))
                }
                false => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
