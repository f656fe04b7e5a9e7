//! OIDC input that must not break the proxy: JWKS keys without `alg` from the
//! real provider, and fractional or malformed NumericDates (`exp`, `nbf`,
//! `iat`) in tokens signed by hand with the provider's own key, read as
//! kube-apiserver reads them (tests/jwt_oracle.rs holds them against kube
//! itself).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authproxy_tests::oidc::{generate_key, OidcProvider, SigningKey};
use authproxy_tests::{wait_for, Env, TestPki};
use serde_json::json;

struct World {
    env: Env,
    idp: OidcProvider,
    key: SigningKey,
    _key_dir: tempfile::TempDir,
}

/// The provider (with `provider_env`), authproxy in front of the double with
/// no clock skew and a long cache, so only the token's own times end a session.
async fn world(provider_env: &[(&str, &str)]) -> anyhow::Result<World> {
    let pki = TestPki::new()?;
    let key_dir = tempfile::tempdir()?;
    let key = generate_key(key_dir.path(), "rsa", "rsa-1").await?;
    let idp = OidcProvider::start_with_env(&pki, std::slice::from_ref(&key), provider_env).await?;
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}},
        "signingAlgorithms": ["RS256", "ES256"],
        "clockSkew": "0s",
    }]);
    let auth = format!("  jwt: {jwt}\n  cache: {{maxTTL: 10m}}");
    let env = Env::start_with(pki, &auth).await?;
    let env_ref = &env;
    wait_for(
        Duration::from_secs(20),
        "authproxy ready (keys loaded)",
        || async move {
            match env_ref
                .curl(&[&format!("{}/readyz", env_ref.proxy_url())])
                .await
            {
                Ok((200, _)) => Ok(Some(())),
                Ok((code, body)) => Err(format!("/readyz {code}: {body}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    Ok(World {
        env,
        idp,
        key,
        _key_dir: key_dir,
    })
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn sign(w: &World, claims: &serde_json::Value) -> anyhow::Result<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(w.key.kid.clone());
    Ok(jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(w.key.pem.as_bytes())?,
    )?)
}

/// Claims like the provider's, with `times` (exp, nbf, iat) merged in.
fn claims(w: &World, times: serde_json::Value) -> serde_json::Value {
    let mut claims = json!({"iss": w.idp.issuer(), "aud": "kubernetes", "sub": "mallory",
        "email": "mallory@example.com", "email_verified": true, "groups": ["devs"],
        "iat": now().floor(), "exp": now().floor() + 600.0});
    if let (Some(c), Some(t)) = (claims.as_object_mut(), times.as_object()) {
        for (k, v) in t {
            c.insert(k.clone(), v.clone());
        }
    }
    claims
}

async fn pods(w: &World, token: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("{}/api/v1/namespaces/default/pods", w.env.proxy_url());
    w.env
        .curl(&["-H", &format!("Authorization: Bearer {token}"), &url])
        .await
}

async fn assert_refused(w: &World, token: &str, what: &str) -> anyhow::Result<()> {
    let (code, body) = pods(w, token).await?;
    assert_eq!(code, 401, "{what}: {body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["reason"], "Unauthorized", "{what}: {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_without_alg_are_typed_from_kty_and_verify_real_id_tokens() -> anyhow::Result<()>
{
    let w = world(&[("KEYS_WITHOUT_ALG", "1")]).await?;
    // The provider really publishes its RSA key without `alg`.
    let jwks_url = format!("{}/jwks", w.idp.issuer());
    let (code, body) = w.env.curl(&[&jwks_url]).await?;
    assert_eq!(code, 200, "{body}");
    let jwks: serde_json::Value = serde_json::from_str(&body)?;
    let rsa = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kty"] == "RSA"))
        .cloned()
        .unwrap_or_default();
    assert!(
        rsa.get("kid").is_some() && rsa.get("alg").is_none(),
        "{jwks}"
    );
    // Ready (checked in `world`), and a real ID token signed by that key works.
    let id_token = w.idp.id_token("kubernetes", "alice").await?;
    let (code, body) = pods(&w, &id_token).await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_exp_ends_the_cached_session_at_its_whole_second() -> anyhow::Result<()> {
    let w = world(&[]).await?;
    let exp = now().floor() + 4.5;
    let token = sign(&w, &claims(&w, json!({"exp": exp})))?;
    let (code, body) = pods(&w, &token).await?;
    assert_eq!(code, 200, "valid until its exp: {body}");
    // The cache (maxTTL 10m) must not keep the session past exp.
    let w_ref = &w;
    let token_ref = &token;
    wait_for(
        Duration::from_secs(30),
        "401 once exp has passed",
        || async move {
            match pods(w_ref, token_ref).await {
                Ok((401, _)) => Ok(Some(())),
                Ok((code, _)) => Err(format!("HTTP {code}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    // kube drops the fraction: the token ends as its whole second begins
    assert!(now() >= exp.trunc(), "refused before its exp");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iat_in_the_future_is_accepted_as_kube_accepts_it() -> anyhow::Result<()> {
    let w = world(&[]).await?;
    let token = sign(&w, &claims(&w, json!({"iat": now().floor() + 120.5})))?;
    let (code, body) = pods(&w, &token).await?;
    assert_eq!(
        code, 200,
        "kube does not compare iat with its clock: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_nbf_in_the_future_is_refused() -> anyhow::Result<()> {
    let w = world(&[]).await?;
    let token = sign(&w, &claims(&w, json!({"nbf": now().floor() + 120.5})))?;
    assert_refused(&w, &token, "nbf 120.5s ahead").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_are_read_as_kube_reads_them() -> anyhow::Result<()> {
    let w = world(&[]).await?;
    // The control case: the same claims with proper dates are accepted.
    let good = sign(&w, &claims(&w, json!({})))?;
    assert_eq!(pods(&w, &good).await?.0, 200);
    for (name, value) in [
        ("exp", json!(-1.5)),
        ("exp", json!(null)),
        ("nbf", json!(true)),
        ("nbf", json!("soon")),
        ("iat", json!("yesterday")),
        ("iat", json!(null)),
    ] {
        let token = sign(&w, &claims(&w, json!({ name: value })))?;
        assert_refused(&w, &token, &format!("{name}: {value}")).await?;
    }
    // kube (go-oidc) reads a string holding a number as that number, a null
    // nbf as none, and does not compare iat with its clock
    for (name, value) in [
        ("exp", json!("4102444800")),
        ("nbf", json!("0")),
        ("nbf", json!(null)),
        ("iat", json!(-3600.25)),
    ] {
        let token = sign(&w, &claims(&w, json!({ name: value })))?;
        let (code, body) = pods(&w, &token).await?;
        assert_eq!(code, 200, "{name}: {value}: {body}");
    }
    Ok(())
}
