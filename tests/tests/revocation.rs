//! Revoking issued tokens, against the real kube-apiserver: the store is
//! ConfigMaps in a namespace of it, three `authproxy serve` replicas and an
//! `authproxy webhook` watch it, and a revocation made through one replica
//! is refused by all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use authproxy::config::FileConfig;
use authproxy_tests::apiserver::webhook_client::token_review;
use authproxy_tests::kube::{unique_marker, Kube, KubeEnv as Env};
use authproxy_tests::{output_text, TestPki};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::json;

/// A namespace for this test's store, where the proxy's account may keep
/// revocations and the `admins` group may revoke.
async fn store_namespace() -> anyhow::Result<(&'static Kube, String)> {
    let kube =
        tokio::task::spawn_blocking(|| authproxy_tests::kube::kube().map_err(|e| e.to_string()))
            .await?
            .map_err(anyhow::Error::msg)?;
    let ns = unique_marker("revocations");
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: revokers, namespace: {ns}}}\n\
         rules:\n- {{apiGroups: [authproxy.io], resources: [revocations], verbs: [create]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: revokers, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: revokers}}\n\
         subjects:\n- {{kind: Group, name: admins, apiGroup: rbac.authorization.k8s.io}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: authproxy-revocations, namespace: {ns}}}\n\
         rules:\n- {{apiGroups: [''], resources: [configmaps], verbs: [list, watch, create]}}\n\
         - {{apiGroups: [''], resources: [configmaps], resourceNames: [{shards}], verbs: [get, update]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: authproxy-revocations, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: authproxy-revocations}}\n\
         subjects:\n- {{kind: ServiceAccount, name: proxy, namespace: authproxy}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: authproxy-access-reviews}}\n\
         rules:\n- {{apiGroups: [authorization.k8s.io], resources: [subjectaccessreviews], verbs: [create]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: authproxy-access-reviews}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: authproxy-access-reviews}}\n\
         subjects:\n- {{kind: ServiceAccount, name: proxy, namespace: authproxy}}\n",
        shards = proxy_core::authn::revocation::store::shard_names().join(", "),
    );
    let proxy = "system:serviceaccount:authproxy:proxy";
    kube.apply_rbac(
        &yaml,
        &[
            &["watch", "configmaps", "-n", &ns, "--as", proxy],
            &[
                "update",
                "configmaps/authproxy-revocations-users",
                "-n",
                &ns,
                "--as",
                proxy,
            ],
            &["create", "subjectaccessreviews", "--as", proxy],
            // (kubectl cannot ask about a resource kube does not serve:
            // the revokers' binding, applied before the proxy's in the
            // same file, is in force when the proxy's is.)
        ],
    )
    .await?;
    Ok((kube, ns))
}

/// The `authentication:` lines of a replica: static tokens exchanged for
/// issued tokens signed with `key`, revocations in `ns` (reached through
/// `kubeconfig` when given, else the upstream).
fn issued_with_revocation(
    key: &std::path::Path,
    ns: &str,
    kubeconfig: Option<&std::path::Path>,
) -> String {
    let mut revocation = json!({"namespace": ns});
    if let Some(path) = kubeconfig {
        revocation["kubeconfig"] = json!(path);
    }
    format!(
        "  issuedTokens: {}\n",
        json!({
            "issuer": "authproxy-revocation-test",
            "signingKeyFiles": [key],
            "lifetime": "10m",
            "exchangeFrom": ["staticToken"],
            "exchangeLimits": {"perClientPerMinute": 0, "perUserPerMinute": 0},
            "revocation": revocation,
        })
    )
}

/// The store's shards in `ns`: how many entries they hold, and each one's
/// `resourceVersion` (which changes with every write).
async fn store_shards(kube: &Kube, ns: &str) -> anyhow::Result<(usize, Vec<String>)> {
    let out = kube
        .admin_async(&["get", "configmaps", "-n", ns, "-o", "json"], None)
        .await?;
    anyhow::ensure!(out.status.success(), "{}", output_text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let items = list["items"].as_array().context("items")?;
    let entries = items
        .iter()
        .map(|cm| cm["data"].as_object().map_or(0, |d| d.len()))
        .sum();
    let versions = items
        .iter()
        .map(|cm| {
            cm["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    Ok((entries, versions))
}

/// `authproxy tokens revoke` at `env`'s proxy, to be told what.
fn revoke_cli(env: &Env) -> tokio::process::Command {
    let mut cmd =
        tokio::process::Command::new(authproxy_tests::authproxy_binary().expect("the binary"));
    cmd.args([
        "tokens",
        "revoke",
        "--server",
        &env.proxy_url(),
        "--ca-file",
    ])
    .arg(env.pki.ca_path());
    cmd
}

/// One HTTPS request over a fresh connection: (status, body).
async fn request(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let tls = authproxy_tests::pki::client_config(ca_pem, &[b"http/1.1"])?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder.body(Full::new(bytes::Bytes::from(
        body.map(|b| b.to_string()).unwrap_or_default(),
    )))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn addr_of(env: &Env) -> SocketAddr {
    env.proxy.as_ref().expect("proxy running").addr()
}

/// A token issued by `env` for the static token `static_token`.
async fn issued_token(env: &Env, static_token: &str) -> anyhow::Result<String> {
    let (code, body) = request(
        addr_of(env),
        env.pki.ca_pem(),
        "POST",
        "/authproxy/v1/token",
        Some(static_token),
        None,
    )
    .await?;
    anyhow::ensure!(code == 200, "token exchange: {code} {body}");
    let credential: serde_json::Value = serde_json::from_str(&body)?;
    Ok(credential["status"]["token"]
        .as_str()
        .context("no token")?
        .to_owned())
}

/// What `env` answers `GET /version` with `token`.
async fn version_as(env: &Env, token: &str) -> anyhow::Result<u16> {
    Ok(request(
        addr_of(env),
        env.pki.ca_pem(),
        "GET",
        "/version",
        Some(token),
        None,
    )
    .await?
    .0)
}

async fn revoke(
    env: &Env,
    bearer: Option<&str>,
    ask: serde_json::Value,
) -> anyhow::Result<(u16, String)> {
    request(
        addr_of(env),
        env.pki.ca_pem(),
        "POST",
        "/authproxy/v1/revocations",
        bearer,
        Some(ask),
    )
    .await
}

/// Waits until `env` answers `/readyz` 200.
async fn ready(env: &Env) -> anyhow::Result<String> {
    authproxy_tests::wait_for(Duration::from_secs(20), "replica ready", || async {
        let (code, body) = request(addr_of(env), env.pki.ca_pem(), "GET", "/readyz", None, None)
            .await
            .map_err(|e| e.to_string())?;
        if code == 200 {
            Ok(Some(body))
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await
}

/// A signing key file every replica shares.
fn signing_key(pki: &TestPki, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let key = dir.join("issuer.pem");
    std::fs::write(
        &key,
        pki.issue_client("issuer-key", "unused", None)?.key_pem,
    )?;
    Ok(key)
}

/// A kubeconfig to kube-apiserver at `server` with the proxy's token.
fn store_kubeconfig(
    kube: &Kube,
    dir: &std::path::Path,
    server: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!(
        "store-{}.kubeconfig",
        server.replace([':', '/', '.'], "-")
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube\n  cluster: {{server: '{server}', certificate-authority: {}}}\nusers:\n- name: proxy\n  user: {{token: {}}}\ncontexts:\n- name: store\n  context: {{cluster: kube, user: proxy}}\ncurrent-context: store\n",
            kube.pki().ca_path().display(),
            kube.proxy_token()
        ),
    )?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_replica_is_refused_by_the_others_and_the_webhook(
) -> anyhow::Result<()> {
    let (kube, ns) = store_namespace().await?;
    let shared = tempfile::tempdir()?;
    let pki = TestPki::new()?;
    let key = signing_key(&pki, shared.path())?;
    let auth = issued_with_revocation(&key, &ns, None);
    // (kube is also the store the webhook reads through a kubeconfig.)
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let env = Env::start_with(TestPki::new()?, &auth).await?;
        ready(&env).await?;
        replicas.push(env);
    }
    // The webhook on "another node", reading the store through a kubeconfig.
    let webhook_dir = tempfile::tempdir()?;
    let cert = pki.issue_server("webhook")?;
    let kubeconfig = store_kubeconfig(kube, webhook_dir.path(), &kube.url())?;
    std::fs::write(
        webhook_dir.path().join("tokens.csv"),
        "unused-token,nobody,9,\"\"\n",
    )?;
    let config_path = webhook_dir.path().join("webhook.yaml");
    std::fs::write(
        &config_path,
        format!(
            "tls: {{certFile: {}, keyFile: {}}}\nauthentication:\n  staticTokens: {{file: tokens.csv}}\n{}",
            cert.cert_path.display(),
            cert.key_path.display(),
            issued_with_revocation(&key, &ns, Some(&kubeconfig)),
        ),
    )?;
    let config = FileConfig::load(&config_path)?;
    let webhook =
        authproxy::webhook::start(&config, webhook_dir.path(), "127.0.0.1:0".parse()?).await?;
    let webhook_addr = webhook.addr();
    let ca = pki.ca_pem().to_owned();
    let hook_ca = ca.clone();
    let reviewed = move |token: String| {
        let ca = hook_ca.clone();
        async move {
            let review =
                token_review(webhook_addr, &ca, "authentication.k8s.io/v1", &token, &[]).await?;
            anyhow::Ok(review["status"]["authenticated"] == true)
        }
    };
    authproxy_tests::wait_for(Duration::from_secs(20), "webhook lists revocations", || {
        let ca = ca.clone();
        async move {
            let (code, body) = request(webhook_addr, &ca, "GET", "/readyz", None, None)
                .await
                .map_err(|e| e.to_string())?;
            if code == 200 {
                Ok(Some(()))
            } else {
                Err(format!("{code} {body}"))
            }
        }
    })
    .await?;

    let bob = issued_token(&replicas[0], "bob-token").await?;
    let replicas = Arc::new(replicas);
    let mut propagation = Vec::new();
    for round in 0..100 {
        let alice = issued_token(&replicas[round % 3], "alice-token").await?;
        for env in replicas.iter() {
            assert_eq!(version_as(env, &alice).await?, 200, "round {round}");
        }
        anyhow::ensure!(reviewed(alice.clone()).await?, "round {round}: webhook");
        let started = Instant::now();
        let (code, body) = revoke(&replicas[0], None, json!({"token": alice})).await?;
        assert_eq!(code, 200, "{body}");
        // The replica that wrote it refuses at once.
        assert_eq!(version_as(&replicas[0], &alice).await?, 401);
        let mut waits = Vec::new();
        for i in 1..3 {
            let replicas = replicas.clone();
            let alice = alice.clone();
            waits.push(tokio::spawn(async move {
                authproxy_tests::wait_for(Duration::from_secs(10), "replica refuses", || async {
                    let code = version_as(&replicas[i], &alice)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok((code == 401).then_some(()))
                })
                .await
            }));
        }
        let token = alice.clone();
        let hook = reviewed.clone();
        waits.push(tokio::spawn(async move {
            authproxy_tests::wait_for(Duration::from_secs(10), "webhook refuses", || {
                let check = hook(token.clone());
                async move {
                    let authenticated = check.await.map_err(|e| e.to_string())?;
                    Ok((!authenticated).then_some(()))
                }
            })
            .await
        }));
        for wait in waits {
            wait.await??;
        }
        propagation.push(started.elapsed());
    }
    propagation.sort();
    let p50 = propagation[propagation.len() / 2];
    let p99 = propagation[propagation.len() * 99 / 100 - 1];
    let max = propagation[propagation.len() - 1];
    eprintln!(
        "revocation propagation to 2 replicas and a webhook over {} revocations: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        propagation.len()
    );
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    // Other users are untouched.
    for env in replicas.iter() {
        assert_eq!(version_as(env, &bob).await?, 200);
    }
    assert!(reviewed(bob.clone()).await?);
    // The store holds one entry per revocation.
    let (entries, _) = store_shards(kube, &ns).await?;
    assert_eq!(entries, 100);
    // Thirty revocations at once through all three replicas: every one lands
    // (writers of one shard retry on conflict), and everyone refuses them.
    let mut tokens = Vec::new();
    for _ in 0..30 {
        tokens.push(issued_token(&replicas[0], "alice-token").await?);
    }
    let mut writes = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let replicas = replicas.clone();
        let token = token.clone();
        writes.push(tokio::spawn(async move {
            revoke(&replicas[i % 3], None, json!({"token": token})).await
        }));
    }
    for write in writes {
        let (code, body) = write.await??;
        assert_eq!(code, 200, "{body}");
    }
    for token in &tokens {
        for env in replicas.iter() {
            let token = token.clone();
            authproxy_tests::wait_for(Duration::from_secs(10), "refused everywhere", || async {
                let code = version_as(env, &token).await.map_err(|e| e.to_string())?;
                Ok((code == 401).then_some(()))
            })
            .await?;
        }
    }
    let (entries, versions) = store_shards(kube, &ns).await?;
    assert_eq!(entries, 130);
    // Revoking a revoked token again writes nothing.
    let (code, _) = revoke(&replicas[1], None, json!({"token": tokens[0]})).await?;
    assert_eq!(code, 200);
    assert_eq!(store_shards(kube, &ns).await?.1, versions);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_anyone_else_is_for_whom_kube_rbac_allows() -> anyhow::Result<()> {
    let (_, ns) = store_namespace().await?;
    let shared = tempfile::tempdir()?;
    let pki = TestPki::new()?;
    let key = signing_key(&pki, shared.path())?;
    let env = Env::start_with_top_level(
        TestPki::new()?,
        &issued_with_revocation(&key, &ns, None),
        "audit: {path: audit.log, level: Metadata}",
    )
    .await?;
    ready(&env).await?;
    let alice = issued_token(&env, "alice-token").await?;
    let bob = issued_token(&env, "bob-token").await?;
    // bob may not revoke alice (kube's RBAC says so), nor anyone anonymous.
    let (code, body) = revoke(&env, Some("bob-token"), json!({"user": "alice"})).await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("revocations"), "{body}");
    let (code, _) = revoke(&env, None, json!({"user": "alice"})).await?;
    assert_eq!(code, 401);
    // Only JSON is taken (no form a browser could be made to post).
    let (code, body) = authproxy_tests::curl_with_ca(
        env.pki.ca_path(),
        &[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer admin-token",
            "-H",
            "Content-Type: text/plain",
            "--data",
            "{\"user\": \"alice\"}",
            &format!("{}/authproxy/v1/revocations", env.proxy_url()),
        ],
    )
    .await?;
    assert_eq!(code, 415, "{body}");
    // Bad requests change nothing.
    for ask in [
        json!({}),
        json!({"user": "a", "session": "b"}),
        json!({"issuedBefore": "yesterday"}),
        json!({"token": "not-a-token"}),
    ] {
        let (code, body) = revoke(&env, Some("admin-token"), ask.clone()).await?;
        assert_eq!(code, 400, "{ask}: {body}");
    }
    assert_eq!(version_as(&env, &alice).await?, 200);
    // root (group admins) may: with the CLI, every token of alice.
    let out = revoke_cli(&env)
        .args(["--user", "alice"])
        .env("AUTHPROXY_BEARER_TOKEN", "admin-token")
        .output()
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(version_as(&env, &alice).await?, 401);
    assert_eq!(version_as(&env, &bob).await?, 200);
    // A later login of alice works (once past the revocation's margin for
    // replicas' clocks, 5 s).
    tokio::time::sleep(Duration::from_millis(6100)).await;
    let again = issued_token(&env, "alice-token").await?;
    assert_eq!(version_as(&env, &again).await?, 200);
    // A token revokes its own session with nothing else: the CLI with the file.
    let file = shared.path().join("bob.token");
    std::fs::write(&file, &bob)?;
    let out = revoke_cli(&env)
        .arg("--token-file")
        .arg(&file)
        .output()
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(version_as(&env, &bob).await?, 401);
    // Everything issued until now.
    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let (code, body) = revoke(&env, Some("admin-token"), json!({"issuedBefore": at})).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(version_as(&env, &again).await?, 401);
    // Static tokens are not issued tokens: untouched.
    assert_eq!(version_as(&env, "alice-token").await?, 200);
    // Each revocation is in the audit log: what, by whom, and refusals.
    let audit = env.dir.path().join("audit.log");
    let events =
        authproxy_tests::wait_for(Duration::from_secs(10), "revocation audit events", || {
            let audit = audit.clone();
            async move {
                let events: Vec<serde_json::Value> = authproxy_tests::observe::audit_lines(&audit)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|e| e["requestURI"] == "/authproxy/v1/revocations")
                    .collect();
                Ok((events
                    .iter()
                    .filter(|e| e["responseStatus"]["code"] == 200)
                    .count()
                    >= 3)
                    .then_some(events))
            }
        })
        .await?;
    let revoked: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 200)
        .map(|e| {
            (
                e["annotations"]["authproxy.io/revoked"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                e["annotations"]["authproxy.io/revoked-by"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        revoked[0]
            .0
            .starts_with("every token of user \"alice\" issued until 20"),
        "{revoked:?}"
    );
    assert_eq!(revoked[0].1, "root");
    assert!(revoked[1].0.starts_with("session "), "{revoked:?}");
    assert_eq!(revoked[1].1, "bob", "a token that revoked itself: its user");
    assert!(
        revoked[2].0.starts_with("every token issued until "),
        "{revoked:?}"
    );
    let refused = events
        .iter()
        .find(|e| e["responseStatus"]["code"] == 403)
        .context("bob's refused revocation")?;
    assert_eq!(refused["user"]["username"], "bob");
    Ok(())
}

/// A TCP forwarder to `target` that can be cut and restored on the same
/// port: the store's API server going away and coming back.
struct Forwarder {
    port: u16,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> anyhow::Result<Forwarder> {
        let mut f = Forwarder {
            port: authproxy_tests::free_port()?,
            target,
            task: None,
        };
        f.up().await?;
        Ok(f)
    }

    async fn up(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        Ok(())
    }

    /// Closes the listener and every connection through it.
    fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_unreachable_the_last_set_holds_and_a_new_replica_waits(
) -> anyhow::Result<()> {
    let (kube, ns) = store_namespace().await?;
    let kube_addr: SocketAddr = kube
        .url()
        .trim_start_matches("https://")
        .parse()
        .context("kube's address")?;
    let mut forwarder = Forwarder::start(kube_addr).await?;
    let shared = tempfile::tempdir()?;
    let pki = TestPki::new()?;
    let key = signing_key(&pki, shared.path())?;
    let via = store_kubeconfig(
        kube,
        shared.path(),
        &format!("https://127.0.0.1:{}", forwarder.port),
    )?;
    let auth = issued_with_revocation(&key, &ns, Some(&via));
    let a = Env::start_with(TestPki::new()?, &auth).await?;
    assert_eq!(ready(&a).await?, "ok");
    let revoked = issued_token(&a, "alice-token").await?;
    let kept = issued_token(&a, "bob-token").await?;
    let (code, body) = revoke(&a, None, json!({"token": revoked})).await?;
    assert_eq!(code, 200, "{body}");

    forwarder.down();
    // Still ready, and saying so; the last set holds.
    let said = authproxy_tests::wait_for(
        Duration::from_secs(30),
        "readyz says the store is gone",
        || async {
            let (code, body) = request(addr_of(&a), a.pki.ca_pem(), "GET", "/readyz", None, None)
                .await
                .map_err(|e| e.to_string())?;
            Ok((code == 200 && body.contains("unreachable")).then_some(body))
        },
    )
    .await?;
    assert!(said.contains("stay in force"), "{said}");
    assert_eq!(version_as(&a, &revoked).await?, 401);
    assert_eq!(version_as(&a, &kept).await?, 200);
    // A replica started now cannot know the set: it is not ready, and takes
    // no issued token, until it can.
    let b = Env::start_with(TestPki::new()?, &auth).await?;
    let (code, body) = request(addr_of(&b), b.pki.ca_pem(), "GET", "/readyz", None, None).await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not been listed"), "{body}");
    assert_eq!(version_as(&b, &kept).await?, 503);
    assert_eq!(
        version_as(&b, "alice-token").await?,
        200,
        "static tokens need no store"
    );
    forwarder.up().await?;
    ready(&b).await?;
    assert_eq!(version_as(&b, &kept).await?, 200);
    assert_eq!(version_as(&b, &revoked).await?, 401);
    authproxy_tests::wait_for(
        Duration::from_secs(40),
        "replica a watches again",
        || async {
            let (code, body) = request(addr_of(&a), a.pki.ca_pem(), "GET", "/readyz", None, None)
                .await
                .map_err(|e| e.to_string())?;
            Ok((code == 200 && body == "ok").then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_cached_login_and_forgets_it() -> anyhow::Result<()> {
    use authproxy_tests::slapd::{Slapd, SERVICE_DN};
    let (_, ns) = store_namespace().await?;
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    let shared = tempfile::tempdir()?;
    let key = signing_key(&pki, shared.path())?;
    let ldap = json!({
        "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
        "caFile": pki.ca_path(),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": slapd.service_password_file()?,
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid", "uidAttribute": "employeeNumber"},
        "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
    });
    let issued = json!({
        "issuer": "authproxy-revocation-test",
        "signingKeyFiles": [key],
        "lifetime": "10m",
        "revocation": {"namespace": ns},
    });
    let env = Env::start_with(pki, &format!("  ldap: {ldap}\n  issuedTokens: {issued}\n")).await?;
    ready(&env).await?;
    let cache = tempfile::tempdir()?;
    let plugin = |args: &[&str]| {
        let mut cmd =
            std::process::Command::new(authproxy_tests::authproxy_binary().expect("binary"));
        cmd.args(args)
            .args(["--server", &env.proxy_url(), "--ca-file"])
            .arg(env.pki.ca_path())
            .env("XDG_CACHE_HOME", cache.path())
            .env("AUTHPROXY_USERNAME", "alice")
            .env("AUTHPROXY_PASSWORD", "alice-password");
        tokio::process::Command::from(cmd)
    };
    let out = plugin(&["login", "ldap"]).output().await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let credential: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let token = credential["status"]["token"]
        .as_str()
        .context("token")?
        .to_owned();
    assert_eq!(version_as(&env, &token).await?, 200);
    let cached = || {
        std::fs::read_dir(cache.path().join("authproxy"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.starts_with("ldap-") && name.ends_with(".json")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(cached(), 1, "the login is cached");
    let out = plugin(&["logout"]).output().await?;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("logged out"),
        "{}",
        output_text(&out)
    );
    assert_eq!(cached(), 0, "the cache is emptied");
    assert_eq!(version_as(&env, &token).await?, 401, "the token is revoked");
    // Logging out again says there is nothing to do, and fails nothing.
    let out = plugin(&["logout"]).output().await?;
    assert!(out.status.success(), "{}", output_text(&out));
    // The next login is a new session.
    let out = plugin(&["login", "ldap"]).output().await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let again = again["status"]["token"].as_str().context("token")?;
    assert_ne!(again, token);
    assert_eq!(version_as(&env, again).await?, 200);
    Ok(())
}
