//! Asking the API server whether a user may impersonate what it asked for
//! (see [`super::nested`]): one `SelfSubjectAccessReview` per attribute,
//! asked as the user, allowed answers cached, each user's reviews within a
//! budget, every check counted. The review takes the way the cluster's
//! requests take ([`Backend`]): the proxy's own client, or the cluster's
//! agent tunnels, so the API server that decides is the one the request
//! goes to.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use tower_service::Service;

use super::nested::{
    impersonated, Attributes, Forwarding, ImpersonationMode, Requested, Settings, Step,
};
use crate::authn::UserInfo;
use crate::counters::{ReviewCounters, ReviewResult};
use crate::observe::request_info::AuthorizerAttributes;
use crate::status::{Reason, Status};
use crate::upstream::{Backend, Upstream, UpstreamError, UpstreamOptions};
use proxy_support::rate_limit::RateLimiter;

/// Largest `SubjectAccessReview` answer read.
const MAX_REVIEW_BYTES: usize = 64 * 1024;

/// Why a review got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The user's budget ([`Settings::reviews_per_minute`]) is used up.
    #[error("too many impersonation reviews by this user; the next in {retry_after_secs}s")]
    Throttled {
        /// Seconds until the next review is allowed.
        retry_after_secs: u64,
    },
    /// The API server could not be asked, or its answer could not be read.
    #[error("{0}")]
    Failed(String),
}

/// Asks the API server whether users may impersonate, caching its answers.
#[derive(Clone)]
pub struct Reviewer {
    client: Backend<Full<Bytes>>,
    cache: Option<moka::future::Cache<(Arc<str>, Attributes), bool>>,
    /// The headers that name the user to the API server: the question is
    /// asked as the user.
    as_user: Arc<super::HeaderNames>,
    /// Reviews each user may still make the proxy ask, by user name.
    budget: Arc<RateLimiter>,
    /// The mode that last let each user (by name) impersonate, tried
    /// first, as kube does.
    last_mode: moka::sync::Cache<String, usize>,
    /// How the identity decided on goes upstream.
    forwarding: Forwarding,
    counters: Arc<ReviewCounters>,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ReviewAnswer {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    allowed: bool,
}

impl Reviewer {
    /// A reviewer asking the API server of `options`, with the proxy's
    /// credential, a `SelfSubjectAccessReview` as the user, whom it names in
    /// the headers `names`: [`super::HeaderNames::impersonation`] (the
    /// proxy's impersonation rights suffice, no further RBAC) or the
    /// front-proxy names (the proxy's client certificate is trusted to name
    /// users). Every authenticated user may ask about itself. Within a tokio
    /// runtime.
    pub fn new(
        options: UpstreamOptions,
        settings: &Settings,
        names: super::HeaderNames,
    ) -> Result<Self, UpstreamError> {
        Ok(Self::over(Upstream::new(options)?.into(), settings, names))
    }

    /// A reviewer asking the API server behind `backend`, the way the
    /// cluster's requests go: for a `via: agent` cluster its tunnels, the
    /// agent sending the review with its own credential and the user's
    /// identity headers (its impersonation rights suffice). Otherwise as
    /// [`Reviewer::new`]. Within a tokio runtime.
    pub fn over(
        backend: Backend<Full<Bytes>>,
        settings: &Settings,
        names: super::HeaderNames,
    ) -> Self {
        let cache = (!settings.cache_ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(settings.cache_size)
                .time_to_live(settings.cache_ttl)
                .build()
        });
        Reviewer {
            client: backend,
            cache,
            as_user: Arc::new(names.clone()),
            budget: Arc::new(RateLimiter::per_minute(settings.reviews_per_minute)),
            last_mode: moka::sync::Cache::new(10_000),
            forwarding: if names.is_impersonation() {
                Forwarding::Impersonate(super::ProxyRbac::Legacy)
            } else {
                Forwarding::FrontProxy
            },
            counters: Arc::default(),
        }
    }

    /// With `Impersonate-*` headers, what the proxy's account may
    /// impersonate (see [`super::ProxyRbac`]); legacy by default.
    pub fn with_rbac(mut self, rbac: super::ProxyRbac) -> Self {
        if let Forwarding::Impersonate(_) = self.forwarding {
            self.forwarding = Forwarding::Impersonate(rbac);
        }
        self
    }

    /// The checks made so far, by result (for the metrics).
    pub fn counters(&self) -> &Arc<ReviewCounters> {
        &self.counters
    }

    /// Whether `user` may do `attributes`: the cached answer, or the API
    /// server's, asked within the user's budget.
    pub async fn allowed(
        &self,
        user: &UserInfo,
        attributes: &Attributes,
    ) -> Result<bool, ReviewError> {
        let Some(cache) = &self.cache else {
            return self.ask(user, attributes).await;
        };
        // The user part of the key: everything the review is about.
        let who: Arc<str> = serde_json::to_string(user).unwrap_or_default().into();
        let key = (who, attributes.clone());
        if let Some(allowed) = cache.get(&key).await {
            self.counters.count(ReviewResult::Cached);
            return Ok(allowed);
        }
        let allowed = self.ask(user, attributes).await?;
        // Only allowed answers are kept: a permission granted a moment ago
        // works at once, as it does with kube itself.
        if allowed {
            cache.insert(key, allowed).await;
        }
        Ok(allowed)
    }

    /// Asks the API server, if `user`'s budget allows; counted.
    async fn ask(&self, user: &UserInfo, attributes: &Attributes) -> Result<bool, ReviewError> {
        if let Err(retry_after_secs) = self.budget.acquire(&user.username) {
            self.counters.count(ReviewResult::Throttled);
            return Err(ReviewError::Throttled { retry_after_secs });
        }
        let answer = self.review(user, attributes).await;
        self.counters.count(match answer {
            Ok(true) => ReviewResult::Allowed,
            Ok(false) => ReviewResult::Denied,
            Err(_) => ReviewResult::Failed,
        });
        answer.map_err(ReviewError::Failed)
    }

    async fn review(&self, user: &UserInfo, attributes: &Attributes) -> Result<bool, String> {
        let spec = if attributes.resource.is_empty() {
            serde_json::json!({"nonResourceAttributes": {
                "verb": attributes.verb,
                "path": attributes.path,
            }})
        } else {
            let mut resource = serde_json::json!({
                "verb": attributes.verb,
                "group": attributes.group,
                "resource": attributes.resource,
            });
            for (field, value) in [
                ("version", &attributes.version),
                ("subresource", &attributes.subresource),
                ("namespace", &attributes.namespace),
                ("name", &attributes.name),
            ] {
                if !value.is_empty() {
                    resource[field] = value.clone().into();
                }
            }
            serde_json::json!({ "resourceAttributes": resource })
        };
        let body = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": spec,
        });
        // kube adds system:authenticated to the user named this way, as its
        // own impersonation filter sees the caller.
        let identity = super::ImpersonationHeaders::for_user_with(user, &self.as_user)
            .map_err(|e| e.to_string())?;
        let mut request = Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        identity.apply(request.headers_mut());
        let response = match self.client.clone().call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_REVIEW_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the SubjectAccessReview answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the API server answered the SubjectAccessReview with {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ));
        }
        let answer: ReviewAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the SubjectAccessReview answer is not one: {e}"))?;
        Ok(answer.status.allowed)
    }

    /// Decides `requested` for `user` making `request` as kube-apiserver
    /// does: each mode that applies, in kube's order (the one that last let
    /// this user impersonate first), until one allows it; the identity to go
    /// on as, or the first refusal as kube words it.
    pub async fn authorize(
        &self,
        user: &UserInfo,
        requested: &Requested,
        request: &AuthorizerAttributes,
    ) -> Result<UserInfo, Status> {
        let modes = ImpersonationMode::ALL;
        let last = self.last_mode.get(&user.username);
        let order = last
            .into_iter()
            .chain((0..modes.len()).filter(|i| Some(*i) != last));
        let mut first_refusal: Option<Status> = None;
        for index in order {
            let mode = modes[index];
            if !mode.applies(requested, user) {
                continue;
            }
            match self.run(user, mode.steps(requested, request)).await {
                Ok(()) => {
                    self.last_mode.insert(user.username.clone(), index);
                    return Ok(impersonated(user, requested, mode, self.forwarding));
                }
                Err(Outcome::Refused(status)) => {
                    first_refusal.get_or_insert(status);
                }
                Err(Outcome::Stop(status)) => return Err(status),
            }
        }
        Err(first_refusal.unwrap_or_else(|| {
            Status::failure(
                StatusCode::FORBIDDEN,
                Reason::Forbidden,
                "all impersonation modes failed",
            )
        }))
    }

    /// Runs one mode's steps: `Ok` when every one is allowed.
    async fn run(&self, user: &UserInfo, steps: Vec<Step>) -> Result<(), Outcome> {
        let refused = |attributes: &Attributes, reason: Option<&str>| {
            let mut message = attributes.forbidden(&user.username);
            if let Some(reason) = reason {
                message.push_str(": ");
                message.push_str(reason);
            }
            Outcome::Refused(Status::failure(
                StatusCode::FORBIDDEN,
                Reason::Forbidden,
                message,
            ))
        };
        for step in steps {
            let each = match step {
                Step::Ask(attributes) => vec![attributes],
                Step::Each(each) => each,
                Step::AskAll { wildcard, each } => {
                    if self.check(user, &wildcard).await? {
                        continue;
                    }
                    each
                }
                Step::Refuse(attributes, reason) => {
                    return Err(refused(&attributes, Some(&reason)))
                }
            };
            for attributes in each {
                if !self.check(user, &attributes).await? {
                    return Err(refused(&attributes, None));
                }
            }
        }
        Ok(())
    }

    /// One check: the answer, or why the decision stops here (throttled,
    /// or the API server could not be asked).
    async fn check(&self, user: &UserInfo, attributes: &Attributes) -> Result<bool, Outcome> {
        match self.allowed(user, attributes).await {
            Ok(allowed) => Ok(allowed),
            Err(ReviewError::Throttled { retry_after_secs }) => {
                tracing::info!(user = %user.username, "impersonation reviews throttled");
                Err(Outcome::Stop(
                    Status::failure(
                        StatusCode::TOO_MANY_REQUESTS,
                        Reason::TooManyRequests,
                        "too many impersonation checks (kubectl --as) by this user, please try again later",
                    )
                    .with_retry_after(retry_after_secs),
                ))
            }
            Err(ReviewError::Failed(error)) => {
                tracing::warn!(%error, "checking an impersonation request failed");
                Err(Outcome::Stop(Status::failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::ServiceUnavailable,
                    "the API server could not be asked whether this impersonation is allowed",
                )))
            }
        }
    }
}

/// Why a mode did not decide.
enum Outcome {
    /// It refused: the next mode may still allow.
    Refused(Status),
    /// No mode can decide now (throttled, or the API server not asked).
    Stop(Status),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::ReviewResult;
    use crate::upstream::{PoolSettings, UpstreamCredential};
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// An API server on loopback that allows every review, counting them.
    async fn allowing_server() -> (UpstreamOptions, Arc<AtomicUsize>) {
        let crate::test_tls::Loopback {
            listener,
            acceptor,
            addr,
            ca_pem,
        } = crate::test_tls::loopback("localhost", &[b"http/1.1"]).await;
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let answer = r#"{"status":{"allowed":true}}"#;
                        std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(
                            Full::new(Bytes::from_static(answer.as_bytes())),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let options = UpstreamOptions {
            url: format!("https://{addr}").parse().unwrap(),
            ca_pem: Some(ca_pem.into_bytes()),
            client_identity: None,
            server_name: Some("localhost".into()),
            credential: UpstreamCredential::None,
            connect_timeout: Duration::from_secs(5),
            pool: PoolSettings::default(),
        };
        (options, asked)
    }

    fn user(name: &str) -> UserInfo {
        UserInfo {
            username: name.into(),
            ..UserInfo::default()
        }
    }

    fn as_carol_with(groups: &[&str]) -> Requested {
        Requested {
            user: Some("carol".into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Requested::default()
        }
    }

    fn list_pods() -> AuthorizerAttributes {
        crate::observe::request_info::authorizer_attributes(
            &http::Method::GET,
            &"/api/v1/namespaces/default/pods".parse().unwrap(),
            false,
        )
    }

    /// Each user may make the proxy ask its budget of reviews; beyond it a
    /// 429 with `Retry-After`, and nothing more is asked. Another user has
    /// a budget of its own, and answers from the cache are free. Every
    /// check is counted by result.
    #[tokio::test]
    async fn each_users_reviews_stay_within_its_budget_and_are_counted() {
        let (options, asked) = allowing_server().await;
        let settings = Settings {
            reviews_per_minute: 5,
            ..Settings::default()
        };
        let reviewer = Reviewer::new(
            options,
            &settings,
            super::super::HeaderNames::impersonation(),
        )
        .unwrap();
        let alice = user("alice");
        let request = list_pods();
        // Four reviews in the user-info mode (listing pods as it, carol,
        // devs, ops), then the same four from the cache.
        for _ in 0..2 {
            let as_carol = as_carol_with(&["devs", "ops"]);
            assert_eq!(
                reviewer
                    .authorize(&alice, &as_carol, &request)
                    .await
                    .unwrap()
                    .username,
                "carol"
            );
        }
        assert_eq!(asked.load(Ordering::SeqCst), 4);
        // New groups are not cached: the fifth review is the last allowed.
        let refused = reviewer
            .authorize(&alice, &as_carol_with(&["qa", "sre"]), &request)
            .await
            .unwrap_err();
        assert_eq!(refused.code, 429, "{}", refused.message);
        assert_eq!(asked.load(Ordering::SeqCst), 5);
        let response = refused.into_response();
        let wait: u64 = response.headers()[http::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        // bob's budget is his own.
        let bob = reviewer
            .authorize(&user("bob"), &as_carol_with(&["qa"]), &request)
            .await;
        assert!(bob.is_ok());
        assert_eq!(asked.load(Ordering::SeqCst), 8);
        let counters = reviewer.counters();
        let counts: Vec<u64> = ReviewResult::ALL.iter().map(|r| counters.get(*r)).collect();
        // allowed, denied, error, cached (the second round, and the mode
        // and carol before qa), throttled (sre)
        assert_eq!(counts, [8, 0, 0, 6, 1]);
    }
}
