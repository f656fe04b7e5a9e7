//! One client connection of a listener, from the accepted socket to its
//! close: the TLS handshake within `limits.tlsHandshakeTimeout`, HTTP with the
//! listener's limits, a graceful close when no request has been in flight for
//! `limits.idleTimeout` or when the listener shuts down.
//!
//! The connection holds its slot of `limits.maxConnections` for as long as
//! its socket is open: an upgraded stream (exec, attach, port-forward) takes
//! the socket, and the slot, with it. Every request carries the slot (a
//! [`ConnectionSlot`] extension): an agent's registration exchanges it for
//! one of the agent connections. A connection accepted for agents only (past
//! the client cap) gets `limits.tlsHandshakeTimeout` to register instead of
//! `limits.idleTimeout`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::proxy_protocol::{self, HeaderError};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxy_core::credential::ClientCertificate;
use proxy_core::forwarded::TrustedProxies;
use proxy_core::reload::tls::ClientCertRecheck;
use proxy_core::tunnel::budget::{AgentConnections, ConnectionSlot};
use proxy_core::{BoxError, ProxyBody};
use proxy_support::gate::Gated;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What every connection of one listener shares.
pub(crate) struct Listener<H> {
    /// Connections from these addresses start with a PROXY protocol header.
    pub proxy_protocol: Option<Arc<TrustedProxies>>,
    /// Re-checks each request's client certificate (with `tls.clientCAFile`).
    pub client_certs: Option<ClientCertRecheck>,
    /// TLS of the listener.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// HTTP/1.1 and HTTP/2 with the listener's limits.
    pub builder: auto::Builder<TokioExecutor>,
    /// `limits.tlsHandshakeTimeout`.
    pub handshake_timeout: Duration,
    /// `limits.idleTimeout`.
    pub idle_timeout: Duration,
    /// Answers the requests.
    pub handler: H,
}

/// What a listener does with each request: the proxy, or the webhook.
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers one request. `cert` is the verified client certificate, if any.
    fn handle(
        self,
        req: Request<Incoming>,
        cert: Option<ClientCertificate>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static;

    /// The load balancers whose connections start with a PROXY protocol
    /// header naming the client (`None`: no connection does).
    fn proxy_protocol_from(&self) -> Option<Arc<TrustedProxies>> {
        None
    }

    /// The agent connections, counted apart from the client connections
    /// (`None`: this listener registers no agent). While client
    /// connections are at their cap, the listener accepts connections on
    /// these, which may only register an agent.
    fn agent_connections(&self) -> Option<AgentConnections> {
        None
    }
}

/// Serves one accepted socket until it closes. `shutdown` turns true when the
/// listener stops; the connection then finishes its requests and closes.
pub(crate) async fn serve<H: Handler>(
    listener: Arc<Listener<H>>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut peer = peer;
    let mut proxy_header_read = false;
    let activity = Arc::new(Activity::new());
    let agent_only = slot.is_agent_only();
    // Each stage's values live in a block of their own, so that they are
    // gone before the next stage waits: a value still in scope at an
    // `.await` takes room in this task's future for as long as the
    // connection is open, even once it was moved (the TLS stream, the
    // handshake, the service: about 5 KiB per connection).
    let mut connection = std::pin::pin!({
        let (stream, generation) = {
            let mut tcp = tcp;
            // The CA file in force before the handshake verifies with it.
            let generation = listener
                .client_certs
                .as_ref()
                .map(ClientCertRecheck::generation);
            let handshake = tokio::time::timeout(listener.handshake_timeout, async {
                if let Some(trusted) = &listener.proxy_protocol {
                    if trusted.contains(peer.ip()) {
                        proxy_header_read = true;
                        match read_proxy_header(&mut tcp).await {
                            Ok(Some(source)) => peer = source,
                            // The balancer's own connection (a health check).
                            Ok(None) => {}
                            Err(error) => {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::InvalidData,
                                    error,
                                ));
                            }
                        }
                    }
                }
                listener
                    .acceptor
                    .accept(proxy_support::read_ahead::ReadAhead::new(tcp))
                    .await
            });
            let accepted = tokio::select! {
                accepted = handshake => accepted,
                () = signalled(&mut shutdown) => return,
            };
            match accepted {
                Ok(Ok(stream)) => (stream, generation),
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        };
        let cert = stream.get_ref().1.peer_certificates().map(|chain| {
            ClientCertificate(
                chain
                    .iter()
                    .map(|c| c.clone().into_owned())
                    .collect::<Vec<_>>()
                    .into(),
            )
        });
        // Each request re-checks the certificate as kube-apiserver would: a
        // certificate past its notAfter, or that the CAs now in force refuse, is
        // not the request's credential (it is then as if none was sent).
        // A resumed session's certificate was verified in an earlier handshake,
        // perhaps under other CAs: it is verified again at the first request.
        let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let verified = match (&cert, &listener.client_certs, generation) {
            (Some(cert), Some(recheck), Some(generation)) => Some(Arc::new(recheck.verified_at(
                if resumed {
                    ClientCertRecheck::NEVER_VERIFIED
                } else {
                    generation
                },
                &cert.0,
            ))),
            _ => None,
        };
        let recheck = listener.client_certs.clone();
        let in_flight = activity.clone();
        let handler = listener.handler.clone();
        let request_slot = slot.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
            req.extensions_mut().insert(request_slot.clone());
            if proxy_header_read {
                req.extensions_mut().insert(ThroughL4Balancer);
            }
            let guard = InFlight::begin(&in_flight);
            let cert = match (&cert, &recheck, &verified) {
                (Some(cert), Some(recheck), Some(state)) => {
                    if recheck.still_valid(&cert.0, state) {
                        Some(cert.clone())
                    } else {
                        tracing::debug!(%peer, "client certificate no longer valid on this connection");
                        None
                    }
                }
                (cert, _, _) => cert.clone(),
            };
            let answer = handler.clone().handle(req, cert, peer);
            // Boxed: hyper keeps one allocation the size of this future for
            // each HTTP/1.1 connection for as long as it is open, requests or
            // not; boxed, that is a pointer, and the request's own future lives
            // only while the request does (4 KiB less per idle connection).
            Box::pin(async move {
                let response = answer.await?;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _guard: guard,
                }))
            })
        });
        let io = TokioIo::new(Slotted {
            io: stream,
            _slot: slot,
        });
        listener.builder.serve_connection_with_upgrades(io, service)
    });
    let mut closing = false;
    // The connection wakes this task for every read and write; the shutdown
    // signal and the idle timer are polled only when they fire.
    let mut stop = Gated::new(Box::pin(signalled(&mut shutdown)));
    let idle_timeout = if agent_only {
        listener.handshake_timeout
    } else {
        listener.idle_timeout
    };
    let mut idle = Gated::new(Box::pin(tokio::time::sleep(idle_timeout)));
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = &mut stop, if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = &mut idle, if !closing => {
                let wait = activity.idle_in(idle_timeout);
                if !wait.is_zero() {
                    let next = tokio::time::Instant::now() + wait;
                    idle.get_mut().as_mut().reset(next);
                    continue;
                }
                tracing::debug!(%peer, "closing an idle connection");
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Resolves once the listener shuts down (or is gone).
/// Marks a request whose connection began with a PROXY protocol header: its
/// peer is the client the balancer named (or the balancer itself, for its
/// own connections), never a proxy whose `X-Forwarded-For` is believed (an
/// L4 balancer cannot have written one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThroughL4Balancer;

/// Reads the PROXY protocol header at the start of `tcp`, and nothing after
/// it: the client's address, or `None` when the balancer speaks for itself.
async fn read_proxy_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut buf = vec![0u8; proxy_protocol::MAX_HEADER];
    loop {
        let seen = tcp
            .peek(&mut buf)
            .await
            .map_err(|_| HeaderError::Malformed("connection failed before the header ended"))?;
        if seen == 0 {
            return Err(HeaderError::Malformed(
                "connection closed before the header ended",
            ));
        }
        match proxy_protocol::parse(&buf[..seen])? {
            Some(header) => {
                tcp.read_exact(&mut buf[..header.len])
                    .await
                    .map_err(|_| HeaderError::Malformed("connection failed in the header"))?;
                return Ok(header.source);
            }
            // The rest of the header is on its way (peek returns what is
            // there at once, so wait a little before looking again; the
            // handshake timeout bounds the whole).
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Requests in flight on one connection, and when the last one ended.
///
/// Plain atomics: a request's start and end touch two counters and wake no
/// one; the idle timer of [`serve`] looks at them only when it fires.
struct Activity {
    /// Requests whose response body is not done yet.
    in_flight: AtomicUsize,
    /// When the in-flight count last fell to zero, in milliseconds since `epoch`.
    last_end_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long until the connection has been idle for `timeout`; zero when
    /// it has, `timeout` while a request is in flight.
    fn idle_in(&self, timeout: Duration) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return timeout;
        }
        let idle_for = self
            .now_ms()
            .saturating_sub(self.last_end_ms.load(Ordering::Acquire));
        timeout.saturating_sub(Duration::from_millis(idle_for))
    }
}

/// Counts one request as in flight until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The end time first: a timer that sees the count at zero must also
        // see a time no older than this request's end.
        self.0
            .last_end_ms
            .fetch_max(self.0.now_ms(), Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    body: ProxyBody,
    _guard: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket holding its slot of the connection cap until it is dropped.
struct Slotted<T> {
    io: T,
    _slot: ConnectionSlot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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
}
