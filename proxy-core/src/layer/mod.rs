//! The tower face of the proxy: [`AuthnLayer`] authenticates, then
//! [`ImpersonateLayer`] rewrites the identity headers, then the inner service
//! (normally [`Upstream`]) forwards. Reading the stack reads the data flow:
//!
//! ```text
//! request → Authn (credential → Identity in extensions)
//!         → LongRunning (cap watches, exec, logs -f per user and in total)
//!         → NestedImpersonation (the caller's own Impersonate-*: refused, or
//!           checked with SubjectAccessReviews and taken as the identity)
//!         → Impersonate (strip caller's identity, set Impersonate-*)
//!         → Upstream (proxy's own credential, stream to the API server)
//! ```
//!
//! Failures are Kubernetes `Status` responses: 401 (with `WWW-Authenticate`)
//! for a missing or bad credential, 429 when login attempts are throttled or
//! a long-running cap is reached,
//! 503 when an identity backend or the API server is unreachable.

mod authn;
mod impersonate;
mod long_running;
mod nested;

pub use authn::{Authn, AuthnLayer};
pub use impersonate::{Impersonate, ImpersonateLayer};
pub use long_running::{LongRunning, LongRunningLayer, RETRY_AFTER_SECONDS};
pub use nested::{NestedImpersonation, NestedImpersonationLayer};

use tower_layer::Layer;

use crate::authn::Authenticator;
use crate::long_running::Limits;
use crate::upstream::Upstream;

/// The whole proxy as one service: authenticate, cap long-running requests,
/// take the caller's own impersonation request (or refuse it), impersonate,
/// forward.
pub type ProxyStack<B = hyper::body::Incoming> =
    Authn<LongRunning<NestedImpersonation<Impersonate<Upstream<B>>>>>;

/// Composes the layers in request order around `upstream`, with the default
/// long-running caps; a caller's own `Impersonate-*` headers are refused
/// (use [`proxy_stack_with`] and [`NestedImpersonationLayer::authorize`] to
/// allow what the API server allows).
pub fn proxy_stack<B>(authenticator: impl Authenticator, upstream: Upstream<B>) -> ProxyStack<B> {
    proxy_stack_with(
        AuthnLayer::new(authenticator),
        Limits::default(),
        NestedImpersonationLayer::deny(),
        ImpersonateLayer::new(),
        upstream,
    )
}

/// Composes the layers in request order around `upstream` with a configured
/// [`AuthnLayer`], long-running caps, handling of the caller's own
/// impersonation headers and the way the identity goes upstream.
pub fn proxy_stack_with<B>(
    authn: AuthnLayer,
    limits: Limits,
    nested: NestedImpersonationLayer,
    impersonate: ImpersonateLayer,
    upstream: Upstream<B>,
) -> ProxyStack<B> {
    authn.layer(LongRunningLayer::new(limits).layer(nested.layer(impersonate.layer(upstream))))
}
