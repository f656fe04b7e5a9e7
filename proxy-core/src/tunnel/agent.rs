//! The agent: runs in a cluster the proxy cannot reach, dials the proxy,
//! registers with the cluster's token and serves the requests that arrive
//! through the tunnel to its own API server, with its own credential.
//!
//! - The proxy's URL may name a host with several addresses (the headless
//!   Service of a proxy with several replicas): the agent keeps one tunnel
//!   to each address, looking the name up again every
//!   [`AgentSettings::resolve_interval`], so whichever replica a request
//!   lands on holds a tunnel. The proxy's certificate is verified for the
//!   URL's host name, whatever address is dialled.
//! - A tunnel that fails or ends is dialled again after a [`Backoff`] wait
//!   (reset once a tunnel has been up); a refused registration is retried
//!   the same way, with the token file read again.
//! - Requests keep their `Impersonate-*` headers (the proxy is the identity
//!   authority, and the agent verified the proxy's certificate); any
//!   `Authorization` is replaced by the agent's own.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::task::JoinHandle;
use tower_service::Service;

use super::backoff::Backoff;
use super::{CLUSTER_HEADER, CONNECT_PATH, METHOD_HEADER, UPGRADE_PROTOCOL};
use crate::body::ProxyBody;
use crate::status::{Reason, Status};
use crate::tls::{self, TlsError};
use crate::upstream::Upstream;

/// How often the agent looks the proxy's host name up by default.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// A tunnel that stayed up this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What the agent needs to dial the proxy.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// `https://host:port` of the proxy.
    pub proxy_url: Uri,
    /// PEM CA bundle the proxy's certificate is verified against (`None`:
    /// the system bundle).
    pub proxy_ca_pem: Option<Vec<u8>>,
    /// The cluster's registration token, read at each registration.
    pub token_file: PathBuf,
    /// The cluster this agent serves (must be the one its token registers).
    pub cluster: String,
    /// How often the proxy's host name is looked up again.
    pub resolve_interval: Duration,
    /// Time allowed to connect and register.
    pub connect_timeout: Duration,
    /// Waits between attempts.
    pub backoff: Backoff,
}

/// A problem that stops the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The proxy URL is not usable.
    #[error("proxy url {url}: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The proxy CA is not usable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The cluster name is not usable.
    #[error("cluster {name:?}: {problem}")]
    Cluster {
        /// The name.
        name: String,
        /// What is wrong.
        problem: crate::upstream::router::NameError,
    },
}

/// Why one attempt to open a tunnel failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("reading the token file {path}: {problem}")]
    Token { path: PathBuf, problem: String },
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("timed out connecting and registering")]
    Timeout,
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the proxy refused the registration: {status} {message}")]
    Refused { status: StatusCode, message: String },
}

/// The agent (see the module docs).
pub struct Agent {
    settings: AgentSettings,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    upstream: Upstream<Incoming>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("proxy", &self.settings.proxy_url)
            .field("cluster", &self.settings.cluster)
            .finish()
    }
}

impl Agent {
    /// An agent that forwards tunnelled requests to `upstream` (its own API
    /// server, with its own credential).
    pub fn new(settings: AgentSettings, upstream: Upstream<Incoming>) -> Result<Self, AgentError> {
        let url_error = |problem| AgentError::Url {
            url: settings.proxy_url.to_string(),
            problem,
        };
        if settings.proxy_url.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(url_error("must be an https:// URL"));
        }
        let host = settings
            .proxy_url
            .host()
            .ok_or_else(|| url_error("has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = settings.proxy_url.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| url_error("host is not a DNS name or IP address"))?;
        crate::upstream::router::validate_name(&settings.cluster).map_err(|problem| {
            AgentError::Cluster {
                name: settings.cluster.clone(),
                problem,
            }
        })?;
        let roots = match &settings.proxy_ca_pem {
            Some(pem) => tls::root_store(pem, "proxy CA")?,
            None => tls::system_roots()?,
        };
        // HTTP/1.1: the registration is an upgrade.
        let config = tls::client_config(roots, None, &[b"http/1.1"])?;
        Ok(Agent {
            settings,
            host,
            port,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            upstream,
        })
    }

    /// Keeps a tunnel to every address of the proxy's host name, for ever.
    pub async fn run(self) -> Infallible {
        let (host, port) = (self.host.clone(), self.port);
        self.run_resolving(move || {
            let host = host.clone();
            async move {
                Ok(tokio::net::lookup_host((host.as_str(), port))
                    .await?
                    .collect())
            }
        })
        .await
    }

    /// Like [`Agent::run`], with the proxy's addresses from `resolve` (asked
    /// every [`AgentSettings::resolve_interval`]) instead of the host name's
    /// DNS records: for another way to discover the proxy's replicas. The
    /// certificate is still verified for the URL's host name.
    pub async fn run_resolving<R, F>(self, mut resolve: R) -> Infallible
    where
        R: FnMut() -> F,
        F: std::future::Future<Output = std::io::Result<Vec<SocketAddr>>>,
    {
        let agent = Arc::new(self);
        let mut tunnels: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
        let mut lookup_backoff = Backoff::default();
        loop {
            let wait = match resolve().await {
                Ok(addrs) => {
                    lookup_backoff.reset();
                    let addrs: std::collections::HashSet<SocketAddr> = addrs.into_iter().collect();
                    tunnels.retain(|addr, task| {
                        let keep = addrs.contains(addr) && !task.is_finished();
                        if !keep {
                            tracing::info!(proxy = %addr, "the proxy address is gone; closing its tunnel");
                            task.abort();
                        }
                        keep
                    });
                    for addr in addrs {
                        tunnels.entry(addr).or_insert_with(|| {
                            let agent = agent.clone();
                            tokio::spawn(async move { agent.keep_tunnel(addr).await })
                        });
                    }
                    agent.settings.resolve_interval
                }
                Err(error) => {
                    let wait = lookup_backoff.next_delay();
                    tracing::warn!(host = %agent.host, %error, retry_in = ?wait, "looking up the proxy failed");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Dials `addr` again and again, waiting between attempts.
    async fn keep_tunnel(self: Arc<Self>, addr: SocketAddr) {
        let mut backoff = self.settings.backoff.clone();
        loop {
            let started = Instant::now();
            match self.tunnel(addr).await {
                Ok(()) => tracing::info!(proxy = %addr, "tunnel closed"),
                Err(error) => tracing::warn!(proxy = %addr, %error, "tunnel failed"),
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
            }
            let wait = backoff.next_delay();
            tracing::info!(proxy = %addr, retry_in = ?wait, "reconnecting");
            tokio::time::sleep(wait).await;
        }
    }

    /// One tunnel: connect, register, serve until it ends.
    async fn tunnel(&self, addr: SocketAddr) -> Result<(), AttemptError> {
        let upgraded = tokio::time::timeout(self.settings.connect_timeout, self.register(addr))
            .await
            .map_err(|_| AttemptError::Timeout)??;
        tracing::info!(proxy = %addr, cluster = %self.settings.cluster, "tunnel connected");
        let upstream = self.upstream.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut upstream = upstream.clone();
            async move { Ok::<_, Infallible>(serve(&mut upstream, req).await) }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_concurrent_streams(super::MAX_STREAMS)
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            // Uploads (cp into a pod, exec stdin) in frames of up to 64 KiB.
            .max_frame_size(super::MAX_FRAME_SIZE)
            .keep_alive_interval(super::KEEP_ALIVE.0)
            .keep_alive_timeout(super::KEEP_ALIVE.1);
        builder.serve_connection(upgraded, service).await?;
        Ok(())
    }

    async fn register(&self, addr: SocketAddr) -> Result<hyper::upgrade::Upgraded, AttemptError> {
        let path = &self.settings.token_file;
        let token = std::fs::read_to_string(path).map_err(|e| AttemptError::Token {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(AttemptError::Token {
                path: path.clone(),
                problem: "the file is empty".into(),
            });
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| AttemptError::Token {
                path: path.clone(),
                problem: "the token holds characters a header cannot carry".into(),
            })?;
        authorization.set_sensitive(true);
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(AttemptError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(
                self.server_name.clone(),
                proxy_support::read_ahead::ReadAhead::new(tcp),
            )
            .await
            .map_err(AttemptError::Tls)?;
        let (mut send, connection) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<bytes::Bytes>,
        >(TokioIo::new(tls))
        .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "registration connection ended with an error");
            }
        });
        let authority = match self.port {
            443 => self.host.clone(),
            port if self.host.contains(':') => format!("[{}]:{port}", self.host),
            port => format!("{}:{port}", self.host),
        };
        let request = Request::get(CONNECT_PATH)
            .header(header::HOST, authority)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, UPGRADE_PROTOCOL)
            .header(header::AUTHORIZATION, authorization)
            .header(CLUSTER_HEADER, self.settings.cluster.as_str())
            .body(http_body_util::Empty::new())
            .map_err(|_| AttemptError::Refused {
                status: StatusCode::BAD_REQUEST,
                message: "the registration request cannot be built".into(),
            })?;
        let response = send.send_request(request).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(AttemptError::Refused { status, message });
        }
        Ok(hyper::upgrade::on(response).await?)
    }
}

/// Serves one request from the tunnel against the API server.
async fn serve(upstream: &mut Upstream<Incoming>, req: Request<Incoming>) -> Response<ProxyBody> {
    let (req, connect) = match from_tunnel(req) {
        Ok(pair) => pair,
        Err(status) => return status.into_response(),
    };
    let mut response = match upstream.call(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if connect {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The API server upgraded: the CONNECT stream now carries its bytes.
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().remove(header::CONTENT_LENGTH);
        } else if response.status().is_success() {
            return Status::failure(
                StatusCode::BAD_GATEWAY,
                Reason::ServiceUnavailable,
                "the API server answered an upgrade request without upgrading",
            )
            .into_response();
        }
    }
    response
}

/// The request as the API server gets it: an extended CONNECT back to the
/// caller's upgrade request, the proxy's `Authorization` (if any) removed.
/// Also says whether it was a CONNECT.
fn from_tunnel(mut req: Request<Incoming>) -> Result<(Request<Incoming>, bool), Status> {
    req.headers_mut().remove(header::AUTHORIZATION);
    let method = req.headers_mut().remove(METHOD_HEADER);
    if req.method() != Method::CONNECT {
        return Ok((req, false));
    }
    let bad = |message: &str| Status::failure(StatusCode::BAD_REQUEST, Reason::BadRequest, message);
    let protocol = req
        .extensions_mut()
        .remove::<hyper::ext::Protocol>()
        .ok_or_else(|| bad("a CONNECT through the tunnel needs a :protocol"))?;
    let method = method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .filter(|m| m != Method::CONNECT)
        .ok_or_else(|| bad("a CONNECT through the tunnel needs the upgrade's method"))?;
    let upgrade = HeaderValue::from_str(protocol.as_str())
        .map_err(|_| bad("the :protocol cannot be an Upgrade header"))?;
    *req.method_mut() = method;
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    req.headers_mut().insert(header::UPGRADE, upgrade);
    Ok((req, true))
}
