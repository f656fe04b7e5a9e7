//! The `/metrics` listener: its own address (loopback by default), plain
//! HTTP or TLS, serving the proxy's [`Metrics`] in the OpenMetrics text
//! format, and `/livez` and `/readyz` as the proxy's listener answers them.
//! Probes sent here cannot be starved by the proxy listener's caps
//! (`limits.maxConnections` and the rest), which unauthenticated clients
//! can fill. Any other path is a 404 `Status`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use proxy_core::authn::Chain;
use proxy_core::config::Problem;
use proxy_core::observe::metrics::{Metrics, CONTENT_TYPE};
use proxy_core::status::{Reason, Status};
use proxy_core::ProxyBody;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::server::StartError;

/// The default metrics address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9095";

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9095))
}

/// `metrics:`: where `/metrics` is served. Without the section there is no
/// metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Address of the listener (default `127.0.0.1:9095`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve TLS with this certificate and key instead of plain HTTP.
    pub tls: Option<MetricsTls>,
}

/// TLS of the metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl MetricsConfig {
    /// Every problem in the section, `prefix` being its path.
    pub fn validate(&self, prefix: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(tls) = &self.tls {
            for (name, path) in [("certFile", &tls.cert_file), ("keyFile", &tls.key_file)] {
                let path = resolve(base, path);
                if let Err(e) = std::fs::metadata(&path) {
                    problems.push(Problem {
                        field: format!("{prefix}.tls.{name}"),
                        message: format!("cannot read {}: {e}", path.display()),
                    });
                }
            }
        }
        problems
    }

    /// Binds the address and serves `metrics` in the background, and
    /// `/readyz` from `chain`'s readiness. With `tls`, the certificate and
    /// key are re-read as `reloading` says.
    pub async fn start(
        &self,
        base: &Path,
        metrics: Metrics,
        chain: Chain,
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
        let task = tokio::spawn(accept_loop(listener, tls, metrics, chain));
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

fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn answer(metrics: &Metrics, chain: &Chain, req: &Request<Incoming>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/metrics" => {}
        "/livez" => return plain(StatusCode::OK, "ok"),
        "/readyz" if chain.is_ready() => return plain(StatusCode::OK, "ok"),
        "/readyz" => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: authenticators are still loading",
            )
        }
        _ => {
            return Status::failure(
                StatusCode::NOT_FOUND,
                Reason::BadRequest,
                "see /metrics, /livez or /readyz",
            )
            .into_response()
        }
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Status::failure(
            StatusCode::METHOD_NOT_ALLOWED,
            Reason::BadRequest,
            "GET /metrics",
        )
        .into_response();
    }
    let mut response = Response::new(ProxyBody::full(metrics.encode()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Metrics,
    chain: Chain,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, chain) = (metrics.clone(), chain.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&metrics, &chain, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    _ => return,
                },
                None => builder.serve_connection(TokioIo::new(tcp), service).await,
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
        });
    }
}
