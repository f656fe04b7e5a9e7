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
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::config::IssuerSettings;
use crate::authn::AuthnError;
use crate::counters::KeyFetchCounters;
use crate::tls;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

struct Key {
    key: Arc<DecodingKey>,
    /// The algorithms this key may verify: the issuer's allowed algorithms
    /// that fit the key's type and curve (and its `alg`, when it names one).
    algorithms: Vec<Algorithm>,
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
    counters: Arc<KeyFetchCounters>,
    min_refresh_interval: Duration,
    algorithms: Vec<Algorithm>,
}

/// The fields of an OpenID discovery document authproxy uses.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    /// The issuer the document speaks for.
    pub issuer: String,
    /// Where the issuer's JWKS is.
    pub jwks_uri: String,
}

/// Parses an OpenID discovery document (bytes from the IdP). Never panics.
pub fn parse_discovery(bytes: &[u8]) -> Result<Discovery, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not a discovery document: {e}"))
}

/// Most keys of one JWKS considered; the rest are ignored.
const MAX_KEYS: usize = 100;
/// Most log lines about unusable keys per JWKS load.
const MAX_SKIP_LOGS: usize = 5;
/// Most characters of an IdP- or caller-chosen `kid` shown in logs and errors.
const MAX_KID_CHARS: usize = 64;

/// A `kid` as it may appear in a log line or an error: at most
/// 64 characters, control and non-ASCII characters escaped.
pub fn shown_kid(kid: &str) -> String {
    let mut shown: String = kid
        .chars()
        .take(MAX_KID_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if kid.chars().nth(MAX_KID_CHARS).is_some() {
        shown.push_str("...");
    }
    shown
}

/// The algorithms a JWK can verify, derived from its key type and curve
/// (`kty`/`crv`), narrowed to `allowed`. Its `alg`, when it names one, must
/// fit the key type, but does not narrow further: kube-apiserver verifies
/// with any allowed algorithm of the key's type (an RSA key whose JWK says
/// RS256 verifies a PS384 token), and so does the proxy.
fn usable_algorithms(jwk: &Jwk, allowed: &[Algorithm]) -> Result<Vec<Algorithm>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            ref other => return Err(format!("curve {other:?} is not supported for EC keys")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            ref other => return Err(format!("curve {other:?} is not supported for OKP keys")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never accepted".into())
        }
    };
    let named = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(
            alg.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("alg {alg} is not a signing algorithm"))?,
        ),
    };
    if let Some(n) = named.filter(|n| !family.contains(n)) {
        return Err(format!("alg {n:?} does not fit the key type"));
    }
    let algorithms: Vec<Algorithm> = family
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect();
    if algorithms.is_empty() {
        return Err("no allowed signing algorithm fits the key".into());
    }
    Ok(algorithms)
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
            counters: Arc::new(KeyFetchCounters::new(&settings.issuer_url)),
            min_refresh_interval: settings.min_refresh_interval,
            algorithms: settings.algorithms.clone(),
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

    /// Fetch results and the age of the keys in use, for metrics.
    pub fn counters(&self) -> &Arc<KeyFetchCounters> {
        &self.counters
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<DecodingKey>> {
        let keys = self.keys.load();
        let keys = keys.as_ref()?;
        let fits = |k: &Key| k.algorithms.contains(&alg);
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
            "no signing key \"{}\" for {alg:?} at issuer {}",
            kid.map(shown_kid).unwrap_or_default(),
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
                self.counters.loaded(true);
            }
            Err(error) => {
                self.counters.failed_because(&error.to_string());
                tracing::warn!(issuer = %self.issuer, %error, "cannot refresh signing keys; keeping the last good ones");
            }
        }
    }

    async fn get_bytes(&self, url: &str) -> Result<Bytes, String> {
        self.get_with(url, "application/json", None).await
    }

    /// GETs `url` over the issuer's TLS settings (its CA), bounded in time and
    /// size, with `bearer` as the credential when given (a distributed claim
    /// source's access token).
    pub(crate) async fn get_with(
        &self,
        url: &str,
        accept: &str,
        bearer: Option<&str>,
    ) -> Result<Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url} is not an https:// URL"));
        }
        let mut request = http::Request::get(uri).header(http::header::ACCEPT, accept);
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
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
        Ok(body)
    }

    /// Installs keys from a JWKS document now, as if fetched (for pinned
    /// keys, and for benchmarks that must not depend on an IdP).
    pub fn preload(&self, jwks: &JwkSet) -> Result<(), String> {
        let bytes = serde_json::to_vec(jwks).map_err(|e| e.to_string())?;
        self.keys.store(Some(Arc::new(keys_from(
            &bytes,
            &self.algorithms,
            "preloaded JWKS",
        )?)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.counters.loaded(false);
        Ok(())
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let discovery = parse_discovery(&self.get_bytes(&self.discovery_url).await?)
            .map_err(|e| format!("{}: {e}", self.discovery_url))?;
        if discovery.issuer != self.issuer {
            return Err(format!(
                "discovery document names issuer {:?}, expected {:?}",
                discovery.issuer.chars().take(256).collect::<String>(),
                self.issuer
            ));
        }
        let jwks_uri = discovery.jwks_uri;
        keys_from(
            &self.get_bytes(&jwks_uri).await?,
            &self.algorithms,
            &jwks_uri,
        )
    }
}

/// Checks a JWKS document (bytes from the IdP) the way a key load does and
/// counts the keys usable with `allowed`. Never panics; unusable keys are
/// skipped (and logged, a few per document).
pub fn parse_jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<usize, String> {
    keys_from(bytes, allowed, "JWKS").map(|keys| keys.keys.len())
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

fn keys_from(bytes: &[u8], allowed: &[Algorithm], source: &str) -> Result<Keys, String> {
    let set: RawSet =
        serde_json::from_slice(bytes).map_err(|e| format!("{source}: not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    let mut by_kid = HashMap::new();
    let mut skipped = 0usize;
    let total = set.keys.len();
    for (index, raw) in set.keys.into_iter().take(MAX_KEYS).enumerate() {
        let kid = raw
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .map(shown_kid)
            .unwrap_or_default();
        let parsed = serde_json::from_value::<Jwk>(raw)
            .map_err(|e| format!("not a usable JWK: {e}"))
            .and_then(|jwk| {
                if matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                ) {
                    return Err("an encryption key (use: enc)".into());
                }
                let algorithms = usable_algorithms(&jwk, allowed)?;
                let key =
                    DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
                Ok((
                    jwk.common.key_id,
                    Key {
                        key: Arc::new(key),
                        algorithms,
                    },
                ))
            });
        match parsed {
            Ok((kid, key)) => {
                if let Some(kid) = kid {
                    by_kid.entry(kid).or_insert(keys.len());
                }
                keys.push(key);
            }
            Err(reason) => {
                skipped += 1;
                if skipped <= MAX_SKIP_LOGS {
                    tracing::info!(%source, index, kid = %kid, %reason, "skipping a JWKS key");
                }
            }
        }
    }
    if skipped > MAX_SKIP_LOGS {
        tracing::info!(%source, skipped, "more JWKS keys skipped");
    }
    if total > MAX_KEYS {
        tracing::info!(%source, total, considered = MAX_KEYS, "JWKS holds too many keys; the rest are ignored");
    }
    if keys.is_empty() {
        return Err(format!("{source}: no usable signing keys"));
    }
    Ok(Keys { keys, by_kid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn settings(algorithms: &str) -> IssuerSettings {
        let jwt: super::super::JwtAuthenticator = serde_yaml_ng::from_str(&format!(
            "issuer: {{url: 'https://idp.example', audiences: [kube]}}\nsigningAlgorithms: {algorithms}\n"
        ))
        .unwrap();
        jwt.settings("jwt[0]").unwrap()
    }

    fn p256_jwk(kid: &str) -> serde_json::Value {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let b64 =
            |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b);
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
    }

    fn rsa_jwk(kid: &str) -> serde_json::Value {
        // Any modulus loads; these tests never verify a signature with it.
        json!({"kty": "RSA", "kid": kid, "e": "AQAB", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw"})
    }

    #[test]
    fn keys_without_alg_are_typed_by_kty_and_crv_and_unusable_ones_skipped() {
        let jwks = json!({"keys": [
            rsa_jwk("rsa-no-alg"),
            p256_jwk("ec-no-alg"),
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "e": "AQAB", "n": "AQAB"},
            {"kty": "RSA", "kid": "unknown-alg", "alg": "RS1024", "e": "AQAB", "n": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "ec-rs", "alg": "RS256", "x": "AA", "y": "AA"},
            {"kty": "XYZ"},
            5,
            "not a key"
        ]});
        let bytes = serde_json::to_vec(&jwks).unwrap();
        assert_eq!(
            parse_jwks(&bytes, &[Algorithm::RS256, Algorithm::ES256]),
            Ok(2)
        );
        // An RSA key without alg is still refused for algorithms not allowed.
        assert_eq!(parse_jwks(&bytes, &[Algorithm::ES256]), Ok(1));
        assert!(parse_jwks(&bytes, &[Algorithm::EdDSA]).is_err());
    }

    #[tokio::test]
    async fn a_key_without_alg_verifies_only_its_own_family() {
        let set = KeySet::new(&settings("[RS256, ES256]")).unwrap();
        let jwks: JwkSet =
            serde_json::from_value(json!({"keys": [rsa_jwk("r"), p256_jwk("e")]})).unwrap();
        set.preload(&jwks).unwrap();
        assert!(set.key_for(Some("r"), Algorithm::RS256).await.is_ok());
        assert!(set.key_for(Some("r"), Algorithm::ES256).await.is_err());
        assert!(set.key_for(Some("e"), Algorithm::ES256).await.is_ok());
        assert!(
            set.key_for(Some("r"), Algorithm::PS256).await.is_err(),
            "PS256 is not allowed"
        );
    }

    #[tokio::test]
    async fn an_attacker_chosen_kid_is_bounded_and_escaped_in_the_error() {
        let set = KeySet::new(&settings("[ES256]")).unwrap();
        let mut known = p256_jwk("known");
        known["alg"] = json!("ES256");
        let jwks: JwkSet = serde_json::from_value(json!({"keys": [known]})).unwrap();
        set.preload(&jwks).unwrap();
        let kid = format!("evil\n\u{1b}[31m{}", "k".repeat(100_000));
        let Err(AuthnError::Invalid(reason)) = set.key_for(Some(&kid), Algorithm::ES256).await
        else {
            panic!("an unknown kid must be refused");
        };
        assert!(reason.len() < 400, "reason is {} bytes long", reason.len());
        assert!(
            !reason.contains('\n') && !reason.contains('\u{1b}'),
            "{reason}"
        );
    }

    #[test]
    fn shown_kid_truncates_and_escapes() {
        assert_eq!(shown_kid("abc"), "abc");
        assert_eq!(shown_kid("a\nb"), "a\\nb");
        let long = shown_kid(&"x".repeat(1000));
        assert_eq!(long, format!("{}...", "x".repeat(MAX_KID_CHARS)));
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            prop_oneof![
                Just("RSA".to_owned()),
                Just("EC".to_owned()),
                Just("OKP".to_owned()),
                Just("oct".to_owned()),
                Just("P-256".to_owned()),
                Just("P-384".to_owned()),
                Just("P-521".to_owned()),
                Just("Ed25519".to_owned()),
                Just("X25519".to_owned()),
                Just("RS256".to_owned()),
                Just("ES256".to_owned()),
                Just("EdDSA".to_owned()),
                Just("sig".to_owned()),
                Just("enc".to_owned()),
                Just("AQAB".to_owned()),
                Just("AA".to_owned()),
                ".{0,12}"
            ]
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("kty".to_owned()),
                        Just("crv".to_owned()),
                        Just("alg".to_owned()),
                        Just("use".to_owned()),
                        Just("kid".to_owned()),
                        Just("n".to_owned()),
                        Just("e".to_owned()),
                        Just("x".to_owned()),
                        Just("y".to_owned()),
                        Just("k".to_owned()),
                        Just("keys".to_owned()),
                        Just("issuer".to_owned()),
                        Just("jwks_uri".to_owned()),
                        Just("key_ops".to_owned()),
                        ".{0,6}"
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn nothing_an_idp_sends_panics_the_key_loader(
            keys in prop::collection::vec(arbitrary_json(), 0..6),
            raw in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let jwks = serde_json::to_vec(&json!({"keys": keys})).unwrap();
            let all = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA];
            let _ = parse_jwks(&jwks, &all);
            let _ = parse_jwks(&raw, &all);
            let _ = parse_discovery(&raw);
            let _ = parse_discovery(&serde_json::to_vec(&keys).unwrap());
        }
    }
}
