//! Bidirectional copy for tunnels (SPEC §7.3): half-close handled, one idle clock across both
//! directions, and an external `close` signal for drain and limited-mode switches.
//!
//! Both directions are polled from the caller's task, so a tunnel costs no task spawns. Each
//! direction starts with a small buffer and switches to a large one the first time a read fills
//! it: an idle or chatty tunnel holds 2 × 4 KiB, a bulk transfer gets 64 KiB per syscall, and
//! no chunk allocates.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

/// Buffer size per direction once a transfer is under way. Large enough that a loopback or LAN
/// transfer is not bound by syscall count.
pub const SPLICE_BUFFER_SIZE: usize = 64 * 1024;

/// Buffer size per direction until a read fills it: what an idle tunnel costs.
pub const SPLICE_INITIAL_BUFFER_SIZE: usize = 4 * 1024;

/// Copies `a → b` and `b → a` until both directions are done, and returns the bytes moved as
/// `(a_to_b, b_to_a)`.
///
/// - Half-close: EOF read from one side shuts down the write half of the other side, and the
///   other direction keeps flowing (a client may send its request, shut down its write half,
///   and still read the whole reply).
/// - One idle clock: when no byte moves in either direction for `idle_timeout`, both streams
///   are dropped (closed) and the counts so far are returned.
/// - When `close` completes, both streams are dropped and the counts so far are returned.
///
/// An I/O error on either side ends both directions and is returned (log it; never show its
/// text to a client).
pub async fn splice<A, B>(
    mut a: A,
    mut b: B,
    idle_timeout: Duration,
    close: impl Future<Output = ()>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Pump::new();
    let mut b_to_a = Pump::new();
    let mut last_progress = Instant::now();
    let idle = sleep_until(last_progress + idle_timeout);
    tokio::pin!(idle, close);

    let end = poll_fn(|cx| {
        if close.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(End::Closed));
        }
        let forward = a_to_b.poll(cx, Pin::new(&mut a), Pin::new(&mut b))?;
        let backward = b_to_a.poll(cx, Pin::new(&mut b), Pin::new(&mut a))?;
        if forward.is_ready() && backward.is_ready() {
            return Poll::Ready(Ok(End::Done));
        }
        if std::mem::take(&mut a_to_b.progressed) | std::mem::take(&mut b_to_a.progressed) {
            last_progress = Instant::now();
        }
        poll_idle(cx, idle.as_mut(), last_progress + idle_timeout)
    })
    .await;

    let counts = (a_to_b.amount, b_to_a.amount);
    match end {
        Ok(End::Done) => tracing::trace!(a_to_b = counts.0, b_to_a = counts.1, "splice done"),
        Ok(End::Idle) => tracing::debug!(a_to_b = counts.0, b_to_a = counts.1, "splice idle"),
        Ok(End::Closed) => tracing::debug!(a_to_b = counts.0, b_to_a = counts.1, "splice closed"),
        Err(error) => {
            tracing::debug!(a_to_b = counts.0, b_to_a = counts.1, %error, "splice failed");
            return Err(error);
        }
    }
    Ok(counts)
}

/// Why a splice ended without an error.
enum End {
    Done,
    Idle,
    Closed,
}

/// The idle check: the timer is re-armed only when it fires early (some progress since it was
/// set), not on every chunk.
fn poll_idle(
    cx: &mut Context<'_>,
    mut idle: Pin<&mut Sleep>,
    deadline: Instant,
) -> Poll<io::Result<End>> {
    loop {
        ready!(idle.as_mut().poll(cx));
        if Instant::now() >= deadline {
            return Poll::Ready(Ok(End::Idle));
        }
        idle.as_mut().reset(deadline);
    }
}

/// One direction: read into the buffer, write it all out, repeat; on EOF, flush and shut down
/// the writer.
struct Pump {
    buf: Box<[u8]>,
    /// The last read filled `buf`: switch to the large buffer once it is drained.
    grow: bool,
    /// `buf[start..end]` is read but not yet written.
    start: usize,
    end: usize,
    read_eof: bool,
    shut_down: bool,
    /// Bytes written since the last flush.
    needs_flush: bool,
    /// Whether any byte moved since the caller last looked (the idle clock).
    progressed: bool,
    amount: u64,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            buf: vec![0; SPLICE_INITIAL_BUFFER_SIZE].into_boxed_slice(),
            grow: false,
            start: 0,
            end: 0,
            read_eof: false,
            shut_down: false,
            needs_flush: false,
            progressed: false,
            amount: 0,
        }
    }

    /// Ready when this direction is finished: EOF read, everything written, writer shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.shut_down {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.read_eof {
                if self.grow {
                    self.buf = vec![0; SPLICE_BUFFER_SIZE].into_boxed_slice();
                    self.grow = false;
                }
                let mut buf = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut buf) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        // Nothing more to send for now: push out what is buffered in the
                        // writer (a no-op for TCP, not for TLS).
                        if self.needs_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.needs_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = buf.filled().len();
                if n == 0 {
                    self.read_eof = true;
                } else {
                    self.start = 0;
                    self.end = n;
                    self.progressed = true;
                    self.grow = n == self.buf.len() && self.buf.len() < SPLICE_BUFFER_SIZE;
                }
            }
            while self.start < self.end {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.amount += n as u64;
                self.needs_flush = true;
                self.progressed = true;
            }
            if self.read_eof {
                if self.needs_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.needs_flush = false;
                }
                match ready!(writer.as_mut().poll_shutdown(cx)) {
                    // The peer is already gone entirely: there is nobody left to tell.
                    Err(error) if error.kind() == io::ErrorKind::NotConnected => {}
                    result => result?,
                }
                self.shut_down = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// Polls `pump` once, reading from `reader` into a sink.
    async fn pump_once(pump: &mut Pump, reader: &mut tokio::io::DuplexStream) {
        let mut sink = tokio::io::sink();
        poll_fn(|cx| {
            let _ = pump.poll(cx, Pin::new(&mut *reader), Pin::new(&mut sink));
            Poll::Ready(())
        })
        .await;
    }

    #[tokio::test]
    async fn buffers_start_small_and_grow_only_when_a_read_fills_them() {
        let (mut client, mut server) = duplex(1 << 20);
        let mut pump = Pump::new();
        client.write_all(&[1u8; 100]).await.unwrap();
        pump_once(&mut pump, &mut server).await;
        assert_eq!(pump.buf.len(), SPLICE_INITIAL_BUFFER_SIZE, "a small exchange stays small");
        client.write_all(&vec![2u8; 3 * SPLICE_INITIAL_BUFFER_SIZE]).await.unwrap();
        pump_once(&mut pump, &mut server).await;
        assert_eq!(pump.buf.len(), SPLICE_BUFFER_SIZE, "a full read switches to the large buffer");
        assert_eq!(pump.amount, 100 + 3 * SPLICE_INITIAL_BUFFER_SIZE as u64);
    }

    const BOUND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn copies_both_ways_with_half_close_over_in_memory_pipes() {
        let (mut client, proxy_a) = duplex(1024);
        let (proxy_b, mut server) = duplex(1024);
        let spliced = tokio::spawn(splice(proxy_a, proxy_b, BOUND, std::future::pending()));

        let request = vec![7u8; 100_000];
        let reply = vec![9u8; 50_000];
        let server_side = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await?;
            server.write_all(&reply).await?;
            server.shutdown().await?;
            io::Result::Ok(got)
        };
        let client_side = async {
            client.write_all(&request).await?;
            client.shutdown().await?;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await?;
            io::Result::Ok(got)
        };
        let (server_got, client_got) =
            tokio::time::timeout(BOUND, async { tokio::try_join!(server_side, client_side) })
                .await
                .unwrap()
                .unwrap();
        assert_eq!(server_got, request);
        assert_eq!(client_got, reply);
        let counts = tokio::time::timeout(BOUND, spliced).await.unwrap().unwrap().unwrap();
        assert_eq!(counts, (100_000, 50_000));
    }
}
