//! The TokenReview webhook: kube-apiserver's `--authentication-token-webhook`
//! asks "who holds this token?" and the same authenticator chain that guards
//! the proxy answers.
//!
//! Accepts `authentication.k8s.io/v1` and `v1beta1` `TokenReview` bodies and
//! answers in the version asked: `status.authenticated`, `status.user`
//! (username, uid, groups, extra) and `status.audiences`, or
//! `authenticated: false` with `status.error` and no user. The token never
//! appears in an answer or a log line.
//!
//! Audiences follow kube's rules:
//! - an audience-aware credential (an OIDC ID token, an issued token) is valid
//!   for its own audiences and for the API audiences of the API server that
//!   calls the webhook (`webhook.apiAudiences`: kube-apiserver accepts an OIDC
//!   token for its own API audiences too). It is answered with those when
//!   `spec.audiences` is empty, else with the intersection; an empty
//!   intersection is `authenticated: false` with "token audiences ... is
//!   invalid for the target audiences ..." (the service-account JWT
//!   authenticator's rule): a token for the cluster is not valid for another
//!   service;
//! - an audience-agnostic credential (static token, LDAP, client certificate)
//!   is answered with no audiences. kube-apiserver's webhook client then
//!   checks the audiences it wanted against its own API audiences, which is
//!   what kube does for its own audience-agnostic authenticators
//!   (`WrapAudienceAgnosticToken`): this webhook cannot know them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::authn::{AuthnError, Chain};
use crate::credential::{Credential, Secret};

/// The largest TokenReview body accepted by default (a listener's
/// `limits.maxRequestBodyBytes`); read bodies with a limit (the binary reads at most that many bytes).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A TokenReview request as kube-apiserver sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewRequest {
    /// `authentication.k8s.io/v1` or `v1beta1`.
    pub api_version: String,
    /// `TokenReview`.
    pub kind: String,
    /// What to review.
    pub spec: TokenReviewSpec,
}

/// `spec` of a TokenReview.
#[derive(Deserialize)]
pub struct TokenReviewSpec {
    /// The bearer token.
    #[serde(default)]
    pub token: String,
    /// Audiences the caller wants the token checked for.
    #[serde(default)]
    pub audiences: Vec<String>,
}

impl std::fmt::Debug for TokenReviewSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewSpec")
            .field("token", &"[redacted]")
            .field("audiences", &self.audiences)
            .finish()
    }
}

/// A TokenReview answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewResponse {
    api_version: String,
    kind: &'static str,
    metadata: Empty,
    /// The verdict.
    pub status: TokenReviewStatus,
}

#[derive(Debug, Serialize)]
struct Empty {}

/// `status` of a TokenReview.
#[derive(Debug, Default, Serialize)]
pub struct TokenReviewStatus {
    /// Whether the token is valid.
    pub authenticated: bool,
    /// Who holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<ReviewedUser>,
    /// The audiences the token is valid for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Why not (never holds the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The token could not be checked (backend down, throttled): not a refusal.
    #[serde(skip)]
    backend_error: bool,
}

/// `status.user` (note `extra` values are lists, uid a string).
#[derive(Debug, Serialize)]
pub struct ReviewedUser {
    /// User name.
    pub username: String,
    /// Unique id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a request body is not a TokenReview.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON of the right shape.
    #[error("request body is not a TokenReview: {0}")]
    Malformed(String),
    /// Wrong kind or apiVersion.
    #[error("expected kind TokenReview in authentication.k8s.io/v1 or v1beta1, got {kind} in {api_version}")]
    WrongKind {
        /// The kind sent.
        kind: String,
        /// The apiVersion sent.
        api_version: String,
    },
}

/// Parses a TokenReview body.
pub fn parse(body: &[u8]) -> Result<TokenReviewRequest, ReviewError> {
    let request: TokenReviewRequest =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let version_ok = ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"]
        .contains(&request.api_version.as_str());
    if request.kind != "TokenReview" || !version_ok {
        return Err(ReviewError::WrongKind {
            kind: request.kind,
            api_version: request.api_version,
        });
    }
    Ok(request)
}

/// The audiences kube-apiserver asks for when `--api-audiences` is not set:
/// its service-account issuer, which distributions set to one of these.
pub const DEFAULT_API_AUDIENCES: [&str; 2] = [
    "https://kubernetes.default.svc.cluster.local",
    "https://kubernetes.default.svc",
];

/// The audiences a review answers: see the module documentation.
/// `api_audiences` are those of the API server that calls the webhook: an
/// audience-aware token is valid for them too, as kube-apiserver itself
/// accepts an OIDC token for its own API audiences.
pub fn answered_audiences(
    token_audiences: Option<&[String]>,
    api_audiences: &[String],
    requested: &[String],
) -> Result<Vec<String>, String> {
    let Some(token_audiences) = token_audiences else {
        return Ok(Vec::new());
    };
    let valid: Vec<String> = token_audiences
        .iter()
        .chain(
            api_audiences
                .iter()
                .filter(|a| !token_audiences.contains(a)),
        )
        .cloned()
        .collect();
    let token_audiences = valid.as_slice();
    if requested.is_empty() {
        return Ok(token_audiences.to_vec());
    }
    let both: Vec<String> = requested
        .iter()
        .filter(|a| token_audiences.contains(a))
        .cloned()
        .collect();
    if both.is_empty() {
        return Err(format!(
            "token audiences {} is invalid for the target audiences {}",
            quoted(token_audiences),
            quoted(requested)
        ));
    }
    Ok(both)
}

/// A list as Go's `%q` prints a string slice: `["a" "b"]`.
fn quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", items.join(" "))
}

impl TokenReviewResponse {
    /// Whether the token was refused (unknown, invalid, or not valid for the
    /// audiences asked), as opposed to accepted or not checkable because a
    /// backend is down. Failed-review throttles count these.
    pub fn is_refusal(&self) -> bool {
        !self.status.authenticated && !self.status.backend_error
    }
}

/// Reviews a token with `chain`, for the API server whose audiences are
/// `api_audiences` (see [`answered_audiences`]).
pub async fn review(
    chain: &Chain,
    api_audiences: &[String],
    request: TokenReviewRequest,
) -> TokenReviewResponse {
    let TokenReviewRequest {
        api_version, spec, ..
    } = request;
    let status = if spec.token.is_empty() {
        TokenReviewStatus {
            error: Some("no token".into()),
            ..Default::default()
        }
    } else {
        let credential = Credential::Bearer(Secret::new(spec.token));
        match chain.authenticate(&credential).await {
            Ok(Some(identity)) => {
                match answered_audiences(identity.audiences(), api_audiences, &spec.audiences) {
                    Ok(audiences) => {
                        let user = identity.user();
                        TokenReviewStatus {
                            authenticated: true,
                            user: Some(ReviewedUser {
                                username: user.username.clone(),
                                uid: user.uid.clone(),
                                groups: user.groups.clone(),
                                extra: user.extra.clone(),
                            }),
                            audiences,
                            ..Default::default()
                        }
                    }
                    Err(error) => TokenReviewStatus {
                        error: Some(error),
                        ..Default::default()
                    },
                }
            }
            Ok(None) => TokenReviewStatus {
                error: Some("token not recognized".into()),
                ..Default::default()
            },
            Err(AuthnError::Invalid(reason)) => {
                tracing::info!(%reason, "token review: token refused");
                TokenReviewStatus {
                    error: Some("token is invalid".into()),
                    ..Default::default()
                }
            }
            Err(error) => TokenReviewStatus {
                backend_error: true,
                error: Some(error.to_string()),
                ..Default::default()
            },
        }
    };
    TokenReviewResponse {
        api_version,
        kind: "TokenReview",
        metadata: Empty {},
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::StaticTokens;
    use std::sync::Arc;

    fn chain() -> Chain {
        Chain::new(vec![Arc::new(
            StaticTokens::from_csv("t0k3n,alice,1001,\"devs\"\n", "t").unwrap(),
        )])
    }

    #[tokio::test]
    async fn known_token_is_reviewed_in_the_version_asked() {
        let body = br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1beta1","metadata":{"creationTimestamp":null},"spec":{"token":"t0k3n","audiences":["api"]},"status":{"user":{}}}"#;
        let answer =
            serde_json::to_value(review(&chain(), &[], parse(body).unwrap()).await).unwrap();
        assert_eq!(answer["apiVersion"], "authentication.k8s.io/v1beta1");
        assert_eq!(answer["status"]["authenticated"], true);
        assert_eq!(answer["status"]["user"]["username"], "alice");
        assert_eq!(
            answer["status"]["user"]["groups"],
            serde_json::json!(["devs"])
        );
        assert!(
            answer["status"].get("audiences").is_none(),
            "a static token is audience-agnostic: no audiences are confirmed: {answer}"
        );
    }

    #[test]
    fn audiences_follow_kube_rules() {
        let token = vec!["kube".to_owned(), "other".to_owned()];
        let aud = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(answered_audiences(Some(&token), &[], &[]).unwrap(), token);
        assert_eq!(
            answered_audiences(Some(&token), &[], &aud(&["x", "other"])).unwrap(),
            aud(&["other"])
        );
        let refused = answered_audiences(Some(&token), &[], &aud(&["vault"])).unwrap_err();
        assert_eq!(
            refused,
            r#"token audiences ["kube" "other"] is invalid for the target audiences ["vault"]"#
        );
        assert!(answered_audiences(None, &[], &aud(&["vault"]))
            .unwrap()
            .is_empty());
        assert!(answered_audiences(None, &[], &[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn unknown_token_has_no_user_and_the_token_is_not_echoed() {
        let body = br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","spec":{"token":"s3cret-guess"}}"#;
        let answer =
            serde_json::to_string(&review(&chain(), &[], parse(body).unwrap()).await).unwrap();
        assert!(answer.contains(r#""authenticated":false"#), "{answer}");
        assert!(!answer.contains("\"user\""), "{answer}");
        assert!(!answer.contains("s3cret-guess"), "{answer}");
    }

    #[test]
    fn other_kinds_are_refused() {
        assert!(parse(
            br#"{"kind":"SubjectAccessReview","apiVersion":"authorization.k8s.io/v1","spec":{}}"#
        )
        .is_err());
        assert!(parse(b"not json").is_err());
    }
}
