//! What the caller presented: a Bearer token, Basic username/password, or a
//! TLS client certificate. Parsing only; nothing here decides who the caller is.
//!
//! Parsing follows kube-apiserver: the `Authorization` scheme is matched
//! without regard to case, a Bearer token must be a single non-empty word, and
//! Basic credentials are base64 of `user:password`. A header that cannot be
//! parsed is an error (the caller gets 401), never a panic. Secrets are wrapped
//! in [`Secret`], whose `Debug` output is redacted.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use http::{header, HeaderMap};
use rustls_pki_types::CertificateDer;

/// A secret string (token or password). Its `Debug` form never shows the
/// value, and the value is zeroed in memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    /// Zeroes the value in memory, so a freed token or password does not
    /// linger in the heap.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The verified certificate chain of a TLS client, leaf first.
///
/// A TLS listener that verified the client against its trusted CAs puts this
/// into the request's extensions; [`Credential::from_parts`] picks it up.
#[derive(Clone, Debug)]
pub struct ClientCertificate(pub Arc<[CertificateDer<'static>]>);

/// The caller's network address; a listener puts it into the request
/// extensions so that login throttling can count per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

/// A credential presented by the caller.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The username, as sent.
        username: String,
        /// The password, as sent (possibly empty: authenticators must refuse that).
        password: Secret,
        /// The caller's address, when the listener knows it.
        client: Option<std::net::IpAddr>,
    },
    /// A client certificate verified by the TLS listener.
    ClientCertificate(ClientCertificate),
}

/// Why an `Authorization` header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    Repeated,
    /// The header holds bytes that are not visible ASCII.
    #[error("Authorization header is not visible ASCII")]
    NotAscii,
    /// `Bearer` without a token, or with more than one word.
    #[error("malformed Bearer token")]
    MalformedBearer,
    /// `Basic` whose value is not base64 of `user:password` in UTF-8.
    #[error("malformed Basic credentials")]
    MalformedBasic,
}

impl Credential {
    /// Reads the credential from a request's headers and extensions.
    ///
    /// Returns `Ok(None)` when there is no credential, or an `Authorization`
    /// scheme this proxy does not know (as kube-apiserver, it is then nobody's).
    /// The `Authorization` header wins over a client certificate.
    pub fn from_parts(
        headers: &HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Option<Credential>, CredentialError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => Err(CredentialError::Repeated),
            (Some(value), None) => {
                let value = value.to_str().map_err(|_| CredentialError::NotAscii)?;
                let mut credential = Self::from_authorization(value)?;
                if let Some(Credential::Basic { client, .. }) = credential.as_mut() {
                    *client = extensions.get::<ClientAddr>().map(|a| a.0);
                }
                Ok(credential)
            }
            (None, _) => Ok(extensions
                .get::<ClientCertificate>()
                .cloned()
                .map(Credential::ClientCertificate)),
        }
    }

    /// Parses the value of an `Authorization` header.
    pub fn from_authorization(value: &str) -> Result<Option<Credential>, CredentialError> {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let (scheme, rest) = match value.split_once([' ', '\t']) {
            Some((scheme, rest)) => (scheme, rest.trim_start_matches([' ', '\t'])),
            None => (value, ""),
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            // memchr: an ID token is about a kilobyte, and a `[char]` pattern
            // decodes it character by character.
            if rest.is_empty() || memchr::memchr2(b' ', b'\t', rest.as_bytes()).is_some() {
                return Err(CredentialError::MalformedBearer);
            }
            Ok(Some(Credential::Bearer(Secret::new(rest))))
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| CredentialError::MalformedBasic)?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| CredentialError::MalformedBasic)?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or(CredentialError::MalformedBasic)?;
            Ok(Some(Credential::Basic {
                username: username.to_owned(),
                password: Secret::new(password),
                client: None,
            }))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn parse(value: &str) -> Result<Option<Credential>, CredentialError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        Credential::from_parts(&headers, &http::Extensions::new())
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "] {
            match parse(v).unwrap() {
                Some(Credential::Bearer(t)) => assert_eq!(t.expose(), "abc"),
                other => panic!("{v:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn empty_or_split_bearer_is_malformed() {
        assert_eq!(
            parse("Bearer").unwrap_err(),
            CredentialError::MalformedBearer
        );
        assert_eq!(
            parse("Bearer a b").unwrap_err(),
            CredentialError::MalformedBearer
        );
        // A tab inside, and a space deep in a token of ID-token length.
        assert_eq!(
            parse("Bearer a\tb").unwrap_err(),
            CredentialError::MalformedBearer
        );
        let long = format!("Bearer {} {}", "x".repeat(900), "y".repeat(40));
        assert_eq!(parse(&long).unwrap_err(), CredentialError::MalformedBearer);
    }

    #[test]
    fn basic_splits_at_first_colon() {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("al:ice:pa:ss")
        );
        match parse(&v).unwrap() {
            Some(Credential::Basic {
                username, password, ..
            }) => {
                assert_eq!(username, "al");
                assert_eq!(password.expose(), "ice:pa:ss");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_basic_is_malformed() {
        assert_eq!(
            parse("Basic !!!").unwrap_err(),
            CredentialError::MalformedBasic
        );
        let no_colon = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice")
        );
        assert_eq!(
            parse(&no_colon).unwrap_err(),
            CredentialError::MalformedBasic
        );
    }

    #[test]
    fn unknown_scheme_is_nobodys() {
        assert!(parse("Negotiate xyz").unwrap().is_none());
    }

    #[test]
    fn repeated_authorization_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(
            Credential::from_parts(&headers, &http::Extensions::new()).unwrap_err(),
            CredentialError::Repeated
        );
    }

    #[test]
    fn non_ascii_header_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert_eq!(
            Credential::from_parts(&headers, &http::Extensions::new()).unwrap_err(),
            CredentialError::NotAscii
        );
    }

    #[test]
    fn client_certificate_used_without_authorization() {
        let mut ext = http::Extensions::new();
        ext.insert(ClientCertificate(Arc::from(vec![CertificateDer::from(
            vec![1u8, 2, 3],
        )])));
        assert!(matches!(
            Credential::from_parts(&HeaderMap::new(), &ext).unwrap(),
            Some(Credential::ClientCertificate(_))
        ));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = parse("Bearer topsecret").unwrap().unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut headers = HeaderMap::new();
                headers.insert(header::AUTHORIZATION, value);
                let _ = Credential::from_parts(&headers, &http::Extensions::new());
            }
        }

        #[test]
        fn bearer_round_trips(token in "[A-Za-z0-9._~+/=-]{1,100}") {
            match parse(&format!("Bearer {token}")).unwrap() {
                Some(Credential::Bearer(t)) => prop_assert_eq!(t.expose(), token.as_str()),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
