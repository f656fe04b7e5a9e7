//! `kubectl --as` decided as kube-apiserver decides, shown by asking it:
//! every case (a caller, an identity to impersonate, a request) is sent
//! once straight to kube-apiserver as the caller (a client certificate its
//! `--client-ca-file` signed) and once through the proxy as the same caller
//! (a certificate with the same name and group, signed by the proxy's
//! client CA). Both must answer with the same status and the same message,
//! and where the request is a `SelfSubjectReview` that was allowed, with the
//! same effective user (the proxy adds only `authproxy.io/original-user`,
//! who really asked, to a user it forwards with its groups).
//!
//! The callers hold legacy grants (the `impersonate` verb), constrained
//! grants (KEP-5284: `impersonate:<mode>` on the identity's parts and
//! `impersonate-on:<mode>:<verb>` on what they may do as it), a mix, or
//! none. kube-apiserver 1.37 tries the constrained modes first.

use std::collections::BTreeMap;

use anyhow::Context as _;
use authproxy_tests::kube::{unique_marker, KubeEnv, PROXY_SERVICE_ACCOUNT};
use authproxy_tests::pki::CertFiles;
use authproxy_tests::TestPki;
use serde_json::Value;

/// What each caller may do. `c-none` has no grant at all.
const CALLER_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: oracle-legacy}
rules:
- apiGroups: [""]
  resources: [users]
  resourceNames: [t-user, "system:node:n1", "system:anonymous"]
  verbs: [impersonate]
- apiGroups: [""]
  resources: [groups]
  resourceNames: [g1, g2, g3, g4, "system:masters"]
  verbs: [impersonate]
- apiGroups: [""]
  resources: [serviceaccounts]
  resourceNames: [t-sa]
  verbs: [impersonate]
- apiGroups: [authentication.k8s.io]
  resources: [uids]
  resourceNames: [u1]
  verbs: [impersonate]
- apiGroups: [authentication.k8s.io]
  resources: [userextras/example.com/k, userextras/Bad]
  resourceNames: [v]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: oracle-legacy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: oracle-legacy}
subjects:
- {kind: User, name: c-legacy, apiGroup: rbac.authorization.k8s.io}
- {kind: User, name: a-legacy, apiGroup: rbac.authorization.k8s.io}
- {kind: User, name: k-legacy, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: oracle-constrained}
rules:
- apiGroups: [authentication.k8s.io]
  resources: [users]
  resourceNames: [t-user, "system:anonymous"]
  verbs: ["impersonate:user-info"]
- apiGroups: [authentication.k8s.io]
  resources: [groups]
  resourceNames: [g1, g2, g3, g4, "system:masters"]
  verbs: ["impersonate:user-info"]
- apiGroups: [authentication.k8s.io]
  resources: [uids]
  resourceNames: [u1]
  verbs: ["impersonate:user-info"]
- apiGroups: [authentication.k8s.io]
  resources: [userextras/example.com/k, userextras/Bad]
  resourceNames: [v]
  verbs: ["impersonate:user-info"]
- apiGroups: [authentication.k8s.io]
  resources: [serviceaccounts]
  resourceNames: [t-sa]
  verbs: ["impersonate:serviceaccount"]
- apiGroups: [authentication.k8s.io]
  resources: [nodes]
  resourceNames: [n1]
  verbs: ["impersonate:arbitrary-node"]
- apiGroups: ["", authentication.k8s.io]
  resources: [pods, configmaps, selfsubjectreviews]
  verbs:
  - "impersonate-on:user-info:list"
  - "impersonate-on:user-info:create"
  - "impersonate-on:serviceaccount:list"
  - "impersonate-on:serviceaccount:create"
  - "impersonate-on:arbitrary-node:list"
  - "impersonate-on:arbitrary-node:create"
- nonResourceURLs: [/version]
  verbs: ["impersonate-on:user-info:get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: oracle-constrained}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: oracle-constrained}
subjects:
- {kind: User, name: c-constrained, apiGroup: rbac.authorization.k8s.io}
- {kind: User, name: a-constrained, apiGroup: rbac.authorization.k8s.io}
- {kind: User, name: k-constrained, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: oracle-mixed}
rules:
- apiGroups: [authentication.k8s.io]
  resources: [users, groups]
  verbs: ["impersonate:user-info"]
- apiGroups: [""]
  resources: [pods]
  verbs: ["impersonate-on:user-info:get", "impersonate-on:user-info:list"]
- apiGroups: [""]
  resources: [serviceaccounts, users]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: oracle-mixed}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: oracle-mixed}
subjects:
- {kind: User, name: c-mixed, apiGroup: rbac.authorization.k8s.io}
- {kind: User, name: a-mixed, apiGroup: rbac.authorization.k8s.io}
- {kind: User, name: k-mixed, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: t-sa, namespace: default}
"#;

/// The proxy's own account may also impersonate by the constrained modes
/// that need nothing but a name (service accounts and nodes), for every
/// verb: what it forwards is then read by kube as kube read the caller's.
const PROXY_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: oracle-proxy-constrained}
rules:
- apiGroups: [authentication.k8s.io]
  resources: [serviceaccounts]
  verbs: ["impersonate:serviceaccount"]
- apiGroups: [authentication.k8s.io]
  resources: [nodes]
  verbs: ["impersonate:arbitrary-node"]
- apiGroups: ["*"]
  resources: ["*"]
  verbs:
  - "impersonate-on:serviceaccount:get"
  - "impersonate-on:serviceaccount:list"
  - "impersonate-on:serviceaccount:create"
  - "impersonate-on:arbitrary-node:get"
  - "impersonate-on:arbitrary-node:list"
  - "impersonate-on:arbitrary-node:create"
- nonResourceURLs: ["*"]
  verbs: ["impersonate-on:serviceaccount:get", "impersonate-on:arbitrary-node:get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: oracle-proxy-constrained}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: oracle-proxy-constrained}
subjects:
- {kind: ServiceAccount, name: proxy, namespace: authproxy}
- {kind: ServiceAccount, name: streaming-agent, namespace: authproxy}
"#;

/// The callers, by their grants; each name is prefixed by the route (`c-`
/// through the proxy, `a-` through the agent tunnel), so that kube's memory
/// of the mode that last worked for a caller belongs to one route.
const CALLERS: [&str; 4] = ["legacy", "constrained", "mixed", "none"];

/// Identities asked for: (label, headers).
fn targets() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    let user = ("Impersonate-User", "t-user");
    vec![
        ("user", vec![user]),
        ("user+group", vec![user, ("Impersonate-Group", "g1")]),
        (
            "user+4 groups",
            vec![
                user,
                ("Impersonate-Group", "g1"),
                ("Impersonate-Group", "g2"),
                ("Impersonate-Group", "g3"),
                ("Impersonate-Group", "g4"),
            ],
        ),
        ("user+uid", vec![user, ("Impersonate-Uid", "u1")]),
        ("user+other uid", vec![user, ("Impersonate-Uid", "u2")]),
        (
            "user+extra",
            vec![user, ("Impersonate-Extra-example.com%2Fk", "v")],
        ),
        (
            "user+bad extra key",
            vec![user, ("Impersonate-Extra-Bad", "v")],
        ),
        (
            "user+system:masters",
            vec![user, ("Impersonate-Group", "system:masters")],
        ),
        (
            "service account",
            vec![("Impersonate-User", "system:serviceaccount:default:t-sa")],
        ),
        (
            "service account+group",
            vec![
                ("Impersonate-User", "system:serviceaccount:default:t-sa"),
                ("Impersonate-Group", "g1"),
            ],
        ),
        ("node", vec![("Impersonate-User", "system:node:n1")]),
        (
            "node+group",
            vec![
                ("Impersonate-User", "system:node:n1"),
                ("Impersonate-Group", "g1"),
            ],
        ),
        ("anonymous", vec![("Impersonate-User", "system:anonymous")]),
        ("another user", vec![("Impersonate-User", "t-other")]),
    ]
}

/// Requests made as the identity: (label, method, path, body).
const REQUESTS: [(&str, &str, &str, Option<&str>); 7] = [
    ("list pods", "GET", "/api/v1/namespaces/default/pods", None),
    (
        "get a pod",
        "GET",
        "/api/v1/namespaces/default/pods/nope",
        None,
    ),
    (
        "list configmaps",
        "GET",
        "/api/v1/namespaces/default/configmaps",
        None,
    ),
    (
        "create a configmap",
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"oracle-"}}"#),
    ),
    ("version", "GET", "/version", None),
    (
        "list pods elsewhere",
        "GET",
        "/api/v1/namespaces/kube-system/pods",
        None,
    ),
    (
        "whoami",
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#),
    ),
];

/// One answer, as compared: status, the message of a `Status`, and the
/// effective user of an allowed `SelfSubjectReview` (without the proxy's
/// `authproxy.io/original-user`).
#[derive(Debug, PartialEq)]
struct Answer {
    code: u16,
    message: Option<String>,
    user: Option<Value>,
}

fn answer(code: u16, body: &str) -> Answer {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = (json["kind"] == "Status")
        .then(|| json["message"].as_str().map(str::to_owned))
        .flatten();
    let user = (json["kind"] == "SelfSubjectReview").then(|| {
        let mut info = json["status"]["userInfo"].clone();
        if let Some(extra) = info.get_mut("extra").and_then(Value::as_object_mut) {
            extra.remove("authproxy.io/original-user");
            if extra.is_empty() {
                info.as_object_mut().map(|o| o.remove("extra"));
            }
        }
        // kube lists groups in the order it added them: compared as a set.
        if let Some(groups) = info.get_mut("groups").and_then(Value::as_array_mut) {
            groups.sort_by_key(|g| g.to_string());
        }
        info
    });
    Answer {
        code,
        message,
        user,
    }
}

/// One request as a curl transfer with a client certificate.
fn transfer<'a>(
    ca: &'a std::path::Path,
    cert: &CertFiles,
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    agent: &str,
) -> authproxy_tests::Transfer<'a> {
    let mut args: Vec<String> = vec![
        "--cert".into(),
        cert.cert_path.display().to_string(),
        "--key".into(),
        cert.key_path.display().to_string(),
        "-X".into(),
        method.into(),
        "-A".into(),
        agent.into(),
        "-H".into(),
        "Content-Type: application/json".into(),
    ];
    for (name, value) in headers {
        args.push("-H".into());
        args.push(format!("{name}: {value}"));
    }
    if let Some(body) = body {
        args.push("--data".into());
        args.push(body.into());
    }
    args.push(url.into());
    authproxy_tests::Transfer { ca, args }
}

/// Where the proxy's side of the cases goes: the proxy's URL (a cluster's
/// prefix included), its CA, and the CA that signs its client certificates.
struct Route<'a> {
    prefix: &'static str,
    url: String,
    ca: &'a std::path::Path,
    client_pki: &'a TestPki,
}

/// Applies the callers' and the proxy's grants (once per kube-apiserver:
/// applying is idempotent).
async fn grant(kube: &authproxy_tests::kube::Kube) -> anyhow::Result<()> {
    kube.apply_rbac(
        CALLER_RBAC,
        &[
            &["impersonate", "users/t-user", "--as", "c-legacy"][..],
            &[
                "impersonate-on:user-info:list",
                "pods",
                "--as",
                "a-constrained",
            ][..],
            &["impersonate", "serviceaccounts", "--as", "a-mixed"][..],
        ],
    )
    .await?;
    kube.apply_rbac(
        PROXY_RBAC,
        &[
            &[
                "impersonate-on:arbitrary-node:create",
                "configmaps",
                "--as",
                PROXY_SERVICE_ACCOUNT,
            ][..],
            &[
                "impersonate-on:arbitrary-node:create",
                "configmaps",
                "--as",
                authproxy_tests::streaming::AGENT_ACCOUNT,
            ][..],
        ],
    )
    .await
}

/// Every case, straight to kube and by `route`: (case, kube's answer, the
/// proxy's).
async fn run_matrix(
    kube: &authproxy_tests::kube::Kube,
    route: &Route<'_>,
) -> anyhow::Result<Vec<(String, Answer, Answer)>> {
    // Each caller twice: a certificate kube-apiserver takes, and one the proxy takes.
    let mut certs = BTreeMap::new();
    for caller in CALLERS {
        let name = format!("{}{caller}", route.prefix);
        let marker = unique_marker(&name);
        let direct =
            kube.pki()
                .issue_client(&format!("{marker}-kube"), &name, Some("oracle-callers"))?;
        let proxied = route.client_pki.issue_client(
            &format!("{marker}-proxy"),
            &name,
            Some("oracle-callers"),
        )?;
        certs.insert(caller, (name, direct, proxied));
    }
    let targets = targets();
    let kube_url = kube.url();
    let kube_ca = kube.pki().ca_path();
    // Callers side by side; each caller's cases in order, straight to kube
    // and then through the proxy, so that both see the same sequence (kube
    // tries first the mode that last let a caller impersonate).
    let runs = CALLERS.iter().map(|caller| {
        let (name, direct, proxied) = &certs[caller];
        let (targets, kube_url) = (&targets, &kube_url);
        async move {
            // Straight to kube, then by the route, case after case: one curl
            // for all of a caller's requests.
            let mut labels = Vec::new();
            let mut transfers = Vec::new();
            for (target, headers) in targets {
                for (request, method, path, body) in REQUESTS {
                    let agent = unique_marker("oracle");
                    transfers.push(transfer(
                        kube_ca,
                        direct,
                        &format!("{kube_url}{path}"),
                        method,
                        headers,
                        body,
                        &agent,
                    ));
                    transfers.push(transfer(
                        route.ca,
                        proxied,
                        &format!("{}{path}", route.url),
                        method,
                        headers,
                        body,
                        &agent,
                    ));
                    labels.push(format!("{name} as {target}: {request}"));
                }
            }
            let answers = authproxy_tests::curl_sequence(&transfers).await?;
            let results: Vec<(String, Answer, Answer)> = labels
                .into_iter()
                .zip(answers.chunks(2))
                .map(|(label, pair)| {
                    let kube = answer(pair[0].0, &pair[0].1);
                    let proxy = answer(pair[1].0, &pair[1].1);
                    (label, kube, proxy)
                })
                .collect();
            anyhow::Ok(results)
        }
    });
    let mut cases = Vec::new();
    for run in futures_util::future::join_all(runs).await {
        cases.extend(run.context("a caller's cases")?);
    }
    Ok(cases)
}

/// What a proxy holding constrained impersonation only cannot send, though
/// kube lets a caller with the legacy verb have it: `system:masters`, a
/// service account or a node with groups (constrained modes take them by
/// name alone), a node name the legacy verb allowed as an ordinary user
/// (sent by name alone, kube would make it a node, in `system:nodes`),
/// extra keys constrained impersonation refuses. kube refuses the proxy's
/// own account (its 403 names it); the caller gets that 403.
const CONSTRAINED_CANNOT: [&str; 5] = [
    "as user+system:masters:",
    "as service account+group:",
    "as node+group:",
    "as node:",
    "as user+bad extra key:",
];

/// Whether a difference is one a constrained proxy has by design: kube let
/// the caller impersonate (the request went on, or was refused to the
/// identity it ran as), and refused the proxy's (or agent's) account.
fn constrained_cannot(case: &str, kube: &Answer, proxy: &Answer) -> bool {
    let caller_allowed = kube.code < 300
        || kube
            .message
            .as_deref()
            .is_some_and(|m| !m.contains("cannot impersonate"));
    CONSTRAINED_CANNOT.iter().any(|c| case.contains(c))
        && caller_allowed
        && proxy.code == 403
        && proxy
            .message
            .as_deref()
            .is_some_and(|m| m.contains(r#"User "system:serviceaccount:authproxy:"#))
}

/// Prints the figures and asserts: enough cases of each outcome, and no
/// difference but those `expected` allows.
fn assert_same(
    route: &str,
    cases: &[(String, Answer, Answer)],
    expected: fn(&str, &Answer, &Answer) -> bool,
) {
    let known = cases
        .iter()
        .filter(|(case, kube, proxy)| kube != proxy && expected(case, kube, proxy))
        .count();
    let differences: Vec<String> = cases
        .iter()
        .filter(|(case, kube, proxy)| kube != proxy && !expected(case, kube, proxy))
        .map(|(case, kube, proxy)| format!("{case}\n  kube:  {kube:?}\n  proxy: {proxy:?}"))
        .collect();
    let allowed = cases.iter().filter(|(_, kube, _)| kube.code < 300).count();
    let whoami = cases
        .iter()
        .filter(|(_, kube, _)| kube.user.is_some())
        .count();
    let refused = cases.iter().filter(|(_, kube, _)| kube.code == 403).count();
    println!(
        "{route}: {} cases: kube allowed {allowed} ({whoami} with an effective user compared), refused {refused}; {} differences, {known} where a constrained proxy refuses by design",
        cases.len(),
        differences.len()
    );
    assert!(cases.len() >= 300, "{}", cases.len());
    // Enough of each outcome that the comparison means something.
    assert!(
        allowed >= 40 && refused >= 100 && whoami >= 10,
        "{allowed} {refused} {whoami}"
    );
    assert!(
        differences.is_empty(),
        "{route}:\n{}",
        differences.join("\n")
    );
}

fn none(_: &str, _: &Answer, _: &Answer) -> bool {
    false
}

/// The proxy's account holding the legacy verb: every case as kube decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_is_decided_as_kube_apiserver_decides_it() -> anyhow::Result<()> {
    let env = KubeEnv::start_legacy(TestPki::new()?, "", "").await?;
    grant(env.kube).await?;
    let route = Route {
        prefix: "c-",
        url: env.proxy_url(),
        ca: env.pki.ca_path(),
        client_pki: &env.pki,
    };
    assert_same("proxy (legacy)", &run_matrix(env.kube, &route).await?, none);
    Ok(())
}

/// The proxy's account holding constrained impersonation only: the same,
/// but for what such a proxy cannot send ([`CONSTRAINED_CANNOT`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_through_a_constrained_proxy_differs_only_where_it_must() -> anyhow::Result<()> {
    let env = KubeEnv::start_with_top_level(TestPki::new()?, "", "").await?;
    grant(env.kube).await?;
    let route = Route {
        prefix: "k-",
        url: env.proxy_url(),
        ca: env.pki.ca_path(),
        client_pki: &env.pki,
    };
    let cases = run_matrix(env.kube, &route).await?;
    assert_same("proxy (constrained)", &cases, constrained_cannot);
    // kube names the constrained mode that let the proxy act.
    let events = env.kube.audit_where(|e| {
        e["user"]["username"] == PROXY_SERVICE_ACCOUNT
            && e["impersonatedUser"]["username"] == "t-user"
    })?;
    assert!(
        !events.is_empty()
            && events.iter().all(|e| {
                e["authenticationMetadata"]["impersonationConstraint"] == "impersonate:user-info"
            }),
        "{events:?}"
    );
    Ok(())
}

/// The same through the agent tunnel (constrained): the reviews, and the
/// request, go through the cluster's agent, which impersonates with its
/// own account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_on_an_agent_cluster_is_decided_as_kube_decides_it() -> anyhow::Result<()> {
    let kube = authproxy_tests::streaming::kube_with_kubelet().await?;
    grant(kube).await?;
    let tunnel = authproxy_tests::streaming::AgentProxy::start(kube, "").await?;
    let route = Route {
        prefix: "a-",
        url: format!("{}/k8s/clusters/edge", tunnel.url()),
        ca: tunnel.ca_path(),
        client_pki: tunnel.pki(),
    };
    assert_same(
        "agent tunnel (constrained)",
        &run_matrix(kube, &route).await?,
        constrained_cannot,
    );
    Ok(())
}
