//! The proxy's own failures are not the user's: when the API server refuses
//! the proxy's credential, callers get a 503 `Status` that says so (never
//! kube's 401 as if their own credential were refused), `/readyz` fails on
//! both listeners with the reason, and the metrics count it; an API server
//! that cannot be reached turns `/readyz` false after a short grace while
//! `/livez` stays true. Against the real kube-apiserver.

use std::time::Duration;

use anyhow::Context as _;
use authproxy_tests::kube::KubeEnv;
use authproxy_tests::observe::scrape;
use authproxy_tests::{free_port, output_text, start_proxy_with_upstream, wait_for, TestPki};

const WAIT: Duration = Duration::from_secs(30);

/// Writes `text` to `path` whole (a rename), as a Secret volume update does.
fn replace_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn status_of(
    env: &KubeEnv,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let url = format!("{}{path}", env.proxy_url());
    let header;
    let mut args = vec!["--max-time", "10"];
    if let Some(token) = token {
        header = format!("Authorization: Bearer {token}");
        args.extend(["-H", &header]);
    }
    args.push(&url);
    env.curl(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_proxy_credential_is_a_503_that_says_so_and_fails_readiness() -> anyhow::Result<()>
{
    let env =
        KubeEnv::start_with_top_level(TestPki::new()?, "", "metrics: {listen: '127.0.0.1:0'}")
            .await?;
    let metrics = env
        .proxy
        .as_ref()
        .and_then(|p| p.metrics_addr())
        .context("metrics listener")?;
    let configmaps = "/api/v1/namespaces/default/configmaps?limit=1";
    assert_eq!(
        status_of(&env, configmaps, Some("alice-token")).await?.0,
        200
    );
    assert_eq!(status_of(&env, "/readyz", None).await?.0, 200);

    // The proxy's token stops working (expired, revoked, rotated wrong).
    let token_file = env.dir.path().join("proxy-token");
    let good = std::fs::read_to_string(&token_file)?;
    replace_file(&token_file, "not-a-token-kube-knows")?;
    let (code, body) = wait_for(WAIT, "the refusal answered 503", || async {
        let answer = status_of(&env, configmaps, Some("alice-token"))
            .await
            .map_err(|e| e.to_string())?;
        Ok((answer.0 == 503).then_some(answer))
    })
    .await?;
    assert_eq!(code, 503);
    let status: serde_json::Value = serde_json::from_str(&body).context(body.clone())?;
    assert_eq!(status["kind"], "Status", "{body}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused the proxy's own credential")),
        "{body}"
    );
    // kubectl does not tell the user to log in again.
    let out = env
        .kubectl(&["--context", "alice", "get", "configmaps"])
        .await?;
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(!text.contains("logged in"), "{text}");
    assert!(
        text.contains("ServiceUnavailable") || text.contains("refused the proxy's own credential"),
        "{text}"
    );
    // Readiness fails on both listeners, naming the reason.
    let (code, body) = status_of(&env, "/readyz", None).await?;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("refused the proxy's own credential"),
        "{body}"
    );
    let probe = tokio::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .arg(format!("http://{metrics}/readyz"))
        .output()
        .await?;
    let probe = String::from_utf8_lossy(&probe.stdout).into_owned();
    assert!(
        probe.ends_with("503") && probe.contains("credential"),
        "{probe}"
    );
    assert_eq!(status_of(&env, "/livez", None).await?.0, 200);
    let s = scrape(metrics).await?;
    assert!(
        s.value("authproxy_upstream_credential_refused_total") >= 1.0,
        "{}",
        s.text
    );
    assert_eq!(
        s.value("authproxy_upstream_trouble{reason=\"credential_refused\"}"),
        1.0,
        "{}",
        s.text
    );

    // The token is renewed: everything works again, with no restart.
    replace_file(&token_file, &good)?;
    wait_for(WAIT, "requests to work again", || async {
        let (code, body) = status_of(&env, configmaps, Some("alice-token"))
            .await
            .map_err(|e| e.to_string())?;
        if code == 200 {
            Ok(Some(()))
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await?;
    assert_eq!(status_of(&env, "/readyz", None).await?.0, 200);
    let s = scrape(metrics).await?;
    assert_eq!(
        s.value("authproxy_upstream_trouble{reason=\"credential_refused\"}"),
        0.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_fails_readiness_after_a_grace_and_not_liveness(
) -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("proxy-token"), "some-token")?;
    // Nothing listens there.
    let upstream = format!(
        "{{url: 'https://127.0.0.1:{}', caFile: {}, tokenFile: proxy-token, connectTimeout: 1s}}",
        free_port()?,
        pki.ca_path().display()
    );
    let proxy = start_proxy_with_upstream(&pki, dir.path(), &upstream, "", "").await?;
    let url = format!("https://{}", proxy.addr());
    let ca = pki.ca_path().to_owned();
    let body = wait_for(WAIT, "/readyz to fail", || {
        let (url, ca) = (url.clone(), ca.clone());
        async move {
            let (code, body) = authproxy_tests::curl_with_ca(&ca, &[&format!("{url}/readyz")])
                .await
                .map_err(|e| e.to_string())?;
            Ok((code == 503).then_some(body))
        }
    })
    .await?;
    assert!(body.contains("unreachable"), "{body}");
    let (code, _) = authproxy_tests::curl_with_ca(&ca, &[&format!("{url}/livez")]).await?;
    assert_eq!(code, 200);
    Ok(())
}

/// A proxy whose account may not impersonate says so in `/readyz`: what it
/// is missing, asked of kube-apiserver with SelfSubjectAccessReviews.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_may_not_impersonate_says_what_it_misses() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    // A proxy whose account (nobody) may do nothing.
    let nobody = env.kube.service_account_token("nobody").await?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let proxy = authproxy_tests::start_proxy(
        &pki,
        dir.path(),
        &env.kube.url(),
        env.kube.pki().ca_path(),
        &nobody,
        "",
    )
    .await?;
    let url = format!("https://{}", proxy.addr());
    let ca = pki.ca_path().to_owned();
    let body = wait_for(WAIT, "/readyz to name what is missing", || {
        let (url, ca) = (url.clone(), ca.clone());
        async move {
            let (code, body) = authproxy_tests::curl_with_ca(&ca, &[&format!("{url}/readyz")])
                .await
                .map_err(|e| e.to_string())?;
            Ok((code == 503).then_some(body))
        }
    })
    .await?;
    // Users and groups are what every request needs (uids and extras,
    // which only some identities carry, are warned about in the log).
    assert!(body.contains("may not impersonate"), "{body}");
    for missing in ["users", "groups"] {
        assert!(body.contains(missing), "{missing} not named: {body}");
    }
    // The proxy whose account has the impersonation role is ready.
    let (code, body) = status_of(&env, "/readyz", None).await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

/// A 401 that kube passes on from what it proxies to (a service's own
/// login) is the caller's to see, unchanged, and says nothing of the
/// proxy's credential: readiness stays, whoever sends such requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_behind_the_api_server_passes_and_leaves_readiness_alone() -> anyhow::Result<()>
{
    let env = authproxy_tests::Env::start().await?;
    let url = format!(
        "{}/api/v1/namespaces/default/services/grafana:80/proxy/needs-login",
        env.proxy_url()
    );
    for _ in 0..5 {
        let (code, text) = env
            .curl(&["-D", "-", "-H", "Authorization: Bearer admin-token", &url])
            .await?;
        assert_eq!(code, 401, "{text}");
        assert!(text.contains("its own login"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("basic realm=\"grafana\""),
            "{text}"
        );
    }
    let (code, body) = env.curl(&[&format!("{}/readyz", env.proxy_url())]).await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}
