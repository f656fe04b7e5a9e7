//! [`ProxyBodyLayer`]: the adapter that lets the proxy's layers sit over any
//! service. The layers answer refusals with [`ProxyBody`] and so ask the
//! service they wrap for `Response<ProxyBody>`; this layer turns any
//! service's `Response<B>` (an axum handler's, a tower middleware's such as
//! tower-http's `TraceLayer`) into that.
//!
//! ```text
//! AuthnLayer → ProxyBodyLayer → your handler (axum Router::route_layer)
//! AuthnLayer → ProxyBodyLayer → TraceLayer → ImpersonateLayer → Upstream
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ProxyBody;
use crate::BoxError;

/// Turns the wrapped service's response body into a [`ProxyBody`] (see the
/// module's documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyBodyLayer;

impl ProxyBodyLayer {
    /// The layer.
    pub fn new() -> Self {
        ProxyBodyLayer
    }
}

impl<S> Layer<S> for ProxyBodyLayer {
    type Service = IntoProxyBody<S>;

    fn layer(&self, inner: S) -> IntoProxyBody<S> {
        IntoProxyBody { inner }
    }
}

/// Service made by [`ProxyBodyLayer`].
#[derive(Debug, Clone)]
pub struct IntoProxyBody<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IntoProxyBody<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(req);
        Box::pin(async move { Ok(future.await?.map(ProxyBody::new)) })
    }
}
