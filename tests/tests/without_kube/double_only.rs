//! What the shared kube-apiserver cannot serve, proven on the API-server
//! double: an API server that goes away under the proxy. Upgrades (exec,
//! attach, port-forward) run for real in `streaming.rs`, against kube and
//! the test kubelet. tests/README.md says why.

use authproxy_tests::Env;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_a_503_status() -> anyhow::Result<()> {
    let mut env = Env::start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let (code, _) = env
        .curl(&["-H", "Authorization: Bearer alice-token", &url])
        .await?;
    assert_eq!(code, 200);
    env.double.shutdown_now();
    let (code, body) = env
        .curl(&["-H", "Authorization: Bearer alice-token", &url])
        .await?;
    assert!(code == 503 || code == 502, "status {code}: {body}");
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("upstream"),
        "{body}"
    );
    env.proxy.take();
    Ok(())
}
