//! What `/readyz` answers: the authenticators are ready, and every API
//! server the proxy forwards to takes its credential and can be reached
//! (an outage shorter than [`UNREACHABLE_GRACE`] is not one). A check sent
//! every [`CHECK_INTERVAL`] (`GET /readyz` with the proxy's credential)
//! keeps this true while no request passes; requests note it too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use proxy_core::counters::{UpstreamCounters, UpstreamHealth, UpstreamTrouble, UNREACHABLE_GRACE};
use proxy_core::upstream::{Upstream, UpstreamError, UpstreamOptions};
use proxy_core::Chain;
use tokio::task::JoinHandle;

/// How often each API server is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A running check; stops when dropped.
#[derive(Debug)]
struct Check(JoinHandle<()>);

impl Drop for Check {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The proxy's readiness. Cheap to clone.
#[derive(Clone)]
pub struct Readiness {
    chain: Chain,
    upstreams: Arc<Vec<(String, Arc<UpstreamHealth>)>>,
    _checks: Arc<Vec<Check>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}

/// API servers to check, as they are added: a name (the config section)
/// and the counters of the proxy's client for it.
#[derive(Default)]
pub struct Upstreams {
    watched: Vec<(String, Arc<UpstreamHealth>)>,
    checks: Vec<Check>,
}

impl Upstreams {
    /// Checks the API server of `options` every [`CHECK_INTERVAL`], noting
    /// what it answers in the health `counters` (the proxy's client's)
    /// share, under `name`. The check's own connection is not counted
    /// among the proxy's. Call within a tokio runtime.
    pub fn watch(
        &mut self,
        name: &str,
        options: UpstreamOptions,
        counters: &UpstreamCounters,
    ) -> Result<(), UpstreamError> {
        let client: Upstream<Full<Bytes>> =
            Upstream::with_counters(options, Arc::new(counters.sharing_health()))?;
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(CHECK_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Ok(request) = http::Request::get("/readyz").body(Full::new(Bytes::new()))
                else {
                    return;
                };
                let mut client = client.clone();
                // The answer is noted by the client; its body is not read.
                let _ = tokio::time::timeout(
                    CHECK_INTERVAL,
                    tower_service::Service::call(&mut client, request),
                )
                .await;
            }
        });
        self.watched
            .push((name.to_owned(), counters.health().clone()));
        self.checks.push(Check(task));
        Ok(())
    }
}

impl Readiness {
    /// Ready when `chain` is and every one of `upstreams` serves.
    pub fn new(chain: Chain, upstreams: Upstreams) -> Self {
        Readiness {
            chain,
            upstreams: Arc::new(upstreams.watched),
            _checks: Arc::new(upstreams.checks),
        }
    }

    /// Ready when `chain` is (nothing upstream to check: the webhook).
    pub fn of_chain(chain: Chain) -> Self {
        Self::new(chain, Upstreams::default())
    }

    /// `Ok` when ready; else why not, in words for `/readyz`.
    pub fn check(&self) -> Result<(), String> {
        if !self.chain.is_ready() {
            return Err("not ready: authenticators are still loading".into());
        }
        let troubles: Vec<String> = self
            .upstreams
            .iter()
            .filter_map(|(name, counters)| {
                Some(match counters.trouble(UNREACHABLE_GRACE)? {
                    UpstreamTrouble::CredentialRefused { for_ } => format!(
                        "{name}: the API server has refused the proxy's own credential for {}s",
                        for_.as_secs()
                    ),
                    UpstreamTrouble::Unreachable { for_ } => format!(
                        "{name}: the API server has been unreachable for {}s",
                        for_.as_secs()
                    ),
                })
            })
            .collect();
        if troubles.is_empty() {
            Ok(())
        } else {
            Err(format!("not ready: {}", troubles.join("; ")))
        }
    }
}
