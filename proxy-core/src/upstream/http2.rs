//! One request over a pooled upstream HTTP/2 connection, sent from the
//! request's own task: the stream is opened here, the request body (if any)
//! is copied within the window the server grants, and the answer's body is
//! read straight from the `h2` stream.

use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{header, HeaderValue, Method, Request, Response, Version};
use http_body::Body;
use http_body_util::BodyExt as _;

use super::replay::Replay;
use crate::body::DrainOnDrop;
use crate::BoxError;

/// Why a request got no answer.
pub(crate) enum SendError<B> {
    /// The connection is going away and did not take the request: the
    /// GOAWAY came before the request went out, or named an earlier last
    /// stream. The request is handed back, to be sent on another connection.
    GoneAway(Request<B>),
    /// The server reset the stream with `REFUSED_STREAM`, unprocessed; the
    /// connection stays. The request is handed back, to be sent again.
    Refused(Request<B>),
    /// The stream or the connection failed.
    Failed(h2::Error),
}

/// Sends `req` on a stream of the connection behind `send` and waits for
/// the answer's head. A body the server has not read in full when it answers
/// goes on being sent from a task of its own, its kept copy dropped
/// ([`Replay::forget`]); one dropped unfinished is read to its end in the
/// background ([`DrainOnDrop`]). A request the server turns away unprocessed
/// is handed back rewound ([`Replay::rewind`]), unless its body outgrew what
/// is kept for that.
pub(crate) async fn send<B>(
    send: SendRequest<Bytes>,
    req: Request<Replay<B>>,
) -> Result<Response<RecvStream>, SendError<Replay<B>>>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // Fails at once when a GOAWAY arrived; nothing was sent yet.
    let mut send = match send.ready().await {
        Ok(send) => send,
        Err(error) if error.is_go_away() => return Err(SendError::GoneAway(req)),
        Err(error) => return Err(SendError::Failed(error)),
    };
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_2;
    strip_connection_headers(&mut parts.headers);
    if let Some(len) = body.size_hint().exact() {
        if (len != 0 || has_payload_semantics(&parts.method))
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let mut body = DrainOnDrop::new(body);
    let end_of_stream = body.is_end_stream();
    // Kept until the answer comes, to send the request again if the server
    // refuses it unprocessed.
    let head = Head::of(&parts);
    let (mut response, mut stream) = send
        .send_request(Request::from_parts(parts, ()), end_of_stream)
        .map_err(SendError::Failed)?;
    drop(send);
    // Whether the answer came before the body was all sent.
    let mut copying = false;
    let answer = if end_of_stream {
        response.await
    } else {
        // The copy borrows the body, so that it can stop at any await and
        // leave the body here, every frame it took kept.
        let copy = pipe(&mut body, &mut stream);
        tokio::pin!(copy);
        tokio::select! {
            biased;
            answer = &mut response => {
                copying = true;
                answer
            }
            () = &mut copy => response.await,
        }
    };
    let error = match answer {
        Ok(response) => {
            // Answered: the request will not go again.
            if let Some(body) = body.get_mut() {
                body.forget();
            }
            if copying {
                // The rest goes on (or stops at the server's reset) without
                // holding the answer.
                tokio::spawn(async move { pipe(&mut body, &mut stream).await });
            }
            return Ok(response);
        }
        Err(error) => error,
    };
    if !unprocessed(&error) {
        if let Some(body) = body.get_mut() {
            body.forget();
        }
        return Err(SendError::Failed(error));
    }
    let Some(mut body) = body.into_inner() else {
        return Err(SendError::Failed(error));
    };
    if !body.rewind() {
        // Its start is lost: read to its end, as any body left unsent.
        drop(DrainOnDrop::new(body));
        return Err(SendError::Failed(error));
    }
    let req = head.with_body(body);
    if error.is_go_away() {
        Err(SendError::GoneAway(req))
    } else {
        Err(SendError::Refused(req))
    }
}

/// Whether the server said it did not process the stream, so that sending
/// the request again cannot repeat it (RFC 9113, section 8.7): a GOAWAY
/// without error whose last stream is below this one, or `REFUSED_STREAM`.
/// Kept to a GOAWAY without error, the graceful one (a server shutting down,
/// or kube-apiserver's `--goaway-chance`): after a GOAWAY with an error
/// code the request fails with 502, as any request on a failing server.
fn unprocessed(error: &h2::Error) -> bool {
    error.is_remote()
        && match error.reason() {
            Some(Reason::NO_ERROR) => error.is_go_away(),
            Some(Reason::REFUSED_STREAM) => error.is_reset(),
            _ => false,
        }
}

/// What a request is made of besides its body, kept to send it again.
struct Head {
    method: Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Head {
    fn of(parts: &http::request::Parts) -> Head {
        Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        }
    }

    fn with_body<B>(self, body: B) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
    }
}

/// Copies `body` to `stream`, reading the next frame only once the server's
/// window has room, so a fast caller and a slow server hold one frame here
/// at most. Stops when the body ends or the server resets the stream. May
/// be dropped at any await: a frame taken from the body is sent before the
/// next await.
async fn pipe<B>(body: &mut B, stream: &mut SendStream<Bytes>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        stream.reserve_capacity(1);
        while stream.capacity() == 0 {
            let granted = poll_fn(|cx| match stream.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => stream.poll_capacity(cx),
            })
            .await;
            match granted {
                Some(Ok(_)) => {}
                // Reset, closed or failed: nothing more can be sent.
                Some(Err(_)) | None => return,
            }
        }
        let frame = tokio::select! {
            biased;
            _ = poll_fn(|cx| stream.poll_reset(cx)) => None,
            frame = body.frame() => Some(frame),
        };
        let Some(frame) = frame else {
            return;
        };
        match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if data.is_empty() && !end {
                        continue;
                    }
                    stream.reserve_capacity(data.len());
                    if stream.send_data(data, end).is_err() || end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                    } else {
                        let _ = stream.send_data(Bytes::new(), true);
                    }
                    return;
                }
            },
            Some(Err(error)) => {
                let error: BoxError = error.into();
                tracing::debug!(%error, "the request body failed; resetting the upstream stream");
                stream.send_reset(Reason::CANCEL);
                return;
            }
        }
    }
}

/// Methods whose empty body is still announced with `Content-Length: 0`.
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

/// Removes the headers HTTP/2 forbids (RFC 9113 §8.2.2), which the `h2`
/// crate would refuse the whole request for. The proxy's own layers remove
/// them already; this keeps [`super::Upstream`] safe on its own.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    let forbidden = |name: &header::HeaderName| {
        name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == "keep-alive"
            || name == "proxy-connection"
    };
    remove_matching(headers, forbidden);
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// Removes the headers whose name matches, in one pass over the names
/// present: removing absent names one by one would hash and probe each.
pub(super) fn remove_matching(
    headers: &mut http::HeaderMap,
    matches: impl Fn(&http::HeaderName) -> bool,
) {
    if headers.keys().any(&matches) {
        let names: Vec<_> = headers.keys().filter(|n| matches(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
#[path = "http2_tests.rs"]
mod tests;
