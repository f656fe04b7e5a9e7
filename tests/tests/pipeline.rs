//! The whole path through authproxy with real clients: curl and kubectl in
//! front, the API-server double (which enforces impersonation like
//! kube-apiserver) behind, TLS everywhere on loopback.

use std::time::Duration;

use authproxy_tests::{output_text, wait_for, Env, PROXY_TOKEN, PROXY_USER};
use serde_json::Value;

const REVIEW: &str = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;

fn review_args<'a>(url: &'a str, token_header: &'a str) -> Vec<&'a str> {
    vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        REVIEW,
        "-H",
        token_header,
        url,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_pods_as_the_impersonated_user() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let out = env
        .kubectl(&["--context", "alice", "get", "pods", "-o", "json"])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let list: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list["items"][0]["metadata"]["name"], "web-0", "{list}");

    let listed = env
        .upstream_requests()
        .into_iter()
        .find(|r| r.uri.path() == "/api/v1/namespaces/default/pods")
        .expect("the pods list reached the double");
    assert_eq!(listed.header_values("impersonate-user"), ["alice"]);
    assert_eq!(listed.header_values("impersonate-group"), ["devs"]);
    assert_eq!(listed.header_values("impersonate-uid"), ["1001"]);
    assert_eq!(listed.bearer_token().as_deref(), Some(PROXY_TOKEN));
    // The double offers h2 by ALPN, so the proxy speaks HTTP/2 to it.
    assert_eq!(listed.version, http::Version::HTTP_2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_user_gets_kubes_403_message() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let out = env.kubectl(&["--context", "bob", "get", "pods"]).await?;
    assert!(!out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{}",
        output_text(&out)
    );
    let (code, body) = env
        .curl(&[
            "-H",
            "Authorization: Bearer bob-token",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(status["reason"], "Forbidden");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_token_gets_401_status_and_nothing_is_forwarded() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    for header in [
        "Authorization: Bearer wrong-token",
        "Authorization: Bearer",
        "Authorization: Basic !!!",
        "X-Nothing: 1",
    ] {
        let (code, body) = env.curl(&["-i", "-H", header, &url]).await?;
        assert_eq!(code, 401, "{header}: {body}");
        assert!(
            body.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{header}: {body}"
        );
        let json = body.split("\r\n\r\n").last().unwrap_or_default();
        let status: Value = serde_json::from_str(json)?;
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Unauthorized");
        assert_eq!(status["code"], 401);
    }
    let out = env
        .kubectl(&["--token", "wrong-token", "get", "pods"])
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", output_text(&out));
    // kubectl words a 401 as "Unauthorized" (older) or "provide credentials" (newer).
    assert!(
        stderr.contains("Unauthorized") || stderr.contains("provide credentials"),
        "{}",
        output_text(&out)
    );
    assert!(
        env.upstream_requests().is_empty(),
        "unauthenticated requests reached the double"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_authorization_and_impersonate_headers_never_reach_upstream() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        env.proxy_url()
    );
    let smuggled = [
        "Impersonate-User: system:admin",
        "impersonate-user: root",
        "IMPERSONATE-GROUP: system:masters",
        "iMpErSoNaTe-GrOuP: admins",
        "Impersonate-Uid: 0",
        "Impersonate-Extra-Scopes: everything",
        "impersonate-extra-acme.com%2fproject: x",
        "Proxy-Authorization: Bearer admin-token",
    ];
    for version in ["--http1.1", "--http2"] {
        env.double.clear_requests();
        let mut args = vec![version];
        args.extend(review_args(&url, "Authorization: Bearer alice-token"));
        for h in &smuggled {
            args.push("-H");
            args.push(h);
        }
        if version == "--http1.1" {
            // a header the caller declares hop-by-hop must not be forwarded
            args.extend(["-H", "Connection: X-Hop", "-H", "X-Hop: evil"]);
        }
        let (code, body) = env.curl(&args).await?;
        assert_eq!(code, 201, "{version}: {body}");
        let review: Value = serde_json::from_str(&body)?;
        assert_eq!(review["status"]["userInfo"]["username"], "alice", "{body}");
        assert_eq!(
            review["status"]["userInfo"]["groups"],
            serde_json::json!(["devs", "system:authenticated"]),
            "{body}"
        );

        let requests = env.upstream_requests();
        assert_eq!(requests.len(), 1, "{version}");
        let seen = &requests[0];
        for (name, value) in seen.headers.iter() {
            let value = value.to_str().unwrap_or_default();
            assert!(
                ![
                    "system:admin",
                    "root",
                    "system:masters",
                    "admins",
                    "everything",
                    "evil",
                    "x",
                    "0"
                ]
                .contains(&value),
                "{version}: smuggled {name}: {value} reached the double"
            );
        }
        assert_eq!(
            seen.header_values("authorization"),
            [format!("Bearer {PROXY_TOKEN}")]
        );
        assert!(seen.header_values("proxy-authorization").is_empty());
        assert!(seen.header_values("x-hop").is_empty());
        assert_eq!(seen.header_values("impersonate-user"), ["alice"]);
        assert!(seen.header_values("impersonate-extra-scopes").is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_in_a_header_value_is_refused() -> anyhow::Result<()> {
    let env = Env::start().await?;
    // curl sends the raw bytes; hyper refuses the malformed header line itself.
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    // A CR inside a header value: the listener refuses the request outright.
    let (code, body) = env
        .curl(&[
            "--http1.1",
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "X-Test: a\rImpersonate-User: root",
            &url,
        ])
        .await?;
    assert_eq!(code, 400, "CR in a header value was not refused: {body}");
    assert!(
        env.upstream_requests().is_empty(),
        "a request with CR in a header reached the double"
    );
    // An LF ends the header line, so the rest arrives as a header of its own:
    // it is then a smuggled Impersonate-User, which never reaches the double.
    let (code, body) = env
        .curl(&[
            "--http1.1",
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "X-Test: a\nImpersonate-User: root",
            &url,
        ])
        .await?;
    assert!(code == 400 || code == 200, "{code}: {body}");
    for seen in env.upstream_requests() {
        assert_eq!(seen.header_values("impersonate-user"), ["alice"]);
        assert!(seen
            .headers
            .values()
            .all(|v| !v.as_bytes().contains(&b'\r') && !v.as_bytes().contains(&b'\n')));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_with_a_control_character_is_refused_not_forwarded() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let (code, body) = env
        .curl(&["-H", "Authorization: Bearer bell-token", &url])
        .await?;
    assert_eq!(code, 401, "{body}");
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("username"),
        "{body}"
    );
    assert!(
        env.upstream_requests().is_empty(),
        "the identity was forwarded"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authenticates_as_cn_and_o() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let cert = env.pki.issue_client("carol", "carol", Some("qa"))?;
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        env.proxy_url()
    );
    let cert_path = cert.cert_path.display().to_string();
    let key_path = cert.key_path.display().to_string();
    let (code, body) = env
        .curl(&[
            "--cert",
            &cert_path,
            "--key",
            &key_path,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            REVIEW,
            &url,
        ])
        .await?;
    assert_eq!(code, 201, "{body}");
    let review: Value = serde_json::from_str(&body)?;
    assert_eq!(review["status"]["userInfo"]["username"], "carol");
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        serde_json::json!(["qa", "system:authenticated"])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_works() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let (code, body) = env
        .curl(&[
            "--http2",
            "-i",
            "-H",
            "Authorization: Bearer alice-token",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200);
    assert!(body.starts_with("HTTP/2 200"), "not HTTP/2: {body}");
    assert_eq!(
        env.upstream_requests()[0].header_values("impersonate-user"),
        ["alice"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_events_one_by_one_while_the_stream_is_open() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let env = Env::start().await?;
    authproxy_tests::require_tool("curl")?;
    let url = format!("{}/api/v1/namespaces/default/pods?watch=1", env.proxy_url());
    let mut child = tokio::process::Command::new("curl")
        .args(["-sSN", "--max-time", "20", "--cacert"])
        .arg(env.pki.ca_path())
        .args(["-H", "Authorization: Bearer alice-token", &url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut arrivals = Vec::new();
    let start = std::time::Instant::now();
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??
    {
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line)?;
        assert_eq!(event["type"], "ADDED", "{line}");
        if arrivals.is_empty() {
            assert!(
                child.try_wait()?.is_none(),
                "the first event arrived only after the stream closed"
            );
        }
        arrivals.push(start.elapsed());
    }
    assert!(arrivals.len() >= 3, "got {} events", arrivals.len());
    let spread = *arrivals.last().expect("events") - arrivals[0];
    assert!(
        spread >= Duration::from_millis(300),
        "events arrived together (spread {spread:?}): buffered, not streamed"
    );
    Ok(())
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_proxy_token_file_is_used_for_the_next_requests() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    env.double.add_token(
        "proxy-token-two",
        authproxy_tests::UserInfo {
            username: PROXY_USER.into(),
            uid: String::new(),
            groups: vec![],
            extra: Default::default(),
        },
    );
    std::fs::write(env.dir.path().join("proxy-token"), "proxy-token-two\n")?;
    env.double.remove_token(PROXY_TOKEN);
    let env_ref = &env;
    let url_ref = &url;
    wait_for(
        Duration::from_secs(5),
        "a request with the new proxy token",
        || async move {
            let (code, body) = env_ref
                .curl(&["-H", "Authorization: Bearer alice-token", url_ref])
                .await
                .map_err(|e| e.to_string())?;
            if code == 200 {
                Ok(Some(()))
            } else {
                Err(format!("{code}: {body}"))
            }
        },
    )
    .await?;
    let last = env.upstream_requests().pop().expect("requests");
    assert_eq!(last.bearer_token().as_deref(), Some("proxy-token-two"));
    // every later request keeps the new token
    let (code, _) = env
        .curl(&["-H", "Authorization: Bearer alice-token", &url])
        .await?;
    assert_eq!(code, 200);
    assert_eq!(
        env.upstream_requests()
            .pop()
            .expect("requests")
            .bearer_token()
            .as_deref(),
        Some("proxy-token-two")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_liveness_are_served_by_the_proxy() -> anyhow::Result<()> {
    let env = Env::start().await?;
    for path in ["/livez", "/readyz"] {
        let (code, body) = env.curl(&[&format!("{}{path}", env.proxy_url())]).await?;
        assert_eq!((code, body.as_str()), (200, "ok"), "{path}");
    }
    assert!(env.upstream_requests().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_before_the_body_is_read_reaches_http2_callers_intact() -> anyhow::Result<()> {
    // kube-apiserver refuses (401/403) before reading a request body; the proxy
    // must still deliver the whole answer, not reset the caller's stream.
    let env = Env::start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let body = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"x"}},"pad":"{}"}}"#,
        "y".repeat(16)
    );
    for _ in 0..100 {
        let (code, answer) = env
            .curl(&[
                "--http2",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-H",
                "Authorization: Bearer bob-token",
                "--data-binary",
                &body,
                &url,
            ])
            .await?;
        assert_eq!(code, 403, "{answer}");
        assert!(
            answer.contains(r#"User \"bob\" cannot create resource \"pods\""#),
            "{answer}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_in_flight_streams_finish() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut env = Env::start().await?;
    authproxy_tests::require_tool("curl")?;
    let url = format!("{}/api/v1/namespaces/default/pods?watch=1", env.proxy_url());
    let mut child = tokio::process::Command::new("curl")
        .args(["-sSN", "--http1.1", "--max-time", "20", "--cacert"])
        .arg(env.pki.ca_path())
        .args(["-H", "Authorization: Bearer alice-token", &url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??;
    assert!(first.is_some_and(|l| l.contains("ADDED")));

    let proxy = env.proxy.take().expect("proxy");
    let addr = proxy.addr();
    let shutdown = tokio::spawn(proxy.shutdown());
    // New connections are refused once shutdown has begun.
    wait_for(
        Duration::from_secs(5),
        "the listener to close",
        || async move {
            Ok(tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(()))
        },
    )
    .await?;
    // The watch that was in flight still delivers its remaining events.
    let mut rest = 0;
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??
    {
        if line.contains("ADDED") {
            rest += 1;
        }
    }
    assert_eq!(rest, 2, "the in-flight watch was cut short");
    tokio::time::timeout(Duration::from_secs(5), shutdown).await??;
    Ok(())
}
