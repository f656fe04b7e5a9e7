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

use http::{header, HeaderValue, Request, Response, StatusCode};

use super::metrics::TunnelMetrics;
use super::registry::ClusterAgents;
use super::serve::Tunnel;
use super::token::{ClusterToken, TokenBook};
use super::{CLUSTER_HEADER, UPGRADE_PROTOCOL};
use crate::body::ProxyBody;
use crate::status::{Reason, Status};

pub use super::token::{parse_token, MIN_TOKEN_CHARS};

/// How often the proxy pings an idle tunnel, and how long the answer may take.
pub const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(10));

/// How long the requests in flight on a tunnel whose registration token
/// was retired may take before the tunnel is dropped.
pub const RETIRED_TOKEN_GRACE: Duration = Duration::from_secs(5);

/// A problem setting up an agent cluster.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The token file cannot be read, holds no token, or holds another
    /// cluster's.
    #[error("{path}: {problem}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the token).
        problem: String,
    },
}

struct AgentCluster {
    agents: Arc<ClusterAgents>,
    token: Arc<ClusterToken>,
}

/// Answers agents' registrations for every `via: agent` cluster (see the
/// module docs). Cheap to share behind an `Arc`.
pub struct AgentEndpoint {
    clusters: Vec<AgentCluster>,
    tokens: Arc<TokenBook>,
    metrics: TunnelMetrics,
    retired_grace: Duration,
}

impl Default for AgentEndpoint {
    fn default() -> Self {
        AgentEndpoint {
            clusters: Vec::new(),
            tokens: Arc::default(),
            metrics: TunnelMetrics::default(),
            retired_grace: RETIRED_TOKEN_GRACE,
        }
    }
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
    /// `token_file` (re-read every `interval`). A changed token takes
    /// effect for new registrations, and the tunnels registered with the
    /// token before are closed (after [`RETIRED_TOKEN_GRACE`] for their
    /// requests in flight). A token another cluster has is refused, when
    /// added and when read again. Must be called within a tokio runtime.
    pub fn add_cluster(
        &mut self,
        name: &str,
        token_file: PathBuf,
        interval: Duration,
    ) -> Result<Arc<ClusterAgents>, AcceptError> {
        let agents = ClusterAgents::new(name, &self.metrics);
        let token = ClusterToken::watch(&self.tokens, &agents, token_file, interval)
            .map_err(|(path, problem)| AcceptError::Token { path, problem })?;
        self.clusters.push(AgentCluster {
            agents: agents.clone(),
            token: Arc::new(token),
        });
        Ok(agents)
    }

    /// The cluster whose token is `presented`: every cluster is compared,
    /// so the time taken does not tell which one matched.
    fn cluster_of(&self, presented: &super::registry::TokenDigest) -> Option<&AgentCluster> {
        let mut found = None;
        for cluster in &self.clusters {
            if cluster.token.matches(presented) {
                found = Some(cluster);
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
        let found = presented.and_then(|t| {
            let digest = super::token::digest(t.as_bytes());
            self.cluster_of(&digest).map(|cluster| (cluster, digest))
        });
        let Some((cluster, presented)) = found else {
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
        let tunnel = Tunnel {
            agents: cluster.agents.clone(),
            token: cluster.token.clone(),
            presented,
            peer,
            grace: self.retired_grace,
        };
        tokio::spawn(tunnel.run(hyper::upgrade::on(&mut req)));
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
