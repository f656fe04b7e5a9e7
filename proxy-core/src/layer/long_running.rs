//! [`LongRunningLayer`]: caps the long-running requests (watch, exec,
//! attach, port-forward, proxy, `logs -f`) each authenticated user and all
//! users together may hold, answering `429 TooManyRequests` beyond them.
//!
//! It sits after [`AuthnLayer`](crate::AuthnLayer) (it needs the caller's
//! [`Identity`]). The permit is held by the response body and, for an
//! upgrade, by the tunnel ([`Hold`] in the request extensions, which
//! [`Upstream`](crate::upstream::Upstream) keeps until the tunnel closes), so
//! it comes back when the watch ends, the tunnel closes or the caller goes
//! away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::authn::Identity;
use crate::body::{Hold, ProxyBody};
use crate::long_running::{is_long_running, Limiter, Limits, Refused};
#[cfg(feature = "observe")]
use crate::observe::sessions::{SessionRecorder, SessionTap};

/// Without the `observe` feature there is no session recorder: a type with
/// no values stands in, so no recording is ever started.
#[cfg(not(feature = "observe"))]
type SessionRecorder = std::convert::Infallible;
#[cfg(not(feature = "observe"))]
type SessionTap = std::convert::Infallible;
use crate::refusal::with_unread_body;
use crate::status::{Reason, Status};

/// Seconds a refused caller is told to wait (`Retry-After`), as kube-apiserver's
/// max-in-flight filter says.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// Layer that caps long-running requests per user and in total.
///
/// ```
/// use proxy_core::layer::LongRunningLayer;
/// use proxy_core::long_running::Limits;
/// use tower_layer::Layer;
///
/// let layer = LongRunningLayer::new(Limits { per_user: 100, total: 10_000 });
/// let inner = tower::service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(proxy_core::ProxyBody::empty()))
/// });
/// let _service = layer.layer(inner);
/// ```
#[derive(Debug, Clone, Default)]
pub struct LongRunningLayer {
    limiter: Limiter,
    recorder: Option<Arc<SessionRecorder>>,
}

impl From<Limits> for LongRunningLayer {
    fn from(limits: Limits) -> Self {
        LongRunningLayer::new(limits)
    }
}

impl LongRunningLayer {
    /// A layer with these caps.
    pub fn new(limits: Limits) -> Self {
        LongRunningLayer {
            limiter: Limiter::new(limits),
            recorder: None,
        }
    }

    /// Records the exec and attach sessions `recorder` selects (see
    /// [`crate::observe::sessions`]); the recording is named in the
    /// request's audit event.
    #[cfg(feature = "observe")]
    pub fn with_recording(mut self, recorder: Arc<SessionRecorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// The shared counter (to read what is held).
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S> Layer<S> for LongRunningLayer {
    type Service = LongRunning<S>;

    fn layer(&self, inner: S) -> LongRunning<S> {
        LongRunning {
            inner,
            limiter: self.limiter.clone(),
            recorder: self.recorder.clone(),
        }
    }
}

/// Service made by [`LongRunningLayer`].
#[derive(Debug, Clone)]
pub struct LongRunning<S> {
    inner: S,
    limiter: Limiter,
    recorder: Option<Arc<SessionRecorder>>,
}

fn too_many(refused: Refused) -> Response<ProxyBody> {
    let message = match refused {
        Refused::PerUser => {
            "Too many long-running requests (watch, exec, logs -f) by this user, please try again later."
        }
        Refused::Total => "Too many requests, please try again later.",
    };
    let mut response = Status::failure(
        StatusCode::TOO_MANY_REQUESTS,
        Reason::TooManyRequests,
        message,
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

impl<S, B> Service<Request<B>> for LongRunning<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let upgrade = crate::impersonate::is_upgrade(req.headers());
        if !is_long_running(req.method(), req.uri(), upgrade) {
            return Box::pin(self.inner.call(req));
        }
        // Without an identity (the layer used without AuthnLayer) every
        // caller shares one count.
        let user = req
            .extensions()
            .get::<Arc<Identity>>()
            .map(|identity| identity.user().username.as_str())
            .unwrap_or("");
        let hold = match self.limiter.try_acquire(user) {
            Ok(permit) => Hold::new(permit),
            Err(refused) => {
                tracing::info!(%refused, "refused a long-running request");
                let refusal = with_unread_body(too_many(refused), req.into_body());
                return Box::pin(std::future::ready(Ok(refusal)));
            }
        };
        hold.clone().keep_in(req.extensions_mut());
        let recording = match &self.recorder {
            Some(recorder) => recording(recorder, &mut req, upgrade),
            None => Ok(None),
        };
        // A session that must be recorded has its file before it is
        // forwarded, or does not happen.
        let recording = match recording {
            Ok(recording) => recording,
            Err(error) => {
                tracing::warn!(%error, "a session that must be recorded cannot be; refused");
                let mut refusal = crate::status::Status::failure(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    crate::status::Reason::ServiceUnavailable,
                    "this session must be recorded, and it cannot be: it was not opened",
                )
                .into_response();
                refusal.extensions_mut().insert(crate::status::NotUpstream);
                let response = crate::refusal::with_unread_body(refusal, req.into_body());
                return Box::pin(async move { Ok(response) });
            }
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            name_in_audit(recording);
            Ok(response.map(|body| body.with_hold(hold)))
        })
    }
}

/// The recording of an upgrade `recorder` selects, told to the upstream
/// through the request's extensions; `Err` with the reason when the session
/// must be recorded and cannot be (its file is made before it is
/// forwarded), or when the request runs a selected command no recording
/// can follow (the kubelet's `run` behind `nodes/<node>/proxy`).
#[cfg(feature = "observe")]
fn recording<B>(
    recorder: &Arc<SessionRecorder>,
    req: &mut Request<B>,
    upgrade: bool,
) -> Result<Option<SessionTap>, String> {
    let identity = req.extensions().get::<Arc<Identity>>().cloned();
    if !upgrade {
        if recorder.refuses_unrecordable(req, identity.as_deref()) {
            return Err(format!(
                "{}: a command run without a stream to record",
                req.uri().path()
            ));
        }
        return Ok(None);
    }
    let Some(tap) = recorder.tap_for(req, identity.as_deref()) else {
        return Ok(None);
    };
    req.extensions_mut()
        .insert(crate::tap::UpgradeTaps(Arc::new(tap.clone())));
    if recorder.required() {
        crate::observe::sessions::keep_readable_protocols(req.headers_mut())
            .and_then(|()| tap.prepare().map_err(|e| e.to_string()))
            .map_err(|error| format!("{}: {error}", tap.path().display()))?;
    }
    Ok(Some(tap))
}

#[cfg(not(feature = "observe"))]
fn recording<B>(
    recorder: &Arc<SessionRecorder>,
    _req: &mut Request<B>,
    _upgrade: bool,
) -> Result<Option<SessionTap>, String> {
    match **recorder {}
}

/// Names the recording in the audit event, when there is a file to name.
#[cfg(feature = "observe")]
fn name_in_audit(recording: Option<SessionTap>) {
    if let Some(tap) = recording.filter(|tap| tap.started()) {
        crate::observe::record::recording(tap.path().display().to_string());
    }
}

#[cfg(not(feature = "observe"))]
fn name_in_audit(recording: Option<SessionTap>) {
    if let Some(never) = recording {
        match never {}
    }
}
