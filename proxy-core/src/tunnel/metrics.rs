//! The tunnel metric families: `authproxy_tunnels_connected{cluster}`,
//! `authproxy_tunnel_connects_total{cluster,result}` and
//! `authproxy_tunnel_requests_total{cluster}`,
//! `authproxy_tunnel_refusals_total{cluster,reason}` and
//! `authproxy_tunnels_closed_total{cluster,reason}`. Cluster labels are names
//! from the configuration (`unknown` for a registration whose token matched
//! no cluster), so they are bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::refusal::Refusal;

/// Label of the cluster a tunnel serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClusterLabel {
    /// The cluster name.
    pub cluster: String,
}

/// Labels of a registration attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectLabels {
    /// The cluster name (`unknown` when the token matched none).
    pub cluster: String,
    /// `accepted` or `refused`.
    pub result: &'static str,
}

/// Why the proxy closed a tunnel itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The cluster's registration token changed: tunnels registered with
    /// the one before are closed.
    TokenRetired,
}

impl CloseReason {
    /// Every reason, for series that start at zero.
    pub const ALL: [CloseReason; 1] = [CloseReason::TokenRetired];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TokenRetired => "token_retired",
        }
    }
}

/// Labels of a tunnel the proxy closed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CloseLabels {
    /// The cluster name.
    pub cluster: String,
    /// [`CloseReason::as_str`].
    pub reason: &'static str,
}

/// Labels of a refused registration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The cluster name (`unknown` when the token matched none).
    pub cluster: String,
    /// `Refusal::reason` (the refusal's kind).
    pub reason: &'static str,
}

/// The tunnel families; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct TunnelMetrics {
    connected: Family<ClusterLabel, Gauge>,
    connects: Family<ConnectLabels, Counter>,
    requests: Family<ClusterLabel, Counter>,
    closed: Family<CloseLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
}

impl TunnelMetrics {
    /// Adds the families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "authproxy_tunnels_connected",
            "Agent tunnels connected now, by cluster",
            self.connected.clone(),
        );
        registry.register(
            "authproxy_tunnel_connects",
            "Agent registrations, by cluster and result (accepted, refused); every accepted one after \
             the first of an agent is a reconnect",
            self.connects.clone(),
        );
        registry.register(
            "authproxy_tunnel_requests",
            "Requests sent to a cluster through agent tunnels",
            self.requests.clone(),
        );
        registry.register(
            "authproxy_tunnel_refusals",
            "Agent registrations refused, by cluster (unknown when the token matched none) and reason \
             (not_an_upgrade, unknown_token, other_cluster, rate_limited, cluster_full, agent_connections)",
            self.refusals.clone(),
        );
        registry.register(
            "authproxy_tunnels_closed",
            "Agent tunnels the proxy closed, by cluster and reason (token_retired: registered with a \
             token the cluster no longer has)",
            self.closed.clone(),
        );
    }

    /// Starts the series of `cluster` at zero.
    pub(crate) fn declare(&self, cluster: &str) {
        let label = ClusterLabel {
            cluster: cluster.to_owned(),
        };
        let _ = self.connected.get_or_create(&label);
        let _ = self.requests.get_or_create(&label);
        for reason in CloseReason::ALL {
            let _ = self.closed(cluster, reason);
        }
        for reason in Refusal::REASONS {
            let _ = self.refusals.get_or_create(&RefusalLabels {
                cluster: cluster.to_owned(),
                reason,
            });
        }
        for result in ["accepted", "refused"] {
            let _ = self.connects.get_or_create(&ConnectLabels {
                cluster: cluster.to_owned(),
                result,
            });
        }
    }

    /// The gauge of tunnels connected for `cluster`.
    pub(crate) fn connected(&self, cluster: &str) -> Gauge {
        self.connected
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_owned(),
            })
            .clone()
    }

    /// The request counter of `cluster`.
    pub(crate) fn requests(&self, cluster: &str) -> Counter {
        self.requests
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_owned(),
            })
            .clone()
    }

    /// The counter of `cluster`'s tunnels closed for `reason`.
    pub(crate) fn closed(&self, cluster: &str, reason: CloseReason) -> Counter {
        self.closed
            .get_or_create(&CloseLabels {
                cluster: cluster.to_owned(),
                reason: reason.as_str(),
            })
            .clone()
    }

    /// Counts one refused registration.
    pub(crate) fn refused(&self, cluster: &str, refusal: Refusal) {
        self.refusals
            .get_or_create(&RefusalLabels {
                cluster: cluster.to_owned(),
                reason: refusal.reason(),
            })
            .inc();
    }

    /// Counts one registration attempt.
    pub(crate) fn connect(&self, cluster: &str, accepted: bool) {
        self.connects
            .get_or_create(&ConnectLabels {
                cluster: cluster.to_owned(),
                result: if accepted { "accepted" } else { "refused" },
            })
            .inc();
    }
}
