//! A socket read in large pieces beneath TLS.
//!
//! rustls asks its socket for at most 4 KiB at a time, so a full 16 KiB TLS
//! record costs four or five `recv` calls, and a stream (a `kubectl cp`, a
//! port-forward download, a large list) costs one system call per 4 KiB in
//! each direction of every hop. [`ReadAhead`] sits between the socket and
//! rustls: while the stream moves in bulk (a read found more waiting than it
//! asked for), a small read finds up to [`READ_AHEAD`] bytes taken from the
//! socket at once and is served from them. Otherwise, and for a read at
//! least that large, reads go straight to the socket: requests and answers
//! of a few KiB cost what they cost without this layer.
//!
//! Nothing is held while a connection waits for bytes: the buffer is taken
//! when bytes arrive and given back as soon as it is empty and the socket
//! has nothing more, so an idle connection (most of a proxy's connections)
//! costs no more than without it. While the reader above is slow to take
//! what was read (rustls holding data its own reader has not taken), up to
//! [`READ_AHEAD`] bytes wait here. Writes pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes taken from the socket at once: four full TLS records.
pub const READ_AHEAD: usize = 64 * 1024;

/// A socket (or any byte stream) whose small reads are served from one
/// large read (see the module docs).
#[derive(Debug)]
pub struct ReadAhead<T> {
    io: T,
    buf: BytesMut,
    /// Whether the stream is moving in bulk (the last read found more than
    /// was asked for): only then are reads taken in large pieces. Requests
    /// and answers of a few KiB are read straight, as without this layer,
    /// with no buffer to take and give back for each.
    bulk: bool,
}

/// A fill smaller than this ends bulk reading: the stream is back to small
/// messages.
const BULK_END: usize = 16 * 1024;

impl<T> ReadAhead<T> {
    /// Wraps `io`; nothing is allocated until bytes arrive in bulk.
    pub fn new(io: T) -> Self {
        ReadAhead {
            io,
            buf: BytesMut::new(),
            bulk: false,
        }
    }

    /// The stream beneath.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Bytes read from the socket and not yet handed on.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of memory the buffer holds (0 while the connection waits).
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.buf.is_empty() {
            if !this.bulk || out.remaining() >= READ_AHEAD {
                // Out of bulk: the last fill's buffer is given back.
                this.buf = BytesMut::new();
                // Straight into the caller's buffer. Filled to the brim, the
                // socket likely holds more: read in bulk from the next read.
                let asked = out.remaining();
                let before = out.filled().len();
                let read = Pin::new(&mut this.io).poll_read(cx, out);
                if let Poll::Ready(Ok(())) = read {
                    this.bulk = asked < READ_AHEAD && out.filled().len() - before == asked;
                }
                return read;
            }
            // Reuses the allocation of the last fill when it is still held.
            this.buf.reserve(READ_AHEAD);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => {
                    // Waiting: hold nothing.
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => {
                    this.buf = BytesMut::new();
                    return Poll::Ready(Err(error));
                }
                // The end of the stream: nothing to copy.
                Poll::Ready(Ok(0)) => {
                    this.buf = BytesMut::new();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(n)) => {
                    if n < BULK_END {
                        this.bulk = false;
                    }
                }
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for ReadAhead<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.io.connected()
    }
}

/// A connector whose TCP connections are read through [`ReadAhead`] (put
/// beneath hyper-rustls's `HttpsConnector`).
#[derive(Debug, Clone)]
pub struct Connector<C> {
    inner: C,
}

impl<C> Connector<C> {
    /// Wraps the connections `inner` makes.
    pub fn new(inner: C) -> Self {
        Connector { inner }
    }
}

type TokioIo<T> = hyper_util::rt::TokioIo<T>;

impl<C, T> tower_service::Service<http::Uri> for Connector<C>
where
    C: tower_service::Service<http::Uri, Response = TokioIo<T>>,
    C::Future: Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Response = TokioIo<ReadAhead<T>>;
    type Error = C::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TokioIo::new(ReadAhead::new(io.into_inner())))
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn small_reads_of_a_bulk_stream_are_served_from_one_large_read_and_nothing_is_held_while_waiting(
    ) {
        let (mut writer, reader) = tokio::io::duplex(4 * READ_AHEAD);
        let mut reader = ReadAhead::new(reader);
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).await.unwrap();
        let mut first = [0u8; 4096];
        reader.read_exact(&mut first).await.unwrap();
        assert_eq!(&first[..], &sent[..4096]);
        // That read was straight, and found more waiting: the next small
        // read takes a whole buffer's worth, and the rest waits in it.
        assert_eq!(reader.held(), 0);
        let mut second = [0u8; 4096];
        reader.read_exact(&mut second).await.unwrap();
        assert_eq!(&second[..], &sent[4096..8192]);
        assert_eq!(reader.buffered(), READ_AHEAD - 4096);
        let mut rest = vec![0u8; sent.len() - 8192];
        reader.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest[..], &sent[8192..]);
        // Drained, and the socket has nothing: the next read waits with no
        // buffer held.
        let mut more = [0u8; 16];
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(20), reader.read(&mut more))
                .await;
        assert!(waiting.is_err());
        assert_eq!(reader.held(), 0);
        // Bytes after the wait, then the end of the stream.
        writer.write_all(b"later").await.unwrap();
        drop(writer);
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, b"later");
        assert_eq!(reader.held(), 0);
    }

    #[tokio::test]
    async fn small_messages_are_read_straight_with_no_buffer() {
        let (mut writer, reader) = tokio::io::duplex(4 * READ_AHEAD);
        let mut reader = ReadAhead::new(reader);
        for round in 0..3u8 {
            writer.write_all(&[round; 300]).await.unwrap();
            let mut got = [0u8; 4096];
            let n = reader.read(&mut got).await.unwrap();
            assert_eq!(&got[..n], &[round; 300][..]);
            assert_eq!(reader.held(), 0);
        }
    }

    #[tokio::test]
    async fn a_large_read_goes_straight_to_the_socket() {
        let (mut writer, reader) = tokio::io::duplex(4 * READ_AHEAD);
        let mut reader = ReadAhead::new(reader);
        writer.write_all(&[7u8; 1000]).await.unwrap();
        let mut big = vec![0u8; READ_AHEAD];
        let n = reader.read(&mut big).await.unwrap();
        assert_eq!(n, 1000);
        assert_eq!(reader.held(), 0);
        // Writes pass through.
        reader.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        writer.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
