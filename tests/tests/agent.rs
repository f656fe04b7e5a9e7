//! Clusters behind NAT: the proxy runs in a network namespace of its own
//! (`ip netns`, joined to the root namespace by a veth pair), from which the
//! shared kube-apiserver on the root namespace's loopback cannot be reached.
//! `authproxy agent` runs in the root namespace, reaches kube-apiserver and
//! dials the proxy; kubectl and curl reach the proxy at its veth address.
//! kube's audit log is the witness of what reached the server, and who
//! sent it: the agent's service account impersonating the caller.
//!
//! Both the proxy and the agents are the real `authproxy` binary, run as
//! child processes; their logs are files the tests read.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use authproxy_tests::kube::{kube, unique_marker, Kube, CONTAINER};
use authproxy_tests::netns::Netns;
use authproxy_tests::{
    authproxy_binary, curl_with_ca, kubectl_command, output_text, wait_for, write_user_kubeconfig,
    TestPki, USERS,
};
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Child;

/// The agent's own identity in the cluster, allowed to impersonate; alice
/// may exec in `default` (kube refuses for want of a node, after RBAC).
const RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: agent, namespace: authproxy}
---
CONSTRAINED_IMPERSONATOR
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: agent-tests-impersonator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: agent-tests-impersonator}
subjects:
- {kind: ServiceAccount, name: agent, namespace: authproxy}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: agent-tests-alice-exec, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods/exec]
  verbs: [create, get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: agent-tests-alice-exec, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: agent-tests-alice-exec}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
"#;

const AGENT_ACCOUNT: &str = "system:serviceaccount:authproxy:agent";
const EDGE_TOKEN: &str = "edge-registration-token-5b1f0c";
const OTHER_TOKEN: &str = "other-registration-token-9e27d4";
const ECHO_TOKEN: &str = "echo-registration-token-33a8e1";
const PORT: u16 = 8443;

/// The proxy in its namespace with clusters `edge`, `other` and `echo`
/// (via agents) and `direct` (kube-apiserver's URL, unreachable from there).
struct Behind {
    kube: &'static Kube,
    netns: Netns,
    pki: TestPki,
    dir: tempfile::TempDir,
    proxy: Child,
    agent_kubeconfig: PathBuf,
    agents: u32,
}

impl Behind {
    /// `None` when this machine does not allow network namespaces.
    async fn start() -> anyhow::Result<Option<Behind>> {
        let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
            .await?
            .map_err(anyhow::Error::msg)?;
        let Some(netns) = Netns::create()? else {
            return Ok(None);
        };
        let rbac = RBAC.replace(
            "CONSTRAINED_IMPERSONATOR",
            &authproxy_tests::kube::constrained_impersonator("agent-tests-impersonator"),
        );
        kube.apply_rbac(
            &rbac,
            &[
                &[
                    "impersonate-on:user-info:list",
                    "pods",
                    "--as",
                    AGENT_ACCOUNT,
                ][..],
                &[
                    "create",
                    "pods",
                    "--subresource=exec",
                    "-n",
                    "default",
                    "--as",
                    "alice",
                ][..],
            ],
        )
        .await?;
        let pki = TestPki::new()?;
        let dir = tempfile::tempdir()?;
        let cert = pki.issue_server_for("proxy", &[netns.inside])?;
        let mut csv = String::new();
        for (token, name, uid, groups) in USERS {
            csv.push_str(&format!("{token},{name},{uid},\"{groups}\"\n"));
        }
        std::fs::write(dir.path().join("tokens.csv"), csv)?;
        std::fs::write(dir.path().join("edge.token"), format!("{EDGE_TOKEN}\n"))?;
        std::fs::write(dir.path().join("other.token"), OTHER_TOKEN)?;
        std::fs::write(dir.path().join("echo.token"), ECHO_TOKEN)?;
        std::fs::write(dir.path().join("direct.token"), kube.proxy_token())?;
        let yaml = format!(
            "listen: {ip}:{PORT}\n\
             tls: {{certFile: {cert}, keyFile: {key}}}\n\
             upstreams:\n\
             - {{name: edge, via: agent, agent: {{tokenFile: edge.token}}}}\n\
             - {{name: other, via: agent, agent: {{tokenFile: other.token}}}}\n\
             - {{name: echo, via: agent, agent: {{tokenFile: echo.token}}}}\n\
             - {{name: direct, url: '{kube_url}', caFile: {kube_ca}, tokenFile: direct.token, connectTimeout: 2s}}\n\
             authentication:\n  staticTokens: {{file: tokens.csv}}\n\
             metrics: {{listen: '{ip}:9090'}}\n\
             identityHeaders: {{rbac: constrained}}\n\
             shutdownTimeout: 1s\n",
            ip = netns.inside,
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
            kube_url = kube.url(),
            kube_ca = kube.pki().ca_path().display(),
        );
        let config = dir.path().join("authproxy.yaml");
        std::fs::write(&config, yaml)?;
        let proxy = start_proxy(&netns, dir.path())?;
        // The agent's own kubeconfig: kube-apiserver, as the agent's service account.
        let agent_token = kube.service_account_token("agent").await?;
        let agent_kubeconfig = dir.path().join("agent.kubeconfig");
        std::fs::write(
            &agent_kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: kube\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    token: {agent_token}\ncontexts:\n- name: kube\n  context: {{cluster: kube, user: agent}}\ncurrent-context: kube\n",
                kube.url(),
                kube.pki().ca_path().display()
            ),
        )?;
        let mut env = Behind {
            kube,
            netns,
            pki,
            dir,
            proxy,
            agent_kubeconfig,
            agents: 0,
        };
        for cluster in ["edge", "other", "echo"] {
            write_user_kubeconfig(
                &env.kubeconfig(cluster),
                &format!("{}/k8s/clusters/{cluster}", env.url()),
                env.pki.ca_path(),
            )?;
        }
        env.wait_ready().await?;
        Ok(Some(env))
    }

    /// Waits until the proxy answers `/readyz`.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let ready = format!("{}/readyz", self.url());
        let ca = self.pki.ca_path().to_owned();
        let started = wait_for(
            Duration::from_secs(20),
            "the proxy in its namespace",
            || {
                let (ready, ca) = (ready.clone(), ca.clone());
                async move {
                    match curl_with_ca(&ca, &[&ready]).await {
                        Ok((200, _)) => Ok(Some(())),
                        Ok((code, body)) => Err(format!("{code} {body}")),
                        Err(error) => Err(error.to_string()),
                    }
                }
            },
        )
        .await;
        if let Err(error) = started {
            let _ = self.proxy.start_kill();
            bail!("{error:#}\nproxy log:\n{}", self.proxy_log());
        }
        Ok(())
    }

    /// Stops the proxy and starts it again with the same configuration.
    async fn restart_proxy(&mut self) -> anyhow::Result<()> {
        self.proxy.kill().await?;
        self.proxy = start_proxy(&self.netns, self.dir.path())?;
        self.wait_ready().await
    }

    fn url(&self) -> String {
        format!("https://{}:{PORT}", self.netns.inside)
    }

    fn kubeconfig(&self, cluster: &str) -> PathBuf {
        self.dir.path().join(format!("{cluster}.kubeconfig"))
    }

    fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    fn log_of(&self, agent: &Agent) -> String {
        std::fs::read_to_string(&agent.log).unwrap_or_default()
    }

    /// Starts `authproxy agent` for `cluster` with the token in `token_file`,
    /// reaching kube-apiserver with `kubeconfig`.
    fn agent_with(
        &mut self,
        cluster: &str,
        token_file: &str,
        kubeconfig: &Path,
    ) -> anyhow::Result<Agent> {
        self.agents += 1;
        let log = self.dir.path().join(format!("agent-{}.log", self.agents));
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(authproxy_binary()?)
            .arg("agent")
            .args(["--proxy-url", &self.url()])
            .arg("--proxy-ca-file")
            .arg(self.pki.ca_path())
            .arg("--token-file")
            .arg(self.dir.path().join(token_file))
            .args(["--cluster", cluster])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--backoff-base", "100ms", "--backoff-max", "1s"])
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()?;
        Ok(Agent { child, log })
    }

    fn agent(&mut self, cluster: &str) -> anyhow::Result<Agent> {
        let kubeconfig = self.agent_kubeconfig.clone();
        self.agent_with(cluster, &format!("{cluster}.token"), &kubeconfig)
    }

    /// curl as alice at `path` of the proxy, with user agent `agent`.
    async fn curl_as_alice(&self, agent: &str, path: &str) -> anyhow::Result<(u16, String)> {
        curl_with_ca(
            self.pki.ca_path(),
            &[
                "-A",
                agent,
                "-H",
                "Authorization: Bearer alice-token",
                &format!("{}{path}", self.url()),
            ],
        )
        .await
    }

    /// Waits until `/k8s/clusters/<cluster>/version` answers `code`.
    async fn wait_answer(&self, cluster: &str, code: u16) -> anyhow::Result<String> {
        let path = format!("/k8s/clusters/{cluster}/version");
        let result = wait_for(Duration::from_secs(20), "the cluster's answer", || {
            let path = path.clone();
            async move {
                match self.curl_as_alice("agent-tests", &path).await {
                    Ok((c, body)) if c == code => Ok(Some(body)),
                    Ok((c, body)) => Err(format!("{c} {body}")),
                    Err(error) => Err(error.to_string()),
                }
            }
        })
        .await;
        result.with_context(|| format!("proxy log:\n{}", self.proxy_log()))
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}:9090/metrics", self.netns.inside))
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    async fn kubectl(&self, cluster: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        authproxy_tests::kubectl_with(&self.kubeconfig(cluster), args).await
    }
}

/// `authproxy serve` inside `netns` with `dir`'s config, appending to its log.
fn start_proxy(netns: &Netns, dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("proxy.log"))?;
    Ok(netns
        .command(authproxy_binary()?)
        .arg("serve")
        .arg("--config")
        .arg(dir.join("authproxy.yaml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?)
}

impl Drop for Behind {
    fn drop(&mut self) {
        let _ = self.proxy.start_kill();
    }
}

/// A running `authproxy agent` and its log file.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

macro_rules! behind_or_skip {
    () => {
        match Behind::start().await? {
            Some(env) => env,
            None => return Ok(()),
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reaches_a_cluster_the_proxy_cannot_through_its_agent() -> anyhow::Result<()> {
    let mut env = behind_or_skip!();
    // From the proxy's namespace kube-apiserver is out of reach: the direct
    // cluster is a 503, and so is a curl from inside.
    let (code, body) = env
        .curl_as_alice("agent-tests", "/k8s/clusters/direct/version")
        .await?;
    assert_eq!(code, 503, "{body}");
    let inside = env
        .netns
        .command("curl")
        .args(["-sS", "--max-time", "5", "-k"])
        .arg(format!("{}/version", env.kube.url()))
        .output()
        .await?;
    assert!(
        !inside.status.success(),
        "kube-apiserver reachable from the proxy's namespace"
    );
    // No agent yet.
    let body = env.wait_answer("edge", 503).await?;
    assert!(
        body.contains("no agent of cluster edge is connected"),
        "{body}"
    );

    let _agent = env.agent("edge")?;
    env.wait_answer("edge", 200).await?;

    // kubectl as alice, impersonated by the agent's own account.
    let out = env
        .kubectl("edge", &["auth", "whoami", "-o", "json"])
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let review: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        review["status"]["userInfo"]["username"], "alice",
        "{review}"
    );
    // A caller's own impersonation is reviewed by that cluster's API server,
    // through the tunnel: alice may not act as carol there, in kube's words.
    let (code, body) = curl_with_ca(
        env.pki.ca_path(),
        &[
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "Impersonate-User: carol",
            &format!(
                "{}/k8s/clusters/edge/api/v1/namespaces/default/configmaps",
                env.url()
            ),
        ],
    )
    .await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    assert!(
        body.contains(r#"configmaps is forbidden: User \"alice\" cannot impersonate-on:user-info:list resource \"configmaps\" in API group \"\" in the namespace \"default\""#),
        "{body}"
    );
    let marker = unique_marker("through-agent");
    let (code, body) = env
        .curl_as_alice(
            &marker,
            "/k8s/clusters/edge/api/v1/namespaces/default/configmaps",
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let events = env.kube.wait_audit_by_agent(&marker, 1).await?;
    assert_agent_acted_as_alice(&events[0]);
    assert_eq!(
        events[0]["requestURI"], "/api/v1/namespaces/default/configmaps",
        "{}",
        events[0]
    );

    // A watch streams: an event made after it started arrives through the tunnel.
    let label = unique_marker("watched");
    let mut watch = kubectl_command()?
        .arg("--kubeconfig")
        .arg(env.kubeconfig("edge"))
        .args([
            "get",
            "configmaps",
            "-w",
            "-o",
            "name",
            "-l",
            &format!("agent-test={label}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().context("stdout")?).lines();
    // Let the watch start before the object exists.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {label}, namespace: default, labels: {{agent-test: {label}}}}}\ndata: {{a: b}}\n"
    );
    let out = env
        .kube
        .admin_async(&["apply", "-f", "-"], Some(&yaml))
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .context("no watch event within 20s")??;
    assert_eq!(line.as_deref(), Some(format!("configmap/{label}").as_str()));
    let _ = watch.start_kill();

    // A large object (about 900 KiB) arrives whole.
    let big = unique_marker("big");
    let value: String = (0..900 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {big}, namespace: default}}\ndata:\n  big: {value}\n"
    );
    let out = env
        .kube
        .admin_async(&["apply", "--server-side", "-f", "-"], Some(&yaml))
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let out = env
        .kubectl("edge", &["get", "configmaps", "-o", "json"])
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let found = list["items"]
        .as_array()
        .context("items")?
        .iter()
        .find(|item| item["metadata"]["name"] == big.as_str())
        .context("the large configmap is in the list")?;
    assert_eq!(
        found["data"]["big"].as_str().map(str::len),
        Some(value.len())
    );
    assert!(
        found["data"]["big"] == value.as_str(),
        "the large value arrived changed"
    );

    let metrics = env.metrics().await?;
    for sample in [
        "authproxy_tunnels_connected{cluster=\"edge\"} 1\n",
        "authproxy_tunnel_connects_total{cluster=\"edge\",result=\"accepted\"} 1\n",
    ] {
        assert!(metrics.contains(sample), "{sample} in {metrics}");
    }
    assert!(
        metrics.contains("authproxy_tunnel_requests_total{cluster=\"edge\"}"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_is_a_503_and_another_agent_serves_without_a_restart() -> anyhow::Result<()> {
    let mut env = behind_or_skip!();
    let first = env.agent("edge")?;
    env.wait_answer("edge", 200).await?;
    // A watch in flight on the tunnel when its agent goes ends, it does not hang.
    let existing = unique_marker("watched-before");
    env.kube.create_configmap(&existing, &existing).await?;
    let mut watch = tokio::process::Command::new("curl")
        .args(["-sS", "-N", "--max-time", "120", "--cacert"])
        .arg(env.pki.ca_path())
        .args(["-H", "Authorization: Bearer alice-token"])
        .arg(format!(
            "{}/k8s/clusters/edge/api/v1/namespaces/default/configmaps?watch=true",
            env.url()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut events = tokio::io::BufReader::new(watch.stdout.take().context("stdout")?).lines();
    // The watch is open once its first event (an existing configmap) arrived.
    tokio::time::timeout(Duration::from_secs(20), events.next_line())
        .await
        .context("the watch sent nothing")??
        .context("the watch ended at once")?;
    first.kill().await?;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while events.next_line().await?.is_some() {}
        watch.wait().await
    })
    .await
    .context("the watch through the lost tunnel did not end within 15s")??;
    assert!(!ended.success(), "curl saw the watch cut short: {ended:?}");
    let body = env.wait_answer("edge", 503).await?;
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status", "{body}");
    assert_eq!(status["reason"], "ServiceUnavailable", "{body}");
    assert_eq!(
        status["message"], "no agent of cluster edge is connected",
        "{body}"
    );

    // A second agent: requests flow again, the proxy was not restarted.
    let second = env.agent("edge")?;
    env.wait_answer("edge", 200).await?;
    assert!(
        env.proxy.try_wait()?.is_none(),
        "the proxy is still the same process"
    );

    // Two agents connected: killing one fails no new request.
    let _third = env.agent("edge")?;
    wait_for(Duration::from_secs(20), "two tunnels", || async {
        let metrics = env.metrics().await.map_err(|e| e.to_string())?;
        if metrics.contains("authproxy_tunnels_connected{cluster=\"edge\"} 2\n") {
            Ok(Some(()))
        } else {
            Err("not yet two".to_owned())
        }
    })
    .await?;
    second.kill().await?;
    for i in 0..20 {
        let (code, body) = env
            .curl_as_alice(
                "agent-tests",
                "/k8s/clusters/edge/api/v1/namespaces/default/configmaps?limit=1",
            )
            .await?;
        assert_eq!(
            code, 200,
            "request {i} after losing one of two agents: {body}"
        );
    }
    let metrics = env.metrics().await?;
    assert!(
        metrics.contains("authproxy_tunnels_connected{cluster=\"edge\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("authproxy_tunnel_connects_total{cluster=\"edge\",result=\"accepted\"} 3\n"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reconnects_when_the_proxy_comes_back() -> anyhow::Result<()> {
    let mut env = behind_or_skip!();
    let agent = env.agent("edge")?;
    env.wait_answer("edge", 200).await?;
    env.restart_proxy().await?;
    // The new proxy process has no tunnel until the agent dials again.
    env.wait_answer("edge", 200).await?;
    let log = env.log_of(&agent);
    assert!(log.contains("reconnecting"), "{log}");
    assert_eq!(log.matches("tunnel connected").count(), 2, "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_a_wrong_token_or_another_clusters_name_are_refused() -> anyhow::Result<()> {
    let mut env = behind_or_skip!();
    let wrong = "not-a-registration-token-41c9";
    std::fs::write(env.dir.path().join("wrong.token"), wrong)?;
    let kubeconfig = env.agent_kubeconfig.clone();
    let stranger = env.agent_with("edge", "wrong.token", &kubeconfig)?;
    // The token of `edge`, claiming `other`.
    let impostor = env.agent_with("other", "edge.token", &kubeconfig)?;
    wait_for(
        Duration::from_secs(20),
        "both refusals in the proxy log",
        || async {
            let log = env.proxy_log();
            if log.contains("the token is no cluster's registration token")
                && log.contains("claims another cluster")
            {
                Ok(Some(()))
            } else {
                Err(log)
            }
        },
    )
    .await?;
    let log = env.proxy_log();
    assert!(log.contains("other"), "the claimed cluster is named: {log}");
    for secret in [wrong, EDGE_TOKEN, OTHER_TOKEN] {
        assert!(!log.contains(secret), "a token in the proxy log: {log}");
    }
    // The agents say why (once the refusal reached them), and keep trying.
    let stranger_log = wait_for(
        Duration::from_secs(20),
        "the refusal in the agent's log",
        || async {
            let log = env.log_of(&stranger);
            if log.contains("refused the registration") {
                Ok(Some(log))
            } else {
                Err(log)
            }
        },
    )
    .await?;
    assert!(!stranger_log.contains(wrong), "{stranger_log}");
    for cluster in ["edge", "other"] {
        let (code, body) = env
            .curl_as_alice("agent-tests", &format!("/k8s/clusters/{cluster}/version"))
            .await?;
        assert_eq!(code, 503, "{cluster}: {body}");
    }
    let metrics = env.metrics().await?;
    assert!(
        metrics.contains("authproxy_tunnel_connects_total{cluster=\"edge\",result=\"refused\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("authproxy_tunnels_connected{cluster=\"other\"} 0\n"),
        "{metrics}"
    );
    // The endpoint refuses a registration by hand too, with a Status.
    let (code, body) = curl_with_ca(
        env.pki.ca_path(),
        &[
            "--http1.1",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: authproxy-tunnel/1",
            "-H",
            "Authorization: Bearer alice-token",
            &format!("{}/authproxy/agent/connect", env.url()),
        ],
    )
    .await?;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    drop((stranger, impostor));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_registration_token_disconnects_the_agents_of_the_one_before(
) -> anyhow::Result<()> {
    let mut env = behind_or_skip!();
    // The agent keeps its own copy of the token it registered with.
    std::fs::write(env.dir.path().join("echo-before.token"), ECHO_TOKEN)?;
    let kubeconfig = env.agent_kubeconfig.clone();
    let before = env.agent_with("echo", "echo-before.token", &kubeconfig)?;
    env.wait_answer("echo", 200).await?;
    // The proxy's token of `echo` changes (re-read every reloadInterval, 1s).
    let rotated = "echo-rotated-registration-token-51c07f";
    std::fs::write(env.dir.path().join("echo.token"), rotated)?;
    // Its tunnel is closed: the cluster has no agent, and the agent's
    // registrations with the token before are refused.
    env.wait_answer("echo", 503).await?;
    let metrics = env.metrics().await?;
    for sample in [
        "authproxy_tunnels_closed_total{cluster=\"echo\",reason=\"token_retired\"} 1\n",
        "authproxy_tunnels_connected{cluster=\"echo\"} 0\n",
    ] {
        assert!(metrics.contains(sample), "{sample} in {metrics}");
    }
    let log = env.proxy_log();
    for secret in [ECHO_TOKEN, rotated] {
        assert!(!log.contains(secret), "a token in the proxy log: {log}");
    }
    // An agent with the new token serves.
    let after = env.agent_with("echo", "echo.token", &kubeconfig)?;
    env.wait_answer("echo", 200).await?;
    let (code, _) = env
        .curl_as_alice("agent-tests", "/k8s/clusters/echo/version")
        .await?;
    assert_eq!(code, 200);
    drop((before, after));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_cross_the_tunnel_both_ways() -> anyhow::Result<()> {
    let mut env = behind_or_skip!();
    // The test kubelet (kube's own streaming code) serves the pod; the proxy,
    // in its namespace, reaches it only through the agent.
    let kube = authproxy_tests::streaming::kube_with_kubelet().await?;
    let _edge = env.agent("edge")?;
    env.wait_answer("edge", 200).await?;
    let pod = unique_marker("tunnel-exec");
    kube.running_pod(&pod).await?;
    // Every byte value, and more than one window of flow control.
    let sent: Vec<u8> = (0..256 * 1024).map(|i: usize| (i % 251) as u8).collect();
    for spdy in [false, true] {
        let route = authproxy_tests::streaming::Route::new(
            &format!("edge-{}", if spdy { "spdy" } else { "websocket" }),
            env.kubeconfig("edge"),
            &[],
            spdy,
        );
        let out = route
            .run(
                &["exec", "-i", &pod, "-c", CONTAINER, "--", "cat"],
                Some(&sent),
                authproxy_tests::streaming::BOUND,
            )
            .await?;
        assert!(out.status.success(), "{route}: {}", output_text(&out));
        assert!(
            out.stdout == sent,
            "{route}: {} bytes came back",
            out.stdout.len()
        );
        let verb = if spdy { "create" } else { "get" };
        let events = env
            .kube
            .wait_audit(1, |e| {
                e["objectRef"]["name"] == pod.as_str()
                    && e["objectRef"]["subresource"] == "exec"
                    && e["verb"] == verb
            })
            .await?;
        assert_agent_acted_as_alice(&events[0]);
    }

    // kube-apiserver has no kubelet: its refusal comes back through the tunnel,
    // after its RBAC let alice (impersonated by the agent) ask.
    let pod = unique_marker("exec-target");
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n"
    );
    let out = env
        .kube
        .admin_async(&["apply", "-f", "-"], Some(&yaml))
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let out = env.kubectl("edge", &["exec", &pod, "--", "true"]).await?;
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("does not have a host assigned"), "{text}");
    let events = env
        .kube
        .wait_audit(1, |e| {
            e["objectRef"]["name"] == pod.as_str() && e["objectRef"]["subresource"] == "exec"
        })
        .await?;
    assert_agent_acted_as_alice(&events[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_manifest_applies_and_its_account_may_impersonate_and_nothing_else(
) -> anyhow::Result<()> {
    let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let manifest = authproxy_tests::package_dir().join("../deploy/agent/agent.yaml");
    let text = std::fs::read_to_string(&manifest)?;
    let account = "system:serviceaccount:authproxy-agent:authproxy-agent";
    kube.apply_rbac(
        &text,
        &[&[
            "impersonate-on:user-info:list",
            "pods",
            "-n",
            "default",
            "--as",
            account,
        ][..]],
    )
    .await?;
    // The fallback DaemonSet selects control-plane nodes by the label's
    // presence: RKE2 and k3s set it to "true", kubeadm to "".
    let out = kube
        .admin_async(
            &[
                "get",
                "-n",
                "authproxy-agent",
                "daemonset/authproxy-node-agent",
                "-o",
                "json",
            ],
            None,
        )
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let daemonset: Value = serde_json::from_slice(&out.stdout)?;
    let pod = &daemonset["spec"]["template"]["spec"];
    assert!(pod["nodeSelector"].is_null(), "{pod}");
    let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        terms.iter().any(|t| t["matchExpressions"][0]
            == serde_json::json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"})),
        "{pod}"
    );
    // users, groups, uids and user extras by constrained impersonation:
    // kubectl's can-i cannot name these, kube is asked.
    for (resource, subresource) in [
        ("users", ""),
        ("groups", ""),
        ("uids", ""),
        ("userextras", "example.com/login"),
    ] {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": account, "groups": ["system:serviceaccounts", "system:serviceaccounts:authproxy-agent"],
                     "resourceAttributes": {"verb": "impersonate:user-info", "group": "authentication.k8s.io",
                                            "resource": resource, "subresource": subresource}}});
        let out = kube
            .admin_async(
                &["create", "-f", "-", "-o", "json"],
                Some(&review.to_string()),
            )
            .await?;
        anyhow::ensure!(out.status.success(), "{}", output_text(&out));
        let answer: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(
            answer["status"]["allowed"], true,
            "impersonate {resource}: {answer}"
        );
    }
    for check in [
        &["list", "pods", "-A", "--as", account][..],
        // not the legacy verb
        &["impersonate", "users/alice", "--as", account][..],
        &["impersonate", "groups/devs", "--as", account][..],
        &["get", "secrets", "-n", "authproxy-agent", "--as", account][..],
        // acting as a service account is opt-in, as in the chart
        &[
            "impersonate",
            "serviceaccounts/default",
            "-n",
            "default",
            "--as",
            account,
        ][..],
        &[
            "create",
            "pods",
            "--subresource=exec",
            "-n",
            "default",
            "--as",
            account,
        ][..],
    ] {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(check);
        let out = kube.admin_async(&args, None).await?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{check:?}"
        );
        // The suite's own reading of can-i (`Kube::can_i`, on which
        // `apply_rbac` waits) answers as kubectl does.
        let (allowed, why) = kube.can_i(&[check]).await?.remove(0);
        assert!(!allowed, "Kube::can_i {check:?} said yes: {why}");
    }
    for object in [
        "deployment/authproxy-agent",
        "daemonset/authproxy-node-agent",
    ] {
        let out = kube
            .admin_async(
                &["get", "-n", "authproxy-agent", object, "-o", "name"],
                None,
            )
            .await?;
        assert!(out.status.success(), "{object}: {}", output_text(&out));
    }
    Ok(())
}

/// The audit event of a request the agent made for alice: its account
/// authenticated, alice impersonated.
fn assert_agent_acted_as_alice(event: &serde_json::Value) {
    assert_eq!(event["user"]["username"], AGENT_ACCOUNT, "{event}");
    assert_eq!(event["impersonatedUser"]["username"], "alice", "{event}");
}
