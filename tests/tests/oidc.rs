//! OIDC sign-in against a real OpenID provider (oidc-provider from npm):
//! ID tokens from its authorization-code + PKCE flow, through authproxy, to
//! the real kube-apiserver. Only the negative cases are signed by hand.

use std::time::Duration;

use anyhow::Context;
use authproxy_tests::kube::{
    assert_kubectl_acts_as, unique_marker, Expected, KubeEnv as Env, PROXY_SERVICE_ACCOUNT,
};
use authproxy_tests::oidc::{generate_key, OidcProvider, SigningKey};
use authproxy_tests::{output_text, TestPki};
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
    let auth = jwt_config(&idp, pki.ca_pem());
    let env = Env::start_with(pki, &auth).await?;
    env.wait_ready().await?;
    Ok(World {
        env,
        idp,
        keys,
        _key_dir: key_dir,
    })
}

/// The `authentication:` lines for the provider, as kube's `jwt:` list.
fn jwt_config(idp: &OidcProvider, ca_pem: &str) -> String {
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes", "kubernetes-es"], "certificateAuthority": ca_pem},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}, "uid": {"claim": "sub"},
                          "extra": [{"key": "example.com/login", "claim": "sub"}]},
        "signingAlgorithms": ["RS256", "ES256"],
        "clockSkew": "5s",
    }]);
    format!("  jwt: {jwt}")
}

async fn readyz(env: &Env) -> anyhow::Result<u16> {
    Ok(env.curl(&[&format!("{}/readyz", env.proxy_url())]).await?.0)
}

async fn pods_status(env: &Env, token: &str) -> anyhow::Result<u16> {
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    Ok(env
        .curl(&["-H", &format!("Authorization: Bearer {token}"), &url])
        .await?
        .0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_an_id_token_acts_as_the_mapped_user_on_kube() -> anyhow::Result<()> {
    let w = world().await?;
    let cases: [(&str, &str, &[&str]); 3] = [
        ("kubernetes", "alice", &["oidc:devs"]),
        ("kubernetes-es", "carol", &["oidc:devs", "oidc:ops"]),
        ("kubernetes", "bob", &[]),
    ];
    for (client, login, groups) in cases {
        let token = w.idp.id_token(client, login).await?;
        let kubeconfig = w.env.token_kubeconfig(login, &token)?;
        let username = format!("{login}@example.com");
        let expected = Expected {
            username: &username,
            groups,
            uid: Some(login),
            extra: json!({"example.com/login": [login]}),
        };
        assert_kubectl_acts_as(&kubeconfig, None, &expected).await?;
    }
    // kube saw the proxy's identity on behalf of the user, never the ID token
    let token = w.idp.id_token("kubernetes", "alice").await?;
    let agent = unique_marker("oidc");
    let (code, body) = w
        .env
        .curl(&[
            "-A",
            &agent,
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/api/v1/namespaces/default/pods", w.env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    let event = &w.env.kube.wait_audit_by_agent(&agent, 1).await?[0];
    assert_eq!(event["user"]["username"], PROXY_SERVICE_ACCOUNT, "{event}");
    assert_eq!(
        event["impersonatedUser"],
        json!({"username": "alice@example.com", "uid": "alice",
               "groups": ["oidc:devs", "system:authenticated"],
               "extra": {"example.com/login": ["alice"]}}),
        "{event}"
    );
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
    let agent = unique_marker("refused");
    let (code, body) = w
        .env
        .curl(&[
            "-A",
            &agent,
            "-H",
            &format!("Authorization: Bearer {token}"),
            &url,
        ])
        .await?;
    assert_eq!(code, 401, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
    assert!(!body.contains(token), "the token was echoed back");
    w.env.assert_not_forwarded(&agent).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_accepted_and_a_burst_causes_one_jwks_fetch() -> anyhow::Result<()> {
    let mut w = world().await?;
    let old = w.idp.id_token("kubernetes", "alice").await?;
    assert_eq!(pods_status(&w.env, &old).await?, 200);

    let dir = tempfile::tempdir()?;
    let rotated = vec![
        generate_key(dir.path(), "rsa", "rsa-2").await?,
        generate_key(dir.path(), "ec", "ec-2").await?,
    ];
    w.idp.restart(&rotated).await?;
    let token = w.idp.id_token("kubernetes", "alice").await?;
    let before = w.idp.jwks_count().await?;

    // 100 concurrent requests carrying the new kid, from one curl.
    let url = format!("{}/api/v1/namespaces/default/pods", w.env.proxy_url());
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "30",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "100",
        "--cacert",
    ])
    .arg(w.env.pki.ca_path())
    .args([
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-w",
        "%{http_code}\\n",
    ]);
    for _ in 0..100 {
        cmd.args(["-o", "/dev/null"]).arg(&url);
    }
    let out = cmd.output().await?;
    let codes = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = codes.lines().collect();
    assert_eq!(codes.len(), 100, "{}", String::from_utf8_lossy(&out.stderr));
    let failed = codes.iter().filter(|c| **c != "200").count();
    assert_eq!(failed, 0, "{failed} of 100 requests were not 200");
    assert_eq!(
        w.idp.jwks_count().await? - before,
        1,
        "a burst with a new kid must cause exactly one JWKS fetch"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_outage_keeps_known_keys_and_a_fresh_proxy_waits_until_the_idp_is_back(
) -> anyhow::Result<()> {
    let mut w = world().await?;
    let unused = w.idp.id_token("kubernetes", "carol").await?; // never sent before the outage: not cached
    w.idp.stop().await;
    assert_eq!(
        pods_status(&w.env, &unused).await?,
        200,
        "keys in memory must keep working"
    );

    let fresh = Env::start_with(TestPki::new()?, &jwt_config(&w.idp, w.env.pki.ca_pem())).await?;
    for _ in 0..5 {
        assert_eq!(readyz(&fresh).await?, 503, "ready without keys");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // /readyz names the issuer and why its keys are missing.
    let issuer = w.idp.issuer();
    let said =
        authproxy_tests::wait_for(Duration::from_secs(10), "readyz names the issuer", || {
            let (fresh, issuer) = (&fresh, issuer.clone());
            async move {
                let (code, body) = fresh
                    .curl(&[&format!("{}/readyz", fresh.proxy_url())])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((code == 503
                    && body.contains(&format!("{issuer}: no keys yet; the last fetch failed")))
                .then_some(body))
            }
        })
        .await?;
    assert!(!said.contains("Bearer"), "{said}");
    w.idp.restart(&w.keys).await?;
    fresh.wait_ready().await?;
    let token = w.idp.id_token("kubernetes", "alice").await?;
    assert_eq!(pods_status(&fresh, &token).await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_login_oidc_device_flow_gets_pods_and_reuses_the_cached_token(
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncBufReadExt;
    let w = world().await?;
    let binary = authproxy_tests::authproxy_binary()?;
    let kubeconfig = w.env.dir.path().join("kubeconfig-oidc");
    let out = tokio::process::Command::new(&binary)
        .args(["kubeconfig", "--server", &w.env.proxy_url(), "--ca-file"])
        .arg(w.env.pki.ca_path())
        .args([
            "--oidc-issuer",
            &w.idp.issuer(),
            "--oidc-client-id",
            "kubernetes",
            "--device",
            "--oidc-ca-file",
        ])
        .arg(w.env.pki.ca_path())
        .arg("--output")
        .arg(&kubeconfig)
        .output()
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let cache = tempfile::tempdir()?;
    let kubectl = || {
        let mut cmd = authproxy_tests::kubectl_command()?;
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["auth", "whoami", "-o", "json"]);
        cmd.env("XDG_CACHE_HOME", cache.path());
        anyhow::Ok(cmd)
    };
    let mut child = kubectl()?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let uri = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
            .await??
            .expect("the plugin printed no sign-in URL");
        if let Some(uri) = line.strip_prefix("To sign in, open ") {
            break uri.trim().to_owned();
        }
    };
    w.idp.complete_device(&uri, "alice").await?;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    assert!(out.status.success(), "{}", output_text(&out));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        review["status"]["userInfo"]["username"], "alice@example.com",
        "{review}"
    );

    // The cache file and the lock beside it, both private.
    let mut files: Vec<_> =
        std::fs::read_dir(cache.path().join("authproxy"))?.collect::<Result<_, _>>()?;
    files.sort_by_key(|f| f.file_name());
    let names: Vec<_> = files.iter().map(|f| f.file_name()).collect();
    assert_eq!(files.len(), 2, "{names:?}");
    assert!(names[0].to_string_lossy().ends_with(".json"), "{names:?}");
    assert!(names[1].to_string_lossy().ends_with(".lock"), "{names:?}");
    for file in &files {
        assert_eq!(
            std::fs::metadata(file.path())?.permissions().mode() & 0o777,
            0o600
        );
    }
    // The second call uses the cached ID token: no sign-in prompt, no new device flow.
    let out = tokio::time::timeout(Duration::from_secs(30), kubectl()?.output()).await??;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("To sign in"),
        "{}",
        output_text(&out)
    );

    // An expired ID token in the cache is never sent: the refresh token gets a new one.
    use base64::Engine;
    let path = files[0].path();
    let mut cached: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert!(
        cached["refresh_token"].is_string(),
        "the provider issued no refresh token: {cached}"
    );
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let expired = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256"})),
        b64(json!({"iss": w.idp.issuer(), "exp": 1_600_000_000}))
    );
    cached["id_token"] = json!(expired);
    std::fs::write(&path, cached.to_string())?;
    let out = tokio::time::timeout(Duration::from_secs(30), kubectl()?.output()).await??;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("To sign in"),
        "refresh must not ask for a new sign-in: {}",
        output_text(&out)
    );
    let refreshed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    assert_ne!(
        refreshed["id_token"],
        json!(expired),
        "the expired ID token was kept"
    );

    // Several kubectl commands at once, the ID token expired: one of them
    // spends the refresh token (the provider rotates it, and revokes the
    // grant when a spent one is used again); the others take its result.
    for round in 0..2 {
        let mut cached: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        cached["id_token"] = json!(expired);
        std::fs::write(&path, cached.to_string())?;
        let runs = (0..4)
            .map(|_| {
                let mut cmd = kubectl()?;
                anyhow::Ok(async move {
                    tokio::time::timeout(Duration::from_secs(30), cmd.output()).await
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for out in futures_util::future::join_all(runs).await {
            let out = out.context("a concurrent refresh fell back to a sign-in")??;
            assert!(out.status.success(), "round {round}: {}", output_text(&out));
            assert!(
                !String::from_utf8_lossy(&out.stderr).contains("To sign in"),
                "round {round}: {}",
                output_text(&out)
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_login_oidc_browser_flow_signs_in_through_the_loopback_redirect(
) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let w = world().await?;
    let binary = authproxy_tests::authproxy_binary()?;
    let kubeconfig = w.env.dir.path().join("kubeconfig-oidc-browser");
    let out = tokio::process::Command::new(&binary)
        .args(["kubeconfig", "--server", &w.env.proxy_url(), "--ca-file"])
        .arg(w.env.pki.ca_path())
        .args([
            "--oidc-issuer",
            &w.idp.issuer(),
            "--oidc-client-id",
            "kubernetes",
            "--oidc-ca-file",
        ])
        .arg(w.env.pki.ca_path())
        .arg("--output")
        .arg(&kubeconfig)
        .output()
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let cache = tempfile::tempdir()?;
    let mut child = authproxy_tests::kubectl_command()?
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["auth", "whoami", "-o", "json"])
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
            .await??
            .expect("the plugin printed no sign-in URL");
        if let Some(url) = line.strip_prefix("To sign in, open ") {
            break url.trim().to_owned();
        }
    };
    // The authorization request carries PKCE, state and a nonce.
    for part in [
        "code_challenge=",
        "code_challenge_method=S256",
        "state=",
        "nonce=",
    ] {
        assert!(url.contains(part), "{part} missing from {url}");
    }
    let callback = w.idp.sign_in_at(&url, "carol").await?;
    // A forged callback with another state is not taken.
    let forged = callback
        .split_once("state=")
        .map(|(head, _)| format!("{head}state=forged"))
        .expect("state in the callback");
    let (code, _) = authproxy_tests::curl_with_ca(w.env.pki.ca_path(), &[&forged]).await?;
    assert_ne!(code, 200, "a callback with a forged state was accepted");
    // The browser follows the redirect to the plugin's loopback listener.
    let (code, body) = authproxy_tests::curl_with_ca(w.env.pki.ca_path(), &[&callback]).await?;
    assert_eq!(code, 200, "{body}");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    assert!(out.status.success(), "{}", output_text(&out));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        review["status"]["userInfo"]["username"], "carol@example.com",
        "{review}"
    );
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        json!(["oidc:devs", "oidc:ops", "system:authenticated"]),
        "{review}"
    );
    Ok(())
}
