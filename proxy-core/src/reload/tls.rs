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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Why the leaf of `certified` is not valid at `now` (expired, or not yet
/// valid), if it is not.
pub(crate) fn outside_validity(certified: &CertifiedKey, now: UnixTime) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let leaf = certified.cert.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let now = i64::try_from(now.as_secs()).ok()?;
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Some(format!("the certificate expired at {}", validity.not_after));
    }
    if validity.not_before.timestamp() > now {
        return Some(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ));
    }
    None
}

/// A listener's certificate and key, swapped when their files change (a
/// pair whose certificate has expired or is not valid yet is refused).
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
                // A replacement that has expired (or is not valid yet) would
                // fail every new handshake; the one serving stays.
                if let Some(problem) = outside_validity(&certified, UnixTime::now()) {
                    return Err(format!("{cert_name}: {problem}"));
                }
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
    /// Counts the CA files taken: a connection's certificate verified under
    /// an older one is verified again ([`ClientCertRecheck`]).
    generation: Arc<AtomicU64>,
    mandatory: bool,
    _watch: FileWatch,
}

/// Checks, per request, that a connection's client certificate is still one
/// the listener would accept, as kube-apiserver verifies the chain against
/// the current CAs and time on every request: not past its `notAfter`, and
/// verified again by the CAs in force whenever they changed since it was
/// last verified (once per connection and change, not per request).
#[derive(Debug, Clone)]
pub struct ClientCertRecheck {
    current: Arc<ArcSwap<Arc<dyn ClientCertVerifier>>>,
    generation: Arc<AtomicU64>,
}

/// A connection's client certificate as last verified: under which CA file
/// and until when (see [`ClientCertRecheck`]).
#[derive(Debug)]
pub struct VerifiedCert {
    generation: AtomicU64,
    /// `notAfter` of the leaf, in seconds since the epoch.
    not_after: Option<u64>,
    valid: AtomicBool,
}

impl ClientCertRecheck {
    /// A generation no CA file has: a chain recorded with it is verified
    /// again at its first check (a resumed TLS session's, verified in an
    /// earlier handshake).
    pub const NEVER_VERIFIED: u64 = u64::MAX;

    /// The CA file in force now; take it before a handshake and give it to
    /// [`ClientCertRecheck::verified_at`] after.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A certificate chain the handshake verified under `generation`.
    pub fn verified_at(&self, generation: u64, chain: &[CertificateDer<'_>]) -> VerifiedCert {
        let not_after = chain.first().and_then(|leaf| {
            use x509_parser::prelude::FromDer;
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        });
        VerifiedCert {
            generation: AtomicU64::new(generation),
            not_after,
            valid: AtomicBool::new(not_after.is_some()),
        }
    }

    /// Whether `chain`, verified as `state` says, is still valid now. Once
    /// it is not, it stays not for the connection.
    pub fn still_valid(&self, chain: &[CertificateDer<'_>], state: &VerifiedCert) -> bool {
        if !state.valid.load(Ordering::Acquire) {
            return false;
        }
        let now = UnixTime::now();
        if state
            .not_after
            .is_none_or(|not_after| now.as_secs() > not_after)
        {
            state.valid.store(false, Ordering::Release);
            return false;
        }
        let generation = self.generation();
        if state.generation.load(Ordering::Acquire) == generation {
            return true;
        }
        let Some((leaf, intermediates)) = chain.split_first() else {
            state.valid.store(false, Ordering::Release);
            return false;
        };
        let ok = self
            .current
            .load()
            .verify_client_cert(leaf, intermediates, now)
            .is_ok();
        if ok {
            state.generation.store(generation, Ordering::Release);
        } else {
            state.valid.store(false, Ordering::Release);
        }
        ok
    }
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
        let generation = Arc::new(AtomicU64::new(0));
        let taken = generation.clone();
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
                    taken.fetch_add(1, Ordering::AcqRel);
                }
                Ok(())
            },
        );
        Ok(ReloadingClientVerifier {
            current,
            generation,
            mandatory,
            _watch: watch,
        })
    }

    /// What requests re-check their connection's certificate with.
    pub fn recheck(&self) -> ClientCertRecheck {
        ClientCertRecheck {
            current: self.current.clone(),
            generation: self.generation.clone(),
        }
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

    /// A CA (its PEM) and a client certificate chain it signed, valid
    /// until `not_after` (default: rcgen's, far in the future).
    fn ca_and_client(not_after: Option<(i32, u8, u8)>) -> (String, Vec<CertificateDer<'static>>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        (ca.pem(), vec![leaf.der().clone()])
    }

    #[tokio::test]
    async fn a_connections_certificate_is_checked_again_when_the_ca_changes_or_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        let (ca1, alice) = ca_and_client(None);
        let (ca2, _) = ca_and_client(None);
        std::fs::write(&ca_file, &ca1).unwrap();
        let verifier = ReloadingClientVerifier::watch(
            ca_file.clone(),
            false,
            Duration::from_millis(20),
            ReloadReporter::default(),
        )
        .unwrap();
        let recheck = verifier.recheck();
        let state = recheck.verified_at(recheck.generation(), &alice);
        assert!(recheck.still_valid(&alice, &state));
        // A resumed session's chain is verified at its first check.
        let resumed = recheck.verified_at(ClientCertRecheck::NEVER_VERIFIED, &alice);
        assert!(recheck.still_valid(&alice, &resumed));
        let (_, stranger) = ca_and_client(None);
        let resumed = recheck.verified_at(ClientCertRecheck::NEVER_VERIFIED, &stranger);
        assert!(!recheck.still_valid(&stranger, &resumed));
        // The same CA file again (rewritten, same CA): still valid.
        std::fs::write(&ca_file, format!("{ca1}\n")).unwrap();
        let before = recheck.generation();
        while recheck.generation() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(recheck.still_valid(&alice, &state));
        // The CA rotated out: the open connection's certificate is refused.
        std::fs::write(&ca_file, &ca2).unwrap();
        let before = recheck.generation();
        while recheck.generation() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!recheck.still_valid(&alice, &state));
        // Back again: refused for this connection still (a new one may ask).
        std::fs::write(&ca_file, &ca1).unwrap();
        let before = recheck.generation();
        while recheck.generation() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!recheck.still_valid(&alice, &state));
        // Past its notAfter: refused at once, whatever the CA.
        let (_, expired) = ca_and_client(Some((2020, 1, 1)));
        let state = recheck.verified_at(recheck.generation(), &expired);
        assert!(!recheck.still_valid(&expired, &state));
    }

    #[test]
    fn a_certificate_outside_its_validity_is_named() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["proxy".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        let expired = params.self_signed(&key).unwrap();
        let certified = certified_key(
            expired.pem().as_bytes(),
            "c",
            key.serialize_pem().as_bytes(),
            "k",
        )
        .unwrap();
        let problem = outside_validity(&certified, UnixTime::now()).unwrap();
        assert!(problem.contains("expired"), "{problem}");
        let (cert, key) = pair("proxy");
        let fresh = certified_key(cert.as_bytes(), "c", key.as_bytes(), "k").unwrap();
        assert_eq!(outside_validity(&fresh, UnixTime::now()), None);
    }

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
