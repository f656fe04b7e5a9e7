//! The issuer's signing keys: discovery, JWKS fetch, and the rules for
//! refreshing them.
//!
//! - Keys are fetched at start (retrying with backoff until the IdP answers;
//!   until then the authenticator is not ready) and refreshed periodically.
//! - A token with an unknown `kid` triggers a refresh, at most once per
//!   `min_refresh_interval`, single-flight: a burst of requests with a new
//!   key waits for one fetch.
//! - A failed refresh keeps the last good keys, so an IdP outage does not
//!   log anybody out whose token is signed by a known key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::config::IssuerSettings;
use crate::authn::AuthnError;
use crate::tls;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

struct Key {
    key: Arc<DecodingKey>,
    /// The JWK's `alg`, when it names one.
    alg: Option<Algorithm>,
}

struct Keys {
    keys: Vec<Key>,
    by_kid: HashMap<String, usize>,
}

struct RefreshState {
    last_attempt: Option<Instant>,
}

/// The keys of one issuer, kept fresh.
pub struct KeySet {
    issuer: String,
    discovery_url: String,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    keys: ArcSwapOption<Keys>,
    refresh: tokio::sync::Mutex<RefreshState>,
    generation: AtomicU64,
    fetches: AtomicU64,
    min_refresh_interval: Duration,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Discovery {
    fn jwks_uri_of(self, issuer: &str) -> Result<String, String> {
        if self.issuer != issuer {
            return Err(format!(
                "discovery document names issuer {:?}, expected {:?}",
                self.issuer, issuer
            ));
        }
        Ok(self.jwks_uri)
    }
}

/// Reads an OpenID discovery document as the key loader does: the
/// `jwks_uri` it names, when its `issuer` is exactly `issuer`.
pub fn discovery_jwks_uri(document: &[u8], issuer: &str) -> Result<String, String> {
    serde_json::from_slice::<Discovery>(document)
        .map_err(|e| e.to_string())?
        .jwks_uri_of(issuer)
}

impl KeySet {
    /// A key set for `settings`; nothing is fetched until [`KeySet::start`].
    pub fn new(settings: &IssuerSettings) -> Result<KeySet, tls::TlsError> {
        let roots = match &settings.ca_pem {
            Some(pem) => tls::root_store(
                pem,
                &format!("certificateAuthority of issuer {}", settings.issuer_url),
            )?,
            None => tls::system_roots()?,
        };
        let config = tls::client_config(roots, None, &[])?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(KeySet {
            issuer: settings.issuer_url.clone(),
            discovery_url: settings.discovery_url.clone(),
            client: Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .build(connector),
            keys: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(RefreshState { last_attempt: None }),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            min_refresh_interval: settings.min_refresh_interval,
        })
    }

    /// Starts the background task: first load (retried with backoff), then a
    /// refresh every `refresh_interval`. Stops when the key set is dropped.
    pub fn start(self: &Arc<Self>, refresh_interval: Duration) {
        let weak: Weak<KeySet> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let Some(this) = weak.upgrade() else { return };
                let loaded = this.refresh_now().await;
                drop(this);
                let wait = if loaded {
                    backoff = Duration::from_millis(200);
                    refresh_interval
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// True once keys have been loaded.
    pub fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// How many JWKS fetches were attempted.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<DecodingKey>> {
        let keys = self.keys.load();
        let keys = keys.as_ref()?;
        let fits = |k: &Key| k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => keys
                .by_kid
                .get(kid)
                .map(|&i| &keys.keys[i])
                .filter(|k| fits(k))
                .map(|k| k.key.clone()),
            // Without a kid, a single key that fits is unambiguous.
            None => {
                let mut fitting = keys.keys.iter().filter(|k| fits(k));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k.key.clone()),
                    _ => None,
                }
            }
        }
    }

    /// The key to verify a token signed with `alg` by key `kid`; refreshes
    /// the set (rate-limited, single-flight) when the key is unknown.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<DecodingKey>, AuthnError> {
        let seen = self.generation.load(Ordering::Acquire);
        if let Some(key) = self.lookup(kid, alg) {
            return Ok(key);
        }
        self.refresh_if_due(seen).await;
        if let Some(key) = self.lookup(kid, alg) {
            return Ok(key);
        }
        if !self.is_loaded() {
            return Err(AuthnError::Unavailable {
                backend: format!("OIDC issuer {}", self.issuer),
                reason: "signing keys not loaded yet".into(),
            });
        }
        Err(AuthnError::Invalid(format!(
            "no signing key {kid:?} for {alg:?} at issuer {}",
            self.issuer
        )))
    }

    async fn refresh_if_due(&self, seen_generation: u64) {
        let mut state = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen_generation {
            return; // another request refreshed while this one waited
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refresh_interval)
        {
            return;
        }
        state.last_attempt = Some(Instant::now());
        self.fetch_and_store().await;
    }

    /// Refreshes now (single-flight with on-demand refreshes). True when keys
    /// are loaded. Scheduled refreshes do not count against the on-demand
    /// rate limit, so a key rotated right after a scheduled refresh is still
    /// picked up by the first token that uses it.
    pub async fn refresh_now(&self) -> bool {
        let _state = self.refresh.lock().await;
        self.fetch_and_store().await;
        self.is_loaded()
    }

    async fn fetch_and_store(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(issuer = %self.issuer, keys = keys.keys.len(), "signing keys loaded");
                self.keys.store(Some(Arc::new(keys)));
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "cannot refresh signing keys; keeping the last good ones");
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("{url}: timed out"))?
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect(),
        )
        .await
        .map_err(|_| format!("{url}: timed out reading"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    }

    /// Installs keys from a JWKS document now, as if fetched (for pinned
    /// keys, and for benchmarks that must not depend on an IdP).
    pub fn preload(&self, jwks: &JwkSet) -> Result<(), String> {
        self.keys
            .store(Some(Arc::new(Self::keys_from(jwks, "preloaded JWKS")?)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let discovery: Discovery = self.get_json(&self.discovery_url).await?;
        let jwks_uri = discovery.jwks_uri_of(&self.issuer)?;
        let set: JwkSet = self.get_json(&jwks_uri).await?;
        Self::keys_from(&set, &jwks_uri)
    }

    fn keys_from(set: &JwkSet, source: &str) -> Result<Keys, String> {
        let mut keys = Vec::new();
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let signing = !matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            );
            if !signing || !jwk.is_supported() {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            if let Some(kid) = &jwk.common.key_id {
                by_kid.insert(kid.clone(), keys.len());
            }
            keys.push(Key {
                key: Arc::new(key),
                alg,
            });
        }
        if keys.is_empty() {
            return Err(format!("{source}: no usable signing keys"));
        }
        Ok(Keys { keys, by_kid })
    }
}
