//! Many clusters behind one proxy: the real kube-apiserver as cluster `real`
//! and the API-server double as cluster `double`, each reached through
//! `/k8s/clusters/<name>/` by kubectl and curl as alice. Each server's own
//! record is the witness: kube's audit log for `real`, the double's list of
//! received requests for `double`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use authproxy::config::FileConfig;
use authproxy::server::RunningServer;
use authproxy_tests::kube::{kube, unique_marker, Kube, PROXY_SERVICE_ACCOUNT};
use authproxy_tests::{
    curl_with_ca, double, kubectl_command, kubectl_with, output_text, pki, RunningDouble, TestPki,
    UserInfo, PROXY_TOKEN, PROXY_USER, USERS,
};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

/// alice may act as carol (at the real server only: the double grants it to
/// nobody but its admins).
const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: clusters-alice-may-act-as-carol}
rules:
- apiGroups: [""]
  resources: [users]
  resourceNames: [carol]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: clusters-alice-may-act-as-carol}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: clusters-alice-may-act-as-carol}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
"#;

/// One proxy with two named clusters and no default upstream.
struct Clusters {
    kube: &'static Kube,
    pki: TestPki,
    double: RunningDouble,
    proxy: RunningServer,
    dir: tempfile::TempDir,
}

impl Clusters {
    async fn start() -> anyhow::Result<Clusters> {
        Self::start_with("").await
    }

    /// Like [`Clusters::start`] with `top_level` YAML added to the config.
    async fn start_with(top_level: &str) -> anyhow::Result<Clusters> {
        let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
            .await?
            .map_err(anyhow::Error::msg)?;
        let pki = TestPki::new()?;
        let double_cert = pki.issue_server("apiserver")?;
        let tls = pki::server_config(&double_cert, &[b"h2", b"http/1.1"])?;
        let double = double::start(double::DoubleConfig::new(tls).with_token(
            PROXY_TOKEN,
            UserInfo {
                username: PROXY_USER.into(),
                uid: String::new(),
                groups: vec!["system:serviceaccounts".into()],
                extra: Default::default(),
            },
        ))
        .await?;
        let dir = tempfile::tempdir()?;
        let proxy_cert = pki.issue_server("proxy")?;
        let mut csv = String::new();
        for (token, name, uid, groups) in USERS {
            csv.push_str(&format!("{token},{name},{uid},\"{groups}\"\n"));
        }
        std::fs::write(dir.path().join("tokens.csv"), csv)?;
        std::fs::write(dir.path().join("real-token"), kube.proxy_token())?;
        std::fs::write(dir.path().join("double-token"), PROXY_TOKEN)?;
        let yaml = format!(
            "listen: 127.0.0.1:0\n\
             tls: {{certFile: {cert}, keyFile: {key}}}\n\
             upstreams:\n\
             - {{name: real, url: '{real}', caFile: {real_ca}, tokenFile: real-token, connectTimeout: 2s}}\n\
             - {{name: double, url: '{double}', caFile: {double_ca}, tokenFile: double-token, connectTimeout: 2s}}\n\
             authentication:\n  staticTokens: {{file: tokens.csv}}\n\
             shutdownTimeout: 2s\n{top_level}\n",
            cert = proxy_cert.cert_path.display(),
            key = proxy_cert.key_path.display(),
            real = kube.url(),
            real_ca = kube.pki().ca_path().display(),
            double = double.url(),
            double_ca = pki.ca_path().display(),
        );
        let config_path = dir.path().join("authproxy.yaml");
        std::fs::write(&config_path, yaml)?;
        let config = FileConfig::load(&config_path)?;
        let proxy = authproxy::server::start(&config, dir.path()).await?;
        let env = Clusters {
            kube,
            pki,
            double,
            proxy,
            dir,
        };
        env.write_kubeconfig()?;
        Ok(env)
    }

    fn url(&self) -> String {
        format!("https://{}", self.proxy.addr())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("authproxy.yaml")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Contexts `real` and `double` as alice, each at its cluster's prefix.
    fn write_kubeconfig(&self) -> anyhow::Result<()> {
        let ca = self.pki.ca_path().display();
        let mut text = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for name in ["real", "double"] {
            text.push_str(&format!(
                "- name: {name}\n  cluster:\n    server: {}/k8s/clusters/{name}\n    certificate-authority: {ca}\n",
                self.url()
            ));
        }
        text.push_str("users:\n- name: alice\n  user:\n    token: alice-token\ncontexts:\n");
        for name in ["real", "double"] {
            text.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: {name}\n    user: alice\n    namespace: default\n"
            ));
        }
        text.push_str("current-context: real\n");
        std::fs::write(self.kubeconfig(), text)?;
        Ok(())
    }

    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        kubectl_with(&self.kubeconfig(), args).await
    }

    /// curl as alice with user agent `agent` at `path` of the proxy
    /// (`--path-as-is`: dot-segments are sent as written).
    async fn curl_as_alice(&self, agent: &str, path: &str) -> anyhow::Result<(u16, String)> {
        curl_with_ca(
            self.pki.ca_path(),
            &[
                "--path-as-is",
                "-A",
                agent,
                "-H",
                "Authorization: Bearer alice-token",
                &format!("{}{path}", self.url()),
            ],
        )
        .await
    }

    /// Requests the double received with user agent `agent`.
    fn double_requests_by_agent(&self, agent: &str) -> Vec<authproxy_tests::RecordedRequest> {
        self.double
            .requests()
            .into_iter()
            .filter(|r| r.header_values("user-agent") == [agent])
            .collect()
    }

    /// Asserts that no request with user agent `agent` reached kube-apiserver,
    /// after a request of our own through `real` is logged there.
    async fn assert_not_at_real(&self, agent: &str) -> anyhow::Result<()> {
        let barrier = unique_marker("barrier");
        let (code, body) = self
            .curl_as_alice(
                &barrier,
                "/k8s/clusters/real/api/v1/namespaces/default/pods",
            )
            .await?;
        anyhow::ensure!(code == 200, "barrier: {code} {body}");
        self.kube.wait_audit_by_agent(&barrier, 1).await?;
        let reached = self.kube.audit_by_agent(agent)?;
        anyhow::ensure!(reached.is_empty(), "reached kube-apiserver: {reached:?}");
        Ok(())
    }
}

fn status_of(body: &str) -> anyhow::Result<Value> {
    let status: Value = serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    anyhow::ensure!(status["kind"] == "Status", "not a Status: {body}");
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_each_cluster_through_its_prefix() -> anyhow::Result<()> {
    let env = Clusters::start().await?;
    // Each context sees its own server: the double says it is v1.30.0.
    let mut versions = Vec::new();
    for context in ["real", "double"] {
        let out = env
            .kubectl(&["--context", context, "version", "-o", "json"])
            .await?;
        anyhow::ensure!(out.status.success(), "{}", output_text(&out));
        let version: Value = serde_json::from_slice(&out.stdout)?;
        versions.push(version["serverVersion"]["gitVersion"].clone());
    }
    assert_eq!(versions[1], "v1.30.0", "double: {versions:?}");
    assert!(
        versions[0].as_str().is_some_and(|v| v.starts_with("v1.37")),
        "real: {versions:?}"
    );

    // A configmap only the real server holds.
    let marker = unique_marker("only-real");
    env.kube.create_configmap(&marker, &marker).await?;
    let out = env
        .kubectl(&[
            "--context",
            "real",
            "get",
            "configmap",
            &marker,
            "-o",
            "name",
        ])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("configmap/{marker}")
    );
    let out = env
        .kubectl(&["--context", "double", "get", "configmap", &marker])
        .await?;
    assert!(
        !out.status.success(),
        "the double has no configmaps: {}",
        output_text(&out)
    );

    // Both see alice, impersonated by the proxy.
    for context in ["real", "double"] {
        let out = env
            .kubectl(&["--context", context, "auth", "whoami", "-o", "json"])
            .await?;
        anyhow::ensure!(out.status.success(), "{context}: {}", output_text(&out));
        let review: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(
            review["status"]["userInfo"]["username"], "alice",
            "{context}: {review}"
        );
    }
    let out = env
        .kubectl(&["--context", "double", "get", "pods", "-o", "name"])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/web-0"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_reaches_only_its_own_cluster_as_alice() -> anyhow::Result<()> {
    let env = Clusters::start().await?;
    let to_real = unique_marker("to-real");
    let to_double = unique_marker("to-double");
    let (code, body) = env
        .curl_as_alice(
            &to_real,
            "/k8s/clusters/real/api/v1/namespaces/default/configmaps",
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let (code, body) = env
        .curl_as_alice(
            &to_double,
            "/k8s/clusters/double/api/v1/namespaces/default/pods",
        )
        .await?;
    assert_eq!(code, 200, "{body}");

    // kube's audit: the proxy's account impersonating alice, prefix removed.
    let events = env.kube.wait_audit_by_agent(&to_real, 1).await?;
    let event = &events[0];
    assert_eq!(event["user"]["username"], PROXY_SERVICE_ACCOUNT, "{event}");
    assert_eq!(event["impersonatedUser"]["username"], "alice", "{event}");
    assert_eq!(
        event["requestURI"], "/api/v1/namespaces/default/configmaps",
        "{event}"
    );
    env.assert_not_at_real(&to_double).await?;

    // The double's record: alice, prefix removed, its own proxy token; nothing for real.
    let received = env.double_requests_by_agent(&to_double);
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].uri.path(), "/api/v1/namespaces/default/pods");
    assert_eq!(received[0].header_values("impersonate-user"), ["alice"]);
    assert_eq!(received[0].bearer_token().as_deref(), Some(PROXY_TOKEN));
    assert!(env.double_requests_by_agent(&to_real).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_clusters_and_unprefixed_paths_are_not_found() -> anyhow::Result<()> {
    let env = Clusters::start().await?;
    let agent = unique_marker("nowhere");
    for path in [
        "/k8s/clusters/nowhere/api/v1/namespaces/default/pods",
        "/k8s/clusters/",
        // No default upstream is configured.
        "/api/v1/namespaces/default/pods",
    ] {
        let (code, body) = env.curl_as_alice(&agent, path).await?;
        assert_eq!(code, 404, "{path}: {body}");
        let status = status_of(&body)?;
        assert_eq!(status["reason"], "NotFound", "{path}: {body}");
        assert_eq!(status["code"], 404, "{path}: {body}");
    }
    // Names are not revealed to callers who did not authenticate.
    let (code, body) = curl_with_ca(
        env.pki.ca_path(),
        &[&format!("{}/k8s/clusters/nowhere/api", env.url())],
    )
    .await?;
    assert_eq!(code, 401, "{body}");
    assert!(env.double_requests_by_agent(&agent).is_empty());
    env.assert_not_at_real(&agent).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_cross_from_one_cluster_to_another() -> anyhow::Result<()> {
    let env = Clusters::start().await?;
    let agent = unique_marker("crossing");
    for path in [
        "/k8s/clusters/real/../double/api/v1/namespaces/default/pods",
        "/k8s/clusters/real/%2e%2e/double/api/v1/namespaces/default/pods",
        "/k8s/clusters/real/..%2f..%2fdouble/api/v1/namespaces/default/pods",
        "/k8s/clusters/real/../../api/v1/namespaces/default/pods",
        "/k8s/./clusters/double/api/v1/namespaces/default/pods",
        "/k8s/clusters/dou%62le/api/v1/namespaces/default/pods",
    ] {
        let (code, body) = env.curl_as_alice(&agent, path).await?;
        assert_eq!(code, 400, "{path}: {body}");
        assert_eq!(status_of(&body)?["reason"], "BadRequest", "{path}: {body}");
    }
    assert!(
        env.double_requests_by_agent(&agent).is_empty(),
        "reached the double: {:?}",
        env.double_requests_by_agent(&agent)
    );
    env.assert_not_at_real(&agent).await?;
    // Dot-segments inside one cluster resolve there.
    let inside = unique_marker("inside");
    let (code, body) = env
        .curl_as_alice(
            &inside,
            "/k8s/clusters/double/api/v1/namespaces/x/../default/pods",
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let received = env.double_requests_by_agent(&inside);
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].uri.path(), "/api/v1/namespaces/default/pods");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_through_a_prefix_streams() -> anyhow::Result<()> {
    let env = Clusters::start().await?;
    let marker = unique_marker("watched");
    let mut cmd = kubectl_command()?;
    cmd.arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args([
            "--context",
            "real",
            "get",
            "configmaps",
            "--watch",
            "-o",
            "name",
        ])
        .arg(format!("--selector=marker={marker}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("kubectl stdout")?;
    // The watch is open at kube-apiserver before the object exists.
    env.kube
        .wait_audit(1, |e| {
            e["verb"] == "watch"
                && e["impersonatedUser"]["username"] == "alice"
                && e["requestURI"]
                    .as_str()
                    .is_some_and(|uri| uri.contains(&marker))
        })
        .await?;
    env.kube.create_configmap(&marker, &marker).await?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("no watch event within 20s")??;
    assert_eq!(
        line.as_deref(),
        Some(format!("configmap/{marker}").as_str())
    );
    child.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_is_reviewed_by_the_cluster_it_goes_to() -> anyhow::Result<()> {
    let env = Clusters::start().await?;
    env.kube
        .apply_rbac(
            RBAC,
            &[&["impersonate", "users/carol", "--as", "alice"][..]],
        )
        .await?;
    // The real server allows alice to act as carol.
    let out = env
        .kubectl(&[
            "--context",
            "real",
            "--as",
            "carol",
            "auth",
            "whoami",
            "-o",
            "json",
        ])
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let review: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        review["status"]["userInfo"]["username"], "carol",
        "{review}"
    );
    // The double is asked for the double's requests, and does not allow it.
    env.double.clear_requests();
    let out = env
        .kubectl(&["--context", "double", "--as", "carol", "get", "pods"])
        .await?;
    assert!(!out.status.success(), "{}", output_text(&out));
    let received = env.double.requests();
    assert!(
        received
            .iter()
            .any(|r| r.uri.path() == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"),
        "the double was not asked: {received:?}"
    );
    assert!(
        received
            .iter()
            .all(|r| r.header_values("impersonate-user") != ["carol"]),
        "carol reached the double: {received:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authproxy_kubeconfig_writes_a_context_per_cluster() -> anyhow::Result<()> {
    let env = Clusters::start().await?;
    let binary = authproxy_tests::authproxy_binary()?;
    let output = env.dir.path().join("generated.kubeconfig");
    let out = tokio::process::Command::new(&binary)
        .args(["kubeconfig", "--server", &env.url(), "--name", "ap"])
        .arg("--ca-file")
        .arg(env.pki.ca_path())
        .arg("--proxy-config")
        .arg(env.config_path())
        .arg("--output")
        .arg(&output)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let out = kubectl_with(&output, &["config", "get-contexts", "-o", "name"]).await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["ap-double", "ap-real"]
    );
    for cluster in ["real", "double"] {
        let out = kubectl_with(
            &output,
            &[
                "config",
                "view",
                "-o",
                &format!("jsonpath={{.clusters[?(@.name==\"ap-{cluster}\")].cluster.server}}"),
            ],
        )
        .await?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}/k8s/clusters/{cluster}", env.url())
        );
    }
    assert_config_names_its_clusters(&env.config_path())
}

/// `check-config` accepts the test's own configuration.
fn assert_config_names_its_clusters(path: &Path) -> anyhow::Result<()> {
    let config = FileConfig::load(path)?;
    let names: Vec<_> = config
        .named_upstreams()
        .iter()
        .filter_map(|u| u.name.clone())
        .collect();
    assert_eq!(names, ["real", "double"]);
    assert!(config.default_upstream().is_none());
    Ok(())
}

/// The long-running caps count what a named cluster's API server holds
/// open: watches below `/k8s/clusters/<name>/` count against the user's cap,
/// in every cluster together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_through_a_prefix_count_against_the_per_user_cap() -> anyhow::Result<()> {
    let env = Clusters::start_with("limits: {longRunning: {perUser: 2, total: 100}}").await?;
    let watch = format!(
        "{}/k8s/clusters/real/api/v1/namespaces/default/configmaps?watch=1",
        env.url()
    );
    let mut holders = Vec::new();
    for i in 0..2 {
        let headers = env.dir.path().join(format!("holder-{i}.headers"));
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "-N", "-o", "/dev/null", "--max-time", "60", "-D"])
            .arg(&headers)
            .arg("--cacert")
            .arg(env.pki.ca_path())
            .args(["-H", "Authorization: Bearer alice-token"])
            .arg(&watch)
            .kill_on_drop(true);
        holders.push(cmd.spawn()?);
        authproxy_tests::wait_for(Duration::from_secs(20), "a watch held", || {
            let headers = headers.clone();
            async move {
                let text = std::fs::read_to_string(&headers).unwrap_or_default();
                if text.contains(" 429") {
                    return Err(text);
                }
                Ok(text.contains(" 200").then_some(()))
            }
        })
        .await?;
    }
    for path in [
        "/k8s/clusters/real/api/v1/namespaces/default/configmaps?watch=t",
        "/k8s/clusters/real/api/v1/watch/namespaces/default/configmaps",
        "/k8s/clusters/double/api/v1/namespaces/default/pods?watch=1",
    ] {
        let (code, body) = env.curl_as_alice(&unique_marker("capped"), path).await?;
        assert_eq!(code, 429, "{path} was not counted: {body}");
    }
    // A short request through the same prefix is not held up.
    let (code, body) = env
        .curl_as_alice(
            &unique_marker("short"),
            "/k8s/clusters/real/api/v1/namespaces/default/configmaps?watch=0",
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    drop(holders);
    Ok(())
}
