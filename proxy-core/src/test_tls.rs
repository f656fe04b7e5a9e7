//! TLS for the unit tests' loopback servers: a fresh CA and a serving
//! certificate it signed.

use std::sync::Arc;

/// A server configuration for `name`, offering `alpn` (in order), and the
/// PEM of the CA that signed its certificate.
pub(crate) fn server(name: &str, alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (Arc::new(config), ca.pem())
}

/// A TLS server on loopback for `name` offering `alpn`: its listener (bound
/// to a free port), the acceptor for its connections, its address and the
/// PEM of its CA.
pub(crate) struct Loopback {
    pub listener: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub addr: std::net::SocketAddr,
    pub ca_pem: String,
}

/// Binds a [`Loopback`] server on 127.0.0.1.
pub(crate) async fn loopback(name: &str, alpn: &[&[u8]]) -> Loopback {
    let (tls, ca_pem) = server(name, alpn);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    Loopback {
        addr: listener.local_addr().unwrap(),
        listener,
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        ca_pem,
    }
}
