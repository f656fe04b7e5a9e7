//! The tower face of the proxy: [`AuthnLayer`] authenticates, then
//! [`ImpersonateLayer`] rewrites the identity headers, then the inner service
//! (normally [`Upstream`]) forwards. Reading the stack reads the data flow:
//!
//! ```text
//! request → Authn (credential → Identity in extensions)
//!         → Impersonate (strip caller's identity, set Impersonate-*)
//!         → Upstream (proxy's own credential, stream to the API server)
//! ```
//!
//! Failures are Kubernetes `Status` responses: 401 (with `WWW-Authenticate`)
//! for a missing or bad credential, 429 when login attempts are throttled,
//! 503 when an identity backend or the API server is unreachable.

mod authn;
mod impersonate;

pub use authn::{Authn, AuthnLayer};
pub use impersonate::{Impersonate, ImpersonateLayer};

use tower_layer::Layer;

use crate::authn::Authenticator;
use crate::upstream::Upstream;

/// The whole proxy as one service: authenticate, impersonate, forward.
pub type ProxyStack<B = hyper::body::Incoming> = Authn<Impersonate<Upstream<B>>>;

/// Composes the layers in request order around `upstream`.
pub fn proxy_stack<B>(authenticator: impl Authenticator, upstream: Upstream<B>) -> ProxyStack<B> {
    AuthnLayer::new(authenticator).layer(ImpersonateLayer::new().layer(upstream))
}
