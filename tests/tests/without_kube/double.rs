//! The API-server double must be as strict as kube-apiserver, or passing
//! against it proves nothing. These tests talk to it directly with curl.

use authproxy_tests::double::{self, DoubleConfig};
use authproxy_tests::{curl_with_ca, pki, TestPki, UserInfo, PROXY_TOKEN, PROXY_USER};
use serde_json::Value;

async fn start() -> anyhow::Result<(TestPki, double::RunningDouble)> {
    let pki = TestPki::new()?;
    let cert = pki.issue_server("apiserver")?;
    let config = DoubleConfig::new(pki::server_config(&cert, &[b"h2", b"http/1.1"])?)
        .with_token(
            PROXY_TOKEN,
            UserInfo {
                username: PROXY_USER.into(),
                ..Default::default()
            },
        )
        .with_token(
            "alice-direct",
            UserInfo {
                username: "alice".into(),
                groups: vec!["devs".into()],
                ..Default::default()
            },
        );
    let running = double::start(config).await?;
    Ok((pki, running))
}

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_is_401() -> anyhow::Result<()> {
    let (pki, d) = start().await?;
    let (code, body) = curl_with_ca(
        pki.ca_path(),
        &[
            "-H",
            "Authorization: Bearer nope",
            &format!("{}/api/v1/namespaces/default/pods", d.url()),
        ],
    )
    .await?;
    assert_eq!(code, 401);
    assert_eq!(status(&body)["reason"], "Unauthorized");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_needs_the_impersonate_verb() -> anyhow::Result<()> {
    let (pki, d) = start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", d.url());
    let (code, body) = curl_with_ca(
        pki.ca_path(),
        &[
            "-H",
            "Authorization: Bearer alice-direct",
            "-H",
            "Impersonate-User: root",
            &url,
        ],
    )
    .await?;
    assert_eq!(code, 403, "{body}");
    // kube 1.37 words it in terms of constrained impersonation when the
    // requester holds no impersonation right at all
    assert_eq!(
        status(&body)["message"],
        r#"pods is forbidden: User "alice" cannot impersonate-on:user-info:list resource "pods" in API group "" in the namespace "default""#
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_uid_or_extra_without_user_is_400() -> anyhow::Result<()> {
    let (pki, d) = start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", d.url());
    for header in [
        "Impersonate-Group: devs",
        "Impersonate-Uid: 1",
        "Impersonate-Extra-Scopes: x",
    ] {
        let (code, body) = curl_with_ca(
            pki.ca_path(),
            &[
                "-H",
                &format!("Authorization: Bearer {PROXY_TOKEN}"),
                "-H",
                header,
                &url,
            ],
        )
        .await?;
        assert_eq!(code, 400, "{header}: {body}");
        assert!(status(&body)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("without impersonating a user"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_user_gets_authenticated_group_and_decoded_extra_keys() -> anyhow::Result<()> {
    let (pki, d) = start().await?;
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        d.url()
    );
    let (code, body) = curl_with_ca(
        pki.ca_path(),
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {PROXY_TOKEN}"),
            "-H",
            "Impersonate-User: alice",
            "-H",
            "Impersonate-Group: devs",
            "-H",
            "Impersonate-Uid: 1001",
            "-H",
            "Impersonate-Extra-Acme.com%2FProject: p1",
            &url,
        ],
    )
    .await?;
    assert_eq!(code, 201, "{body}");
    let user = &status(&body)["status"]["userInfo"];
    assert_eq!(user["username"], "alice");
    assert_eq!(user["uid"], "1001");
    assert_eq!(
        user["groups"],
        serde_json::json!(["devs", "system:authenticated"])
    );
    assert_eq!(user["extra"]["acme.com/project"], serde_json::json!(["p1"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_user_is_authorized_with_kubes_message() -> anyhow::Result<()> {
    let (pki, d) = start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", d.url());
    let (code, body) = curl_with_ca(
        pki.ca_path(),
        &[
            "-H",
            &format!("Authorization: Bearer {PROXY_TOKEN}"),
            "-H",
            "Impersonate-User: bob",
            &url,
        ],
    )
    .await?;
    assert_eq!(code, 403);
    assert_eq!(
        status(&body)["message"],
        r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    let (code, _) = curl_with_ca(
        pki.ca_path(),
        &[
            "-H",
            &format!("Authorization: Bearer {PROXY_TOKEN}"),
            "-H",
            "Impersonate-User: alice",
            "-H",
            "Impersonate-Group: devs",
            &url,
        ],
    )
    .await?;
    assert_eq!(code, 200);
    assert_eq!(d.requests().len(), 2, "every request is recorded");
    Ok(())
}
