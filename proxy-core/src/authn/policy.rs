//! Identity policy shared by the authenticators whose names come from an
//! outside source (OIDC claims, an LDAP directory): reserved names, and
//! kube's rules for extra keys.
//!
//! `system:` user and group names belong to Kubernetes (`system:masters`,
//! `system:nodes`, `system:serviceaccount:<ns>:<name>`, …): RBAC grants them
//! powers no directory administrator or IdP claim should be able to hand out.
//! By default an identity holding such a name is refused (401); a per-
//! authenticator `allowSystemNames: true` lets it through. A configured
//! prefix (`groupPrefix: 'ldap:'`, `claimMappings.groups.prefix: 'oidc:'`)
//! keeps names out of the reserved space in the first place.

use std::sync::Arc;

use super::{Authenticator, AuthnError, AuthnFuture, UserInfo};
use crate::credential::Credential;

/// The prefix of names reserved for Kubernetes.
pub const SYSTEM_PREFIX: &str = "system:";

/// Default of every authenticator's `allowSystemNames`: `system:` names from
/// OIDC claims and LDAP are refused.
pub const DEFAULT_ALLOW_SYSTEM_NAMES: bool = false;

/// Refuses a user whose name or a group starts with [`SYSTEM_PREFIX`].
///
/// The error names the field and the offending name (neither is a secret);
/// the caller sees only kube's generic 401 `Status`.
pub fn refuse_system_names(user: &UserInfo) -> Result<(), AuthnError> {
    if user.username.starts_with(SYSTEM_PREFIX) {
        return Err(AuthnError::Invalid(format!(
            "user name {:?} uses the reserved prefix {SYSTEM_PREFIX} (allowSystemNames is off)",
            user.username
        )));
    }
    if let Some(group) = user.groups.iter().find(|g| g.starts_with(SYSTEM_PREFIX)) {
        return Err(AuthnError::Invalid(format!(
            "group {group:?} uses the reserved prefix {SYSTEM_PREFIX} (allowSystemNames is off)"
        )));
    }
    Ok(())
}

/// An authenticator whose identities must not hold reserved `system:` names.
pub struct RefuseSystemNames {
    inner: Arc<dyn Authenticator>,
}

impl RefuseSystemNames {
    /// Wraps `inner`: its identities pass only without `system:` names.
    pub fn wrap(inner: Arc<dyn Authenticator>) -> Arc<dyn Authenticator> {
        Arc::new(RefuseSystemNames { inner })
    }

    /// Wraps `inner` unless `allow_system_names` (the authenticator's
    /// `allowSystemNames` setting) is on.
    pub fn unless_allowed(
        inner: Arc<dyn Authenticator>,
        allow_system_names: bool,
    ) -> Arc<dyn Authenticator> {
        if allow_system_names {
            inner
        } else {
            Self::wrap(inner)
        }
    }
}

impl std::fmt::Debug for RefuseSystemNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RefuseSystemNames")
            .field(&self.inner.name())
            .finish()
    }
}

impl Authenticator for RefuseSystemNames {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        Box::pin(async move {
            let identity = self.inner.authenticate(credential).await?;
            if let Some(identity) = &identity {
                refuse_system_names(identity.user())?;
            }
            Ok(identity)
        })
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        self.inner.counters(found);
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn is_http_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/-._~%!$&'()*+,;=:".contains(&b)
}

/// What is wrong with an extra key by kube's `AuthenticationConfiguration`
/// rules: it must be a domain-prefixed path (`acme.com/tenant`: a DNS-1123
/// subdomain, `/`, a non-empty path), lower-case, and not under `k8s.io`,
/// `kubernetes.io` or their subdomains (reserved for Kubernetes).
/// Empty when the key is fine.
pub fn extra_key_problems(key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if key.is_empty() {
        problems.push("is required".to_owned());
        return problems;
    }
    match key.split_once('/') {
        Some((domain, path)) if !domain.is_empty() && !path.is_empty() => {
            if domain.len() > 253 || !domain.split('.').all(is_dns1123_label) {
                problems.push(format!(
                    "{key:?}: the domain {domain:?} must be a lower-case DNS-1123 subdomain"
                ));
            }
            if !path.bytes().all(is_http_path_byte) {
                problems.push(format!(
                    "{key:?}: the path after the domain holds characters a URL path cannot"
                ));
            }
            let reserved = ["kubernetes.io", "k8s.io"]
                .iter()
                .any(|r| domain == *r || domain.ends_with(&format!(".{r}")));
            if reserved {
                problems.push(format!(
                    "{key:?}: k8s.io, kubernetes.io and their subdomains are reserved for Kubernetes use"
                ));
            }
        }
        _ => problems.push(format!(
            "{key:?} must be a domain-prefixed path (such as \"acme.io/foo\")"
        )),
    }
    if key != key.to_lowercase() {
        problems.push(format!("{key:?} must be lowercase"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::Identity;
    use crate::credential::Secret;

    struct Fixed(UserInfo);
    impl Authenticator for Fixed {
        fn authenticate<'a>(&'a self, _c: &'a Credential) -> AuthnFuture<'a> {
            Box::pin(async move { Ok(Some(Identity::new(self.0.clone()))) })
        }
        fn name(&self) -> &str {
            "fixed"
        }
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn system_users_and_groups_are_refused_unless_allowed() {
        let token = Credential::Bearer(Secret::new("t"));
        for bad in [
            user("system:admin", &[]),
            user("alice", &["devs", "system:masters"]),
            user("system:serviceaccount:kube-system:default", &[]),
        ] {
            let guarded = RefuseSystemNames::unless_allowed(
                Arc::new(Fixed(bad.clone())),
                DEFAULT_ALLOW_SYSTEM_NAMES,
            );
            let error = guarded.authenticate(&token).await.unwrap_err();
            assert!(
                matches!(&error, AuthnError::Invalid(m) if m.contains("reserved prefix")),
                "{error}"
            );
            assert_eq!(error.to_status().into_response().status(), 401);
            let allowed = RefuseSystemNames::unless_allowed(Arc::new(Fixed(bad)), true);
            assert!(allowed.authenticate(&token).await.unwrap().is_some());
        }
        let fine = RefuseSystemNames::wrap(Arc::new(Fixed(user("alice", &["ldap:system:x"]))));
        assert!(fine.authenticate(&token).await.unwrap().is_some());
    }

    #[test]
    fn extra_keys_follow_kubes_rules() {
        assert!(extra_key_problems("acme.com/tenant").is_empty());
        assert!(extra_key_problems("example.org/a:b~c").is_empty());
        for bad in [
            "",
            "tenant",
            "/tenant",
            "acme.com/",
            "Acme.com/tenant",
            "acme.com/Tenant",
            "kubernetes.io/tenant",
            "authentication.kubernetes.io/x",
            "k8s.io/x",
            "sub.k8s.io/x",
            "-acme.com/x",
            "acme..com/x",
            "acme.com/a b",
        ] {
            assert!(!extra_key_problems(bad).is_empty(), "{bad:?} accepted");
        }
        // A domain that merely ends in the same letters is not reserved.
        assert!(extra_key_problems("notk8s.io/x").is_empty());
    }
}
