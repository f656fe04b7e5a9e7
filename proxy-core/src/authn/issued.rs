//! Tokens the proxy issues itself after an LDAP or OIDC login, so kubectl
//! need not send a password on every call.
//!
//! Tokens are short-lived JWTs signed with ES256 (P-256) or EdDSA (Ed25519)
//! keys read from PEM files (PKCS#8), so every replica that mounts the same
//! files (a Secret) verifies every other replica's tokens. The first key
//! signs; every listed key verifies; a key's `kid` is derived from its public
//! key. Removing a key from the list revokes every token it signed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Authenticator, AuthnError, AuthnFuture, Identity, Source, UserInfo, Verification};
use crate::credential::Credential;
use crate::reload::{watch_files, FileWatch, ReloadKind, ReloadReporter};

/// A problem with a signing key file.
#[derive(Debug, thiserror::Error)]
#[error("signing key {path}: {problem}")]
pub struct KeyError {
    /// The file.
    pub path: String,
    /// What is wrong (never key material).
    pub problem: String,
}

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    user: UserInfo,
    /// The login the token was exchanged for, when its user is looked up
    /// again there (`ldap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src: Option<String>,
    /// The session the token belongs to (what a revocation names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

/// What a verified token says beyond its identity.
struct Verified {
    identity: Arc<Identity>,
    src: Option<String>,
    sid: Option<String>,
    iat: u64,
    exp: u64,
}

/// An issued token's session, as [`IssuedTokens::session_of`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSession {
    /// The session ID (`sid`); `None` for a token issued before sessions.
    pub session: Option<String>,
    /// The token's user.
    pub user: String,
    /// When it was issued (seconds since the epoch).
    pub issued_at: u64,
    /// When it expires (seconds since the epoch).
    pub expires: u64,
}

/// A new session ID: 128 random bits, URL-safe base64 (22 characters).
fn new_session() -> Result<String, AuthnError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        AuthnError::Unavailable {
            backend: "token issuer".into(),
            reason: "no randomness for a session ID".into(),
        }
    })?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        bytes,
    ))
}

/// The `src` of a token issued after an LDAP login.
const FROM_LDAP: &str = "ldap";

/// The keys in force: the first file's signs, all verify.
struct KeyRing {
    signer: SigningKey,
    verifiers: HashMap<String, (Algorithm, DecodingKey)>,
}

/// Issues and verifies the proxy's own tokens.
pub struct IssuedTokens {
    issuer: String,
    lifetime: Duration,
    keys: ArcSwap<KeyRing>,
    watch: std::sync::Mutex<Option<FileWatch>>,
    /// Who the users of tokens issued after an LDAP login are now.
    refresher: Arc<super::refresh::Refresher>,
    /// The revocations in force (none until [`IssuedTokens::use_revocations`]).
    revocations: ArcSwap<super::revocation::Revocations>,
}

impl std::fmt::Debug for IssuedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.load().verifiers.len())
            .finish()
    }
}

fn load_key(path: &Path) -> Result<(SigningKey, DecodingKey), KeyError> {
    let pem = crate::reload::read_settled(path).map_err(|e| KeyError {
        path: path.display().to_string(),
        problem: e.to_string(),
    })?;
    parse_key(&pem, path)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<(SigningKey, DecodingKey), KeyError> {
    let err = |problem: String| KeyError {
        path: path.display().to_string(),
        problem,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|_| err("not a PKCS#8 PEM private key".into()))?;
    let der = der.secret_pkcs8_der();
    let rng = ring::rand::SystemRandom::new();
    let b64 = |bytes: &[u8]| {
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
    };
    let (alg, public, decoding) =
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
            let point = pair.public_key().as_ref().to_vec();
            if point.len() != 65 {
                return Err(err("unexpected P-256 public key length".into()));
            }
            let decoding = DecodingKey::from_ec_components(&b64(&point[1..33]), &b64(&point[33..]))
                .map_err(|e| err(e.to_string()))?;
            (Algorithm::ES256, point, decoding)
        } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let public = pair.public_key().as_ref().to_vec();
            let decoding =
                DecodingKey::from_ed_components(&b64(&public)).map_err(|e| err(e.to_string()))?;
            (Algorithm::EdDSA, public, decoding)
        } else {
            return Err(err(
                "only P-256 (ES256) and Ed25519 (EdDSA) keys are supported".into(),
            ));
        };
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        _ => EncodingKey::from_ed_der(der),
    };
    let kid = Sha256::digest(&public)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((SigningKey { kid, alg, encoding }, decoding))
}

fn key_ring(keys: Vec<(SigningKey, DecodingKey)>) -> Result<KeyRing, KeyError> {
    let mut verifiers = HashMap::new();
    let mut signer = None;
    for (key, decoding) in keys {
        verifiers.insert(key.kid.clone(), (key.alg, decoding));
        signer.get_or_insert(key);
    }
    let signer = signer.ok_or_else(|| KeyError {
        path: "(none)".into(),
        problem: "at least one signing key file is required".into(),
    })?;
    Ok(KeyRing { signer, verifiers })
}

/// The instant `exp` (seconds since the epoch) names; one beyond what the
/// clock can hold is read as the year 2106.
fn expiry(exp: u64) -> SystemTime {
    let far = Duration::from_secs(u64::from(u32::MAX));
    UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .unwrap_or(UNIX_EPOCH + far)
}

impl IssuedTokens {
    /// Loads the keys; the first one signs. `issuer` names the tokens' `iss`.
    pub fn load(
        issuer: &str,
        key_files: &[impl AsRef<Path>],
        lifetime: Duration,
    ) -> Result<Arc<Self>, KeyError> {
        let keys = key_files
            .iter()
            .map(|path| load_key(path.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(IssuedTokens {
            refresher: Arc::default(),
            revocations: ArcSwap::from_pointee(Default::default()),
            issuer: issuer.to_owned(),
            lifetime,
            keys: ArcSwap::from_pointee(key_ring(keys)?),
            watch: std::sync::Mutex::new(None),
        }))
    }

    /// Like [`IssuedTokens::load`], then re-reads the key files every
    /// `interval` while the issuer lives: a new set of keys is taken whole
    /// when every file parses (a key added verifies, a key removed revokes
    /// its tokens, a new first key signs); otherwise the keys in force stay.
    /// Must be called within a tokio runtime.
    pub fn load_and_watch(
        issuer: &str,
        key_files: &[PathBuf],
        lifetime: Duration,
        interval: Duration,
        reporter: ReloadReporter,
    ) -> Result<Arc<Self>, KeyError> {
        let this = Self::load(issuer, key_files, lifetime)?;
        let initial = key_files
            .iter()
            .map(|path| std::fs::read(path).unwrap_or_default())
            .collect();
        let weak = Arc::downgrade(&this);
        let paths = key_files.to_vec();
        let watch = watch_files(
            key_files.to_vec(),
            interval,
            initial,
            ReloadKind::IssuedTokenKeys,
            reporter,
            move |contents| {
                let keys = contents
                    .iter()
                    .zip(&paths)
                    .map(|(pem, path)| parse_key(pem, path))
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(key_ring)
                    .map_err(|e| e.to_string())?;
                if let Some(this) = weak.upgrade() {
                    this.keys.store(Arc::new(keys));
                }
                Ok(())
            },
        );
        if let Ok(mut slot) = this.watch.lock() {
            *slot = Some(watch);
        }
        Ok(this)
    }

    /// The tokens' `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The configured lifetime of a token.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Issues a token for `user`; returns it with its expiry.
    pub fn issue(&self, user: &UserInfo) -> Result<(String, SystemTime), AuthnError> {
        self.issue_until(user, None)
    }

    /// Checks every token against `revocations` from now on.
    pub fn use_revocations(&self, revocations: Arc<super::revocation::Revocations>) {
        self.revocations.store(revocations);
    }

    /// The revocations tokens are checked against.
    pub fn revocations(&self) -> Arc<super::revocation::Revocations> {
        self.revocations.load_full()
    }

    /// The session of `token`, which must be one of these tokens (its
    /// signature, issuer and expiry checked; revoked or not).
    pub fn session_of(&self, token: &str) -> Result<TokenSession, AuthnError> {
        let verified = self.verify_signed(token)?;
        Ok(TokenSession {
            session: verified.sid,
            user: verified.identity.user().username.clone(),
            issued_at: verified.iat,
            expires: verified.exp,
        })
    }

    /// The directory answers for tokens issued after an LDAP login (kept
    /// across reloads) and their counters.
    pub fn refresher(&self) -> &Arc<super::refresh::Refresher> {
        &self.refresher
    }

    /// These tokens as an authenticator that looks the users of tokens
    /// issued after an LDAP login up again as `way` says (see
    /// [`super::refresh`]). A chain holds one; a reload builds a new one
    /// with the new chain, so a refused configuration changes nothing.
    pub fn refreshing(self: &Arc<Self>, way: super::refresh::Refreshing) -> RefreshingIssued {
        RefreshingIssued {
            tokens: self.clone(),
            way,
        }
    }

    /// Like [`IssuedTokens::issue_until`] for a user that logged in by
    /// `source`: after an LDAP login the token's user is looked up in the
    /// directory again while the token is used (see
    /// [`super::refresh`]).
    pub fn issue_from(
        &self,
        user: &UserInfo,
        source: Source,
        not_after: Option<SystemTime>,
    ) -> Result<(String, SystemTime), AuthnError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let cap = not_after.map(|at| at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
        let src = (source == Source::Ldap).then(|| FROM_LDAP.to_owned());
        self.issue_at(user, now, cap, src)
    }

    /// Issues a token for `user` that expires after the configured lifetime
    /// or at `not_after` (the source credential's expiry), whichever comes
    /// first. Fails with [`AuthnError::Invalid`] when `not_after` is less
    /// than a second away.
    pub fn issue_until(
        &self,
        user: &UserInfo,
        not_after: Option<SystemTime>,
    ) -> Result<(String, SystemTime), AuthnError> {
        self.issue_from(user, Source::Other, not_after)
    }

    fn issue_at(
        &self,
        user: &UserInfo,
        now: u64,
        not_after: Option<u64>,
        src: Option<String>,
    ) -> Result<(String, SystemTime), AuthnError> {
        let mut exp = now.saturating_add(self.lifetime.as_secs());
        if let Some(cap) = not_after {
            if cap <= now {
                return Err(AuthnError::Invalid(
                    "the credential presented for exchange expires now".into(),
                ));
            }
            exp = exp.min(cap);
        }
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.issuer.clone(),
            sub: user.username.clone(),
            iat: now,
            nbf: now,
            exp,
            user: user.clone(),
            src,
            sid: Some(new_session()?),
        };
        let keys = self.keys.load();
        let mut header = Header::new(keys.signer.alg);
        header.kid = Some(keys.signer.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &keys.signer.encoding).map_err(|_| {
                AuthnError::Unavailable {
                    backend: "token issuer".into(),
                    reason: "signing failed".into(),
                }
            })?;
        Ok((token, expiry(exp)))
    }

    /// Verifies `token` and checks it against the revocations: `(identity,
    /// src)`.
    fn verify(&self, token: &str) -> Result<(Arc<Identity>, Option<String>), AuthnError> {
        let verified = self.verify_signed(token)?;
        match self.revocations.load().check(
            verified.sid.as_deref(),
            &verified.identity.user().username,
            verified.iat,
        ) {
            Ok(()) => Ok((verified.identity, verified.src)),
            Err(super::revocation::Refusal::Revoked) => {
                Err(AuthnError::Invalid("issued token revoked".into()))
            }
            Err(super::revocation::Refusal::NotListed) => Err(AuthnError::Unavailable {
                backend: "revocation store".into(),
                reason: "the revocations have not been read yet".into(),
            }),
        }
    }

    fn verify_signed(&self, token: &str) -> Result<Verified, AuthnError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthnError::Invalid("malformed issued token".into()))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthnError::Invalid("issued token without kid".into()))?;
        let keys = self.keys.load();
        let (alg, key) = keys.verifiers.get(&kid).ok_or_else(|| {
            AuthnError::Invalid("issued token signed by an unknown or removed key".into())
        })?;
        if header.alg != *alg {
            return Err(AuthnError::Invalid(
                "issued token algorithm does not match its key".into(),
            ));
        }
        let mut validation = Validation::new(*alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.issuer]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|_| AuthnError::Invalid("issued token rejected".into()))?;
        let claims = data.claims;
        // A token never lives longer than this issuer's lifetime: what a
        // revocation's expiry is reckoned from (a token of a longer-lived
        // configuration is not taken).
        if claims.exp.saturating_sub(claims.iat) > self.lifetime.as_secs().saturating_add(5) {
            return Err(AuthnError::Invalid(
                "issued token lives longer than this issuer's lifetime".into(),
            ));
        }
        if claims
            .sid
            .as_deref()
            .is_some_and(|sid| !super::revocation::valid_session(sid))
        {
            return Err(AuthnError::Invalid(
                "issued token with a malformed session".into(),
            ));
        }
        Ok(Verified {
            identity: Identity::verified(
                claims.user,
                Verification {
                    source: Source::Issued,
                    expires_at: Some(expiry(claims.exp)),
                    audiences: Some(vec![claims.aud]),
                },
            ),
            src: claims.src,
            sid: claims.sid,
            iat: claims.iat,
            exp: claims.exp,
        })
    }
}

/// [`IssuedTokens`] with the directory their LDAP users are looked up in
/// again (made by [`IssuedTokens::refreshing`]).
#[derive(Debug)]
pub struct RefreshingIssued {
    tokens: Arc<IssuedTokens>,
    way: super::refresh::Refreshing,
}

impl Authenticator for RefreshingIssued {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        let Credential::Bearer(token) = credential else {
            return Box::pin(std::future::ready(Ok(None)));
        };
        match crate::authn::peek_issuer(token.expose()) {
            Some(iss) if iss == self.tokens.issuer => {}
            _ => return Box::pin(std::future::ready(Ok(None))),
        }
        let (identity, src) = match self.tokens.verify(token.expose()) {
            Ok(found) => found,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        if src.as_deref() != Some(FROM_LDAP) {
            return Box::pin(std::future::ready(Ok(Some(identity))));
        }
        Box::pin(async move {
            let now = self
                .tokens
                .refresher
                .refreshed(identity.user(), &self.way)
                .await?;
            Ok(Some(Identity::verified(
                now,
                identity.verification().clone(),
            )))
        })
    }

    fn name(&self) -> &str {
        self.tokens.name()
    }

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        self.tokens.counters(found);
    }
}

impl Authenticator for IssuedTokens {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        let verified = match credential {
            Credential::Bearer(token) => match crate::authn::peek_issuer(token.expose()) {
                Some(iss) if iss == self.issuer => self.verify(token.expose()),
                _ => return Box::pin(std::future::ready(Ok(None))),
            },
            _ => return Box::pin(std::future::ready(Ok(None))),
        };
        let (identity, src) = match verified {
            Ok(found) => found,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        if src.as_deref() != Some(FROM_LDAP) {
            return Box::pin(std::future::ready(Ok(Some(identity))));
        }
        // Without a directory to look the user up in (see
        // [`IssuedTokens::refreshing`]), a token from an LDAP login is not
        // taken on its word.
        Box::pin(std::future::ready(Err(AuthnError::Invalid(
            "the token's user came from a directory that is not configured here".into(),
        ))))
    }

    fn name(&self) -> &str {
        "issued"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, name: &str, ed: bool) -> std::path::PathBuf {
        let rng = ring::rand::SystemRandom::new();
        let der = if ed {
            Ed25519KeyPair::generate_pkcs8(&rng)
                .unwrap()
                .as_ref()
                .to_vec()
        } else {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap()
                .as_ref()
                .to_vec()
        };
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        path
    }

    fn alice() -> UserInfo {
        UserInfo {
            username: "alice".into(),
            uid: Some("1001".into()),
            groups: vec!["devs".into()],
            extra: Default::default(),
        }
    }

    #[test]
    fn issued_tokens_verify_across_replicas_and_removed_keys_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            key_file(dir.path(), "old.pem", false),
            key_file(dir.path(), "new.pem", true),
        );
        let replica_a =
            IssuedTokens::load("authproxy", &[&old, &new], Duration::from_secs(60)).unwrap();
        let replica_b =
            IssuedTokens::load("authproxy", &[&new, &old], Duration::from_secs(60)).unwrap();
        let (token_a, _) = replica_a.issue(&alice()).unwrap();
        let (token_b, _) = replica_b.issue(&alice()).unwrap();
        assert_eq!(replica_b.verify(&token_a).unwrap().0.user(), &alice());
        assert_eq!(replica_a.verify(&token_b).unwrap().0.user(), &alice());
        let rotated = IssuedTokens::load("authproxy", &[&new], Duration::from_secs(60)).unwrap();
        assert!(
            rotated.verify(&token_a).is_err(),
            "a token of a removed key must be refused"
        );
        assert!(rotated.verify(&token_b).is_ok());
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path(), "k.pem", false);
        let tokens = IssuedTokens::load("authproxy", &[&key], Duration::from_secs(60)).unwrap();
        let an_hour_ago = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600;
        let (expired, _) = tokens.issue_at(&alice(), an_hour_ago, None, None).unwrap();
        assert!(
            tokens.verify(&expired).is_err(),
            "an expired token must be refused"
        );
        let other = IssuedTokens::load("someone-else", &[&key], Duration::from_secs(60)).unwrap();
        let (foreign, _) = other.issue(&alice()).unwrap();
        assert!(
            tokens.verify(&foreign).is_err(),
            "another issuer's token must be refused"
        );
    }

    #[test]
    fn every_token_has_its_own_session_and_a_revoked_one_is_refused() {
        use crate::authn::revocation::{Entry, Revocations, Revoked};
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path(), "k.pem", false);
        let tokens = IssuedTokens::load("authproxy", &[&key], Duration::from_secs(60)).unwrap();
        let (first, _) = tokens.issue(&alice()).unwrap();
        let (second, _) = tokens.issue(&alice()).unwrap();
        let (a, b) = (
            tokens.session_of(&first).unwrap(),
            tokens.session_of(&second).unwrap(),
        );
        assert_ne!(a.session, b.session);
        assert_eq!(a.session.as_deref().map(str::len), Some(22));
        assert_eq!(a.user, "alice");
        let set = Arc::new(Revocations::new(true, false));
        tokens.use_revocations(set.clone());
        assert!(
            matches!(tokens.verify(&first), Err(AuthnError::Unavailable { .. })),
            "nothing is taken before the revocations are known"
        );
        set.store_reached();
        set.add(&Entry {
            revoked: Revoked::Session {
                session: a.session.clone().unwrap(),
            },
            at_ms: 0,
            expires: a.expires,
            by: "token".into(),
        });
        assert!(matches!(tokens.verify(&first), Err(AuthnError::Invalid(_))));
        assert!(
            tokens.verify(&second).is_ok(),
            "another session of the user"
        );
        assert!(
            tokens.session_of(&first).is_ok(),
            "a revoked token still names its session"
        );
        set.add(&Entry {
            revoked: Revoked::User {
                user: "alice".into(),
                before: b.issued_at,
            },
            at_ms: 0,
            expires: b.expires,
            by: "admin".into(),
        });
        assert!(
            matches!(tokens.verify(&second), Err(AuthnError::Invalid(_))),
            "every session of the user"
        );
        let longer = IssuedTokens::load("authproxy", &[&key], Duration::from_secs(600)).unwrap();
        let (long, _) = longer
            .issue(&UserInfo {
                username: "carol".into(),
                ..alice()
            })
            .unwrap();
        assert!(
            tokens.verify(&long).is_err(),
            "a token that outlives this issuer's lifetime"
        );
    }

    #[test]
    fn an_enormous_lifetime_issues_a_token_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path(), "k.pem", false);
        let tokens = IssuedTokens::load("authproxy", &[&key], Duration::MAX).unwrap();
        let (token, expires) = tokens.issue(&alice()).unwrap();
        assert!(expires > SystemTime::now());
        assert_eq!(tokens.verify(&token).unwrap().0.user(), &alice());
    }
}
