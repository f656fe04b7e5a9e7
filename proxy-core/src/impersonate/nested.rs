//! The caller's own `Impersonate-*` headers (`kubectl --as`, `--as-group`,
//! `--as-uid`): never dropped silently.
//!
//! With [`Mode::Deny`] such a request is refused with a 403 `Status`. With
//! [`Mode::Authorize`] (the default) the proxy decides it as kube-apiserver
//! 1.37's impersonation filter does ([`ImpersonationMode`]): the
//! constrained modes of KEP-5284 (`associated-node`, `arbitrary-node`,
//! `serviceaccount`, `user-info`), each where it applies, asking
//! `impersonate-on:<mode>:<verb>` on the request itself and
//! `impersonate:<mode>` on each part of the identity, then the legacy
//! `impersonate` verb; the mode that last let the user impersonate is tried
//! first. Each question is an access review asked as the authenticated user
//! (a `SelfSubjectAccessReview` sent with the user's identity headers, so
//! the proxy needs no right beyond the ones it already has). When a mode
//! allows it, the request goes on as the requested identity with the groups
//! kube would give it, sent as [`impersonated`] says (with
//! [`ORIGINAL_USER_EXTRA`] naming who really asked, except where the API
//! server must read a name alone); otherwise the first refusal, in kube's
//! words. Groups, uid or extras without a user are refused with a 400, as
//! kube refuses them.
//!
//! Allowed answers are cached briefly ([`Settings::cache_ttl`]), keyed by
//! the authenticated user and the question (no credential is part of a
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
use crate::observe::request_info::AuthorizerAttributes;
use crate::status::{Reason, Status};

/// The extra key that carries the authenticated user of a request that
/// impersonates someone else.
pub const ORIGINAL_USER_EXTRA: &str = "authproxy.io/original-user";
/// Default for [`Settings::cache_ttl`].
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(10);
/// Default for [`Settings::cache_size`].
pub const DEFAULT_CACHE_SIZE: u64 = 10_000;
/// Most attributes one request may ask for, the user, the uid, groups and
/// extra values together: each is one access review in each mode tried
/// (unless cached), so one request causes at most a few times this many
/// (kube's constrained mode, its check on the request, a check on all at
/// once, then the legacy verb). kube-apiserver sets no count of its own
/// (only its 1 MiB header limit, room for thousands); `kubectl --as` asks
/// for a user and a few groups. More is a 400 before any review.
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
                // kube lowers the header's name and then unescapes it (the
                // name here is lower case already): `%41` stays `A`, a key
                // constrained impersonation refuses.
                let key = percent_encoding::percent_decode_str(key)
                    .decode_utf8()
                    .map_err(|_| bad_request(format!("header {name}: the key does not decode")))?
                    .into_owned();
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
    let count = attribute_count(&requested);
    if count > MAX_REVIEWS_PER_REQUEST {
        return Err(bad_request(format!(
            "this request asks to impersonate {count} attributes (the user, the uid, groups and extra \
             values together); at most {MAX_REVIEWS_PER_REQUEST} are checked per request"
        )));
    }
    Ok(Some(requested))
}

/// One question for the API server's authorizer: may the user do `verb`
/// on this resource (or, with `resource` empty, on `path`)?
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Attributes {
    /// `impersonate`, `impersonate:<mode>` or `impersonate-on:<mode>:<verb>`.
    pub verb: String,
    /// API group (`""` or `authentication.k8s.io`).
    pub group: String,
    /// API version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `users`, `serviceaccounts`, `nodes`, `groups`, `uids`, `userextras`,
    /// or the request's own resource; empty for a non-resource request.
    pub resource: String,
    /// The extra key, for `userextras`; the request's subresource.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// The namespace (a service account's; the request's).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The name asked for.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The path of a non-resource request.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
}

impl Attributes {
    fn new(verb: &str, group: &str, resource: &str, name: &str) -> Self {
        Attributes {
            verb: verb.to_owned(),
            group: group.to_owned(),
            version: "v1".to_owned(),
            resource: resource.to_owned(),
            name: name.to_owned(),
            ..Attributes::default()
        }
    }

    /// The request itself, asked with `verb` in place of its own.
    fn on_request(verb: String, request: &AuthorizerAttributes) -> Self {
        match &request.object {
            Some(object) => Attributes {
                verb,
                group: object.api_group.clone(),
                version: object.api_version.clone(),
                resource: object.resource.clone(),
                subresource: object.subresource.clone(),
                namespace: object.namespace.clone(),
                name: object.name.clone(),
                path: String::new(),
            },
            None => Attributes {
                verb,
                path: request.path.clone(),
                ..Attributes::default()
            },
        }
    }

    /// kube's 403 message for a refused impersonation by `user`.
    pub(crate) fn forbidden(&self, user: &str) -> String {
        if self.resource.is_empty() {
            return format!(
                "forbidden: User \"{user}\" cannot {} path \"{}\"",
                self.verb, self.path
            );
        }
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let qualified = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        let subject = if self.name.is_empty() {
            qualified
        } else {
            format!("{qualified} \"{}\"", self.name)
        };
        format!(
            "{subject} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            self.verb, self.group
        )
    }
}

/// The ways kube-apiserver (1.36 and later) lets a user impersonate, in the
/// order it tries them: the constrained modes of KEP-5284, then the legacy
/// `impersonate` verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImpersonationMode {
    /// A service account acting as the node its pod runs on.
    AssociatedNode,
    /// Any node (`system:node:<name>`), by name alone.
    ArbitraryNode,
    /// A service account, by name alone.
    ServiceAccount,
    /// Any other user, with groups, uid and extras.
    UserInfo,
    /// The `impersonate` verb on each part of the identity.
    Legacy,
}

impl ImpersonationMode {
    /// Every mode, in the order kube tries them.
    pub const ALL: [ImpersonationMode; 5] = [
        ImpersonationMode::AssociatedNode,
        ImpersonationMode::ArbitraryNode,
        ImpersonationMode::ServiceAccount,
        ImpersonationMode::UserInfo,
        ImpersonationMode::Legacy,
    ];

    /// kube's name of the mode (`user-info`), `legacy` for the last.
    pub fn as_str(self) -> &'static str {
        match self {
            ImpersonationMode::AssociatedNode => "associated-node",
            ImpersonationMode::ArbitraryNode => "arbitrary-node",
            ImpersonationMode::ServiceAccount => "serviceaccount",
            ImpersonationMode::UserInfo => "user-info",
            ImpersonationMode::Legacy => "legacy",
        }
    }

    /// The verb of the checks on the identity's parts.
    fn verb(self) -> String {
        match self {
            ImpersonationMode::Legacy => "impersonate".to_owned(),
            mode => format!("impersonate:{}", mode.as_str()),
        }
    }

    /// Whether the mode can impersonate `requested` for `requestor` at all
    /// (kube's filter, asked before any check).
    pub fn applies(self, requested: &Requested, requestor: &UserInfo) -> bool {
        let user = requested.user.as_deref().unwrap_or_default();
        let only_name = requested.uid.as_deref().unwrap_or_default().is_empty()
            && requested.groups.is_empty()
            && requested.extra.is_empty();
        match self {
            ImpersonationMode::AssociatedNode => {
                only_name
                    && node_name(user).is_some_and(|node| {
                        service_account(&requestor.username).is_some()
                            && requestor
                                .extra
                                .get(NODE_NAME_EXTRA)
                                .is_some_and(|v| v.len() == 1 && v[0] == node)
                    })
            }
            ImpersonationMode::ArbitraryNode => only_name && node_name(user).is_some(),
            ImpersonationMode::ServiceAccount => only_name && service_account(user).is_some(),
            ImpersonationMode::UserInfo => {
                node_name(user).is_none() && service_account(user).is_none()
            }
            ImpersonationMode::Legacy => true,
        }
    }

    /// What this mode asks, in kube's order, for `requested` on `request`:
    /// `impersonate-on:<mode>:<verb>` on the request itself (constrained
    /// modes), then the user name, the uid, the groups and the extras.
    pub fn steps(self, requested: &Requested, request: &AuthorizerAttributes) -> Vec<Step> {
        let constrained = self != ImpersonationMode::Legacy;
        let verb = self.verb();
        let name_group = if constrained {
            "authentication.k8s.io"
        } else {
            ""
        };
        let mut steps = Vec::new();
        if constrained {
            steps.push(Step::Ask(Attributes::on_request(
                format!("impersonate-on:{}:{}", self.as_str(), request.verb),
                request,
            )));
        }
        let user = requested.user.as_deref().unwrap_or_default();
        let mut name = Attributes::new(&verb, name_group, "users", user);
        if let (true, Some(node)) = (constrained, node_name(user)) {
            name.resource = "nodes".into();
            // kube asks about every node at once for a node's own account.
            name.name = if self == ImpersonationMode::AssociatedNode {
                "*".into()
            } else {
                node.to_owned()
            };
        } else if let Some((namespace, account)) = service_account(user) {
            name.resource = "serviceaccounts".into();
            name.namespace = namespace.to_owned();
            name.name = account.to_owned();
        }
        steps.push(Step::Ask(name));
        if let Some(uid) = requested.uid.as_deref().filter(|u| !u.is_empty()) {
            steps.push(Step::Ask(Attributes::new(
                &verb,
                "authentication.k8s.io",
                "uids",
                uid,
            )));
        }
        let groups = &requested.groups;
        if !groups.is_empty() {
            let group = |name: &str| Attributes::new(&verb, name_group, "groups", name);
            if constrained && groups.iter().any(String::is_empty) {
                steps.push(Step::Refuse(
                    group(""),
                    "impersonating the empty string group is not allowed".into(),
                ));
                return steps;
            }
            if constrained && groups.iter().any(|g| g == "system:masters") {
                steps.push(Step::Refuse(
                    group("system:masters"),
                    "impersonating the system:masters group is not allowed".into(),
                ));
                return steps;
            }
            let each = groups.iter().map(|g| group(g)).collect();
            steps.push(if constrained && groups.len() >= MANY_CHECKS {
                Step::AskAll {
                    wildcard: group("*"),
                    each,
                }
            } else {
                Step::Each(each)
            });
        }
        if !requested.extra.is_empty() {
            let extra = |key: &str, value: &str| Attributes {
                subresource: key.to_owned(),
                ..Attributes::new(&verb, "authentication.k8s.io", "userextras", value)
            };
            if constrained {
                if let Some(reason) = invalid_extra(&requested.extra) {
                    steps.push(Step::Refuse(extra("", ""), reason));
                    return steps;
                }
            }
            let each = requested
                .extra
                .iter()
                .flat_map(|(key, values)| values.iter().map(move |v| (key, v)))
                .map(|(key, value)| extra(key, value))
                .collect::<Vec<_>>();
            steps.push(if constrained && each.len() >= MANY_CHECKS {
                Step::AskAll {
                    wildcard: extra("*", "*"),
                    each,
                }
            } else {
                Step::Each(each)
            });
        }
        steps
    }
}

/// How many groups (or extra values) make a constrained mode first ask
/// about all of them at once, as kube does.
const MANY_CHECKS: usize = 4;

/// The extra key kube gives a service account's token bound to a pod: the
/// node the pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// One step of a mode's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Allowed, or the mode fails with this refusal.
    Ask(Attributes),
    /// Each allowed.
    Each(Vec<Attributes>),
    /// `wildcard` allowed, or else each.
    AskAll {
        /// All names at once (`*`).
        wildcard: Attributes,
        /// One by one.
        each: Vec<Attributes>,
    },
    /// Refused without asking, for this reason (appended to kube's 403).
    Refuse(Attributes, String),
}

/// `system:node:<name>`'s name, when it is a valid node name (a DNS
/// subdomain).
pub fn node_name(user: &str) -> Option<&str> {
    user.strip_prefix("system:node:")
        .filter(|name| is_dns_subdomain(name))
}

/// `system:serviceaccount:<namespace>:<name>`'s namespace and name, when
/// kube reads the name as a service account's: the namespace a DNS label,
/// the name a DNS subdomain.
pub fn service_account(user: &str) -> Option<(&str, &str)> {
    user.strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, name)| is_dns_label(ns) && is_dns_subdomain(name))
}

/// kube's DNS-1123 label: at most 63 lower-case letters, digits and `-`,
/// starting and ending with a letter or digit.
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// kube's DNS-1123 subdomain: at most 253 characters, dot-separated labels
/// of lower-case letters, digits and `-`, each starting and ending with a
/// letter or digit.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Why constrained impersonation refuses these extras, if it does: keys
/// must be domain-prefixed paths in lower case, values non-empty.
fn invalid_extra(extra: &BTreeMap<String, Vec<String>>) -> Option<String> {
    for (key, values) in extra {
        if key.is_empty() {
            return Some("impersonating the empty string key in extra is not allowed".into());
        }
        if !is_domain_prefixed_path(key) {
            return Some(format!(
                "impersonating an invalid key in extra is not allowed: extra.key: Invalid value: {key:?}: must be a domain-prefixed path (such as \"acme.io/foo\")"
            ));
        }
        if key != &key.to_lowercase() {
            return Some(format!(
                "impersonating a non-lowercase key in extra is not allowed: {key:?}"
            ));
        }
        if values.is_empty() {
            return Some("impersonating empty values in extra is not allowed".into());
        }
        if values.iter().any(String::is_empty) {
            return Some("impersonating the empty string value in extra is not allowed".into());
        }
    }
    None
}

/// kube's `IsDomainPrefixedPath`: `<DNS subdomain>/<path>`, the path of
/// characters valid in a URL path.
fn is_domain_prefixed_path(key: &str) -> bool {
    let Some((domain, path)) = key.split_once('/') else {
        return false;
    };
    !path.is_empty()
        && is_dns_subdomain(domain)
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:/%".contains(&b))
}

/// How many attributes `requested` names: the user, the uid, each group and
/// each extra value.
pub fn attribute_count(requested: &Requested) -> usize {
    1 + usize::from(requested.uid.is_some())
        + requested.groups.len()
        + requested.extra.values().map(Vec::len).sum::<usize>()
}

/// How the proxy sends the identity it decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// `Impersonate-*` headers, with these rights of the proxy's account.
    Impersonate(super::ProxyRbac),
    /// Front-proxy headers, which the API server takes as they are.
    FrontProxy,
}

/// The groups kube gives a service account: `system:serviceaccounts` and
/// `system:serviceaccounts:<namespace>`.
fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

/// The identity a request goes on as when `mode` allowed `requested` for
/// `original`, as the proxy sends it (`forwarding`) so that the API server
/// reads the user kube itself would have made of the request:
///
/// - a node allowed by a node mode is in `system:nodes` (and nothing else);
///   a service account asked for without groups is in its account groups;
/// - with constrained rights, a service account or a node that needs
///   nothing but its name goes by name alone (the API server's own
///   `serviceaccount` and `arbitrary-node` modes then give it its groups);
/// - with legacy rights, a node goes with `system:nodes` named (the API
///   server's legacy verb would not add it); front-proxy headers carry every
///   group, as the API server adds none;
/// - otherwise as requested, plus [`ORIGINAL_USER_EXTRA`] naming who asked.
pub fn impersonated(
    original: &UserInfo,
    requested: &Requested,
    mode: ImpersonationMode,
    forwarding: Forwarding,
) -> UserInfo {
    let user = requested.user.as_deref().unwrap_or_default();
    let account = service_account(user);
    let node_mode = matches!(
        mode,
        ImpersonationMode::AssociatedNode | ImpersonationMode::ArbitraryNode
    );
    let only_name = requested.groups.is_empty()
        && requested.uid.as_deref().unwrap_or_default().is_empty()
        && requested.extra.is_empty();
    let by_name = node_mode
        || mode == ImpersonationMode::ServiceAccount
        || (mode == ImpersonationMode::Legacy && account.is_some() && only_name);
    if by_name && forwarding == Forwarding::Impersonate(super::ProxyRbac::Constrained) {
        return UserInfo {
            username: user.to_owned(),
            ..UserInfo::default()
        };
    }
    let groups = if node_mode {
        vec!["system:nodes".to_owned()]
    } else {
        match (account, forwarding) {
            (Some((namespace, _)), Forwarding::FrontProxy) if requested.groups.is_empty() => {
                service_account_groups(namespace)
            }
            _ => requested.groups.clone(),
        }
    };
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
        username: user.to_owned(),
        uid: requested.uid.clone().filter(|u| !u.is_empty()),
        groups,
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
        assert_eq!(attribute_count(&at_bound), MAX_REVIEWS_PER_REQUEST);
        pairs.push(("Impersonate-Extra-Scopes", "edit".to_string()));
        let status = read(&pairs).unwrap_err();
        assert_eq!(status.code, 400);
        assert!(
            status.message.contains("17 attributes") && status.message.contains("at most 16"),
            "{}",
            status.message
        );
    }

    fn list_pods() -> AuthorizerAttributes {
        crate::observe::request_info::authorizer_attributes(
            &http::Method::GET,
            &"/api/v1/namespaces/default/pods".parse().unwrap(),
            false,
        )
    }

    /// Every attribute a mode's steps ask about, in order (the wildcard of
    /// a many-at-once step first), and a refusal's reason.
    fn asked(steps: &[Step]) -> Vec<String> {
        let show = |a: &Attributes| {
            let mut out = format!("{} {}/{}", a.verb, a.group, a.resource);
            if !a.subresource.is_empty() {
                out.push_str(&format!("/{}", a.subresource));
            }
            if !a.namespace.is_empty() {
                out.push_str(&format!(" ns={}", a.namespace));
            }
            out.push_str(&format!(" {}", a.name));
            out
        };
        let mut out = Vec::new();
        for step in steps {
            match step {
                Step::Ask(a) => out.push(show(a)),
                Step::Each(each) => out.extend(each.iter().map(show)),
                Step::AskAll { wildcard, each } => {
                    out.push(format!("any: {}", show(wildcard)));
                    out.extend(each.iter().map(show));
                }
                Step::Refuse(a, reason) => out.push(format!("refuse {}: {reason}", show(a))),
            }
        }
        out
    }

    #[test]
    fn the_extra_keys_the_proxy_sets_are_ones_constrained_impersonation_takes() {
        let keys: BTreeMap<String, Vec<String>> = [
            ORIGINAL_USER_EXTRA,
            "authentication.kubernetes.io/credential-id",
        ]
        .into_iter()
        .map(|k| (k.to_owned(), vec!["v".to_owned()]))
        .collect();
        assert_eq!(invalid_extra(&keys), None);
        // kube's own reading of service-account names: not one, an ordinary user.
        for user in [
            "system:serviceaccount:Default:web",
            "system:serviceaccount:default:web:x",
            "system:serviceaccount:default:",
            "system:serviceaccount:a.b:web",
        ] {
            assert_eq!(service_account(user), None, "{user}");
        }
        assert_eq!(
            service_account("system:serviceaccount:kube-system:web.v1"),
            Some(("kube-system", "web.v1"))
        );
    }

    #[test]
    fn modes_apply_and_ask_as_kube_does() {
        let requestor = UserInfo {
            username: "system:serviceaccount:kube-system:agent".into(),
            extra: [(NODE_NAME_EXTRA.to_owned(), vec!["n1".to_owned()])].into(),
            ..UserInfo::default()
        };
        let by_name = |user: &str| Requested {
            user: Some(user.into()),
            ..Requested::default()
        };
        let applying = |r: &Requested| -> Vec<&str> {
            ImpersonationMode::ALL
                .into_iter()
                .filter(|m| m.applies(r, &requestor))
                .map(ImpersonationMode::as_str)
                .collect()
        };
        assert_eq!(
            applying(&by_name("system:node:n1")),
            ["associated-node", "arbitrary-node", "legacy"]
        );
        assert_eq!(
            applying(&by_name("system:node:n2")),
            ["arbitrary-node", "legacy"]
        );
        // Not a node name (upper case): an ordinary user.
        assert_eq!(
            applying(&by_name("system:node:N2")),
            ["user-info", "legacy"]
        );
        assert_eq!(
            applying(&by_name("system:serviceaccount:default:web")),
            ["serviceaccount", "legacy"]
        );
        let sa_with_group = Requested {
            groups: vec!["devs".into()],
            ..by_name("system:serviceaccount:default:web")
        };
        assert_eq!(applying(&sa_with_group), ["legacy"]);
        assert_eq!(applying(&by_name("carol")), ["user-info", "legacy"]);

        let request = list_pods();
        let carol = Requested {
            user: Some("carol".into()),
            uid: Some("7".into()),
            groups: vec!["devs".into()],
            extra: [("example.com/scopes".to_string(), vec!["view".to_string()])].into(),
        };
        assert_eq!(
            asked(&ImpersonationMode::UserInfo.steps(&carol, &request)),
            [
                "impersonate-on:user-info:list /pods ns=default ",
                "impersonate:user-info authentication.k8s.io/users carol",
                "impersonate:user-info authentication.k8s.io/uids 7",
                "impersonate:user-info authentication.k8s.io/groups devs",
                "impersonate:user-info authentication.k8s.io/userextras/example.com/scopes view",
            ]
        );
        assert_eq!(
            asked(&ImpersonationMode::Legacy.steps(&carol, &request)),
            [
                "impersonate /users carol",
                "impersonate authentication.k8s.io/uids 7",
                "impersonate /groups devs",
                "impersonate authentication.k8s.io/userextras/example.com/scopes view",
            ]
        );
        assert_eq!(
            asked(&ImpersonationMode::AssociatedNode.steps(&by_name("system:node:n1"), &request)),
            [
                "impersonate-on:associated-node:list /pods ns=default ",
                "impersonate:associated-node authentication.k8s.io/nodes *",
            ]
        );
        assert_eq!(
            asked(
                &ImpersonationMode::ServiceAccount
                    .steps(&by_name("system:serviceaccount:default:web"), &request)
            ),
            [
                "impersonate-on:serviceaccount:list /pods ns=default ",
                "impersonate:serviceaccount authentication.k8s.io/serviceaccounts ns=default web",
            ]
        );
        // The refusals only constrained modes make, and the many-at-once check.
        let masters = Requested {
            groups: vec!["devs".into(), "system:masters".into()],
            ..by_name("carol")
        };
        let steps = asked(&ImpersonationMode::UserInfo.steps(&masters, &request));
        assert!(
            steps.last().unwrap().starts_with("refuse ")
                && steps
                    .last()
                    .unwrap()
                    .ends_with("the system:masters group is not allowed"),
            "{steps:?}"
        );
        assert!(ImpersonationMode::Legacy
            .steps(&masters, &request)
            .iter()
            .all(|s| !matches!(s, Step::Refuse(..))));
        for key in [
            "Example.com/scopes",
            "scopes",
            "example.com/",
            "exa_mple.com/x",
        ] {
            let r = Requested {
                extra: [(key.to_string(), vec!["view".to_string()])].into(),
                ..by_name("carol")
            };
            let steps = asked(&ImpersonationMode::UserInfo.steps(&r, &request));
            assert!(
                steps.last().unwrap().starts_with("refuse "),
                "{key}: {steps:?}"
            );
        }
        let many = Requested {
            groups: (0..4).map(|i| format!("g{i}")).collect(),
            ..by_name("carol")
        };
        let steps = asked(&ImpersonationMode::UserInfo.steps(&many, &request));
        assert_eq!(
            steps[2],
            "any: impersonate:user-info authentication.k8s.io/groups *"
        );
        // A non-resource request is asked about by its path.
        let version = crate::observe::request_info::authorizer_attributes(
            &http::Method::GET,
            &"/version".parse().unwrap(),
            false,
        );
        let steps = ImpersonationMode::UserInfo.steps(&by_name("carol"), &version);
        let Step::Ask(on) = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(
            on.forbidden("alice"),
            "forbidden: User \"alice\" cannot impersonate-on:user-info:get path \"/version\""
        );
    }

    #[test]
    fn forbidden_messages_have_kube_wording() {
        assert_eq!(
            Attributes::new("impersonate", "", "users", "bob").forbidden("alice"),
            "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let sa = Attributes {
            namespace: "default".into(),
            ..Attributes::new("impersonate", "", "serviceaccounts", "nobody")
        };
        assert_eq!(
            sa.forbidden("alice"),
            "serviceaccounts \"nobody\" is forbidden: User \"alice\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"default\""
        );
        let extra = Attributes {
            subresource: "scopes".into(),
            ..Attributes::new("impersonate", "authentication.k8s.io", "userextras", "view")
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
        let user = impersonated(
            &alice,
            &r,
            ImpersonationMode::UserInfo,
            Forwarding::Impersonate(super::super::ProxyRbac::Legacy),
        );
        assert_eq!(user.username, "bob");
        assert!(user.groups.is_empty());
        assert_eq!(
            user.extra[ORIGINAL_USER_EXTRA],
            [r#"{"username":"alice","uid":"1001","groups":["devs"]}"#]
        );
    }
}
