//! LDAP settings (the `authentication.ldap` section).
//!
//! ```yaml
//! ldap:
//!   url: ldaps://ldap.example.com:636      # or ldap://…:389 with startTLS: true
//!   caFile: ldap-ca.crt
//!   bindDN: cn=authproxy,ou=services,dc=example,dc=com
//!   bindPasswordFile: ldap-bind-password
//!   userSearch: {baseDN: 'ou=people,dc=example,dc=com', filter: '(uid={username})', usernameAttribute: uid, uidAttribute: uidNumber}
//!   groupSearch: {baseDN: 'ou=groups,dc=example,dc=com', filter: '(member={dn})', nameAttribute: cn}
//!   groupPrefix: 'ldap:'
//! ```
//!
//! In filters `{username}` and `{dn}` are replaced by the RFC 4515-escaped
//! user name and user DN. Active Directory: `userSearch.filter:
//! (sAMAccountName={username})`, `usernameAttribute: sAMAccountName`,
//! `uidAttribute: objectGUID`, and either `memberOfAttribute: memberOf` with
//! `memberOfBaseDN: 'OU=Groups,DC=corp,DC=example'` or
//! `groupSearch.filter: (member:1.2.840.113556.1.4.1941:={dn})` for nested groups.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::throttle::Limits;

/// Default `maxUsernameLength`, in bytes.
pub const DEFAULT_MAX_USERNAME_LENGTH: usize = 256;
/// Default `throttle.capacity`: keys remembered per kind (user names and
/// entries; client addresses) in each tier (without failures, with
/// failures, blocked).
pub const DEFAULT_THROTTLE_CAPACITY: u64 = 50_000;
/// Default `operationTimeout`.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `connectTimeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `authentication.ldap` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LdapConfig {
    /// `ldaps://host:port` or `ldap://host:port`.
    pub url: String,
    /// Upgrade `ldap://` with StartTLS.
    #[serde(default, rename = "startTLS")]
    pub start_tls: bool,
    /// Allow plain `ldap://` without StartTLS to a host that is not loopback.
    /// Passwords then cross the network in clear text.
    #[serde(default, rename = "insecureNoTLS")]
    pub insecure_no_tls: bool,
    /// PEM CA bundle for the directory's certificate (default: system bundle).
    pub ca_file: Option<PathBuf>,
    /// The service account that searches.
    #[serde(rename = "bindDN")]
    pub bind_dn: String,
    /// File holding the service account's password.
    pub bind_password_file: PathBuf,
    /// How users are found.
    pub user_search: UserSearch,
    /// How groups are found (or use `memberOfAttribute`).
    pub group_search: Option<GroupSearch>,
    /// Read groups from this attribute of the user entry (group DNs; the
    /// first RDN value is the group name). Needs `memberOfBaseDN`.
    pub member_of_attribute: Option<String>,
    /// Only DNs under this base DN in `memberOfAttribute` are groups; others
    /// (roles, distribution lists, other tenants' groups) are ignored.
    #[serde(rename = "memberOfBaseDN")]
    pub member_of_base_dn: Option<String>,
    /// Longest user name in bytes; longer ones are refused before any
    /// counting or directory work (default [`DEFAULT_MAX_USERNAME_LENGTH`]).
    pub max_username_length: Option<usize>,
    /// Prepended to every group name.
    #[serde(default)]
    pub group_prefix: String,
    /// Let user and group names starting with `system:` through (default
    /// false, see [`DEFAULT_ALLOW_SYSTEM_NAMES`](crate::authn::policy::DEFAULT_ALLOW_SYSTEM_NAMES)):
    /// otherwise a directory entry named `system:masters` would hand out
    /// Kubernetes' own powers.
    pub allow_system_names: Option<bool>,
    /// Time to open a connection, TLS and StartTLS included (default 5s).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Bound on every LDAP operation (bind, search), on every connection
    /// (default 5s). A pooled connection whose operation timed out is replaced.
    #[serde(default, with = "humantime_serde")]
    pub operation_timeout: Option<Duration>,
    /// Service connections kept open for searches (default 2).
    pub pool_size: Option<usize>,
    /// How long a successful login is remembered (default 30s).
    #[serde(default, rename = "cacheTTL", with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Failed-login limits.
    #[serde(default)]
    pub throttle: ThrottleConfig,
}

/// `userSearch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserSearch {
    /// Where users live.
    #[serde(rename = "baseDN")]
    pub base_dn: String,
    /// Filter with `{username}` (default `(uid={username})`).
    pub filter: Option<String>,
    /// Attribute holding the user name (default `uid`).
    pub username_attribute: Option<String>,
    /// Attribute holding a stable id (optional).
    pub uid_attribute: Option<String>,
}

/// `groupSearch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupSearch {
    /// Where groups live.
    #[serde(rename = "baseDN")]
    pub base_dn: String,
    /// Filter with `{dn}` and/or `{username}` (default `(member={dn})`;
    /// groupOfUniqueNames: `(uniqueMember={dn})`; posixGroup: `(memberUid={username})`).
    pub filter: Option<String>,
    /// Attribute holding the group name (default `cn`).
    pub name_attribute: Option<String>,
}

/// `throttle`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThrottleConfig {
    /// Failures per user name before blocking (default 5).
    pub max_failures_per_user: Option<u32>,
    /// Failures per client address before blocking (default 20).
    pub max_failures_per_client: Option<u32>,
    /// How long failures are remembered (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// First block length, doubling per further failure (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub backoff: Option<Duration>,
    /// Longest block (default 15m).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// Most keys remembered per kind in each tier (without failures, with
    /// failures, blocked), least recently used forgotten first within a tier
    /// (default [`DEFAULT_THROTTLE_CAPACITY`]).
    pub capacity: Option<u64>,
}

impl ThrottleConfig {
    /// (per user, per client) limits with defaults.
    pub fn limits(&self) -> (Limits, Limits) {
        let window = self.window.unwrap_or(Duration::from_secs(300));
        let backoff = self.backoff.unwrap_or(Duration::from_secs(30));
        let max_backoff = self.max_backoff.unwrap_or(Duration::from_secs(900));
        let limits = |max_failures| Limits {
            max_failures,
            window,
            backoff,
            max_backoff,
        };
        (
            limits(self.max_failures_per_user.unwrap_or(5)),
            limits(self.max_failures_per_client.unwrap_or(20)),
        )
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl LdapConfig {
    /// Every problem in the section, `path` being its location.
    pub fn problems(&self, path: &str) -> Vec<crate::problem::Problem> {
        let mut problems = Vec::new();
        let mut p = |field: &str, message: String| {
            problems.push(crate::problem::Problem {
                field: format!("{path}.{field}"),
                message,
            })
        };
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("", ""));
        let host = rest.split('/').next().unwrap_or_default();
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        match scheme {
            "ldaps" if self.start_tls => p("startTLS", "ldaps:// is already TLS; StartTLS applies to ldap:// only".into()),
            "ldaps" => {}
            "ldap" if self.start_tls || self.insecure_no_tls || is_loopback_host(host) => {}
            "ldap" => p(
                "url",
                format!("{} sends passwords in clear text: use ldaps://, set startTLS: true, or (not recommended) insecureNoTLS: true", self.url),
            ),
            _ => p("url", format!("{:?} is not an ldap:// or ldaps:// URL", self.url)),
        }
        if host.is_empty() {
            p("url", "has no host".into());
        }
        let filter = self
            .user_search
            .filter
            .as_deref()
            .unwrap_or("(uid={username})");
        if !filter.contains("{username}") {
            p("userSearch.filter", "must contain {username}".into());
        }
        if !filter.starts_with('(') || !filter.ends_with(')') {
            p(
                "userSearch.filter",
                "must be a parenthesized LDAP filter".into(),
            );
        } else if let Err(problem) = super::filter::check_template(filter, &["username"]) {
            p("userSearch.filter", problem);
        }
        if let Some(g) = &self.group_search {
            let filter = g.filter.as_deref().unwrap_or("(member={dn})");
            if !filter.contains("{dn}") && !filter.contains("{username}") {
                p(
                    "groupSearch.filter",
                    "must contain {dn} or {username}".into(),
                );
            } else if let Err(problem) = super::filter::check_template(filter, &["username", "dn"])
            {
                p("groupSearch.filter", problem);
            }
        }
        if self.bind_dn.is_empty() {
            p("bindDN", "is required".into());
        }
        match (&self.member_of_attribute, &self.member_of_base_dn) {
            (Some(_), None) => p(
                "memberOfBaseDN",
                "is required with memberOfAttribute: only groups under it are taken".into(),
            ),
            (None, Some(_)) => p(
                "memberOfBaseDN",
                "applies only with memberOfAttribute".into(),
            ),
            (_, Some(base)) => {
                if let Err(e) = super::dn::Dn::parse(base) {
                    p("memberOfBaseDN", e.to_string());
                }
            }
            (None, None) => {}
        }
        if self.max_username_length == Some(0) {
            p("maxUsernameLength", "must be at least 1".into());
        }
        if self.operation_timeout.is_some_and(|t| t.is_zero()) {
            p("operationTimeout", "must be more than 0".into());
        }
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            p("connectTimeout", "must be more than 0".into());
        }
        let t = &self.throttle;
        if t.max_failures_per_user == Some(0) {
            p("throttle.maxFailuresPerUser", "must be at least 1".into());
        }
        if t.max_failures_per_client == Some(0) {
            p("throttle.maxFailuresPerClient", "must be at least 1".into());
        }
        if t.capacity == Some(0) {
            p("throttle.capacity", "must be at least 1".into());
        }
        if t.window.is_some_and(|w| w.is_zero()) {
            p("throttle.window", "must be more than 0".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> LdapConfig {
        serde_yaml_ng::from_str(&format!(
            "bindDN: cn=svc\nbindPasswordFile: pw\nuserSearch: {{baseDN: 'ou=people'}}\n{yaml}"
        ))
        .unwrap()
    }

    #[test]
    fn clear_text_ldap_to_a_remote_host_needs_an_explicit_opt_in() {
        let problems = config("url: ldap://ldap.example.com:389").problems("authentication.ldap");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "authentication.ldap.url");
        assert!(config("url: ldap://ldap.example.com:389\nstartTLS: true")
            .problems("l")
            .is_empty());
        assert!(
            config("url: ldap://ldap.example.com:389\ninsecureNoTLS: true")
                .problems("l")
                .is_empty()
        );
        assert!(config("url: ldaps://ldap.example.com")
            .problems("l")
            .is_empty());
        assert!(config("url: ldap://127.0.0.1:389").problems("l").is_empty());
        assert!(!config("url: ldaps://x\nstartTLS: true")
            .problems("l")
            .is_empty());
    }

    #[test]
    fn member_of_needs_a_base_dn_and_limits_must_be_positive() {
        let c = config("url: ldaps://x\nmemberOfAttribute: memberOf");
        let fields: Vec<_> = c.problems("l").into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["l.memberOfBaseDN"]);
        let c = config("url: ldaps://x\nmemberOfAttribute: memberOf\nmemberOfBaseDN: 'not a dn'");
        let fields: Vec<_> = c.problems("l").into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["l.memberOfBaseDN"]);
        let c =
            config("url: ldaps://x\nmemberOfAttribute: memberOf\nmemberOfBaseDN: 'ou=groups,dc=x'");
        assert!(c.problems("l").is_empty());
        let c = config(
            "url: ldaps://x\nmaxUsernameLength: 0\noperationTimeout: 0s\nthrottle: {capacity: 0, maxFailuresPerUser: 0}",
        );
        let fields: Vec<_> = c.problems("l").into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "l.maxUsernameLength",
                "l.operationTimeout",
                "l.throttle.maxFailuresPerUser",
                "l.throttle.capacity"
            ]
        );
    }

    #[test]
    fn filters_must_use_the_placeholders() {
        let mut c = config("url: ldaps://x");
        c.user_search.filter = Some("(uid=alice)".into());
        assert!(c
            .problems("l")
            .iter()
            .any(|p| p.field == "l.userSearch.filter"));
    }
}
