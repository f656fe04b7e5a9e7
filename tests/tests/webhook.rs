//! `authproxy webhook` answering the TokenReviews kube-apiserver sends, for an
//! OIDC token from the real provider, a static token and a bad token.

use std::time::Duration;

use authproxy::config::FileConfig;
use authproxy_tests::double::webhook_client::token_review;
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::TestPki;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reviews_get_kube_shaped_answers() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let keys = vec![generate_key(dir.path(), "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(&pki, &keys).await?;
    let cert = pki.issue_server("webhook")?;
    std::fs::write(
        dir.path().join("tokens.csv"),
        "static-token-1,sam,2001,\"ops,admins\"\n",
    )?;
    std::fs::write(
        dir.path().join("issuer.pem"),
        pki.issue_client("issuer-key", "unused", None)?.key_pem,
    )?;
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}, "uid": {"claim": "sub"}},
    }]);
    let config_path = dir.path().join("webhook.yaml");
    std::fs::write(
        &config_path,
        format!(
            "tls: {{certFile: {}, keyFile: {}}}\nauthentication:\n  staticTokens: {{file: tokens.csv}}\n  jwt: {jwt}\n  issuedTokens: {{issuer: authproxy-test, signingKeyFiles: [issuer.pem]}}\n",
            cert.cert_path.display(),
            cert.key_path.display()
        ),
    )?;
    let config = FileConfig::load(&config_path)?;
    let server = authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?;
    let addr = server.addr();

    // ready once the issuer's keys are loaded
    let pki_ref = &pki;
    authproxy_tests::wait_for(Duration::from_secs(20), "webhook ready", || async move {
        let (code, _) =
            authproxy_tests::curl_with_ca(pki_ref.ca_path(), &[&format!("https://{addr}/readyz")])
                .await
                .map_err(|e| e.to_string())?;
        Ok((code == 200).then_some(()))
    })
    .await?;

    // Rancher kube-api-auth's health path answers too
    let (code, body) =
        authproxy_tests::curl_with_ca(pki.ca_path(), &[&format!("https://{addr}/healthcheck")])
            .await?;
    assert_eq!((code, body.as_str()), (200, "ok"));

    let id_token = idp.id_token("kubernetes", "alice").await?;
    let oidc = token_review(
        addr,
        pki.ca_pem(),
        "authentication.k8s.io/v1",
        &id_token,
        &[],
    )
    .await?;
    assert_eq!(oidc["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(oidc["kind"], "TokenReview");
    assert_eq!(oidc["status"]["authenticated"], true, "{oidc}");
    assert_eq!(oidc["status"]["user"]["username"], "alice@example.com");
    assert_eq!(oidc["status"]["user"]["uid"], "alice");
    assert_eq!(oidc["status"]["user"]["groups"], json!(["oidc:devs"]));

    let stat = token_review(
        addr,
        pki.ca_pem(),
        "authentication.k8s.io/v1beta1",
        "static-token-1",
        &["https://kubernetes.default.svc"],
    )
    .await?;
    assert_eq!(stat["apiVersion"], "authentication.k8s.io/v1beta1");
    assert_eq!(stat["status"]["authenticated"], true, "{stat}");
    assert_eq!(stat["status"]["user"]["username"], "sam");
    assert_eq!(stat["status"]["user"]["groups"], json!(["ops", "admins"]));
    // A static token is audience-agnostic: no audience is confirmed (kube-apiserver
    // then checks the audiences it wanted against its own API audiences).
    assert!(stat["status"].get("audiences").is_none(), "{stat}");

    // A token issued by another replica that shares the signing key.
    let replica = proxy_core::authn::IssuedTokens::load(
        "authproxy-test",
        &[dir.path().join("issuer.pem")],
        Duration::from_secs(600),
    )?;
    let user = proxy_core::UserInfo {
        username: "dora".into(),
        uid: Some("3001".into()),
        groups: vec!["devs".into()],
        ..Default::default()
    };
    let (issued, _) = replica.issue(&user)?;
    let answer = token_review(addr, pki.ca_pem(), "authentication.k8s.io/v1", &issued, &[]).await?;
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");
    assert_eq!(answer["status"]["user"]["username"], "dora");
    assert_eq!(answer["status"]["user"]["uid"], "3001");

    for bad in ["wrong-token", "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."] {
        let answer = token_review(addr, pki.ca_pem(), "authentication.k8s.io/v1", bad, &[]).await?;
        assert_eq!(answer["status"]["authenticated"], false, "{answer}");
        assert!(
            answer["status"].get("user").is_none(),
            "a refused token must have no user: {answer}"
        );
        assert!(!answer.to_string().contains(bad), "the token was echoed");
    }
    server.shutdown().await;
    Ok(())
}

/// The authorized cluster endpoint, as on an RKE node: kube-apiserver calls
/// `authproxy webhook` for tokens it does not know, and kubectl talks to
/// kube-apiserver directly with a token that authproxy issued for an LDAP
/// login, or with an OIDC ID token; one kubeconfig carries both the proxy's
/// context and the direct one, sharing a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_cluster_endpoint_kube_verifies_issued_and_oidc_tokens_through_the_webhook(
) -> anyhow::Result<()> {
    use authproxy_tests::kube::{assert_kubectl_acts_as, kube, Expected, KubeEnv};
    use authproxy_tests::slapd::{Slapd, SERVICE_DN};
    use authproxy_tests::{output_text, write_user_kubeconfig};

    let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
        .await?
        .map_err(anyhow::Error::msg)?;
    // kube trusts this CA for the webhook's certificate; slapd and the IdP
    // use it too, so one CA file serves every client here.
    let kpki = kube.pki();
    let slapd = Slapd::start(kpki).await?;
    let key_dir = tempfile::tempdir()?;
    let keys = vec![generate_key(key_dir.path(), "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(kpki, &keys).await?;
    let signing_key = key_dir.path().join("issuer.pem");
    std::fs::write(
        &signing_key,
        kpki.issue_client("ace-issuer-key", "unused", None)?.key_pem,
    )?;
    let auth = format!(
        "  ldap: {}\n  jwt: {}\n  issuedTokens: {}\n",
        json!({
            "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
            "caFile": kpki.ca_path(),
            "bindDN": SERVICE_DN,
            "bindPasswordFile": slapd.service_password_file()?,
            "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid", "uidAttribute": "employeeNumber"},
            "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
        }),
        json!([{
            "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": kpki.ca_pem()},
            "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}, "uid": {"claim": "sub"}},
        }]),
        json!({"issuer": "authproxy-ace", "signingKeyFiles": [&signing_key], "lifetime": "10m"}),
    );

    // The webhook where kube-apiserver expects it, with the same authenticators.
    let dir = tempfile::tempdir()?;
    let cert = kpki.issue_server("ace-webhook")?;
    let config_path = dir.path().join("webhook.yaml");
    std::fs::write(
        &config_path,
        format!(
            "tls: {{certFile: {}, keyFile: {}}}\nwebhook: {{failedReviewsPerMinute: 3}}\nauthentication:\n{auth}",
            cert.cert_path.display(),
            cert.key_path.display()
        ),
    )?;
    let config = FileConfig::load(&config_path)?;
    let webhook = authproxy::webhook::start(&config, dir.path(), kube.webhook_addr()).await?;
    let addr = webhook.addr();
    authproxy_tests::wait_for(Duration::from_secs(20), "webhook ready", || async move {
        let (code, _) =
            authproxy_tests::curl_with_ca(kpki.ca_path(), &[&format!("https://{addr}/readyz")])
                .await
                .map_err(|e| e.to_string())?;
        Ok((code == 200).then_some(()))
    })
    .await?;
    // The proxy, sharing the issued-token keys with the webhook.
    let env = KubeEnv::start_with(TestPki::new()?, &auth).await?;

    // Anyone who reaches kube-apiserver can make it ask the webhook about any
    // token: many refused tokens (more than failedReviewsPerMinute) must not
    // make the webhook refuse the reviews of everyone else.
    for i in 0..12 {
        let (code, body) = authproxy_tests::curl_with_ca(
            kpki.ca_path(),
            &[
                "-H",
                &format!("Authorization: Bearer garbage-token-{i}"),
                &format!("{}/api", kube.url()),
            ],
        )
        .await?;
        assert_eq!(code, 401, "{body}");
    }

    // (a) a token the proxy issued for an LDAP login, straight to kube
    let (code, body) = env
        .curl(&[
            "-X",
            "POST",
            "-u",
            "alice:alice-password",
            &format!("{}/authproxy/v1/token", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    let credential: serde_json::Value = serde_json::from_str(&body)?;
    let issued = credential["status"]["token"].as_str().unwrap_or_default();
    let direct = dir.path().join("direct.kubeconfig");
    let token_kubeconfig = |token: &str| -> anyhow::Result<()> {
        write_user_kubeconfig(&direct, &kube.url(), kpki.ca_path())?;
        let text = std::fs::read_to_string(&direct)?
            .replace("token: alice-token", &format!("token: '{token}'"));
        std::fs::write(&direct, text)?;
        Ok(())
    };
    token_kubeconfig(issued)?;
    let alice = Expected {
        username: "alice",
        groups: &["devs"],
        uid: Some("1001"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&direct, Some("alice"), &alice).await?;
    let event = kube
        .wait_audit(1, |e| {
            e["user"]["username"] == "alice" && e["impersonatedUser"].is_null()
        })
        .await?;
    assert!(
        event[0]["user"]["groups"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("devs"))),
        "kube itself authenticated alice through the webhook: {}",
        event[0]
    );

    // (b) an OIDC ID token from the real provider, straight to kube
    let id_token = idp.id_token("kubernetes", "carol").await?;
    token_kubeconfig(&id_token)?;
    let carol = Expected {
        username: "carol@example.com",
        groups: &["oidc:devs", "oidc:ops"],
        uid: Some("carol"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&direct, Some("alice"), &carol).await?;

    // a bad token: kube's own 401
    token_kubeconfig("not-a-token")?;
    let out =
        authproxy_tests::kubectl_with(&direct, &["--context", "alice", "get", "pods"]).await?;
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("provide credentials")
            || String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        output_text(&out)
    );

    // One kubeconfig, two contexts (via the proxy and direct), one login.
    let kubeconfig = dir.path().join("ace.kubeconfig");
    let out = tokio::process::Command::new(authproxy_tests::authproxy_binary()?)
        .args(["kubeconfig", "--server", &env.proxy_url(), "--ca-file"])
        .arg(env.pki.ca_path())
        .args([
            "--name",
            "lab",
            "--direct-server",
            &kube.url(),
            "--direct-ca-file",
        ])
        .arg(kpki.ca_path())
        .arg("--output")
        .arg(&kubeconfig)
        .output()
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let cache = tempfile::tempdir()?;
    let dave_dn = "uid=dave,ou=people,dc=example,dc=org";
    for context in ["lab", "lab-direct", "lab", "lab-direct"] {
        let mut cmd = authproxy_tests::kubectl_command()?;
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--context", context, "auth", "whoami", "-o", "json"])
            .env("XDG_CACHE_HOME", cache.path())
            .env("AUTHPROXY_USERNAME", "dave")
            .env("AUTHPROXY_PASSWORD", "dave-password");
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
        assert!(out.status.success(), "{context}: {}", output_text(&out));
        let review: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(
            review["status"]["userInfo"]["username"], "dave",
            "{context}: {review}"
        );
    }
    assert_eq!(
        slapd.binds_for(dave_dn)?,
        1,
        "both contexts share one login"
    );
    webhook.shutdown().await;
    Ok(())
}
