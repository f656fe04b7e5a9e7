//! Throwaway certificates for the demo (and for tests that embed it): one CA
//! made on the spot, serving certificates for loopback, client certificates
//! whose CN and O kube maps to user and groups. Keys never leave memory
//! except where the caller writes them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A CA that lives as long as this value.
pub struct ThrowawayCa {
    cert: Certificate,
    key: KeyPair,
}

impl ThrowawayCa {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<ThrowawayCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(ThrowawayCa { cert, key })
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A serving certificate for `localhost`, 127.0.0.1 and ::1.
    pub fn issue_server(&self, common_name: &str) -> Result<IssuedPem, rcgen::Error> {
        self.issue_server_for(common_name, &[])
    }

    /// A serving certificate for `localhost`, 127.0.0.1, ::1 and `more` addresses.
    pub fn issue_server_for(
        &self,
        common_name: &str,
        more: &[IpAddr],
    ) -> Result<IssuedPem, rcgen::Error> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        for ip in more {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: CN is the user, the organization the group.
    pub fn issue_client(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<IssuedPem, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedPem, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
