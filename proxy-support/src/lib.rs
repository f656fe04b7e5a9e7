//! Connection plumbing and rate limits that proxy-core and the `authproxy`
//! binary both use: a socket read in large pieces beneath TLS
//! ([`read_ahead`]), a future polled only when it woke its task ([`gate`]),
//! and keyed token buckets ([`rate_limit`]).
//!
//! An implementation detail of those two crates, kept apart so that neither
//! has to make these parts public: no stability promise is made for them,
//! and an embedder of proxy-core never needs this crate. It knows nothing
//! of authentication, configuration or Kubernetes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod gate;
pub mod rate_limit;
pub mod read_ahead;
