//! `/metrics` scraped over HTTP after a scripted sequence through authproxy:
//! static tokens (good, unknown, none), real LDAP logins against slapd, an
//! issued token before and after it expires, a watch, and an API server that
//! goes away. Every counter is asserted exactly.

use std::time::{Duration, SystemTime};

use authproxy_tests::double::{self, DoubleConfig};
use authproxy_tests::observe::{scrape, start_observed_proxy, Scrape};
use authproxy_tests::slapd::{Slapd, SERVICE_DN};
use authproxy_tests::{curl_with_ca, pki, wait_for, TestPki, UserInfo, PROXY_TOKEN, PROXY_USER};
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/default/pods";

fn requests(code: u16, kind: &str) -> String {
    format!("authproxy_http_requests_total{{code=\"{code}\",method=\"GET\",kind=\"{kind}\"}}")
}

fn authn(authenticator: &str, result: &str) -> String {
    format!(
        "authproxy_authentications_total{{authenticator=\"{authenticator}\",result=\"{result}\"}}"
    )
}

fn in_flight(kind: &str) -> String {
    format!("authproxy_http_requests_in_flight{{kind=\"{kind}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_sequence_gives_exact_counters() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    let mut upstream = double::start(DoubleConfig::new(tls).with_token(
        PROXY_TOKEN,
        UserInfo {
            username: PROXY_USER.into(),
            uid: String::new(),
            groups: vec!["system:serviceaccounts".into()],
            extra: Default::default(),
        },
    ))
    .await?;
    let dir = tempfile::tempdir()?;
    let ldap = json!({
        "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
        "caFile": pki.ca_path(),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": slapd.service_password_file()?,
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid"},
        "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
        "connectTimeout": "2s",
        "operationTimeout": "2s",
    });
    let key = pki.dir().join("issuer.pem");
    std::fs::write(
        &key,
        pki.issue_client("issuer-key", "unused", None)?.key_pem,
    )?;
    let issued = json!({"issuer": "authproxy-metrics", "signingKeyFiles": [key], "lifetime": "1s"});
    let audit_path = dir.path().join("audit.log");
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        &format!("  ldap: {ldap}\n  issuedTokens: {issued}"),
        &format!(
            "metrics: {{listen: '127.0.0.1:0'}}\naudit: {{path: {}}}",
            audit_path.display()
        ),
    )
    .await?;
    let metrics = proxy.metrics_addr().expect("metrics listener");
    let url = format!("https://{}", proxy.addr());
    let pods = format!("{url}{PODS}");
    let curl = |args: Vec<String>| {
        let ca = pki.ca_path().to_owned();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl_with_ca(&ca, &args).await
        }
    };
    let bearer = |token: &str| {
        vec![
            "-H".into(),
            format!("Authorization: Bearer {token}"),
            pods.clone(),
        ]
    };

    for _ in 0..3 {
        assert_eq!(curl(bearer("alice-token")).await?.0, 200);
    }
    assert_eq!(curl(bearer("bob-token")).await?.0, 403);
    for _ in 0..2 {
        assert_eq!(curl(bearer("no-such-token")).await?.0, 401);
    }
    assert_eq!(curl(vec![pods.clone()]).await?.0, 401);
    let basic = |user: &str| vec!["-u".to_string(), user.to_string(), pods.clone()];
    assert_eq!(curl(basic("alice:alice-password")).await?.0, 200);
    assert_eq!(curl(basic("alice:wrong")).await?.0, 401);

    let (code, body) = curl(vec![
        "-X".into(),
        "POST".into(),
        "-u".into(),
        "alice:alice-password".into(),
        format!("{url}/authproxy/v1/token"),
    ])
    .await?;
    assert_eq!(code, 200, "{body}");
    let (refused, _) = curl(vec![
        "-X".into(),
        "POST".into(),
        "-u".into(),
        "alice:wrong".into(),
        format!("{url}/authproxy/v1/token"),
    ])
    .await?;
    assert_eq!(refused, 401);
    let credential: serde_json::Value = serde_json::from_str(&body)?;
    let issued_token = credential["status"]["token"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let expires = humantime::parse_rfc3339(
        credential["status"]["expirationTimestamp"]
            .as_str()
            .unwrap_or(""),
    )?;
    assert_eq!(curl(bearer(&issued_token)).await?.0, 200);
    // Past the expiry and the verifier's 5 s leeway: the token is refused.
    let past = expires + Duration::from_secs(6);
    if let Ok(wait) = past.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    assert_eq!(curl(bearer(&issued_token)).await?.0, 401);

    // A watch: long-running while it streams, then gone from the gauge.
    let watch = tokio::spawn(curl(vec![
        "-N".into(),
        "-H".into(),
        "Authorization: Bearer alice-token".into(),
        format!("{pods}?watch=true"),
    ]));
    wait_for(Duration::from_secs(10), "the watch in flight", || async {
        let s = scrape(metrics).await.map_err(|e| e.to_string())?;
        Ok((s.value(&in_flight("long_running")) == 1.0).then_some(()))
    })
    .await?;
    assert_eq!(watch.await??.0, 200);
    wait_for(Duration::from_secs(10), "the watch ended", || async {
        let s = scrape(metrics).await.map_err(|e| e.to_string())?;
        Ok((s.value(&in_flight("long_running")) == 0.0).then_some(()))
    })
    .await?;

    // The API server goes away.
    upstream.shutdown_now();
    let (outage_code, _) = curl(bearer("alice-token")).await?;
    assert!(matches!(outage_code, 502 | 503), "{outage_code}");

    let expected_audit = 16.0; // the watch is logged twice (started, complete)
    let s: Scrape = wait_for(Duration::from_secs(10), "audit events written", || async {
        let s = scrape(metrics).await.map_err(|e| e.to_string())?;
        Ok((s.value("authproxy_audit_events_total") >= expected_audit).then_some(s))
    })
    .await?;
    let outage_kind = if outage_code == 503 {
        "unavailable"
    } else {
        "bad_gateway"
    };
    for (sample, value) in [
        (requests(200, "short"), 5.0),
        (requests(403, "short"), 1.0),
        (requests(401, "short"), 5.0),
        (requests(200, "long_running"), 1.0),
        (requests(outage_code, "short"), 1.0),
        (
            "authproxy_http_requests_total{code=\"200\",method=\"POST\",kind=\"short\"}".into(),
            1.0,
        ),
        (
            "authproxy_http_requests_total{code=\"401\",method=\"POST\",kind=\"short\"}".into(),
            1.0,
        ),
        (authn("static-tokens", "success"), 6.0),
        (authn("ldap", "success"), 2.0),
        (authn("ldap", "invalid"), 2.0),
        (authn("issued", "success"), 1.0),
        (authn("issued", "invalid"), 1.0),
        (authn("none", "unclaimed"), 3.0),
        ("authproxy_issued_tokens_total".into(), 1.0),
        (
            format!("authproxy_upstream_errors_total{{kind=\"{outage_kind}\"}}"),
            1.0,
        ),
        (in_flight("short"), 0.0),
        (in_flight("long_running"), 0.0),
        ("authproxy_audit_events_total".into(), expected_audit),
        ("authproxy_audit_events_dropped_total".into(), 0.0),
        (
            "authproxy_http_request_duration_seconds_count{method=\"GET\"}".into(),
            12.0,
        ),
        (
            "authproxy_authentication_duration_seconds_count{authenticator=\"ldap\"}".into(),
            4.0,
        ),
    ] {
        assert_eq!(s.value(&sample), value, "{sample} in\n{}", s.text);
    }
    let total_authn: f64 = s
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("authproxy_authentications_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total_authn, 15.0, "{}", s.text);
    assert!(s.has_metric("authproxy_build_info"), "{}", s.text);
    for secret in [
        "alice-token",
        "alice-password",
        "no-such-token",
        &issued_token,
    ] {
        assert!(!s.text.contains(secret), "a credential reached /metrics");
    }
    let audit = std::fs::read_to_string(&audit_path)?;
    for secret in [
        "alice-token",
        "alice-password",
        "no-such-token",
        &issued_token,
    ] {
        assert!(
            !audit.contains(secret),
            "a credential reached the audit log"
        );
    }
    drop(slapd);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_only_metrics_and_the_proxy_port_does_not() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    let upstream = double::start(DoubleConfig::new(tls)).await?;
    let dir = tempfile::tempdir()?;
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        "",
        "metrics: {listen: '127.0.0.1:0'}",
    )
    .await?;
    let metrics = proxy.metrics_addr().expect("metrics listener");
    assert!(metrics.ip().is_loopback());
    assert_ne!(metrics.port(), proxy.addr().port());
    let s = scrape(metrics).await?;
    assert!(s.has_metric("authproxy_build_info"), "{}", s.text);
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{metrics}/api/v1/pods"))
        .output()
        .await?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "404");
    // The proxy's own port has no /metrics: it is an API request, refused without a credential.
    let (code, _) = curl_with_ca(
        pki.ca_path(),
        &[&format!("https://{}/metrics", proxy.addr())],
    )
    .await?;
    assert_eq!(code, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_counts_tokenreviews_by_result() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let cert = pki.issue_server("webhook")?;
    std::fs::write(
        dir.path().join("tokens.csv"),
        "alice-token,alice,1001,\"devs\"\n",
    )?;
    let path = dir.path().join("authproxy.yaml");
    std::fs::write(
        &path,
        format!(
            "tls: {{certFile: {}, keyFile: {}}}\nauthentication: {{staticTokens: {{file: tokens.csv}}}}\nmetrics: {{listen: '127.0.0.1:0'}}\n",
            cert.cert_path.display(),
            cert.key_path.display()
        ),
    )?;
    let config = authproxy::config::FileConfig::load(&path)?;
    let webhook = authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?;
    let review = |token: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
            .to_string()
    };
    for token in ["alice-token", "alice-token", "unknown-token", ""] {
        let (code, body) = curl_with_ca(
            pki.ca_path(),
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &review(token),
                &format!("https://{}/", webhook.addr()),
            ],
        )
        .await?;
        assert_eq!(code, 200, "{body}");
    }
    let s = scrape(webhook.metrics_addr().expect("metrics listener")).await?;
    for (result, count) in [
        ("authenticated", 2.0),
        ("unauthenticated", 2.0),
        ("error", 0.0),
    ] {
        let sample = format!("authproxy_tokenreviews_total{{result=\"{result}\"}}");
        assert_eq!(s.value(&sample), count, "{sample} in\n{}", s.text);
    }
    assert_eq!(
        s.value(&authn("static-tokens", "success")),
        2.0,
        "{}",
        s.text
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_tls_when_configured() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    let upstream = double::start(DoubleConfig::new(tls)).await?;
    let dir = tempfile::tempdir()?;
    let metrics_cert = pki.issue_server("metrics")?;
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        "",
        &format!(
            "metrics: {{listen: '127.0.0.1:0', tls: {{certFile: {}, keyFile: {}}}}}",
            metrics_cert.cert_path.display(),
            metrics_cert.key_path.display()
        ),
    )
    .await?;
    let addr = proxy.metrics_addr().expect("metrics listener");
    let (code, body) = curl_with_ca(pki.ca_path(), &[&format!("https://{addr}/metrics")]).await?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("authproxy_build_info{version="), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    Ok(())
}
