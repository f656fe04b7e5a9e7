//! A cache in front of any authenticator, for Bearer tokens.
//!
//! The key is the token's keyed 128-bit SipHash under a per-process random
//! key ([`super::secret_key`]); the token itself is never stored.
//! A success is kept until the token's own expiry or `max_ttl`, whichever
//! comes first; a refusal (bad or unknown token) is kept for `negative_ttl`
//! so a flood of bad tokens does not reach the IdP; a backend outage is not
//! cached at all. Hits and misses are counted for metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::future::Cache;
use moka::Expiry;

use super::{Authenticator, AuthnError, AuthnFuture, Identity};
use crate::credential::Credential;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Longest time a success is kept.
    pub max_ttl: Duration,
    /// How long a refusal is kept.
    pub negative_ttl: Duration,
    /// Most entries kept.
    pub capacity: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_ttl: Duration::from_secs(120),
            negative_ttl: Duration::from_secs(10),
            capacity: 10_000,
        }
    }
}

#[derive(Clone)]
enum Outcome {
    Authenticated(Arc<Identity>),
    Unclaimed,
    Refused(String),
}

struct Lifetimes(CacheSettings);

impl Expiry<u128, Outcome> for Lifetimes {
    fn expire_after_create(&self, _key: &u128, value: &Outcome, _now: Instant) -> Option<Duration> {
        Some(match value {
            Outcome::Authenticated(identity) => match identity.expires_at() {
                Some(at) => at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(self.0.max_ttl),
                None => self.0.max_ttl,
            },
            Outcome::Unclaimed | Outcome::Refused(_) => self.0.negative_ttl,
        })
    }
}

/// Counters of a token cache, summed over the caches of a chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Answers the cache did not have.
    pub misses: u64,
    /// Entries held now (approximate).
    pub entries: u64,
}

impl std::ops::Add for CacheStats {
    type Output = CacheStats;

    fn add(self, other: CacheStats) -> CacheStats {
        CacheStats {
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            entries: self.entries + other.entries,
        }
    }
}

/// An authenticator with a cache in front.
pub struct CachedAuthenticator {
    inner: Arc<dyn Authenticator>,
    cache: Cache<u128, Outcome>,
    hits: AtomicU64,
    misses: AtomicU64,
    name: String,
}

impl std::fmt::Debug for CachedAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAuthenticator")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl CachedAuthenticator {
    /// Puts a cache in front of `inner`.
    pub fn new(inner: Arc<dyn Authenticator>, settings: CacheSettings) -> Self {
        let cache = Cache::builder()
            .max_capacity(settings.capacity)
            .expire_after(Lifetimes(settings))
            .build();
        CachedAuthenticator {
            name: format!("cached({})", inner.name()),
            inner,
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// (hits, misses) so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    async fn bearer(
        &self,
        credential: &Credential,
        token: &str,
    ) -> Result<Option<Arc<Identity>>, AuthnError> {
        let key = super::secret_key::key(token.as_bytes());
        if let Some(outcome) = self.cache.get(&key).await {
            let expired = matches!(&outcome, Outcome::Authenticated(id) if id.expires_at().is_some_and(|at| at <= SystemTime::now()));
            if !expired {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return match outcome {
                    Outcome::Authenticated(identity) => Ok(Some(identity)),
                    Outcome::Unclaimed => Ok(None),
                    Outcome::Refused(reason) => Err(AuthnError::Invalid(reason)),
                };
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.authenticate(credential).await;
        let outcome = match &result {
            Ok(Some(identity)) => Some(Outcome::Authenticated(identity.clone())),
            Ok(None) => Some(Outcome::Unclaimed),
            Err(AuthnError::Invalid(reason)) => Some(Outcome::Refused(reason.clone())),
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            self.cache.insert(key, outcome).await;
        }
        result
    }
}

impl Authenticator for CachedAuthenticator {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        match credential {
            Credential::Bearer(token) => Box::pin(self.bearer(credential, token.expose())),
            _ => self.inner.authenticate(credential),
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn cache_stats(&self) -> CacheStats {
        let (hits, misses) = self.counters();
        CacheStats {
            hits,
            misses,
            entries: self.cache.entry_count(),
        } + self.inner.cache_stats()
    }

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        self.inner.counters(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;
    use crate::credential::Secret;
    use std::sync::atomic::AtomicUsize;

    struct Counting(AtomicUsize, Option<SystemTime>);
    impl Authenticator for Counting {
        fn authenticate<'a>(&'a self, c: &'a Credential) -> AuthnFuture<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let result = match c {
                Credential::Bearer(t) if t.expose() == "good" => Ok(Some(Identity::expiring(
                    UserInfo {
                        username: "u".into(),
                        ..Default::default()
                    },
                    self.1,
                ))),
                Credential::Bearer(t) if t.expose() == "bad" => {
                    Err(AuthnError::Invalid("bad".into()))
                }
                _ => Ok(None),
            };
            Box::pin(std::future::ready(result))
        }
        fn name(&self) -> &str {
            "counting"
        }
    }

    #[tokio::test]
    async fn hits_skip_the_inner_authenticator() {
        let inner = Arc::new(Counting(AtomicUsize::new(0), None));
        let cached = CachedAuthenticator::new(inner.clone(), CacheSettings::default());
        for token in ["good", "good", "bad", "bad", "unknown", "unknown"] {
            let _ = cached
                .authenticate(&Credential::Bearer(Secret::new(token)))
                .await;
        }
        assert_eq!(inner.0.load(Ordering::SeqCst), 3);
        assert_eq!(cached.counters(), (3, 3));
    }

    #[tokio::test]
    async fn expired_tokens_are_not_served_from_cache() {
        let inner = Arc::new(Counting(
            AtomicUsize::new(0),
            Some(SystemTime::now() - Duration::from_secs(1)),
        ));
        let cached = CachedAuthenticator::new(inner.clone(), CacheSettings::default());
        for _ in 0..3 {
            let _ = cached
                .authenticate(&Credential::Bearer(Secret::new("good")))
                .await;
        }
        assert_eq!(inner.0.load(Ordering::SeqCst), 3);
    }
}
