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
