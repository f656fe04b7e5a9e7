//! The tunnel metric families: `authproxy_tunnels_connected{cluster}`,
//! `authproxy_tunnel_connects_total{cluster,result}` and
//! `authproxy_tunnel_requests_total{cluster}`. Cluster labels are names
//! from the configuration (`unknown` for a registration whose token matched
//! no cluster), so they are bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// The tunnel families; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct TunnelMetrics {
    connected: Family<ClusterLabel, Gauge>,
    connects: Family<ConnectLabels, Counter>,
    requests: Family<ClusterLabel, Counter>,
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
    }

    /// Starts the series of `cluster` at zero.
    pub(crate) fn declare(&self, cluster: &str) {
        let label = ClusterLabel {
            cluster: cluster.to_owned(),
        };
        let _ = self.connected.get_or_create(&label);
        let _ = self.requests.get_or_create(&label);
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
