//! Refused registrations: why ([`Refusal`]), what the agent is answered (a
//! `Status`), and the warning logged, at most one line per reason every
//! [`LOG_INTERVAL`] however many come (a flood of registrations must not
//! become a flood of log lines); a line says how many refusals of its
//! reason went unlogged before it. Every refusal is counted in
//! `authproxy_tunnel_refusals_total{cluster,reason}`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::status::{Reason, Status};

/// Least time between two log lines of one refusal reason.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an HTTP/1.1 upgrade to the tunnel protocol (`400`).
    NotAnUpgrade,
    /// The token is no cluster's (`401`).
    UnknownToken,
    /// The token is one cluster's, the agent names another (`401`).
    OtherCluster,
    /// The cluster's registrations per minute are used up (`429`, with
    /// `Retry-After` in seconds).
    RateLimited(u64),
    /// The cluster has as many tunnels as it may (`429`).
    ClusterFull(usize),
    /// Every agent connection of the listener is taken (`503`).
    NoAgentConnection,
}

impl Refusal {
    /// Every reason label, for series that start at zero.
    pub const REASONS: [&'static str; 6] = [
        "not_an_upgrade",
        "unknown_token",
        "other_cluster",
        "rate_limited",
        "cluster_full",
        "agent_connections",
    ];

    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        Self::REASONS[self.index()]
    }

    fn index(self) -> usize {
        match self {
            Refusal::NotAnUpgrade => 0,
            Refusal::UnknownToken => 1,
            Refusal::OtherCluster => 2,
            Refusal::RateLimited(_) => 3,
            Refusal::ClusterFull(_) => 4,
            Refusal::NoAgentConnection => 5,
        }
    }

    /// What the log line says (never the token).
    pub fn describe(self) -> String {
        match self {
            Refusal::NotAnUpgrade => {
                format!("not an HTTP/1.1 upgrade to {}", super::UPGRADE_PROTOCOL)
            }
            Refusal::UnknownToken => "the token is no cluster's registration token".into(),
            Refusal::OtherCluster => "the agent claims another cluster than its token's".into(),
            Refusal::RateLimited(_) => "the cluster's registrations per minute are used up".into(),
            Refusal::ClusterFull(cap) => format!("the cluster has its {cap} tunnels"),
            Refusal::NoAgentConnection => "every agent connection of the listener is taken".into(),
        }
    }

    /// The answer to the agent.
    pub fn response(self) -> Response<ProxyBody> {
        let (code, reason, message) = match self {
            Refusal::NotAnUpgrade => (
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                format!(
                    "agents connect with HTTP/1.1 and Upgrade: {}",
                    super::UPGRADE_PROTOCOL
                ),
            ),
            Refusal::UnknownToken | Refusal::OtherCluster => (
                StatusCode::UNAUTHORIZED,
                Reason::Unauthorized,
                "agent registration refused: the token does not register the cluster".into(),
            ),
            Refusal::RateLimited(_) | Refusal::ClusterFull(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                Reason::TooManyRequests,
                format!("agent registration refused: {}", self.describe()),
            ),
            Refusal::NoAgentConnection => (
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ServiceUnavailable,
                format!("agent registration refused: {}", self.describe()),
            ),
        };
        let mut response = Status::failure(code, reason, message).into_response();
        if let Refusal::RateLimited(seconds) = self {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// When each refusal reason was last logged, and how many went unlogged
/// since.
#[derive(Debug, Default)]
pub struct RefusalLog {
    reasons: Mutex<[(Option<Instant>, u64); Refusal::REASONS.len()]>,
}

impl RefusalLog {
    /// Whether a refusal for `refusal`'s reason is logged at `now`: the
    /// number of that reason's refusals not logged since its last line, or
    /// `None` (this one is not logged, and counted for the next line).
    pub fn admit(&self, refusal: Refusal, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock().ok()?;
        let (last, unlogged) = &mut reasons[refusal.index()];
        if last.is_some_and(|at| now.saturating_duration_since(at) < LOG_INTERVAL) {
            *unlogged += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_makes_one_line_per_reason_per_interval() {
        let log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.admit(Refusal::UnknownToken, start), Some(0));
        for i in 0..1000 {
            let now = start + Duration::from_millis(i);
            assert_eq!(log.admit(Refusal::UnknownToken, now), None);
        }
        // Another reason has its own line.
        assert_eq!(log.admit(Refusal::ClusterFull(16), start), Some(0));
        // The next line, an interval later, says how many went unlogged.
        assert_eq!(
            log.admit(Refusal::UnknownToken, start + LOG_INTERVAL),
            Some(1000)
        );
        assert_eq!(log.admit(Refusal::UnknownToken, start + LOG_INTERVAL), None);
    }

    #[test]
    fn a_rate_limited_registration_is_told_when_to_retry() {
        let response = Refusal::RateLimited(7).response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
    }
}
