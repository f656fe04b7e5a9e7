//! `POST /authproxy/v1/token`: exchanges a login (LDAP Basic credentials, an
//! OIDC ID token, or what `issuedTokens.exchangeFrom` allows) for a token the
//! proxy issued itself, answered as a kubectl `ExecCredential`.
//!
//! - The token never outlives the credential it was exchanged for: its
//!   expiry is the configured lifetime or the source's expiry (an ID token's
//!   `exp`), whichever comes first.
//! - Only logins from the configured sources are exchanged; issued tokens
//!   never are (a token cannot extend itself).
//! - Exchanges are rate-limited per client address (before authenticating)
//!   and per user (after): `429` with `Retry-After`.

use std::sync::Arc;

use crate::request_body::read_limited;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use proxy_core::authn::{IssuedTokens, Source};
use proxy_core::config::IssuedTokensConfig;
use proxy_core::counters::{ThrottleCounters, ThrottleScope};
use proxy_core::credential::{ClientAddr, Credential};
use proxy_core::refusal::read_some;
use proxy_core::status::{Reason, Status};
use proxy_core::{Chain, ProxyBody};
use proxy_support::rate_limit::RateLimiter;

/// Where a login is exchanged for an issued token.
pub const TOKEN_PATH: &str = "/authproxy/v1/token";

/// The token exchange endpoint.
pub struct TokenEndpoint {
    chain: Chain,
    issuer: Arc<IssuedTokens>,
    exchange_from: Vec<Source>,
    per_client: RateLimiter,
    per_user: RateLimiter,
    throttled: Arc<ThrottleCounters>,
}

impl std::fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("issuer", &self.issuer.issuer())
            .field("exchange_from", &self.exchange_from)
            .finish()
    }
}

fn unauthorized() -> Response<ProxyBody> {
    let mut r = Status::unauthorized().into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"authproxy\""),
    );
    r
}

fn too_many(retry_after_secs: u64, what: &str) -> Response<ProxyBody> {
    let mut r = Status::failure(
        StatusCode::TOO_MANY_REQUESTS,
        Reason::TooManyRequests,
        format!("too many token requests {what}, retry after {retry_after_secs}s"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

impl TokenEndpoint {
    /// The endpoint for `issuer`, authenticating with `chain`, with the
    /// exchange policy of `config`.
    pub fn new(chain: Chain, issuer: Arc<IssuedTokens>, config: &IssuedTokensConfig) -> Self {
        let (per_client, per_user) = config.exchange_limits.resolved();
        TokenEndpoint {
            chain,
            issuer,
            exchange_from: config.exchange_sources(),
            per_client: RateLimiter::per_minute(per_client),
            per_user: RateLimiter::per_minute(per_user),
            throttled: Arc::default(),
        }
    }

    /// Exchanges refused by the rate limits, by scope, for metrics.
    pub fn throttle_counters(&self) -> Arc<ThrottleCounters> {
        self.throttled.clone()
    }

    /// Answers a request to [`TOKEN_PATH`].
    pub async fn answer(
        &self,
        req: Request<Incoming>,
        max_body_bytes: usize,
    ) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        if parts.method != http::Method::POST {
            return crate::request_body::post_only(body, "POST to get a token").await;
        }
        if let Some(ClientAddr(ip)) = parts.extensions.get::<ClientAddr>() {
            if let Err(wait) = self.per_client.acquire_client(*ip) {
                tracing::info!(client = %ip, "token request refused: client rate limit");
                self.throttled.throttled(ThrottleScope::Client);
                read_some(body).await;
                return too_many(wait, "from this address");
            }
        }
        // The login travels in headers; a body is read (up to the limit) only
        // so that an oversized one is refused.
        if let Err(status) = read_limited(&parts.headers, body, max_body_bytes).await {
            return status.into_response();
        }
        let credential = match Credential::from_parts(&parts.headers, &parts.extensions) {
            Ok(Some(credential @ Credential::Basic { .. })) => credential,
            Ok(Some(Credential::Bearer(token)))
                if proxy_core::authn::oidc::peek_issuer(token.expose()).as_deref()
                    != Some(self.issuer.issuer()) =>
            {
                Credential::Bearer(token)
            }
            _ => return unauthorized(),
        };
        let identity = match self.chain.authenticate(&credential).await {
            Ok(Some(identity)) => identity,
            Ok(None) => return unauthorized(),
            Err(error) => {
                tracing::info!(%error, "token request refused");
                let r = error.to_status().into_response();
                return if r.status() == StatusCode::UNAUTHORIZED {
                    unauthorized()
                } else {
                    r
                };
            }
        };
        if !self.exchange_from.contains(&identity.source()) {
            tracing::info!(
                source = identity.source().as_str(),
                "token request refused: this login may not be exchanged"
            );
            return Status::failure(
                StatusCode::FORBIDDEN,
                Reason::Forbidden,
                format!(
                    "a {} login cannot be exchanged for a token",
                    identity.source().as_str()
                ),
            )
            .into_response();
        }
        if let Err(wait) = self.per_user.acquire(&identity.user().username) {
            tracing::info!("token request refused: user rate limit");
            self.throttled.throttled(ThrottleScope::User);
            return too_many(wait, "for this user");
        }
        match self
            .issuer
            .issue_from(identity.user(), identity.source(), identity.expires_at())
        {
            Ok((token, expires)) => {
                let body = crate::login::exec_credential(&token, expires);
                let mut r = Response::new(ProxyBody::full(body));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(proxy_core::AuthnError::Invalid(reason)) => {
                tracing::info!(%reason, "token request refused");
                unauthorized()
            }
            Err(error) => error.to_status().into_response(),
        }
    }
}
