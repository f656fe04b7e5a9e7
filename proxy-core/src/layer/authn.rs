//! [`AuthnLayer`]: reads the caller's credential, asks the authenticator, and
//! passes the request on with its [`Identity`] in the extensions, or answers
//! with a `Status` itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::authn::{Authenticator, AuthnError, Identity};
use crate::body::ProxyBody;
use crate::credential::Credential;
use crate::refusal::with_unread_body;
use crate::status::Status;

/// The default `WWW-Authenticate` challenge on a 401.
pub const DEFAULT_CHALLENGE: &str = "Bearer realm=\"authproxy\"";

/// Layer that authenticates every request.
///
/// ```
/// use proxy_core::{authn::StaticTokens, AuthnLayer};
/// use tower_layer::Layer;
///
/// let tokens = StaticTokens::from_csv("t0k3n,alice,1,devs\n", "inline").unwrap();
/// let layer = AuthnLayer::new(tokens);
/// let inner = tower::service_fn(|req: http::Request<()>| async move {
///     let who = req.extensions().get::<std::sync::Arc<proxy_core::Identity>>().unwrap();
///     Ok::<_, std::convert::Infallible>(http::Response::new(
///         proxy_core::ProxyBody::full(who.user().username.clone()),
///     ))
/// });
/// let _service = layer.layer(inner);
/// ```
#[derive(Clone)]
pub struct AuthnLayer {
    authenticator: Arc<dyn Authenticator>,
    challenges: Arc<[HeaderValue]>,
}

impl std::fmt::Debug for AuthnLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthnLayer")
            .field("authenticator", &self.authenticator.name())
            .finish()
    }
}

impl AuthnLayer {
    /// A layer asking `authenticator` (often a [`Chain`](crate::Chain)).
    pub fn new(authenticator: impl Authenticator) -> Self {
        Self::from_arc(Arc::new(authenticator))
    }

    /// A layer sharing an authenticator already behind an `Arc`.
    pub fn from_arc(authenticator: Arc<dyn Authenticator>) -> Self {
        AuthnLayer {
            authenticator,
            challenges: Arc::new([HeaderValue::from_static(DEFAULT_CHALLENGE)]),
        }
    }

    /// Sets the `WWW-Authenticate` value sent with a 401.
    pub fn with_challenge(self, challenge: HeaderValue) -> Self {
        self.with_challenges([challenge])
    }

    /// Sets the `WWW-Authenticate` values sent with a 401, one header each
    /// (e.g. `Basic realm="authproxy"` and `Bearer realm="authproxy"` when
    /// LDAP logins are on: every scheme the proxy takes).
    pub fn with_challenges(mut self, challenges: impl IntoIterator<Item = HeaderValue>) -> Self {
        self.challenges = challenges.into_iter().collect();
        self
    }
}

impl<S> Layer<S> for AuthnLayer {
    type Service = Authn<S>;

    fn layer(&self, inner: S) -> Authn<S> {
        Authn {
            inner,
            authenticator: self.authenticator.clone(),
            challenges: self.challenges.clone(),
        }
    }
}

/// Service made by [`AuthnLayer`].
#[derive(Clone)]
pub struct Authn<S> {
    inner: S,
    authenticator: Arc<dyn Authenticator>,
    challenges: Arc<[HeaderValue]>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Authn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authn")
            .field("authenticator", &self.authenticator.name())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S> Authn<S> {
    /// True when the authenticator is ready (keys loaded, backends seen).
    pub fn is_ready(&self) -> bool {
        self.authenticator.is_ready()
    }
}

/// The refusal of `req`, which carries its unread body
/// ([`crate::refusal`]).
fn refuse<B: Send + 'static>(
    status: Status,
    challenges: &[HeaderValue],
    req: Request<B>,
) -> Response<ProxyBody> {
    let unauthorized = status.code == 401;
    let mut response = status.into_response();
    if unauthorized {
        for challenge in challenges {
            response
                .headers_mut()
                .append(header::WWW_AUTHENTICATE, challenge.clone());
        }
    }
    with_unread_body(response, req.into_body())
}

impl<S, B> Service<Request<B>> for Authn<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone is not ready; the ready one goes into the future (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        let challenges = self.challenges.clone();
        let credential = Credential::from_parts(req.headers(), req.extensions());
        Box::pin(async move {
            let credential = match credential {
                Ok(Some(credential)) => credential,
                Ok(None) => return Ok(refuse(Status::unauthorized(), &challenges, req)),
                Err(error) => {
                    tracing::info!(%error, "refused a malformed credential");
                    return Ok(refuse(Status::unauthorized(), &challenges, req));
                }
            };
            match authenticator.authenticate(&credential).await {
                Ok(Some(identity)) => {
                    drop(credential);
                    req.extensions_mut().insert::<Arc<Identity>>(identity);
                    inner.call(req).await
                }
                Ok(None) => {
                    tracing::info!("no authenticator accepted the credential");
                    Ok(refuse(Status::unauthorized(), &challenges, req))
                }
                Err(error) => {
                    match &error {
                        AuthnError::Unavailable { .. } => {
                            tracing::warn!(%error, "authentication failed")
                        }
                        _ => tracing::info!(%error, "authentication failed"),
                    }
                    Ok(refuse(error.to_status(), &challenges, req))
                }
            }
        })
    }
}
