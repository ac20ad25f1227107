//! The portable relay: user-space copies between any two byte streams (TLS, hyper's upgraded
//! connections, other systems).
//!
//! No direction owns a buffer: each read borrows one from the [`Relay`] and gives it back at
//! once when nothing was read, or as soon as what was read is written. An idle tunnel so holds
//! no relay buffer, and a bulk transfer still gets [`SPLICE_BUFFER_SIZE`](super::SPLICE_BUFFER_SIZE)
//! per read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Io, Relay, RelayEnd, RelayPath, Spliced, both, drive, poll_shutdown};

pub(super) async fn relay(
    relay: &Relay,
    (mut a, a_pending): (Box<dyn Io>, Vec<u8>),
    (mut b, b_pending): (Box<dyn Io>, Vec<u8>),
    idle_timeout: Duration,
    close: impl Future<Output = ()>,
) -> Spliced {
    let mut a_to_b = Pump::new(a_pending);
    let mut b_to_a = Pump::new(b_pending);
    let end: RelayEnd = drive(idle_timeout, close, |cx, progressed| {
        let forward = a_to_b.poll(cx, relay, &mut a, &mut b, progressed);
        let backward = b_to_a.poll(cx, relay, &mut b, &mut a, progressed);
        both(forward, backward)
    })
    .await;
    // Buffers still holding bytes are freed with the pumps; the streams close here.
    Spliced { a_to_b: a_to_b.amount, b_to_a: b_to_a.amount, end, path: RelayPath::Copy }
}

/// Bytes read but not yet written: `buf[start..end]`.
struct Held {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// One direction: read into a borrowed buffer, write it all out, give it back, repeat; on
/// EOF, flush and shut down the writer.
struct Pump {
    held: Option<Held>,
    read_eof: bool,
    shut_down: bool,
    /// Bytes written since the last flush.
    needs_flush: bool,
    amount: u64,
}

impl Pump {
    /// `pending` is sent before anything read.
    fn new(pending: Vec<u8>) -> Pump {
        let end = pending.len();
        let held = (end > 0).then(|| Held { buf: pending.into_boxed_slice(), start: 0, end });
        Pump { held, read_eof: false, shut_down: false, needs_flush: false, amount: 0 }
    }

    /// Ready when this direction is finished: EOF read, everything written, writer shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        relay: &Relay,
        reader: &mut R,
        writer: &mut W,
        progressed: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.shut_down {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(held) = &mut self.held {
                while held.start < held.end {
                    let chunk = &held.buf[held.start..held.end];
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, chunk))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    held.start += n;
                    self.amount += n as u64;
                    self.needs_flush = true;
                    *progressed = true;
                }
                if let Some(held) = self.held.take() {
                    relay.give_buffer(held.buf);
                }
            }
            if self.read_eof {
                if self.needs_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.needs_flush = false;
                }
                ready!(poll_shutdown(cx, writer))?;
                self.shut_down = true;
                return Poll::Ready(Ok(()));
            }
            let mut buf = relay.take_buffer();
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    relay.give_buffer(buf);
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => {
                    relay.give_buffer(buf);
                    // Nothing more to send for now: push out what is buffered in the writer
                    // (a no-op for TCP, not for TLS).
                    if self.needs_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            let n = read.filled().len();
            if n == 0 {
                relay.give_buffer(buf);
                self.read_eof = true;
            } else {
                self.held = Some(Held { buf, start: 0, end: n });
                *progressed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::super::Side;
    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let relay = Relay::new();
        let (mut client, mut server) = duplex(1 << 20);
        let mut pump = Pump::new(Vec::new());
        let mut sink = tokio::io::sink();
        let mut progressed = false;
        client.write_all(&[1u8; 100]).await.unwrap();
        std::future::poll_fn(|cx| {
            let _ = pump.poll(cx, &relay, &mut server, &mut sink, &mut progressed);
            Poll::Ready(())
        })
        .await;
        assert!(pump.held.is_none(), "a pending read gives its buffer back");
        assert_eq!(pump.amount, 100);
        assert!(progressed);
        assert_eq!(relay.buffers.lock().unwrap().len(), 1, "the buffer went back to the pool");
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close_over_in_memory_pipes() {
        let relay = Relay::new();
        let (mut client, proxy_a) = duplex(1024);
        let (proxy_b, mut server) = duplex(1024);
        let spliced =
            relay.splice(Side::io(proxy_a), Side::io(proxy_b), BOUND, std::future::pending());

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
        let (spliced, server_got, client_got) =
            tokio::time::timeout(BOUND, async { tokio::join!(spliced, server_side, client_side) })
                .await
                .unwrap();
        assert_eq!(server_got.unwrap(), request);
        assert_eq!(client_got.unwrap(), reply);
        assert!(matches!(spliced.end, RelayEnd::Done), "{spliced:?}");
        assert_eq!((spliced.a_to_b, spliced.b_to_a), (100_000, 50_000));
        assert_eq!(spliced.path, RelayPath::Copy);
    }
}
