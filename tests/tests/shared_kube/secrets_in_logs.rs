//! No secret in any output: `authproxy serve` and `authproxy webhook` (the
//! built binary, logging at debug level) in front of the real kube-apiserver,
//! with every kind of credential used, right and wrong (static tokens, LDAP
//! passwords, OIDC ID tokens, issued tokens, client certificates, the
//! proxy's own token, the directory's bind password, signing keys). Every
//! token, password and key the test used is then searched for in both
//! processes' logs, the audit file and a metrics scrape: 0 hits.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use authproxy_tests::kube::kube;
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::slapd::{Slapd, SERVICE_DN, SERVICE_PASSWORD};
use authproxy_tests::{authproxy_binary, curl_with_ca, free_port, wait_for};
use serde_json::json;

/// Starts the binary with `args`, its output into `log`.
fn start(args: &[&str], log: &Path) -> anyhow::Result<tokio::process::Child> {
    let out = std::fs::File::create(log)?;
    Ok(tokio::process::Command::new(authproxy_binary()?)
        .args(args)
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()?)
}

/// The long secret lines of a PEM file (its base64 body), each of which
/// must never be printed.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_password_or_key_reaches_a_log_the_audit_or_metrics() -> anyhow::Result<()> {
    let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let pki = kube.pki();
    let slapd = Slapd::start(pki).await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let keys = vec![generate_key(d, "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(pki, &keys).await?;
    let signing = pki.issue_client("issuer-key", "unused", None)?;
    let serving = pki.issue_server("proxy")?;
    let user_cert = pki.issue_client("alice-cert", "alice", Some("devs"))?;
    std::fs::write(d.join("proxy-token"), kube.proxy_token())?;
    std::fs::write(
        d.join("tokens.csv"),
        "static-secret-token-7f3a,alice,1001,\"devs\"\n",
    )?;
    let (listen, metrics, webhook) = (free_port()?, free_port()?, free_port()?);
    let config = format!(
        "listen: 127.0.0.1:{listen}\n\
         tls: {{certFile: {cert}, keyFile: {key}, clientCAFile: {ca}}}\n\
         upstream: {{url: '{kube_url}', caFile: {ca}, tokenFile: proxy-token}}\n\
         logging: {{level: debug}}\n\
         metrics: {{listen: '127.0.0.1:{metrics}'}}\n\
         audit: {{path: audit.log, level: Metadata}}\n\
         authentication:\n  clientCertificates: true\n  staticTokens: {{file: tokens.csv}}\n  ldap: {ldap}\n  jwt: {jwt}\n  issuedTokens: {issued}\n",
        cert = serving.cert_path.display(),
        key = serving.key_path.display(),
        ca = pki.ca_path().display(),
        kube_url = kube.url(),
        ldap = json!({
            "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
            "caFile": pki.ca_path(),
            "bindDN": SERVICE_DN,
            "bindPasswordFile": slapd.service_password_file()?,
            "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid"},
            "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
        }),
        jwt = json!([{
            "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
            "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}},
        }]),
        issued = json!({"issuer": "authproxy-secrets", "signingKeyFiles": [&signing.key_path], "lifetime": "10m"}),
    );
    let config_path = d.join("authproxy.yaml");
    std::fs::write(&config_path, &config)?;
    let config_arg = config_path.display().to_string();
    // The webhook: the same authenticators, without the proxy's listeners.
    let webhook_config = d.join("webhook.yaml");
    std::fs::write(
        &webhook_config,
        config
            .lines()
            .filter(|l| !l.starts_with("metrics:") && !l.starts_with("audit:"))
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    let webhook_config_arg = webhook_config.display().to_string();
    let proxy_log = d.join("proxy.log");
    let webhook_log = d.join("webhook.log");
    let _proxy = start(&["serve", "--config", &config_arg], &proxy_log)?;
    let webhook_listen = format!("127.0.0.1:{webhook}");
    let _webhook = start(
        &[
            "webhook",
            "--config",
            &webhook_config_arg,
            "--listen",
            &webhook_listen,
        ],
        &webhook_log,
    )?;
    let ca = pki.ca_path();
    // kube-apiserver's client certificate: the webhook requires one.
    let apiserver = pki.issue_client("apiserver-client", "kube-apiserver", None)?;
    let (apiserver_cert, apiserver_key) = (
        apiserver.cert_path.display().to_string(),
        apiserver.key_path.display().to_string(),
    );
    for (port, log) in [(listen, &proxy_log), (webhook, &webhook_log)] {
        let (cert, key) = (&apiserver_cert, &apiserver_key);
        wait_for(Duration::from_secs(30), "ready", || async move {
            let url = format!("https://127.0.0.1:{port}/readyz");
            match curl_with_ca(ca, &["--cert", cert, "--key", key, &url]).await {
                Ok((200, _)) => Ok(Some(())),
                _ => Err(std::fs::read_to_string(log).unwrap_or_default()),
            }
        })
        .await?;
    }

    // Every kind of credential, right and wrong.
    let proxy = format!("https://127.0.0.1:{listen}");
    let pods = format!("{proxy}/api/v1/namespaces/default/pods");
    let id_token = idp.id_token("kubernetes", "carol").await?;
    let mut secrets: Vec<String> = vec![
        "static-secret-token-7f3a".into(),
        "wrong-static-token-19bd".into(),
        "alice-password".into(),
        "wrong-password-55c1".into(),
        SERVICE_PASSWORD.into(),
        kube.proxy_token().into(),
        id_token.clone(),
    ];
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    for token in [
        "static-secret-token-7f3a",
        "wrong-static-token-19bd",
        &id_token,
    ] {
        curl_with_ca(ca, &["-H", &bearer(token), &pods]).await?;
    }
    for login in ["alice:alice-password", "alice:wrong-password-55c1"] {
        curl_with_ca(ca, &["-u", login, &pods]).await?;
    }
    let (code, body) = curl_with_ca(
        ca,
        &[
            "-X",
            "POST",
            "-u",
            "alice:alice-password",
            &format!("{proxy}/authproxy/v1/token"),
        ],
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    let credential: serde_json::Value = serde_json::from_str(&body)?;
    let issued = credential["status"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!issued.is_empty(), "{body}");
    let (code, body) = curl_with_ca(ca, &["-H", &bearer(&issued), &pods]).await?;
    assert_eq!(code, 200, "{body}");
    secrets.push(issued.clone());
    // A forged issued token (its signature altered).
    let forged = format!("{}x", &issued[..issued.len() - 1]);
    curl_with_ca(ca, &["-H", &bearer(&forged), &pods]).await?;
    secrets.push(forged);
    let cert = user_cert.cert_path.display().to_string();
    let key = user_cert.key_path.display().to_string();
    let (code, body) = curl_with_ca(ca, &["--cert", &cert, "--key", &key, &pods]).await?;
    assert_eq!(code, 200, "{body}");
    for review_token in [
        "static-secret-token-7f3a",
        "wrong-static-token-19bd",
        &issued,
    ] {
        let review = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                            "spec": {"token": review_token}})
        .to_string();
        curl_with_ca(
            ca,
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                &review,
                "--cert",
                &apiserver_cert,
                "--key",
                &apiserver_key,
                &format!("https://127.0.0.1:{webhook}/v1/authenticate"),
            ],
        )
        .await?;
    }
    for pem in [
        &signing.key_pem,
        &serving.key_pem,
        &user_cert.key_pem,
        &apiserver.key_pem,
    ] {
        secrets.extend(pem_lines(pem));
    }

    // The audit writer and the logs catch up; then every output is searched.
    let audit = d.join("audit.log");
    wait_for(Duration::from_secs(10), "audit events", || {
        let audit = audit.clone();
        async move {
            let text = std::fs::read_to_string(&audit).unwrap_or_default();
            Ok((text.lines().count() >= 8).then_some(()))
        }
    })
    .await?;
    let scrape = scrape_metrics(metrics).await?;
    assert!(scrape.contains("authproxy_"), "{scrape}");
    let outputs = [
        ("proxy log", std::fs::read_to_string(&proxy_log)?),
        ("webhook log", std::fs::read_to_string(&webhook_log)?),
        ("audit log", std::fs::read_to_string(&audit)?),
        ("metrics", scrape),
    ];
    assert!(
        outputs[0].1.lines().count() > 10,
        "the proxy logged too little to prove anything: {}",
        outputs[0].1
    );
    let mut hits = Vec::new();
    for (name, text) in &outputs {
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                hits.push(format!(
                    "{name} holds {}...",
                    &secret[..secret.len().min(12)]
                ));
            }
        }
    }
    assert!(hits.is_empty(), "{}", hits.join("\n"));
    Ok(())
}

/// `/metrics` of the plain-HTTP metrics listener, with curl.
async fn scrape_metrics(port: u16) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "scrape failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
