//! Loading TLS material (PEM certificates, keys, CA bundles) into rustls
//! configurations. Every configuration uses the ring provider explicitly, so
//! nothing depends on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the system's CA bundle is read from when no CA is configured.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A problem with TLS material. Names the file; never holds key bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{what} in {source_name}: {problem}")]
    Pem {
        /// What was looked for (certificate, private key, CA certificate).
        what: &'static str,
        /// The file or other source.
        source_name: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the material (key does not match, bad protocol set…).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every configuration uses: ring's, with AES-128-GCM
/// first, then AES-256-GCM, then ChaCha20-Poly1305 (TLS 1.3, and likewise
/// for TLS 1.2), the order Go's TLS stack (kubectl, kube-apiserver) prefers on
/// machines with AES instructions. AES-128-GCM takes ten AES rounds per block
/// where AES-256 takes fourteen.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        use rustls::CipherSuite as S;
        let tls12 = matches!(suite, rustls::SupportedCipherSuite::Tls12(_));
        let rank = match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        };
        (tls12, rank)
    });
    Arc::new(provider)
}

/// Reads a file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::reload::read_settled(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses every certificate in PEM text.
pub fn parse_certs(
    pem: &[u8],
    source_name: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            source_name: source_name.to_owned(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            source_name: source_name.to_owned(),
            problem: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in PEM text.
pub fn parse_key(pem: &[u8], source_name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "private key",
        source_name: source_name.to_owned(),
        problem: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key found".into(),
            other => other.to_string(),
        },
    })
}

/// Reads certificates from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(&read_file(path)?, &path.display().to_string())
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(&read_file(path)?, &path.display().to_string())
}

/// A root store from PEM CA certificates.
pub fn root_store(ca_pem: &[u8], source_name: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem, source_name)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "CA certificate",
            source_name: source_name.to_owned(),
            problem: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The system's CA bundle as a root store.
pub fn system_roots() -> Result<RootCertStore, TlsError> {
    let path = Path::new(SYSTEM_CA_BUNDLE);
    root_store(&read_file(path)?, SYSTEM_CA_BUNDLE)
}

/// A client configuration trusting `roots`, optionally presenting a client
/// certificate, offering `alpn` protocols.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration whose server certificates `verifier` checks (a
/// [`crate::reload::tls::ReloadingServerVerifier`] for a CA that rotates),
/// optionally presenting a client certificate, offering `alpn` protocols.
pub fn client_config_with_verifier(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod suite_order_tests {
    use super::*;
    use rustls::CipherSuite as S;

    #[test]
    fn aes_128_gcm_comes_first_for_each_version() {
        let suites: Vec<_> = provider()
            .cipher_suites
            .iter()
            .map(|s| {
                (
                    matches!(s, rustls::SupportedCipherSuite::Tls12(_)),
                    s.suite(),
                )
            })
            .collect();
        let tls13: Vec<_> = suites.iter().filter(|s| !s.0).map(|s| s.1).collect();
        assert_eq!(
            tls13,
            [
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384,
                S::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        // Every TLS 1.3 suite before any TLS 1.2 one; within TLS 1.2, AES-128 first.
        let first_tls12 = suites.iter().position(|s| s.0).unwrap();
        assert!(suites[..first_tls12].iter().all(|s| !s.0));
        assert!(suites[first_tls12..].iter().all(|s| s.0));
        assert!(matches!(
            suites[first_tls12].1,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        ));
        assert_eq!(
            suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }
}
