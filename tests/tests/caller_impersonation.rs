//! `kubectl --as`, `--as-group` and `--as-uid` through the proxy, against
//! the real kube-apiserver: the caller's own impersonation request is
//! checked with SubjectAccessReviews as kube-apiserver checks it, taken when
//! RBAC allows it (kube's audit log then names who really asked), refused
//! with kube's wording when not, and refused outright in `deny` mode. Never
//! dropped silently. The reviews it costs are bounded per request and per
//! user.

use std::time::Duration;

use authproxy_tests::kube::{unique_marker, KubeEnv, PROXY_SERVICE_ACCOUNT};
use authproxy_tests::{output_text, TestPki};
use serde_json::{json, Value};

/// alice may act as carol, as group `devs`, with uid `c-1`, and as the
/// service account `default/default`; nobody else may impersonate.
const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: alice-may-act-as}
rules:
- apiGroups: [""]
  resources: [users]
  resourceNames: [carol]
  verbs: [impersonate]
- apiGroups: [""]
  resources: [groups]
  resourceNames: [devs]
  verbs: [impersonate]
- apiGroups: [authentication.k8s.io]
  resources: [uids]
  resourceNames: [c-1]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-may-act-as}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: alice-may-act-as}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: alice-may-act-as-default, namespace: default}
rules:
- apiGroups: [""]
  resources: [serviceaccounts]
  resourceNames: [default]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-may-act-as-default, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: alice-may-act-as-default}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
"#;

async fn env_with_rbac(top_level: &str) -> anyhow::Result<KubeEnv> {
    let env = KubeEnv::start_with_top_level(TestPki::new()?, "", top_level).await?;
    env.kube
        .apply_rbac(
            RBAC,
            &[
                &["impersonate", "users/carol", "--as", "alice"][..],
                &[
                    "impersonate",
                    "serviceaccounts/default",
                    "-n",
                    "default",
                    "--as",
                    "alice",
                ],
            ],
        )
        .await?;
    // kubectl's discovery as alice herself, cached as a user's would be: a
    // refused `--as` then fails on the request itself, whose message kubectl
    // prints (a refused discovery request prints "unknown", with kube too).
    let out = env.kubectl(&["--context", "alice", "get", "pods"]).await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    Ok(env)
}

async fn whoami(env: &KubeEnv, args: &[&str]) -> anyhow::Result<Result<Value, String>> {
    let mut all = vec!["--context", "alice"];
    all.extend(args);
    all.extend(["auth", "whoami", "-o", "json"]);
    let out = env.kubectl(&all).await?;
    Ok(if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout)?)
    } else {
        Err(output_text(&out))
    })
}

/// `kubectl get pods` as alice with `args`, which must fail: its output.
/// (`auth whoami` hides the server's message on a 403.)
async fn refused(env: &KubeEnv, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["--context", "alice"];
    all.extend(args);
    all.extend(["get", "pods"]);
    let out = env.kubectl(&all).await?;
    anyhow::ensure!(!out.status.success(), "{args:?} was allowed");
    Ok(output_text(&out))
}

fn alice_original() -> Value {
    json!([r#"{"username":"alice","uid":"1001","groups":["devs"]}"#])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_an_allowed_identity_acts_as_it_and_kube_audits_who_asked() -> anyhow::Result<()>
{
    let env = env_with_rbac("").await?;
    let review = whoami(
        &env,
        &["--as", "carol", "--as-group", "devs", "--as-uid", "c-1"],
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    assert_eq!(
        review["status"]["userInfo"],
        json!({
            "username": "carol",
            "uid": "c-1",
            "groups": ["devs", "system:authenticated"],
            "extra": {"authproxy.io/original-user": alice_original()},
        }),
        "{review}"
    );
    // carol as a member of devs may list pods.
    let out = env
        .kubectl(&[
            "--context",
            "alice",
            "--as",
            "carol",
            "--as-group",
            "devs",
            "get",
            "pods",
        ])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("web-0"));

    // kube's audit: the proxy impersonated carol, and the extra says alice asked.
    let agent = unique_marker("as-carol");
    let (code, body) = env
        .curl(&[
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "Impersonate-User: carol",
            "-H",
            "Impersonate-Group: devs",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    let events = env.kube.wait_audit_by_agent(&agent, 1).await?;
    let event = &events[0];
    assert_eq!(event["user"]["username"], PROXY_SERVICE_ACCOUNT, "{event}");
    assert_eq!(event["impersonatedUser"]["username"], "carol", "{event}");
    assert_eq!(
        event["impersonatedUser"]["extra"]["authproxy.io/original-user"],
        alice_original(),
        "{event}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_a_service_account_gets_its_groups_from_kube() -> anyhow::Result<()> {
    let env = env_with_rbac("").await?;
    let review = whoami(&env, &["--as", "system:serviceaccount:default:default"])
        .await?
        .map_err(anyhow::Error::msg)?;
    let user = &review["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:default:default");
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ]),
        "{review}"
    );
    // Another namespace's account: refused with kube's namespaced wording.
    let refused = refused(&env, &["--as", "system:serviceaccount:authproxy:nobody"]).await?;
    assert!(
        refused.contains(r#"serviceaccounts "nobody" is forbidden: User "alice" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "authproxy""#),
        "{refused}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_a_refused_identity_gets_kubes_403_and_nothing_is_forwarded(
) -> anyhow::Result<()> {
    let env = env_with_rbac("").await?;
    // alice has no constrained grant: kube refuses the first mode it tries,
    // constrained user-info, for the request itself.
    let first = refused(&env, &["--as", "bob"]).await?;
    assert!(
        first.contains(r#"pods is forbidden: User "alice" cannot impersonate-on:user-info:list resource "pods" in API group "" in the namespace "default""#),
        "{first}"
    );
    // Once the legacy verb has let her impersonate, kube tries it first, and
    // its refusal names what she may not take.
    assert!(whoami(&env, &["--as", "carol"]).await?.is_ok());
    // A user alice may not be, a group she may not take, a uid she may not use.
    for (args, message) in [
        (
            vec!["--as", "bob"],
            r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#,
        ),
        (
            vec!["--as", "carol", "--as-group", "system:masters"],
            r#"groups "system:masters" is forbidden: User "alice" cannot impersonate resource "groups" in API group "" at the cluster scope"#,
        ),
        (
            vec!["--as", "carol", "--as-uid", "0"],
            r#"uids.authentication.k8s.io "0" is forbidden: User "alice" cannot impersonate resource "uids" in API group "authentication.k8s.io" at the cluster scope"#,
        ),
    ] {
        let refused = refused(&env, &args).await?;
        assert!(refused.contains(message), "{args:?}: {refused}");
    }
    // bob may impersonate nobody.
    let out = env
        .kubectl(&["--context", "bob", "--as", "carol", "get", "pods"])
        .await?;
    assert!(!out.status.success());
    assert!(
        output_text(&out)
            .contains(r#"User "bob" cannot impersonate-on:user-info:list resource "pods""#),
        "{}",
        output_text(&out)
    );
    // The refused request never reached kube.
    let agent = unique_marker("as-bob");
    let (code, body) = env
        .curl(&[
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "Impersonate-User: bob",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    env.assert_not_forwarded(&agent).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_or_a_uid_without_a_user_are_a_bad_request_as_kube_answers() -> anyhow::Result<()> {
    let env = env_with_rbac("").await?;
    for header in [
        "Impersonate-Group: devs",
        "Impersonate-Uid: c-1",
        "Impersonate-Extra-scopes: view",
    ] {
        let agent = unique_marker("as-group-only");
        let (code, body) = env
            .curl(&[
                "-A",
                &agent,
                "-H",
                "Authorization: Bearer alice-token",
                "-H",
                header,
                &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
            ])
            .await?;
        assert_eq!(code, 400, "{header}: {body}");
        assert!(body.contains("without impersonating a user"), "{body}");
        env.assert_not_forwarded(&agent).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_mode_refuses_every_caller_impersonation() -> anyhow::Result<()> {
    let env = env_with_rbac("callerImpersonation: {mode: deny}").await?;
    let refused = refused(&env, &["--as", "carol"]).await?;
    assert!(
        refused.contains("impersonation through this proxy is not allowed"),
        "{refused}"
    );
    // Without --as, alice is alice.
    let review = whoami(&env, &[]).await?.map_err(anyhow::Error::msg)?;
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    Ok(())
}

/// One request asks for at most 16 attributes (400 beyond, nothing
/// forwarded); each user's access reviews are budgeted (429 with
/// `Retry-After` beyond, nothing forwarded), another user's budget is its
/// own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_impersonation_reviews_are_bounded_per_request_and_per_user() -> anyhow::Result<()> {
    let env = env_with_rbac("callerImpersonation: {cacheTTL: 0s, reviewsPerMinute: 5}").await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let get = |token: &'static str, extra: Vec<String>| {
        let agent = unique_marker("review-budget");
        let url = url.clone();
        let env = &env;
        async move {
            let mut args = vec![
                "-i".to_owned(),
                "-A".to_owned(),
                agent.clone(),
                "-H".to_owned(),
                format!("Authorization: Bearer {token}"),
                "-H".to_owned(),
                "Impersonate-User: carol".to_owned(),
            ];
            for header in extra {
                args.extend(["-H".to_owned(), header]);
            }
            args.push(url);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, text) = env.curl(&args).await?;
            anyhow::Ok((code, text, agent))
        }
    };
    // The user and 16 groups: 17 reviews would be needed.
    let groups: Vec<String> = (0..16)
        .map(|i| format!("Impersonate-Group: g{i}"))
        .collect();
    let (code, text, agent) = get("alice-token", groups).await?;
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("at most 16 are checked per request"),
        "{text}"
    );
    env.assert_not_forwarded(&agent).await?;
    // The first request costs three reviews (kube's constrained user-info
    // mode first, refused; then carol and devs by the legacy verb), the
    // second two (the mode that worked is tried first, as kube does): a
    // budget of 5 allows two requests.
    for _ in 0..2 {
        let (code, text, _) = get("alice-token", vec!["Impersonate-Group: devs".into()]).await?;
        assert_eq!(code, 200, "{text}");
    }
    let (code, text, agent) = get("alice-token", vec!["Impersonate-Group: devs".into()]).await?;
    assert_eq!(code, 429, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: "),
        "{text}"
    );
    assert!(text.contains(r#""reason":"TooManyRequests""#), "{text}");
    env.assert_not_forwarded(&agent).await?;
    // bob has a budget of his own: asked, and refused by kube's RBAC.
    let (code, text, _) = get("bob-token", vec![]).await?;
    assert_eq!(code, 403, "{text}");
    assert!(
        text.contains(r#"User \"bob\" cannot impersonate"#),
        "{text}"
    );
    Ok(())
}

/// The proxy's own audit event of `kubectl --as` names who authenticated
/// (`user`) and who the request ran as (`impersonatedUser`), as kube's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_audit_names_the_caller_and_who_it_acted_as() -> anyhow::Result<()> {
    let env = env_with_rbac("audit: {path: audit.log, level: Metadata}").await?;
    let agent = unique_marker("audit-as-carol");
    let (code, body) = env
        .curl(&[
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "Impersonate-User: carol",
            "-H",
            "Impersonate-Group: devs",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    let path = env.dir.path().join("audit.log");
    let event = authproxy_tests::wait_for(Duration::from_secs(10), "the proxy's event", || {
        let path = path.clone();
        let agent = agent.clone();
        async move {
            let events = authproxy_tests::observe::audit_lines(&path).map_err(|e| e.to_string())?;
            Ok(events
                .into_iter()
                .find(|e| e["userAgent"] == agent.as_str()))
        }
    })
    .await?;
    assert_eq!(event["user"]["username"], "alice", "{event}");
    assert_eq!(event["impersonatedUser"]["username"], "carol", "{event}");
    assert_eq!(
        event["impersonatedUser"]["groups"],
        json!(["devs"]),
        "{event}"
    );
    assert_eq!(
        event["impersonatedUser"]["extra"]["authproxy.io/original-user"],
        alice_original(),
        "{event}"
    );
    assert_eq!(
        event["annotations"]["authproxy.io/authentication-result"], "success",
        "{event}"
    );
    // kube's event of the same request (one audit ID) agrees on who it ran
    // as (kube adds system:authenticated, which the proxy's events leave out
    // for every user).
    let id = event["auditID"].as_str().unwrap_or_default().to_owned();
    let theirs = env
        .kube
        .wait_audit(1, |e| e["auditID"] == id.as_str())
        .await?;
    assert_eq!(theirs[0]["impersonatedUser"]["username"], "carol");
    assert_eq!(
        theirs[0]["impersonatedUser"]["groups"],
        json!(["devs", "system:authenticated"])
    );
    Ok(())
}
