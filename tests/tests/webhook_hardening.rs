//! The TokenReview webhook and the token endpoint facing hostile callers:
//! client certificates required with a client CA (curl with and without
//! one), loopback only without, failed reviews throttled, audiences answered
//! as kube's authenticators answer them, and token exchanges that never
//! outlive their source, from configured sources only, rate-limited.

use std::path::Path;
use std::time::Duration;

use authproxy::config::FileConfig;
use authproxy_tests::double::webhook_client::token_review;
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::{curl_with_ca, wait_for, Env, TestPki};
use base64::Engine;
use serde_json::json;

const STATIC_TOKENS: &str = "static-token-1,sam,2001,\"ops\"\n";

/// Writes a webhook config into `dir` with `extra` top-level YAML lines and
/// `auth` lines under `authentication:`.
fn webhook_config(
    pki: &TestPki,
    dir: &Path,
    extra: &str,
    auth: &str,
) -> anyhow::Result<FileConfig> {
    let cert = pki.issue_server("webhook")?;
    std::fs::write(dir.join("tokens.csv"), STATIC_TOKENS)?;
    let path = dir.join("webhook.yaml");
    std::fs::write(
        &path,
        format!(
            "tls: {{certFile: {}, keyFile: {}}}\n{extra}\nauthentication:\n  staticTokens: {{file: tokens.csv}}\n{auth}\n",
            cert.cert_path.display(),
            cert.key_path.display(),
        ),
    )?;
    Ok(FileConfig::load(&path)?)
}

/// Writes a webhook config into `dir` that requires client certificates
/// signed by `pki`'s CA, with `top` YAML lines at the top level and `auth`
/// lines under `authentication:` beside the static tokens; its path.
fn client_ca_config(
    pki: &TestPki,
    dir: &Path,
    top: &str,
    auth: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let cert = pki.issue_server("webhook")?;
    std::fs::write(dir.join("tokens.csv"), STATIC_TOKENS)?;
    let path = dir.join("webhook.yaml");
    std::fs::write(
        &path,
        format!(
            "tls: {{certFile: {}, keyFile: {}, clientCAFile: {}}}\n{top}authentication:\n{auth}  staticTokens: {{file: tokens.csv}}\n",
            cert.cert_path.display(),
            cert.key_path.display(),
            pki.ca_path().display(),
        ),
    )?;
    Ok(path)
}

fn review_body(token: &str, audiences: &[&str]) -> String {
    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
           "spec": {"token": token, "audiences": audiences}})
    .to_string()
}

/// Reviews `static-token-1` at `addr` as kube-apiserver (a client
/// certificate of `pki` named `kube-apiserver`): it must be sam's.
async fn assert_kube_apiserver_is_answered(
    pki: &TestPki,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let apiserver = pki.issue_client("kube-apiserver", "kube-apiserver", None)?;
    let (code, body) = curl_review(
        pki.ca_path(),
        addr,
        "static-token-1",
        Some((&apiserver.cert_path, &apiserver.key_path)),
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""authenticated":true"#), "{body}");
    assert!(body.contains(r#""username":"sam""#), "{body}");
    Ok(())
}

/// POSTs a TokenReview with curl; `client` adds `--cert`/`--key`.
async fn curl_review(
    ca: &Path,
    addr: std::net::SocketAddr,
    token: &str,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<(u16, String)> {
    let body = review_body(token, &[]);
    let url = format!("https://{addr}/v1/authenticate");
    let mut args: Vec<String> = vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        body,
        "-D".into(),
        "-".into(),
    ];
    if let Some((cert, key)) = client {
        args.extend([
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
    }
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl_with_ca(ca, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_the_webhook_requires_a_verified_client_certificate() -> anyhow::Result<()>
{
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let path = client_ca_config(&pki, dir.path(), "", "")?;
    let config = FileConfig::load(&path)?;
    let server = authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?;
    let addr = server.addr();
    assert_kube_apiserver_is_answered(&pki, addr).await?;

    let refused = curl_review(pki.ca_path(), addr, "static-token-1", None).await;
    assert!(
        refused.is_err(),
        "a caller without a client certificate got an answer: {refused:?}"
    );
    let stranger_pki = TestPki::new()?;
    let stranger = stranger_pki.issue_client("stranger", "kube-apiserver", None)?;
    let refused = curl_review(
        pki.ca_path(),
        addr,
        "static-token-1",
        Some((&stranger.cert_path, &stranger.key_path)),
    )
    .await;
    assert!(
        refused.is_err(),
        "a certificate of another CA was accepted: {refused:?}"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_ca_the_webhook_listens_on_loopback_only_unless_allowed(
) -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let config = webhook_config(&pki, dir.path(), "", "")?;
    let any: std::net::SocketAddr = "0.0.0.0:0".parse()?;
    let error = match authproxy::webhook::start(&config, dir.path(), any).await {
        Ok(server) => {
            server.shutdown().await;
            panic!("the webhook listened on {any} without client certificates");
        }
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("webhook.allowUnauthenticatedClients") && error.contains("tls.clientCAFile"),
        "{error}"
    );
    let loopback = authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?;
    loopback.shutdown().await;

    let allowed = webhook_config(
        &pki,
        dir.path(),
        "webhook: {allowUnauthenticatedClients: true}",
        "",
    )?;
    let server = authproxy::webhook::start(&allowed, dir.path(), any).await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reviews_are_throttled_per_token_never_per_caller() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let config = webhook_config(&pki, dir.path(), "webhook: {failedReviewsPerMinute: 3}", "")?;
    let server = authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?;
    let addr = server.addr();
    // Accepted reviews do not count.
    for _ in 0..5 {
        let (code, body) = curl_review(pki.ca_path(), addr, "static-token-1", None).await?;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""authenticated":true"#), "{body}");
    }
    // One caller (as kube-apiserver is for everyone) passing on many refused
    // tokens: each is answered, none locks the others out.
    for i in 0..10 {
        let (code, body) = curl_review(pki.ca_path(), addr, &format!("guess-{i}"), None).await?;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""authenticated":false"#), "{body}");
    }
    // An empty token is a refusal, never a success.
    let (code, body) = curl_review(pki.ca_path(), addr, "", None).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""authenticated":false"#), "{body}");
    assert!(!body.contains("username"), "{body}");
    // The same refused token again and again is throttled.
    for _ in 0..3 {
        let (code, body) = curl_review(pki.ca_path(), addr, "repeated-guess", None).await?;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""authenticated":false"#), "{body}");
    }
    let (code, body) = curl_review(pki.ca_path(), addr, "repeated-guess", None).await?;
    assert_eq!(code, 429, "{body}");
    let retry_after = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .or_else(|| l.strip_prefix("Retry-After: "))
        })
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| (1..=60).contains(&s)), "{body}");
    assert!(body.contains(r#""kind":"Status""#), "{body}");
    assert!(body.contains(r#""reason":"TooManyRequests""#), "{body}");
    assert!(!body.contains("repeated-guess"), "the token was echoed");
    // A token that authenticates is still answered, from the same caller.
    let (code, body) = curl_review(pki.ca_path(), addr, "static-token-1", None).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""authenticated":true"#), "{body}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_client_names_may_ask_when_the_ca_also_signs_users() -> anyhow::Result<()>
{
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let write =
        |names: &str| client_ca_config(&pki, dir.path(), names, "  clientCertificates: true\n");
    // One CA for users and for kube-apiserver, no names: check-config warns.
    let path = write("")?;
    let out = tokio::process::Command::new(authproxy_tests::authproxy_binary()?)
        .arg("check-config")
        .arg(&path)
        .output()
        .await?;
    let text = authproxy_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning:") && text.contains("webhook.allowedClientNames"),
        "{text}"
    );

    let path = write("webhook: {allowedClientNames: [kube-apiserver]}\n")?;
    let out = tokio::process::Command::new(authproxy_tests::authproxy_binary()?)
        .arg("check-config")
        .arg(&path)
        .output()
        .await?;
    let text = authproxy_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("warning:"), "{text}");
    let config = FileConfig::load(&path)?;
    let server = authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?;
    let addr = server.addr();
    assert_kube_apiserver_is_answered(&pki, addr).await?;
    // A user's certificate from the same CA: verified, but not a caller.
    let user = pki.issue_client("alice", "alice", Some("devs"))?;
    let (code, body) = curl_review(
        pki.ca_path(),
        addr,
        "static-token-1",
        Some((&user.cert_path, &user.key_path)),
    )
    .await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(r#""kind":"Status""#), "{body}");
    assert!(!body.contains("sam"), "the review was answered: {body}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reviews_confirm_only_the_audiences_the_token_is_valid_for() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let keys = vec![generate_key(dir.path(), "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(&pki, &keys).await?;
    std::fs::write(
        dir.path().join("issuer.pem"),
        pki.issue_client("issuer-key", "unused", None)?.key_pem,
    )?;
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes", "kubernetes-es"], "certificateAuthority": pki.ca_pem()},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}},
    }]);
    let config = webhook_config(
        &pki,
        dir.path(),
        "webhook: {apiAudiences: ['https://kube.example']}",
        &format!("  jwt: {jwt}\n  issuedTokens: {{issuer: authproxy-test, signingKeyFiles: [issuer.pem]}}"),
    )?;
    let server = authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?;
    let addr = server.addr();
    let pki_ref = &pki;
    wait_for(Duration::from_secs(20), "webhook ready", || async move {
        let (code, _) = curl_with_ca(pki_ref.ca_path(), &[&format!("https://{addr}/readyz")])
            .await
            .map_err(|e| e.to_string())?;
        Ok((code == 200).then_some(()))
    })
    .await?;
    let v1 = "authentication.k8s.io/v1";
    let review = |token: String, audiences: &'static [&'static str]| {
        let ca = pki.ca_pem().to_owned();
        async move { token_review(addr, &ca, v1, &token, audiences).await }
    };

    let id_token = idp.id_token("kubernetes", "alice").await?;
    let own = review(id_token.clone(), &[]).await?;
    assert_eq!(own["status"]["authenticated"], true, "{own}");
    assert_eq!(
        own["status"]["audiences"],
        json!(["kubernetes", "https://kube.example"]),
        "{own}"
    );
    // kube-apiserver asks for its API audiences: the token is valid for them,
    // as kube's own OIDC authenticator accepts it for them
    let api = review(id_token.clone(), &["https://kube.example"]).await?;
    assert_eq!(api["status"]["authenticated"], true, "{api}");
    assert_eq!(
        api["status"]["audiences"],
        json!(["https://kube.example"]),
        "{api}"
    );
    let some = review(id_token.clone(), &["https://vault.example", "kubernetes"]).await?;
    assert_eq!(some["status"]["authenticated"], true, "{some}");
    assert_eq!(some["status"]["audiences"], json!(["kubernetes"]), "{some}");
    // A token for the cluster is not valid for another service.
    let other = review(id_token.clone(), &["https://vault.example"]).await?;
    assert_eq!(other["status"]["authenticated"], false, "{other}");
    assert!(other["status"].get("user").is_none(), "{other}");
    assert!(
        other["status"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("is invalid for the target audiences")),
        "{other}"
    );

    // Issued tokens are valid for their own audience and the API audiences only.
    let replica = proxy_core::authn::IssuedTokens::load(
        "authproxy-test",
        &[dir.path().join("issuer.pem")],
        Duration::from_secs(600),
    )?;
    let (issued, _) = replica.issue(&proxy_core::UserInfo {
        username: "dora".into(),
        ..Default::default()
    })?;
    let own = review(issued.clone(), &[]).await?;
    assert_eq!(
        own["status"]["audiences"],
        json!(["authproxy-test", "https://kube.example"]),
        "{own}"
    );
    let other = review(issued, &["https://vault.example"]).await?;
    assert_eq!(other["status"]["authenticated"], false, "{other}");

    // A static token is audience-agnostic: authenticated, no audience confirmed.
    let agnostic = review("static-token-1".into(), &["https://vault.example"]).await?;
    assert_eq!(agnostic["status"]["authenticated"], true, "{agnostic}");
    assert!(agnostic["status"].get("audiences").is_none(), "{agnostic}");
    server.shutdown().await;
    Ok(())
}

fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_u64()
}

async fn exchange(env: &Env, auth: &[&str]) -> anyhow::Result<(u16, String)> {
    let url = format!("{}/authproxy/v1/token", env.proxy_url());
    let mut args = vec!["-X", "POST", "-D", "-"];
    args.extend_from_slice(auth);
    args.push(&url);
    env.curl(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_never_outlives_the_id_token_it_came_from() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let keys = vec![generate_key(dir.path(), "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(&pki, &keys).await?;
    let key_path = dir.path().join("issuer.pem");
    std::fs::write(
        &key_path,
        pki.issue_client("issuer-key", "unused", None)?.key_pem,
    )?;
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}},
    }]);
    let auth = format!(
        "  jwt: {jwt}\n  issuedTokens: {{issuer: authproxy-test, signingKeyFiles: [{}], lifetime: 24h}}",
        key_path.display()
    );
    let env = Env::start_with(pki, &auth).await?;
    let env_ref = &env;
    wait_for(Duration::from_secs(20), "authproxy ready", || async move {
        let (code, _) = env_ref
            .curl(&[&format!("{}/readyz", env_ref.proxy_url())])
            .await
            .map_err(|e| e.to_string())?;
        Ok((code == 200).then_some(()))
    })
    .await?;
    let id_token = idp.id_token("kubernetes", "alice").await?;
    let id_exp = jwt_exp(&id_token).expect("the provider's ID token has an exp");
    let bearer = format!("Authorization: Bearer {id_token}");
    let (code, body) = exchange(&env, &["-H", &bearer]).await?;
    assert_eq!(code, 200, "{body}");
    let json_start = body.find('{').unwrap_or(0);
    let credential: serde_json::Value = serde_json::from_str(&body[json_start..])?;
    let token = credential["status"]["token"].as_str().unwrap_or_default();
    let issued_exp = jwt_exp(token).expect("the issued token has an exp");
    assert!(
        issued_exp <= id_exp,
        "issued token expires at {issued_exp}, after its ID token ({id_exp}): {body}"
    );
    // An issued token is never exchanged for a new one.
    let (code, body) = exchange(&env, &["-H", &format!("Authorization: Bearer {token}")]).await?;
    assert_eq!(code, 401, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_logins_are_exchanged_and_exchanges_are_rate_limited() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new()?;
    let key_path = dir.path().join("issuer.pem");
    std::fs::write(
        &key_path,
        pki.issue_client("issuer-key", "unused", None)?.key_pem,
    )?;
    // Default sources (ldap, oidc): a static token is not exchanged.
    let default = Env::start_with(
        pki,
        &format!(
            "  issuedTokens: {{issuer: authproxy-test, signingKeyFiles: [{}]}}",
            key_path.display()
        ),
    )
    .await?;
    let (code, body) = exchange(&default, &["-H", "Authorization: Bearer alice-token"]).await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(r#""reason":"Forbidden""#), "{body}");
    drop(default);

    let limited = Env::start_with(
        TestPki::new()?,
        &format!(
            "  issuedTokens:\n    issuer: authproxy-test\n    signingKeyFiles: [{}]\n    exchangeFrom: [staticToken]\n    exchangeLimits: {{perClientPerMinute: 4, perUserPerMinute: 2}}",
            key_path.display()
        ),
    )
    .await?;
    let alice = ["-H", "Authorization: Bearer alice-token"];
    let bob = ["-H", "Authorization: Bearer bob-token"];
    for _ in 0..2 {
        let (code, body) = exchange(&limited, &alice).await?;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = exchange(&limited, &alice).await?;
    assert_eq!(code, 429, "per user: {body}");
    assert!(
        body.to_ascii_lowercase().contains("retry-after: "),
        "{body}"
    );
    assert!(body.contains("for this user"), "{body}");
    let (code, body) = exchange(&limited, &bob).await?;
    assert_eq!(code, 200, "bob has his own allowance: {body}");
    let (code, body) = exchange(&limited, &bob).await?;
    assert_eq!(code, 429, "per client address: {body}");
    assert!(body.contains("from this address"), "{body}");
    assert!(body.contains(r#""reason":"TooManyRequests""#), "{body}");
    Ok(())
}
