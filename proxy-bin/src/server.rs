//! The TLS listener: accepts connections (HTTP/1.1 and HTTP/2 by ALPN),
//! answers `/livez` and `/readyz` itself, hands every other request to the
//! proxy stack, and drains in-flight requests on shutdown.
//!
//! Connections are served on serving threads (`limits.workers`, one per CPU
//! by default), each a single-threaded event loop. The accept loop hands
//! each accepted socket to the thread with the fewest open connections; the
//! thread then serves it from the TLS handshake to the close, and the
//! upstream client keeps that thread's requests on upstream connections the
//! thread opened ([`proxy_core::worker`]). A request therefore never moves
//! between threads, and no thread is woken on another's behalf.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use proxy_core::credential::{ClientAddr, ClientCertificate};
use proxy_core::forwarded::{Origin, TrustedProxies};
use proxy_core::impersonate::{nested, ForwardMode, HeaderNames};
use proxy_core::observe::{metrics::Metrics, Observe, ObserveLayer};
use proxy_core::refusal::{read_before_refusal, read_some};
use proxy_core::status::{Reason, Status};
use proxy_core::tunnel::budget::{AgentConnections, ConnectionSlot};
use proxy_core::upstream::{Backend, Upstream};
use proxy_core::{Chain, ImpersonateLayer, NestedImpersonationLayer, ProxyBody, ProxyStack};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tower_service::Service;

use crate::config::FileConfig;
use crate::connection;
pub use crate::connection::Handler;
use crate::limits::Limits;
use crate::plain::{plain, plain_owned};
use crate::reload::{ConfigSource, LiveAuthentication};
pub use crate::start_error::StartError;
use crate::token_endpoint::TokenEndpoint;
use proxy_core::reload::{FileWatch, ReloadReporter};

/// Least time between two "connection cap reached" warnings.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Whether a listener with `tls.clientCAFile` set requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Verified when presented; callers without one are served (the proxy:
    /// they may authenticate otherwise).
    Optional,
    /// The TLS handshake fails without a verified client certificate (the
    /// webhook: only kube-apiserver may ask).
    Required,
}

/// A listener's TLS: its rustls configuration and, with a client CA, what
/// each request re-checks its connection's client certificate with (the
/// CAs in force and the time now, as kube-apiserver checks on every request).
#[derive(Clone)]
pub struct ListenerTls {
    /// The rustls configuration of every handshake.
    pub config: Arc<rustls::ServerConfig>,
    /// Present with `tls.clientCAFile`.
    pub client_certs: Option<proxy_core::reload::tls::ClientCertRecheck>,
}

impl From<Arc<rustls::ServerConfig>> for ListenerTls {
    /// A configuration whose client certificates (if any) are not re-checked.
    fn from(config: Arc<rustls::ServerConfig>) -> Self {
        ListenerTls {
            config,
            client_certs: None,
        }
    }
}

/// Builds the listener's rustls configuration: ALPN h2 and http/1.1, and
/// optional (not required) client certificates verified against a CA.
pub fn listener_tls(config: &FileConfig, base: &Path) -> Result<ListenerTls, StartError> {
    listener_tls_with(config, base, ClientCertificates::Optional)
}

/// Like [`listener_tls`], choosing whether client certificates are required
/// when `tls.clientCAFile` is set.
pub fn listener_tls_with(
    config: &FileConfig,
    base: &Path,
    client_certificates: ClientCertificates,
) -> Result<ListenerTls, StartError> {
    listener_tls_reporting(config, base, client_certificates, ReloadReporter::default())
}

/// Like [`listener_tls_with`], reporting reloads of the certificate, key and
/// client CA (re-read every `reloadInterval`) to `reporter`.
///
/// Must be called within a tokio runtime: the files are watched for as long
/// as the configuration is in use, and each new handshake gets the
/// certificate and client CA in force (established connections keep theirs).
pub fn listener_tls_reporting(
    config: &FileConfig,
    base: &Path,
    client_certificates: ClientCertificates,
    reporter: ReloadReporter,
) -> Result<ListenerTls, StartError> {
    use proxy_core::reload::tls::{ReloadingCert, ReloadingClientVerifier};
    use proxy_core::tls;
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let interval = config.reload_interval();
    let cert = ReloadingCert::watch(
        resolve(&config.tls.cert_file),
        resolve(&config.tls.key_file),
        interval,
        reporter.clone(),
    )
    .map_err(|source| StartError::Tls {
        field: "tls.certFile, tls.keyFile",
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls {
            field: "tls",
            source: e.into(),
        })?;
    let mut client_certs = None;
    let builder = match &config.tls.client_ca_file {
        Some(ca) => {
            let verifier = ReloadingClientVerifier::watch(
                resolve(ca),
                client_certificates == ClientCertificates::Required,
                interval,
                reporter,
            )
            .map_err(|source| StartError::Tls {
                field: "tls.clientCAFile",
                source,
            })?;
            client_certs = Some(verifier.recheck());
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(cert));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The cipher suite is the proxy's choice (AES-128-GCM first, see
    // `proxy_core::tls::provider`), as kube-apiserver's Go TLS stack chooses it.
    server.ignore_client_order = true;
    Ok(ListenerTls {
        config: Arc::new(server),
        client_certs,
    })
}

/// What the listener serves.
#[derive(Clone)]
pub struct Proxy {
    /// The observe → authenticate → impersonate → forward stack.
    pub stack: Observe<ProxyStack>,
    /// The metrics, when the `metrics:` section is set.
    pub metrics: Option<Metrics>,
    /// The chain, asked by the token endpoint.
    pub chain: Chain,
    /// What `/readyz` answers (the chain, and the API servers).
    pub readiness: crate::readiness::Readiness,
    /// Issues tokens at [`TOKEN_PATH`] when configured.
    pub token_endpoint: Option<Arc<TokenEndpoint>>,
    /// Serves a kubeconfig for this proxy at
    /// [`crate::kubeconfig_endpoint::KUBECONFIG_PATH`].
    pub kubeconfig: Arc<crate::kubeconfig_endpoint::KubeconfigEndpoint>,
    /// Largest body read at [`TOKEN_PATH`] (`limits.maxRequestBodyBytes`).
    pub max_request_body_bytes: usize,
    /// `trustedProxies`: whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// `proxyProtocol`: connections from `trusted_proxies` start with a
    /// PROXY protocol header.
    pub proxy_protocol: bool,
    /// The chain behind `chain`, swapped when the configuration changes.
    pub live: LiveAuthentication,
    /// Registers agents at [`proxy_core::tunnel::CONNECT_PATH`] when a
    /// cluster is `via: agent`.
    pub agents: Option<Arc<proxy_core::tunnel::AgentEndpoint>>,
}

pub use crate::token_endpoint::TOKEN_PATH;

impl Proxy {
    /// Builds the stack from a validated configuration. Call within a runtime.
    pub fn from_config(config: &FileConfig, base: &Path) -> Result<Proxy, StartError> {
        // The audit log learns who authenticated from the instrumented chain.
        let metrics = (config.metrics.is_some() || config.audit.is_some()).then(Metrics::new);
        let (live, chain) = LiveAuthentication::build(config, base, metrics.clone())?;
        let issuer = live.issuer.clone();
        let mut observe = ObserveLayer::new();
        if let Some(metrics) = &metrics {
            observe = observe.with_metrics(metrics.clone());
        }
        if let Some(audit) = &config.audit {
            observe = observe.with_audit(audit.start(base)?);
        }
        let settings = config.caller_impersonation.settings();
        let front_proxy = match config.identity_headers.mode {
            ForwardMode::Impersonate => None,
            ForwardMode::FrontProxy => Some(
                config
                    .identity_headers
                    .front_proxy_names("identityHeaders")
                    .map_err(|p| StartError::Refused {
                        field: "identityHeaders",
                        message: p.to_string(),
                    })?,
            ),
        };
        // A caller's own impersonation, reviewed by the API server behind
        // `backend` (the cluster's own way there) when the mode allows it.
        let nested_over = |backend: Backend<Full<Bytes>>| match settings.mode {
            nested::Mode::Deny => NestedImpersonationLayer::deny(),
            nested::Mode::Authorize => {
                let reviewer = proxy_core::impersonate::review::Reviewer::over(
                    backend,
                    &settings,
                    front_proxy
                        .clone()
                        .unwrap_or_else(HeaderNames::impersonation),
                )
                .with_rbac(config.identity_headers.rbac);
                if let Some(metrics) = &metrics {
                    metrics.observe_reviews(reviewer.counters().clone());
                }
                NestedImpersonationLayer::authorize(reviewer)
            }
        };
        // One client, pool, reviewer and readiness check per API server.
        let mut checks = crate::readiness::Upstreams::default();
        let mut cluster = |section: &str, upstream: &proxy_core::config::UpstreamConfig| {
            let in_section = |source| StartError::Section {
                section: section.to_owned(),
                source,
            };
            let options = upstream.to_options(section, base)?;
            let client = Upstream::new(options.clone()).map_err(in_section)?;
            if let Some(ca) = upstream.ca_file_path(base) {
                client
                    .watch_ca_file(
                        ca,
                        config.reload_interval(),
                        live.reloading.reporter.clone(),
                    )
                    .map_err(in_section)?;
            }
            if let Some(metrics) = &metrics {
                metrics.observe_upstream(client.counters().clone());
            }
            checks
                .watch(
                    section,
                    options.clone(),
                    client.counters(),
                    front_proxy.is_none(),
                    upstream.ca_file_path(base).map(|ca| {
                        (
                            ca,
                            config.reload_interval(),
                            live.reloading.reporter.clone(),
                        )
                    }),
                )
                .map_err(in_section)?;
            let nested = match settings.mode {
                nested::Mode::Deny => NestedImpersonationLayer::deny(),
                nested::Mode::Authorize => {
                    nested_over(Upstream::new(options).map_err(in_section)?.into())
                }
            };
            Ok::<_, StartError>(proxy_core::Cluster {
                nested,
                upstream: client.into(),
            })
        };
        let default = match config.default_upstream() {
            Some(upstream) => Some(cluster("upstream", &upstream)?),
            None => None,
        };
        let mut named = Vec::new();
        let mut agents =
            proxy_core::tunnel::AgentEndpoint::with_limits(config.limits.agent_tunnels.limits());
        for (i, upstream) in config.named_upstreams().iter().enumerate() {
            let section = format!("upstreams[{i}]");
            let name = upstream.name.clone().ok_or_else(|| StartError::Refused {
                field: "upstreams[].name",
                message: format!("{section} has no name"),
            })?;
            if upstream.via == proxy_core::config::Via::Agent {
                named.push((
                    name.clone(),
                    crate::agent::agent_cluster(
                        &mut agents,
                        &section,
                        &name,
                        upstream,
                        config,
                        base,
                        &nested_over,
                    )?,
                ));
                continue;
            }
            named.push((name, cluster(&section, upstream)?));
        }
        let agents = (!agents.is_empty()).then(|| Arc::new(agents));
        if let (Some(metrics), Some(agents)) = (&metrics, &agents) {
            metrics.register_tunnels(agents.metrics());
        }
        let impersonate = match front_proxy {
            Some(names) => ImpersonateLayer::front_proxy(names),
            None => ImpersonateLayer::new(),
        };
        let mut authn = proxy_core::AuthnLayer::new(chain.clone());
        if config.authentication.ldap.is_some() {
            // kubectl and browsers answer a Basic challenge with username/password.
            authn = authn.with_challenges([
                http::HeaderValue::from_static("Basic realm=\"authproxy\""),
                http::HeaderValue::from_static("Bearer realm=\"authproxy\""),
            ]);
        }
        let mut long_running =
            proxy_core::layer::LongRunningLayer::new(config.limits.long_running_limits());
        if let Some(recording) = &config.session_recording {
            let recorder = proxy_core::observe::sessions::SessionRecorder::new(recording, base);
            if let Some(metrics) = &metrics {
                metrics.observe_recordings(recorder.counters().clone());
            }
            long_running = long_running.with_recording(recorder);
        }
        if !named.is_empty() {
            observe = observe.with_routing(proxy_core::observe::Routing::Clusters);
        }
        let stack = tower_layer::Layer::layer(
            &observe,
            if named.is_empty() {
                let Some(default) = default else {
                    return Err(StartError::Refused {
                        field: "upstream",
                        message: "no upstream is configured".into(),
                    });
                };
                proxy_core::proxy_stack_with(
                    authn,
                    long_running,
                    default.nested,
                    impersonate,
                    default.upstream,
                )
            } else {
                proxy_core::proxy_stack_routed(authn, long_running, impersonate, default, named)?
            },
        );
        if let (Some(metrics), Some(issuer)) = (&metrics, &issuer) {
            metrics.observe_refreshes(issuer.refresher().counters().clone());
        }
        let token_endpoint = match (issuer, &config.authentication.issued_tokens) {
            (Some(issuer), Some(settings)) => Some(Arc::new(TokenEndpoint::new(
                chain.clone(),
                issuer,
                settings,
            ))),
            _ => None,
        };
        if let (Some(metrics), Some(endpoint)) = (&metrics, &token_endpoint) {
            metrics.observe_throttle("token-exchange", endpoint.throttle_counters());
        }
        let kubeconfig = crate::kubeconfig_endpoint::KubeconfigEndpoint::new(config, base)
            .map_err(|message| StartError::Refused {
                field: "kubeconfig",
                message,
            })?;
        Ok(Proxy {
            kubeconfig: Arc::new(kubeconfig),
            stack,
            metrics,
            readiness: crate::readiness::Readiness::new(chain.clone(), checks)
                .with_revocation(live.revocation.clone()),
            chain,
            live,
            token_endpoint,
            max_request_body_bytes: config.limits.max_request_body_bytes,
            trusted_proxies: Arc::new(config.trusted_proxy_blocks().map_err(|(i, message)| {
                StartError::Refused {
                    field: "trustedProxies",
                    message: format!("[{i}]: {message}"),
                }
            })?),
            proxy_protocol: config.proxy_protocol,
            agents,
        })
    }

    async fn serve_request(
        mut self,
        mut req: Request<Incoming>,
        cert: Option<ClientCertificate>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        match req.uri().path() {
            "/livez" => return Ok(plain(StatusCode::OK, "ok")),
            crate::kubeconfig_endpoint::KUBECONFIG_PATH if req.method() == http::Method::GET => {
                let host = req
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| {
                        req.headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned)
                    });
                return Ok(self.kubeconfig.answer(host.as_deref()));
            }
            "/readyz" => {
                let (status, text) = self.readiness.answer();
                return Ok(plain_owned(status, text));
            }
            _ => {}
        }
        if let Some(cert) = cert {
            req.extensions_mut().insert(cert);
        }
        // Where the request came from, once, for limits, audit and
        // X-Forwarded-For (see proxy_core::forwarded).
        let mut origin = Origin::new(peer.ip(), &self.trusted_proxies);
        if req
            .extensions()
            .get::<crate::connection::ThroughL4Balancer>()
            .is_some()
        {
            origin.peer_trusted = false;
        }
        if let Some(client) = origin.client(req.headers(), &self.trusted_proxies) {
            req.extensions_mut().insert(ClientAddr(client));
        }
        req.extensions_mut().insert(origin);
        if req.uri().path() == proxy_core::tunnel::CONNECT_PATH {
            // Agents prove their cluster with its registration token, not as users.
            return Ok(match &self.agents {
                Some(agents) => agents.accept(req, peer),
                None => {
                    read_some(req.into_body()).await;
                    Status::failure(
                        StatusCode::NOT_FOUND,
                        Reason::NotFound,
                        "no cluster is reached through agents",
                    )
                    .into_response()
                }
            });
        }
        let agent_only = req
            .extensions()
            .get::<ConnectionSlot>()
            .is_some_and(ConnectionSlot::is_agent_only);
        if agent_only {
            return Ok(crate::agent::agents_only());
        }
        if req.uri().path() == crate::revocation::REVOCATIONS_PATH {
            return Ok(match &self.live.revocation {
                Some(revocation) => {
                    let (revocation, chain) = (revocation.clone(), self.chain.clone());
                    let service = Endpoint(move |req| -> Answer {
                        let (revocation, chain) = (revocation.clone(), chain.clone());
                        Box::pin(async move { revocation.answer(req, &chain).await })
                    });
                    return self.stack.around(service).call(req).await;
                }
                None => {
                    read_some(req.into_body()).await;
                    Status::failure(
                        StatusCode::NOT_FOUND,
                        Reason::NotFound,
                        "revocation is not enabled (issuedTokens.revocation)",
                    )
                    .into_response()
                }
            });
        }
        if req.uri().path() == TOKEN_PATH {
            return Ok(match &self.token_endpoint {
                Some(endpoint) => {
                    // Through the observe layer: counted, audited, failed logins logged.
                    let (endpoint, max_body_bytes, metrics) = (
                        endpoint.clone(),
                        self.max_request_body_bytes,
                        self.metrics.clone(),
                    );
                    let service = Endpoint(move |req| -> Answer {
                        let (endpoint, metrics) = (endpoint.clone(), metrics.clone());
                        Box::pin(async move {
                            let response = endpoint.answer(req, max_body_bytes).await;
                            if let (Some(metrics), true) =
                                (&metrics, response.status().is_success())
                            {
                                metrics.issued_token();
                            }
                            response
                        })
                    });
                    return self.stack.around(service).call(req).await;
                }
                None => {
                    read_some(req.into_body()).await;
                    Status::failure(
                        StatusCode::NOT_FOUND,
                        Reason::BadRequest,
                        "issued tokens are not enabled",
                    )
                    .into_response()
                }
            });
        }
        // A refusal made before the body was read goes out once some of it
        // was: see proxy_core::refusal.
        let response = self.stack.call(req).await?;
        Ok(read_before_refusal::<Incoming>(response).await)
    }
}

/// A future answering one request to an endpoint served beside the stack.
type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>>;

/// An endpoint served beside the stack (token exchange, revocation) as a
/// service, so the observe layer can wrap it: counted, audited, failed
/// logins logged.
#[derive(Clone)]
struct Endpoint<F>(F);

impl<F> Service<Request<Incoming>> for Endpoint<F>
where
    F: Fn(Request<Incoming>) -> Answer,
{
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
        let answer = (self.0)(req);
        Box::pin(async move { Ok(answer.await) })
    }
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

    fn proxy_protocol_from(&self) -> Option<Arc<TrustedProxies>> {
        self.proxy_protocol.then(|| self.trusted_proxies.clone())
    }

    fn agent_connections(&self) -> Option<AgentConnections> {
        self.agents.as_ref().map(|a| a.connections().clone())
    }
}

/// A proxy listening in the background.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    metrics: Option<crate::metrics_listener::MetricsListener>,
    config_watch: Option<FileWatch>,
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

    /// Serves `metrics` as configured, and `/livez` and `/readyz` (this
    /// server's accept loop, and `readiness`) beside them, for as long as
    /// this server runs.
    pub async fn serve_metrics(
        &mut self,
        config: Option<&crate::config::MetricsConfig>,
        base: &Path,
        metrics: Option<Metrics>,
        readiness: crate::readiness::Readiness,
        reloading: &proxy_core::config::Reloading,
    ) -> Result<(), StartError> {
        if let (Some(config), Some(metrics)) = (config, metrics) {
            let health = crate::metrics_listener::Health::new(readiness, self.task.abort_handle());
            self.metrics = Some(config.start(base, metrics, health, reloading).await?);
        }
        Ok(())
    }

    /// Re-reads the configuration file as `live` says for as long as this
    /// server runs (see [`crate::reload`]).
    pub fn watch_config(
        &mut self,
        live: &LiveAuthentication,
        source: ConfigSource,
        started: &FileConfig,
    ) {
        self.config_watch = Some(live.watch(source, started));
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
    start_from(config, base, None).await
}

/// Like [`start`] for the configuration file `source` (already loaded as
/// `config`): its `authentication` section and `authenticationConfigFile`
/// are re-read as they change, and on SIGHUP (see [`crate::reload`]).
pub async fn start_watching(
    config: &FileConfig,
    source: ConfigSource,
) -> Result<RunningServer, StartError> {
    let base = config.base_dir(&source.path);
    start_from(config, &base, Some(source)).await
}

async fn start_from(
    config: &FileConfig,
    base: &Path,
    source: Option<ConfigSource>,
) -> Result<RunningServer, StartError> {
    let proxy = Proxy::from_config(config, base)?;
    let live = proxy.live.clone();
    let tls = listener_tls_reporting(
        config,
        base,
        ClientCertificates::Optional,
        live.reloading.reporter.clone(),
    )?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let timeout = config.shutdown_timeout.unwrap_or(Duration::from_secs(30));
    let (metrics, readiness) = (proxy.metrics.clone(), proxy.readiness.clone());
    let current = proxy.live.chain.current();
    let authenticators: Vec<&str> = current.authenticators().iter().map(|a| a.name()).collect();
    let upstreams: Vec<String> = config
        .default_upstream()
        .into_iter()
        .map(|u| u.url.unwrap_or_else(|| "in-cluster".into()))
        .chain(config.named_upstreams().iter().map(|u| {
            let name = u.name.as_deref().unwrap_or("?");
            match (&u.via, &u.url) {
                (proxy_core::config::Via::Agent, _) => format!("{name}=via agent"),
                (_, Some(url)) => format!("{name}={url}"),
                (_, None) => name.to_owned(),
            }
        }))
        .collect();
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
        upstreams = %upstreams.join(", "),
        authenticators = %authenticators.join(", "),
        "authproxy starting"
    );
    let mut running = serve_with_limits(listener, tls, proxy, config.limits.clone(), timeout)?;
    running
        .serve_metrics(
            config.metrics.as_ref(),
            base,
            metrics,
            readiness,
            &live.reloading,
        )
        .await?;
    if let Some(source) = source {
        running.watch_config(&live, source, config);
    }
    Ok(running)
}

/// Serves `proxy` on an already bound listener in the background, with the
/// default [`Limits`].
pub fn serve<H: Handler>(
    listener: TcpListener,
    tls: impl Into<ListenerTls>,
    proxy: H,
    shutdown_timeout: Duration,
) -> Result<RunningServer, StartError> {
    serve_with_limits(
        listener,
        tls.into(),
        proxy,
        Limits::default(),
        shutdown_timeout,
    )
}

/// Serves `handler` on an already bound listener in the background, with
/// `limits` (validated) on every connection.
pub fn serve_with_limits<H: Handler>(
    listener: TcpListener,
    tls: ListenerTls,
    handler: H,
    limits: Limits,
    shutdown_timeout: Duration,
) -> Result<RunningServer, StartError> {
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(
        listener,
        tls,
        handler,
        limits,
        rx,
        shutdown_timeout,
    ));
    tracing::info!(%addr, "listening");
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        task,
        metrics: None,
        config_watch: None,
    })
}

/// A connection handed to a serving thread, with its slot of the cap and its
/// place in that thread's count of open connections.
type Handoff = (
    std::net::TcpStream,
    SocketAddr,
    ConnectionSlot,
    OpenConnection,
);

/// One serving thread, as the accept loop sees it.
struct Worker {
    connections: mpsc::UnboundedSender<Handoff>,
    /// Its connections now open.
    open: Arc<AtomicUsize>,
}

/// Starts `count` serving threads, each a single-threaded event loop that
/// serves the connections handed to it from start to close. They stop when
/// `exit`'s sender is gone; connections still open then are closed.
fn start_workers<H: Handler>(
    count: usize,
    header_read_timeout: Duration,
    shared: &Arc<connection::Listener<H>>,
    stopping: &watch::Sender<bool>,
    exit: &watch::Sender<()>,
) -> std::io::Result<Vec<Worker>> {
    let mut workers = Vec::with_capacity(count);
    for index in 0..count {
        let (connections, mut handed) = mpsc::unbounded_channel::<Handoff>();
        let open = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = shared.clone();
        let stopping = stopping.subscribe();
        let mut exit = exit.subscribe();
        std::thread::Builder::new()
            .name(format!("authproxy-serve-{index}"))
            .spawn(move || {
                proxy_core::worker::enter(index);
                runtime.block_on(async move {
                    let serve = async move {
                        while let Some((tcp, peer, slot, open)) = handed.recv().await {
                            let tcp = match tcp
                                .set_nonblocking(true)
                                .and_then(|()| TcpStream::from_std(tcp))
                            {
                                Ok(tcp) => tcp,
                                Err(error) => {
                                    tracing::warn!(%peer, %error, "cannot serve an accepted connection");
                                    continue;
                                }
                            };
                            let serving = connection::serve(
                                shared.clone(),
                                tcp,
                                peer,
                                slot,
                                stopping.clone(),
                            );
                            tokio::spawn(async move {
                                serving.await;
                                drop(open);
                            });
                        }
                        // The listener stopped: only the connections' own
                        // receivers keep the drain waiting now.
                        drop(stopping);
                        std::future::pending::<()>().await;
                    };
                    tokio::select! {
                        () = serve => {}
                        () = keep_a_timer_near(header_read_timeout) => {}
                        _ = exit.changed() => {}
                    }
                });
                // Connections still open past the shutdown deadline are dropped here.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        workers.push(Worker { connections, open });
    }
    Ok(workers)
}

/// Never returns; keeps a timer due within a second (or half of
/// `header_read_timeout`) on the thread's event loop.
///
/// hyper starts an HTTP/1 connection's header-read timer afresh for every
/// request. When that timer is the earliest one the event loop knows of,
/// tokio wakes the loop through its eventfd to re-arm the wait: a write and
/// another `epoll_wait` round on every request. With a nearer timer always
/// pending, the header-read timer never is the earliest.
async fn keep_a_timer_near(header_read_timeout: Duration) {
    let period = (header_read_timeout / 2).clamp(Duration::from_millis(1), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Counts one connection of a serving thread while it is open.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: ListenerTls,
    handler: H,
    limits: Limits,
    mut shutdown: oneshot::Receiver<()>,
    shutdown_timeout: Duration,
) {
    let agent_lane = handler.agent_connections();
    let shared = Arc::new(connection::Listener {
        proxy_protocol: handler.proxy_protocol_from(),
        client_certs: tls.client_certs,
        acceptor: tokio_rustls::TlsAcceptor::from(tls.config),
        builder: limits.connection_builder(),
        handshake_timeout: limits.tls_handshake_timeout,
        idle_timeout: limits.idle_timeout,
        handler,
    });
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    // Every connection task holds a receiver: `closed()` is "all connections gone".
    let (stopping, _) = watch::channel(false);
    // Dropped when this loop ends or is aborted: the serving threads stop.
    let (exit, _) = watch::channel(());
    let workers = match start_workers(
        limits.worker_count(),
        limits.header_read_timeout,
        &shared,
        &stopping,
        &exit,
    ) {
        Ok(workers) => workers,
        Err(error) => {
            tracing::error!(%error, "cannot start the serving threads");
            return;
        }
    };
    let mut last_cap_warning: Option<Instant> = None;
    loop {
        if slots.available_permits() == 0
            && !matches!(last_cap_warning, Some(at) if at.elapsed() <= CAP_WARNING_INTERVAL)
        {
            tracing::warn!(
                max = limits.max_connections,
                "connection cap reached: accepting pauses until a connection closes"
            );
            last_cap_warning = Some(Instant::now());
        }
        // Past the client cap, connections for agents only, within theirs.
        let lane_open = agent_lane.is_some() && slots.available_permits() == 0;
        let slot = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => ConnectionSlot::client(slot),
                Err(_) => break,
            },
            slot = crate::agent::agent_place(&agent_lane), if lane_open => match slot {
                Some(slot) => ConnectionSlot::agent_only(slot),
                None => break,
            },
        };
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
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot hand over an accepted connection");
                continue;
            }
        };
        // The serving thread with the fewest open connections takes it.
        let Some(worker) = workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            break;
        };
        // Counted here, not when the thread gets to it: the next connection
        // accepted meanwhile already sees this one.
        let open = OpenConnection::count(&worker.open);
        if worker.connections.send((tcp, peer, slot, open)).is_err() {
            tracing::error!("a serving thread has stopped; the listener stops");
            break;
        }
    }
    drop(listener);
    drop(workers);
    tracing::info!("shutting down: draining in-flight requests");
    stopping.send_replace(true);
    if tokio::time::timeout(shutdown_timeout, stopping.closed())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?shutdown_timeout, "shutdown deadline passed; closing remaining connections");
    }
    drop(exit);
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
