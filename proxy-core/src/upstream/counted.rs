//! A connector that counts the connections it opened while they stay open,
//! whoever holds them: a pool, or an upgraded tunnel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tower_service::Service;

use crate::counters::{Open, Protocol, UpstreamCounters};

/// The API server's TCP connections, read in large pieces beneath TLS
/// while a stream moves in bulk.
pub(crate) type TcpConnector =
    proxy_support::read_ahead::Connector<hyper_util::client::legacy::connect::HttpConnector>;

/// Wraps a connector: every connection it opens counts as open until it is
/// dropped (closed by the pool, or the end of an upgraded tunnel).
#[derive(Clone)]
pub(crate) struct CountingConnector<C> {
    inner: C,
    counters: Arc<UpstreamCounters>,
    protocol: Protocol,
}

impl<C> CountingConnector<C> {
    /// Counts `inner`'s connections as `protocol` ones.
    pub(crate) fn new(inner: C, counters: Arc<UpstreamCounters>, protocol: Protocol) -> Self {
        CountingConnector {
            inner,
            counters,
            protocol,
        }
    }
}

/// A connection that lowers the open-connections gauge when dropped.
pub(crate) struct Counted<T> {
    io: T,
    _open: Open,
}

impl<C> Service<Uri> for CountingConnector<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let counters = self.counters.clone();
        let protocol = self.protocol;
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Counted {
                io,
                _open: counters.connection(protocol),
            })
        })
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
