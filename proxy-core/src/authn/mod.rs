//! Who is the caller? Authenticators turn a [`Credential`] into a [`UserInfo`].
//!
//! Authentication is a pure function of the credential:
//! [`Authenticator::authenticate`] answers `Ok(Some(identity))` when the
//! credential is its own and valid, `Ok(None)` when it is not its kind of
//! credential (the next authenticator is asked), and `Err` when it is its own
//! and bad, or its backend is unreachable. A [`Chain`] asks each in order.

pub mod cache;
#[cfg(feature = "issued-tokens")]
pub mod issued;
#[cfg(feature = "ldap")]
pub mod ldap;
#[cfg(feature = "oidc")]
pub mod oidc;
pub mod policy;
pub mod refresh;
#[cfg(feature = "issued-tokens")]
pub mod revocation;
pub mod secret_key;
mod static_token;
pub mod swap;
mod x509;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use http::StatusCode;

pub use cache::{CacheStats, CachedAuthenticator};
#[cfg(feature = "issued-tokens")]
pub use issued::IssuedTokens;
#[cfg(feature = "ldap")]
pub use ldap::LdapAuthenticator;
#[cfg(feature = "oidc")]
pub use oidc::OidcAuthenticator;
pub use static_token::{StaticTokenError, StaticTokens};
pub use swap::SwappableChain;
pub use x509::ClientCertificates;

use crate::credential::Credential;
use crate::impersonate::{ImpersonationHeaders, InvalidIdentity};
use crate::status::{Reason, Status};
pub use crate::user::UserInfo;

/// Which kind of authenticator vouched for an identity (for policies such as
/// which logins may be exchanged for an issued token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// A verified TLS client certificate.
    ClientCertificate,
    /// A static token file entry.
    StaticToken,
    /// An LDAP username and password.
    Ldap,
    /// An OIDC ID token.
    Oidc,
    /// A token the proxy issued itself.
    Issued,
    /// Any other authenticator (one a library user wrote).
    #[default]
    Other,
}

impl Source {
    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ClientCertificate => "clientCertificate",
            Source::StaticToken => "staticToken",
            Source::Ldap => "ldap",
            Source::Oidc => "oidc",
            Source::Issued => "issued",
            Source::Other => "other",
        }
    }
}

/// What an authenticator knows about a credential besides the user: where it
/// came from, when it expires and which audiences it is valid for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// The kind of authenticator.
    pub source: Source,
    /// When the credential expires (a token's `exp`), if it does.
    pub expires_at: Option<SystemTime>,
    /// The audiences the credential is valid for; `None` for an
    /// audience-agnostic credential (static token, LDAP password, client
    /// certificate), which kube answers with the API server's own audiences.
    pub audiences: Option<Vec<String>>,
}

/// An authenticated user together with its impersonation headers, which are
/// built once and reused for every request of that user.
#[derive(Debug)]
pub struct Identity {
    user: UserInfo,
    verification: Verification,
    headers: OnceLock<Result<ImpersonationHeaders, InvalidIdentity>>,
}

impl Identity {
    /// Wraps a user for sharing between requests (source
    /// [`Source::Other`], no expiry, audience-agnostic).
    pub fn new(user: UserInfo) -> Arc<Identity> {
        Self::verified(user, Verification::default())
    }

    /// Wraps a user whose credential expires at `expires_at` (a token's `exp`).
    pub fn expiring(user: UserInfo, expires_at: Option<SystemTime>) -> Arc<Identity> {
        Self::verified(
            user,
            Verification {
                expires_at,
                ..Default::default()
            },
        )
    }

    /// Wraps a user with everything its authenticator knows about the credential.
    pub fn verified(user: UserInfo, verification: Verification) -> Arc<Identity> {
        Arc::new(Identity {
            user,
            verification,
            headers: OnceLock::new(),
        })
    }

    /// When the credential behind this identity expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.verification.expires_at
    }

    /// The audiences the credential is valid for; `None` when the
    /// authenticator is audience-agnostic.
    pub fn audiences(&self) -> Option<&[String]> {
        self.verification.audiences.as_deref()
    }

    /// Everything the authenticator knew about the credential.
    pub fn verification(&self) -> &Verification {
        &self.verification
    }

    /// Which kind of authenticator vouched for the user.
    pub fn source(&self) -> Source {
        self.verification.source
    }

    /// The user.
    pub fn user(&self) -> &UserInfo {
        &self.user
    }

    /// The `Impersonate-*` headers for this user, built on first use.
    ///
    /// Fails when a value could not be carried in a header unchanged (control
    /// characters, CR/LF, surrounding blanks, an empty user name).
    pub fn impersonation_headers(&self) -> Result<&ImpersonationHeaders, &InvalidIdentity> {
        self.headers
            .get_or_init(|| ImpersonationHeaders::for_user(&self.user))
            .as_ref()
    }
}

/// Why a credential did not authenticate anyone.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// The credential belongs to this authenticator but is not valid. The
    /// reason is for logs and must not contain the credential.
    #[error("invalid credential: {0}")]
    Invalid(String),
    /// Too many failed attempts; the caller should retry after this many seconds.
    #[error("too many failed attempts, retry after {retry_after_secs}s")]
    TooManyAttempts {
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The identity backend (IdP, directory) cannot be reached.
    #[error("{backend} is unavailable: {reason}")]
    Unavailable {
        /// Which backend, for the caller's message.
        backend: String,
        /// What went wrong (no secrets).
        reason: String,
    },
}

impl AuthnError {
    /// The Status the caller sees for this error. Invalid credentials all look
    /// alike to the caller ("Unauthorized"), as in kube-apiserver.
    pub fn to_status(&self) -> Status {
        match self {
            AuthnError::Invalid(_) => Status::unauthorized(),
            AuthnError::TooManyAttempts { retry_after_secs } => Status::failure(
                StatusCode::TOO_MANY_REQUESTS,
                Reason::TooManyRequests,
                format!("too many failed login attempts, retry after {retry_after_secs}s"),
            ),
            AuthnError::Unavailable { backend, .. } => Status::failure(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ServiceUnavailable,
                format!("authentication backend {backend} is unavailable, try again later"),
            ),
        }
    }
}

/// The future an [`Authenticator`] returns.
pub type AuthnFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Arc<Identity>>, AuthnError>> + Send + 'a>>;

/// Something that can tell who presented a credential.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates `credential`: `Ok(Some)` when it is valid and this
    /// authenticator's, `Ok(None)` when it is not this authenticator's kind,
    /// `Err` when it is this authenticator's and bad, or the backend is down.
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a>;

    /// Whether the authenticator is ready to answer (keys loaded, backend seen).
    fn is_ready(&self) -> bool {
        true
    }

    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// Counters of the token caches in this authenticator (and those it
    /// wraps), for metrics. None by default.
    fn cache_stats(&self) -> CacheStats {
        CacheStats::default()
    }

    /// Adds the backend counters of this authenticator (and those it
    /// wraps) to `found`, for metrics. None by default.
    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        let _ = found;
    }
}

/// Authenticators asked in order; the first that claims the credential decides.
#[derive(Clone)]
pub struct Chain {
    name: Arc<str>,
    authenticators: Arc<[Arc<dyn Authenticator>]>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.authenticators.iter().map(|a| a.name()))
            .finish()
    }
}

impl Chain {
    /// A chain of `authenticators`, asked in this order.
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        Self::named("chain", authenticators)
    }

    /// A chain with a name for logs and metrics (`oidc` for the issuers).
    pub fn named(name: &str, authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        Chain {
            name: name.into(),
            authenticators: authenticators.into(),
        }
    }

    /// The authenticators, in the order they are asked.
    pub fn authenticators(&self) -> &[Arc<dyn Authenticator>] {
        &self.authenticators
    }

    /// Authenticates with the first authenticator that claims the credential.
    pub async fn authenticate(
        &self,
        credential: &Credential,
    ) -> Result<Option<Arc<Identity>>, AuthnError> {
        for authenticator in self.authenticators.iter() {
            if let Some(identity) = authenticator.authenticate(credential).await? {
                return Ok(Some(identity));
            }
        }
        Ok(None)
    }

    /// True when every authenticator is ready.
    pub fn is_ready(&self) -> bool {
        self.authenticators.iter().all(|a| a.is_ready())
    }

    /// How each OIDC issuer's signing keys stand (for a readiness page:
    /// each displays as `<issuer>: keys loaded 42s ago`, or `no keys yet`,
    /// and why the last fetch failed while fetches keep failing).
    pub fn issuers(&self) -> Vec<IssuerKeys> {
        let mut found = crate::counters::AuthnCounters::default();
        Authenticator::counters(self, &mut found);
        found
            .key_fetches
            .iter()
            .map(|issuer| IssuerKeys {
                issuer: issuer.issuer().to_string(),
                keys_age: issuer.keys_age(),
                last_error: issuer.last_error(),
            })
            .collect()
    }
}

/// One OIDC issuer's signing keys, as [`Chain::issuers`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuerKeys {
    /// The issuer's URL, as configured.
    pub issuer: String,
    /// How long ago the keys in use were loaded; `None`: none yet.
    pub keys_age: Option<std::time::Duration>,
    /// Why the last fetch failed, while no fetch has succeeded since.
    pub last_error: Option<String>,
}

impl std::fmt::Display for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.keys_age {
            Some(age) => write!(f, "{}: keys loaded {}s ago", self.issuer, age.as_secs())?,
            None => write!(f, "{}: no keys yet", self.issuer)?,
        }
        if let Some(error) = &self.last_error {
            write!(f, "; the last fetch failed: {error}")?;
        }
        Ok(())
    }
}

impl Authenticator for Chain {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        Box::pin(Chain::authenticate(self, credential))
    }

    fn is_ready(&self) -> bool {
        Chain::is_ready(self)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn cache_stats(&self) -> CacheStats {
        self.authenticators
            .iter()
            .fold(CacheStats::default(), |sum, a| sum + a.cache_stats())
    }

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        for authenticator in self.authenticators.iter() {
            authenticator.counters(found);
        }
    }
}

/// The `iss` of a JWT, read without verification (to pick the authenticator).
pub fn peek_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Secret;

    struct Fixed(Option<&'static str>, bool);
    impl Authenticator for Fixed {
        fn authenticate<'a>(&'a self, _c: &'a Credential) -> AuthnFuture<'a> {
            Box::pin(async move {
                if self.1 {
                    return Err(AuthnError::Invalid("bad".into()));
                }
                Ok(self.0.map(|u| {
                    Identity::new(UserInfo {
                        username: u.into(),
                        ..Default::default()
                    })
                }))
            })
        }
        fn name(&self) -> &str {
            "fixed"
        }
    }

    fn bearer() -> Credential {
        Credential::Bearer(Secret::new("t"))
    }

    #[tokio::test]
    async fn first_claiming_authenticator_decides() {
        let chain = Chain::new(vec![
            Arc::new(Fixed(None, false)),
            Arc::new(Fixed(Some("second"), false)),
            Arc::new(Fixed(Some("third"), false)),
        ]);
        let id = chain.authenticate(&bearer()).await.unwrap().unwrap();
        assert_eq!(id.user().username, "second");
    }

    #[tokio::test]
    async fn error_stops_the_chain() {
        let chain = Chain::new(vec![
            Arc::new(Fixed(None, true)),
            Arc::new(Fixed(Some("never"), false)),
        ]);
        assert!(chain.authenticate(&bearer()).await.is_err());
    }

    #[tokio::test]
    async fn nobody_claims_gives_none() {
        let chain = Chain::new(vec![Arc::new(Fixed(None, false))]);
        assert!(chain.authenticate(&bearer()).await.unwrap().is_none());
    }
}
