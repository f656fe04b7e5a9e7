//! Forwarding to the API server: pooled connections over rustls that carry
//! the proxy's own credential.
//!
//! - HTTP/2 when the server offers it by ALPN, over a [`pool`] of
//!   connections that grows as the server's per-connection stream limit is
//!   used up (watches hold their stream), each request sent on the `h2`
//!   crate from its own task; else HTTP/1.1 through hyper's client; upgrades
//!   (SPDY/3.1 and WebSocket, as kubectl exec, attach and port-forward use)
//!   go over HTTP/1.1 and are tunnelled both ways.
//! - Request and response bodies stream; nothing is buffered.
//! - The credential is a bearer token read from a file that is re-read as it
//!   rotates (projected service-account tokens), or a client certificate.
//! - Only connecting has a timeout; streaming bodies (watches, logs) do not.
//!   HTTP/2 PINGs detect a dead server under a long, quiet watch.
//! - An unreachable server is a 503 `Status`; other transport failures a 502.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub mod backend;
mod counted;
mod http1;
mod http2;
pub mod pool;
mod replay;
pub mod router;

pub use backend::Backend;
pub use pool::PoolSettings;
pub use replay::{REPLAY_BUDGET, REPLAY_LIMIT};

use replay::Replay;

use crate::refusal::with_unread_body;

use crate::body::{Hold, ProxyBody};
use crate::counters::{Open, Protocol, RetryReason, UpstreamCounters};
use crate::impersonate::is_upgrade;
use crate::reload::tls::ReloadingServerVerifier;
use crate::reload::{watch_file, FileWatch, ReloadReporter};
use crate::status::{Reason, Status};
use crate::tls::{self, TlsError};
use crate::BoxError;

/// How the proxy proves itself to the API server.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum UpstreamCredential {
    /// No bearer token (a client certificate may still be configured).
    #[default]
    None,
    /// A fixed bearer token (from a kubeconfig `token`).
    StaticToken(crate::credential::Secret),
    /// A bearer token read from this file and re-read every `interval`.
    TokenFile {
        /// The token file (e.g. a projected service-account token).
        path: PathBuf,
        /// How often it is re-read.
        interval: Duration,
    },
}

/// Everything needed to reach the API server: start from
/// [`UpstreamOptions::new`] (or `Default`: `https://kubernetes.default.svc`)
/// and add what the server needs with the `with_*` methods, or take them
/// from configuration ([`crate::config::UpstreamConfig::to_options`]) or a
/// kubeconfig ([`crate::kubeconfig::Kubeconfig::upstream`]).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use proxy_core::upstream::{Upstream, UpstreamOptions};
///
/// let options = UpstreamOptions::new("https://127.0.0.1:6443".parse()?)
///     .with_token_file("/var/run/secrets/kubernetes.io/serviceaccount/token", Duration::from_secs(60))
///     .with_connect_timeout(Duration::from_secs(5));
/// # let _ = options;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamOptions {
    /// Base URL (`https://host:port`, optionally with a path prefix).
    pub url: Uri,
    /// PEM CA bundle to verify the server; `None` uses the system bundle.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key presented to the server.
    pub client_identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    /// Name to verify in the server certificate instead of the URL's host.
    pub server_name: Option<String>,
    /// The proxy's bearer token.
    pub credential: UpstreamCredential,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Duration,
    /// How HTTP/2 connections are pooled and kept alive.
    pub pool: PoolSettings,
}

/// How long opening a TCP connection may take unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for UpstreamOptions {
    /// The in-cluster API server's address, the system's CAs, no credential.
    fn default() -> Self {
        UpstreamOptions::new(Uri::from_static("https://kubernetes.default.svc"))
    }
}

impl UpstreamOptions {
    /// The API server at `url`, verified with the system's CAs, with no
    /// credential, a [`DEFAULT_CONNECT_TIMEOUT`] and the default pool.
    pub fn new(url: Uri) -> Self {
        UpstreamOptions {
            url,
            ca_pem: None,
            client_identity: None,
            server_name: None,
            credential: UpstreamCredential::None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool: PoolSettings::default(),
        }
    }

    /// Verifies the server with the CAs of this PEM bundle instead.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate chain and key to the server.
    pub fn with_client_identity(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.client_identity = Some((chain, Arc::new(key)));
        self
    }

    /// Verifies this name in the server's certificate instead of the URL's
    /// host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Proves the proxy with `credential`.
    pub fn with_credential(mut self, credential: UpstreamCredential) -> Self {
        self.credential = credential;
        self
    }

    /// Proves the proxy with the bearer token in `path`, read again every
    /// `interval` (a projected service-account token is renewed in place).
    pub fn with_token_file(mut self, path: impl Into<PathBuf>, interval: Duration) -> Self {
        self.credential = UpstreamCredential::TokenFile {
            path: path.into(),
            interval,
        };
        self
    }

    /// Gives up opening a TCP connection after `timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Pools and keeps alive HTTP/2 connections as `pool` says.
    pub fn with_pool(mut self, pool: PoolSettings) -> Self {
        self.pool = pool;
        self
    }
}

/// A problem building the upstream client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The URL is not usable.
    #[error("upstream url {url}: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The server name override is not a valid DNS name or IP address.
    #[error("upstream serverName {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The token given inline (a kubeconfig's `token`) is unusable.
    #[error("upstream token: {0}")]
    InlineToken(String),
    /// The token file could not be read or is empty.
    #[error("upstream token file {path}: {problem}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The proxy's bearer token, swapped whole when its file changes.
#[derive(Debug, Default)]
pub struct TokenSource {
    current: ArcSwapOption<HeaderValue>,
}

impl TokenSource {
    fn header_from(content: &[u8]) -> Result<HeaderValue, String> {
        let token = std::str::from_utf8(content)
            .map_err(|_| "the token is not UTF-8".to_string())?
            .trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token holds characters a header cannot carry".to_string())?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The current `Authorization` value, if any.
    pub fn current(&self) -> Option<Arc<HeaderValue>> {
        self.current.load_full()
    }
}

/// The upstream service: forwards each request to the API server.
///
/// `B` is the request body type of the server it is embedded in (hyper's
/// `Incoming` for a hyper server). Never fails: transport errors become
/// `Status` responses.
pub struct Upstream<B = hyper::body::Incoming> {
    inner: Arc<Inner<B>>,
}

/// A serving thread's HTTP/1.1 connections.
type Http1Pool<B> = http1::Http1Pool<DrainOnDrop<Replay<B>>>;

struct Inner<B> {
    /// HTTP/2 connections (ALPN offers h2 and http/1.1).
    pool: pool::Pool,
    /// HTTP/1.1 connections, for upgrades and servers without HTTP/2: a
    /// pool per serving thread ([`crate::worker`]), made at the thread's
    /// first request, so a thread's requests reuse the connections it opened.
    http1_pools: Box<[OnceLock<Box<Http1Pool<B>>>]>,
    /// What a new HTTP/1.1 pool is made with.
    http1_connector: http1::Connector,
    target: Uri,
    idle_timeout: Duration,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    path_prefix: String,
    token: Arc<TokenSource>,
    counters: Arc<UpstreamCounters>,
    _watch: Option<FileWatch>,
    /// Verifies the API server's certificate; its CA can be swapped.
    verifier: Arc<ReloadingServerVerifier>,
    ca_watch: std::sync::Mutex<Option<FileWatch>>,
}

impl<B> Inner<B> {
    /// The HTTP/1.1 pool of the current serving thread (threads that were
    /// not marked share the first).
    fn http1_pool(&self) -> &Http1Pool<B>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let index = crate::worker::current().unwrap_or(0) % self.http1_pools.len();
        self.http1_pools[index].get_or_init(|| {
            Box::new(http1::Http1Pool::new(
                self.http1_connector.clone(),
                self.target.clone(),
                self.idle_timeout,
            ))
        })
    }
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            inner: self.inner.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("authority", &self.inner.authority)
            .field("path_prefix", &self.inner.path_prefix)
            .finish()
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Builds the client. Reads the CA, client certificate and token file now;
    /// a token file is then watched, so this must be called within a tokio
    /// runtime when one is configured.
    pub fn new(options: UpstreamOptions) -> Result<Self, UpstreamError> {
        Self::with_counters(options, Arc::new(UpstreamCounters::default()))
    }

    /// Like [`Upstream::new`], counting its connections and requests, and
    /// noting how the API server answers, in `counters` (another client's:
    /// a health check shares what the proxy's own client knows).
    pub fn with_counters(
        options: UpstreamOptions,
        counters: Arc<UpstreamCounters>,
    ) -> Result<Self, UpstreamError> {
        let url_error = |problem| UpstreamError::Url {
            url: without_userinfo(&options.url.to_string()),
            problem,
        };
        // A user name or password in the URL would be logged with it (and
        // is no credential kube takes): the proxy sends its own.
        if options
            .url
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            return Err(url_error(
                "must not hold a user name or password (the proxy sends its token or client certificate)",
            ));
        }
        if options.url.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(url_error("must be an https:// URL"));
        }
        let authority = options
            .url
            .authority()
            .cloned()
            .ok_or_else(|| url_error("has no host"))?;
        if options.url.query().is_some() {
            return Err(url_error("must not have a query"));
        }
        let path_prefix = options.url.path().trim_end_matches('/').to_owned();

        let roots = match &options.ca_pem {
            Some(pem) => tls::root_store(pem, "upstream CA")?,
            None => tls::system_roots()?,
        };
        let identity = options
            .client_identity
            .as_ref()
            .map(|(chain, key)| (chain.clone(), key.clone_key()));
        let server_name = match &options.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| UpstreamError::ServerName(name.clone()))?,
            ),
            None => None,
        };
        let verifier = ReloadingServerVerifier::new(roots)?;
        let make_connector = |http2: bool| -> Result<HttpsConnector<TcpConnector>, UpstreamError> {
            let config = tls::client_config_with_verifier(
                verifier.clone(),
                identity.as_ref().map(|(c, k)| (c.clone(), k.clone_key())),
                // ALPN (h2, http/1.1) is set by the connector builder below.
                &[],
            )?;
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(options.connect_timeout));
            let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only();
            if let Some(name) = &server_name {
                builder =
                    builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()));
            }
            let tcp = proxy_support::read_ahead::Connector::new(http);
            Ok(if http2 {
                builder.enable_all_versions().wrap_connector(tcp)
            } else {
                builder.enable_http1().wrap_connector(tcp)
            })
        };
        let target = Uri::builder()
            .scheme(http::uri::Scheme::HTTPS)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| url_error("has no usable host"))?;
        let pool = pool::Pool::new(
            make_connector(true)?,
            target.clone(),
            options.pool.clone(),
            counters.clone(),
        );
        let http1_connector = counted::CountingConnector::new(
            make_connector(false)?,
            counters.clone(),
            Protocol::Http1,
        );
        let http1_pools = (0..crate::worker::MAX_THREADS)
            .map(|_| OnceLock::new())
            .collect();

        let token = Arc::new(TokenSource::default());
        let watch = match &options.credential {
            UpstreamCredential::None => None,
            UpstreamCredential::StaticToken(secret) => {
                let value = TokenSource::header_from(secret.expose().as_bytes())
                    .map_err(UpstreamError::InlineToken)?;
                token.current.store(Some(Arc::new(value)));
                None
            }
            UpstreamCredential::TokenFile { path, interval } => {
                let token_error = |problem: String| UpstreamError::Token {
                    path: path.clone(),
                    problem,
                };
                let content =
                    crate::reload::read_settled(path).map_err(|e| token_error(e.to_string()))?;
                token.current.store(Some(Arc::new(
                    TokenSource::header_from(&content).map_err(token_error)?,
                )));
                let weak = Arc::downgrade(&token);
                Some(watch_file(
                    path.clone(),
                    *interval,
                    content,
                    move |content| {
                        let value = TokenSource::header_from(content)?;
                        if let Some(token) = weak.upgrade() {
                            token.current.store(Some(Arc::new(value)));
                        }
                        Ok(())
                    },
                ))
            }
        };
        Ok(Upstream {
            inner: Arc::new(Inner {
                pool,
                http1_pools,
                http1_connector,
                target,
                idle_timeout: options.pool.idle_timeout,
                scheme: http::uri::Scheme::HTTPS,
                authority,
                path_prefix,
                token,
                counters,
                _watch: watch,
                verifier,
                ca_watch: std::sync::Mutex::new(None),
            }),
        })
    }

    /// HTTP/2 connections open to the API server now (connecting ones included).
    pub fn http2_connections(&self) -> usize {
        self.inner.pool.connections()
    }

    /// Connections open to the API server and requests in flight on them,
    /// by protocol, for metrics.
    pub fn counters(&self) -> &Arc<UpstreamCounters> {
        &self.inner.counters
    }

    /// The proxy's current upstream token source.
    pub fn token_source(&self) -> &Arc<TokenSource> {
        &self.inner.token
    }

    /// Re-reads the CA bundle `ca` every `interval` while this upstream
    /// lives: connections opened after a change verify the API server against
    /// the new CA; open (pooled) connections stay until they close. A file
    /// without a usable certificate is refused and the CA in force stays.
    /// Replaces an earlier watch. Must be called within a tokio runtime.
    pub fn watch_ca_file(
        &self,
        ca: PathBuf,
        interval: Duration,
        reporter: ReloadReporter,
    ) -> Result<(), UpstreamError> {
        let watch = self.inner.verifier.watch(ca, interval, reporter)?;
        if let Ok(mut slot) = self.inner.ca_watch.lock() {
            *slot = Some(watch);
        }
        Ok(())
    }

    /// The upstream URI for a request: the path, its dot-segments removed,
    /// below the configured path prefix (never climbing out of it).
    fn target(&self, uri: &Uri) -> Result<Uri, String> {
        let inner = &self.inner;
        let path_and_query = match uri.path_and_query() {
            // The common case: no prefix, nothing to resolve. The caller's
            // path and query go on as they are, without being parsed again.
            Some(original)
                if inner.path_prefix.is_empty()
                    && matches!(crate::path::normalize(original.path()),
                        Ok(std::borrow::Cow::Borrowed(p)) if p.len() == original.path().len()) =>
            {
                original.clone()
            }
            original => {
                let text = original.map_or("/", |p| p.as_str());
                let joined =
                    crate::path::join(&inner.path_prefix, text).map_err(|e| e.to_string())?;
                http::uri::PathAndQuery::try_from(joined)
                    .map_err(|_| "request path cannot be forwarded".to_owned())?
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(inner.scheme.clone());
        parts.authority = Some(inner.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|_| "request path cannot be forwarded".to_owned())
    }
}

fn unreachable_status(error: &http1::Http1Error) -> Response<ProxyBody> {
    tracing::warn!(error = %error, source = ?std::error::Error::source(error), "upstream request failed");
    failure_status(error.is_connect())
}

fn failure_status(connect: bool) -> Response<ProxyBody> {
    if connect {
        Status::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::ServiceUnavailable,
            "the upstream API server is unreachable",
        )
        .into_response()
    } else {
        Status::failure(
            StatusCode::BAD_GATEWAY,
            Reason::ServiceUnavailable,
            "the upstream API server closed the connection or answered with a malformed response",
        )
        .into_response()
    }
}

/// Removes hop-by-hop headers from an upstream response (not from a 101).
fn strip_response_hop_headers(headers: &mut http::HeaderMap) {
    let hop = |name: &header::HeaderName| {
        name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::TRAILER
            || name == header::UPGRADE
            || name == header::PROXY_AUTHENTICATE
            || name == "keep-alive"
    };
    http2::remove_matching(headers, hop);
}

impl<B> tower_service::Service<Request<B>> for Upstream<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.target(req.uri()) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(message) => {
                let status = Status::failure(StatusCode::BAD_REQUEST, Reason::BadRequest, message);
                let refusal = with_unread_body(status.into_response(), req.into_body());
                return Box::pin(std::future::ready(Ok(refusal)));
            }
        }
        match self.inner.token.current() {
            Some(token) => {
                req.headers_mut()
                    .insert(header::AUTHORIZATION, HeaderValue::clone(&token));
            }
            None => {
                req.headers_mut().remove(header::AUTHORIZATION);
            }
        }
        let inner = self.inner.clone();
        let counters = inner.counters.health().clone();
        let authority = inner.authority.clone();
        let check = req.extensions().get::<HealthCheck>().copied();
        if is_upgrade(req.headers()) {
            *req.version_mut() = Version::HTTP_11;
            return Box::pin(async move {
                let Ok(response) = forward_upgrade(inner, req).await;
                Ok(judged(&counters, &authority, response, check))
            });
        }
        // Held by the response body here; nothing to carry upstream.
        req.extensions_mut().remove::<Hold>();
        Box::pin(async move {
            let Ok(response) = forward(inner, req).await;
            Ok(judged(&counters, &authority, response, check))
        })
    }
}

/// `url` with any user name and password before its host left out, for
/// messages and logs.
pub fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{host}{tail}")
    } else {
        format!("{scheme}://{host}{tail}")
    }
}

/// Marks a request as the proxy's own check of the API server (a request
/// extension, which no caller can set): its answers say whether the server
/// takes the proxy's credential.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    /// Whether a 401 to this check means the credential is refused (false
    /// where the server answers 401 to the proxy's own requests anyway: a
    /// front proxy's request without a user).
    pub judges_credential: bool,
}

/// The answer as the caller gets it, noted in `health` for readiness and
/// the metrics. A check ([`HealthCheck`]) answered 401 finds the proxy's own
/// credential refused; while it is, a caller's 401 becomes a 503 `Status`
/// that says so (the caller's credential was taken, and they must not be
/// told to log in again). A caller's 401 alone proves nothing (kube passes
/// on what pods and aggregated API servers answer) and passes unchanged. A
/// failure to reach the API server is noted.
fn judged(
    health: &crate::counters::UpstreamHealth,
    authority: &http::uri::Authority,
    response: Response<ProxyBody>,
    check: Option<HealthCheck>,
) -> Response<ProxyBody> {
    if response.extensions().get::<Reason>().is_some() {
        // The proxy's own answer: the API server was not reached, or
        // answered nothing usable.
        if matches!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY
        ) {
            health.note_unreachable();
        }
        return response;
    }
    if response.status() != StatusCode::UNAUTHORIZED {
        health.note_taken();
        return response;
    }
    match check {
        Some(HealthCheck {
            judges_credential: true,
        }) => {
            if health.note_refused() {
                tracing::warn!(
                    upstream = %authority,
                    "the API server refused the proxy's own credential (401): renew the upstream token or client certificate; requests are answered 503 and /readyz fails until it is taken (logged at most once a minute)"
                );
            }
            response
        }
        Some(_) => {
            health.note_reachable();
            response
        }
        None if health.refused() => {
            health.count_refused();
            Status::failure(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ServiceUnavailable,
                "the API server refused the proxy's own credential (not yours); the proxy's administrator must renew it",
            )
            .into_response()
        }
        None => {
            health.note_reachable();
            response
        }
    }
}

/// How many times one request is turned away unprocessed (its connection
/// going away, or its stream refused) before it fails.
const MAX_GONE_AWAY: usize = 3;

/// Forwards a request over a pooled HTTP/2 stream, or over HTTP/1.1 when
/// the server has no HTTP/2.
async fn forward<B>(
    inner: Arc<Inner<B>>,
    req: Request<B>,
) -> Result<Response<ProxyBody>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut req = req.map(Replay::new);
    // A request refused by a connection that got GOAWAY goes again on
    // another; a server restarting sends GOAWAY to every connection.
    let mut gone_away = 0;
    loop {
        match inner.pool.acquire().await {
            Ok(pool::Route::Http2(send, guard)) => match http2::send(send, req).await {
                Ok(response) => {
                    let (mut parts, stream) = response.into_parts();
                    strip_response_hop_headers(&mut parts.headers);
                    let body = crate::body::Http2Body::new(&parts.headers, stream).await;
                    // The stream slot is given back when the body ends or is dropped.
                    let body = ProxyBody::http2(body).with_hold(Hold::new(guard));
                    return Ok(Response::from_parts(parts, body));
                }
                Err(http2::SendError::GoneAway(back)) if gone_away < MAX_GONE_AWAY => {
                    guard.retire();
                    inner.counters.count_retry(RetryReason::GoAway);
                    gone_away += 1;
                    req = back;
                }
                Err(http2::SendError::Refused(back)) if gone_away < MAX_GONE_AWAY => {
                    inner.counters.count_retry(RetryReason::Refused);
                    gone_away += 1;
                    req = back;
                }
                Err(http2::SendError::GoneAway(back) | http2::SendError::Refused(back)) => {
                    // What the caller has not sent yet is read and dropped,
                    // nothing of it kept.
                    let mut body = back.into_body();
                    body.forget();
                    drop(DrainOnDrop::new(body));
                    tracing::warn!("upstream connections keep going away or refusing streams");
                    return Ok(failure_status(false));
                }
                Err(http2::SendError::Failed(error)) => {
                    tracing::warn!(%error, "upstream request failed");
                    return Ok(failure_status(false));
                }
            },
            Ok(pool::Route::Http1) => break,
            Err(error) => {
                tracing::warn!(%error, "upstream request failed");
                // Nothing of the body was sent: it goes unread with the refusal.
                let mut body = req.into_body();
                body.forget();
                return Ok(with_unread_body(failure_status(true), body.into_inner()));
            }
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let (mut response, held) = match send_http1(&inner, req).await {
        Ok(sent) => sent,
        Err(status) => return Ok(status),
    };
    strip_response_hop_headers(response.headers_mut());
    let (parts, body) = crate::body::prefetch_fixed_length(response)
        .await
        .into_parts();
    // The request is counted, and its connection kept from other requests,
    // until the body ends or is dropped.
    Ok(Response::from_parts(parts, body.with_hold(Hold::new(held))))
}

/// What an HTTP/1.1 answer holds until its body ends: the count of requests
/// in flight, and the connection, given back to the pool after.
type Http1Held<B> = (Open, http1::Checkin<DrainOnDrop<Replay<B>>>);

/// Sends `req` on this thread's HTTP/1.1 pool, counted as an HTTP/1.1
/// request in flight while the returned guard lives; a failure comes back
/// as the `Status` to answer with.
async fn send_http1<B>(
    inner: &Inner<B>,
    req: Request<Replay<B>>,
) -> Result<(Response<hyper::body::Incoming>, Http1Held<B>), Response<ProxyBody>>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let in_flight = inner.counters.request(Protocol::Http1);
    let (mut parts, mut body) = req.into_parts();
    // Not sent again over HTTP/1.1.
    body.forget();
    // HTTP/1.1 sends the path in origin form; the pool sets `Host`.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    let req = Request::from_parts(parts, DrainOnDrop::new(body));
    match inner.http1_pool().send(req).await {
        Ok((response, checkin)) => Ok((response, (in_flight, checkin))),
        Err(error) => Err(unreachable_status(&error)),
    }
}

/// Forwards an upgrade request over HTTP/1.1 and, on `101`, joins the
/// caller's upgraded connection to the upstream's, copying both ways.
async fn forward_upgrade<B>(
    inner: Arc<Inner<B>>,
    mut req: Request<B>,
) -> Result<Response<ProxyBody>, Infallible>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let caller = hyper::upgrade::on(&mut req);
    // Kept (a long-running permit, say) until the tunnel closes.
    let hold = req.extensions_mut().remove::<Hold>();
    let recording = req.extensions_mut().remove::<crate::tap::UpgradeTaps>();
    let offered = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (mut response, (in_flight, checkin)) = match send_http1(&inner, req.map(Replay::new)).await
    {
        Ok(sent) => sent,
        Err(status) => return Ok(status),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        strip_response_hop_headers(&mut parts.headers);
        // Counted, and the connection kept, until the refusal's body ends.
        let body = ProxyBody::from(body).with_hold(Hold::new((in_flight, checkin)));
        return Ok(Response::from_parts(parts, body));
    }
    // The connection now belongs to the tunnel.
    checkin.discard();
    let upstream = hyper::upgrade::on(&mut response);
    let taps = match crate::tap::start(recording, response.headers(), &offered) {
        Ok(taps) => taps,
        Err(refusal) => {
            // The server's stream closes with its connection, unused.
            drop(upstream);
            drop((in_flight, hold));
            let mut refusal = refusal.into_response();
            refusal.extensions_mut().insert(crate::status::NotUpstream);
            return Ok(refusal);
        }
    };
    tokio::spawn(async move {
        match tokio::try_join!(caller, upstream) {
            Ok((caller, upstream)) => {
                let (from_client, from_server) = taps.unzip();
                let mut caller = Tapped::new(TokioIo::new(caller), from_client);
                let mut upstream = Tapped::new(TokioIo::new(upstream), from_server);
                if let Err(error) = join_upgraded(&mut caller, &mut upstream).await {
                    tracing::debug!(%error, "upgraded connection ended with an error");
                }
            }
            Err(error) => tracing::warn!(%error, "protocol upgrade failed"),
        }
        drop(hold);
        drop(in_flight);
    });
    let (parts, _body) = response.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

use crate::body::DrainOnDrop;
use crate::tap::Tapped;
use counted::TcpConnector;

/// Bytes read at once from each end of an upgraded stream (exec, attach,
/// port-forward, `kubectl cp`): a few full TLS records (and HTTP/2 frames
/// in a tunnel) per read and write, where tokio's default of 8 KiB made one
/// small record, and one wake-up, for every 8 KiB. Each open stream holds
/// two such buffers.
pub const UPGRADED_COPY_BUFFER: usize = 32 * 1024;

/// How long a way of an upgraded stream (exec, attach, port-forward) whose
/// writes failed goes on reading, and dropping, what its source sends once
/// the other way has ended (or failed too). Reading on keeps the end from being closed with
/// input unread, which would answer with a reset (or, over HTTP/2, a
/// cancel) that throws away the tail of the other way's bytes; a peer that
/// goes on sending after the stream's other end is gone, and after it was
/// sent the end of the stream, is cut this long after.
pub const UPGRADED_LINGER: Duration = Duration::from_secs(60);

/// Copies both ways between the two ends of an upgraded stream until each
/// way has ended (the bytes each way; an error of either, once both ended,
/// the way from `a` to `b` first).
///
/// Each way ends on its own. A way whose writes fail (to an end that has
/// closed: the server that finished while the caller's heartbeats still
/// flowed to it) stops copying, and only that way: the other still carries
/// what it was sent, every byte already on its way, and then closes its end
/// in order. Ending both at the first error would drop the end of a stream
/// that the server had already sent (the tail of an exec's output the
/// caller had not read yet).
///
/// Nor does a way stop reading when its writes fail: it reads on, and drops
/// what it reads (session recording still sees it), until its source ends,
/// or [`UPGRADED_LINGER`] after the other way ended (or failed too). Both ends are
/// therefore closed only once each has finished sending. A TCP socket
/// closed with input unread answers with a reset, which throws away
/// whatever the other end had not read yet; an HTTP/2 stream (the agent
/// tunnel, an HTTP/2 caller) dropped while its peer still sends is
/// cancelled, and the DATA it had queued is thrown away unsent.
pub(crate) async fn join_upgraded<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    join_upgraded_lingering(a, b, UPGRADED_LINGER).await
}

/// [`join_upgraded`] with a linger of `linger`.
async fn join_upgraded_lingering<A, B>(
    a: &mut A,
    b: &mut B,
    linger: Duration,
) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    // Each way says when it is done carrying bytes (ended, or its writes
    // failed); the other lingers from then on.
    let (a_to_b_done, a_to_b_seen) = tokio::sync::watch::channel(false);
    let (b_to_a_done, b_to_a_seen) = tokio::sync::watch::channel(false);
    let (a_to_b, b_to_a) = tokio::join!(
        copy_one_way(&mut a_read, &mut b_write, &a_to_b_done, b_to_a_seen, linger),
        copy_one_way(&mut b_read, &mut a_write, &b_to_a_done, a_to_b_seen, linger)
    );
    match (a_to_b, b_to_a) {
        (Ok(sent), Ok(received)) => Ok((sent, received)),
        (Err(error), _) | (_, Err(error)) => Err(error),
    }
}

/// Copies `from` to `to` until `from` ends, flushing whenever `from` has
/// nothing more at once (an interactive session's keystrokes and echoes are
/// not held back), then shuts `to` down for writing. Once a write or flush
/// to `to` fails, `to` is shut down and what `from` still sends is read and
/// dropped until it ends, or until `linger` after `other_way_done` turned
/// true (see [`join_upgraded`]). `done` is told once this way carries no
/// more bytes: it failed or ended. The bytes copied; the first error, of
/// either end, once `from` has ended or failed.
async fn copy_one_way<R, W>(
    from: &mut R,
    to: &mut W,
    done: &tokio::sync::watch::Sender<bool>,
    mut other_way_done: tokio::sync::watch::Receiver<bool>,
    linger: Duration,
) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; UPGRADED_COPY_BUFFER];
    let mut copied = 0u64;
    // The error of `to`, once it failed: from then on, what is read is dropped.
    let mut failed: Option<std::io::Error> = None;
    // Ready `linger` after the other way is done (at once if its sender is
    // gone); polled only while dropping what is read.
    let mut lingered = std::pin::pin!(async move {
        let _ = other_way_done.wait_for(|done| *done).await;
        tokio::time::sleep(linger).await;
    });
    let read_result = loop {
        let read = if failed.is_some() {
            tokio::select! {
                read = from.read(&mut buf) => read,
                () = &mut lingered => break Ok(()),
            }
        } else {
            // Read what is there now; when nothing is, flush what was
            // written and wait.
            match futures_util::FutureExt::now_or_never(from.read(&mut buf)) {
                Some(read) => read,
                None => {
                    if let Err(error) = to.flush().await {
                        let _ = to.shutdown().await;
                        failed = Some(error);
                        done.send_replace(true);
                        continue;
                    }
                    from.read(&mut buf).await
                }
            }
        };
        let n = match read {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(error) => break Err(error),
        };
        if failed.is_none() {
            match to.write_all(&buf[..n]).await {
                Ok(()) => copied += n as u64,
                Err(error) => {
                    let _ = to.shutdown().await;
                    failed = Some(error);
                    done.send_replace(true);
                }
            }
        }
    };
    let result = match failed {
        Some(error) => Err(error),
        None => {
            let _ = to.flush().await;
            let _ = to.shutdown().await;
            read_result.map(|()| copied)
        }
    };
    done.send_replace(true);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair of loopback sockets.
    async fn socket_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (dialed.unwrap(), accepted.unwrap().0)
    }

    /// The server writes its last bytes and closes while the caller has
    /// not read them; the caller's next bytes reach a closed socket, which
    /// answers with a reset. The caller still gets every byte the server
    /// sent, then the end of the stream.
    #[tokio::test]
    async fn a_failed_way_leaves_the_other_ways_bytes_to_arrive() {
        let got = server_closes_while_the_caller_sends(false).await;
        assert!(
            got.is_ok(),
            "the caller's stream did not end in order: {got:?}"
        );
    }

    /// As above, and the caller sends once more after the way towards the
    /// server failed. Those bytes are read and dropped: a socket closed
    /// with them unread would answer the caller with a reset, and the
    /// caller would lose the server's bytes it had not read yet.
    #[tokio::test]
    async fn a_way_whose_writes_failed_reads_on_so_the_caller_is_not_reset() {
        let got = server_closes_while_the_caller_sends(true).await;
        assert!(
            got.is_ok(),
            "the caller's stream did not end in order: {got:?}"
        );
    }

    /// The caller (with a small receive window, so that most of the
    /// server's bytes wait in the proxy's sockets) does not read while the
    /// server sends 4 MiB and closes, then sends to it (and, with
    /// `after_failure`, once more after the write towards the closed server
    /// failed), then reads to the end. Ok when every byte arrived, in
    /// order, and the stream ended with a FIN; the error otherwise.
    async fn server_closes_while_the_caller_sends(after_failure: bool) -> Result<(), String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        const SENT: usize = 4 << 20;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let (dialed, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (mut caller, mut caller_side) = (dialed.unwrap(), accepted.unwrap().0);
        let (mut upstream_side, mut server) = socket_pair().await;
        let joined =
            tokio::spawn(async move { join_upgraded(&mut caller_side, &mut upstream_side).await });
        // The server: its output, then the caller's first bytes left
        // unread as it closes (a reset, as a server that stops reading
        // before it closes gives).
        let data: Vec<u8> = (0..SENT).map(|i| (i % 251) as u8).collect();
        server.write_all(&data).await.unwrap();
        caller.write_all(b"heartbeat").await.unwrap();
        // Every byte has left the server (its socket holds none unsent:
        // a reset would throw those away, which no proxy can help).
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(server);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The caller, still not reading, sends more: to a closed socket.
        let _ = caller.write_all(b"heartbeat").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if after_failure {
            // By now the write towards the server has failed; these bytes
            // reach a proxy no longer writing to it.
            let _ = caller.write_all(b"heartbeat").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut got = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), caller.read_to_end(&mut got)).await;
        drop(caller);
        // The caller gone, the copy ends, with the failed write's error.
        match tokio::time::timeout(Duration::from_secs(10), joined).await {
            Ok(Ok(Err(_))) => {}
            Ok(Ok(Ok(copied))) => return Err(format!("the copy saw no error: {copied:?}")),
            Ok(Err(panic)) => return Err(format!("the copy panicked: {panic}")),
            Err(_) => return Err("the copy did not end once the caller had gone".into()),
        }
        match read {
            Err(_) => Err("the caller's stream did not end".into()),
            Ok(Err(error)) => Err(format!("{error} after {} of {SENT} bytes", got.len())),
            Ok(Ok(_)) if got.len() != SENT => Err(format!("{} of {SENT} bytes", got.len())),
            Ok(Ok(_)) if got != data => Err("bytes changed".into()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// A caller that goes on sending after the server has gone and the
    /// stream's end has reached it is cut the linger after: its bytes are
    /// read and dropped until then, not for ever.
    #[tokio::test]
    async fn a_caller_that_sends_on_after_the_end_is_cut_after_the_linger() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut caller, mut caller_side) = socket_pair().await;
        let (mut upstream_side, server) = socket_pair().await;
        let linger = Duration::from_millis(300);
        let joined = tokio::spawn(async move {
            join_upgraded_lingering(&mut caller_side, &mut upstream_side, linger).await
        });
        // The server closes with the caller's bytes unread: a reset.
        caller.write_all(b"heartbeat").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(server);
        // The caller sees the end of the stream ...
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), caller.read_to_end(&mut got))
            .await
            .expect("the end of the stream reached the caller")
            .unwrap();
        // ... and sends on regardless, every 20 ms.
        let started = tokio::time::Instant::now();
        let sending = tokio::spawn(async move {
            while caller.write_all(b"heartbeat").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let ended = tokio::time::timeout(Duration::from_secs(10), joined)
            .await
            .expect("the copy ended")
            .unwrap();
        let took = started.elapsed();
        assert!(ended.is_err(), "the write towards the server failed");
        assert!(
            took >= linger - Duration::from_millis(100) && took < Duration::from_secs(5),
            "cut after {took:?}, with a linger of {linger:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .expect("the caller's writes fail once it is cut")
            .unwrap();
    }

    fn options(credential: UpstreamCredential) -> UpstreamOptions {
        UpstreamOptions {
            url: "https://127.0.0.1:6443".parse().unwrap(),
            ca_pem: None,
            client_identity: None,
            server_name: None,
            credential,
            connect_timeout: Duration::from_secs(1),
            pool: PoolSettings::default(),
        }
    }

    /// Each message names the file once and says what is wrong with the
    /// token, never the token.
    #[tokio::test]
    async fn unusable_tokens_are_refused_with_the_file_named_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy-token");
        for (content, problem) in [
            (&b" \n"[..], "the token is empty"),
            (&b"\xff\xfe"[..], "the token is not UTF-8"),
            (
                &b"secret\x01token"[..],
                "the token holds characters a header cannot carry",
            ),
        ] {
            std::fs::write(&path, content).unwrap();
            let error =
                Upstream::<hyper::body::Incoming>::new(options(UpstreamCredential::TokenFile {
                    path: path.clone(),
                    interval: Duration::from_secs(60),
                }))
                .expect_err("refused");
            let text = error.to_string();
            assert_eq!(
                text,
                format!("upstream token file {}: {problem}", path.display())
            );
            assert!(!text.contains("secret"), "{text}");
        }
        let error = Upstream::<hyper::body::Incoming>::new(options(
            UpstreamCredential::StaticToken(crate::credential::Secret::new("")),
        ))
        .expect_err("refused");
        assert_eq!(error.to_string(), "upstream token: the token is empty");
    }
}
