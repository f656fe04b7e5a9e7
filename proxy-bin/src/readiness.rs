//! What `/readyz` answers: the authenticators are ready, and every API
//! server the proxy forwards to takes its credential, can be reached (an
//! outage shorter than [`UNREACHABLE_GRACE`] is not one), and lets the
//! proxy impersonate users, groups, uids and extras (asked with
//! `SelfSubjectAccessReview`s at start and every minute). A check sent
//! every [`CHECK_INTERVAL`] (`GET /readyz` with the proxy's credential)
//! keeps this true while no request passes; requests note it too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use proxy_core::counters::{UpstreamCounters, UpstreamHealth, UpstreamTrouble, UNREACHABLE_GRACE};
use proxy_core::upstream::{HealthCheck, Upstream, UpstreamError, UpstreamOptions};
use proxy_core::Chain;
use tokio::task::JoinHandle;

/// How often each API server is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The `User-Agent` of the checks (the API server's audit log and metrics
/// tell them from requests made for callers).
pub const CHECK_USER_AGENT: &str = "authproxy-readiness";

/// `authproxy-readiness/<version>`.
fn user_agent() -> String {
    format!("{CHECK_USER_AGENT}/{}", env!("CARGO_PKG_VERSION"))
}

/// Every how many checks the proxy asks again what it may impersonate.
const PERMISSION_EVERY: u32 = 12;

/// What the proxy impersonates to set an identity: the API group, resource
/// and subresource (an extra's key: the one the proxy sets for `kubectl
/// --as`, which RBAC names exactly or by `*`), and whether every request
/// needs it (users and groups) or only some (uids and extras: missing, they
/// are warned about, and readiness does not wait for them).
const IMPERSONATED: [(&str, &str, &str, bool); 4] = [
    ("", "users", "", true),
    ("", "groups", "", true),
    ("authentication.k8s.io", "uids", "", false),
    (
        "authentication.k8s.io",
        "userextras",
        "authproxy.io/original-user",
        false,
    ),
];

/// Asks the API server, as the proxy, whether it may impersonate each of
/// [`IMPERSONATED`] (kube's `impersonate` verb, or constrained
/// impersonation's `impersonate:user-info`); the ones it may not, or `None`
/// when the answers could not be had.
async fn missing_impersonation(
    client: &Upstream<Full<Bytes>>,
    check: HealthCheck,
) -> Option<Vec<(String, bool)>> {
    let mut missing = Vec::new();
    for (group, resource, subresource, required) in IMPERSONATED {
        let mut allowed = false;
        for verb in ["impersonate", "impersonate:user-info"] {
            // Constrained impersonation names users and groups in
            // authentication.k8s.io, the legacy verb in the core group.
            let group = if verb == "impersonate" {
                group
            } else {
                "authentication.k8s.io"
            };
            let review = serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {
                    "verb": verb, "group": group, "resource": resource, "subresource": subresource,
                }},
            });
            let mut request =
                http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::USER_AGENT, user_agent())
                    .body(Full::new(Bytes::from(review.to_string())))
                    .ok()?;
            request.extensions_mut().insert(check);
            let mut client = client.clone();
            let response = tokio::time::timeout(
                CHECK_INTERVAL,
                tower_service::Service::call(&mut client, request),
            )
            .await
            .ok()?
            .ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = tokio::time::timeout(
                CHECK_INTERVAL,
                http_body_util::BodyExt::collect(response.into_body()),
            )
            .await
            .ok()?
            .ok()?
            .to_bytes();
            let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
            if answer["status"]["allowed"] == true {
                allowed = true;
                break;
            }
        }
        if !allowed {
            let name = if group.is_empty() {
                resource.to_owned()
            } else {
                format!("{resource}.{group}")
            };
            missing.push((name, required));
        }
    }
    Some(missing)
}

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
    upstreams: Arc<Vec<Watched>>,
    _checks: Arc<Vec<Check>>,
    /// The revocation store, kept watched while this lives.
    revocation: Option<Arc<crate::revocation::Revocation>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}

/// One API server checked: its name (the config section), what its answers
/// say, and what the proxy may not impersonate there (empty: all it needs).
struct Watched {
    name: String,
    health: Arc<UpstreamHealth>,
    missing: Arc<std::sync::Mutex<Vec<String>>>,
}

/// API servers to check, as they are added: a name (the config section)
/// and the counters of the proxy's client for it.
#[derive(Default)]
pub struct Upstreams {
    watched: Vec<Watched>,
    checks: Vec<Check>,
}

impl Upstreams {
    /// Checks the API server of `options` every [`CHECK_INTERVAL`], noting
    /// what it answers in the health `counters` (the proxy's client's)
    /// share, under `name`. The check's own connection is not counted
    /// among the proxy's. With `impersonates`, it also asks (at start and
    /// every minute) what the proxy may impersonate there. Call within a
    /// tokio runtime.
    pub fn watch(
        &mut self,
        name: &str,
        options: UpstreamOptions,
        counters: &UpstreamCounters,
        impersonates: bool,
        ca_watch: Option<(
            std::path::PathBuf,
            Duration,
            proxy_core::reload::ReloadReporter,
        )>,
    ) -> Result<(), UpstreamError> {
        let client: Upstream<Full<Bytes>> =
            Upstream::with_counters(options, Arc::new(counters.sharing_health()))?;
        // The check trusts the CA the proxy's client trusts, as it rotates.
        if let Some((ca, interval, reporter)) = ca_watch {
            client.watch_ca_file(ca, interval, reporter)?;
        }
        let health = counters.health().clone();
        // A front proxy's check carries no user, and kube answers it 401
        // whatever the credential: only reachability is read from it.
        let check = HealthCheck {
            judges_credential: impersonates,
        };
        let missing = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (section, found) = (name.to_owned(), missing.clone());
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(CHECK_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut round = 0u32;
            // Every name said missing in the last warning (uids and extras
            // too), so a change is said once.
            let mut warned: Vec<String> = Vec::new();
            loop {
                ticker.tick().await;
                if impersonates && round.is_multiple_of(PERMISSION_EVERY) {
                    if let Some(now) = missing_impersonation(&client, check).await {
                        let names: Vec<String> = now.iter().map(|(n, _)| n.clone()).collect();
                        if names != warned && !names.is_empty() {
                            tracing::warn!(
                                upstream = %section,
                                missing = %names.join(", "),
                                "the proxy's account may not impersonate these: grant it the verb impersonate on them (see the chart's ClusterRole); without users or groups nothing works, without uids or extras the users that have them are refused"
                            );
                        }
                        warned = names;
                        if let Ok(mut known) = found.lock() {
                            *known = now
                                .into_iter()
                                .filter(|(_, required)| *required)
                                .map(|(n, _)| n)
                                .collect();
                        }
                    }
                }
                round = round.wrapping_add(1);
                let Ok(mut request) = http::Request::get("/readyz")
                    .header(http::header::USER_AGENT, user_agent())
                    .body(Full::new(Bytes::new()))
                else {
                    return;
                };
                request.extensions_mut().insert(check);
                let mut client = client.clone();
                // The answer is noted by the client; its body is not read.
                // No answer in time (a server that drops packets) is an
                // unreachable one.
                let answered = tokio::time::timeout(
                    CHECK_INTERVAL,
                    tower_service::Service::call(&mut client, request),
                )
                .await;
                if answered.is_err() {
                    health.note_unreachable();
                }
            }
        });
        self.watched.push(Watched {
            name: name.to_owned(),
            health: counters.health().clone(),
            missing,
        });
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
            revocation: None,
        }
    }

    /// Also says how the revocation store stands: not ready before the
    /// revocations have been listed once (unless configured otherwise);
    /// ready, with a word, while the store cannot be reached.
    pub fn with_revocation(
        mut self,
        revocation: Option<Arc<crate::revocation::Revocation>>,
    ) -> Self {
        self.revocation = revocation;
        self
    }

    /// The answer to `/readyz`: the status and its text.
    pub fn answer(&self) -> (http::StatusCode, String) {
        match self.check() {
            Ok(None) => (http::StatusCode::OK, "ok".into()),
            Ok(Some(note)) => (http::StatusCode::OK, format!("ok; {note}")),
            Err(why) => (http::StatusCode::SERVICE_UNAVAILABLE, why),
        }
    }

    /// Ready when `chain` is (nothing upstream to check: the webhook).
    pub fn of_chain(chain: Chain) -> Self {
        Self::new(chain, Upstreams::default())
    }

    /// `Ok` when ready (with a note on what is degraded but still
    /// serving); else why not, in words for `/readyz`.
    pub fn check(&self) -> Result<Option<String>, String> {
        let issuers = self.chain.issuers();
        if !self.chain.is_ready() {
            let loading: Vec<String> = issuers
                .iter()
                .filter(|i| i.keys_age.is_none())
                .map(ToString::to_string)
                .collect();
            return Err(if loading.is_empty() {
                "not ready: authenticators are still loading".into()
            } else {
                format!(
                    "not ready: authenticators are still loading ({})",
                    loading.join("; ")
                )
            });
        }
        // Keys in use while their refresh fails: ready, and said.
        let failing: Vec<String> = issuers
            .iter()
            .filter(|i| i.last_error.is_some())
            .map(ToString::to_string)
            .collect();
        let mut note = (!failing.is_empty()).then(|| failing.join("; "));
        if let Some(revocation) = &self.revocation {
            match revocation.revocations().trouble() {
                Some((why, true)) => return Err(format!("not ready: {why}")),
                Some((why, false)) => {
                    note = Some(match note {
                        Some(earlier) => format!("{earlier}; {why}"),
                        None => why,
                    })
                }
                None => {}
            }
        }
        let troubles: Vec<String> = self
            .upstreams
            .iter()
            .filter_map(|watched| {
                let name = &watched.name;
                if let Some(trouble) = watched.health.trouble(UNREACHABLE_GRACE) {
                    return Some(match trouble {
                        UpstreamTrouble::CredentialRefused { for_ } => format!(
                            "{name}: the API server has refused the proxy's own credential for {}s",
                            for_.as_secs()
                        ),
                        UpstreamTrouble::Unreachable { for_ } => format!(
                            "{name}: the API server has been unreachable for {}s",
                            for_.as_secs()
                        ),
                    });
                }
                let missing = watched.missing.lock().ok()?;
                (!missing.is_empty()).then(|| {
                    format!(
                        "{name}: the proxy's account may not impersonate {} (RBAC: verb impersonate)",
                        missing.join(", ")
                    )
                })
            })
            .collect();
        if troubles.is_empty() {
            Ok(note)
        } else {
            Err(format!("not ready: {}", troubles.join("; ")))
        }
    }
}
