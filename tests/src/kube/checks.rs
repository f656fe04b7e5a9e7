//! What every authentication path must prove on the real API server, through
//! kubectl: who kube thinks the caller is (`kubectl auth whoami`), what RBAC
//! lets it do (`kubectl auth can-i`), and kube's own answer to `get pods`.

use std::path::Path;

use anyhow::{bail, ensure};
use serde_json::{json, Value};

use crate::{kubectl_with, output_text};

/// The identity a test expects kube-apiserver to see.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// User name.
    pub username: &'a str,
    /// Groups, without the `system:authenticated` that kube adds.
    pub groups: &'a [&'a str],
    /// The uid, if the authenticator sets one.
    pub uid: Option<&'a str>,
    /// Extra keys and values (`{}` for none).
    pub extra: Value,
}

impl Expected<'_> {
    /// Whether RBAC lets this user list pods in `default` (groups `devs`
    /// and `oidc:devs` are bound to a Role that may).
    pub fn may_list_pods(&self) -> bool {
        self.groups
            .iter()
            .any(|g| *g == "devs" || *g == "oidc:devs")
    }
}

/// Runs kubectl with `kubeconfig` (and `--context` when given) and checks
/// whoami, can-i and get against `expected`.
pub async fn assert_kubectl_acts_as(
    kubeconfig: &Path,
    context: Option<&str>,
    expected: &Expected<'_>,
) -> anyhow::Result<()> {
    let run = |args: Vec<&str>| {
        let mut all: Vec<&str> = Vec::new();
        if let Some(context) = context {
            all.extend(["--context", context]);
        }
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            kubectl_with(kubeconfig, &all).await
        }
    };

    let out = run(vec!["auth", "whoami", "-o", "json"]).await?;
    ensure!(out.status.success(), "whoami: {}", output_text(&out));
    let review: Value = serde_json::from_slice(&out.stdout)?;
    let user = &review["status"]["userInfo"];
    ensure!(user["username"] == expected.username, "whoami: {review}");
    let mut groups: Vec<Value> = expected.groups.iter().map(|g| json!(g)).collect();
    groups.push(json!("system:authenticated"));
    ensure!(
        user["groups"] == Value::Array(groups),
        "whoami groups: {review}"
    );
    match expected.uid {
        Some(uid) => ensure!(user["uid"] == uid, "whoami uid: {review}"),
        None => ensure!(user.get("uid").is_none(), "whoami uid: {review}"),
    }
    let extra = user.get("extra").cloned().unwrap_or_else(|| json!({}));
    ensure!(extra == expected.extra, "whoami extra: {review}");

    let out = run(vec!["auth", "can-i", "list", "pods", "-n", "default"]).await?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let want = if expected.may_list_pods() {
        "yes"
    } else {
        "no"
    };
    ensure!(answer == want, "can-i list pods: {}", output_text(&out));
    let out = run(vec!["auth", "can-i", "get", "secrets", "-n", "default"]).await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "no",
        "can-i get secrets: {}",
        output_text(&out)
    );

    let out = run(vec!["get", "pods", "-n", "default", "-o", "name"]).await?;
    if expected.may_list_pods() {
        ensure!(out.status.success(), "get pods: {}", output_text(&out));
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("pod/web-0"),
            "get pods: {}",
            output_text(&out)
        );
    } else {
        let wanted = format!(
            r#"pods is forbidden: User "{}" cannot list resource "pods" in API group "" in the namespace "default""#,
            expected.username
        );
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains(&wanted) {
            bail!(
                "get pods: want kube's 403 `{wanted}`; got {}",
                output_text(&out)
            );
        }
    }
    Ok(())
}
