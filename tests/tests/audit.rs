//! The audit log against the real kube-apiserver: the proxy's event and
//! kube-apiserver's event join on one `auditID` (sent upstream as
//! `Audit-ID`); failed authentications are always logged, never with the
//! credential; the policy omits what it is told to.

use std::path::PathBuf;
use std::time::Duration;

use authproxy::server::RunningServer;
use authproxy_tests::kube::{kube, unique_marker, Kube, PROXY_SERVICE_ACCOUNT};
use authproxy_tests::observe::{audit_lines, start_observed_proxy};
use authproxy_tests::{curl_with_ca, wait_for, TestPki};
use serde_json::Value;

struct World {
    kube: &'static Kube,
    pki: TestPki,
    proxy: RunningServer,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

async fn world(audit: &str) -> anyhow::Result<World> {
    let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit.log");
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &kube.url(),
        kube.pki().ca_path(),
        kube.proxy_token(),
        "",
        &format!("audit: {{path: {}, {audit}}}", path.display()),
    )
    .await?;
    Ok(World {
        kube,
        pki,
        proxy,
        audit: path,
        _dir: dir,
    })
}

impl World {
    /// curl through the proxy with `-D -` (headers first); returns (code, headers+body).
    async fn curl(&self, args: &[&str]) -> anyhow::Result<(u16, String)> {
        let mut all = vec!["-D", "-"];
        all.extend_from_slice(args);
        curl_with_ca(self.pki.ca_path(), &all).await
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.proxy.addr())
    }

    async fn proxy_events(&self, agent: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        let path = self.audit.clone();
        let agent = agent.to_owned();
        wait_for(Duration::from_secs(10), "proxy audit events", || {
            let path = path.clone();
            let agent = agent.clone();
            async move {
                let events: Vec<Value> = audit_lines(&path)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|e| e["userAgent"] == agent.as_str())
                    .collect();
                if events.len() >= count {
                    Ok(Some(events))
                } else {
                    Err(format!("{} of {count}", events.len()))
                }
            }
        })
        .await
    }
}

fn response_audit_id(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("audit-id: ")
                .or_else(|| l.strip_prefix("Audit-Id: "))
        })
        .map(|v| v.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_kube_audit_events_join_on_one_audit_id() -> anyhow::Result<()> {
    let w = world("level: Metadata").await?;
    let agent = unique_marker("audit-join");
    let (code, text) = w
        .curl(&[
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            // A caller's own ID is replaced, never trusted.
            "-H",
            "Audit-ID: caller-chosen",
            // A caller's claim of where it came from (it is not one of
            // trustedProxies): replaced by the address the proxy saw.
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            &w.url("/api/v1/namespaces/default/configmaps?limit=1"),
        ])
        .await?;
    assert_eq!(code, 200, "{text}");
    let header_id = response_audit_id(&text).expect("Audit-Id response header");
    let ours = w.proxy_events(&agent, 1).await?;
    assert_eq!(ours.len(), 1, "{ours:?}");
    let event = &ours[0];
    assert_eq!(event["kind"], "Event");
    assert_eq!(event["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(event["level"], "Metadata");
    assert_eq!(event["stage"], "ResponseComplete");
    assert_eq!(event["verb"], "list");
    assert_eq!(
        event["requestURI"],
        "/api/v1/namespaces/default/configmaps?limit=1"
    );
    assert_eq!(event["user"]["username"], "alice");
    assert_eq!(event["user"]["groups"], serde_json::json!(["devs"]));
    assert_eq!(
        event["user"]["extra"]["authproxy.io/authenticator"],
        serde_json::json!(["static-tokens"])
    );
    // The address the proxy saw, never the caller's claim.
    assert_eq!(event["sourceIPs"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        event["objectRef"],
        serde_json::json!({"resource": "configmaps", "namespace": "default", "apiVersion": "v1"})
    );
    assert_eq!(event["responseStatus"]["code"], 200);
    // Who decided, as for every outcome; nobody was impersonated at the
    // caller's asking.
    assert_eq!(
        event["annotations"],
        serde_json::json!({
            "authproxy.io/authenticator": "static-tokens",
            "authproxy.io/authentication-result": "success",
        })
    );
    assert!(event.get("impersonatedUser").is_none(), "{event}");
    let id = event["auditID"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id, header_id);
    assert_ne!(id, "caller-chosen");

    // kube-apiserver logged the same request under the same ID.
    let theirs = w
        .kube
        .wait_audit(1, |e| e["auditID"] == id.as_str())
        .await?;
    assert_eq!(theirs[0]["userAgent"], agent.as_str());
    assert_eq!(theirs[0]["user"]["username"], PROXY_SERVICE_ACCOUNT);
    assert_eq!(theirs[0]["impersonatedUser"]["username"], "alice");
    assert_eq!(theirs[0]["verb"], "list");
    // Both logs name the same sources.
    assert_eq!(theirs[0]["sourceIPs"], event["sourceIPs"]);
    assert!(w
        .kube
        .audit_where(|e| e["auditID"] == "caller-chosen")?
        .is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_logged_whatever_the_policy_and_without_the_credential(
) -> anyhow::Result<()> {
    // Level None with every API path omitted: only failed authentications are written.
    let w = world("level: None, omitPaths: ['/api/*'], logReadOnly: false").await?;
    let agent = unique_marker("audit-refused");
    let secret = "not-a-real-token-c0ffee";
    let url = w.url("/api/v1/namespaces/default/pods");
    for credential in [
        vec!["-H".to_string(), format!("Authorization: Bearer {secret}")],
        vec![],
        vec!["-H".to_string(), "Authorization: Bearer alice-token".into()],
    ] {
        let mut args: Vec<&str> = vec!["-A", &agent];
        args.extend(credential.iter().map(String::as_str));
        args.push(&url);
        w.curl(&args).await?;
    }
    let events = w.proxy_events(&agent, 2).await?;
    // The good request (the third) is not logged: give the writer a barrier request to pass.
    let barrier = unique_marker("audit-barrier");
    w.curl(&["-A", &barrier, &url]).await?;
    w.proxy_events(&barrier, 1).await?;
    let events_now = audit_lines(&w.audit)?
        .into_iter()
        .filter(|e| e["userAgent"] == agent.as_str())
        .count();
    assert_eq!(events_now, 2, "{events:?}");
    for event in &events {
        assert_eq!(event["responseStatus"]["code"], 401);
        assert_eq!(event["responseStatus"]["reason"], "Unauthorized");
        assert_eq!(event["user"], serde_json::json!({}));
        assert_eq!(
            event["annotations"],
            serde_json::json!({
                "authproxy.io/authenticator": "none",
                "authproxy.io/authentication-result": "unclaimed",
            })
        );
        assert_eq!(event["verb"], "list");
    }
    let text = std::fs::read_to_string(&w.audit)?;
    assert!(
        !text.contains(secret),
        "the credential reached the audit log"
    );
    assert!(
        !text.contains("alice-token"),
        "the credential reached the audit log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_logged_when_it_starts_and_when_it_ends() -> anyhow::Result<()> {
    let w = world("omitPaths: ['/livez']").await?;
    let agent = unique_marker("audit-watch");
    let (code, _) = w
        .curl(&[
            "-A",
            &agent,
            "--max-time",
            "2",
            "-H",
            "Authorization: Bearer alice-token",
            &w.url("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1"),
        ])
        .await?;
    assert_eq!(code, 200);
    // ResponseStarted at the head, ResponseComplete when the stream ended, as kube logs them.
    let events = w.proxy_events(&agent, 2).await?;
    assert_eq!(events[0]["stage"], "ResponseStarted");
    assert_eq!(events[1]["stage"], "ResponseComplete");
    assert_eq!(events[0]["auditID"], events[1]["auditID"]);
    assert_eq!(events[0]["verb"], "watch");
    let id = events[0]["auditID"].as_str().unwrap_or_default().to_owned();
    w.kube
        .wait_audit(1, |e| e["auditID"] == id.as_str())
        .await?;
    Ok(())
}

/// The audit log reads the path as it is forwarded: dot-segments cannot hide
/// a request behind an omitted path, nor make a list look like a get of an
/// object named `..`; the proxy's event and kube's agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_the_audit_reads_the_path() -> anyhow::Result<()> {
    let w = world("level: Metadata, omitPaths: ['/healthz*']").await?;
    for (sent, uri, resource) in [
        (
            "/healthz/../api/v1/namespaces/default/configmaps",
            "/api/v1/namespaces/default/configmaps",
            "configmaps",
        ),
        (
            "/api/v1/namespaces/default/configmaps/../pods",
            "/api/v1/namespaces/default/pods",
            "pods",
        ),
    ] {
        let agent = unique_marker("dot-segments");
        let (code, text) = w
            .curl(&[
                "--path-as-is",
                "-A",
                &agent,
                "-H",
                "Authorization: Bearer alice-token",
                &w.url(sent),
            ])
            .await?;
        assert_eq!(code, 200, "{sent}: {text}");
        let ours = w.proxy_events(&agent, 1).await?;
        let event = &ours[0];
        assert_eq!(event["requestURI"], uri, "{sent}: {event}");
        assert_eq!(event["verb"], "list", "{sent}: {event}");
        assert_eq!(event["objectRef"]["resource"], resource, "{sent}: {event}");
        assert!(event["objectRef"]["name"].is_null(), "{sent}: {event}");
        let id = event["auditID"].as_str().unwrap_or_default().to_owned();
        let theirs = w
            .kube
            .wait_audit(1, |e| e["auditID"] == id.as_str())
            .await?;
        for field in ["requestURI", "verb", "objectRef"] {
            assert_eq!(theirs[0][field], event[field], "{sent}: {field}");
        }
    }
    Ok(())
}

/// Paths of the kube-oracle corpus: resource and non-resource, odd forms
/// (dot-segments, escapes, empty segments, namespace subresources, the
/// deprecated verb prefixes).
const CORPUS_PATHS: [&str; 21] = [
    "/api/v1/namespaces/default/configmaps",
    "/api/v1/namespaces/default/configmaps/cm-1",
    "/api/v1/namespaces/default/pods/p-1/log",
    "/api/v1/namespaces/default/pods/p-1/status",
    "/api/v1/namespaces/default",
    "/api/v1/namespaces/default/status",
    "/api/v1/namespaces/default/finalize",
    "/api/v1/namespaces",
    "/api/v1/watch/namespaces/default/configmaps",
    "/api/v1/proxy/namespaces/default/pods/p-1/x",
    "/apis/apps/v1/namespaces/default/deployments/d-1/scale",
    "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "/api/v1/x/../namespaces/default/configmaps",
    "/api/v1/namespaces/default/configmaps/../pods",
    "/k8s/clusters/a/../../api/v1/namespaces/default/configmaps",
    "/k8s/clusters/a/api/v1/namespaces/default/configmaps",
    "/api/v1/namespaces/./default/config%6Daps",
    "/api/v1/namespaces/default/configmaps/a%2Fb",
    "/api//v1/namespaces/default/configmaps",
    "/apis/apps/v1",
    "/version",
];

/// Query forms of the corpus: every spelling of the flags, repeated keys,
/// selectors that name an object, options that do not decode.
const CORPUS_QUERIES: [&str; 11] = [
    "",
    "?watch=1",
    "?watch=t",
    "?watch",
    "?watch=0",
    "?watch=false&watch=1",
    "?w%61tch=1",
    "?follow=yes",
    "?fieldSelector=metadata.name%3Dcm-1&limit=1&limit=x",
    "?fieldSelector=metadata.name%3D%3Dcm-1",
    "?fieldSelector=metadata.name%3Dcm-2,metadata.name%3Dcm-1,",
];

/// kube-apiserver as the oracle: for several hundred odd requests sent
/// through the proxy, the proxy's audit event and kube's (the same audit ID)
/// agree on `requestURI`, `verb` and `objectRef`, and on whether the request
/// was long-running (kube logs `ResponseStarted` only for those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_reads_every_request_of_a_corpus_as_kube_does() -> anyhow::Result<()> {
    use futures_util::stream::{self, StreamExt};
    let w = world("level: Metadata").await?;
    let mut corpus: Vec<(&str, String)> = Vec::new();
    for path in CORPUS_PATHS {
        for query in CORPUS_QUERIES {
            corpus.push(("GET", format!("{path}{query}")));
        }
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            for query in ["", "?watch=1"] {
                corpus.push((method, format!("{path}{query}")));
            }
        }
    }
    assert!(corpus.len() >= 300, "{}", corpus.len());
    let marker = unique_marker("corpus");
    let sent: Vec<anyhow::Result<()>> = stream::iter(corpus.iter().enumerate())
        .map(|(i, (method, target))| {
            let w = &w;
            let agent = format!("{marker}-{i}");
            async move {
                let url = w.url(target);
                let mut args = vec![
                    "--path-as-is",
                    "--max-time",
                    "2",
                    "-o",
                    "/dev/null",
                    "-X",
                    method,
                    "-A",
                    &agent,
                    "-H",
                    "Authorization: Bearer alice-token",
                ];
                if *method != "GET" && *method != "DELETE" {
                    args.extend(["-H", "Content-Type: application/json", "-d", "{}"]);
                }
                args.push(&url);
                // Watches end at --max-time: only the audit matters here.
                let _ = curl_with_ca(w.pki.ca_path(), &args).await;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for result in sent {
        result?;
    }
    // Every request has its closing event in both logs.
    let ours_by_agent = wait_for(Duration::from_secs(30), "the proxy's events", || {
        let path = w.audit.clone();
        let marker = marker.clone();
        let want = corpus.len();
        async move {
            let events: Vec<Value> = audit_lines(&path)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|e| {
                    e["userAgent"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&marker))
                })
                .collect();
            let done = events
                .iter()
                .filter(|e| e["stage"] == "ResponseComplete")
                .count();
            Ok((done >= want).then_some(events))
        }
    })
    .await?;
    let ids: std::collections::HashSet<String> = ours_by_agent
        .iter()
        .filter_map(|e| e["auditID"].as_str().map(str::to_owned))
        .collect();
    let kube_events = wait_for(Duration::from_secs(30), "kube's events", || {
        let ids = &ids;
        let kube = w.kube;
        async move {
            let events = kube
                .audit_where(|e| e["auditID"].as_str().is_some_and(|id| ids.contains(id)))
                .map_err(|e| e.to_string())?;
            let done: std::collections::HashSet<&str> = events
                .iter()
                .filter(|e| e["stage"] == "ResponseComplete")
                .filter_map(|e| e["auditID"].as_str())
                .collect();
            Ok((done.len() >= ids.len()).then_some(events.clone()))
        }
    })
    .await?;
    let strip = |object: &Value| {
        let mut object = object.clone();
        if let Some(map) = object.as_object_mut() {
            map.remove("uid");
            map.remove("resourceVersion");
        }
        object
    };
    let mut differences = Vec::new();
    for (i, (method, target)) in corpus.iter().enumerate() {
        let agent = format!("{marker}-{i}");
        let ours: Vec<&Value> = ours_by_agent
            .iter()
            .filter(|e| e["userAgent"] == agent.as_str())
            .collect();
        let Some(complete) = ours.iter().find(|e| e["stage"] == "ResponseComplete") else {
            differences.push(format!("{method} {target}: no proxy event"));
            continue;
        };
        let id = complete["auditID"].as_str().unwrap_or_default();
        let theirs: Vec<&Value> = kube_events.iter().filter(|e| e["auditID"] == id).collect();
        let Some(kube_complete) = theirs.iter().find(|e| e["stage"] == "ResponseComplete") else {
            differences.push(format!("{method} {target}: no kube event"));
            continue;
        };
        for field in ["requestURI", "verb"] {
            if complete[field] != kube_complete[field] {
                differences.push(format!(
                    "{method} {target}: {field} proxy {} kube {}",
                    complete[field], kube_complete[field]
                ));
            }
        }
        if strip(&complete["objectRef"]) != strip(&kube_complete["objectRef"]) {
            differences.push(format!(
                "{method} {target}: objectRef proxy {} kube {}",
                complete["objectRef"], kube_complete["objectRef"]
            ));
        }
        let started = |events: &[&Value]| events.iter().any(|e| e["stage"] == "ResponseStarted");
        if started(&ours) != started(&theirs) {
            differences.push(format!(
                "{method} {target}: long-running proxy {} kube {}",
                started(&ours),
                started(&theirs)
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} requests read differently:\n{}",
        differences.len(),
        corpus.len(),
        differences.join("\n")
    );
    Ok(())
}
