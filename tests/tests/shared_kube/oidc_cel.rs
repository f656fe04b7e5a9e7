//! CEL in kube's `AuthenticationConfiguration`, end to end: ID tokens from
//! the real OpenID provider, an `authenticationConfigFile` written as for
//! kube-apiserver, through authproxy, to the real kube-apiserver, whose
//! SelfSubjectReview and audit log say who the user became.

use authproxy_tests::kube::{assert_kubectl_acts_as, unique_marker, Expected, KubeEnv as Env};
use authproxy_tests::oidc::{generate_key, OidcProvider, SigningKey};
use authproxy_tests::TestPki;
use serde_json::json;

struct World {
    env: Env,
    idp: OidcProvider,
    key: SigningKey,
    _dir: tempfile::TempDir,
}

/// kube's `AuthenticationConfiguration` for the provider, all mappings CEL.
fn kube_config(issuer: &str, ca_pem: &str) -> String {
    let ca = ca_pem
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>();
    format!(
        r#"apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: {issuer}
    audiences:
    - kubernetes
    certificateAuthority: |
{ca}  claimValidationRules:
  - expression: 'claims.sub != "mallory"'
    message: mallory is not welcome
  claimMappings:
    username:
      expression: 'claims.email_verified ? "cel:" + claims.email.split("@")[0] : ""'
    groups:
      expression: 'claims.?groups.orValue([]).join(",").split(",").filter(g, g != "").map(g, "cel:" + g)'
    uid:
      expression: 'claims.sub'
    extra:
    - key: example.com/upper
      valueExpression: 'claims.sub.upperAscii()'
  userValidationRules:
  - expression: '!("cel:ops" in user.groups)'
    message: operators use another door
"#
    )
}

async fn world() -> anyhow::Result<World> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let key = generate_key(dir.path(), "rsa", "rsa-1").await?;
    let idp = OidcProvider::start(&pki, std::slice::from_ref(&key)).await?;
    let file = dir.path().join("auth-config.yaml");
    std::fs::write(&file, kube_config(&idp.issuer(), pki.ca_pem()))?;
    let auth = format!("  authenticationConfigFile: {}", file.display());
    let env = Env::start_with(pki, &auth).await?;
    env.wait_ready().await?;
    Ok(World {
        env,
        idp,
        key,
        _dir: dir,
    })
}

async fn pods(w: &World, token: &str, agent: &str) -> anyhow::Result<(u16, String)> {
    w.env
        .curl(&[
            "-A",
            agent,
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}/api/v1/namespaces/default/pods", w.env.proxy_url()),
        ])
        .await
}

async fn assert_refused(w: &World, token: &str) -> anyhow::Result<()> {
    let agent = unique_marker("cel-refused");
    let (code, body) = pods(w, token, &agent).await?;
    assert_eq!(code, 401, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["reason"], "Unauthorized", "{body}");
    w.env.assert_not_forwarded(&agent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_mappings_and_rules_decide_the_user_kube_sees() -> anyhow::Result<()> {
    let w = world().await?;
    // username, groups, uid and extra expressions: kube's SelfSubjectReview
    // shows the user the expressions made.
    let token = w.idp.id_token("kubernetes", "alice").await?;
    let kubeconfig = w.env.token_kubeconfig("alice", &token)?;
    let expected = Expected {
        username: "cel:alice",
        groups: &["cel:devs"],
        uid: Some("alice"),
        extra: json!({"example.com/upper": ["ALICE"]}),
    };
    assert_kubectl_acts_as(&kubeconfig, None, &expected).await?;
    // the claim validation rule refuses mallory's token, with its message
    // in the proxy's answer; nothing reaches kube
    let mallory = w.idp.id_token("kubernetes", "mallory").await?;
    assert_refused(&w, &mallory).await?;
    // the user validation rule refuses carol, whose groups include ops
    let carol = w.idp.id_token("kubernetes", "carol").await?;
    assert_refused(&w, &carol).await?;
    Ok(())
}

/// The provider puts no `jti` in its ID tokens: this one is signed by hand
/// with the provider's key, claims as the provider's plus `jti`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jti_reaches_kube_as_the_credential_id_extra() -> anyhow::Result<()> {
    let w = world().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({"iss": w.idp.issuer(), "aud": "kubernetes", "sub": "bob",
        "email": "bob@example.com", "email_verified": true, "groups": [], "iat": now,
        "exp": now + 600, "jti": "7c337942"});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(w.key.kid.clone());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(w.key.pem.as_bytes())?,
    )?;
    let agent = unique_marker("cel-jti");
    let (code, body) = pods(&w, &token, &agent).await?;
    assert_eq!(code, 403, "bob has no RBAC on pods: {body}");
    let event = &w.env.kube.wait_audit_by_agent(&agent, 1).await?[0];
    assert_eq!(
        event["impersonatedUser"]["extra"],
        json!({"authentication.kubernetes.io/credential-id": ["JTI=7c337942"],
               "example.com/upper": ["BOB"]}),
        "{event}"
    );
    assert_eq!(event["impersonatedUser"]["username"], "cel:bob", "{event}");
    Ok(())
}
