//! The demo's certificates: one CA and a loopback serving certificate used
//! by both the proxy and the embedded upstream, written to the demo folder.

use std::path::{Path, PathBuf};

use crate::pki::ThrowawayCa;

/// Paths of the demo's PEM files.
pub struct DemoFiles {
    pub ca: PathBuf,
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
}

/// A random hex token from the system's secure random source.
pub fn random_token() -> String {
    use std::fmt::Write;
    let mut bytes = [0u8; 24];
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes);
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn write_demo_pki(dir: &Path) -> Result<DemoFiles, super::error::DemoError> {
    let ca = ThrowawayCa::new("authproxy demo CA")?;
    let serving = ca.issue_server("localhost")?;
    let files = DemoFiles {
        ca: dir.join("ca.crt"),
        proxy_cert: dir.join("tls.crt"),
        proxy_key: dir.join("tls.key"),
    };
    std::fs::write(&files.ca, ca.ca_pem())?;
    std::fs::write(&files.proxy_cert, serving.cert_pem)?;
    std::fs::write(&files.proxy_key, serving.key_pem)?;
    Ok(files)
}
