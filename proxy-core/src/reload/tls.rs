//! TLS material that is swapped while the proxy runs: a listener's
//! certificate and key ([`ReloadingCert`]), the CA its client certificates
//! are verified against ([`ReloadingClientVerifier`]), and the CA the API
//! server is verified against ([`ReloadingServerVerifier`]).
//!
//! Each is read by rustls once per handshake, so a new file is used by the
//! next handshake while established connections (and the watches and exec
//! sessions on them) go on with what they negotiated. A new version is taken
//! only when it is whole and usable: a certificate whose key does not match,
//! or a CA file without a certificate, is refused and the old one serves on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{watch_files, FileWatch, ReloadKind, ReloadReporter};
use crate::tls::{self, TlsError};

fn rustls_error(source_name: &str, what: &'static str, error: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        what,
        source_name: source_name.to_owned(),
        problem: error.to_string(),
    }
}

/// Parses a certificate chain and its key and checks that they belong together.
pub fn certified_key(
    cert_pem: &[u8],
    cert_name: &str,
    key_pem: &[u8],
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = tls::parse_certs(cert_pem, cert_name)?;
    let key = tls::parse_key(key_pem, key_name)?;
    let signing = tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| rustls_error(key_name, "private key", e))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err(TlsError::Pem {
            what: "private key",
            source_name: key_name.to_owned(),
            problem: format!("does not belong to the certificate in {cert_name}"),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    tls::read_file(path)
}

/// A listener's certificate and key, swapped when their files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: Arc<ArcSwap<CertifiedKey>>,
    _watch: FileWatch,
}

impl ReloadingCert {
    /// Loads `cert` and `key` and re-reads them every `interval`; a new pair
    /// is served from the next handshake on when it parses and matches.
    /// Must be called within a tokio runtime.
    pub fn watch(
        cert: PathBuf,
        key: PathBuf,
        interval: Duration,
        reporter: ReloadReporter,
    ) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = (read(&cert)?, read(&key)?);
        let (cert_name, key_name) = (cert.display().to_string(), key.display().to_string());
        let certified = certified_key(&cert_pem, &cert_name, &key_pem, &key_name)?;
        let current = Arc::new(ArcSwap::from_pointee(certified));
        let weak: Weak<ArcSwap<CertifiedKey>> = Arc::downgrade(&current);
        let watch = watch_files(
            vec![cert, key],
            interval,
            vec![cert_pem, key_pem],
            ReloadKind::ServingCert,
            reporter,
            move |contents| {
                let certified = certified_key(&contents[0], &cert_name, &contents[1], &key_name)
                    .map_err(|e| e.to_string())?;
                if let Some(current) = weak.upgrade() {
                    current.store(Arc::new(certified));
                }
                Ok(())
            },
        );
        Ok(ReloadingCert {
            current,
            _watch: watch,
        })
    }

    /// The certificate chain and key served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn client_verifier(
    pem: &[u8],
    name: &str,
    mandatory: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = tls::root_store(pem, name)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider());
    let builder = if mandatory {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| rustls_error(name, "CA certificate", e))
}

/// Verifies client certificates against a CA file that is re-read as it
/// changes.
///
/// It sends no CA names in its certificate request (they would have to
/// change with the file): clients offer the certificate they have, and it is
/// verified against the CA in force.
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    current: Arc<ArcSwap<Arc<dyn ClientCertVerifier>>>,
    mandatory: bool,
    _watch: FileWatch,
}

impl ReloadingClientVerifier {
    /// Loads the CA and re-reads it every `interval`. With `mandatory`, a
    /// handshake without a verified client certificate fails. Must be called
    /// within a tokio runtime.
    pub fn watch(
        ca: PathBuf,
        mandatory: bool,
        interval: Duration,
        reporter: ReloadReporter,
    ) -> Result<Self, TlsError> {
        let pem = read(&ca)?;
        let name = ca.display().to_string();
        let current = Arc::new(ArcSwap::from_pointee(client_verifier(
            &pem, &name, mandatory,
        )?));
        let weak = Arc::downgrade(&current);
        let watch = watch_files(
            vec![ca],
            interval,
            vec![pem],
            ReloadKind::ClientCa,
            reporter,
            move |contents| {
                let verifier =
                    client_verifier(&contents[0], &name, mandatory).map_err(|e| e.to_string())?;
                if let Some(current) = weak.upgrade() {
                    current.store(Arc::new(verifier));
                }
                Ok(())
            },
        );
        Ok(ReloadingClientVerifier {
            current,
            mandatory,
            _watch: watch,
        })
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

fn server_verifier(pem: &[u8], name: &str) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let roots = tls::root_store(pem, name)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider())
        .build()
        .map_err(|e| rustls_error(name, "CA certificate", e))
}

/// Verifies the API server's certificate against roots that can be
/// replaced: new connections use the new CA, open ones stay as they are.
#[derive(Debug)]
pub struct ReloadingServerVerifier {
    current: Arc<ArcSwap<WebPkiServerVerifier>>,
}

impl ReloadingServerVerifier {
    /// Verifies against `roots`.
    pub fn new(roots: rustls::RootCertStore) -> Result<Arc<Self>, TlsError> {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), tls::provider())
                .build()
                .map_err(|e| rustls_error("CA", "CA certificate", e))?;
        Ok(Arc::new(ReloadingServerVerifier {
            current: Arc::new(ArcSwap::new(verifier)),
        }))
    }

    /// Re-reads `ca` every `interval` and verifies new connections against
    /// it once it parses. Stops when the returned watch is dropped. Must be
    /// called within a tokio runtime.
    pub fn watch(
        self: &Arc<Self>,
        ca: PathBuf,
        interval: Duration,
        reporter: ReloadReporter,
    ) -> Result<FileWatch, TlsError> {
        let pem = read(&ca)?;
        let name = ca.display().to_string();
        let weak = Arc::downgrade(&self.current);
        let fresh = server_verifier(&pem, &name)?;
        self.current.store(fresh);
        Ok(watch_files(
            vec![ca],
            interval,
            vec![pem],
            ReloadKind::UpstreamCa,
            reporter,
            move |contents| {
                let verifier = server_verifier(&contents[0], &name).map_err(|e| e.to_string())?;
                if let Some(current) = weak.upgrade() {
                    current.store(verifier);
                }
                Ok(())
            },
        ))
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let (cert, _) = pair("one");
        let (_, other_key) = pair("two");
        let error = certified_key(cert.as_bytes(), "tls.crt", other_key.as_bytes(), "tls.key")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tls.key") && error.contains("tls.crt"),
            "{error}"
        );
        assert!(!error.contains("PRIVATE KEY"), "{error}");
    }

    #[tokio::test]
    async fn a_new_pair_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key) = pair("one");
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let reloading = ReloadingCert::watch(
            cert_path.clone(),
            key_path.clone(),
            Duration::from_millis(10),
            ReloadReporter::default(),
        )
        .unwrap();
        let first = reloading.current().cert[0].clone();
        // A certificate without its key is refused...
        let (cert2, key2) = pair("two");
        std::fs::write(&cert_path, &cert2).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(reloading.current().cert[0], first);
        // ...and taken once the key follows.
        std::fs::write(&key_path, &key2).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while reloading.current().cert[0] == first {
            assert!(tokio::time::Instant::now() < deadline, "new pair not taken");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
