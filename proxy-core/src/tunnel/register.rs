//! Reading an agent's registration request: the bytes an agent sends
//! before anything about it is known, so nothing here trusts them.
//!
//! A registration is an HTTP/1.1 `Upgrade: authproxy-tunnel/1` request with
//! the cluster's token as `Authorization: Bearer <token>` and, optionally,
//! the cluster the agent believes it serves in [`super::CLUSTER_HEADER`].
//! [`read`] says what the head holds; the endpoint decides.

use http::{header, HeaderMap, Version};

use super::{CLUSTER_HEADER, UPGRADE_PROTOCOL};

/// The cluster an agent names in [`super::CLUSTER_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// No header (or one that is not text).
    None,
    /// A valid cluster name.
    Cluster(&'a str),
    /// A value that cannot be a cluster name (never logged as sent).
    Invalid,
}

impl Claim<'_> {
    /// How the claim is logged: the name, `-`, or `<not a cluster name>`.
    pub fn for_log(&self) -> &str {
        match self {
            Claim::None => "-",
            Claim::Cluster(name) => name,
            Claim::Invalid => "<not a cluster name>",
        }
    }
}

/// What a registration request's head holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationRequest<'a> {
    /// The bearer token, trimmed; `None` when missing, empty or not text.
    pub token: Option<&'a str>,
    /// The cluster the agent names.
    pub claim: Claim<'a>,
}

/// The request is not an HTTP/1.1 upgrade to [`UPGRADE_PROTOCOL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnUpgrade;

/// Reads a registration request's head (its HTTP `version` and `headers`):
/// the token and the claimed cluster, or [`NotAnUpgrade`] (with the claim,
/// for the refusal's log line). Never panics, whatever the bytes.
pub fn read(
    version: Version,
    headers: &HeaderMap,
) -> Result<RegistrationRequest<'_>, (NotAnUpgrade, Claim<'_>)> {
    let claim = match headers.get(CLUSTER_HEADER).map(|v| v.to_str()) {
        None | Some(Err(_)) => Claim::None,
        Some(Ok(name)) => match crate::upstream::router::validate_name(name) {
            Ok(()) => Claim::Cluster(name),
            Err(_) => Claim::Invalid,
        },
    };
    let upgrade = version == Version::HTTP_11
        && crate::impersonate::is_upgrade(headers)
        && headers.get(header::UPGRADE).is_some_and(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes())
        });
    if !upgrade {
        return Err((NotAnUpgrade, claim));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    Ok(RegistrationRequest { token, claim })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_registration_gives_its_token_and_claim() {
        let headers = head(&[
            ("connection", "Upgrade"),
            ("upgrade", "AUTHPROXY-TUNNEL/1"),
            ("authorization", "Bearer  abc "),
            (CLUSTER_HEADER, "edge"),
        ]);
        assert_eq!(
            read(Version::HTTP_11, &headers),
            Ok(RegistrationRequest {
                token: Some("abc"),
                claim: Claim::Cluster("edge")
            })
        );
        assert_eq!(
            read(Version::HTTP_2, &headers).unwrap_err().1,
            Claim::Cluster("edge")
        );
        let headers = head(&[
            ("connection", "Upgrade"),
            ("upgrade", "authproxy-tunnel/1"),
            ("authorization", "Basic abc"),
            (CLUSTER_HEADER, "Not_A_Name"),
        ]);
        let read = read(Version::HTTP_11, &headers).unwrap();
        assert_eq!((read.token, read.claim), (None, Claim::Invalid));
        assert_eq!(read.claim.for_log(), "<not a cluster name>");
    }
}
