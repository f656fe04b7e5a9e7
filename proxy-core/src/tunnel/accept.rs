//! The proxy's side of an agent's registration at [`super::CONNECT_PATH`].
//!
//! The registration token decides the cluster: it is compared (as SHA-256
//! digests, in constant time) with the token of every `via: agent` cluster,
//! and the one it matches is the cluster the tunnel serves. The cluster the
//! agent names in [`super::CLUSTER_HEADER`] must be that one; an agent with
//! no matching token, or with the token of one cluster naming another, is
//! refused with a `401` and a warning that names the peer and the claimed
//! cluster, never the token. On success the proxy answers `101`, takes the
//! upgraded connection and becomes its HTTP/2 client; the tunnel is in the
//! cluster's [`ClusterAgents`] until the connection ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::metrics::TunnelMetrics;
use super::registry::ClusterAgents;
use super::{CLUSTER_HEADER, UPGRADE_PROTOCOL};
use crate::body::ProxyBody;
use crate::reload::{watch_file, FileWatch};
use crate::status::{Reason, Status};

/// How often the proxy pings an idle tunnel, and how long the answer may take.
pub const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(10));

/// A problem setting up an agent cluster.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The token file cannot be read or holds no token.
    #[error("{path}: {problem}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the token).
        problem: String,
    },
}

type Digest32 = [u8; 32];

struct AgentCluster {
    agents: Arc<ClusterAgents>,
    token: Arc<ArcSwapOption<Digest32>>,
    _watch: FileWatch,
}

/// Answers agents' registrations for every `via: agent` cluster (see the
/// module docs). Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct AgentEndpoint {
    clusters: Vec<AgentCluster>,
    metrics: TunnelMetrics,
}

impl std::fmt::Debug for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentEndpoint")
            .field(
                "clusters",
                &self
                    .clusters
                    .iter()
                    .map(|c| c.agents.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Shortest registration token accepted: the endpoint answers before any
/// authentication, so a token must be too long to guess.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The registration token in a token file's `content` (surrounding
/// whitespace removed), or why it cannot be one (never the token itself).
pub fn parse_token(content: &[u8]) -> Result<&str, String> {
    let token = std::str::from_utf8(content)
        .map_err(|_| "the token is not UTF-8".to_owned())?
        .trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!(
            "the token is shorter than {MIN_TOKEN_CHARS} characters: use a long random string \
             (openssl rand -hex 32)"
        ));
    }
    Ok(token)
}

fn token_digest(content: &[u8]) -> Result<Digest32, String> {
    Ok(Sha256::digest(parse_token(content)?.as_bytes()).into())
}

impl AgentEndpoint {
    /// No cluster yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no cluster was added.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// The tunnel metric families (register them with the proxy's metrics).
    pub fn metrics(&self) -> &TunnelMetrics {
        &self.metrics
    }

    /// Adds the cluster `name`, whose agents present the token in
    /// `token_file` (re-read every `interval`; a changed token takes effect
    /// for new registrations, connected tunnels stay). Must be called within
    /// a tokio runtime.
    pub fn add_cluster(
        &mut self,
        name: &str,
        token_file: PathBuf,
        interval: Duration,
    ) -> Result<Arc<ClusterAgents>, AcceptError> {
        let content = std::fs::read(&token_file).map_err(|e| AcceptError::Token {
            path: token_file.clone(),
            problem: e.to_string(),
        })?;
        let digest = token_digest(&content).map_err(|problem| AcceptError::Token {
            path: token_file.clone(),
            problem,
        })?;
        let token = Arc::new(ArcSwapOption::from_pointee(digest));
        let slot = Arc::downgrade(&token);
        let watch = watch_file(token_file, interval, content, move |content| {
            let digest = token_digest(content)?;
            if let Some(slot) = slot.upgrade() {
                slot.store(Some(Arc::new(digest)));
            }
            Ok(())
        });
        let agents = ClusterAgents::new(name, &self.metrics);
        self.clusters.push(AgentCluster {
            agents: agents.clone(),
            token,
            _watch: watch,
        });
        Ok(agents)
    }

    /// The cluster whose token is `presented`: every cluster is compared,
    /// so the time taken does not tell which one matched.
    fn cluster_of(&self, presented: &[u8]) -> Option<&AgentCluster> {
        let digest: Digest32 = Sha256::digest(presented).into();
        let mut found = None;
        for cluster in &self.clusters {
            if let Some(token) = cluster.token.load_full() {
                if bool::from(token.ct_eq(&digest)) {
                    found = Some(cluster);
                }
            }
        }
        found
    }

    /// Answers a registration from `peer`: `101` and the tunnel set up in
    /// the background, or a `Status` refusal.
    pub fn accept<B>(&self, mut req: Request<B>, peer: SocketAddr) -> Response<ProxyBody> {
        let claimed = req
            .headers()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| match crate::upstream::router::validate_name(v) {
                Ok(()) => v.to_owned(),
                Err(_) => "<not a cluster name>".to_owned(),
            });
        let upgrade_ok = req.version() == http::Version::HTTP_11
            && crate::impersonate::is_upgrade(req.headers())
            && req.headers().get(header::UPGRADE).is_some_and(|v| {
                v.as_bytes()
                    .eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes())
            });
        if !upgrade_ok {
            tracing::warn!(%peer, claimed = claimed.as_deref().unwrap_or("-"), "agent registration refused: not an HTTP/1.1 upgrade to {UPGRADE_PROTOCOL}");
            return Status::failure(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                format!("agents connect with HTTP/1.1 and Upgrade: {UPGRADE_PROTOCOL}"),
            )
            .into_response();
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(cluster) = presented.and_then(|t| self.cluster_of(t.as_bytes())) else {
            self.metrics.connect("unknown", false);
            tracing::warn!(%peer, claimed = claimed.as_deref().unwrap_or("-"), "agent registration refused: the token is no cluster's registration token");
            return refused();
        };
        let name = cluster.agents.name();
        if claimed.as_deref().is_some_and(|c| c != name) {
            self.metrics.connect(name, false);
            tracing::warn!(%peer, claimed = claimed.as_deref().unwrap_or("-"), "agent registration refused: the agent claims another cluster than its token's");
            return refused();
        }
        self.metrics.connect(name, true);
        let agents = cluster.agents.clone();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let cluster = agents.name().to_owned();
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::warn!(%cluster, %peer, %error, "agent tunnel upgrade failed");
                    return;
                }
            };
            let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEP_ALIVE.0)
                .keep_alive_timeout(KEEP_ALIVE.1)
                .keep_alive_while_idle(true)
                // Large lists and uploads: windows grow with the tunnel's bandwidth-delay product.
                .adaptive_window(true);
            let (send, connection) = match builder.handshake(upgraded).await {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%cluster, %peer, %error, "agent tunnel HTTP/2 handshake failed");
                    return;
                }
            };
            let registration = agents.add(peer, send);
            tracing::info!(%cluster, %peer, tunnel = registration.id(), connected = agents.connected(), "agent tunnel connected");
            if let Err(error) = connection.await {
                tracing::info!(%cluster, %peer, tunnel = registration.id(), %error, "agent tunnel ended with an error");
            }
            let id = registration.id();
            drop(registration);
            tracing::info!(%cluster, %peer, tunnel = id, connected = agents.connected(), "agent tunnel closed");
        });
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
        response
    }
}

fn refused() -> Response<ProxyBody> {
    Status::failure(
        StatusCode::UNAUTHORIZED,
        Reason::Unauthorized,
        "agent registration refused: the token does not register the cluster",
    )
    .into_response()
}
