//! Connection racing over already-checked addresses (RFC 8305, "Happy Eyeballs v2").
//!
//! Pure scheduling: what a connection attempt is comes from the caller, so the timing rules are
//! unit-tested with fake attempts (a blackholed address cannot be produced on loopback).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// Orders addresses for racing (RFC 8305 §4): families alternate, starting with the family of
/// the first answer, each family keeping the resolver's order. An IPv4-mapped IPv6 address
/// counts as IPv4.
pub(crate) fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let is_v4 = |addr: &SocketAddr| addr.ip().to_canonical().is_ipv4();
    let Some(first) = addrs.first() else { return Vec::new() };
    let first_v4 = is_v4(first);
    let (preferred, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|addr| is_v4(addr) == first_v4);
    let mut out = Vec::with_capacity(addrs.len());
    let (mut preferred, mut other) = (preferred.into_iter(), other.into_iter());
    loop {
        match (preferred.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Races `connect` over `addrs` in order (RFC 8305 §5): the next attempt starts
/// `attempt_delay` after the previous one started, or at once when an attempt fails. The first
/// success wins; the attempts still in flight are dropped, which closes their sockets. When all
/// fail, the last error is returned. Unbounded in time: the caller adds `connect_timeout`.
pub(crate) async fn race<T, F, Fut>(
    addrs: &[SocketAddr],
    attempt_delay: Duration,
    mut connect: F,
) -> io::Result<(T, SocketAddr)>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut queue = addrs.iter().copied();
    let mut attempts: Vec<(SocketAddr, Pin<Box<Fut>>)> = Vec::with_capacity(addrs.len());
    let mut last_error = None;
    let next_attempt = sleep(attempt_delay);
    tokio::pin!(next_attempt);

    let mut start =
        |addr: SocketAddr, attempts: &mut Vec<_>, timer: Pin<&mut tokio::time::Sleep>| {
            attempts.push((addr, Box::pin(connect(addr))));
            timer.reset(Instant::now() + attempt_delay);
        };

    loop {
        if attempts.is_empty() {
            match queue.next() {
                Some(addr) => start(addr, &mut attempts, next_attempt.as_mut()),
                None => {
                    return Err(last_error.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")
                    }));
                }
            }
        }
        let more_queued = queue.len() > 0;
        tokio::select! {
            biased;
            (addr, result) = poll_fn(|cx| poll_any(&mut attempts, cx)) => match result {
                Ok(stream) => return Ok((stream, addr)),
                Err(error) => {
                    tracing::debug!(%addr, %error, "connect attempt failed");
                    last_error = Some(error);
                    if let Some(addr) = queue.next() {
                        start(addr, &mut attempts, next_attempt.as_mut());
                    }
                }
            },
            () = next_attempt.as_mut(), if more_queued => {
                if let Some(addr) = queue.next() {
                    start(addr, &mut attempts, next_attempt.as_mut());
                }
            }
        }
    }
}

/// Polls every attempt in flight; the first to finish is removed and returned with its address.
fn poll_any<T, Fut>(
    attempts: &mut Vec<(SocketAddr, Pin<Box<Fut>>)>,
    cx: &mut Context<'_>,
) -> Poll<(SocketAddr, io::Result<T>)>
where
    Fut: Future<Output = io::Result<T>>,
{
    for index in 0..attempts.len() {
        if let Poll::Ready(result) = attempts[index].1.as_mut().poll(cx) {
            let (addr, _) = attempts.swap_remove(index);
            return Poll::Ready((addr, result));
        }
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[track_caller]
    fn check_interleave(input: &[&str], expected: &[&str]) {
        assert_eq!(interleave(&addrs(input)), addrs(expected));
    }

    #[test]
    fn interleave_alternates_families_from_the_first_answer() {
        check_interleave(&[], &[]);
        check_interleave(&["192.0.2.1:80"], &["192.0.2.1:80"]);
        check_interleave(
            &["[2001:db8::1]:80", "[2001:db8::2]:80", "192.0.2.1:80", "192.0.2.2:80"],
            &["[2001:db8::1]:80", "192.0.2.1:80", "[2001:db8::2]:80", "192.0.2.2:80"],
        );
        check_interleave(
            &["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80", "[2001:db8::1]:80"],
            &["192.0.2.1:80", "[2001:db8::1]:80", "192.0.2.2:80", "192.0.2.3:80"],
        );
        check_interleave(
            &["[::ffff:192.0.2.1]:80", "[2001:db8::1]:80", "192.0.2.2:80"],
            &["[::ffff:192.0.2.1]:80", "[2001:db8::1]:80", "192.0.2.2:80"],
        );
    }

    /// A fake attempt: never finishes (blackholed), fails, or succeeds with its address.
    #[derive(Clone, Copy)]
    enum Fake {
        Hang,
        Fail,
        Succeed,
    }

    async fn run(
        plan: &[(&str, Fake)],
        attempt_delay: Duration,
    ) -> (io::Result<SocketAddr>, Vec<SocketAddr>) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let list: Vec<SocketAddr> = plan.iter().map(|(a, _)| a.parse().unwrap()).collect();
        let log = Arc::clone(&started);
        let result = race(&list, attempt_delay, |addr| {
            log.lock().unwrap().push(addr);
            let fake =
                plan.iter().find(|(a, _)| a.parse::<SocketAddr>().unwrap() == addr).unwrap().1;
            async move {
                match fake {
                    Fake::Hang => std::future::pending().await,
                    Fake::Fail => Err(io::Error::from(io::ErrorKind::ConnectionRefused)),
                    Fake::Succeed => Ok(addr),
                }
            }
        });
        let result = tokio::time::timeout(Duration::from_secs(5), result)
            .await
            .expect("race must finish")
            .map(|(stream, _)| stream);
        let started = started.lock().unwrap().clone();
        (result, started)
    }

    #[tokio::test]
    async fn a_blackholed_first_address_is_overtaken_after_the_delay() {
        let before = std::time::Instant::now();
        let (result, started) = run(
            &[("192.0.2.1:80", Fake::Hang), ("192.0.2.2:80", Fake::Succeed)],
            Duration::from_millis(30),
        )
        .await;
        assert_eq!(result.unwrap(), "192.0.2.2:80".parse().unwrap());
        assert_eq!(started.len(), 2);
        assert!(before.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_failed_attempt_starts_the_next_at_once() {
        // With an hour-long delay, only "start at once on failure" can finish in time.
        let (result, started) = run(
            &[
                ("192.0.2.1:80", Fake::Fail),
                ("192.0.2.2:80", Fake::Fail),
                ("192.0.2.3:80", Fake::Succeed),
            ],
            Duration::from_secs(3600),
        )
        .await;
        assert_eq!(result.unwrap(), "192.0.2.3:80".parse().unwrap());
        assert_eq!(started.len(), 3);
    }

    #[tokio::test]
    async fn the_first_success_wins_and_later_addresses_are_not_tried() {
        let (result, started) = run(
            &[("192.0.2.1:80", Fake::Succeed), ("192.0.2.2:80", Fake::Succeed)],
            Duration::from_secs(3600),
        )
        .await;
        assert_eq!(result.unwrap(), "192.0.2.1:80".parse().unwrap());
        assert_eq!(started, addrs(&["192.0.2.1:80"]));
    }

    #[tokio::test]
    async fn all_failing_returns_the_last_error() {
        let (result, started) = run(
            &[("192.0.2.1:80", Fake::Fail), ("192.0.2.2:80", Fake::Fail)],
            Duration::from_secs(3600),
        )
        .await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(started.len(), 2);
    }

    #[tokio::test]
    async fn a_failure_does_not_end_the_race_while_another_attempt_is_in_flight() {
        let list = addrs(&["192.0.2.1:80", "192.0.2.2:80"]);
        let first = list[0];
        let race = race(&list, Duration::from_millis(10), |addr| async move {
            match addr == first {
                true => std::future::pending().await,
                false => Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionRefused)),
            }
        });
        // Still pending long after the second attempt failed: the caller's connect_timeout
        // is what ends it.
        assert!(tokio::time::timeout(Duration::from_millis(200), race).await.is_err());
    }

    #[tokio::test]
    async fn no_address_is_an_error() {
        let (result, started) = run(&[], Duration::from_millis(10)).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(started.is_empty());
    }
}
