//! Several OIDC issuers at once, end to end: two real oidc-provider
//! instances (two issuers, each with its own keys), one authproxy whose
//! `jwt:` list names both with different claim mappings, and the real
//! kube-apiserver. A token of either acts as the user its own issuer's
//! mapping gives; a token of one issuer signed by the other's key is
//! refused.

use authproxy_tests::kube::{assert_kubectl_acts_as, Expected, KubeEnv as Env};
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::TestPki;
use base64::Engine as _;
use serde_json::json;

fn issuer_entry(idp: &OidcProvider, ca_pem: &str, prefix: &str) -> serde_json::Value {
    json!({
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": ca_pem},
        "claimMappings": {
            "username": {"claim": "email", "prefix": prefix},
            "groups": {"claim": "groups", "prefix": "oidc:"},
            "uid": {"claim": "sub"},
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_side_by_side_each_with_its_own_mapping() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let keys = tempfile::tempdir()?;
    let key_a = generate_key(keys.path(), "rsa", "a-1").await?;
    let key_b = generate_key(keys.path(), "rsa", "b-1").await?;
    let idp_a = OidcProvider::start(&pki, std::slice::from_ref(&key_a)).await?;
    let idp_b = OidcProvider::start(&pki, std::slice::from_ref(&key_b)).await?;
    assert_ne!(idp_a.issuer(), idp_b.issuer());
    let jwt = json!([
        issuer_entry(&idp_a, pki.ca_pem(), "a:"),
        issuer_entry(&idp_b, pki.ca_pem(), "b:"),
    ]);
    let env = Env::start_with(pki, &format!("  jwt: {jwt}")).await?;
    env.wait_ready().await?;

    for (idp, prefix) in [(&idp_a, "a:"), (&idp_b, "b:")] {
        let token = idp.id_token("kubernetes", "alice").await?;
        let kubeconfig = env.token_kubeconfig(prefix.trim_end_matches(':'), &token)?;
        let username = format!("{prefix}alice@example.com");
        let expected = Expected {
            username: &username,
            groups: &["oidc:devs"],
            uid: Some("alice"),
            extra: json!({}),
        };
        assert_kubectl_acts_as(&kubeconfig, None, &expected).await?;
    }

    // Issuer b's token with its `iss` claimed by issuer a: a's keys do not
    // verify b's signature, so it is refused, not mapped with either prefix.
    let token = idp_b.id_token("kubernetes", "alice").await?;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value = serde_json::from_slice(&engine.decode(&parts[1])?)?;
    claims["iss"] = json!(idp_a.issuer());
    parts[1] = engine.encode(serde_json::to_vec(&claims)?);
    let forged = parts.join(".");
    let (code, body) = env
        .curl(&[
            "-H",
            &format!("Authorization: Bearer {forged}"),
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 401, "{body}");
    Ok(())
}
