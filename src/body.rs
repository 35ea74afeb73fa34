//! The body type of every response keyward produces, its two constructors, and
//! [`StallLimit`], the bound on an upstream body that stops sending. A leaf.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every response keyward produces uses.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A streamed upstream body that must keep moving: when keyward asks for the next
/// part and the upstream sends nothing for `limit`, the body ends as an error, so
/// a silent upstream cannot hold a request (and its tunnel, which is never idle
/// while a request is in flight) forever. Only waiting on the upstream counts: a
/// client that reads slowly stops keyward asking, and that time is not silence.
pub struct StallLimit<B> {
    inner: B,
    limit: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Armed: keyward asked, the upstream had nothing yet.
    waiting: bool,
}

impl<B> StallLimit<B> {
    pub fn new(inner: B, limit: Duration) -> StallLimit<B> {
        StallLimit {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
        }
    }
}

/// Why a [`StallLimit`] body ended.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing mid-body for longer than proxy.response_timeout")]
pub struct BodyStalled;

impl<B> HttpBody for StallLimit<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !std::mem::replace(&mut this.waiting, true) {
            let deadline = tokio::time::Instant::now() + this.limit;
            this.sleep.as_mut().reset(deadline);
        }
        match std::future::Future::poll(this.sleep.as_mut(), cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled)))),
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
