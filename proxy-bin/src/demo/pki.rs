//! Throwaway certificates for the demo: one CA, a serving certificate for
//! loopback used by both the proxy and the embedded upstream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// Paths of the demo's PEM files.
pub struct DemoFiles {
    pub ca: PathBuf,
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
}

/// A random URL-safe token (32 bytes of key material from a fresh key pair's
/// randomness source, hex-encoded).
pub fn random_token() -> String {
    use std::fmt::Write;
    let mut bytes = [0u8; 24];
    // ring's system random; rustls already depends on it.
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes);
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn write_demo_pki(dir: &Path) -> Result<DemoFiles, super::DemoError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "authproxy demo CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    let files = DemoFiles {
        ca: dir.join("ca.crt"),
        proxy_cert: dir.join("tls.crt"),
        proxy_key: dir.join("tls.key"),
    };
    std::fs::write(&files.ca, ca.pem())?;
    std::fs::write(&files.proxy_cert, cert.pem())?;
    std::fs::write(&files.proxy_key, key.serialize_pem())?;
    Ok(files)
}
