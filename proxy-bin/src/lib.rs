//! The `authproxy` process: configuration file, TLS listener, signals, logs,
//! and the demo. Everything reusable lives in `proxy_core`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod config;
mod connection;
pub mod demo;
pub mod kubeconfig_endpoint;
pub mod limits;
pub mod logging;
pub mod login;
pub mod metrics_listener;
pub mod pki;
mod plain;
pub mod prompt;
pub mod proxy_protocol;
pub mod readiness;
pub mod reload;
mod request_body;
pub mod revocation;
pub mod server;
pub mod sessions;
pub mod start_error;
pub mod token_endpoint;
pub mod webhook;
