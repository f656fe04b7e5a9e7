//! Revoking issued tokens: the store every replica and webhook keeps in
//! memory (`issuedTokens.revocation`, see
//! [`proxy_core::authn::revocation`]), and `POST /authproxy/v1/revocations`,
//! where tokens are revoked.
//!
//! The endpoint takes a JSON object with one field:
//! - `{"token": "…"}`: that issued token's session. Holding the token is the
//!   proof: nothing else is asked (`authproxy logout`).
//! - `{"session": "…"}`, `{"user": "…"}` (every token of the user issued
//!   until now), `{"issuedBefore": "<RFC 3339>"}` (every token issued until
//!   then): the caller authenticates as for any request, and kube decides
//!   with a `SubjectAccessReview` whether they may `create`
//!   `revocations.authproxy.io` in the store's namespace (RBAC, not a
//!   setting of the proxy).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::request_body::read_limited;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use proxy_core::authn::revocation::store::{RevocationStore, REVOCATIONS_GROUP};
use proxy_core::authn::revocation::{self, Entry, Revocations, Revoked};
use proxy_core::authn::IssuedTokens;
use proxy_core::config::BuildError;
use proxy_core::credential::Credential;
use proxy_core::refusal::read_some;
use proxy_core::status::{Reason, Status};
use proxy_core::{Chain, ProxyBody};
use serde::Deserialize;

use crate::config::FileConfig;

/// Where tokens are revoked.
pub const REVOCATIONS_PATH: &str = "/authproxy/v1/revocations";

/// The largest request body taken.
const MAX_BODY: usize = 64 << 10;

/// How far past now a user's revocation reaches: tokens issued on a replica
/// whose clock runs up to this far ahead are covered too (and a login in
/// that window after the revocation is refused).
const CLOCK_MARGIN_SECS: u64 = 5;

/// The store, watched into the issuer's revocations while this lives.
pub struct Revocation {
    store: Arc<RevocationStore>,
    revocations: Arc<Revocations>,
    issuer: Arc<IssuedTokens>,
    watch: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field("store", &self.store)
            .field("known", &self.revocations.len())
            .finish()
    }
}

impl Drop for Revocation {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Starts watching the store `config` names into `issuer`'s revocations;
/// `None` when `issuedTokens.revocation` is not set. Call within a tokio
/// runtime.
pub fn start(
    config: &FileConfig,
    base: &Path,
    issuer: &Arc<IssuedTokens>,
) -> Result<Option<Arc<Revocation>>, BuildError> {
    let Some(settings) = config
        .authentication
        .issued_tokens
        .as_ref()
        .and_then(|t| t.revocation.as_ref())
    else {
        return Ok(None);
    };
    const FIELD: &str = "authentication.issuedTokens.revocation";
    let err = |field: &str, message: String| BuildError {
        field: format!("{FIELD}.{field}"),
        message,
    };
    if let Some(problem) = settings.problems(FIELD).into_iter().next() {
        return Err(err(
            "namespace",
            problem.to_string().trim_start_matches(FIELD).to_owned(),
        ));
    }
    let namespace = settings
        .namespace()
        .ok_or_else(|| err("namespace", "is required".into()))?;
    let options = match &settings.kubeconfig {
        Some(path) => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                base.join(path)
            };
            proxy_core::kubeconfig::Kubeconfig::load(&path)
                .and_then(|k| k.upstream(settings.context.as_deref()))
                .map_err(|e| err("kubeconfig", e.to_string()))?
        }
        None => config
            .default_upstream()
            .ok_or_else(|| {
                err(
                    "kubeconfig",
                    "is required: there is no `upstream` section to reach the store through".into(),
                )
            })?
            .to_options("upstream", base)?,
    };
    let store = Arc::new(
        RevocationStore::new(options, &namespace).map_err(|e| err("kubeconfig", e.to_string()))?,
    );
    let revocations = Arc::new(Revocations::new(true, settings.serve_before_first_list));
    issuer.use_revocations(revocations.clone());
    let watch = store.clone().keep(revocations.clone()).abort_handle();
    Ok(Some(Arc::new(Revocation {
        store,
        revocations,
        issuer: issuer.clone(),
        watch,
    })))
}

/// What a revocation request asks for: exactly one of the fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Ask {
    token: Option<String>,
    session: Option<String>,
    user: Option<String>,
    issued_before: Option<String>,
}

fn bad(message: impl Into<String>) -> Response<ProxyBody> {
    Status::failure(StatusCode::BAD_REQUEST, Reason::BadRequest, message).into_response()
}

fn success(message: String) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Success", "message": message, "code": 200,
    });
    let mut r = Response::new(ProxyBody::full(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `secs` since the epoch as an RFC 3339 time.
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl Revocation {
    /// The revocations in force.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Writes `entry` to the store and applies it here at once.
    async fn revoke(&self, entry: Entry) -> Response<ProxyBody> {
        let what = match &entry.revoked {
            Revoked::Session { session } => format!("session {session}"),
            Revoked::User { user, before } => {
                format!(
                    "every token of user {user:?} issued until {}",
                    rfc3339(*before)
                )
            }
            Revoked::All { before } => format!("every token issued until {}", rfc3339(*before)),
        };
        let annotated = |mut response: Response<ProxyBody>, what: String| {
            response
                .extensions_mut()
                .insert(proxy_core::observe::audit::Annotations(vec![
                    (proxy_core::observe::audit::REVOKED_KEY, what),
                    (proxy_core::observe::audit::REVOKED_BY_KEY, entry.by.clone()),
                ]));
            response
        };
        if self.revocations.covers(&entry) {
            return annotated(success(format!("already revoked: {what}")), what);
        }
        let kind = match &entry.revoked {
            Revoked::Session { .. } => 0,
            Revoked::User { .. } => 1,
            Revoked::All { .. } => 2,
        };
        match self.store.revoke(&entry).await {
            Ok(()) => {
                self.revocations.add(&entry);
                self.revocations.counters().written[kind]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(by = %entry.by, revoked = %what, "tokens revoked");
                annotated(success(format!("revoked: {what}")), what)
            }
            Err(error) => {
                tracing::warn!(%error, "a revocation could not be written");
                let mut refused = Status::failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::ServiceUnavailable,
                    format!("the revocation was not recorded: {error}"),
                )
                .into_response();
                // The store's trouble, not the API server's answer to a caller.
                refused
                    .extensions_mut()
                    .insert(proxy_core::status::NotUpstream);
                refused
            }
        }
    }

    /// Answers a request to [`REVOCATIONS_PATH`]; `chain` authenticates
    /// callers that revoke more than their own token.
    pub async fn answer(&self, req: Request<Incoming>, chain: &Chain) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        if parts.method != http::Method::POST {
            return crate::request_body::post_only(body, "POST a revocation").await;
        }
        // Nothing is written for a revocation already in force, so a token
        // revoking itself again and again costs the store nothing; new
        // sessions to revoke come only as fast as the token exchange's limits
        // let them be issued.
        // JSON only: a form a browser could be made to send is not one.
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            read_some(body).await;
            return Status::failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Reason::BadRequest,
                "send the revocation as application/json",
            )
            .into_response();
        }
        let body = match read_limited(&parts.headers, body, MAX_BODY).await {
            Ok(body) => body,
            Err(status) => return status.into_response(),
        };
        let ask: Ask = match serde_json::from_slice(&body) {
            Ok(ask) => ask,
            Err(e) => return bad(format!("the request is not a revocation: {e}")),
        };
        let given = [
            ask.token.is_some(),
            ask.session.is_some(),
            ask.user.is_some(),
            ask.issued_before.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return bad("name exactly one of token, session, user, issuedBefore");
        }
        let lifetime = self.issuer.lifetime();
        let now = revocation::now_secs();
        if let Some(token) = &ask.token {
            // The token's holder may end its session.
            let session = match self.issuer.session_of(token) {
                Ok(session) => session,
                Err(_) => {
                    return bad("the token is not one this proxy issued, or it has expired");
                }
            };
            let Some(id) = session.session else {
                return bad(
                    "the token was issued before tokens had sessions: revoke its user instead",
                );
            };
            return self
                .revoke(Entry {
                    revoked: Revoked::Session { session: id },
                    at_ms: now_ms(),
                    expires: session.expires.saturating_add(60),
                    by: session.user,
                })
                .await;
        }
        let credential = match Credential::from_parts(&parts.headers, &parts.extensions) {
            Ok(Some(credential)) => credential,
            _ => return Status::unauthorized().into_response(),
        };
        let identity = match chain.authenticate(&credential).await {
            Ok(Some(identity)) => identity,
            Ok(None) => return Status::unauthorized().into_response(),
            Err(error) => return error.to_status().into_response(),
        };
        let user = identity.user();
        match self.store.may_revoke(user).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(user = %user.username, "revocation refused by RBAC");
                return Status::failure(
                    StatusCode::FORBIDDEN,
                    Reason::Forbidden,
                    format!(
                        "revocations.{REVOCATIONS_GROUP} is forbidden: User {:?} cannot create resource \"revocations\" in API group \"{REVOCATIONS_GROUP}\" in the namespace {:?}",
                        user.username,
                        self.store.namespace()
                    ),
                )
                .into_response();
            }
            Err(error) => {
                return Status::failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::ServiceUnavailable,
                    format!("the permission to revoke could not be checked: {error}"),
                )
                .into_response()
            }
        }
        let revoked = if let Some(session) = ask.session {
            if !revocation::valid_session(&session) {
                return bad("session: not a session ID");
            }
            Revoked::Session { session }
        } else if let Some(name) = ask.user {
            if name.is_empty() {
                return bad("user: empty");
            }
            Revoked::User {
                user: name,
                before: now + CLOCK_MARGIN_SECS,
            }
        } else {
            let text = ask.issued_before.unwrap_or_default();
            let before = match humantime::parse_rfc3339_weak(&text) {
                Ok(at) => at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
                Err(_) => return bad(format!("issuedBefore: {text:?} is not an RFC 3339 time")),
            };
            // Tokens issued later than now do not exist yet.
            Revoked::All {
                before: before.min(now + CLOCK_MARGIN_SECS),
            }
        };
        // An entry lasts as long as the tokens it covers can.
        let from = match &revoked {
            Revoked::All { before } => *before,
            _ => now,
        };
        self.revoke(Entry {
            revoked,
            at_ms: now_ms(),
            expires: revocation::expiry_for(lifetime, from),
            by: user.username.clone(),
        })
        .await
    }
}
