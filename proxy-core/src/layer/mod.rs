//! The tower face of the proxy: [`AuthnLayer`] authenticates, then
//! [`ImpersonateLayer`] rewrites the identity headers, then the inner service
//! (normally [`Upstream`]) forwards. Reading the stack reads the data flow:
//!
//! ```text
//! request → Authn (credential → Identity in extensions)
//!         → Router (/k8s/clusters/<name>/... → that cluster's stack below,
//!           prefix removed; see crate::upstream::router)
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
mod body;
mod impersonate;
mod long_running;
mod nested;

pub use authn::{Authn, AuthnLayer};
pub use body::{IntoProxyBody, ProxyBodyLayer};
pub use impersonate::{Impersonate, ImpersonateLayer};
pub use long_running::{LongRunning, LongRunningLayer, RETRY_AFTER_SECONDS};
pub use nested::{NestedImpersonation, NestedImpersonationLayer};

use tower_layer::Layer;

use crate::authn::Authenticator;
use crate::long_running::Limits;
use crate::upstream::router::{Router, RouterError};
use crate::upstream::{Backend, Upstream};

/// What one API server gets below the [`Router`]: cap long-running
/// requests, take the caller's own impersonation request (or refuse it),
/// impersonate, forward.
pub type ClusterStack<B = hyper::body::Incoming> =
    LongRunning<NestedImpersonation<Impersonate<Backend<B>>>>;

/// The whole proxy as one service: authenticate, route to a cluster, and
/// that cluster's [`ClusterStack`].
pub type ProxyStack<B = hyper::body::Incoming> = Authn<Router<ClusterStack<B>>>;

/// One API server behind the proxy: its client, and how its callers' own
/// `Impersonate-*` headers are handled (a [`Reviewer`](crate::impersonate::review::Reviewer)
/// asks this server, not another).
#[derive(Debug)]
pub struct Cluster<B = hyper::body::Incoming> {
    /// The caller's impersonation headers: refused, or reviewed by this server.
    pub nested: NestedImpersonationLayer,
    /// The client of this server (or its agents' tunnels).
    pub upstream: Backend<B>,
}

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
    limits: impl Into<LongRunningLayer>,
    nested: NestedImpersonationLayer,
    impersonate: ImpersonateLayer,
    upstream: impl Into<Backend<B>>,
) -> ProxyStack<B> {
    let long_running = limits.into();
    authn.layer(Router::single(cluster_stack(
        &long_running,
        &impersonate,
        Cluster {
            nested,
            upstream: upstream.into(),
        },
    )))
}

/// Like [`proxy_stack_with`] for many API servers: requests below
/// `/k8s/clusters/<name>/` go to the cluster `name` (see
/// [`crate::upstream::router`]), others to `default` (404 without one). The
/// long-running caps count across all clusters. An
/// [`crate::observe::ObserveLayer`] above it reads requests as the clusters
/// will with `.with_routing(Routing::Clusters)` (see
/// [`crate::observe::Routing`]).
///
/// Errors when a name is not a DNS label or is used twice.
pub fn proxy_stack_routed<B>(
    authn: AuthnLayer,
    limits: impl Into<LongRunningLayer>,
    impersonate: ImpersonateLayer,
    default: Option<Cluster<B>>,
    clusters: Vec<(String, Cluster<B>)>,
) -> Result<ProxyStack<B>, RouterError> {
    let long_running = limits.into();
    let default = default.map(|cluster| cluster_stack(&long_running, &impersonate, cluster));
    let clusters = clusters
        .into_iter()
        .map(|(name, cluster)| (name, cluster_stack(&long_running, &impersonate, cluster)))
        .collect();
    Ok(authn.layer(Router::new(default, clusters)?))
}

fn cluster_stack<B>(
    long_running: &LongRunningLayer,
    impersonate: &ImpersonateLayer,
    cluster: Cluster<B>,
) -> ClusterStack<B> {
    long_running.layer(cluster.nested.layer(impersonate.layer(cluster.upstream)))
}
