//! [`ImpersonateLayer`]: replaces whatever identity the caller sent with the
//! authenticated [`Identity`] as `Impersonate-*` headers, and appends the
//! client's address (the [`ClientAddr`] extension) to `X-Forwarded-For`.

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
use crate::impersonate::rewrite;
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
#[derive(Debug, Clone, Copy, Default)]
pub struct ImpersonateLayer;

impl ImpersonateLayer {
    /// The layer.
    pub fn new() -> Self {
        ImpersonateLayer
    }
}

impl<S> Layer<S> for ImpersonateLayer {
    type Service = Impersonate<S>;

    fn layer(&self, inner: S) -> Impersonate<S> {
        Impersonate { inner }
    }
}

/// Service made by [`ImpersonateLayer`].
#[derive(Debug, Clone)]
pub struct Impersonate<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Impersonate<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ProxyBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let refuse =
            |status: Status| Either::Left(futures_util::future::ready(Ok(status.into_response())));
        let Some(identity) = req.extensions().get::<Arc<Identity>>().cloned() else {
            return refuse(Status::unauthorized());
        };
        match identity.impersonation_headers() {
            Ok(headers) => {
                rewrite(req.headers_mut(), headers);
                let client = req.extensions().get::<ClientAddr>().copied();
                forwarded::append_client(req.headers_mut(), client.as_ref());
                Either::Right(self.inner.call(req))
            }
            Err(invalid) => {
                tracing::warn!(error = %invalid, "authenticated identity cannot be impersonated");
                refuse(Status::failure(
                    StatusCode::UNAUTHORIZED,
                    Reason::Unauthorized,
                    format!("the authenticated {invalid}"),
                ))
            }
        }
    }
}
