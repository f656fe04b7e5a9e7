//! Distributed claims for groups, resolved as kube-apiserver resolves them:
//! the real oidc-provider puts `_claim_names` / `_claim_sources` in the ID
//! token instead of `groups`; authproxy fetches the source endpoint (HTTPS,
//! the issuer's CA), verifies the JWT it answers with the issuer's keys and
//! takes the groups from it. A source signed by any other key refuses the
//! token.

use authproxy_tests::kube::{assert_kubectl_acts_as, Expected, KubeEnv as Env};
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::TestPki;
use base64::Engine as _;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_from_a_distributed_claim_source_signed_by_the_issuer() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let keys = tempfile::tempdir()?;
    let key = generate_key(keys.path(), "rsa", "d-1").await?;
    let idp = OidcProvider::start(&pki, std::slice::from_ref(&key)).await?;
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
        "claimMappings": {
            "username": {"claim": "email", "prefix": ""},
            "groups": {"claim": "groups", "prefix": "oidc:"},
            "uid": {"claim": "sub"},
        },
    }]);
    let env = Env::start_with(pki, &format!("  jwt: {jwt}")).await?;
    env.wait_ready().await?;

    let token = idp.id_token("kubernetes", "dist-dave").await?;
    // The provider sent the groups as a distributed claim, not in the token.
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: serde_json::Value =
        serde_json::from_slice(&engine.decode(token.split('.').nth(1).unwrap_or_default())?)?;
    assert!(claims.get("groups").is_none(), "{claims}");
    assert_eq!(claims["_claim_names"]["groups"], "src1", "{claims}");
    let kubeconfig = env.token_kubeconfig("dave", &token)?;
    let expected = Expected {
        username: "dist-dave@example.com",
        groups: &["oidc:devs", "oidc:remote"],
        uid: Some("dist-dave"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&kubeconfig, None, &expected).await?;

    // A source signed by a key the issuer never published: the token is refused.
    let token = idp.id_token("kubernetes", "dist-bad-eve").await?;
    let (code, body) = env
        .curl(&[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 401, "{body}");
    Ok(())
}
