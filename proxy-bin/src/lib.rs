//! The `authproxy` process: configuration file, TLS listener, signals, logs,
//! and the demo. Everything reusable lives in `proxy_core`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod demo;
pub mod logging;
pub mod login;
pub mod metrics_listener;
pub mod pki;
pub mod server;
pub mod webhook;
