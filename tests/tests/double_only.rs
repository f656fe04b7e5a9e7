//! What a lone kube-apiserver cannot serve, proven on the API-server double:
//! upgrades (exec, attach and port-forward need a kubelet behind the server)
//! and an API server that goes away under the proxy. tests/README.md says why.

use authproxy_tests::Env;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connection_echoes_bytes_both_ways() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let mut tunnel = authproxy_tests::upgrade::open(
        &env,
        "/api/v1/namespaces/default/pods/web-0/exec?command=sh",
        "alice-token",
        "SPDY/3.1",
    )
    .await?;
    for message in [
        &b"hello through the proxy"[..],
        &[0u8, 1, 2, 255, 254][..],
        &vec![b'x'; 64 * 1024][..],
    ] {
        let echoed = tunnel.round_trip(message).await?;
        assert_eq!(echoed, message);
    }
    let exec = env
        .upstream_requests()
        .into_iter()
        .find(|r| r.uri.path().ends_with("/exec"))
        .expect("exec reached the double");
    assert_eq!(exec.header_values("impersonate-user"), ["alice"]);
    assert_eq!(exec.header_values("upgrade"), ["SPDY/3.1"]);
    assert_eq!(
        exec.version,
        http::Version::HTTP_11,
        "upgrades travel over HTTP/1.1"
    );
    Ok(())
}

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
