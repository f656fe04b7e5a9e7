//! What a Kubernetes API request is about, read from its method and path the
//! way kube-apiserver's `RequestInfoFactory` reads them: the `verb` of kube's
//! audit log and RBAC (`get`, `list`, `watch`, `create`, `update`, `patch`,
//! `delete`, `deletecollection`), the object (`objectRef`), and whether the
//! request is long-running (watches, logs, exec, attach, port-forward, proxy).
//!
//! Parsing never fails: a path that is not a resource path is a
//! non-resource request whose verb is the lower-case HTTP method. A path
//! below a named cluster (`/k8s/clusters/<name>/...`) is read without that
//! prefix, as the cluster's API server reads it.

use http::{Method, Uri};
use serde::Serialize;

/// Subresources kube-apiserver treats as long-running.
const LONG_RUNNING_SUBRESOURCES: [&str; 5] = ["attach", "exec", "proxy", "log", "portforward"];

/// kube's `audit.k8s.io/v1` `ObjectReference`: the object a request is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// The resource (`pods`, `configmaps`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// The namespace, for namespaced requests.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The object's name, when the request names one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The API group (empty for the core group).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// The API version (`v1`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// The subresource (`log`, `exec`, `status`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// kube's verb for the request.
    pub verb: &'static str,
    /// The object, for resource requests.
    pub object: Option<ObjectRef>,
    /// True for requests that stream for long (kube's long-running requests).
    pub long_running: bool,
}

impl RequestInfo {
    /// True for verbs that only read.
    pub fn is_read_only(&self) -> bool {
        matches!(self.verb, "get" | "list" | "watch")
    }
}

fn method_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::HEAD => "head",
        Method::POST => "post",
        Method::PUT => "put",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

/// True when the query holds `watch=true` or `watch=1` (kube's `ParseBool`).
fn watch_param(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&').any(|pair| {
            matches!(
                pair.split_once('='),
                Some(("watch", "1" | "t" | "T" | "true" | "TRUE" | "True"))
            )
        })
    })
}

/// The object a request names, borrowed from its path.
#[derive(Default)]
struct Parts<'a> {
    api_group: &'a str,
    api_version: &'a str,
    namespace: &'a str,
    resource: &'a str,
    name: &'a str,
    subresource: &'a str,
}

impl Parts<'_> {
    fn to_object(&self) -> ObjectRef {
        ObjectRef {
            resource: self.resource.to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            api_group: self.api_group.to_owned(),
            api_version: self.api_version.to_owned(),
            subresource: self.subresource.to_owned(),
        }
    }
}

/// The verb, the object (for resource requests) and whether it is long-running.
fn read<'a>(
    method: &Method,
    uri: &'a Uri,
    upgrade: bool,
) -> (&'static str, Option<Parts<'a>>, bool) {
    let non_resource = (method_verb(method), None, upgrade);
    // `/k8s/clusters/<name>/api/...` is read as the API server behind it reads it.
    let path = crate::upstream::router::strip_cluster_prefix(uri.path());
    let mut segments = crate::path::segments(path);
    let (api_group, api_version) = match segments.next() {
        Some("api") => ("", segments.next()),
        Some("apis") => match (segments.next(), segments.next()) {
            (Some(group), Some(version)) => (group, Some(version)),
            _ => return non_resource,
        },
        _ => return non_resource,
    };
    let Some(api_version) = api_version.filter(|v| !v.is_empty()) else {
        return non_resource;
    };
    let mut verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let mut first = segments.next().filter(|s| !s.is_empty());
    // `/api/v1/watch/...`: the deprecated watch prefix.
    if first == Some("watch") {
        if verb == "get" {
            verb = "watch";
        }
        first = segments.next().filter(|s| !s.is_empty());
    }
    let Some(first) = first else {
        return non_resource;
    };
    let mut parts = Parts {
        api_group,
        api_version,
        ..Parts::default()
    };
    let second = segments.next();
    // `namespaces/<ns>/<resource>...`, but `namespaces` and `namespaces/<ns>`
    // alone are the namespace objects themselves.
    match (first, second) {
        ("namespaces", Some(namespace)) => {
            parts.namespace = namespace;
            match segments.next() {
                Some(resource) => {
                    parts.resource = resource;
                    parts.name = segments.next().unwrap_or("");
                }
                None => {
                    parts.resource = "namespaces";
                    parts.name = namespace;
                }
            }
        }
        (resource, name) => {
            parts.resource = resource;
            parts.name = name.unwrap_or("");
        }
    }
    parts.subresource = segments.next().unwrap_or("");
    if verb.is_empty() {
        return (method_verb(method), Some(parts), upgrade);
    }
    if parts.name.is_empty() {
        if verb == "get" {
            verb = if watch_param(uri) { "watch" } else { "list" };
        } else if verb == "delete" {
            verb = "deletecollection";
        }
    } else if verb == "get" && watch_param(uri) {
        // kube turns a watch of one named object into a list-watch by field selector.
        verb = "watch";
    }
    let long_running =
        upgrade || verb == "watch" || LONG_RUNNING_SUBRESOURCES.contains(&parts.subresource);
    (verb, Some(parts), long_running)
}

/// Reads `method` and `uri` as kube-apiserver does. `upgrade` marks a
/// protocol upgrade (exec, attach, port-forward), always long-running.
pub fn parse(method: &Method, uri: &Uri, upgrade: bool) -> RequestInfo {
    let (verb, parts, long_running) = read(method, uri, upgrade);
    RequestInfo {
        verb,
        object: parts.map(|p| p.to_object()),
        long_running,
    }
}

/// Like [`parse`] without the object: no allocation, for the hot path.
/// Also says whether the request names an object (see [`object_ref`]).
pub fn classify(method: &Method, uri: &Uri, upgrade: bool) -> (RequestInfo, bool) {
    let (verb, parts, long_running) = read(method, uri, upgrade);
    (
        RequestInfo {
            verb,
            object: None,
            long_running,
        },
        parts.is_some(),
    )
}

/// The object a request's path names, if it names one (the method does
/// not change it).
pub fn object_ref(uri: &Uri) -> Option<ObjectRef> {
    read(&Method::GET, uri, false).1.map(|p| p.to_object())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, uri: &str) -> RequestInfo {
        parse(&method.parse().unwrap(), &uri.parse().unwrap(), false)
    }

    #[test]
    fn verbs_follow_kube() {
        for (method, uri, verb) in [
            ("GET", "/api/v1/namespaces/default/pods", "list"),
            ("GET", "/api/v1/namespaces/default/pods?watch=true", "watch"),
            (
                "GET",
                "/api/v1/namespaces/default/pods?watch=1&x=y",
                "watch",
            ),
            ("GET", "/api/v1/namespaces/default/pods?watch=false", "list"),
            ("GET", "/api/v1/watch/namespaces/default/pods", "watch"),
            ("GET", "/api/v1/namespaces/default/pods/p1", "get"),
            ("POST", "/api/v1/namespaces/default/configmaps", "create"),
            ("PUT", "/api/v1/namespaces/default/configmaps/c", "update"),
            ("PATCH", "/api/v1/namespaces/default/configmaps/c", "patch"),
            (
                "DELETE",
                "/api/v1/namespaces/default/configmaps/c",
                "delete",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/configmaps",
                "deletecollection",
            ),
            ("GET", "/api/v1/namespaces", "list"),
            ("GET", "/api/v1/namespaces/default", "get"),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                "create",
            ),
            ("GET", "/version", "get"),
            ("GET", "/api", "get"),
            ("GET", "/apis/apps", "get"),
            ("POST", "/livez", "post"),
        ] {
            assert_eq!(info(method, uri).verb, verb, "{method} {uri}");
        }
    }

    #[test]
    fn object_ref_is_read_from_the_path() {
        let i = info(
            "GET",
            "/apis/apps/v1/namespaces/prod/deployments/web/status",
        );
        assert_eq!(
            i.object.unwrap(),
            ObjectRef {
                resource: "deployments".into(),
                namespace: "prod".into(),
                name: "web".into(),
                api_group: "apps".into(),
                api_version: "v1".into(),
                subresource: "status".into(),
            }
        );
        let ns = info("GET", "/api/v1/namespaces/prod").object.unwrap();
        assert_eq!(
            (ns.resource.as_str(), ns.name.as_str()),
            ("namespaces", "prod")
        );
        assert!(info("GET", "/healthz").object.is_none());
    }

    #[test]
    fn long_running_requests_are_kube_s() {
        assert!(info("GET", "/api/v1/namespaces/d/pods?watch=true").long_running);
        assert!(info("GET", "/api/v1/namespaces/d/pods/p/log?follow=true").long_running);
        assert!(info("POST", "/api/v1/namespaces/d/pods/p/exec").long_running);
        assert!(!info("GET", "/api/v1/namespaces/d/pods").long_running);
        assert!(parse(&Method::GET, &"/anything".parse().unwrap(), true).long_running);
    }

    #[test]
    fn a_named_cluster_path_is_read_without_its_prefix() {
        let watch = info("GET", "/k8s/clusters/east/api/v1/namespaces/d/pods?watch=1");
        assert_eq!(watch.verb, "watch");
        assert!(watch.long_running);
        let object = info(
            "DELETE",
            "/k8s/clusters/east/api/v1/namespaces/d/configmaps/c",
        )
        .object
        .unwrap();
        assert_eq!(
            (object.resource.as_str(), object.name.as_str()),
            ("configmaps", "c")
        );
        assert_eq!(info("GET", "/k8s/clusters/east").verb, "get");
    }

    #[test]
    fn classify_agrees_with_parse() {
        for uri in [
            "/api/v1/namespaces/d/pods?watch=1",
            "/apis/apps/v1/deployments",
            "/version",
        ] {
            let u: Uri = uri.parse().unwrap();
            let full = parse(&Method::GET, &u, false);
            let (light, resource) = classify(&Method::GET, &u, false);
            assert_eq!(resource, full.object.is_some());
            assert_eq!(object_ref(&u), full.object);
            assert_eq!(
                (full.verb, full.long_running),
                (light.verb, light.long_running)
            );
        }
    }

    #[test]
    fn odd_paths_never_panic() {
        for uri in [
            "/",
            "//",
            "/api/",
            "/apis//",
            "/api/v1/",
            "/api/v1/watch",
            "/api/v1/namespaces/",
        ] {
            let _ = info("GET", uri);
        }
    }
}
