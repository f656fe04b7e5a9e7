//! The demo's embedded API server: enough of kube-apiserver to show
//! impersonation at work with curl and kubectl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_core::status::{Reason, Status};
use proxy_core::{ProxyBody, UserInfo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::error::DemoError;
use super::pki::DemoFiles;

/// The service account the proxy presents itself as.
const PROXY_USER: &str = "system:serviceaccount:authproxy:proxy";

pub struct RunningUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningUpstream {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(self) {
        self.task.abort();
    }
}

pub async fn start(files: &DemoFiles, proxy_token: String) -> Result<RunningUpstream, DemoError> {
    let tls = crate::server::plain_tls(&files.proxy_cert, &files.proxy_key)
        .map_err(|e| DemoError::Config(e.to_string()))?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let token = Arc::new(proxy_token);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let token = token.clone();
                    async move { Ok::<_, Infallible>(answer(req, &token)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(RunningUpstream { addr, task })
}

fn json_response(status: StatusCode, value: Value) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

/// The effective user: the impersonated one when the proxy asks, as kube does.
fn effective_user(headers: &HeaderMap) -> Result<UserInfo, Status> {
    let Some(username) = values(headers, "impersonate-user").into_iter().next() else {
        if headers
            .keys()
            .any(|k| k.as_str().starts_with("impersonate-"))
        {
            return Err(Status::failure(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                "requested impersonation without impersonating a user",
            ));
        }
        return Ok(UserInfo {
            username: PROXY_USER.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ],
            ..Default::default()
        });
    };
    let mut user = UserInfo {
        username,
        uid: values(headers, "impersonate-uid").into_iter().next(),
        groups: values(headers, "impersonate-group"),
        ..Default::default()
    };
    for name in headers.keys() {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            let key = percent_decode(key).to_lowercase();
            user.extra.insert(key, values(headers, name.as_str()));
        }
    }
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".into());
    }
    Ok(user)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(req: Request<Incoming>, proxy_token: &str) -> Response<ProxyBody> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == proxy_token);
    if !authorized {
        return Status::unauthorized().into_response();
    }
    let user = match effective_user(req.headers()) {
        Ok(user) => user,
        Err(status) => return status.into_response(),
    };
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/version") => json_response(
            StatusCode::OK,
            json!({"major": "1", "minor": "30", "gitVersion": "v1.30.0-authproxy-demo", "platform": "linux/amd64"}),
        ),
        (&Method::GET, "/api") => json_response(
            StatusCode::OK,
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        (&Method::GET, "/apis") => json_response(
            StatusCode::OK,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{"name": "authentication.k8s.io", "versions": [{"groupVersion": "authentication.k8s.io/v1", "version": "v1"}], "preferredVersion": {"groupVersion": "authentication.k8s.io/v1", "version": "v1"}}]}),
        ),
        (&Method::GET, "/api/v1") => json_response(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [{"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["get", "list"], "shortNames": ["po"]}]}),
        ),
        (&Method::GET, "/apis/authentication.k8s.io/v1") => json_response(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "groupVersion": "authentication.k8s.io/v1", "resources": [{"name": "selfsubjectreviews", "singularName": "", "namespaced": false, "kind": "SelfSubjectReview", "verbs": ["create"]}]}),
        ),
        (&Method::POST, "/apis/authentication.k8s.io/v1/selfsubjectreviews") => json_response(
            StatusCode::CREATED,
            json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": null}, "status": {"userInfo": user}}),
        ),
        (&Method::GET, _) if path.starts_with("/api/v1/namespaces/") && path.ends_with("/pods") => {
            let namespace = path
                .trim_start_matches("/api/v1/namespaces/")
                .trim_end_matches("/pods");
            if !user.groups.iter().any(|g| g == "devs") {
                let message = format!("pods is forbidden: User \"{}\" cannot list resource \"pods\" in API group \"\" in the namespace \"{namespace}\"", user.username);
                return Status::failure(StatusCode::FORBIDDEN, Reason::Forbidden, message)
                    .into_response();
            }
            let as_table = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("as=Table"));
            json_response(StatusCode::OK, pods(namespace, as_table))
        }
        _ => Status::failure(
            StatusCode::NOT_FOUND,
            Reason::BadRequest,
            "the server could not find the requested resource",
        )
        .into_response(),
    }
}

fn pods(namespace: &str, as_table: bool) -> Value {
    let names = ["web-0", "web-1", "db-0"];
    if as_table {
        let rows: Vec<Value> = names
            .iter()
            .map(|n| json!({"cells": [n, "1/1", "Running", 0, "1h"], "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": n, "namespace": namespace}}}))
            .collect();
        return json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0},
                {"name": "Ready", "type": "string", "format": "", "description": "", "priority": 0},
                {"name": "Status", "type": "string", "format": "", "description": "", "priority": 0},
                {"name": "Restarts", "type": "integer", "format": "", "description": "", "priority": 0},
                {"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}],
            "rows": rows});
    }
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": namespace}, "status": {"phase": "Running"}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}
