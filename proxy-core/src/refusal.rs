//! Refusals that read some of the request body first, as nginx does.
//!
//! A request refused before its body was read (a bad credential, a
//! long-running cap, a caller's own impersonation refused, an unknown
//! cluster, an unreachable API server) is answered while the caller is
//! still sending. Over HTTP/2 the stream then ends with the answer followed
//! by `RST_STREAM(NO_ERROR)` (RFC 9113, section 8.1), which is correct but
//! which curl 7.88 (Debian 12) reports as error 92 instead of showing the
//! answer. So before such a refusal goes out, up to
//! [`READ_BEFORE_REFUSAL_BYTES`] of the body are read and dropped, for
//! [`READ_BEFORE_REFUSAL_TIME`] at most; what is left is drained in the
//! background ([`crate::body::drain_unread`]).
//!
//! The layers that refuse are generic over the body, so they cannot read
//! it: they hand it on with their refusal ([`with_unread_body`]), and the
//! server, which knows the body's type, reads it ([`read_before_refusal`])
//! just before answering.
//!
//! ```
//! # async fn run(req: http::Request<http_body_util::Full<bytes::Bytes>>) {
//! use proxy_core::refusal::{read_before_refusal, with_unread_body};
//! use proxy_core::status::Status;
//!
//! let refusal = with_unread_body(Status::unauthorized().into_response(), req.into_body());
//! let answer = read_before_refusal::<http_body_util::Full<bytes::Bytes>>(refusal).await;
//! assert_eq!(answer.status(), 401);
//! # }
//! ```

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Response;
use http_body::Body;
use http_body_util::BodyExt as _;

use crate::body::ProxyBody;

/// The most request body bytes read before a refusal goes out.
pub const READ_BEFORE_REFUSAL_BYTES: usize = 64 * 1024;

/// The longest wait for the request body before a refusal goes out.
pub const READ_BEFORE_REFUSAL_TIME: Duration = Duration::from_secs(1);

/// A request body a refusal left unread, carried in the refusal's
/// extensions to [`read_before_refusal`].
#[derive(Clone)]
struct UnreadBody(Arc<Mutex<Option<Box<dyn Any + Send>>>>);

/// `refusal`, an answer made without reading the request `body`, carrying
/// the body so that [`read_before_refusal`] reads some of it before the
/// answer goes out. Served without that, the body is dropped with the
/// answer's head, as it would have been.
pub fn with_unread_body<B: Send + 'static>(
    mut refusal: Response<ProxyBody>,
    body: B,
) -> Response<ProxyBody> {
    let body: Box<dyn Any + Send> = Box::new(body);
    refusal
        .extensions_mut()
        .insert(UnreadBody(Arc::new(Mutex::new(Some(body)))));
    refusal
}

/// Reads and drops up to [`READ_BEFORE_REFUSAL_BYTES`] of the request body
/// `response` carries (when it is a `B`), waiting
/// [`READ_BEFORE_REFUSAL_TIME`] at most, and leaves the rest to drain in the
/// background; then returns `response`. A response without such a body
/// comes back at once.
pub async fn read_before_refusal<B>(mut response: Response<ProxyBody>) -> Response<ProxyBody>
where
    B: Body + Send + Unpin + 'static,
{
    let Some(UnreadBody(slot)) = response.extensions_mut().remove::<UnreadBody>() else {
        return response;
    };
    let body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(Ok(body)) = body.map(|body| body.downcast::<B>()) {
        read_some(*body).await;
    }
    response
}

/// Reads and drops up to [`READ_BEFORE_REFUSAL_BYTES`] of `body`, for
/// [`READ_BEFORE_REFUSAL_TIME`] at most, then leaves the rest to drain in
/// the background.
pub async fn read_some<B>(mut body: B)
where
    B: Body + Send + Unpin + 'static,
{
    let read = async {
        let mut read = 0;
        while read < READ_BEFORE_REFUSAL_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, bytes::Buf::remaining);
                }
                // Ended, or failed: nothing more to read.
                Some(Err(_)) | None => return true,
            }
        }
        false
    };
    let ended = tokio::time::timeout(READ_BEFORE_REFUSAL_TIME, read)
        .await
        .unwrap_or(false);
    if !ended {
        crate::body::drain_unread(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body::Frame;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Counted = http_body_util::StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>,
    >;

    /// A body of `chunks` frames of 16 KiB, counting the bytes read.
    fn counted(chunks: usize, read: Arc<AtomicUsize>) -> Counted {
        use futures_util::StreamExt as _;
        let frames = (0..chunks).map(move |_| {
            read.fetch_add(16 * 1024, Ordering::SeqCst);
            Ok(Frame::data(Bytes::from(vec![0; 16 * 1024])))
        });
        http_body_util::StreamBody::new(futures_util::stream::iter(frames).boxed())
    }

    /// A refusal that carries its request's body reads it before it goes:
    /// all of a small one, the bounded part of a large one.
    #[tokio::test]
    async fn a_refusal_reads_the_body_it_left_unread_within_the_bound() {
        for (chunks, expected) in [(2, 2 * 16 * 1024), (64, READ_BEFORE_REFUSAL_BYTES)] {
            let read = Arc::new(AtomicUsize::new(0));
            let body = counted(chunks, read.clone());
            let refusal =
                with_unread_body(crate::status::Status::unauthorized().into_response(), body);
            let refusal = read_before_refusal::<Counted>(refusal).await;
            assert_eq!(refusal.status(), 401);
            // On this one-thread runtime the background drain of the rest
            // has not run yet.
            assert_eq!(read.load(Ordering::SeqCst), expected, "{chunks} chunks");
        }
    }

    /// A body that does not come is waited for a bounded time.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_come_is_waited_for_at_most_the_bound() {
        type Silent = http_body_util::StreamBody<
            futures_util::stream::Pending<Result<Frame<Bytes>, std::io::Error>>,
        >;
        let body: Silent = http_body_util::StreamBody::new(futures_util::stream::pending());
        let refusal = with_unread_body(crate::status::Status::unauthorized().into_response(), body);
        let started = tokio::time::Instant::now();
        let refusal = read_before_refusal::<Silent>(refusal).await;
        assert_eq!(refusal.status(), 401);
        assert_eq!(started.elapsed(), READ_BEFORE_REFUSAL_TIME);
    }

    /// A response that carries no body, or one of another type, comes back
    /// at once.
    #[tokio::test(start_paused = true)]
    async fn other_answers_pass_at_once() {
        let started = tokio::time::Instant::now();
        let plain = crate::status::Status::unauthorized().into_response();
        assert_eq!(
            read_before_refusal::<hyper::body::Incoming>(plain)
                .await
                .status(),
            401
        );
        let other = with_unread_body(crate::status::Status::unauthorized().into_response(), 7u8);
        assert_eq!(
            read_before_refusal::<hyper::body::Incoming>(other)
                .await
                .status(),
            401
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
