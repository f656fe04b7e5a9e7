//! Authentication and impersonation for the Kubernetes API, as tower middleware.
//!
//! A request travels through these modules in order:
//!
//! 1. [`credential`] reads what the caller presented (Bearer token, Basic
//!    username/password, or a TLS client certificate);
//! 2. [`authn`] turns it into a [`UserInfo`] through a [`Chain`] of
//!    [`Authenticator`]s;
//! 3. [`impersonate`] removes every credential and `Impersonate-*` header the
//!    caller sent (and the front-proxy `X-Remote-*` headers) and sets
//!    `Impersonate-User`, `-Group`, `-Uid` and `-Extra-*` from the
//!    authenticated identity; [`forwarded`] appends the client's address to
//!    `X-Forwarded-For`;
//! 4. [`upstream`] forwards the request, streaming, to the API server with the
//!    proxy's own credential, below its path prefix (dot-segments resolved, never
//!    climbing out of it); with
//!    many API servers, [`upstream::router`] picks one by the request's
//!    `/k8s/clusters/<name>/` prefix; a cluster the proxy cannot reach is
//!    served through the tunnels its agents dialled in ([`tunnel`]).
//!
//! [`AuthnLayer`] and [`ImpersonateLayer`] are the tower face of steps 2 and 3;
//! [`LongRunningLayer`] between them caps the watches and tunnels
//! ([`long_running`]) each user may hold;
//! failures reach the caller as Kubernetes `Status` objects (see [`status`]).
//! [`observe::ObserveLayer`], in front of them, gives each request an audit ID
//! (sent upstream as `Audit-ID`), counts it in Prometheus metrics and writes it
//! to an audit log in kube's `audit.k8s.io/v1` format.
//! The API server authorizes the impersonated user; this crate makes no
//! authorization decision about the forwarded request.
//!
//! # Features
//!
//! Every part an embedder may leave out is a cargo feature; `default` has
//! them all (what the `authproxy` binary uses). An OIDC-only server writes
//! `proxy-core = { version = "…", default-features = false, features =
//! ["oidc"] }` (see `examples/embed_oidc_only.rs` in this crate).
//!
//! | feature | brings |
//! | --- | --- |
//! | `oidc` | OIDC ID tokens (`authn::oidc`), claim mappings from claims |
//! | `cel` | CEL claim mappings and validation rules (implies `oidc`) |
//! | `ldap` | LDAP logins with `Authorization: Basic` (`authn::ldap`) |
//! | `issued-tokens` | tokens the proxy issues after a login, and their revocation |
//! | `webhook` | the TokenReview service (`tokenreview`) |
//! | `tunnel` | agents that dial in for clusters the proxy cannot reach (`tunnel`) |
//! | `observe` | Prometheus metrics, the audit log, session recording (`observe`) |
//!
//! Static tokens, client certificates, the layers, the chain's cache, the
//! upstream and the router are always there. A configuration section for a
//! part left out still parses, and is refused naming the feature it needs
//! ([`problem::NotBuilt`]).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use proxy_core::{authn::{Chain, StaticTokens}, AuthnLayer, ImpersonateLayer};
//! use tower_layer::Layer;
//!
//! let tokens = StaticTokens::from_csv("s3cret,alice,1001,\"devs,ops\"\n", "inline").unwrap();
//! let chain = Chain::new(vec![Arc::new(tokens)]);
//! // `inner` would be `proxy_core::upstream::Upstream` in a real proxy.
//! let inner = tower::service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(proxy_core::ProxyBody::empty()))
//! });
//! let _svc = AuthnLayer::new(chain).layer(ImpersonateLayer::new().layer(inner));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// The fuzz targets reach private parts through `fuzzing`, built only with
// the feature of that name.
pub mod authn;
pub mod body;
pub mod config;
pub mod counters;
pub mod credential;
pub mod forwarded;
pub mod impersonate;
pub mod kubeconfig;
pub mod layer;
pub mod long_running;
pub mod observe;
mod path;
pub mod problem;
pub mod refusal;
pub mod reload;
pub mod status;
mod tap;
pub mod tls;
#[cfg(feature = "webhook")]
pub mod tokenreview;
#[cfg(feature = "tunnel")]
pub mod tunnel;
pub mod upstream;
pub mod user;
pub mod worker;

#[cfg(test)]
mod test_tls;

/// The private parsers the fuzz targets (`fuzz/`) drive, built only with
/// the `fuzzing` feature: not part of the library.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::path::join as path_join;
    #[cfg(feature = "tunnel")]
    pub use crate::tunnel::register::{read as read_registration, Claim};
}

pub use authn::{Authenticator, AuthnError, Chain, Identity, UserInfo};
pub use body::ProxyBody;
pub use credential::{Credential, CredentialError};
pub use layer::{
    proxy_stack, proxy_stack_routed, proxy_stack_with, Authn, AuthnLayer, Cluster, ClusterStack,
    Impersonate, ImpersonateLayer, LongRunningLayer, NestedImpersonationLayer, ProxyStack,
};

/// The boxed error type used where several error sources meet (bodies, services).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
