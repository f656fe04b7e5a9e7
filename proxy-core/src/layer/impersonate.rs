//! [`ImpersonateLayer`]: replaces whatever identity the caller sent with the
//! authenticated [`Identity`] as `Impersonate-*` headers (or, in front-proxy
//! mode, as the request headers of kube's `--requestheader-*` flags), and
//! sets `X-Forwarded-For` from where the request came from (the
//! [`forwarded::Origin`] or [`ClientAddr`] extension; see [`forwarded`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::authn::Identity;
use crate::body::ProxyBody;
use crate::credential::ClientAddr;
use crate::forwarded;
use crate::impersonate::{rewrite, strip_caller_identity, HeaderNames, ImpersonationHeaders};
use crate::refusal::with_unread_body;
use crate::status::{Reason, Status};

/// Layer that rewrites identity headers. Put it after [`AuthnLayer`](crate::AuthnLayer)
/// (or any layer that inserts an `Arc<Identity>` into the request extensions);
/// a request without an identity is refused with 401, never forwarded.
///
/// ```
/// use proxy_core::ImpersonateLayer;
/// use tower_layer::Layer;
///
/// let inner = tower::service_fn(|req: http::Request<()>| async move {
///     assert!(req.headers().get("impersonate-user").is_some());
///     Ok::<_, std::convert::Infallible>(http::Response::new(proxy_core::ProxyBody::empty()))
/// });
/// let _service = ImpersonateLayer::new().layer(inner);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ImpersonateLayer {
    front_proxy: Option<Arc<HeaderNames>>,
}

impl ImpersonateLayer {
    /// The layer: the identity goes upstream as `Impersonate-*` headers.
    pub fn new() -> Self {
        ImpersonateLayer { front_proxy: None }
    }

    /// Front-proxy mode: the identity goes upstream in the headers `names`
    /// (kube's `--requestheader-*` authentication), which the upstream
    /// trusts from the proxy's client certificate. A caller's own headers of
    /// those names are removed as every identity header is.
    pub fn front_proxy(names: HeaderNames) -> Self {
        ImpersonateLayer {
            front_proxy: Some(Arc::new(names)),
        }
    }
}

impl<S> Layer<S> for ImpersonateLayer {
    type Service = Impersonate<S>;

    fn layer(&self, inner: S) -> Impersonate<S> {
        Impersonate {
            inner,
            front_proxy: self.front_proxy.clone(),
        }
    }
}

/// Service made by [`ImpersonateLayer`].
#[derive(Debug, Clone)]
pub struct Impersonate<S> {
    inner: S,
    front_proxy: Option<Arc<HeaderNames>>,
}

impl<S, B> Service<Request<B>> for Impersonate<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ProxyBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let refuse = |status: Status, req: Request<B>| {
            let refusal = with_unread_body(status.into_response(), req.into_body());
            Either::Left(futures_util::future::ready(Ok(refusal)))
        };
        let Some(identity) = req.extensions().get::<Arc<Identity>>().cloned() else {
            return refuse(Status::unauthorized(), req);
        };
        if let Some(names) = &self.front_proxy {
            return match ImpersonationHeaders::for_user_with(identity.user(), names) {
                Ok(headers) => {
                    strip_caller_identity(req.headers_mut());
                    names.strip(req.headers_mut());
                    headers.apply(req.headers_mut());
                    set_forwarded_for(&mut req);
                    Either::Right(self.inner.call(req))
                }
                Err(invalid) => refuse(invalid_identity(&invalid), req),
            };
        }
        match identity.impersonation_headers() {
            Ok(headers) => {
                rewrite(req.headers_mut(), headers);
                set_forwarded_for(&mut req);
                Either::Right(self.inner.call(req))
            }
            Err(invalid) => refuse(invalid_identity(invalid), req),
        }
    }
}

/// `X-Forwarded-For` from the request's [`forwarded::Origin`] (or
/// [`ClientAddr`]), as [`forwarded::set_forwarded_for`] says.
fn set_forwarded_for<B>(req: &mut Request<B>) {
    let origin = req.extensions().get::<forwarded::Origin>().copied();
    let client = req.extensions().get::<ClientAddr>().copied();
    forwarded::set_forwarded_for(req.headers_mut(), origin.as_ref(), client.as_ref());
}

fn invalid_identity(invalid: &crate::impersonate::InvalidIdentity) -> Status {
    tracing::warn!(error = %invalid, "authenticated identity cannot be impersonated");
    Status::failure(
        StatusCode::UNAUTHORIZED,
        Reason::Unauthorized,
        format!("the authenticated {invalid}"),
    )
}
