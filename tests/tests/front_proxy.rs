//! Front-proxy mode (`identityHeaders: {mode: frontProxy}`) against the real
//! kube-apiserver started with `--requestheader-*` flags: the identity goes
//! upstream in `X-Remote-*` headers, trusted from the proxy's client
//! certificate, with no impersonation (kube's audit shows the user itself,
//! no `impersonatedUser`); a caller's own `X-Remote-*` headers never pass;
//! `kubectl --as` is checked as the caller; and a certificate kube does not
//! allow authenticates no one.

use authproxy_tests::kube::{assert_kubectl_acts_as, kube, unique_marker, Expected, KubeEnv};
use authproxy_tests::{output_text, start_proxy_with_upstream, write_user_kubeconfig, TestPki};
use serde_json::{json, Value};

/// authproxy in front of the shared kube-apiserver in front-proxy mode,
/// presenting the client certificate `client` (`None`: one kube allows).
async fn front_proxy_env(common_name: Option<&str>) -> anyhow::Result<KubeEnv> {
    let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let name = unique_marker("front-proxy");
    let client = match common_name {
        None => kube.front_proxy_client(&name)?,
        Some(cn) => kube.front_proxy_client_named(&name, cn)?,
    };
    let upstream = format!(
        "{{url: '{}', caFile: {}, clientCertFile: {}, clientKeyFile: {}, connectTimeout: 2s}}",
        kube.url(),
        kube.pki().ca_path().display(),
        client.cert_path.display(),
        client.key_path.display(),
    );
    let proxy = start_proxy_with_upstream(
        &pki,
        dir.path(),
        &upstream,
        "",
        "identityHeaders: {mode: frontProxy}",
    )
    .await?;
    let env = KubeEnv {
        kube,
        pki,
        proxy: Some(proxy),
        dir,
    };
    write_user_kubeconfig(&env.kubeconfig(), &env.proxy_url(), env.pki.ca_path())?;
    Ok(env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_acts_as_the_user_named_in_request_headers_without_impersonation(
) -> anyhow::Result<()> {
    let env = front_proxy_env(None).await?;
    let alice = Expected {
        username: "alice",
        groups: &["devs"],
        uid: Some("1001"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&env.kubeconfig(), Some("alice"), &alice).await?;
    let bob = Expected {
        username: "bob",
        groups: &[],
        uid: Some("1002"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&env.kubeconfig(), Some("bob"), &bob).await?;
    // Ready: the proxy's own check (a request without a user, which kube
    // answers 401) is not read as a refused certificate.
    let (code, body) = env.curl(&[&format!("{}/readyz", env.proxy_url())]).await?;
    assert_eq!(code, 200, "{body}");

    // kube authenticated alice from the headers: no impersonation at all.
    let agent = unique_marker("front-proxy-audit");
    let (code, body) = env
        .curl(&[
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    let events = env.kube.wait_audit_by_agent(&agent, 1).await?;
    let event = &events[0];
    assert_eq!(event["user"]["username"], "alice", "{event}");
    assert_eq!(event["user"]["uid"], "1001", "{event}");
    assert!(event.get("impersonatedUser").is_none(), "{event}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_own_remote_headers_never_pass() -> anyhow::Result<()> {
    let env = front_proxy_env(None).await?;
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        env.proxy_url()
    );
    let agent = unique_marker("front-proxy-smuggle");
    let (code, body) = env
        .curl(&[
            "-A",
            &agent,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "X-Remote-User: root",
            "-H",
            "x-remote-group: system:masters",
            "-H",
            "X-Remote-Uid: 0",
            "-H",
            "X-Remote-Extra-Scopes: everything",
            &url,
        ])
        .await?;
    assert_eq!(code, 201, "{body}");
    let review: Value = serde_json::from_str(&body)?;
    assert_eq!(
        review["status"]["userInfo"],
        json!({"username": "alice", "uid": "1001", "groups": ["devs", "system:authenticated"]}),
        "{body}"
    );
    let events = env.kube.wait_audit_by_agent(&agent, 1).await?;
    let text = events[0].to_string();
    for value in ["root", "system:masters", "everything"] {
        assert!(!text.contains(value), "`{value}` reached kube: {text}");
    }
    // Without a credential nothing is forwarded at all.
    let (code, _) = env.curl(&["-H", "X-Remote-User: root", &url]).await?;
    assert_eq!(code, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_is_checked_as_the_caller_in_front_proxy_mode() -> anyhow::Result<()> {
    let env = front_proxy_env(None).await?;
    let rbac = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: front-proxy-alice-as-carol}
rules:
- {apiGroups: [""], resources: [users], resourceNames: [carol], verbs: [impersonate]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: front-proxy-alice-as-carol}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: front-proxy-alice-as-carol}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
"#;
    env.kube
        .apply_rbac(
            rbac,
            &[&["impersonate", "users/carol", "--as", "alice"][..]],
        )
        .await?;
    let out = env
        .kubectl(&[
            "--context",
            "alice",
            "--as",
            "carol",
            "auth",
            "whoami",
            "-o",
            "json",
        ])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let review: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        review["status"]["userInfo"]["username"], "carol",
        "{review}"
    );
    assert_eq!(
        review["status"]["userInfo"]["extra"]["authproxy.io/original-user"],
        json!([r#"{"username":"alice","uid":"1001","groups":["devs"]}"#]),
        "{review}"
    );
    // Warm kubectl's discovery cache as bob, then: bob may not be carol
    // (kube tries constrained impersonation first, and refuses it first).
    env.kubectl(&["--context", "bob", "get", "pods"]).await?;
    let out = env
        .kubectl(&["--context", "bob", "--as", "carol", "get", "pods"])
        .await?;
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains(
            r#"pods is forbidden: User "bob" cannot impersonate-on:user-info:list resource "pods""#
        ),
        "{}",
        output_text(&out)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_kube_does_not_allow_authenticates_no_one() -> anyhow::Result<()> {
    // Signed by the request-header CA, but not an allowed name.
    let env = front_proxy_env(Some("someone-else")).await?;
    let (code, body) = env
        .curl(&[
            "-H",
            "Authorization: Bearer alice-token",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    // kube refuses the proxy's certificate. A front proxy's own check
    // carries no user, so kube's 401 cannot tell a refused certificate from
    // a missing user: the refusal passes as kube gave it.
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("web-0"), "{body}");
    Ok(())
}
