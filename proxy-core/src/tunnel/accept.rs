//! The proxy's side of an agent's registration at [`super::CONNECT_PATH`].
//!
//! The registration token decides the cluster: it is compared (as SHA-256
//! digests, in constant time) with the token of every `via: agent` cluster,
//! and the one it matches is the cluster the tunnel serves. The cluster the
//! agent names in [`super::CLUSTER_HEADER`] must be that one; an agent with
//! no matching token, or with the token of one cluster naming another, is
//! refused with a `401` and a warning that names the peer and the claimed
//! cluster, never the token. Then the caps of [`TunnelLimits`]: the
//! cluster's registrations per minute and tunnels (`429`), and the agent
//! connections of the endpoint (`503`; see [`super::budget`]). Refusals are
//! counted by reason and logged at most once per reason every
//! [`super::refusal::LOG_INTERVAL`]. On success the proxy answers `101`,
//! takes the upgraded connection and becomes its HTTP/2 client; the tunnel
//! is in the cluster's [`ClusterAgents`] until the connection ends or its
//! token is retired (the `serve` module).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use super::budget::{self, AgentConnections, ConnectionSlot};
use super::limits::TunnelLimits;
use super::metrics::TunnelMetrics;
use super::refusal::{Refusal, RefusalLog};
use super::register::{self, Claim};
use super::registry::{ClusterAgents, TokenDigest};
use super::serve::Tunnel;
use super::token::{ClusterToken, TokenBook};
use super::UPGRADE_PROTOCOL;
use crate::body::ProxyBody;
use proxy_support::rate_limit::RateLimiter;

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
    limits: TunnelLimits,
    connections: AgentConnections,
    registrations: RateLimiter,
    refusals: RefusalLog,
    retired_grace: Duration,
}

impl Default for AgentEndpoint {
    fn default() -> Self {
        AgentEndpoint::with_limits(TunnelLimits::default())
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
            .field("limits", &self.limits)
            .finish()
    }
}

impl AgentEndpoint {
    /// No cluster yet, with the default [`TunnelLimits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// No cluster yet, with `limits` on tunnels and registrations.
    pub fn with_limits(limits: TunnelLimits) -> Self {
        AgentEndpoint {
            clusters: Vec::new(),
            tokens: Arc::default(),
            metrics: TunnelMetrics::default(),
            limits,
            connections: Arc::new(Semaphore::new(limits.total.min(Semaphore::MAX_PERMITS))),
            registrations: RateLimiter::per_minute(limits.registrations_per_minute),
            refusals: RefusalLog::default(),
            retired_grace: RETIRED_TOKEN_GRACE,
        }
    }

    /// Whether no cluster was added.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// The tunnel metric families (register them with the proxy's metrics).
    pub fn metrics(&self) -> &TunnelMetrics {
        &self.metrics
    }

    /// The agent connections (`limits.agentTunnels.total`): a listener
    /// that caps its client connections takes from these for connections
    /// it accepts past that cap (see [`super::budget`]).
    pub fn connections(&self) -> &AgentConnections {
        &self.connections
    }

    /// Adds the cluster `name`, whose agents present the token in
    /// `token_file` (re-read every `interval`). A changed token takes
    /// effect for new registrations, and the tunnels registered with the
    /// token before are closed (after a grace of five seconds for their
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
    fn cluster_of(&self, presented: &TokenDigest) -> Option<&AgentCluster> {
        let mut found = None;
        for cluster in &self.clusters {
            if cluster.token.matches(presented) {
                found = Some(cluster);
            }
        }
        found
    }

    /// Counts `refusal` of a registration from `peer` (for `cluster`, when
    /// the token named one), logs it unless too many were logged lately,
    /// and answers it.
    fn refuse(
        &self,
        refusal: Refusal,
        cluster: Option<&str>,
        claim: Claim<'_>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let label = cluster.unwrap_or("unknown");
        self.metrics.connect(label, false);
        self.metrics.refused(label, refusal);
        if let Some(unlogged) = self.refusals.admit(refusal, Instant::now()) {
            tracing::warn!(
                %peer,
                cluster = cluster.unwrap_or("-"),
                claimed = claim.for_log(),
                reason = refusal.reason(),
                unlogged,
                "agent registration refused: {}",
                refusal.describe()
            );
        }
        refusal.response()
    }

    /// Answers a registration from `peer`: `101` and the tunnel set up in
    /// the background, or a `Status` refusal. In order: the request must be
    /// an upgrade, the token a cluster's and the claimed cluster that one;
    /// then the cluster's registrations per minute, its tunnels, and the
    /// agent connections must allow one more.
    pub fn accept<B>(&self, mut req: Request<B>, peer: SocketAddr) -> Response<ProxyBody> {
        let read = match register::read(req.version(), req.headers()) {
            Ok(read) => read,
            Err((_, claim)) => return self.refuse(Refusal::NotAnUpgrade, None, claim, peer),
        };
        let found = read.token.and_then(|t| {
            let digest = super::token::digest(t.as_bytes());
            self.cluster_of(&digest).map(|cluster| (cluster, digest))
        });
        let Some((cluster, presented)) = found else {
            return self.refuse(Refusal::UnknownToken, None, read.claim, peer);
        };
        let name = cluster.agents.name();
        let refuse = |refusal| self.refuse(refusal, Some(name), read.claim, peer);
        match read.claim {
            Claim::None => {}
            Claim::Cluster(claimed) if claimed == name => {}
            Claim::Cluster(_) | Claim::Invalid => return refuse(Refusal::OtherCluster),
        }
        if let Err(wait) = self.registrations.acquire(name) {
            return refuse(Refusal::RateLimited(wait));
        }
        let Some(reservation) = cluster.agents.reserve(self.limits.per_cluster) else {
            return refuse(Refusal::ClusterFull(self.limits.per_cluster));
        };
        let slot = req.extensions().get::<ConnectionSlot>();
        let Some(connection) = budget::for_tunnel(slot, &self.connections) else {
            return refuse(Refusal::NoAgentConnection);
        };
        self.metrics.connect(name, true);
        let tunnel = Tunnel {
            agents: cluster.agents.clone(),
            token: cluster.token.clone(),
            presented,
            peer,
            grace: self.retired_grace,
            places: (reservation, connection),
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
