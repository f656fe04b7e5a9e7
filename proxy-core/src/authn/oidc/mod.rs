//! OIDC ID tokens, verified as kube-apiserver verifies them.
//!
//! A Bearer token whose (unverified) `iss` names this issuer is this
//! authenticator's; anything else is passed on. From there the token must:
//! use an allowed algorithm (never `none`, never HMAC), be signed by one of
//! the issuer's current keys, carry `iss` exactly, an `aud` containing a
//! configured audience, `exp`/`nbf`/`iat` within the clock skew, and every
//! required claim with its value. Claims then map to the user with kube's
//! rules (username prefix, `email_verified` when the username is `email`,
//! groups as a string or an array). No token appears in an error or a log.

pub mod config;
mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{decode, decode_header, Validation};
use serde_json::{Map, Value};

pub use config::{IssuerSettings, JwtAuthenticator, OidcFlags};
pub use keys::{discovery_jwks_uri, KeySet};

use super::{Authenticator, AuthnError, AuthnFuture, Identity, UserInfo};
use crate::credential::Credential;

/// One OIDC issuer's authenticator.
pub struct OidcAuthenticator {
    settings: IssuerSettings,
    keys: Arc<KeySet>,
    validation: Validation,
    name: String,
}

impl std::fmt::Debug for OidcAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuthenticator")
            .field("issuer", &self.settings.issuer_url)
            .finish()
    }
}

fn invalid(message: impl Into<String>) -> AuthnError {
    AuthnError::Invalid(message.into())
}

/// The `iss` of a JWT, read without verification (to pick the authenticator).
pub fn peek_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

impl OidcAuthenticator {
    /// Builds the authenticator and starts loading keys in the background
    /// (call within a tokio runtime). Not ready until keys are loaded.
    pub fn start(settings: IssuerSettings) -> Result<Arc<Self>, crate::tls::TlsError> {
        let keys = Arc::new(KeySet::new(&settings)?);
        keys.start(settings.refresh_interval);
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[&settings.issuer_url]);
        validation.set_audience(&settings.audiences);
        validation.leeway = settings.clock_skew.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        Ok(Arc::new(OidcAuthenticator {
            name: format!("oidc:{}", settings.issuer_url),
            settings,
            keys,
            validation,
        }))
    }

    /// The issuer's key set (fetch counters, readiness).
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthnError> {
        let header = decode_header(token)
            .map_err(|_| invalid("JWT header is malformed or names an unsupported algorithm"))?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "signing algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let key = self.keys.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| invalid(format!("ID token rejected: {}", describe(&e))))?;
        let claims = data.claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if let Some(iat) = claims.get("iat").and_then(Value::as_u64) {
            if iat > now + self.settings.clock_skew.as_secs() {
                return Err(invalid("ID token issued in the future (iat)"));
            }
        }
        let user = map_claims(&self.settings, &claims)?;
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp)));
        Ok(Identity::expiring(user, expires))
    }
}

fn describe(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind::*;
    match error.kind() {
        ExpiredSignature => "expired",
        ImmatureSignature => "not yet valid (nbf)",
        InvalidAudience => "audience does not match",
        InvalidIssuer => "issuer does not match",
        InvalidSignature => "bad signature",
        InvalidAlgorithm => "algorithm does not match the key",
        MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        _ => "malformed",
    }
}

fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, AuthnError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("claim {name:?} is not a string"))),
    }
}

fn string_list(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, AuthnError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("claim {name:?} holds a non-string")))
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "claim {name:?} is neither a string nor an array of strings"
        ))),
    }
}

/// Maps verified claims to a user with kube-apiserver's rules.
pub fn map_claims(
    settings: &IssuerSettings,
    claims: &Map<String, Value>,
) -> Result<UserInfo, AuthnError> {
    for (claim, required) in &settings.required_claims {
        if string_claim(claims, claim)? != Some(required.as_str()) {
            return Err(invalid(format!(
                "required claim {claim:?} does not have its required value"
            )));
        }
    }
    let username = string_claim(claims, &settings.username_claim)?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            invalid(format!(
                "username claim {:?} is missing",
                settings.username_claim
            ))
        })?;
    if settings.username_claim == "email" {
        match claims.get("email_verified") {
            None => {}
            Some(Value::Bool(true)) => {}
            Some(_) => return Err(invalid("email_verified is not true")),
        }
    }
    let groups = match &settings.groups {
        Some((claim, prefix)) => string_list(claims, claim)?
            .into_iter()
            .map(|g| format!("{prefix}{g}"))
            .collect(),
        None => Vec::new(),
    };
    let uid = match &settings.uid_claim {
        Some(claim) => string_claim(claims, claim)?.map(str::to_owned),
        None => None,
    };
    let mut extra = BTreeMap::new();
    for (key, claim) in &settings.extra {
        let values = string_list(claims, claim)?;
        if !values.is_empty() {
            extra.insert(key.clone(), values);
        }
    }
    Ok(UserInfo {
        username: format!("{}{username}", settings.username_prefix),
        uid,
        groups,
        extra,
    })
}

impl Authenticator for OidcAuthenticator {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        Box::pin(async move {
            let Credential::Bearer(token) = credential else {
                return Ok(None);
            };
            let token = token.expose();
            match peek_issuer(token) {
                Some(iss) if iss == self.settings.issuer_url => self.verify(token).await.map(Some),
                _ => Ok(None),
            }
        })
    }

    fn is_ready(&self) -> bool {
        self.keys.is_loaded()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> IssuerSettings {
        let jwt: JwtAuthenticator = serde_yaml::from_str(
            "issuer: {url: 'https://idp.example', audiences: [kube]}\nclaimMappings:\n  username: {claim: email, prefix: ''}\n  groups: {claim: groups, prefix: 'oidc:'}\n  uid: {claim: sub}\n  extra: [{key: Example.com/Tenant, claim: tenant}]\nclaimValidationRules: [{claim: hd, requiredValue: example.com}]\n",
        )
        .unwrap();
        jwt.settings("jwt[0]").unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn claims_map_with_kube_rules() {
        let user = map_claims(&settings(), &claims(json!({"email": "a@x", "email_verified": true, "groups": ["devs", "ops"], "sub": "123", "hd": "example.com", "tenant": "t1"}))).unwrap();
        assert_eq!(user.username, "a@x");
        assert_eq!(user.groups, ["oidc:devs", "oidc:ops"]);
        assert_eq!(user.uid.as_deref(), Some("123"));
        assert_eq!(user.extra["example.com/tenant"], ["t1"]);
        let single = map_claims(
            &settings(),
            &claims(json!({"email": "a@x", "groups": "devs", "hd": "example.com"})),
        )
        .unwrap();
        assert_eq!(single.groups, ["oidc:devs"]);
    }

    #[test]
    fn unverified_email_and_missing_required_claim_are_refused() {
        assert!(map_claims(
            &settings(),
            &claims(json!({"email": "a@x", "email_verified": false, "hd": "example.com"}))
        )
        .is_err());
        assert!(map_claims(
            &settings(),
            &claims(json!({"email": "a@x", "hd": "other.com"}))
        )
        .is_err());
        assert!(map_claims(
            &settings(),
            &claims(json!({"email": 5, "hd": "example.com"}))
        )
        .is_err());
    }

    #[test]
    fn flags_follow_kube_prefix_defaults() {
        let flags = OidcFlags {
            issuer_url: Some("https://idp".into()),
            client_id: Some("kube".into()),
            ..Default::default()
        };
        let s = flags.to_jwt().unwrap().unwrap().settings("flags").unwrap();
        assert_eq!(
            (s.username_claim.as_str(), s.username_prefix.as_str()),
            ("sub", "https://idp#")
        );
        let email = OidcFlags {
            username_claim: Some("email".into()),
            ..flags.clone()
        };
        assert_eq!(
            email
                .to_jwt()
                .unwrap()
                .unwrap()
                .settings("f")
                .unwrap()
                .username_prefix,
            ""
        );
        let dash = OidcFlags {
            username_prefix: Some("-".into()),
            ..flags
        };
        assert_eq!(
            dash.to_jwt()
                .unwrap()
                .unwrap()
                .settings("f")
                .unwrap()
                .username_prefix,
            ""
        );
    }

    #[test]
    fn cel_and_hmac_are_refused_with_the_field_named() {
        let jwt: JwtAuthenticator = serde_yaml::from_str(
            "issuer: {url: 'https://idp', audiences: [k]}\nclaimMappings:\n  username: {expression: 'claims.sub'}\nsigningAlgorithms: [HS256]\n",
        )
        .unwrap();
        let problems = jwt.settings("authentication.jwt[0]").unwrap_err();
        let text = format!("{problems:?}");
        assert!(
            text.contains("authentication.jwt[0].claimMappings.username.expression"),
            "{text}"
        );
        assert!(text.contains("not supported yet"), "{text}");
        assert!(text.contains("signingAlgorithms[0]"), "{text}");
    }

    #[test]
    fn issuer_is_peeked_without_verification() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"iss":"https://idp"}"#);
        assert_eq!(
            peek_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://idp")
        );
        assert_eq!(peek_issuer("not-a-jwt"), None);
        assert_eq!(peek_issuer("a.b.c.d"), None);
    }

    #[tokio::test]
    async fn an_exp_beyond_the_clock_means_no_expiry_not_a_panic() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
            "x": b64(&point[1..33]), "y": b64(&point[33..])}]});
        // Nothing listens at this issuer: the preloaded keys are the only ones.
        let jwt: JwtAuthenticator = serde_yaml::from_str(
            "issuer: {url: 'https://127.0.0.1:9/idp', audiences: [kube]}\nclaimMappings: {username: {claim: sub, prefix: ''}}\nsigningAlgorithms: [ES256]\n",
        )
        .unwrap();
        let oidc = OidcAuthenticator::start(jwt.settings("jwt[0]").unwrap()).unwrap();
        oidc.keys()
            .preload(&serde_json::from_value(jwks).unwrap())
            .unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        let claims = json!({"iss": "https://127.0.0.1:9/idp", "aud": "kube", "sub": "alice",
            "exp": u64::MAX});
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
        .unwrap();
        let credential = Credential::Bearer(crate::credential::Secret::new(token));
        let identity = oidc.authenticate(&credential).await.unwrap().unwrap();
        assert_eq!(identity.user().username, "alice");
        assert_eq!(identity.expires_at(), None);
    }
}
