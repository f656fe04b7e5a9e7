//! Request bodies at the binary's own endpoints (the TokenReview webhook,
//! the token exchange, revocations): a whole body read, never more than a
//! limit, with a Kubernetes `Status` to answer when it is passed; and the
//! refusal of a method other than POST.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use proxy_core::refusal::read_some;
use proxy_core::status::{Reason, Status};
use proxy_core::BoxError;
use proxy_core::ProxyBody;

/// The refusal of a request other than POST to an endpoint that takes only
/// POST, once some of its body was read (see `proxy_core::refusal`).
pub(crate) async fn post_only(body: Incoming, hint: &'static str) -> Response<ProxyBody> {
    read_some(body).await;
    Status::failure(StatusCode::METHOD_NOT_ALLOWED, Reason::BadRequest, hint).into_response()
}

/// Reads a whole request body of at most `limit` bytes.
///
/// Errors, as the Status to answer: 413 when `Content-Length` announces more
/// than `limit` (nothing is read) or the body grows past it (reading stops
/// there); 400 when the body cannot be read.
pub async fn read_limited<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, Status>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = body;
    if announced.is_some_and(|n| n > limit as u64) {
        proxy_core::body::drain_unread(body);
        return Err(Status::too_large(limit));
    }
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Status::failure(
                http::StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                "the request body could not be read",
            ));
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers carry nothing to keep
        };
        use bytes::Buf as _;
        if collected.len() + data.remaining() > limit {
            proxy_core::body::drain_unread(body);
            return Err(Status::too_large(limit));
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            collected.extend_from_slice(chunk);
            data.advance(n);
        }
    }
    Ok(collected.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let read = read_limited(&http::HeaderMap::new(), body, 10).await;
        assert_eq!(read.unwrap(), Bytes::from_static(b"0123456789"));
    }

    #[tokio::test]
    async fn an_announced_length_past_the_limit_is_413_before_reading() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "11".parse().unwrap());
        // A body that would fail if polled: only the header may decide.
        let body = StreamBody::new(futures_util::stream::iter(vec![Err::<
            Frame<Bytes>,
            BoxError,
        >("polled".into())]));
        let status = read_limited(&headers, body, 10).await.unwrap_err();
        assert_eq!(status.code, 413);
        assert_eq!(status.reason, Reason::RequestEntityTooLarge);
    }

    #[tokio::test]
    async fn a_chunked_body_growing_past_the_limit_is_413() {
        let chunks = (0..100).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 64]))));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let status = read_limited(&http::HeaderMap::new(), body, 1000)
            .await
            .unwrap_err();
        assert_eq!(status.code, 413);
    }
}
