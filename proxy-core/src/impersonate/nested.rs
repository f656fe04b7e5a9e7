//! The caller's own `Impersonate-*` headers (`kubectl --as`, `--as-group`,
//! `--as-uid`): never dropped silently.
//!
//! With [`Mode::Deny`] such a request is refused with a 403 `Status`. With
//! [`Mode::Authorize`] (the default) the proxy checks it as kube-apiserver's
//! impersonation filter does: one access review per requested attribute,
//! asked as the authenticated user (a `SelfSubjectAccessReview` sent with
//! the user's identity headers, so the proxy needs no right beyond the ones it
//! already has), verb `impersonate` on `users` (or
//! `serviceaccounts` in the account's namespace for
//! `system:serviceaccount:<ns>:<name>`), `groups`, `uids` and
//! `userextras/<key>` (the last two in group `authentication.k8s.io`). When
//! every one is allowed, the request goes on as the requested identity, with
//! [`ORIGINAL_USER_EXTRA`] holding who really asked (user name, uid and
//! groups as JSON), so kube's audit log shows both; otherwise kube's own 403
//! wording. Groups, uid or extras without a user are refused with a 400, as
//! kube refuses them.
//!
//! Allowed answers are cached briefly ([`Settings::cache_ttl`]), keyed by
//! the authenticated user and the attribute (no credential is part of a
//! key); refusals are asked again each time, so a new grant works at once.
//!
//! Reviews are bounded, since each is a request to the API server: one
//! request asks for [`MAX_REVIEWS_PER_REQUEST`] attributes at most (more is
//! a 400 before any review), and each authenticated user may make the proxy
//! ask [`Settings::reviews_per_minute`] reviews (more is a 429 with
//! `Retry-After`). Every check is counted ([`crate::counters::ReviewCounters`]).

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use crate::authn::UserInfo;
use crate::status::{Reason, Status};

pub use super::review::{ReviewError, Reviewer};

/// The extra key that carries the authenticated user of a request that
/// impersonates someone else.
pub const ORIGINAL_USER_EXTRA: &str = "authproxy.io/original-user";
/// Default for [`Settings::cache_ttl`].
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);
/// Default for [`Settings::cache_size`].
pub const DEFAULT_CACHE_SIZE: u64 = 10_000;
/// Most attributes one request may ask for, the user, the uid, groups and
/// extra values together: each costs an access review (unless cached), so
/// this is the most reviews one request can cause. kube-apiserver sets no
/// count of its own (only its 1 MiB header limit, room for thousands);
/// `kubectl --as` asks for a user and a few groups. More is a 400 before
/// any review.
pub const MAX_REVIEWS_PER_REQUEST: usize = 16;
/// Default for [`Settings::reviews_per_minute`].
pub const DEFAULT_REVIEWS_PER_MINUTE: u32 = 300;

/// What to do with a caller's `Impersonate-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Check each requested attribute with a `SubjectAccessReview`, as
    /// kube-apiserver does, and impersonate the requested identity if all
    /// are allowed.
    #[default]
    Authorize,
    /// Refuse every request that carries them (403).
    Deny,
}

/// The `callerImpersonation:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// `authorize` (default) or `deny`.
    #[serde(default)]
    pub mode: Mode,
    /// How long an answer of the API server is reused (default 10s; `0s`:
    /// never cached).
    #[serde(default, rename = "cacheTTL", with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Most answers cached (default 10,000).
    pub cache_size: Option<u64>,
    /// Reviews one user may make the proxy ask of the API server per minute
    /// (default 300; `0`: no limit).
    pub reviews_per_minute: Option<u32>,
}

impl Config {
    /// The settings with defaults filled in.
    pub fn settings(&self) -> Settings {
        Settings {
            mode: self.mode,
            cache_ttl: self.cache_ttl.unwrap_or(DEFAULT_CACHE_TTL),
            cache_size: self.cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
            reviews_per_minute: self
                .reviews_per_minute
                .unwrap_or(DEFAULT_REVIEWS_PER_MINUTE),
        }
    }
}

/// [`Config`] with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// What to do.
    pub mode: Mode,
    /// How long an answer is reused.
    pub cache_ttl: Duration,
    /// Most answers cached.
    pub cache_size: u64,
    /// Reviews (not answered from the cache) one authenticated user may make
    /// the proxy ask per minute, in bursts of as many; beyond them a 429.
    /// `0`: no limit.
    pub reviews_per_minute: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Config::default().settings()
    }
}

/// The identity a caller asked for with `Impersonate-*` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    /// `Impersonate-User`.
    pub user: Option<String>,
    /// Each `Impersonate-Group`.
    pub groups: Vec<String>,
    /// `Impersonate-Uid`.
    pub uid: Option<String>,
    /// Each `Impersonate-Extra-<key>` (key percent-decoded, lower case).
    pub extra: BTreeMap<String, Vec<String>>,
}

fn bad_request(message: impl Into<String>) -> Status {
    Status::failure(StatusCode::BAD_REQUEST, Reason::BadRequest, message)
}

fn text<'a>(name: &str, value: &'a http::HeaderValue) -> Result<&'a str, Status> {
    value
        .to_str()
        .map_err(|_| bad_request(format!("header {name} is not valid text")))
}

/// Reads the caller's `Impersonate-*` headers (`None` when there are none),
/// refusing what kube-apiserver refuses: groups, uid or extras without a
/// user, an extra key that does not decode.
pub fn requested(headers: &HeaderMap) -> Result<Option<Requested>, Status> {
    let mut found = false;
    let mut requested = Requested::default();
    for (name, value) in headers {
        let name = name.as_str();
        let Some(rest) = name.strip_prefix("impersonate-") else {
            continue;
        };
        found = true;
        match rest {
            // kube takes the first value of these two.
            "user" => {
                if requested.user.is_none() {
                    requested.user = Some(text(name, value)?.to_owned());
                }
            }
            "uid" => {
                if requested.uid.is_none() {
                    requested.uid = Some(text(name, value)?.to_owned());
                }
            }
            "group" => requested.groups.push(text(name, value)?.to_owned()),
            _ => {
                let Some(key) = rest.strip_prefix("extra-") else {
                    return Err(bad_request(format!("unknown impersonation header {name}")));
                };
                let key = percent_encoding::percent_decode_str(key)
                    .decode_utf8()
                    .map_err(|_| bad_request(format!("header {name}: the key does not decode")))?
                    .to_lowercase();
                requested
                    .extra
                    .entry(key)
                    .or_default()
                    .push(text(name, value)?.to_owned());
            }
        }
    }
    if !found {
        return Ok(None);
    }
    let user = requested.user.as_deref().unwrap_or_default();
    if user.is_empty() {
        let mut asked = Vec::new();
        if !requested.groups.is_empty() {
            asked.push("groups");
        }
        if requested.uid.is_some() {
            asked.push("a uid");
        }
        if !requested.extra.is_empty() {
            asked.push("extra values");
        }
        if asked.is_empty() {
            asked.push("an empty user");
        }
        return Err(bad_request(format!(
            "requested {} without impersonating a user",
            asked.join(", ")
        )));
    }
    let count = 1
        + usize::from(requested.uid.is_some())
        + requested.groups.len()
        + requested.extra.values().map(Vec::len).sum::<usize>();
    if count > MAX_REVIEWS_PER_REQUEST {
        return Err(bad_request(format!(
            "this request asks to impersonate {count} attributes (the user, the uid, groups and extra \
             values together); at most {MAX_REVIEWS_PER_REQUEST} are checked per request"
        )));
    }
    Ok(Some(requested))
}

/// One thing to be allowed: verb `impersonate` on a resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Attributes {
    /// API group (`""` or `authentication.k8s.io`).
    pub group: &'static str,
    /// `users`, `serviceaccounts`, `groups`, `uids` or `userextras`.
    pub resource: &'static str,
    /// The extra key, for `userextras`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// The service account's namespace, for `serviceaccounts`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The name asked for.
    pub name: String,
}

impl Attributes {
    fn new(group: &'static str, resource: &'static str, name: &str) -> Self {
        Attributes {
            group,
            resource,
            subresource: String::new(),
            namespace: String::new(),
            name: name.to_owned(),
        }
    }

    /// kube's 403 message for a refused impersonation by `user`.
    pub(crate) fn forbidden(&self, user: &str) -> String {
        let resource = if self.subresource.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let qualified = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{qualified} \"{}\" is forbidden: User \"{user}\" cannot impersonate resource \"{resource}\" in API group \"{}\" {scope}",
            self.name, self.group
        )
    }
}

/// Everything `requested` needs allowed, in kube's order: the user (or
/// service account), each group, each extra value, the uid.
pub fn attributes(requested: &Requested) -> Vec<Attributes> {
    let mut all = Vec::new();
    if let Some(user) = &requested.user {
        let account = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'));
        all.push(match account {
            Some((namespace, name)) => Attributes {
                namespace: namespace.to_owned(),
                ..Attributes::new("", "serviceaccounts", name)
            },
            None => Attributes::new("", "users", user),
        });
    }
    for group in &requested.groups {
        all.push(Attributes::new("", "groups", group));
    }
    for (key, values) in &requested.extra {
        for value in values {
            all.push(Attributes {
                subresource: key.clone(),
                ..Attributes::new("authentication.k8s.io", "userextras", value)
            });
        }
    }
    if let Some(uid) = &requested.uid {
        all.push(Attributes::new("authentication.k8s.io", "uids", uid));
    }
    all
}

/// The identity a request goes on as when `requested` is allowed for
/// `original`: the requested one, plus [`ORIGINAL_USER_EXTRA`].
pub fn impersonated(original: &UserInfo, requested: &Requested) -> UserInfo {
    #[derive(Serialize)]
    struct Original<'a> {
        username: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<&'a str>,
        groups: &'a [String],
    }
    let mut extra = requested.extra.clone();
    // Serializing strings cannot fail.
    let who = serde_json::to_string(&Original {
        username: &original.username,
        uid: original.uid.as_deref(),
        groups: &original.groups,
    })
    .unwrap_or_default();
    extra.insert(ORIGINAL_USER_EXTRA.to_owned(), vec![who]);
    UserInfo {
        username: requested.user.clone().unwrap_or_default(),
        uid: requested.uid.clone(),
        groups: requested.groups.clone(),
        extra,
    }
}

/// The message of the 403 in [`Mode::Deny`].
pub const DENIED_MESSAGE: &str =
    "impersonation through this proxy is not allowed: remove --as, --as-group and --as-uid (Impersonate-* headers)";

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn no_impersonation_headers_is_none() {
        assert_eq!(requested(&headers(&[("accept", "*/*")])).unwrap(), None);
    }

    #[test]
    fn headers_are_read_as_kube_reads_them() {
        let r = requested(&headers(&[
            ("Impersonate-User", "bob"),
            ("Impersonate-User", "ignored"),
            ("impersonate-group", "devs"),
            ("IMPERSONATE-GROUP", "ops"),
            ("Impersonate-Uid", "42"),
            ("Impersonate-Extra-Example.com%2FScopes", "view"),
            ("Impersonate-Extra-example.com%2fscopes", "edit"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(r.groups, ["devs", "ops"]);
        assert_eq!(r.uid.as_deref(), Some("42"));
        assert_eq!(r.extra["example.com/scopes"], ["view", "edit"]);
    }

    #[test]
    fn anything_without_a_user_is_a_bad_request() {
        for pairs in [
            &[("Impersonate-Group", "devs")][..],
            &[("Impersonate-Uid", "1")][..],
            &[("Impersonate-Extra-scopes", "x")][..],
            &[("Impersonate-User", "")][..],
        ] {
            let status = requested(&headers(pairs)).unwrap_err();
            assert_eq!(status.code, 400, "{pairs:?}");
            assert!(
                status.message.contains("without impersonating a user"),
                "{}",
                status.message
            );
        }
        let status = requested(&headers(&[("Impersonate-Whatever", "x")])).unwrap_err();
        assert_eq!(status.code, 400);
    }

    #[test]
    fn too_many_attributes_are_refused_before_any_review() {
        let mut pairs = vec![("Impersonate-User", "bob".to_string())];
        pairs.push(("Impersonate-Uid", "7".to_string()));
        // The user and the uid, then groups and extra values up to the bound.
        for i in 0..MAX_REVIEWS_PER_REQUEST - 3 {
            pairs.push(("Impersonate-Group", format!("g{i}")));
        }
        pairs.push(("Impersonate-Extra-Scopes", "view".to_string()));
        let read = |pairs: &[(&str, String)]| {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            requested(&headers(&pairs))
        };
        let at_bound = read(&pairs).unwrap().unwrap();
        assert_eq!(attributes(&at_bound).len(), MAX_REVIEWS_PER_REQUEST);
        pairs.push(("Impersonate-Extra-Scopes", "edit".to_string()));
        let status = read(&pairs).unwrap_err();
        assert_eq!(status.code, 400);
        assert!(
            status.message.contains("17 attributes") && status.message.contains("at most 16"),
            "{}",
            status.message
        );
    }

    #[test]
    fn attributes_follow_kube_and_service_accounts_are_namespaced() {
        let r = Requested {
            user: Some("system:serviceaccount:default:nobody".into()),
            groups: vec!["devs".into()],
            uid: Some("7".into()),
            extra: [("scopes".to_string(), vec!["view".to_string()])].into(),
        };
        let all = attributes(&r);
        assert_eq!(
            all[0],
            Attributes {
                namespace: "default".into(),
                ..Attributes::new("", "serviceaccounts", "nobody")
            }
        );
        assert_eq!(all[1], Attributes::new("", "groups", "devs"));
        assert_eq!(
            all[2],
            Attributes {
                subresource: "scopes".into(),
                ..Attributes::new("authentication.k8s.io", "userextras", "view")
            }
        );
        assert_eq!(
            all[3],
            Attributes::new("authentication.k8s.io", "uids", "7")
        );
        // Not a service account name: a plain user.
        for user in [
            "system:serviceaccount:default",
            "system:serviceaccount::x",
            "bob",
        ] {
            let r = Requested {
                user: Some(user.into()),
                ..Requested::default()
            };
            assert_eq!(attributes(&r)[0].resource, "users", "{user}");
        }
    }

    #[test]
    fn forbidden_messages_have_kube_wording() {
        assert_eq!(
            Attributes::new("", "users", "bob").forbidden("alice"),
            "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let sa = Attributes {
            namespace: "default".into(),
            ..Attributes::new("", "serviceaccounts", "nobody")
        };
        assert_eq!(
            sa.forbidden("alice"),
            "serviceaccounts \"nobody\" is forbidden: User \"alice\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"default\""
        );
        let extra = Attributes {
            subresource: "scopes".into(),
            ..Attributes::new("authentication.k8s.io", "userextras", "view")
        };
        assert_eq!(
            extra.forbidden("alice"),
            "userextras.authentication.k8s.io \"view\" is forbidden: User \"alice\" cannot impersonate resource \"userextras/scopes\" in API group \"authentication.k8s.io\" at the cluster scope"
        );
    }

    #[test]
    fn the_original_user_goes_along_and_cannot_be_forged() {
        let alice = UserInfo {
            username: "alice".into(),
            uid: Some("1001".into()),
            groups: vec!["devs".into()],
            extra: BTreeMap::new(),
        };
        let r = Requested {
            user: Some("bob".into()),
            extra: [(ORIGINAL_USER_EXTRA.to_string(), vec!["forged".to_string()])].into(),
            ..Requested::default()
        };
        let user = impersonated(&alice, &r);
        assert_eq!(user.username, "bob");
        assert!(user.groups.is_empty());
        assert_eq!(
            user.extra[ORIGINAL_USER_EXTRA],
            [r#"{"username":"alice","uid":"1001","groups":["devs"]}"#]
        );
    }
}
