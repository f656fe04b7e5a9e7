//! The response body type of the proxy stack.
//!
//! Upstream responses stream through untouched ([`ProxyBody::Incoming`]);
//! responses the proxy makes itself (Status objects, health) are small
//! in-memory bodies. The enum avoids boxing on the hot path. A body can
//! carry a [`Hold`]: something released when the body ends or is dropped (an
//! upstream HTTP/2 stream slot, a long-running request permit).

use std::pin::Pin;
use std::sync::Arc;
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
    /// Another body and what it holds until it ends or is dropped.
    Held(Box<HeldBody>),
}

/// Something kept alive until a response body (or an upgraded tunnel) ends:
/// cloning shares it, and it is released when the last clone is dropped.
#[derive(Clone)]
pub struct Hold {
    _held: Arc<dyn Send + Sync>,
}

impl Hold {
    /// Holds `value` until the last clone of this `Hold` is dropped.
    pub fn new(value: impl Send + Sync + 'static) -> Self {
        Hold {
            _held: Arc::new(value),
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// A body with a [`Hold`] dropped at its end (last frame, error or drop).
#[derive(Debug)]
pub struct HeldBody {
    body: ProxyBody,
    hold: Option<Hold>,
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

    /// This body, keeping `hold` until it ends or is dropped.
    pub fn with_hold(self, hold: Hold) -> Self {
        if self.is_end_stream() {
            return self;
        }
        ProxyBody::Held(Box::new(HeldBody {
            body: self,
            hold: Some(hold),
        }))
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
            ProxyBody::Held(held) => {
                let frame = Pin::new(&mut held.body).poll_frame(cx);
                if matches!(&frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    held.hold = None;
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Incoming(body) => body.is_end_stream(),
            ProxyBody::Held(held) => held.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Incoming(body) => body.size_hint(),
            ProxyBody::Held(held) => held.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn hold_is_released_when_the_body_ends() {
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut body = ProxyBody::full("data").with_hold(Hold::new(Flag(released.clone())));
        assert!(body.frame().await.is_some());
        assert!(!released.load(std::sync::atomic::Ordering::SeqCst));
        assert!(body.frame().await.is_none());
        assert!(released.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn hold_is_released_when_the_body_is_dropped() {
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = ProxyBody::full("data").with_hold(Hold::new(Flag(released.clone())));
        drop(body);
        assert!(released.load(std::sync::atomic::Ordering::SeqCst));
    }
}
