//! Impersonation by Kubernetes rules: what the caller sent as identity is
//! removed, and the authenticated identity is set as `Impersonate-*` headers.
//!
//! Removed from every request: `Authorization`, `Proxy-Authorization`, every
//! `Impersonate-*` header in any letter case, every `X-Remote-*` header (the
//! front-proxy identity headers of kube's `--requestheader-*` flags:
//! `X-Remote-User`, `X-Remote-Group`, `X-Remote-Uid`, `X-Remote-Extra-<key>`,
//! which an API server trusting the proxy's client certificate would take as
//! the caller's identity), `Host` (the upstream's is set by
//! the client), the hop-by-hop headers of RFC 9110 §7.6.1 and every header the
//! `Connection` header names. Names are read with `_` as `-`, so
//! `Impersonate_User` goes too (see [`strip_caller_identity`]). An upgrade (`Connection: upgrade` with
//! `Upgrade`) keeps exactly those two so the tunnel can be set up.
//!
//! Set: `Impersonate-User`, one `Impersonate-Group` per group,
//! `Impersonate-Uid` when known, and one `Impersonate-Extra-<key>` per value,
//! the key percent-encoded the way client-go encodes it and kube-apiserver
//! decodes it (bytes outside the header-token alphabet, and `%`, become `%XX`).
//! A value a header cannot carry unchanged (control characters, CR/LF,
//! surrounding blanks, an empty user name) is refused, never forwarded.

pub mod nested;
pub mod review;
mod strip;

pub(crate) use strip::dashed;
#[cfg(feature = "tunnel")]
pub(crate) use strip::HOP_BY_HOP;
pub use strip::{is_upgrade, strip_caller_identity};

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use crate::user::UserInfo;

const IMPERSONATE_PREFIX: &str = "impersonate-";
const EXTRA_PREFIX: &str = "impersonate-extra-";
/// Prefix of the front-proxy identity headers kube's `--requestheader-*`
/// flags are commonly set to (`X-Remote-User`, `X-Remote-Group`,
/// `X-Remote-Uid`, `X-Remote-Extra-`).
const REMOTE_PREFIX: &str = "x-remote-";

/// An identity value that cannot be sent as an `Impersonate-*` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity field {field} cannot be impersonated: {reason}")]
pub struct InvalidIdentity {
    /// Which field (`username`, `groups`, `uid`, `extra.<key>`).
    pub field: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The `Impersonate-*` headers for one user, built once and reused.
#[derive(Debug, Clone)]
pub struct ImpersonationHeaders {
    entries: Vec<(HeaderName, HeaderValue)>,
}

fn value(
    field: impl Into<String>,
    text: &str,
    allow_empty: bool,
) -> Result<HeaderValue, InvalidIdentity> {
    let fail = |reason| InvalidIdentity {
        field: field.into(),
        reason,
    };
    if text.is_empty() && !allow_empty {
        return Err(fail("empty"));
    }
    if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(fail(
            "contains a control character (CR, LF, NUL, tab or similar)",
        ));
    }
    if text.starts_with(' ') || text.ends_with(' ') {
        return Err(fail("starts or ends with a space, which HTTP would strip"));
    }
    HeaderValue::from_bytes(text.as_bytes()).map_err(|_| fail("not a valid header value"))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b)
}

/// Encodes an extra key as client-go does for `Impersonate-Extra-<key>`.
pub fn encode_extra_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        let b = b.to_ascii_lowercase();
        if is_token_byte(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The header names an identity is sent in: kube's `Impersonate-*`, or the
/// front-proxy (request-header) names of kube's `--requestheader-*` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    /// The user name (`Impersonate-User`, `X-Remote-User`).
    pub user: HeaderName,
    /// Each group (`Impersonate-Group`, `X-Remote-Group`).
    pub group: HeaderName,
    /// The uid (`Impersonate-Uid`, `X-Remote-Uid`).
    pub uid: HeaderName,
    /// Prefix of one header per extra key, lower case
    /// (`impersonate-extra-`, `x-remote-extra-`).
    pub extra_prefix: String,
}

impl HeaderNames {
    /// Whether these are kube's impersonation headers (the identity is then
    /// checked by the API server's impersonation filter).
    pub fn is_impersonation(&self) -> bool {
        self.user.as_str().starts_with(IMPERSONATE_PREFIX)
    }

    /// kube's impersonation headers.
    pub fn impersonation() -> Self {
        HeaderNames {
            user: HeaderName::from_static("impersonate-user"),
            group: HeaderName::from_static("impersonate-group"),
            uid: HeaderName::from_static("impersonate-uid"),
            extra_prefix: EXTRA_PREFIX.to_owned(),
        }
    }

    /// The defaults of kube's `--requestheader-*` flags: `X-Remote-User`,
    /// `X-Remote-Group`, `X-Remote-Uid`, `X-Remote-Extra-`.
    pub fn front_proxy() -> Self {
        HeaderNames {
            user: HeaderName::from_static("x-remote-user"),
            group: HeaderName::from_static("x-remote-group"),
            uid: HeaderName::from_static("x-remote-uid"),
            extra_prefix: "x-remote-extra-".to_owned(),
        }
    }

    /// Removes every header these names cover from `headers` (the caller's
    /// own), in any letter case and with `_` read as `-` on either side.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let (user, group, uid) = (
            dashed(self.user.as_str()),
            dashed(self.group.as_str()),
            dashed(self.uid.as_str()),
        );
        let extra_prefix = dashed(&self.extra_prefix);
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let name = dashed(name.as_str());
                name == user || name == group || name == uid || name.starts_with(&*extra_prefix)
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }
}

impl ImpersonationHeaders {
    /// Builds the headers for `user`, refusing values kube would not receive intact.
    pub fn for_user(user: &UserInfo) -> Result<Self, InvalidIdentity> {
        Self::for_user_with(user, &HeaderNames::impersonation())
    }

    /// Builds the headers for `user` under `names` (the front-proxy names,
    /// say), with the same refusals and the same extra-key encoding: kube
    /// decodes both alike.
    pub fn for_user_with(user: &UserInfo, names: &HeaderNames) -> Result<Self, InvalidIdentity> {
        let mut entries = Vec::with_capacity(2 + user.groups.len() + user.extra.len());
        entries.push((
            names.user.clone(),
            value("username", &user.username, false)?,
        ));
        for g in &user.groups {
            entries.push((names.group.clone(), value("groups", g, false)?));
        }
        if let Some(uid) = user.uid.as_deref().filter(|u| !u.is_empty()) {
            entries.push((names.uid.clone(), value("uid", uid, false)?));
        }
        for (key, values) in &user.extra {
            if key.is_empty() {
                return Err(InvalidIdentity {
                    field: "extra".into(),
                    reason: "empty key",
                });
            }
            let name = HeaderName::from_bytes(
                format!("{}{}", names.extra_prefix, encode_extra_key(key)).as_bytes(),
            )
            .map_err(|_| InvalidIdentity {
                field: format!("extra.{}", key.escape_debug()),
                reason: "key cannot be encoded",
            })?;
            for v in values {
                entries.push((
                    name.clone(),
                    value(format!("extra.{}", key.escape_debug()), v, true)?,
                ));
            }
        }
        Ok(ImpersonationHeaders { entries })
    }

    /// The header pairs, in the order they are set.
    pub fn entries(&self) -> &[(HeaderName, HeaderValue)] {
        &self.entries
    }

    /// Appends the headers to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.entries {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Strips the caller's identity and sets `identity` as impersonation headers.
pub fn rewrite(headers: &mut HeaderMap, identity: &ImpersonationHeaders) {
    strip_caller_identity(headers);
    identity.apply(headers);
}

/// How the identity goes upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ForwardMode {
    /// `Impersonate-*` headers, with the proxy's own credential; the proxy's
    /// identity needs RBAC to impersonate.
    #[default]
    Impersonate,
    /// kube's request-header authentication (`--requestheader-*` flags): the
    /// identity in `X-Remote-*` headers, trusted from the proxy's client
    /// certificate (signed by the API server's `--requestheader-client-ca-file`,
    /// its name in `--requestheader-allowed-names`). No impersonation RBAC;
    /// works for aggregated API servers too.
    FrontProxy,
}

/// Which impersonation rights the proxy's own account holds on the API
/// server: what it may send upstream depends on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProxyRbac {
    /// The `impersonate` verb on users, groups, uids and user extras (and
    /// service accounts): every identity can be sent.
    #[default]
    Legacy,
    /// Only constrained impersonation (kube 1.36 and later, KEP-5284):
    /// `impersonate:user-info` on users, groups, uids and user extras,
    /// `impersonate:serviceaccount`, `impersonate:arbitrary-node`, and
    /// `impersonate-on:<mode>:<verb>` for what is let through. The proxy
    /// cannot impersonate `system:masters`, nor send a service account or
    /// a node with anything but its name.
    Constrained,
}

/// The `identityHeaders:` section: how the identity goes upstream.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwardConfig {
    /// `impersonate` (default) or `frontProxy`.
    #[serde(default)]
    pub mode: ForwardMode,
    /// With `impersonate`: the rights the proxy's account holds,
    /// `legacy` (default) or `constrained`.
    #[serde(default, rename = "rbac")]
    pub rbac: ProxyRbac,
    /// Front-proxy user header (default `X-Remote-User`).
    pub user_header: Option<String>,
    /// Front-proxy group header (default `X-Remote-Group`).
    pub group_header: Option<String>,
    /// Front-proxy uid header (default `X-Remote-Uid`).
    pub uid_header: Option<String>,
    /// Front-proxy extra header prefix (default `X-Remote-Extra-`).
    pub extra_header_prefix: Option<String>,
}

impl ForwardConfig {
    /// The front-proxy header names, defaults filled in; an error names the
    /// field (below `prefix`) of a name that is not a header name or that
    /// collides with kube's `Impersonate-*` or `Authorization`.
    pub fn front_proxy_names(&self, prefix: &str) -> Result<HeaderNames, crate::problem::Problem> {
        let defaults = HeaderNames::front_proxy();
        let name = |field: &str, value: &Option<String>, default: &HeaderName| {
            let Some(text) = value else {
                return Ok(default.clone());
            };
            let problem = |message: &str| crate::problem::Problem {
                field: format!("{prefix}.{field}"),
                message: message.to_owned(),
            };
            let name = HeaderName::from_bytes(text.trim().as_bytes())
                .map_err(|_| problem("not a valid HTTP header name"))?;
            let read = dashed(name.as_str());
            if read.starts_with(IMPERSONATE_PREFIX) || read == header::AUTHORIZATION.as_str() {
                return Err(problem(
                    "must not be an Impersonate-* or the Authorization header",
                ));
            }
            Ok(name)
        };
        let extra_prefix = match &self.extra_header_prefix {
            None => defaults.extra_prefix.clone(),
            Some(text) => {
                let lower = text.trim().to_ascii_lowercase();
                if lower.is_empty()
                    || HeaderName::from_bytes(format!("{lower}x").as_bytes()).is_err()
                    || dashed(&lower).starts_with(IMPERSONATE_PREFIX)
                {
                    return Err(crate::problem::Problem {
                        field: format!("{prefix}.extraHeaderPrefix"),
                        message:
                            "not a valid, non-empty header name prefix (and not Impersonate-*)"
                                .into(),
                    });
                }
                lower
            }
        };
        Ok(HeaderNames {
            user: name("userHeader", &self.user_header, &defaults.user)?,
            group: name("groupHeader", &self.group_header, &defaults.group)?,
            uid: name("uidHeader", &self.uid_header, &defaults.uid)?,
            extra_prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn alice() -> UserInfo {
        let mut extra = BTreeMap::new();
        extra.insert(
            "acme.com/project".to_string(),
            vec!["p1".to_string(), "p2".to_string()],
        );
        extra.insert("scopes".to_string(), vec!["view".to_string()]);
        UserInfo {
            username: "alice".into(),
            uid: Some("1001".into()),
            groups: vec!["devs".into(), "ops".into()],
            extra,
        }
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn headers_follow_kube_rules() {
        let mut h = HeaderMap::new();
        rewrite(&mut h, &ImpersonationHeaders::for_user(&alice()).unwrap());
        assert_eq!(values(&h, "impersonate-user"), ["alice"]);
        assert_eq!(values(&h, "impersonate-group"), ["devs", "ops"]);
        assert_eq!(values(&h, "impersonate-uid"), ["1001"]);
        assert_eq!(
            values(&h, "impersonate-extra-acme.com%2Fproject"),
            ["p1", "p2"]
        );
        assert_eq!(values(&h, "impersonate-extra-scopes"), ["view"]);
    }

    #[test]
    fn extra_keys_are_encoded_like_client_go() {
        assert_eq!(encode_extra_key("acme.com/Project"), "acme.com%2Fproject");
        assert_eq!(encode_extra_key("100%"), "100%25");
        assert_eq!(encode_extra_key("a b"), "a%20b");
        assert_eq!(encode_extra_key("é"), "%C3%A9");
    }

    #[test]
    fn caller_identity_is_removed_in_every_letter_case() {
        let mut h = HeaderMap::new();
        for name in [
            "Authorization",
            "proxy-authorization",
            "Impersonate-User",
            "IMPERSONATE-GROUP",
            "impersonate-uid",
            "Impersonate-Extra-Scopes",
            "iMpErSoNaTe-extra-x",
            "Host",
            "Keep-Alive",
            "TE",
            "Trailer",
            "X-Secret-Hop",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("accept", HeaderValue::from_static("application/json"));
        rewrite(&mut h, &ImpersonationHeaders::for_user(&alice()).unwrap());
        for v in h.values() {
            assert_ne!(v, "evil");
        }
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn front_proxy_identity_headers_are_removed_in_every_letter_case() {
        let mut h = HeaderMap::new();
        for name in [
            "X-Remote-User",
            "x-remote-group",
            "X-REMOTE-UID",
            "X-Remote-Extra-Scopes",
            "x-ReMoTe-extra-acme.com%2fproject",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("system:masters"),
            );
        }
        h.insert("x-remote", HeaderValue::from_static("kept"));
        rewrite(&mut h, &ImpersonationHeaders::for_user(&alice()).unwrap());
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert!(left.iter().all(|n| !n.starts_with("x-remote-")), "{left:?}");
        // Only the `x-remote-` family is identity; a bare `x-remote` is not.
        assert_eq!(h["x-remote"], "kept");
    }

    /// Configured front-proxy names go in either spelling, whichever the
    /// configuration or the caller used.
    #[test]
    fn configured_front_proxy_names_go_with_underscores_too() {
        let config = ForwardConfig {
            mode: ForwardMode::FrontProxy,
            user_header: Some("X-Auth_User".into()),
            group_header: Some("X-Auth-Group".into()),
            uid_header: None,
            extra_header_prefix: Some("X-Auth-Extra-".into()),
            rbac: ProxyRbac::Legacy,
        };
        let names = config.front_proxy_names("identityHeaders").unwrap();
        let mut h = HeaderMap::new();
        for name in [
            "x-auth-user",
            "X_Auth_User",
            "x_auth_group",
            "X-Remote_Uid",
            "x_auth_extra_scopes",
            "x-auth-extra_acme.com%2fproject",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("smuggled"),
            );
        }
        h.insert("x-auth-userx", HeaderValue::from_static("kept"));
        strip_caller_identity(&mut h);
        names.strip(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-auth-userx"]);
    }

    /// A front-proxy name that kube would read as an `Impersonate-*` or the
    /// `Authorization` header, once `_` is read as `-`, is refused.
    #[test]
    fn front_proxy_names_spelling_kubes_own_are_refused() {
        for (user, prefix) in [
            (Some("Impersonate_User"), None),
            (Some("AUTHORIZATION"), None),
            (None, Some("Impersonate_Extra_")),
        ] {
            let config = ForwardConfig {
                mode: ForwardMode::FrontProxy,
                user_header: user.map(str::to_owned),
                extra_header_prefix: prefix.map(str::to_owned),
                ..ForwardConfig::default()
            };
            assert!(
                config.front_proxy_names("identityHeaders").is_err(),
                "{user:?} {prefix:?} accepted"
            );
        }
    }

    #[test]
    fn upgrade_keeps_connection_and_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(is_upgrade(&h));
        strip_caller_identity(&mut h);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "SPDY/3.1");
    }

    #[test]
    fn crlf_and_control_characters_are_refused() {
        for bad in [
            "alice\r\nImpersonate-Group: system:masters",
            "al\nice",
            "nul\0",
            "tab\tbed",
            " alice",
            "",
        ] {
            let u = UserInfo {
                username: bad.into(),
                ..Default::default()
            };
            assert!(
                ImpersonationHeaders::for_user(&u).is_err(),
                "{bad:?} accepted"
            );
        }
        let u = UserInfo {
            username: "a".into(),
            groups: vec!["x\ry".into()],
            ..Default::default()
        };
        assert_eq!(
            ImpersonationHeaders::for_user(&u).unwrap_err().field,
            "groups"
        );
    }

    #[test]
    fn utf8_names_pass_unchanged() {
        let u = UserInfo {
            username: "josé".into(),
            ..Default::default()
        };
        let h = ImpersonationHeaders::for_user(&u).unwrap();
        assert_eq!(h.entries()[0].1.as_bytes(), "josé".as_bytes());
    }

    proptest! {
        #[test]
        fn no_caller_impersonation_header_survives(
            names in proptest::collection::vec("([iI][mM][pP][eE][rR][sS][oO][nN][aA][tT][eE]|[xX]-[rR][eE][mM][oO][tT][eE])-[a-zA-Z%.-]{1,12}", 0..6),
            user in "[a-z]{1,10}",
        ) {
            let mut h = HeaderMap::new();
            for n in &names {
                h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("smuggled"));
            }
            let u = UserInfo { username: user.clone(), ..Default::default() };
            rewrite(&mut h, &ImpersonationHeaders::for_user(&u).unwrap());
            for (name, v) in h.iter() {
                prop_assert_ne!(v, "smuggled", "{} survived", name);
            }
            prop_assert_eq!(h.get_all("impersonate-user").iter().count(), 1);
        }

        #[test]
        fn accepted_values_round_trip(username in "\\PC{1,20}") {
            let u = UserInfo { username: username.clone(), ..Default::default() };
            if let Ok(h) = ImpersonationHeaders::for_user(&u) {
                prop_assert_eq!(h.entries()[0].1.as_bytes(), username.as_bytes());
            }
        }

        #[test]
        fn extra_key_encoding_round_trips(key in "\\PC{1,20}") {
            let encoded = encode_extra_key(&key);
            let name = format!("impersonate-extra-{}", encoded);
            prop_assert!(HeaderName::from_bytes(name.as_bytes()).is_ok());
            let decoded = percent_encoding::percent_decode_str(&encoded).decode_utf8().unwrap();
            prop_assert_eq!(decoded.to_string(), key.to_ascii_lowercase());
        }
    }
}
