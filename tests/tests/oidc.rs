//! OIDC sign-in against a real OpenID provider (oidc-provider from npm):
//! ID tokens from its authorization-code + PKCE flow, through authproxy, to
//! the API-server double. Only the negative cases are signed by hand.

use std::time::Duration;

use authproxy_tests::oidc::{generate_key, OidcProvider, SigningKey};
use authproxy_tests::{output_text, wait_for, Env, TestPki};
use serde_json::json;

struct World {
    env: Env,
    idp: OidcProvider,
    keys: Vec<SigningKey>,
    _key_dir: tempfile::TempDir,
}

async fn world() -> anyhow::Result<World> {
    let pki = TestPki::new()?;
    let key_dir = tempfile::tempdir()?;
    let keys = vec![
        generate_key(key_dir.path(), "rsa", "rsa-1").await?,
        generate_key(key_dir.path(), "ec", "ec-1").await?,
    ];
    let idp = OidcProvider::start(&pki, &keys).await?;
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes", "kubernetes-es"], "certificateAuthority": pki.ca_pem()},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}, "uid": {"claim": "sub"}},
        "signingAlgorithms": ["RS256", "ES256"],
        "clockSkew": "5s",
    }]);
    let env = Env::start_with(pki, &format!("  jwt: {jwt}")).await?;
    let url = format!("{}/readyz", env.proxy_url());
    let env_ref = &env;
    wait_for(
        Duration::from_secs(20),
        "authproxy ready (keys loaded)",
        || {
            let url = url.clone();
            async move {
                let (code, body) = env_ref.curl(&[&url]).await.map_err(|e| e.to_string())?;
                if code == 200 {
                    Ok(Some(()))
                } else {
                    Err(format!("{code} {body}"))
                }
            }
        },
    )
    .await?;
    Ok(World {
        env,
        idp,
        keys,
        _key_dir: key_dir,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_an_id_token_lists_pods_as_the_mapped_user() -> anyhow::Result<()> {
    let w = world().await?;
    for (client, login) in [("kubernetes", "alice"), ("kubernetes-es", "carol")] {
        let token = w.idp.id_token(client, login).await?;
        w.env.double.clear_requests();
        let out = w
            .env
            .kubectl(&["--token", &token, "get", "pods", "-o", "json"])
            .await?;
        assert!(out.status.success(), "{client}: {}", output_text(&out));
        let listed = w
            .env
            .upstream_requests()
            .into_iter()
            .find(|r| r.uri.path() == "/api/v1/namespaces/default/pods")
            .expect("pods list reached the double");
        assert_eq!(
            listed.header_values("impersonate-user"),
            [format!("{login}@example.com")]
        );
        assert_eq!(listed.header_values("impersonate-uid"), [login.to_string()]);
        assert_eq!(
            listed
                .header_values("impersonate-group")
                .first()
                .map(String::as_str),
            Some("oidc:devs")
        );
        assert!(
            listed.bearer_token().is_some_and(|t| t != token),
            "the ID token must not reach the API server"
        );
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims like the provider's, for the hand-made negative cases.
fn claims(w: &World) -> serde_json::Value {
    json!({"iss": w.idp.issuer(), "aud": "kubernetes", "sub": "mallory", "email": "mallory@example.com",
           "email_verified": true, "groups": ["devs"], "iat": now(), "exp": now() + 600})
}

fn sign_rs256(key: &SigningKey, kid: &str, claims: &serde_json::Value) -> anyhow::Result<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(key.pem.as_bytes())?,
    )?)
}

async fn assert_refused(w: &World, token: &str) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/namespaces/default/pods", w.env.proxy_url());
    let (code, body) = w
        .env
        .curl(&["-H", &format!("Authorization: Bearer {token}"), &url])
        .await?;
    assert_eq!(code, 401, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    assert!(!body.contains(token), "the token was echoed back");
    assert!(
        w.env.upstream_requests().is_empty(),
        "a refused token reached the API server"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_signed_valid_token_is_accepted_so_the_negative_cases_mean_something(
) -> anyhow::Result<()> {
    let w = world().await?;
    let token = sign_rs256(&w.keys[0], &w.keys[0].kid, &claims(&w))?;
    let (code, body) = w
        .env
        .curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/api/v1/namespaces/default/pods", w.env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_refused() -> anyhow::Result<()> {
    use base64::Engine;
    let w = world().await?;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(&w))
    );
    assert_refused(&w, &token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_public_key_is_refused() -> anyhow::Result<()> {
    let w = world().await?;
    let public = authproxy_tests::oidc::public_pem(&w.keys[0]).await?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(w.keys[0].kid.clone());
    let token = jsonwebtoken::encode(
        &header,
        &claims(&w),
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )?;
    assert_refused(&w, &token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused() -> anyhow::Result<()> {
    let w = world().await?;
    let mut c = claims(&w);
    c["iat"] = json!(now() - 7200);
    c["exp"] = json!(now() - 3600);
    assert_refused(&w, &sign_rs256(&w.keys[0], &w.keys[0].kid, &c)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_token_is_refused() -> anyhow::Result<()> {
    let w = world().await?;
    let mut c = claims(&w);
    c["nbf"] = json!(now() + 3600);
    assert_refused(&w, &sign_rs256(&w.keys[0], &w.keys[0].kid, &c)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_is_refused() -> anyhow::Result<()> {
    let w = world().await?;
    let mut c = claims(&w);
    c["aud"] = json!("some-other-client");
    assert_refused(&w, &sign_rs256(&w.keys[0], &w.keys[0].kid, &c)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_is_refused() -> anyhow::Result<()> {
    let w = world().await?;
    let mut c = claims(&w);
    c["iss"] = json!(format!("{}/other", w.idp.issuer()));
    assert_refused(&w, &sign_rs256(&w.keys[0], &w.keys[0].kid, &c)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_id_is_refused() -> anyhow::Result<()> {
    let w = world().await?;
    let dir = tempfile::tempdir()?;
    let stranger = generate_key(dir.path(), "rsa", "stranger").await?;
    assert_refused(&w, &sign_rs256(&stranger, "stranger", &claims(&w))?).await
}
