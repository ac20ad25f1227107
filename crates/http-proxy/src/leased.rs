//! Bodies that stream under a [`Lease`]: a forwarded request's body on its way to the origin,
//! and the origin's response on its way back. Before every frame is passed on the lease is
//! checked, so once a reload or a mode switch that refuses the exchange has returned, not one
//! more byte moves; a revoked lease also wakes a body that is waiting for its next frame, so
//! the exchange ends at once rather than at the next chunk.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use proxyd_net::Lease;

use crate::BoxError;

/// The error a body ends with when its lease ended.
#[derive(Debug, thiserror::Error)]
#[error("the exchange was ended by a policy or mode change, or by shutdown")]
pub(crate) struct Ended;

pub(crate) struct Leased<B> {
    inner: B,
    lease: Lease,
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<B> Leased<B> {
    pub(crate) fn new(inner: B, lease: Lease) -> Leased<B> {
        let ended = Box::pin(lease.ended());
        Leased { inner, lease, ended }
    }
}

impl<B> HttpBody for Leased<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Synchronous check first: a revocation is visible here the moment it is made.
        if self.lease.is_revoked() || self.ended.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(Ended))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Checked again: the frame may have arrived after a revocation.
                if self.lease.is_revoked() {
                    return Poll::Ready(Some(Err(Box::new(Ended))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
