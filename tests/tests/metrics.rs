//! `/metrics` scraped over HTTP after a scripted sequence through authproxy:
//! static tokens (good, unknown, none), real LDAP logins against slapd, an
//! issued token before and after it expires, a watch, and an API server that
//! goes away. Every counter is asserted exactly.

use std::time::{Duration, SystemTime};

use authproxy_tests::double::{self, DoubleConfig};
use authproxy_tests::observe::{scrape, start_observed_proxy, Scrape};
use authproxy_tests::oidc::{generate_key, OidcProvider};
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

fn ldap_operations(operation: &str) -> String {
    format!("authproxy_ldap_operation_duration_seconds_count{{operation=\"{operation}\"}}")
}

fn ldap_errors(kind: &str) -> String {
    format!("authproxy_ldap_errors_total{{kind=\"{kind}\"}}")
}

fn throttled(authenticator: &str, scope: &str) -> String {
    format!(
        "authproxy_login_throttled_total{{authenticator=\"{authenticator}\",scope=\"{scope}\"}}"
    )
}

fn upstream_connections(protocol: &str) -> String {
    format!("authproxy_upstream_connections{{protocol=\"{protocol}\"}}")
}

fn upstream_in_flight(protocol: &str) -> String {
    format!("authproxy_upstream_requests_in_flight{{protocol=\"{protocol}\"}}")
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
    let during = wait_for(Duration::from_secs(10), "the watch in flight", || async {
        let s = scrape(metrics).await.map_err(|e| e.to_string())?;
        Ok((s.value(&in_flight("long_running")) == 1.0).then_some(s))
    })
    .await?;
    // The watch holds one HTTP/2 stream upstream, on a connection kept open.
    assert_eq!(
        during.value(&upstream_in_flight("http2")),
        1.0,
        "{}",
        during.text
    );
    assert_eq!(during.value(&upstream_in_flight("http1")), 0.0);
    assert!(
        during.value(&upstream_connections("http2")) >= 1.0,
        "{}",
        during.text
    );
    assert_eq!(during.value(&upstream_connections("http1")), 0.0);
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
        (
            "authproxy_audit_events_dropped_total{reason=\"queue_full\"}".into(),
            0.0,
        ),
        (
            "authproxy_audit_events_dropped_total{reason=\"write_error\"}".into(),
            0.0,
        ),
        ("authproxy_audit_file_reopened_total".into(), 0.0),
        (
            "authproxy_http_request_duration_seconds_count{method=\"GET\"}".into(),
            12.0,
        ),
        (
            "authproxy_authentication_duration_seconds_count{authenticator=\"ldap\"}".into(),
            4.0,
        ),
        // Three logins reached the directory (the token request's good
        // password was answered from the login cache): a user search and a
        // bind each, and a group search for the one that succeeded, on the
        // two pooled connections, each bound once as the service account;
        // and the issued token's user was looked up again (a user search
        // and a group search, no bind).
        (ldap_operations("bind"), 3.0),
        (ldap_operations("search"), 6.0),
        (
            "authproxy_issued_token_refreshes_total{result=\"found\"}".into(),
            1.0,
        ),
        (ldap_operations("service_bind"), 2.0),
        (
            "authproxy_ldap_pool_connections{state=\"idle\"}".into(),
            2.0,
        ),
        (
            "authproxy_ldap_pool_connections{state=\"in_use\"}".into(),
            0.0,
        ),
        (ldap_errors("timeout"), 0.0),
        (ldap_errors("unavailable"), 0.0),
        (ldap_errors("protocol"), 0.0),
        (throttled("ldap", "user"), 0.0),
        (throttled("ldap", "client"), 0.0),
        (throttled("token-exchange", "user"), 0.0),
        (throttled("token-exchange", "client"), 0.0),
        (upstream_in_flight("http2"), 0.0),
        (upstream_in_flight("http1"), 0.0),
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

/// The double, trusting the proxy's token, with TLS from `pki`.
async fn upstream_double(pki: &TestPki) -> anyhow::Result<double::RunningDouble> {
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    double::start(DoubleConfig::new(tls).with_token(
        PROXY_TOKEN,
        UserInfo {
            username: PROXY_USER.into(),
            uid: String::new(),
            groups: vec!["system:serviceaccounts".into()],
            extra: Default::default(),
        },
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_throttled_logins_timeouts_and_outages_are_counted() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let mut slapd = Slapd::start(&pki).await?;
    let upstream = upstream_double(&pki).await?;
    let dir = tempfile::tempdir()?;
    let ldap = json!({
        "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
        "caFile": pki.ca_path(),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": slapd.service_password_file()?,
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org"},
        "connectTimeout": "1s",
        "operationTimeout": "1s",
        "throttle": {"maxFailuresPerUser": 2, "maxFailuresPerClient": 50},
    });
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        &format!("  ldap: {ldap}"),
        "metrics: {listen: '127.0.0.1:0'}",
    )
    .await?;
    let metrics = proxy.metrics_addr().expect("metrics listener");
    let pods = format!("https://{}{PODS}", proxy.addr());
    let login = |user: &'static str| {
        let ca = pki.ca_path().to_owned();
        let pods = pods.clone();
        async move { Ok::<u16, anyhow::Error>(curl_with_ca(&ca, &["-u", user, &pods]).await?.0) }
    };
    // Two wrong passwords use up alice's budget; the next two are refused
    // before the directory is asked.
    for expected in [401, 401, 429, 429] {
        assert_eq!(login("alice:wrong").await?, expected);
    }
    // A hung directory: the pooled connection's search times out.
    slapd.pause().await?;
    assert_eq!(login("bob:bob-password").await?, 503);
    // A directory gone: the other pooled connection is dead.
    slapd.kill().await;
    assert_eq!(login("carol:carol-password").await?, 503);

    let s = scrape(metrics).await?;
    for (sample, value) in [
        (throttled("ldap", "user"), 2.0),
        (throttled("ldap", "client"), 0.0),
        (authn("ldap", "throttled"), 2.0),
        (authn("ldap", "invalid"), 2.0),
        (authn("ldap", "unavailable"), 2.0),
        (ldap_errors("timeout"), 1.0),
        (ldap_errors("unavailable"), 1.0),
        (ldap_errors("protocol"), 0.0),
        (ldap_operations("bind"), 2.0),
        (ldap_operations("service_bind"), 2.0),
        (
            "authproxy_ldap_pool_connections{state=\"idle\"}".into(),
            0.0,
        ),
        (
            "authproxy_ldap_pool_connections{state=\"in_use\"}".into(),
            0.0,
        ),
    ] {
        assert_eq!(s.value(&sample), value, "{sample} in\n{}", s.text);
    }
    // The timed-out search took the operation timeout.
    assert!(
        s.value("authproxy_ldap_operation_duration_seconds_sum{operation=\"search\"}") >= 1.0,
        "{}",
        s.text
    );
    for secret in ["alice", "bob-password", "uid=", "dc=example"] {
        assert!(!s.text.contains(secret), "{secret} reached /metrics");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_key_fetches_are_counted_by_issuer_and_result() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let key_dir = tempfile::tempdir()?;
    let keys = vec![generate_key(key_dir.path(), "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(&pki, &keys).await?;
    let upstream = upstream_double(&pki).await?;
    // An issuer nobody answers for: a loopback port with no listener.
    let down = format!(
        "https://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let entry = |issuer: &str| {
        json!({
            "issuer": {"url": issuer, "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
            "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}},
        })
    };
    let jwt = json!([entry(&idp.issuer()), entry(&down)]);
    let dir = tempfile::tempdir()?;
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        &format!("  jwt: {jwt}"),
        "metrics: {listen: '127.0.0.1:0'}",
    )
    .await?;
    let metrics = proxy.metrics_addr().expect("metrics listener");
    let fetches = |issuer: &str, result: &str| {
        format!("authproxy_oidc_key_fetches_total{{issuer=\"{issuer}\",result=\"{result}\"}}")
    };
    let age = |issuer: &str| format!("authproxy_oidc_keys_age_seconds{{issuer=\"{issuer}\"}}");
    let issuer = idp.issuer();
    wait_for(
        Duration::from_secs(20),
        "keys loaded and a failed fetch",
        || async {
            let s = scrape(metrics).await.map_err(|e| e.to_string())?;
            Ok((s.value(&fetches(&issuer, "success")) == 1.0
                && s.value(&fetches(&down, "failure")) >= 1.0)
                .then_some(()))
        },
    )
    .await?;
    let token = idp.id_token("kubernetes", "alice").await?;
    let (code, body) = curl_with_ca(
        pki.ca_path(),
        &[
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("https://{}{PODS}", proxy.addr()),
        ],
    )
    .await?;
    assert_ne!(code, 401, "{body}");

    let s = scrape(metrics).await?;
    // The token's key was loaded at start: it caused no fetch.
    assert_eq!(s.value(&fetches(&issuer, "success")), 1.0, "{}", s.text);
    assert_eq!(s.value(&fetches(&issuer, "failure")), 0.0, "{}", s.text);
    assert_eq!(s.value(&authn("oidc", "success")), 1.0, "{}", s.text);
    let loaded_age = s.value(&age(&issuer));
    assert!(loaded_age > 0.0 && loaded_age < 60.0, "{}", s.text);
    assert_eq!(s.value(&fetches(&down, "success")), 0.0, "{}", s.text);
    assert!(s.value(&fetches(&down, "failure")) >= 1.0, "{}", s.text);
    assert!(
        !s.samples.contains_key(&age(&down)),
        "keys never loaded have no age: {}",
        s.text
    );
    assert!(!s.text.contains(&token), "a token reached /metrics");
    assert!(!s.text.contains("rsa-1"), "a kid reached /metrics");
    // The age grows between scrapes; the count does not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = scrape(metrics).await?;
    assert!(
        later.value(&age(&issuer)) >= loaded_age + 1.0,
        "{}",
        later.text
    );
    assert_eq!(later.value(&fetches(&issuer, "success")), 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_metrics_and_probes_only_and_the_proxy_port_no_metrics(
) -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let upstream = upstream_double(&pki).await?;
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
    let mut proxy = proxy;
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
    // The probes, for GET only.
    let status = |method: &'static str, path: &'static str| async move {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .arg(format!("http://{metrics}{path}"))
            .output()
            .await?;
        anyhow::Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    assert_eq!(status("GET", "/livez").await?, "200");
    assert_eq!(status("GET", "/readyz").await?, "200");
    assert_eq!(status("POST", "/readyz").await?, "405");
    // The proxy's own port has no /metrics: it is an API request, refused without a credential.
    let (code, _) = curl_with_ca(
        pki.ca_path(),
        &[&format!("https://{}/metrics", proxy.addr())],
    )
    .await?;
    assert_eq!(code, 401);
    // One client holding many idle connections gets a few; the probes and
    // scrapes of others still get their answers. (The other address: the
    // listener is on 127.0.0.1; a client from 127.0.0.2 is another one.)
    let mut held = Vec::new();
    for _ in 0..32 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        if let Ok(stream) = socket.connect(metrics).await {
            held.push(stream);
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut open = 0;
    for stream in &held {
        let mut byte = [0u8; 1];
        // A refused connection is closed at once: reads end (0 bytes).
        match tokio::time::timeout(std::time::Duration::from_millis(50), stream.peek(&mut byte))
            .await
        {
            Err(_) => open += 1,
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => open += 1,
        }
    }
    assert!(open <= 8, "{open} idle connections kept from one address");
    assert_eq!(status("GET", "/livez").await?, "200");
    let s = scrape(metrics).await?;
    assert!(s.has_metric("authproxy_build_info"), "{}", s.text);
    // The proxy listener stops accepting (the metrics listener goes on):
    // the probes say so.
    if let Some(stop) = proxy.trigger() {
        let _ = stop.send(());
    }
    authproxy_tests::wait_for(
        std::time::Duration::from_secs(10),
        "/livez to fail",
        || async {
            match status("GET", "/livez").await {
                Ok(code) if code == "503" => Ok(Some(())),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    assert_eq!(status("GET", "/readyz").await?, "503");
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

/// Counters go on across a reload of the authentication config: the LDAP
/// operations counted before it stay counted after it (a counter that went
/// down would read as a restart to Prometheus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_counters_go_on_across_a_reload() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    let upstream = upstream_double(&pki).await?;
    let dir = tempfile::tempdir()?;
    let ldap = |timeout: &str| {
        json!({
            "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
            "caFile": pki.ca_path(),
            "bindDN": SERVICE_DN,
            "bindPasswordFile": slapd.service_password_file().unwrap_or_default(),
            "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid"},
            "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
            "connectTimeout": timeout,
        })
        .to_string()
    };
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        &format!("  ldap: {}", ldap("2s")),
        "metrics: {listen: '127.0.0.1:0'}\nreloadInterval: 100ms",
    )
    .await?;
    let metrics = proxy.metrics_addr().expect("metrics listener");
    let pods = format!("https://{}{PODS}", proxy.addr());
    let login = || {
        let (ca, pods) = (pki.ca_path().to_owned(), pods.clone());
        async move { curl_with_ca(&ca, &["-u", "alice:alice-password", &pods]).await }
    };
    for _ in 0..2 {
        assert_eq!(login().await?.0, 200);
    }
    let binds = "authproxy_ldap_operation_duration_seconds_count{operation=\"bind\"}";
    let before = scrape(metrics).await?.value(binds);
    assert!(before >= 1.0, "{before}");
    // Another connect timeout: the LDAP authenticator is built anew.
    let config_path = dir.path().join("authproxy.yaml");
    let text = std::fs::read_to_string(&config_path)?;
    let changed = text.replace(&ldap("2s"), &ldap("3s"));
    anyhow::ensure!(changed != text, "config layout changed: {text}");
    std::fs::write(&config_path, changed)?;
    let reloaded = "authproxy_config_reloads_total{file=\"authentication\",result=\"success\"}";
    wait_for(Duration::from_secs(20), "the reload", || async {
        let s = scrape(metrics).await.map_err(|e| e.to_string())?;
        Ok((s.value(reloaded) >= 1.0).then_some(()))
    })
    .await?;
    let after = scrape(metrics).await?.value(binds);
    assert!(after >= before, "went from {before} down to {after}");
    assert_eq!(login().await?.0, 200);
    let later = scrape(metrics).await?.value(binds);
    assert!(later > before, "{before} then {later}");
    Ok(())
}
