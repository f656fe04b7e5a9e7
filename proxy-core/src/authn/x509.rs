//! Client certificates, mapped as kube-apiserver maps them: the subject's
//! common name (the last, when there are several) is the user name, each
//! organization a group.
//!
//! The TLS listener has already verified the chain against its client CAs
//! (and expiry) before a [`ClientCertificate`](crate::credential::ClientCertificate)
//! reaches a request; this authenticator only reads the leaf's subject.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Authenticator, AuthnError, AuthnFuture, Identity, Source, UserInfo, Verification};
use crate::credential::Credential;

/// Authenticates verified client certificates: CN → user, O → groups.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCertificates;

impl ClientCertificates {
    /// Maps a DER leaf certificate to a user.
    pub fn user_from_der(der: &[u8]) -> Result<UserInfo, AuthnError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|_| AuthnError::Invalid("client certificate cannot be parsed".into()))?;
        let subject = cert.subject();
        // The last CN, as Go's `pkix.Name` (and so kube-apiserver) keeps it.
        let username = subject
            .iter_common_name()
            .last()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        if username.is_empty() {
            return Err(AuthnError::Invalid(
                "client certificate has no common name".into(),
            ));
        }
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_owned)
            .collect();
        Ok(UserInfo {
            username,
            uid: None,
            groups,
            extra: Default::default(),
        })
    }
}

impl Authenticator for ClientCertificates {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        let result = match credential {
            Credential::ClientCertificate(chain) => match chain.0.first() {
                Some(leaf) => Self::user_from_der(leaf).map(|u| {
                    Some(Identity::verified(
                        u,
                        Verification {
                            source: Source::ClientCertificate,
                            ..Default::default()
                        },
                    ))
                }),
                None => Err(AuthnError::Invalid("empty client certificate chain".into())),
            },
            _ => Ok(None),
        };
        Box::pin(std::future::ready(result))
    }

    fn name(&self) -> &str {
        "x509"
    }
}
