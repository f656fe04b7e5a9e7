//! Who may do what at the double: request attributes parsed from the path
//! as kube-apiserver parses them, and a small rule table shaped like RBAC.

use std::collections::BTreeMap;

use http::Method;
use serde::{Deserialize, Serialize};

/// The effective user of a request (`authentication.k8s.io/v1` `UserInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// Unique id; empty when unknown (omitted in JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes (keys lower-case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request asks to do, as kube's authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, impersonate…
    pub verb: String,
    /// API group ("" for the core group).
    pub api_group: String,
    /// Resource, with `/subresource` when there is one (`pods/exec`).
    pub resource: String,
    /// Object name, empty for collections.
    pub name: String,
    /// Namespace, empty for cluster scope.
    pub namespace: String,
    /// For non-resource requests: the path.
    pub path: Option<String>,
}

impl Attributes {
    /// Parses a request like kube's RequestInfoResolver.
    pub fn from_request(method: &Method, path: &str, query: Option<&str>) -> Attributes {
        let watch = query
            .unwrap_or("")
            .split('&')
            .any(|kv| kv == "watch=1" || kv == "watch=true");
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let (api_group, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] if !rest.is_empty() => (String::new(), rest.to_vec()),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
                (group.to_string(), rest.to_vec())
            }
            _ => {
                return Attributes {
                    verb: method.as_str().to_ascii_lowercase(),
                    api_group: String::new(),
                    resource: String::new(),
                    name: String::new(),
                    namespace: String::new(),
                    path: Some(path.to_owned()),
                }
            }
        };
        let (namespace, rest) = match rest.as_slice() {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest.to_vec()),
            _ => (String::new(), rest),
        };
        let resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
        let name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
        let resource = match rest.get(2) {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource,
        };
        let verb = match *method {
            Method::GET | Method::HEAD if watch => "watch",
            Method::GET | Method::HEAD if name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "unknown",
        };
        Attributes {
            verb: verb.into(),
            api_group,
            resource,
            name,
            namespace,
            path: None,
        }
    }

    /// kube's 403 message for these attributes.
    pub fn forbidden_message(&self, user: &str) -> String {
        if let Some(path) = &self.path {
            return format!(
                "forbidden: User \"{user}\" cannot {} path \"{path}\"",
                self.verb
            );
        }
        let base = self.resource.split('/').next().unwrap_or_default();
        let subject = if self.name.is_empty() {
            format!("{base} is forbidden")
        } else {
            format!("{base} \"{}\" is forbidden", self.name)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{subject}: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            self.verb, self.resource, self.api_group
        )
    }
}

/// One allow rule. Empty `resource_names` / `namespaces` match anything;
/// `*` in verbs or resources matches anything.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Verbs allowed.
    pub verbs: Vec<String>,
    /// API group of the resources.
    pub api_group: String,
    /// Resources (`pods`, `pods/exec`, `userextras/*`).
    pub resources: Vec<String>,
    /// Object names; empty means any.
    pub resource_names: Vec<String>,
    /// Namespaces; empty means any.
    pub namespaces: Vec<String>,
    /// Users the rule applies to.
    pub users: Vec<String>,
    /// Groups the rule applies to.
    pub groups: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Rule {
    /// Allows `verbs` on `resources` in the core group, for nobody yet.
    pub fn allow(verbs: &[&str], resources: &[&str]) -> Rule {
        Rule {
            verbs: strings(verbs),
            resources: strings(resources),
            ..Default::default()
        }
    }
    /// Sets the API group.
    pub fn in_group(mut self, api_group: &str) -> Rule {
        self.api_group = api_group.into();
        self
    }
    /// Limits to namespaces.
    pub fn in_namespaces(mut self, namespaces: &[&str]) -> Rule {
        self.namespaces = strings(namespaces);
        self
    }
    /// Grants to users.
    pub fn for_users(mut self, users: &[&str]) -> Rule {
        self.users = strings(users);
        self
    }
    /// Grants to groups.
    pub fn for_groups(mut self, groups: &[&str]) -> Rule {
        self.groups = strings(groups);
        self
    }

    /// Whether this rule gives `user` `verb` on anything.
    pub fn grants_verb_to(&self, verb: &str, user: &UserInfo) -> bool {
        let subject = self.users.iter().any(|u| u == &user.username)
            || self.groups.iter().any(|g| user.groups.contains(g));
        subject && self.verbs.iter().any(|v| v == verb)
    }

    fn matches(&self, user: &UserInfo, attrs: &Attributes) -> bool {
        let subject = self.users.iter().any(|u| u == &user.username)
            || self.groups.iter().any(|g| user.groups.contains(g));
        // kube's RBAC: "*", the exact resource[/subresource], or "*/subresource"
        let subresource = attrs.resource.split_once('/').map(|(_, sub)| sub);
        let resource = self.resources.iter().any(|r| {
            r == "*"
                || r == &attrs.resource
                || subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
        });
        subject
            && attrs.path.is_none()
            && resource
            && (self.api_group == "*" || self.api_group == attrs.api_group)
            && self.verbs.iter().any(|v| v == "*" || v == &attrs.verb)
            && (self.resource_names.is_empty() || self.resource_names.contains(&attrs.name))
            && (self.namespaces.is_empty() || self.namespaces.contains(&attrs.namespace))
    }
}

/// Whether any rule allows `user` to do `attrs`.
pub fn allowed(rules: &[Rule], user: &UserInfo, attrs: &Attributes) -> bool {
    rules.iter().any(|r| r.matches(user, attrs))
}

/// The default rule table: see [`crate::apiserver::DoubleConfig::new`].
pub fn default_rules(proxy_user: &str) -> Vec<Rule> {
    vec![
        Rule::allow(&["create"], &["selfsubjectreviews"])
            .in_group("authentication.k8s.io")
            .for_groups(&["system:authenticated"]),
        Rule::allow(&["get", "list", "watch"], &["pods", "configmaps"])
            .in_namespaces(&["default"])
            .for_groups(&["devs", "oidc:devs"]),
        Rule::allow(
            &["create", "get"],
            &["pods/exec", "pods/attach", "pods/portforward"],
        )
        .in_namespaces(&["default"])
        .for_groups(&["devs"]),
        Rule::allow(&["*"], &["*"])
            .in_group("*")
            .for_groups(&["admins"]),
        Rule::allow(&["impersonate"], &["users", "groups", "serviceaccounts"])
            .for_users(&[proxy_user]),
        // uids and userextras/<key>: kube's RBAC needs "*" (or each key)
        Rule::allow(&["impersonate"], &["*"])
            .in_group("authentication.k8s.io")
            .for_users(&[proxy_user]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_and_messages_follow_kube() {
        let a = Attributes::from_request(&Method::GET, "/api/v1/namespaces/default/pods", None);
        assert_eq!(
            a.forbidden_message("bob"),
            r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        let w = Attributes::from_request(
            &Method::GET,
            "/api/v1/namespaces/default/pods",
            Some("watch=1"),
        );
        assert_eq!(w.verb, "watch");
        let e = Attributes::from_request(
            &Method::POST,
            "/api/v1/namespaces/default/pods/web-0/exec",
            None,
        );
        assert_eq!(
            (e.verb.as_str(), e.resource.as_str(), e.name.as_str()),
            ("create", "pods/exec", "web-0")
        );
        let r = Attributes::from_request(
            &Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            None,
        );
        assert_eq!(
            (r.api_group.as_str(), r.namespace.as_str()),
            ("authentication.k8s.io", "")
        );
        assert!(r.forbidden_message("x").ends_with("at the cluster scope"));
    }
}
