//! The TLS listener: accepts connections (HTTP/1.1 and HTTP/2 by ALPN),
//! answers `/livez` and `/readyz` itself, hands every other request to the
//! proxy stack, and drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use proxy_core::credential::{ClientAddr, ClientCertificate, Credential};
use proxy_core::observe::{metrics::Metrics, Observe, ObserveLayer};
use proxy_core::status::{Reason, Status};
use proxy_core::upstream::{Upstream, UpstreamError};
use proxy_core::{Chain, ProxyBody, ProxyStack};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_service::Service;

use crate::config::FileConfig;

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Listener TLS material is unusable.
    #[error("{field}: {source}")]
    Tls {
        /// The config field.
        field: &'static str,
        /// The problem.
        source: proxy_core::tls::TlsError,
    },
    /// Client-certificate verification could not be set up.
    #[error("tls.clientCAFile: {0}")]
    ClientVerifier(String),
    /// An authenticator or the upstream could not be built.
    #[error(transparent)]
    Build(#[from] proxy_core::config::BuildError),
    /// The upstream client could not be built.
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// The audit log could not be opened.
    #[error("audit.path: {0}")]
    Audit(#[from] proxy_core::observe::audit::AuditError),
    /// The listen address could not be bound.
    #[error("listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Builds the listener's rustls configuration: ALPN h2 and http/1.1, and
/// optional (not required) client certificates verified against a CA.
pub fn listener_tls(
    config: &FileConfig,
    base: &Path,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    use proxy_core::tls;
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let chain =
        tls::load_certs(&resolve(&config.tls.cert_file)).map_err(|source| StartError::Tls {
            field: "tls.certFile",
            source,
        })?;
    let key = tls::load_key(&resolve(&config.tls.key_file)).map_err(|source| StartError::Tls {
        field: "tls.keyFile",
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls {
            field: "tls",
            source: e.into(),
        })?;
    let builder = match &config.tls.client_ca_file {
        Some(ca) => {
            let path = resolve(ca);
            let pem = tls::read_file(&path).map_err(|source| StartError::Tls {
                field: "tls.clientCAFile",
                source,
            })?;
            let roots = tls::root_store(&pem, &path.display().to_string()).map_err(|source| {
                StartError::Tls {
                    field: "tls.clientCAFile",
                    source,
                }
            })?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                tls::provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| StartError::ClientVerifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| StartError::Tls {
            field: "tls.keyFile",
            source: e.into(),
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// What the listener serves.
#[derive(Clone)]
pub struct Proxy {
    /// The observe → authenticate → impersonate → forward stack.
    pub stack: Observe<ProxyStack>,
    /// The metrics, when the `metrics:` section is set.
    pub metrics: Option<Metrics>,
    /// The chain, asked for readiness and by the token endpoint.
    pub chain: Chain,
    /// Issues tokens at [`TOKEN_PATH`] when configured.
    pub issuer: Option<Arc<proxy_core::authn::IssuedTokens>>,
}

/// Where a login (Basic, or an OIDC ID token) is exchanged for an issued token.
pub const TOKEN_PATH: &str = "/authproxy/v1/token";

impl Proxy {
    /// Builds the stack from a validated configuration. Call within a runtime.
    pub fn from_config(config: &FileConfig, base: &Path) -> Result<Proxy, StartError> {
        let (chain, issuer) = config
            .authentication
            .build_with_issuer("authentication", base)?;
        // The audit log learns who authenticated from the instrumented chain.
        let metrics = (config.metrics.is_some() || config.audit.is_some()).then(Metrics::new);
        let chain = match &metrics {
            Some(metrics) => metrics.instrument_chain(&chain),
            None => chain,
        };
        let mut observe = ObserveLayer::new();
        if let Some(metrics) = &metrics {
            observe = observe.with_metrics(metrics.clone());
        }
        if let Some(audit) = &config.audit {
            observe = observe.with_audit(audit.start(base)?);
        }
        let upstream = Upstream::new(config.upstream.to_options("upstream", base)?)?;
        let mut authn = proxy_core::AuthnLayer::new(chain.clone());
        if config.authentication.ldap.is_some() {
            // kubectl and browsers answer a Basic challenge with username/password.
            authn = authn.with_challenge(http::HeaderValue::from_static(
                "Basic realm=\"authproxy\", Bearer realm=\"authproxy\"",
            ));
        }
        let stack = tower_layer::Layer::layer(
            &observe,
            tower_layer::Layer::layer(
                &authn,
                tower_layer::Layer::layer(&proxy_core::ImpersonateLayer::new(), upstream),
            ),
        );
        Ok(Proxy {
            stack,
            metrics,
            chain,
            issuer,
        })
    }

    fn is_ready(&self) -> bool {
        self.chain.is_ready()
    }

    async fn serve_request(
        mut self,
        mut req: Request<Incoming>,
        cert: Option<ClientCertificate>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        match req.uri().path() {
            "/livez" => return Ok(plain(StatusCode::OK, "ok")),
            "/readyz" => {
                return Ok(if self.is_ready() {
                    plain(StatusCode::OK, "ok")
                } else {
                    plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: authenticators are still loading",
                    )
                })
            }
            _ => {}
        }
        if let Some(cert) = cert {
            req.extensions_mut().insert(cert);
        }
        req.extensions_mut().insert(ClientAddr(peer.ip()));
        if req.uri().path() == TOKEN_PATH {
            return Ok(match (&self.issuer, req.method()) {
                (Some(issuer), &http::Method::POST) => {
                    // Through the observe layer: counted, audited, failed logins logged.
                    let endpoint = TokenEndpoint {
                        chain: self.chain.clone(),
                        issuer: issuer.clone(),
                        metrics: self.metrics.clone(),
                    };
                    return self.stack.around(endpoint).call(req).await;
                }
                (Some(_), _) => Status::failure(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Reason::BadRequest,
                    "POST to get a token",
                )
                .into_response(),
                (None, _) => Status::failure(
                    StatusCode::NOT_FOUND,
                    Reason::BadRequest,
                    "issued tokens are not enabled",
                )
                .into_response(),
            });
        }
        self.stack.call(req).await
    }
}

/// The token exchange as a service, so the observe layer can wrap it.
#[derive(Clone)]
struct TokenEndpoint {
    chain: Chain,
    issuer: Arc<proxy_core::authn::IssuedTokens>,
    metrics: Option<Metrics>,
}

impl Service<Request<Incoming>> for TokenEndpoint {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let endpoint = self.clone();
        Box::pin(async move {
            let response = issue_token(&endpoint.chain, &endpoint.issuer, &req).await;
            if let (Some(metrics), true) = (&endpoint.metrics, response.status().is_success()) {
                metrics.issued_token();
            }
            Ok(response)
        })
    }
}

/// Exchanges a login (Basic, or a Bearer token that is not one of ours) for
/// an issued token, answered as a kubectl `ExecCredential`.
async fn issue_token(
    chain: &Chain,
    issuer: &proxy_core::authn::IssuedTokens,
    req: &Request<Incoming>,
) -> Response<ProxyBody> {
    let unauthorized = || {
        let mut r = Status::unauthorized().into_response();
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"authproxy\""),
        );
        r
    };
    let credential = match Credential::from_parts(req.headers(), req.extensions()) {
        Ok(Some(credential @ Credential::Basic { .. })) => credential,
        Ok(Some(Credential::Bearer(token)))
            if proxy_core::authn::oidc::peek_issuer(token.expose()).as_deref()
                != Some(issuer.issuer()) =>
        {
            Credential::Bearer(token)
        }
        _ => return unauthorized(),
    };
    let identity = match chain.authenticate(&credential).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return unauthorized(),
        Err(error) => {
            tracing::info!(%error, "token request refused");
            let mut r = error.to_status().into_response();
            if r.status() == StatusCode::UNAUTHORIZED {
                r = unauthorized();
            }
            return r;
        }
    };
    match issuer.issue(identity.user()) {
        Ok((token, expires)) => {
            let body = crate::login::exec_credential(&token, expires);
            let mut r = Response::new(ProxyBody::full(body));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(error) => error.to_status().into_response(),
    }
}

/// A small text response (health endpoints).
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
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
}

impl Handler for Proxy {
    fn handle(
        self,
        req: Request<Incoming>,
        cert: Option<ClientCertificate>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static
    {
        self.serve_request(req, cert, peer)
    }
}

/// A proxy listening in the background.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    metrics: Option<crate::metrics_listener::MetricsListener>,
}

impl RunningServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the `/metrics` listener, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    /// Serves `metrics` as configured, for as long as this server runs.
    pub async fn serve_metrics(
        &mut self,
        config: Option<&crate::metrics_listener::MetricsConfig>,
        base: &Path,
        metrics: Option<Metrics>,
    ) -> Result<(), StartError> {
        if let (Some(config), Some(metrics)) = (config, metrics) {
            self.metrics = Some(config.start(base, metrics).await?);
        }
        Ok(())
    }

    /// Stops accepting, drains in-flight requests (up to the deadline) and waits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops (after [`RunningServer::trigger`] or a failure).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }

    /// A handle that starts the shutdown when sent to (or dropped).
    pub fn trigger(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.shutdown.is_some() {
            self.task.abort();
        }
    }
}

/// Binds `config.listen` and serves the proxy in the background.
pub async fn start(config: &FileConfig, base: &Path) -> Result<RunningServer, StartError> {
    let tls = listener_tls(config, base)?;
    let proxy = Proxy::from_config(config, base)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let timeout = config.shutdown_timeout.unwrap_or(Duration::from_secs(30));
    let metrics = proxy.metrics.clone();
    let mut running = serve(listener, tls, proxy, timeout)?;
    running
        .serve_metrics(config.metrics.as_ref(), base, metrics)
        .await?;
    Ok(running)
}

/// Serves `proxy` on an already bound listener in the background.
pub fn serve<H: Handler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    proxy: H,
    shutdown_timeout: Duration,
) -> Result<RunningServer, StartError> {
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, tls, proxy, rx, shutdown_timeout));
    tracing::info!(%addr, "listening");
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        task,
        metrics: None,
    })
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    proxy: H,
    mut shutdown: oneshot::Receiver<()>,
    shutdown_timeout: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let proxy = proxy.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
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
            let service = hyper::service::service_fn(move |req| {
                proxy.clone().handle(req, cert.clone(), peer)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?shutdown_timeout, "shutdown deadline passed; closing remaining connections");
    }
}

/// A plain serving configuration (no client certificates), ALPN h2 + http/1.1.
pub fn plain_tls(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, proxy_core::tls::TlsError> {
    use proxy_core::tls;
    let mut config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(tls::load_certs(cert)?, tls::load_key(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
