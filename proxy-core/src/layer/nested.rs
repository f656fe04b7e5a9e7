//! [`NestedImpersonationLayer`]: what to do with a caller's own
//! `Impersonate-*` headers (see [`crate::impersonate::nested`]): refuse
//! them, or check them with the API server and go on as the requested
//! identity. Never drop them silently.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::authn::Identity;
use crate::body::ProxyBody;
use crate::impersonate::nested::{self, DENIED_MESSAGE};
use crate::impersonate::review::Reviewer;
use crate::refusal::with_unread_body;
use crate::status::{Reason, Status};

/// Layer for a caller's `Impersonate-*` headers. Put it after
/// [`AuthnLayer`](crate::AuthnLayer) and before
/// [`ImpersonateLayer`](crate::ImpersonateLayer).
///
/// [`NestedImpersonationLayer::deny`] (also the `Default`) refuses such
/// requests with a 403 `Status`; [`NestedImpersonationLayer::authorize`]
/// checks them with `SubjectAccessReview`s as kube-apiserver would and
/// replaces the request's [`Identity`] with the requested one.
#[derive(Debug, Clone, Default)]
pub struct NestedImpersonationLayer {
    reviewer: Option<Reviewer>,
}

impl NestedImpersonationLayer {
    /// Refuses every request that carries `Impersonate-*` headers.
    pub fn deny() -> Self {
        NestedImpersonationLayer { reviewer: None }
    }

    /// Allows what the API server allows the authenticated user.
    pub fn authorize(reviewer: Reviewer) -> Self {
        NestedImpersonationLayer {
            reviewer: Some(reviewer),
        }
    }
}

impl<S> Layer<S> for NestedImpersonationLayer {
    type Service = NestedImpersonation<S>;

    fn layer(&self, inner: S) -> NestedImpersonation<S> {
        NestedImpersonation {
            inner,
            reviewer: self.reviewer.clone(),
        }
    }
}

/// Service made by [`NestedImpersonationLayer`].
#[derive(Debug, Clone)]
pub struct NestedImpersonation<S> {
    inner: S,
    reviewer: Option<Reviewer>,
}

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, E>> + Send>>;

impl<S, B> Service<Request<B>> for NestedImpersonation<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = BoxFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let answer = |status: Status, req: Request<B>| -> Self::Future {
            let refusal = with_unread_body(status.into_response(), req.into_body());
            Box::pin(std::future::ready(Ok(refusal)))
        };
        let requested = match nested::requested(req.headers()) {
            Ok(None) => return Box::pin(self.inner.call(req)),
            Ok(Some(requested)) => requested,
            Err(status) => return answer(status, req),
        };
        let Some(reviewer) = self.reviewer.clone() else {
            let denied = Status::failure(StatusCode::FORBIDDEN, Reason::Forbidden, DENIED_MESSAGE);
            return answer(denied, req);
        };
        let Some(identity) = req.extensions().get::<Arc<Identity>>().cloned() else {
            return answer(Status::unauthorized(), req);
        };
        // What the request asks to do, as the API server's authorizer reads
        // it: constrained impersonation is granted per verb and resource.
        let request = crate::observe::request_info::authorizer_attributes(
            req.method(),
            req.uri(),
            crate::impersonate::is_upgrade(req.headers()),
        );
        // The inner service that was polled ready goes with this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match reviewer
                .authorize(identity.user(), &requested, &request)
                .await
            {
                Ok(user) => {
                    tracing::info!(
                        user = %identity.user().username,
                        as_user = %user.username,
                        "impersonating as the caller asked"
                    );
                    let as_user = Identity::verified(user, identity.verification().clone());
                    crate::observe::record::impersonated(&as_user);
                    req.extensions_mut().insert(as_user);
                    inner.call(req).await
                }
                Err(status) => Ok(with_unread_body(status.into_response(), req.into_body())),
            }
        })
    }
}
