//! Seeing the bytes of an upgraded stream (exec, attach) as they pass
//! between the caller and the API server, for whoever asked to (session
//! recording): the forwarders know only this, not who looks.

use std::sync::Arc;

use http::HeaderMap;

/// The two readers of a stream: the caller's bytes, the server's.
pub(crate) type Taps = (Box<dyn ByteTap>, Box<dyn ByteTap>);

/// Reads one direction of a stream as it passes; never blocks it.
pub(crate) trait ByteTap: Send + Sync {
    /// The next `bytes` of this direction.
    fn read(&self, bytes: &[u8]);
}

/// Something that wants to see a stream once the API server switches
/// protocols.
pub(crate) trait UpgradeTap: Send + Sync {
    /// The readers for a stream the server switched to with `response`
    /// headers (`offered`: the caller's `Upgrade`); `None`: not this one.
    fn start(&self, response: &HeaderMap, offered: &str) -> Option<Taps>;

    /// Whether a stream this tap cannot see must not be opened at all.
    fn required(&self) -> bool {
        false
    }
}

/// Starts `tap` (when there is one) on a stream the server switched to:
/// `Ok(None)` when there is none, `Err` when it could not start and is
/// required (the caller must get a refusal, and the server's stream be
/// closed).
pub(crate) fn start(
    tap: Option<UpgradeTaps>,
    response: &HeaderMap,
    offered: &str,
) -> Result<Option<Taps>, crate::status::Status> {
    // (The request was narrowed to readable protocols before it was sent
    // when recording is required: see `LongRunning`. This is the backstop
    // for a server that answered with something else.)
    let Some(tap) = tap else {
        return Ok(None);
    };
    match tap.0.start(response, offered) {
        Some(taps) => Ok(Some(taps)),
        None if tap.0.required() => Err(crate::status::Status::failure(
            http::StatusCode::SERVICE_UNAVAILABLE,
            crate::status::Reason::ServiceUnavailable,
            "this session must be recorded, and it cannot be: it was not opened",
        )),
        None => Ok(None),
    }
}

/// The request extension a forwarder takes the [`UpgradeTap`] from.
#[derive(Clone)]
pub(crate) struct UpgradeTaps(pub(crate) Arc<dyn UpgradeTap>);

pin_project_lite::pin_project! {
    /// One end of an upgraded stream whose reads a [`ByteTap`] sees.
    pub(crate) struct Tapped<T> {
        #[pin]
        inner: T,
        tap: Option<Box<dyn ByteTap>>,
    }
}

impl<T> Tapped<T> {
    /// `inner`, its reads shown to `tap` (when there is one).
    pub(crate) fn new(inner: T, tap: Option<Box<dyn ByteTap>>) -> Self {
        Tapped { inner, tap }
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Tapped<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if let (std::task::Poll::Ready(Ok(())), Some(tap)) = (&polled, this.tap.as_ref()) {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                tap.read(new);
            }
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Tapped<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tap that cannot read any stream.
    struct Blind {
        required: bool,
    }

    impl UpgradeTap for Blind {
        fn start(&self, _: &HeaderMap, _: &str) -> Option<Taps> {
            None
        }

        fn required(&self) -> bool {
            self.required
        }
    }

    #[test]
    fn a_stream_a_required_tap_cannot_read_is_refused_and_others_go_on() {
        let headers = HeaderMap::new();
        let refused = start(
            Some(UpgradeTaps(Arc::new(Blind { required: true }))),
            &headers,
            "websocket",
        );
        let status = refused.err().expect("refused");
        assert_eq!(status.code, 503);
        assert!(status.message.contains("must be recorded"));
        assert!(matches!(
            start(
                Some(UpgradeTaps(Arc::new(Blind { required: false }))),
                &headers,
                "websocket"
            ),
            Ok(None)
        ));
        assert!(matches!(start(None, &headers, "websocket"), Ok(None)));
    }
}
