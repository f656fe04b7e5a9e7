//! The `/metrics` listener: its own address (loopback by default), plain
//! HTTP or TLS, serving the proxy's [`Metrics`] in the OpenMetrics text
//! format, and `/livez` (the proxy listener still accepts) and `/readyz`
//! (and every authenticator is ready). Probes sent here cannot be starved
//! by the proxy listener's caps (`limits.maxConnections` and the rest),
//! which unauthenticated clients can fill; this listener has small caps of
//! its own, per address and in all, so that one client cannot fill it
//! either. Any other path is a 404 `Status`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxy_core::observe::metrics::{Metrics, CONTENT_TYPE};
use proxy_core::status::{Reason, Status};
use proxy_core::ProxyBody;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{resolve, MetricsConfig};
use crate::start_error::StartError;

impl MetricsConfig {
    /// Binds the address and serves `metrics` in the background, and
    /// `/livez` and `/readyz` from `health`. With `tls`, the certificate and
    /// key are re-read as `reloading` says.
    pub async fn start(
        &self,
        base: &Path,
        metrics: Metrics,
        health: Health,
        reloading: &proxy_core::config::Reloading,
    ) -> Result<MetricsListener, StartError> {
        let tls = match &self.tls {
            Some(tls) => {
                let cert = proxy_core::reload::tls::ReloadingCert::watch(
                    resolve(base, &tls.cert_file),
                    resolve(base, &tls.key_file),
                    reloading.interval,
                    reloading.reporter.clone(),
                )
                .map_err(|source| StartError::Tls {
                    field: "metrics.tls",
                    source,
                })?;
                let provider = proxy_core::tls::provider();
                let mut config = rustls::ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| StartError::Tls {
                        field: "metrics.tls",
                        source: e.into(),
                    })?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(cert));
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Some(Arc::new(config))
            }
            None => None,
        };
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: self.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.listen,
            source,
        })?;
        tracing::info!(%addr, "serving /metrics");
        let task = tokio::spawn(accept_loop(listener, tls, metrics, health));
        Ok(MetricsListener { addr, task })
    }
}

/// The running metrics listener; stops when dropped.
#[derive(Debug)]
pub struct MetricsListener {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsListener {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `/livez` and `/readyz` answer from: the proxy listener's accept
/// loop (alive while it runs) and the authentication chain (ready when
/// every authenticator is).
#[derive(Clone)]
pub struct Health {
    readiness: crate::readiness::Readiness,
    accepting: tokio::task::AbortHandle,
}

impl Health {
    /// Health of the listener whose accept loop is `accepting`, ready as
    /// `readiness` says.
    pub fn new(
        readiness: crate::readiness::Readiness,
        accepting: tokio::task::AbortHandle,
    ) -> Self {
        Health {
            readiness,
            accepting,
        }
    }
}

fn answer(metrics: &Metrics, health: &Health, req: &Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/livez" | "/readyz") {
        return Status::failure(
            StatusCode::NOT_FOUND,
            Reason::BadRequest,
            "see /metrics, /livez or /readyz",
        )
        .into_response();
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Status::failure(
            StatusCode::METHOD_NOT_ALLOWED,
            Reason::BadRequest,
            "only GET and HEAD",
        )
        .into_response();
    }
    // Alive while the proxy listener accepts; ready when it is alive and
    // every authenticator is ready.
    let alive = !health.accepting.is_finished();
    match path {
        "/livez" if alive => return crate::plain::plain(StatusCode::OK, "ok"),
        "/livez" => {
            return crate::plain::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not alive: the listener stopped accepting",
            )
        }
        "/readyz" if !alive => {
            return crate::plain::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the listener stopped accepting",
            )
        }
        "/readyz" => {
            let (status, text) = health.readiness.answer();
            return crate::plain::plain_owned(status, text);
        }
        _ => {}
    }
    let mut response = Response::new(ProxyBody::full(metrics.encode()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Most connections the metrics listener holds at once, from one address
/// and in all: Prometheus and the kubelet need a few. A client past its
/// address's cap is refused at once; past the total, the oldest connection
/// is closed for the new one, so clients from many addresses cannot hold
/// every slot against the kubelet's probes either.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 8;
/// See [`MAX_CONNECTIONS_PER_ADDRESS`].
const MAX_CONNECTIONS: usize = 128;
/// The longest a metrics connection lives (scrapers open another), and the
/// longest a request's head may take to arrive.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);
/// See [`CONNECTION_LIFETIME`].
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections held, by address and in all.
#[derive(Default)]
struct Held {
    by_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// The connections' tasks, oldest first (finished ones pruned).
    open: std::sync::Mutex<std::collections::VecDeque<tokio::task::AbortHandle>>,
}

/// One held connection, given back when dropped.
struct Slot {
    held: Arc<Held>,
    address: std::net::IpAddr,
}

impl Held {
    /// A slot for a connection from `address`, unless a cap is reached.
    fn take(self: &Arc<Self>, address: std::net::IpAddr) -> Option<Slot> {
        let mut map = self.by_address.lock().ok()?;
        let total: usize = map.values().sum();
        let mine = map.entry(address).or_default();
        if *mine >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        if total >= MAX_CONNECTIONS {
            self.close_oldest();
        }
        *mine += 1;
        Some(Slot {
            held: self.clone(),
            address,
        })
    }
}

impl Held {
    /// Notes the task serving a new connection.
    fn opened(&self, task: tokio::task::AbortHandle) {
        if let Ok(mut open) = self.open.lock() {
            if open.len() >= 2 * MAX_CONNECTIONS {
                open.retain(|t| !t.is_finished());
            }
            open.push_back(task);
        }
    }

    /// Closes the oldest connection still open.
    fn close_oldest(&self) {
        if let Ok(mut open) = self.open.lock() {
            while let Some(task) = open.pop_front() {
                if !task.is_finished() {
                    task.abort();
                    return;
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.held.by_address.lock() {
            if let Some(count) = map.get_mut(&self.address) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&self.address);
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Metrics,
    health: Health,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let held = Arc::new(Held::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = held.take(peer.ip()) else {
            tracing::debug!(%peer, "metrics listener: connection refused at its cap");
            continue;
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        let acceptor = acceptor.clone();
        let task = tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&metrics, &health, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder.http2().max_concurrent_streams(8);
            let serve = async {
                match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await
                        {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            _ => Ok(()),
                        }
                    }
                    None => builder.serve_connection(TokioIo::new(tcp), service).await,
                }
            };
            if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME, serve).await {
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
        });
        held.opened(task.abort_handle());
    }
}
