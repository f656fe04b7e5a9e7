//! Seeing what the proxy does: an audit ID for every request (sent upstream
//! as `Audit-ID`, returned as `Audit-Id`, on the request's tracing span),
//! Prometheus [`metrics`], and an [`audit`] log in kube's own format.
//! All of it comes with the `observe` feature; without it, only
//! [`request_info`] (how kube reads a request, which the layers need) is here.
//!
//! [`ObserveLayer`] goes outside [`AuthnLayer`](crate::AuthnLayer) so it sees
//! failed authentications too:
//!
//! ```
//! use std::sync::Arc;
//! use proxy_core::authn::{Chain, StaticTokens};
//! use proxy_core::observe::{metrics::Metrics, ObserveLayer};
//! use proxy_core::{AuthnLayer, ImpersonateLayer};
//! use tower_layer::Layer;
//!
//! let metrics = Metrics::new();
//! let tokens = StaticTokens::from_csv("t0k3n,alice,1,devs\n", "inline").unwrap();
//! let chain = metrics.instrument_chain(&Chain::new(vec![Arc::new(tokens)]));
//! let inner = tower::service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(proxy_core::ProxyBody::empty()))
//! });
//! let _svc = ObserveLayer::new()
//!     .with_metrics(metrics.clone())
//!     .layer(AuthnLayer::new(chain).layer(ImpersonateLayer::new().layer(inner)));
//! // metrics.encode() is the text of a /metrics endpoint.
//! ```
//!
//! The caller's own `Audit-ID` is replaced: the ID in kube-apiserver's log is
//! always the proxy's. `traceparent` and `tracestate` pass unchanged.

#[cfg(feature = "observe")]
pub mod audit;
#[cfg(feature = "observe")]
mod audit_id;
#[cfg(feature = "observe")]
mod backends;
#[cfg(feature = "observe")]
pub mod config;
#[cfg(feature = "observe")]
mod layer;
#[cfg(feature = "observe")]
pub mod metrics;
pub(crate) mod record;
pub mod request_info;
#[cfg(feature = "observe")]
pub mod sessions;

#[cfg(feature = "observe")]
#[cfg(feature = "observe")]
pub use audit_id::{AuditId, AUDIT_ID};
#[cfg(feature = "observe")]
pub use layer::{Observe, ObserveLayer, Routing};
