//! The caps on agent tunnels (`limits.agentTunnels`): tunnels per cluster,
//! agent connections in all (counted apart from the listener's client
//! connections, so neither side can take the other's), and registrations
//! per cluster per minute. Every default is one of the `DEFAULT_*`
//! constants below.
//!
//! ```yaml
//! limits:
//!   agentTunnels:
//!     perCluster: 16
//!     total: 256
//!     registrationsPerMinute: 60
//! ```

use serde::Deserialize;

use crate::problem::Problem;

/// Default most tunnels registered at once for one cluster.
pub const DEFAULT_PER_CLUSTER: usize = 16;
/// Default most agent connections (tunnels) open at once, apart from the
/// listener's `maxConnections`.
pub const DEFAULT_TOTAL: usize = 256;
/// Default most registrations accepted per cluster per minute (in bursts of
/// as many).
pub const DEFAULT_REGISTRATIONS_PER_MINUTE: u32 = 60;

/// `limits.agentTunnels`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TunnelLimitsConfig {
    /// Most tunnels one cluster may have at once (default
    /// [`DEFAULT_PER_CLUSTER`]); beyond, a registration is refused with 429.
    pub per_cluster: Option<usize>,
    /// Most agent connections at once, all clusters together (default
    /// [`DEFAULT_TOTAL`]). A registered tunnel leaves the listener's
    /// `maxConnections` for this budget; when client connections are at
    /// their cap, agents still connect within it.
    pub total: Option<usize>,
    /// Registrations accepted per cluster per minute (default
    /// [`DEFAULT_REGISTRATIONS_PER_MINUTE`]); beyond: 429 with
    /// `Retry-After`. `0` turns the limit off.
    pub registrations_per_minute: Option<u32>,
}

/// The tunnel caps in force (see [`TunnelLimitsConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelLimits {
    /// Most tunnels per cluster.
    pub per_cluster: usize,
    /// Most agent connections in all.
    pub total: usize,
    /// Registrations per cluster per minute (`0`: no limit).
    pub registrations_per_minute: u32,
}

impl Default for TunnelLimits {
    fn default() -> Self {
        TunnelLimits {
            per_cluster: DEFAULT_PER_CLUSTER,
            total: DEFAULT_TOTAL,
            registrations_per_minute: DEFAULT_REGISTRATIONS_PER_MINUTE,
        }
    }
}

impl TunnelLimitsConfig {
    /// The caps with defaults filled in.
    pub fn limits(&self) -> TunnelLimits {
        let d = TunnelLimits::default();
        TunnelLimits {
            per_cluster: self.per_cluster.unwrap_or(d.per_cluster),
            total: self.total.unwrap_or(d.total),
            registrations_per_minute: self
                .registrations_per_minute
                .unwrap_or(d.registrations_per_minute),
        }
    }

    /// Every problem in the section, `prefix` being its path
    /// (`limits.agentTunnels`).
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let limits = self.limits();
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                field: format!("{prefix}.{field}"),
                message,
            })
        };
        if limits.per_cluster == 0 {
            problem("perCluster", "must be at least 1".into());
        }
        if limits.total == 0 {
            problem("total", "must be at least 1".into());
        }
        if limits.total > tokio::sync::Semaphore::MAX_PERMITS {
            problem(
                "total",
                format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            );
        }
        if limits.per_cluster > limits.total {
            problem(
                "perCluster",
                format!(
                    "{} is more than total ({})",
                    limits.per_cluster, limits.total
                ),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_takes_the_defaults_and_bad_values_are_named() {
        let empty: TunnelLimitsConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(empty.limits(), TunnelLimits::default());
        assert!(empty.validate("limits.agentTunnels").is_empty());
        let bad: TunnelLimitsConfig = serde_yaml_ng::from_str("{perCluster: 0, total: 0}").unwrap();
        let fields: Vec<String> = bad
            .validate("limits.agentTunnels")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "limits.agentTunnels.perCluster",
                "limits.agentTunnels.total"
            ]
        );
        let over: TunnelLimitsConfig =
            serde_yaml_ng::from_str("{perCluster: 20, total: 10}").unwrap();
        assert_eq!(over.validate("x")[0].message, "20 is more than total (10)");
        assert!(serde_yaml_ng::from_str::<TunnelLimitsConfig>("{max: 1}").is_err());
    }
}
