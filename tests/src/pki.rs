//! Test certificates made with rcgen: one CA per test, loopback serving
//! certificates and client certificates, written to the test's own folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use authproxy::pki::{IssuedPem, ThrowawayCa};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and its key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
    /// Where the key was written.
    pub key_path: PathBuf,
}

/// A throwaway CA and the folder its files live in.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: ThrowawayCa,
    ca_pem: String,
    ca_path: PathBuf,
}

impl TestPki {
    /// A new CA in a new temporary folder.
    pub fn new() -> anyhow::Result<TestPki> {
        let dir = tempfile::tempdir()?;
        let ca = ThrowawayCa::new("authproxy test CA")?;
        let ca_pem = ca.ca_pem();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, &ca_pem)?;
        Ok(TestPki {
            dir,
            ca,
            ca_pem,
            ca_path,
        })
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The folder of this PKI's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, issued: IssuedPem) -> anyhow::Result<CertFiles> {
        let files = CertFiles {
            cert_path: self.dir.path().join(format!("{name}.crt")),
            key_path: self.dir.path().join(format!("{name}.key")),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        };
        std::fs::write(&files.cert_path, &files.cert_pem)?;
        std::fs::write(&files.key_path, &files.key_pem)?;
        Ok(files)
    }

    /// A serving certificate for `localhost`, 127.0.0.1 and ::1.
    pub fn issue_server(&self, name: &str) -> anyhow::Result<CertFiles> {
        self.write(name, self.ca.issue_server(name)?)
    }

    /// A serving certificate for loopback and the addresses `more`.
    pub fn issue_server_for(
        &self,
        name: &str,
        more: &[std::net::IpAddr],
    ) -> anyhow::Result<CertFiles> {
        self.write(name, self.ca.issue_server_for(name, more)?)
    }

    /// A client certificate with `common_name` (kube: user) and an optional
    /// organization (kube: group).
    pub fn issue_client(
        &self,
        name: &str,
        common_name: &str,
        organization: Option<&str>,
    ) -> anyhow::Result<CertFiles> {
        self.write(name, self.ca.issue_client(common_name, organization)?)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration for `cert` offering `alpn`.
pub fn server_config(
    cert: &CertFiles,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration trusting `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
