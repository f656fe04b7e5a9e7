//! The double's endpoints, after authentication, impersonation and
//! authorization.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::impersonation::effective_user;
use super::rbac::{allowed, Attributes};
use super::{RecordedRequest, State};

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, value: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: StatusCode, reason: &str, message: &str, kind: Option<&str>) -> Response<Body> {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    if let Some(kind) = kind {
        body["details"] = json!({"kind": kind});
    }
    full(code, body)
}

pub(crate) async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // The proxy's own readiness checks are not requests made for a caller:
    // they are answered, not recorded.
    let check = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|agent| agent.starts_with(authproxy::readiness::CHECK_USER_AGENT));
    if let (false, Ok(mut log)) = (check, state.requests.lock()) {
        log.push(RecordedRequest {
            method: req.method().clone(),
            uri: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .parse()
                .unwrap_or_default(),
            version: req.version(),
            headers: req.headers().clone(),
        });
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let requester = token.and_then(|t| state.tokens.lock().ok().and_then(|m| m.get(&t).cloned()));
    let Some(mut requester) = requester else {
        return Ok(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            None,
        ));
    };
    if !requester.groups.iter().any(|g| g == "system:authenticated") {
        requester.groups.push("system:authenticated".into());
    }
    let request_attrs = Attributes::from_request(req.method(), req.uri().path(), req.uri().query());
    let user = match effective_user(&requester, req.headers(), &state.rules, &request_attrs) {
        Ok(user) => user,
        Err(refusal) => {
            let reason = if refusal.code == StatusCode::FORBIDDEN {
                "Forbidden"
            } else {
                "BadRequest"
            };
            return Ok(status(refusal.code, reason, &refusal.message, None));
        }
    };
    let path = req.uri().path().to_owned();
    let attrs = Attributes::from_request(req.method(), &path, req.uri().query());
    if attrs.path.is_none() && !allowed(&state.rules, &user, &attrs) {
        let kind = attrs
            .resource
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        return Ok(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &attrs.forbidden_message(&user.username),
            Some(&kind),
        ));
    }
    // Like kube-apiserver, refusals above are answered without reading the
    // body (filters run first); a request that gets this far has its body
    // read before it is answered. Upgrade requests keep their connection.
    if !req.headers().contains_key(header::UPGRADE) {
        while let Some(frame) = req.body_mut().frame().await {
            if frame.is_err() {
                break;
            }
        }
    }
    Ok(route(&state, req, &path, &attrs, user))
}

fn route(
    state: &State,
    req: Request<Incoming>,
    path: &str,
    attrs: &Attributes,
    user: super::UserInfo,
) -> Response<Body> {
    match (req.method(), path) {
        // What kube proxies to (a service's own login, an aggregated API
        // server) may answer 401 to an authenticated user.
        (&Method::GET, p) if p.ends_with("/proxy/needs-login") => {
            let mut response = full(
                StatusCode::UNAUTHORIZED,
                json!({"message": "the service behind asks for its own login"}),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"grafana\""),
            );
            response
        }
        (&Method::GET, "/version") => full(
            StatusCode::OK,
            json!({"major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit": "double", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        (&Method::GET, "/api") => full(
            StatusCode::OK,
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        (&Method::GET, "/apis") => full(
            StatusCode::OK,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{"name": "authentication.k8s.io", "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}], "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"}}]}),
        ),
        (&Method::GET, "/api/v1") => full(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["create", "delete", "get", "list", "watch"], "shortNames": ["po"]},
            {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
            {"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
            {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["get", "list"], "shortNames": ["ns"]}]}),
        ),
        (&Method::GET, "/apis/authentication.k8s.io/v1") => full(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "groupVersion": "authentication.k8s.io/v1", "resources": [
            {"name": "selfsubjectreviews", "singularName": "", "namespaced": false, "kind": "SelfSubjectReview", "verbs": ["create"]},
            {"name": "tokenreviews", "singularName": "", "namespaced": false, "kind": "TokenReview", "verbs": ["create"]}]}),
        ),
        (&Method::POST, "/apis/authentication.k8s.io/v1/selfsubjectreviews") => full(
            StatusCode::CREATED,
            json!({
            "kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": null},
            "status": {"userInfo": user}}),
        ),
        _ if attrs.resource == "pods"
            && attrs.api_group.is_empty()
            && !attrs.namespace.is_empty() =>
        {
            pods(state, attrs)
        }
        _ if ["pods/exec", "pods/attach", "pods/portforward"]
            .contains(&attrs.resource.as_str()) =>
        {
            upgrade(req)
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        ),
    }
}

fn pod(name: &str, namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
        "uid": format!("uid-{name}"), "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}, "status": {"phase": "Running"}})
}

const PODS: [&str; 2] = ["web-0", "web-1"];

fn pods(state: &State, attrs: &Attributes) -> Response<Body> {
    match attrs.verb.as_str() {
        "list" => {
            let items: Vec<Value> = PODS.iter().map(|n| pod(n, &attrs.namespace)).collect();
            full(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        "get" if PODS.contains(&attrs.name.as_str()) => {
            full(StatusCode::OK, pod(&attrs.name, &attrs.namespace))
        }
        "get" => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{}\" not found", attrs.name),
            Some("pods"),
        ),
        "watch" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            let (events, interval, namespace) = (
                state.watch_events,
                state.watch_interval,
                attrs.namespace.clone(),
            );
            tokio::spawn(async move {
                for i in 0..events {
                    if i > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    let line = format!(
                        "{}\n",
                        json!({"type": "ADDED", "object": pod(&format!("watched-{i}"), &namespace)})
                    );
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed",
            None,
        ),
    }
}

fn upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let wants_upgrade = req
        .headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(protocol) = req
        .headers()
        .get(header::UPGRADE)
        .cloned()
        .filter(|_| wants_upgrade)
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
            None,
        );
    };
    let accept = req.headers().get("sec-websocket-key").map(|key| {
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        base64::engine::general_purpose::STANDARD.encode(sha.finalize())
    });
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut read, &mut write).await;
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut().insert(header::UPGRADE, protocol);
    if let Some(accept) = accept.and_then(|a| HeaderValue::from_str(&a).ok()) {
        r.headers_mut().insert("sec-websocket-accept", accept);
    }
    r
}
