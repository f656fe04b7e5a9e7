//! What a Kubernetes API request is about, read from its method and path the
//! way kube-apiserver's `RequestInfoFactory` reads them: the `verb` of kube's
//! audit log and RBAC (`get`, `list`, `watch`, `create`, `update`, `patch`,
//! `delete`, `deletecollection`, `proxy`), the object (`objectRef`), and
//! whether the request is long-running (kube's check: the `watch` and
//! `proxy` verbs, the `attach`, `exec`, `proxy`, `log` and `portforward`
//! subresources).
//!
//! One reading for every part of the proxy (the long-running caps, the
//! audit log, metrics), and it is kube's:
//! - the path is read percent-decoded, as Go's `URL.Path` is (after the
//!   proxy resolved its dot-segments, as kube-apiserver does);
//! - the query is read as Go's `URL.Query()`: keys and values decoded (`+`
//!   is a space), pairs that do not decode skipped, the first value of a
//!   repeated key wins;
//! - a flag (`watch`, `follow`) is true when present with any value but `0`
//!   or `false` in any letter case (apimachinery's string-to-bool), so
//!   `?watch`, `?watch=t` and `?watch=%31` are watches;
//! - `/watch/` and `/proxy/` after the version set the verb whatever the
//!   method; `namespaces/<ns>/status` and `/finalize` are subresources of the
//!   namespace; a `GET` of a named object stays `get` even with `?watch=1`.
//!
//! Parsing never fails: a path that is not a resource path is a
//! non-resource request whose verb is the lower-case HTTP method. A path
//! below a named cluster (`/k8s/clusters/<name>/...`) is read without that
//! prefix, as the cluster's API server reads it.

use std::borrow::Cow;

use http::{Method, Uri};
use serde::Serialize;

/// The first value of `key` in `query`, read as Go's `URL.Query()` reads it
/// (see the module docs); `None` when the key is absent.
pub fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<Cow<'a, str>> {
    query?
        .split('&')
        // Go refuses pairs holding ';' (since 1.17) and skips empty ones.
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = query_unescape(k)?;
            if k != key {
                return None;
            }
            query_unescape(v)
        })
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; `None` for a bad
/// escape. Bytes that are not UTF-8 are kept as U+FFFD: Go does not check,
/// and such a value is still neither `0` nor `false` to kube.
fn query_unescape(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains(['%', '+']) {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// apimachinery's string-to-bool: false for `0` and `false` (any case),
/// true for anything else, the empty value included.
pub fn kube_bool(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

/// Whether the query sets the flag `key` as kube reads it.
pub fn query_flag(query: Option<&str>, key: &str) -> bool {
    query_value(query, key).is_some_and(|v| kube_bool(&v))
}

/// The path as Go's `URL.Path` holds it: percent-decoded (bytes that are
/// not UTF-8 kept as U+FFFD, so the segments before them read as kube reads
/// them; a bad escape leaves the path as sent, which Go refuses).
fn decoded_path(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            else {
                return Cow::Borrowed(path);
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

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

/// The object a request names, borrowed from its path.
#[derive(Default)]
struct Parts<'a> {
    api_group: &'a str,
    api_version: &'a str,
    namespace: &'a str,
    resource: &'a str,
    name: Cow<'a, str>,
    subresource: &'a str,
}

impl Parts<'_> {
    fn to_object(&self) -> ObjectRef {
        ObjectRef {
            resource: self.resource.to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.clone().into_owned(),
            api_group: self.api_group.to_owned(),
            api_version: self.api_version.to_owned(),
            subresource: self.subresource.to_owned(),
        }
    }
}

/// Whether kube's list options decode from `query` (else kube reads only
/// the watch flag): its integer options are integers and its field
/// selector parses.
fn list_options_decode(query: Option<&str>) -> bool {
    let integer = |key| query_value(query, key).is_none_or(|v| v.parse::<i64>().is_ok());
    integer("limit")
        && integer("timeoutSeconds")
        && query_value(query, "fieldSelector").is_none_or(|s| field_selector_terms(&s).is_some())
}

/// The terms of a field selector as `(field, operator, value)`, parsed as
/// apimachinery's `fields.ParseSelector` parses them: split on commas that
/// are not escaped, sorted, empty terms skipped, each split at its first
/// operator (`!=`, `==`, `=`; the field as written), the value unescaped
/// (`\\`, `\,` and `\=`; any other escape, or a bare `,` or `=`, is an error).
/// `None` when it does not parse.
fn field_selector_terms(selector: &str) -> Option<Vec<(&str, &'static str, String)>> {
    let mut parts = Vec::new();
    if !selector.is_empty() {
        let mut start = 0;
        let mut in_slash = false;
        for (i, c) in selector.char_indices() {
            if in_slash {
                in_slash = false;
            } else if c == '\\' {
                in_slash = true;
            } else if c == ',' {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
        }
        parts.push(&selector[start..]);
    }
    parts.sort_unstable();
    let mut terms = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let (at, op) = part.char_indices().find_map(|(i, _)| {
            ["!=", "==", "="]
                .into_iter()
                .find(|op| part[i..].starts_with(op))
                .map(|op| (i, op))
        })?;
        terms.push((
            &part[..at],
            op,
            unescape_selector_value(&part[at + op.len()..])?,
        ));
    }
    Some(terms)
}

/// apimachinery's `fields.UnescapeValue`.
fn unescape_selector_value(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut in_slash = false;
    for c in value.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return None;
            }
            out.push(c);
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' || c == '=' {
            return None;
        } else {
            out.push(c);
        }
    }
    (!in_slash).then_some(out)
}

/// The name a field selector requires (`metadata.name=x` or `==x`), when it
/// is one kube accepts as a path segment.
fn selected_name(selector: &str) -> Option<String> {
    field_selector_terms(selector)?
        .into_iter()
        .find(|(field, op, _)| *field == "metadata.name" && *op != "!=")
        .map(|(_, _, value)| value)
        .filter(|name| name != "." && name != ".." && !name.contains(['/', '%']))
}

/// How a request was read: its verb, the object it names (borrowed from
/// the decoded path) and kube's long-running check.
struct Reading<'a> {
    verb: &'static str,
    parts: Option<Parts<'a>>,
    long_running: bool,
}

/// Reads the decoded `path` and `query` as kube's `RequestInfoFactory`.
fn read<'a>(
    method: &Method,
    path: &'a str,
    query: Option<&str>,
    upgrade: bool,
    routed: bool,
) -> Reading<'a> {
    let non_resource = Reading {
        verb: method_verb(method),
        parts: None,
        // kube's check: non-resource profiles stream for as long as asked.
        long_running: upgrade || path.starts_with("/debug/pprof/"),
    };
    // Above a router of named clusters, `/k8s/clusters/<name>/api/...` is
    // read as the cluster's API server will read what it is sent.
    let path = if routed {
        crate::upstream::router::strip_cluster_prefix(path)
    } else {
        path
    };
    // The first segments, as many as kube reads (`apis/<group>/<version>/
    // watch/namespaces/<ns>/<resource>/<name>/<subresource>`), on the stack:
    // this runs on every request.
    let mut seen = [""; 9];
    let mut count = 0;
    for (slot, segment) in seen.iter_mut().zip(crate::path::segments(path)) {
        *slot = segment;
        count += 1;
    }
    // kube needs at least prefix, (group,) version and one more part.
    let (api_group, api_version, rest) = match &seen[..count] {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return non_resource,
    };
    let mut verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let mut rest = rest;
    // `/watch/...` and `/proxy/...`: kube's special verbs, whatever the method.
    if let [special @ ("watch" | "proxy"), after @ ..] = rest {
        if after.is_empty() {
            // kube: "unable to determine kind and namespace from url".
            return non_resource;
        }
        verb = if *special == "watch" {
            "watch"
        } else {
            "proxy"
        };
        rest = after;
    }
    let mut parts = Parts {
        api_group,
        api_version,
        ..Parts::default()
    };
    // `namespaces/<ns>/<resource>...`; `namespaces/<ns>` and its `status`
    // and `finalize` are the namespace object itself.
    if let ["namespaces", namespace, more @ ..] = rest {
        parts.namespace = namespace;
        if !more.is_empty() && !matches!(more[0], "status" | "finalize") {
            rest = more;
        }
    }
    // rest: resource/name/subresource/...; the proxy verb has no subresource.
    parts.resource = rest.first().copied().unwrap_or("");
    parts.name = Cow::Borrowed(rest.get(1).copied().unwrap_or(""));
    if verb != "proxy" {
        parts.subresource = rest.get(2).copied().unwrap_or("");
    }
    if parts.name.is_empty() && verb == "get" {
        verb = if query_flag(query, "watch") {
            "watch"
        } else {
            "list"
        };
        // kube names the object a list or watch selects by name, when its
        // list options decode.
        if list_options_decode(query) {
            if let Some(name) =
                query_value(query, "fieldSelector").and_then(|selector| selected_name(&selector))
            {
                parts.name = Cow::Owned(name);
            }
        }
    }
    if parts.name.is_empty() && verb == "delete" {
        verb = "deletecollection";
    }
    if verb.is_empty() {
        verb = method_verb(method);
    }
    let long_running = upgrade
        || matches!(verb, "watch" | "proxy")
        || LONG_RUNNING_SUBRESOURCES.contains(&parts.subresource);
    Reading {
        verb,
        parts: Some(parts),
        long_running,
    }
}

/// Reads `uri` with `f`: its path as it will be forwarded (dot-segments
/// resolved; a path that cannot be forwarded is read as sent, and refused
/// later), then decoded as kube decodes it. `routed`: the path is read above
/// a router of named clusters, which removes their prefix.
fn with_reading<T>(
    method: &Method,
    uri: &Uri,
    upgrade: bool,
    routed: bool,
    f: impl FnOnce(Reading<'_>) -> T,
) -> T {
    let resolved = crate::path::normalize(uri.path()).unwrap_or(Cow::Borrowed(uri.path()));
    let path = decoded_path(&resolved);
    f(read(method, &path, uri.query(), upgrade, routed))
}

/// Whether a request holds its stream open for as long as the caller likes
/// (what the long-running caps count): kube's long-running requests, but a
/// `log` only with `follow` (a plain `kubectl logs` ends when the log is
/// sent), and every protocol upgrade. `uri` is the request as it is
/// forwarded: below a router, a named cluster's path without its prefix. A
/// path that still starts with a cluster prefix is read both as it is and
/// without the prefix, and counted when either holds a stream: the server
/// behind may itself route named clusters (a single upstream that is a
/// multi-cluster proxy), and a cap errs toward counting.
pub fn holds_stream(method: &Method, uri: &Uri, upgrade: bool) -> bool {
    let resolved = crate::path::normalize(uri.path()).unwrap_or(Cow::Borrowed(uri.path()));
    let path = decoded_path(&resolved);
    let holds = |path: &str| {
        let r = read(method, path, uri.query(), upgrade, false);
        let log = r.parts.as_ref().is_some_and(|p| p.subresource == "log");
        r.long_running && (!log || upgrade || query_flag(uri.query(), "follow"))
    };
    if holds(&path) {
        return true;
    }
    let below = crate::upstream::router::strip_cluster_prefix(&path);
    below.len() != path.len() && holds(below)
}

/// Reads `method` and `uri` as kube-apiserver does, above a router of
/// named clusters (`/k8s/clusters/<name>/api/...` is read as that cluster
/// reads `/api/...`). `upgrade` marks a protocol upgrade (exec, attach,
/// port-forward), always long-running.
pub fn parse(method: &Method, uri: &Uri, upgrade: bool) -> RequestInfo {
    with_reading(method, uri, upgrade, true, |r| RequestInfo {
        verb: r.verb,
        object: r.parts.map(|p| p.to_object()),
        long_running: r.long_running,
    })
}

/// What kube-apiserver's authorizer is asked about a request: its verb, and
/// the object of a resource request or the path of any other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerAttributes {
    /// kube's verb (`list`, `get`, `create`; the method in lower case for
    /// a non-resource request).
    pub verb: String,
    /// The object of a resource request.
    pub object: Option<ObjectRef>,
    /// The path (dot-segments resolved), what a non-resource request is
    /// authorized on.
    pub path: String,
}

/// Reads `method` and `uri` as kube-apiserver's authorizer sees the request
/// (`uri` as the API server receives it: below any router of named
/// clusters). `upgrade` marks a protocol upgrade.
pub fn authorizer_attributes(method: &Method, uri: &Uri, upgrade: bool) -> AuthorizerAttributes {
    let path = crate::path::normalize(uri.path())
        .unwrap_or(Cow::Borrowed(uri.path()))
        .into_owned();
    with_reading(method, uri, upgrade, false, |r| AuthorizerAttributes {
        verb: r.verb.to_owned(),
        object: r.parts.map(|p| p.to_object()),
        path,
    })
}

/// Like [`parse`] without the object, for the hot path, `routed` saying
/// whether the request goes through a router of named clusters. Also says
/// whether the request names an object (see [`object_ref`]).
pub fn classify(method: &Method, uri: &Uri, upgrade: bool, routed: bool) -> (RequestInfo, bool) {
    with_reading(method, uri, upgrade, routed, |r| {
        (
            RequestInfo {
                verb: r.verb,
                object: None,
                long_running: r.long_running,
            },
            r.parts.is_some(),
        )
    })
}

/// The object a request's path names, if it names one (the method does
/// not change it); `routed` as for [`classify`].
pub fn object_ref(uri: &Uri, routed: bool) -> Option<ObjectRef> {
    with_reading(&Method::GET, uri, false, routed, |r| {
        r.parts.map(|p| p.to_object())
    })
}

/// What a request to the kubelet's API behind `nodes/<node>/proxy` runs in
/// a container, as the kubelet routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProxySession {
    /// `exec` or `attach` (a session over an upgraded stream), or `run`
    /// (one command, its output in the response body).
    pub kind: &'static str,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// The container (the path's last segment).
    pub container: String,
}

/// A command run in a container through the kubelet's API behind
/// `nodes/<node>/proxy` (`.../nodes/n1/proxy/exec/<namespace>/<pod>/
/// [<uid>/]<container>`, the same for `attach` and `run`). The path is read
/// as kube-apiserver forwards it: dot-segments resolved, escapes decoded,
/// empty segments dropped (it joins the rest of the path anew), and below
/// a cluster prefix as without it.
pub fn node_proxy_session(uri: &Uri) -> Option<NodeProxySession> {
    let resolved = crate::path::normalize(uri.path()).unwrap_or(Cow::Borrowed(uri.path()));
    let path = decoded_path(&resolved);
    let path = crate::upstream::router::strip_cluster_prefix(&path);
    let mut segments = path.trim_start_matches('/').split('/');
    let (Some("api"), Some("v1"), Some("nodes"), Some(node), Some("proxy")) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return None;
    };
    if node.is_empty() {
        return None;
    }
    // What the kubelet receives: the rest, joined again without empty
    // segments (kube-apiserver cleans the path it proxies).
    let rest: Vec<&str> = segments.filter(|s| !s.is_empty()).collect();
    let kind = match rest.first().copied()? {
        "exec" => "exec",
        "attach" => "attach",
        "run" => "run",
        _ => return None,
    };
    // The kubelet's routes: /<kind>/{namespace}/{pod}/{container} and
    // /<kind>/{namespace}/{pod}/{uid}/{container}.
    if !(4..=5).contains(&rest.len()) {
        return None;
    }
    Some(NodeProxySession {
        kind,
        namespace: rest[1].to_owned(),
        pod: rest[2].to_owned(),
        container: rest[rest.len() - 1].to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, uri: &str) -> RequestInfo {
        parse(&method.parse().unwrap(), &uri.parse().unwrap(), false)
    }

    #[test]
    fn exec_and_attach_behind_a_nodes_proxy_are_read_as_the_kubelet_routes_them() {
        let read = |uri: &str| {
            node_proxy_session(&uri.parse().unwrap())
                .map(|s| (s.kind, s.namespace, s.pod, s.container))
        };
        let exec = Some(("exec", "dev".into(), "web".into(), "app".into()));
        assert_eq!(
            read("/api/v1/nodes/n1/proxy/exec/dev/web/app?command=sh"),
            exec
        );
        assert_eq!(
            read("/api/v1/nodes/n1:10250/proxy/attach/dev/web/uid-1/app"),
            Some(("attach", "dev".into(), "web".into(), "app".into()))
        );
        assert_eq!(
            read("/api/v1/nodes/n1/proxy/run/dev/web/app?cmd=ls"),
            Some(("run", "dev".into(), "web".into(), "app".into()))
        );
        // Every form kube-apiserver forwards as /exec/dev/web/app: escapes,
        // dot-segments, empty segments, a cluster prefix.
        for same in [
            "/api/v1/nodes/n1/proxy/%65xec/dev/web/app",
            "/api/v1/nodes/n1/proxy/logs/../exec/dev/web/app",
            "/k8s/clusters/edge/api/v1/nodes/n1/proxy/exec/dev/web/app",
            "/api/v1/nodes/n1/proxy//exec/dev/web/app",
            "/api/v1/nodes/n1/proxy/exec/dev//web/app/",
            "/api/v1/nodes/n1/proxy/%2Fexec/dev/web/app",
        ] {
            assert_eq!(read(same), exec, "{same}");
        }
        for other in [
            "/api/v1/nodes/n1/proxy/logs/",
            "/api/v1/nodes/n1/proxy/portForward/dev/web",
            "/api/v1/nodes/n1/proxy/exec/dev",
            "/api/v1/nodes/n1/proxy/exec/dev/web",
            "/api/v1/nodes/n1/exec/dev/web/app",
            "/api/v1/namespaces/dev/pods/web/exec",
        ] {
            assert_eq!(read(other), None, "{other}");
        }
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
            let (light, resource) = classify(&Method::GET, &u, false, true);
            assert_eq!(resource, full.object.is_some());
            assert_eq!(object_ref(&u, true), full.object);
            assert_eq!(
                (full.verb, full.long_running),
                (light.verb, light.long_running)
            );
        }
    }

    #[test]
    fn requests_are_read_as_kube_reads_them() {
        for (method, uri, verb, object) in [
            // a named object with ?watch is a get to kube
            (
                "GET",
                "/api/v1/namespaces/d/pods/p?watch=1",
                "get",
                "pods d/p",
            ),
            // the special verbs, whatever the method
            (
                "POST",
                "/api/v1/watch/namespaces/d/pods",
                "watch",
                "pods d/",
            ),
            (
                "GET",
                "/api/v1/proxy/namespaces/d/pods/p/x/y",
                "proxy",
                "pods d/p",
            ),
            // namespace subresources
            (
                "PUT",
                "/api/v1/namespaces/d/status",
                "update",
                "namespaces d/d status",
            ),
            (
                "PUT",
                "/api/v1/namespaces/d/finalize",
                "update",
                "namespaces d/d finalize",
            ),
            // flags as kube reads them
            ("GET", "/api/v1/pods?watch=yes", "watch", "pods /"),
            ("GET", "/api/v1/pods?watch=%31", "watch", "pods /"),
            ("GET", "/api/v1/pods?watch", "watch", "pods /"),
            ("GET", "/api/v1/pods?watch=0&watch=1", "list", "pods /"),
            ("GET", "/api/v1/pods?watch=%zz", "list", "pods /"),
            // a decoded path
            (
                "GET",
                "/api/v1/namespaces/d/config%6Daps/c",
                "get",
                "configmaps d/c",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/pods/a%2Fb",
                "get",
                "pods d/a b",
            ),
            // bytes that are not UTF-8: still a watch, still the segments before
            ("GET", "/api/v1/pods?watch=%FF", "watch", "pods /"),
            (
                "GET",
                "/api/v1/namespaces/d/pods/p/%70roxy/%FF",
                "get",
                "pods d/p proxy",
            ),
            (
                "GET",
                "/api/v1/%77atch/namespaces/d/configmaps/%FF",
                "watch",
                "configmaps d/\u{fffd}",
            ),
            // a selector with characters of several bytes never panics
            ("GET", "/api/v1/pods?fieldSelector=%C3%A9", "list", "pods /"),
            (
                "GET",
                "/api/v1/pods?fieldSelector=%C3%A9%5C%C3%A9=x",
                "list",
                "pods /",
            ),
            // too short for kube to name a resource
            ("GET", "/api/v1/watch", "get", ""),
            ("GET", "/apis/apps/v1", "get", ""),
            // a list or watch that selects one name names it
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name%3Dc1",
                "list",
                "configmaps d/c1",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?watch=1&fieldSelector=a%3Db,metadata.name%3D%3Dc1",
                "watch",
                "configmaps d/c1",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name!%3Dc1",
                "list",
                "configmaps d/",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?limit=x&fieldSelector=metadata.name%3Dc1",
                "list",
                "configmaps d/",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name%3D..",
                "list",
                "configmaps d/",
            ),
            // parsed as apimachinery parses selectors: terms sorted, empty ones
            // skipped, the field as written, values strictly unescaped
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name%3Db,metadata.name%3Da",
                "list",
                "configmaps d/a",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name%3Dc1,",
                "list",
                "configmaps d/c1",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=%20metadata.name%3Dc1",
                "list",
                "configmaps d/",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name%3Da%3Db",
                "list",
                "configmaps d/",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name%3Da%5C!",
                "list",
                "configmaps d/",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps?fieldSelector=metadata.name%3Da%5C%2Cb",
                "list",
                "configmaps d/a,b",
            ),
            // resolved before it is read
            (
                "GET",
                "/api/v1/x/../namespaces/d/pods?watch=1",
                "watch",
                "pods d/",
            ),
            (
                "GET",
                "/api/v1/namespaces/d/configmaps/../secrets",
                "list",
                "secrets d/",
            ),
        ] {
            let i = info(method, uri);
            let seen = i
                .object
                .map(|o| {
                    format!(
                        "{} {}/{} {}",
                        o.resource, o.namespace, o.name, o.subresource
                    )
                    .trim_end()
                    .to_owned()
                })
                .unwrap_or_default();
            assert_eq!((i.verb, seen.as_str()), (verb, object), "{method} {uri}");
        }
    }

    #[test]
    fn query_values_are_read_as_go_reads_them() {
        assert_eq!(query_value(Some("a=1&b=2"), "b").as_deref(), Some("2"));
        assert_eq!(query_value(Some("b=1&b=2"), "b").as_deref(), Some("1"));
        assert_eq!(
            query_value(Some("%62=x+y%21"), "b").as_deref(),
            Some("x y!")
        );
        assert_eq!(query_value(Some("b"), "b").as_deref(), Some(""));
        assert_eq!(query_value(Some("b=%zz&b=2"), "b").as_deref(), Some("2"));
        assert_eq!(query_value(Some("b=1;c=2"), "b"), None);
        assert_eq!(query_value(None, "b"), None);
        for (value, flag) in [
            ("", true),
            ("0", false),
            ("FaLsE", false),
            ("no", true),
            ("1", true),
        ] {
            assert_eq!(kube_bool(value), flag, "{value:?}");
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
