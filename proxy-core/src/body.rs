//! The response body type of the proxy stack.
//!
//! Upstream responses stream through untouched ([`ProxyBody::Incoming`]);
//! responses the proxy makes itself (Status objects, health) are small
//! in-memory bodies. The enum avoids boxing on the hot path.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// A response body: either streamed from the upstream or made by the proxy.
#[derive(Debug)]
pub enum ProxyBody {
    /// A body made in memory (a Status object, a health answer), sent once.
    Full(Option<Bytes>),
    /// A body streamed from the upstream, frame by frame.
    Incoming(hyper::body::Incoming),
    /// A streamed body with a guard that is dropped when the stream ends or
    /// the body is dropped (an in-flight gauge of a watch, for example).
    Guarded(hyper::body::Incoming, Option<DropGuard>),
}

/// Something kept alive while a body streams, dropped when it ends.
pub struct DropGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl DropGuard {
    /// Keeps `value` until the body ends; its `Drop` does the work.
    pub fn new(value: impl Send + Sync + 'static) -> Self {
        DropGuard(Box::new(value))
    }
}

impl std::fmt::Debug for DropGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropGuard")
    }
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody::Full(None)
        } else {
            ProxyBody::Full(Some(bytes))
        }
    }
}

impl From<hyper::body::Incoming> for ProxyBody {
    fn from(body: hyper::body::Incoming) -> Self {
        ProxyBody::Incoming(body)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            ProxyBody::Guarded(body, guard) => {
                let frame = Pin::new(body).poll_frame(cx);
                if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guard.take();
                }
                frame.map(|frame| frame.map(|f| f.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Incoming(body) | ProxyBody::Guarded(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Incoming(body) | ProxyBody::Guarded(body, _) => body.size_hint(),
        }
    }
}
