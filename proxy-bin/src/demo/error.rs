//! Why the demo could not start: a leaf, so the demo's parts report their
//! failures without importing the demo itself.

use crate::start_error::StartError;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Files could not be written.
    #[error("demo files: {0}")]
    Io(#[from] std::io::Error),
    /// Certificates could not be made.
    #[error("demo certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    /// The proxy could not start.
    #[error("starting the proxy: {0}")]
    Start(#[from] StartError),
    /// The generated configuration was refused (a bug).
    #[error("demo configuration: {0}")]
    Config(String),
}
