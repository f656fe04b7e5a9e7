//! The response body type of the proxy stack.
//!
//! Upstream responses stream through untouched (a [`ProxyBody`] made from
//! hyper's `Incoming`);
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

/// How much of an unread request body is drained after it was answered.
pub const DRAIN_LIMIT_BYTES: usize = 1 << 20;
/// How long draining may take.
pub const DRAIN_LIMIT_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads what is left of a request body in the background, up to
/// [`DRAIN_LIMIT_BYTES`] and [`DRAIN_LIMIT_TIME`], then drops it.
///
/// A request answered before its body was read (a refusal, an upstream that
/// answers early) must not drop the body at once: the caller's HTTP/2 stream
/// would be reset while the answer is still on its way, and an HTTP/1.1
/// connection could not be kept. Does nothing outside a Tokio runtime.
pub fn drain_unread<B>(mut body: B)
where
    B: Body + Send + Unpin + 'static,
{
    if body.is_end_stream() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        use http_body_util::BodyExt;
        let drain = async {
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read += bytes::Buf::remaining(data);
                    if read > DRAIN_LIMIT_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_LIMIT_TIME, drain).await;
    });
}

/// A response body: either streamed from the upstream or made by the proxy.
/// What it is made of is its own affair: build one with [`ProxyBody::full`],
/// [`ProxyBody::empty`], [`ProxyBody::new`] (any body, boxed) or
/// `From<hyper::body::Incoming>`, and read it as any [`http_body::Body`].
/// It is `Send` but not `Sync` (a boxed body need not be): box it with
/// `BodyExt::boxed_unsync`, not `boxed`.
#[derive(Debug)]
pub struct ProxyBody(Kind);

#[derive(Debug)]
enum Kind {
    /// A body made in memory (a Status object, a health answer), sent once.
    Full(Option<Bytes>),
    /// A body streamed from the upstream, frame by frame.
    Incoming(hyper::body::Incoming),
    /// A body streamed from the upstream whose first frame was read already
    /// (see [`prefetch_fixed_length`]).
    Prefetched(
        Option<Result<Frame<Bytes>, BoxError>>,
        hyper::body::Incoming,
    ),
    /// A body streamed from an upstream HTTP/2 stream.
    Http2(Http2Body),
    /// Another body and what it holds until it ends or is dropped.
    Held(Box<HeldBody>),
    /// Any other body (an embedder's handler's), boxed.
    Boxed(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
}

/// Longest wait for the first frame of a fixed-length upstream answer.
pub const PREFETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the first frame of a fixed-length upstream answer (one with a
/// `Content-Length`) before the answer is handed on, waiting
/// [`PREFETCH_WAIT`] at most.
///
/// The caller then gets the headers and the start of the body in one flush.
/// Sent apart, an HTTP/2 caller still uploading a body that the upstream
/// refused (kube answers 401/403 before reading it) may stop its upload with
/// the headers alone; its cut-short upload breaks the stream (a
/// `Content-Length` mismatch is a protocol error) and the answer's body is
/// lost. Streaming answers (watches, logs) carry no `Content-Length` and
/// pass at once.
pub async fn prefetch_fixed_length(
    response: http::Response<hyper::body::Incoming>,
) -> http::Response<ProxyBody> {
    let (parts, mut body) = response.into_parts();
    let body = match first_frame_if_fixed(&parts.headers, &mut body).await {
        Some(first) => ProxyBody(Kind::Prefetched(Some(first.map_err(BoxError::from)), body)),
        None => ProxyBody(Kind::Incoming(body)),
    };
    http::Response::from_parts(parts, body)
}

/// The first frame of `body` when `headers` announce a non-zero
/// `Content-Length`, waiting [`PREFETCH_WAIT`] at most (see
/// [`prefetch_fixed_length`]); `None` for a streaming answer, an ended body
/// or a first frame still on its way.
pub(crate) async fn first_frame_if_fixed<B>(
    headers: &http::HeaderMap,
    body: &mut B,
) -> Option<Result<Frame<B::Data>, B::Error>>
where
    B: Body + Unpin,
{
    use http_body_util::BodyExt;
    let fixed = headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0");
    if !fixed || body.is_end_stream() {
        return None;
    }
    tokio::time::timeout(PREFETCH_WAIT, body.frame())
        .await
        .ok()
        .flatten()
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

    /// Adds this hold to the one a request carries in `extensions` for its
    /// upgraded stream (the upstream keeps that one until the stream
    /// closes), beside any other layer's hold there.
    pub fn keep_in(self, extensions: &mut http::Extensions) {
        let joined = match extensions.remove::<Hold>() {
            Some(held) => Hold::new((held, self)),
            None => self,
        };
        extensions.insert(joined);
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// A body with a [`Hold`] dropped at its end (last frame, error or drop).
#[derive(Debug)]
struct HeldBody {
    body: ProxyBody,
    hold: Option<Hold>,
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody(Kind::Full(None))
    }

    /// Any body with `Bytes` frames (an axum handler's, a tower middleware's
    /// wrapper), boxed: what lets the layers, which answer with
    /// `ProxyBody`, sit over any service (see [`crate::layer::ProxyBodyLayer`]).
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ProxyBody(Kind::Boxed(http_body_util::BodyExt::boxed_unsync(
            http_body_util::BodyExt::map_err(body, Into::into),
        )))
    }

    /// A body streamed from an upstream HTTP/2 stream.
    pub(crate) fn http2(body: Http2Body) -> Self {
        ProxyBody(Kind::Http2(body))
    }

    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ProxyBody(Kind::Full(None))
        } else {
            ProxyBody(Kind::Full(Some(bytes)))
        }
    }

    /// This body, keeping `hold` until it ends or is dropped.
    pub fn with_hold(self, hold: Hold) -> Self {
        if self.is_end_stream() {
            return self;
        }
        ProxyBody(Kind::Held(Box::new(HeldBody {
            body: self,
            hold: Some(hold),
        })))
    }
}

impl From<hyper::body::Incoming> for ProxyBody {
    fn from(body: hyper::body::Incoming) -> Self {
        ProxyBody(Kind::Incoming(body))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            Kind::Prefetched(first, body) => match first.take() {
                Some(frame) => Poll::Ready(Some(frame)),
                None => Pin::new(body)
                    .poll_frame(cx)
                    .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            },
            Kind::Http2(body) => Pin::new(body).poll_frame(cx),
            Kind::Boxed(body) => Pin::new(body).poll_frame(cx),
            Kind::Held(held) => {
                let frame = Pin::new(&mut held.body).poll_frame(cx);
                if matches!(&frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    held.hold = None;
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Incoming(body) => body.is_end_stream(),
            Kind::Prefetched(first, body) => first.is_none() && body.is_end_stream(),
            Kind::Http2(body) => body.is_end_stream(),
            Kind::Boxed(body) => body.is_end_stream(),
            Kind::Held(held) => held.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Incoming(body) => body.size_hint(),
            // the first frame's length is not counted: a hint, not exact
            Kind::Prefetched(None, body) => body.size_hint(),
            Kind::Prefetched(Some(_), _) => SizeHint::default(),
            Kind::Http2(body) => body.size_hint(),
            Kind::Boxed(body) => body.size_hint(),
            Kind::Held(held) => held.body.size_hint(),
        }
    }
}

/// An answer's body read from an upstream HTTP/2 stream, its window given
/// back as it is read. A `RST_STREAM(NO_ERROR)` ends it normally (RFC 9113
/// §8.1: the server answered early).
pub(crate) struct Http2Body {
    first: Option<Result<Frame<Bytes>, BoxError>>,
    stream: h2::RecvStream,
    data_done: bool,
    /// Bytes still to come, when `Content-Length` said.
    remaining: Option<u64>,
}

impl std::fmt::Debug for Http2Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Body")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Http2Body {
    /// The body of an answer with these `headers`. When the answer has a
    /// non-zero `Content-Length`, its first frame is read here (waiting
    /// [`PREFETCH_WAIT`] at most), as
    /// [`prefetch_fixed_length`] does for HTTP/1.1.
    pub(crate) async fn new(headers: &http::HeaderMap, stream: h2::RecvStream) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| stream.is_end_stream().then_some(0));
        let mut body = Http2Body {
            first: None,
            stream,
            data_done: false,
            remaining,
        };
        body.first = first_frame_if_fixed(headers, &mut body).await;
        body
    }
}

impl Body for Http2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(first));
        }
        if !this.data_done {
            match this.stream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(ended(error)),
                Poll::Ready(None) => this.data_done = true,
            }
        }
        match this.stream.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(trailers)) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Poll::Ready(Err(error)) => Poll::Ready(ended(error)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let first = match &self.first {
            None => 0,
            Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => return SizeHint::default(),
        };
        match self.remaining {
            Some(n) => SizeHint::with_exact(n + first),
            None => SizeHint::default(),
        }
    }
}

/// How a stream error ends a body: `NO_ERROR` is an early answer's normal end.
fn ended(error: h2::Error) -> Option<Result<Frame<Bytes>, BoxError>> {
    if error.reason() == Some(h2::Reason::NO_ERROR) {
        None
    } else {
        Some(Err(error.into()))
    }
}

/// A request body that, when dropped unfinished (the upstream answered before
/// reading it all), reads the rest in the background up to a limit. Without
/// this the caller's HTTP/2 stream would be reset (`CANCEL`) while its
/// response is still on the way, and an HTTP/1.1 connection could not be kept.
pub struct DrainOnDrop<B> {
    inner: Option<B>,
    /// Called with the body when it is dropped unfinished (set where `B`'s
    /// bounds are known, so `Drop` needs none).
    drain: fn(B),
}

impl<B> DrainOnDrop<B>
where
    B: http_body::Body + Send + Unpin + 'static,
{
    pub(crate) fn new(body: B) -> Self {
        DrainOnDrop {
            inner: Some(body),
            drain: drain_in_background::<B>,
        }
    }
}

impl<B> DrainOnDrop<B> {
    /// The body back, as it is, without draining it.
    pub(crate) fn into_inner(mut self) -> Option<B> {
        self.inner.take()
    }

    /// The body, kept here.
    pub(crate) fn get_mut(&mut self) -> Option<&mut B> {
        self.inner.as_mut()
    }
}

fn drain_in_background<B>(body: B)
where
    B: http_body::Body + Send + Unpin + 'static,
{
    drain_unread(body);
}

impl<B> http_body::Body for DrainOnDrop<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl<B> Drop for DrainOnDrop<B> {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take() {
            (self.drain)(body);
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
