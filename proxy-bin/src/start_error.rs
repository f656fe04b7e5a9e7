//! Why a listener (the proxy's, the webhook's, the metrics') could not
//! start: each error names the config field to change.

use std::net::SocketAddr;

use proxy_core::upstream::UpstreamError;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Listener TLS material is unusable.
    #[error("{field}: {source}")]
    Tls {
        /// The config field.
        field: &'static str,
        /// The problem.
        source: proxy_core::tls::TlsError,
    },
    /// Client-certificate verification could not be set up.
    #[error("tls.clientCAFile: {0}")]
    ClientVerifier(String),
    /// An authenticator or the upstream could not be built.
    #[error(transparent)]
    Build(#[from] proxy_core::config::BuildError),
    /// The upstream client could not be built.
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// The client of one upstream section could not be built.
    #[error("{section}: {source}")]
    Section {
        /// The section (`upstream`, `upstreams[1]`).
        section: String,
        /// Why.
        source: UpstreamError,
    },
    /// The named clusters of `upstreams` cannot be routed to.
    #[error("upstreams: {0}")]
    Router(#[from] proxy_core::upstream::router::RouterError),
    /// A setting forbids starting this way.
    #[error("{field}: {message}")]
    Refused {
        /// The config field (or flag) to change.
        field: &'static str,
        /// Why, and what to do.
        message: String,
    },
    /// The audit log could not be opened.
    #[error("audit.path: {0}")]
    Audit(#[from] proxy_core::observe::audit::AuditError),
    /// The listen address could not be bound.
    #[error("listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
