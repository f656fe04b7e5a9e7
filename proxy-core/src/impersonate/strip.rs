//! Finding and removing what the caller sent as identity.
//!
//! A header name is read with every `_` as `-` (in any letter case): some
//! servers and proxies fold the two into one (CGI-style environments, WSGI
//! and Rack servers, nginx with `underscores_in_headers`), so that a
//! caller's `Impersonate_User` or `X-Remote_User` would reach them as
//! `Impersonate-User` or `X-Remote-User`. Every header that names an
//! identity, credential or hop-by-hop header read this way is removed, and
//! so is every header that a name listed in `Connection` names read this way.

use std::borrow::Cow;

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use super::{IMPERSONATE_PREFIX, REMOTE_PREFIX};

/// Hop-by-hop headers, always removed (RFC 9110 §7.6.1; HTTP/2 forbids them).
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where the request came from, as kube-apiserver reads it (`sourceIPs`):
/// the proxy sets these itself ([`crate::forwarded`]), so a spelling with
/// `_` of either is removed.
const ORIGIN: [&str; 2] = ["x-forwarded-for", "x-real-ip"];

/// `name` in lower case with every `_` read as `-`; borrowed when it is so
/// already (header names are kept in lower case).
pub(crate) fn dashed(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
        Cow::Owned(
            name.bytes()
                .map(|b| match b {
                    b'_' => '-',
                    b => char::from(b.to_ascii_lowercase()),
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether header names `a` and `b` are the same in any letter case, with
/// `_` read as `-`.
fn same_name(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// True when the request asks for a protocol upgrade (`Connection: upgrade`
/// together with an `Upgrade` header), as kubectl exec/attach/port-forward do.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether a header of this name (lower case, `_` read as `-`) is one the
/// caller may never send on: a credential, an identity (`Impersonate-*`,
/// `X-Remote-*`), a hop-by-hop header or `Host`.
fn is_callers_identity(dashed: &str) -> bool {
    dashed.starts_with(IMPERSONATE_PREFIX)
        || dashed.starts_with(REMOTE_PREFIX)
        || HOP_BY_HOP.iter().any(|hop| hop.as_str() == dashed)
        || dashed == header::AUTHORIZATION.as_str()
        || dashed == header::PROXY_AUTHORIZATION.as_str()
        || dashed == header::HOST.as_str()
}

/// Removes every credential, impersonation, front-proxy identity
/// (`X-Remote-*`) and hop-by-hop header the caller sent, in any letter case
/// and with `_` for `-`. An upgrade request keeps `Connection: upgrade` and
/// its `Upgrade`.
pub fn strip_caller_identity(headers: &mut HeaderMap) {
    let upgrade = if is_upgrade(headers) {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    // Headers the caller declared hop-by-hop in `Connection`.
    let listed: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    // One pass over the names present: most requests carry a handful of
    // headers, and removing an absent name still costs a hash and a probe.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let text = name.as_str();
        let underscored = text.contains('_');
        let read = if underscored {
            dashed(text)
        } else {
            Cow::Borrowed(text)
        };
        if is_callers_identity(&read)
            || (underscored && ORIGIN.contains(&&*read))
            || listed.iter().any(|l| same_name(l, &read))
        {
            doomed.push(name.clone());
        }
    }
    drop(listed);
    for name in doomed {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_names(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("smuggled"),
            );
        }
        h
    }

    /// Every identity, credential, origin and hop-by-hop header spelt with
    /// `_` for `-` is removed; names that only look alike stay.
    #[test]
    fn underscore_spellings_of_identity_headers_are_removed() {
        let mut h = with_names(&[
            "Impersonate_User",
            "impersonate_group",
            "IMPERSONATE_UID",
            "Impersonate_Extra_Scopes",
            "impersonate-extra_acme.com%2fproject",
            "X-Remote_User",
            "x_remote_group",
            "X_REMOTE-UID",
            "X_Remote_Extra_Scopes",
            "Proxy_Authorization",
            "Keep_Alive",
            "Proxy_Connection",
            "Transfer_Encoding",
            "X_Real_Ip",
            "X_Forwarded_For",
        ]);
        h.insert("x_remote", HeaderValue::from_static("kept"));
        h.insert("impersonate", HeaderValue::from_static("kept"));
        h.insert("x-request_id", HeaderValue::from_static("kept"));
        strip_caller_identity(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(h.values().all(|v| v == "kept"), "{left:?}");
    }

    /// A header named in `Connection` goes whichever of `_` and `-` either
    /// spelling uses.
    #[test]
    fn connection_listed_headers_go_in_either_spelling() {
        let mut h = with_names(&["x_secret_hop", "x-other-hop", "x-kept"]);
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Secret-Hop, X_Other_Hop"),
        );
        strip_caller_identity(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn dashed_reads_underscores_as_dashes_in_lower_case() {
        assert_eq!(dashed("Impersonate_User"), "impersonate-user");
        assert!(matches!(dashed("impersonate-user"), Cow::Borrowed(_)));
    }

    proptest! {
        /// However `-` and `_` are mixed, and letters cased, no identity
        /// header survives.
        #[test]
        fn no_identity_header_survives_any_separator(
            family in prop::sample::select(vec![
                "impersonate-user", "impersonate-group", "impersonate-uid",
                "impersonate-extra-scopes", "x-remote-user", "x-remote-group",
                "x-remote-uid", "x-remote-extra-scopes", "proxy-authorization",
            ]),
            underscores in prop::collection::vec(any::<bool>(), 32),
            upper in prop::collection::vec(any::<bool>(), 32),
        ) {
            let name: String = family
                .chars()
                .zip(underscores.iter().zip(&upper))
                .map(|(c, (&u, &up))| match c {
                    '-' if u => '_',
                    c if up => c.to_ascii_uppercase(),
                    c => c,
                })
                .collect();
            let mut h = with_names(&[&name]);
            strip_caller_identity(&mut h);
            prop_assert!(h.is_empty(), "{} survived", name);
        }
    }
}
