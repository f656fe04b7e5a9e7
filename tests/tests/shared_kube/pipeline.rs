//! The whole path through authproxy with real clients in front (curl and the
//! matching kubectl) and the real kube-apiserver behind, TLS everywhere on
//! loopback. kube's audit log is the witness of what reached the server.

use std::time::Duration;

use authproxy_tests::kube::{
    assert_kubectl_acts_as, unique_marker, Expected, KubeEnv, PROXY_SERVICE_ACCOUNT,
};
use authproxy_tests::{output_text, wait_for};
use serde_json::{json, Value};

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
async fn static_token_users_act_as_themselves_on_kube() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let alice = Expected {
        username: "alice",
        groups: &["devs"],
        uid: Some("1001"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&env.kubeconfig(), Some("alice"), &alice).await?;
    let bob = Expected {
        username: "bob",
        groups: &[],
        uid: Some("1002"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&env.kubeconfig(), Some("bob"), &bob).await?;

    // kube's audit: the proxy's service account made the request, on behalf
    // of the authenticated user.
    let marker = unique_marker("list");
    let selector = format!("marker={marker}");
    let out = env
        .kubectl(&["--context", "alice", "get", "pods", "-l", &selector])
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let events = env
        .kube
        .wait_audit(1, |e| {
            e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains(&marker))
        })
        .await?;
    let event = &events[0];
    assert_eq!(event["user"]["username"], PROXY_SERVICE_ACCOUNT, "{event}");
    assert_eq!(
        event["impersonatedUser"],
        json!({"username": "alice", "uid": "1001", "groups": ["devs", "system:authenticated"]}),
        "{event}"
    );
    assert_eq!(event["responseStatus"]["code"], 200, "{event}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_user_gets_kubes_403_status() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let (code, body) = env
        .curl(&[
            "-H",
            "Authorization: Bearer bob-token",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body)?;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_or_missing_credentials_get_401_and_nothing_reaches_kube() -> anyhow::Result<()>
{
    let env = KubeEnv::start().await?;
    let agent = unique_marker("unauthenticated");
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    for header in [
        "Authorization: Bearer wrong-token",
        "Authorization: Bearer",
        "Authorization: Basic !!!",
        "Authorization: Basic YWxpY2U6d3Jvbmc=",
        "X-Nothing: 1",
    ] {
        let (code, body) = env.curl(&["-i", "-A", &agent, "-H", header, &url]).await?;
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
    let marker = unique_marker("unauthenticated-kubectl");
    let selector = format!("marker={marker}");
    let out = env
        .kubectl(&["--token", "wrong-token", "get", "pods", "-l", &selector])
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        stderr.contains("Unauthorized") || stderr.contains("provide credentials"),
        "{}",
        output_text(&out)
    );
    env.assert_not_forwarded(&agent).await?;
    let reached = env.kube.audit_where(|e| {
        e["requestURI"]
            .as_str()
            .is_some_and(|u| u.contains(&marker))
    })?;
    assert!(
        reached.is_empty(),
        "unauthenticated requests reached kube: {reached:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_identity_headers_never_reach_kube_over_http1_or_http2() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        env.proxy_url()
    );
    // A caller's own Impersonate-* headers are checked, not dropped: alice
    // may not be system:admin, so the request is refused before kube (in
    // the words of the first mode kube tries, constrained user-info).
    let impersonating = [
        "Impersonate-User: system:admin",
        "impersonate-user: root",
        "IMPERSONATE-GROUP: system:masters",
        "iMpErSoNaTe-GrOuP: admins",
        "Impersonate-Uid: 4242",
        "Impersonate-Extra-Scopes: everything",
        "impersonate-extra-acme.com%2fproject: smuggled-extra",
    ];
    for version in ["--http1.1", "--http2"] {
        let agent = unique_marker("smuggle-impersonate");
        let mut args = vec![version, "-A", &agent];
        args.extend(review_args(&url, "Authorization: Bearer alice-token"));
        for h in &impersonating {
            args.extend(["-H", h]);
        }
        let (code, body) = env.curl(&args).await?;
        assert_eq!(code, 403, "{version}: {body}");
        assert!(
            body.contains(r#"User \"alice\" cannot impersonate-on:user-info:create resource \"selfsubjectreviews\""#),
            "{version}: {body}"
        );
        env.assert_not_forwarded(&agent).await?;
    }
    let smuggled = [
        "Proxy-Authorization: Bearer admin-token",
        "X-Remote-User: mallory-remote",
        "x-remote-group: system:masters",
        "X-Remote-Extra-Scopes: remote-extra",
        // hop-by-hop by name: must not make the proxy drop its own identity
        // headers (the shape of CVE-2021-31999)
        "Connection: Impersonate-User, Impersonate-Group, Impersonate-Uid",
        // a caller's own claim of where it came from: replaced by the address
        // the proxy saw (the caller is not one of trustedProxies)
        "X-Forwarded-For: 203.0.113.9",
    ];
    for version in ["--http1.1", "--http2"] {
        let agent = unique_marker("smuggle");
        // from 127.0.0.2, so the client the proxy saw differs from the proxy
        // itself, which kube adds as the connection's address
        let mut args = vec![version, "--interface", "127.0.0.2", "-A", &agent];
        args.extend(review_args(&url, "Authorization: Bearer alice-token"));
        for h in &smuggled {
            args.extend(["-H", h]);
        }
        let (code, body) = env.curl(&args).await?;
        assert_eq!(code, 201, "{version}: {body}");
        let review: Value = serde_json::from_str(&body)?;
        assert_eq!(
            review["status"]["userInfo"],
            json!({"username": "alice", "uid": "1001", "groups": ["devs", "system:authenticated"]}),
            "{version}: {body}"
        );
        let events = env.kube.wait_audit_by_agent(&agent, 1).await?;
        assert_eq!(events.len(), 1, "{version}: {events:?}");
        let event = &events[0];
        assert_eq!(event["user"]["username"], PROXY_SERVICE_ACCOUNT, "{event}");
        assert_eq!(
            event["sourceIPs"],
            json!(["127.0.0.2", "127.0.0.1"]),
            "{version}: kube's audit shows the client the proxy saw first: {event}"
        );
        assert_eq!(
            event["impersonatedUser"],
            json!({"username": "alice", "uid": "1001", "groups": ["devs", "system:authenticated"]}),
            "{version}: {event}"
        );
        let text = event.to_string();
        for value in [
            "system:masters",
            "mallory-remote",
            "remote-extra",
            "kube-admin",
        ] {
            assert!(
                !text.contains(value),
                "{version}: `{value}` reached kube: {event}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_in_a_header_value_is_refused_and_nothing_reaches_kube() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let agent = unique_marker("crlf");
    // A CR inside a header value: the listener refuses the request outright.
    let (code, body) = env
        .curl(&[
            "--http1.1",
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "X-Test: a\rImpersonate-User: root",
            &url,
        ])
        .await?;
    assert_eq!(code, 400, "CR in a header value was not refused: {body}");
    // An LF ends the header line, so the rest arrives as a header of its own:
    // a smuggled Impersonate-User, which never reaches kube.
    let lf_agent = unique_marker("lf");
    let (code, body) = env
        .curl(&[
            "--http1.1",
            "-A",
            &lf_agent,
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "X-Test: a\nImpersonate-User: root",
            &url,
        ])
        .await?;
    // Either refused as malformed, or alice's own Impersonate-User checked
    // and refused (she may not be root).
    assert!(code == 400 || code == 403, "{code}: {body}");
    env.assert_not_forwarded(&agent).await?;
    env.assert_not_forwarded(&lf_agent).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_with_a_control_character_is_refused_not_forwarded() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let agent = unique_marker("bell");
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let (code, body) = env
        .curl(&["-A", &agent, "-H", "Authorization: Bearer bell-token", &url])
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
    env.assert_not_forwarded(&agent).await?;
    Ok(())
}

fn client_cert_kubeconfig(
    env: &KubeEnv,
    name: &str,
    organization: Option<&str>,
) -> anyhow::Result<std::path::PathBuf> {
    let cert = env.pki.issue_client(name, name, organization)?;
    let path = env.dir.path().join(format!("kubeconfig-{name}"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: {name}\n  context: {{cluster: proxy, user: {name}, namespace: default}}\ncurrent-context: {name}\n",
            env.proxy_url(),
            env.pki.ca_path().display(),
            cert.cert_path.display(),
            cert.key_path.display()
        ),
    )?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_users_act_as_cn_and_o_on_kube() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let carol = client_cert_kubeconfig(&env, "carol", Some("devs"))?;
    let expected = Expected {
        username: "carol",
        groups: &["devs"],
        uid: None,
        extra: json!({}),
    };
    assert_kubectl_acts_as(&carol, None, &expected).await?;
    let dave = client_cert_kubeconfig(&env, "dave", Some("qa"))?;
    let expected = Expected {
        username: "dave",
        groups: &["qa"],
        uid: None,
        extra: json!({}),
    };
    assert_kubectl_acts_as(&dave, None, &expected).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_callers_reach_kube_as_the_user() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let agent = unique_marker("h2");
    let (code, body) = env
        .curl(&[
            "--http2",
            "-i",
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            &format!("{}/api/v1/namespaces/default/pods", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200);
    assert!(body.starts_with("HTTP/2 200"), "not HTTP/2: {body}");
    let events = env.kube.wait_audit_by_agent(&agent, 1).await?;
    assert_eq!(events[0]["impersonatedUser"]["username"], "alice");
    Ok(())
}

/// Starts `curl -N` on a watch of configmaps labelled `marker=<marker>` and
/// returns it with its output lines.
async fn watch_configmaps(
    env: &KubeEnv,
    marker: &str,
    extra: &[&str],
) -> anyhow::Result<(
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
)> {
    use tokio::io::AsyncBufReadExt;
    authproxy_tests::require_tool("curl")?;
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=1&labelSelector=marker%3D{marker}",
        env.proxy_url()
    );
    let mut child = tokio::process::Command::new("curl")
        .args(["-sSN", "--max-time", "30", "--cacert"])
        .arg(env.pki.ca_path())
        .args(extra)
        .args(["-H", "Authorization: Bearer alice-token", &url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    Ok((child, tokio::io::BufReader::new(stdout).lines()))
}

/// The next watch event's (type, object name), within 10 s.
async fn next_event(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<Option<(String, String)>> {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??;
        let Some(line) = line else { return Ok(None) };
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line)?;
        return Ok(Some((
            event["type"].as_str().unwrap_or_default().to_owned(),
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_each_configmap_as_it_is_created() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let marker = unique_marker("watch");
    let (mut child, mut lines) = watch_configmaps(&env, &marker, &[]).await?;
    // the watch is open at kube before the first object is created
    env.kube
        .wait_audit(1, |e| {
            e["verb"] == "watch"
                && e["requestURI"]
                    .as_str()
                    .is_some_and(|u| u.contains(&marker))
        })
        .await?;
    for i in 0..3 {
        let name = format!("{marker}-{i}");
        env.kube.create_configmap(&name, &marker).await?;
        // each event arrives while the stream is open, before the next exists
        let event = next_event(&mut lines).await?;
        assert_eq!(event, Some(("ADDED".to_owned(), name)), "event {i}");
        assert!(child.try_wait()?.is_none(), "the watch closed");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_proxy_token_file_is_used_for_the_next_requests() -> anyhow::Result<()> {
    use base64::Engine as _;
    let env = KubeEnv::start().await?;
    let jti = |token: &str| -> anyhow::Result<String> {
        let payload = token.split('.').nth(1).unwrap_or_default();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?,
        )?;
        Ok(format!(
            "JTI={}",
            claims["jti"].as_str().unwrap_or_default()
        ))
    };
    let credential_id =
        |e: &Value| e["user"]["extra"]["authentication.kubernetes.io/credential-id"][0].clone();
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let first = env.kube.proxy_token().to_owned();
    let agent = unique_marker("before-rotation");
    let (code, _) = env
        .curl(&[
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
            &url,
        ])
        .await?;
    assert_eq!(code, 200);
    let events = env.kube.wait_audit_by_agent(&agent, 1).await?;
    assert_eq!(credential_id(&events[0]), jti(&first)?);

    let second = env.kube.new_proxy_token().await?;
    std::fs::write(env.dir.path().join("proxy-token"), format!("{second}\n"))?;
    let (env_ref, url_ref, second_jti) = (&env, &url, jti(&second)?);
    let second_ref = &second_jti;
    wait_for(
        Duration::from_secs(5),
        "a request with the new proxy token",
        || async move {
            let agent = unique_marker("rotation");
            let (code, body) = env_ref
                .curl(&[
                    "-A",
                    &agent,
                    "-H",
                    "Authorization: Bearer alice-token",
                    url_ref,
                ])
                .await
                .map_err(|e| e.to_string())?;
            if code != 200 {
                return Err(format!("{code}: {body}"));
            }
            let events = env_ref
                .kube
                .wait_audit_by_agent(&agent, 1)
                .await
                .map_err(|e| e.to_string())?;
            let seen = credential_id(&events[0]);
            Ok((seen == second_ref.as_str()).then_some(()))
        },
    )
    .await?;
    // every later request keeps the new token
    for _ in 0..3 {
        let agent = unique_marker("after-rotation");
        let (code, _) = env
            .curl(&[
                "-A",
                &agent,
                "-H",
                "Authorization: Bearer alice-token",
                &url,
            ])
            .await?;
        assert_eq!(code, 200);
        let events = env.kube.wait_audit_by_agent(&agent, 1).await?;
        assert_eq!(credential_id(&events[0]), second_jti.as_str());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_liveness_are_served_by_the_proxy() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    for path in ["/livez", "/readyz"] {
        let (code, body) = env.curl(&[&format!("{}{path}", env.proxy_url())]).await?;
        assert_eq!((code, body.as_str()), (200, "ok"), "{path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_before_the_body_is_read_reaches_http2_callers_intact() -> anyhow::Result<()> {
    // kube-apiserver refuses (403) before reading a request body; the proxy
    // must still deliver the whole answer, not reset the caller's stream.
    let env = KubeEnv::start().await?;
    let url = format!("{}/api/v1/namespaces/default/configmaps", env.proxy_url());
    let body = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"x"}},"data":{{"pad":"{}"}}}}"#,
        "y".repeat(64 * 1024)
    );
    for _ in 0..50 {
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
            answer.contains(r#"User \"bob\" cannot create resource \"configmaps\""#),
            "{answer}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_in_flight_streams_finish() -> anyhow::Result<()> {
    let mut env = KubeEnv::start().await?;
    let marker = unique_marker("shutdown");
    let (_child, mut lines) = watch_configmaps(&env, &marker, &["--http1.1"]).await?;
    env.kube
        .wait_audit(1, |e| {
            e["verb"] == "watch"
                && e["requestURI"]
                    .as_str()
                    .is_some_and(|u| u.contains(&marker))
        })
        .await?;
    env.kube
        .create_configmap(&format!("{marker}-0"), &marker)
        .await?;
    assert_eq!(
        next_event(&mut lines).await?,
        Some(("ADDED".to_owned(), format!("{marker}-0")))
    );

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
    // The watch that was in flight still delivers what happens next.
    env.kube
        .create_configmap(&format!("{marker}-1"), &marker)
        .await?;
    assert_eq!(
        next_event(&mut lines).await?,
        Some(("ADDED".to_owned(), format!("{marker}-1"))),
        "the in-flight watch was cut short"
    );
    // and the drain ends by the shutdown deadline (2 s in the test config)
    tokio::time::timeout(Duration::from_secs(10), shutdown).await??;
    Ok(())
}

/// Sends `raw` (one or more HTTP/1.1 requests, pipelined) over one TLS
/// connection to the proxy and reads until the proxy closes it.
async fn raw_http1(env: &KubeEnv, raw: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = env.proxy.as_ref().map(|p| p.addr()).expect("proxy");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = authproxy_tests::pki::client_config(env.pki.ca_pem(), &[b"http/1.1"])?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    stream.write_all(raw.as_bytes()).await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The shape of CVE-2018-1002105: an upgrade kube refuses (anything but
/// 101) must leave no raw pipe to kube behind the caller's connection. What
/// the caller sends next on it is a request of its own, authenticated again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_leaves_no_raw_connection_to_kube() -> anyhow::Result<()> {
    let env = KubeEnv::start().await?;
    let upgrade_agent = unique_marker("refused-upgrade");
    let raw_agent = unique_marker("after-upgrade");
    let raw = format!(
        "GET /api/v1/namespaces/default/pods/no-such-pod/exec?command=sh&stdout=true HTTP/1.1\r\n\
         Host: localhost\r\nAuthorization: Bearer alice-token\r\nUser-Agent: {upgrade_agent}\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n\
         GET /api/v1/namespaces/kube-system/secrets HTTP/1.1\r\n\
         Host: localhost\r\nUser-Agent: {raw_agent}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_http1(&env, &raw).await?;
    let statuses: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert!(!statuses.is_empty(), "no answer: {answer}");
    assert!(
        !statuses[0].starts_with("HTTP/1.1 101"),
        "kube upgraded an exec of a pod that does not exist: {answer}"
    );
    // The second request is the proxy's to answer: without a credential, 401.
    if let Some(second) = statuses.get(1) {
        assert!(second.starts_with("HTTP/1.1 401"), "{answer}");
    }
    assert!(!answer.contains("SecretList"), "{answer}");
    // The upgrade reached kube as alice; the raw request never did.
    let events = env.kube.wait_audit_by_agent(&upgrade_agent, 1).await?;
    assert_eq!(
        events[0]["impersonatedUser"]["username"], "alice",
        "{}",
        events[0]
    );
    env.assert_not_forwarded(&raw_agent).await?;
    Ok(())
}
