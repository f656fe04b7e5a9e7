//! What reaches the API server as identity and origin, through authproxy
//! with curl in front and the API-server double behind: front-proxy identity
//! headers never pass, `X-Forwarded-For` is believed only from trusted
//! proxies (and a trusted balancer's PROXY protocol header names the
//! client), request paths stay below the upstream URL's prefix,
//! `system:` names from a directory are refused, and `authproxy login` does
//! not echo a typed password.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use authproxy::config::FileConfig;
use authproxy::server::RunningServer;
use authproxy_tests::slapd::{Slapd, SERVICE_DN, SUFFIX};
use authproxy_tests::{authproxy_binary, curl_with_ca, require_tool, Env, TestPki};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PODS: &str = "/api/v1/namespaces/default/pods";

fn assert_status(body: &str, code: u16, reason: &str) -> Value {
    let status: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(status["kind"], "Status", "{body}");
    assert_eq!(status["code"], code, "{body}");
    assert_eq!(status["reason"], reason, "{body}");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_proxy_identity_headers_never_reach_upstream() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let url = format!("{}{PODS}", env.proxy_url());
    let (code, body) = env
        .curl(&[
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            "X-Remote-User: system:admin",
            "-H",
            "x-remote-group: system:masters",
            "-H",
            "X-REMOTE-UID: 0",
            "-H",
            "X-Remote-Extra-Scopes: all",
            "-H",
            "x-remote-extra-acme.com%2Fproject: p1",
            &url,
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    let listed = env
        .upstream_requests()
        .into_iter()
        .find(|r| r.uri.path() == PODS)
        .context("the pods list did not reach the double")?;
    let smuggled: Vec<&str> = listed
        .headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| n.starts_with("x-remote-"))
        .collect();
    assert!(smuggled.is_empty(), "reached the API server: {smuggled:?}");
    assert_eq!(listed.header_values("impersonate-user"), ["alice"]);
    assert_eq!(listed.header_values("impersonate-group"), ["devs"]);
    Ok(())
}

/// Identity headers spelt with `_` for `-` (which some servers and proxies
/// read as the same header) never reach the upstream, over HTTP/1.1 or
/// HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_identity_headers_never_reach_upstream() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let url = format!("{}{PODS}", env.proxy_url());
    let smuggled = [
        "Impersonate_User: system:admin",
        "impersonate_group: system:masters",
        "Impersonate_Uid: 0",
        "Impersonate_Extra_Scopes: all",
        "impersonate_extra_acme.com%2Fproject: p1",
        "X-Remote_User: system:admin",
        "X_Remote_Group: system:masters",
        "x_remote_uid: 0",
        "X_Remote_Extra_Scopes: all",
        "Proxy_Authorization: Bearer admin-token",
        "X_Real_Ip: 198.51.100.1",
    ];
    for version in ["--http1.1", "--http2"] {
        let agent = format!("underscore-smuggle{version}");
        let mut args = vec![
            version,
            "-A",
            &agent,
            "-H",
            "Authorization: Bearer alice-token",
        ];
        for h in &smuggled {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let (code, body) = env.curl(&args).await?;
        assert_eq!(code, 200, "{version}: {body}");
        let listed = env
            .upstream_requests()
            .into_iter()
            .find(|r| r.header_values("user-agent") == [agent.as_str()])
            .with_context(|| format!("{version}: the pods list did not reach the double"))?;
        let reached: Vec<String> = listed
            .headers
            .iter()
            .filter(|(n, _)| n.as_str().contains('_'))
            .map(|(n, v)| format!("{n}: {v:?}"))
            .collect();
        assert!(
            reached.is_empty(),
            "{version}: reached upstream: {reached:?}"
        );
        assert_eq!(listed.header_values("impersonate-user"), ["alice"]);
        assert_eq!(listed.header_values("impersonate-group"), ["devs"]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() -> anyhow::Result<()> {
    let env = Env::start().await?;
    // A second proxy in front of the same double that trusts 127.0.0.2 only.
    let dir = tempfile::tempdir()?;
    let trusting = env
        .another_proxy(dir.path(), "trustedProxies: ['127.0.0.2', '10.0.0.0/8']")
        .await?;
    let alice = "Authorization: Bearer alice-token";
    let send = |base: String, from: &'static str, query: &'static str| {
        let env = &env;
        async move {
            let (code, body) = env
                .curl(&[
                    "--interface",
                    from,
                    "-H",
                    alice,
                    "-H",
                    "X-Forwarded-For: 203.0.113.9, 10.1.1.1",
                    "-H",
                    "X-Real-Ip: 198.51.100.1",
                    &format!("{base}{PODS}?caller={query}"),
                ])
                .await?;
            anyhow::ensure!(code == 200, "{query}: {body}");
            anyhow::Ok(())
        }
    };
    send(env.proxy_url(), "127.0.0.2", "untrusted").await?;
    let trusting_url = format!("https://{}", trusting.addr());
    send(trusting_url.clone(), "127.0.0.1", "not-in-list").await?;
    send(trusting_url, "127.0.0.2", "trusted").await?;
    let (code, body) = env
        .curl(&[
            "-H",
            alice,
            &format!("{}{PODS}?caller=silent", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{body}");
    let requests = env.upstream_requests();
    let by_query = |q: &str| {
        requests
            .iter()
            .find(|r| r.uri.query() == Some(q))
            .cloned()
            .with_context(|| format!("no request with ?{q} reached the double"))
    };
    // From a caller that is not a trusted proxy, its claims are replaced by
    // the address the proxy saw: kube's audit lists the first entry first.
    let untrusted = by_query("caller=untrusted")?;
    assert_eq!(untrusted.header_values("x-forwarded-for"), ["127.0.0.2"]);
    assert!(untrusted.header_values("x-real-ip").is_empty());
    let not_listed = by_query("caller=not-in-list")?;
    assert_eq!(not_listed.header_values("x-forwarded-for"), ["127.0.0.1"]);
    // From a trusted proxy its entries stay, and the hop it came from is last.
    let trusted = by_query("caller=trusted")?;
    assert_eq!(
        trusted.header_values("x-forwarded-for"),
        ["203.0.113.9, 10.1.1.1, 127.0.0.2"]
    );
    assert!(trusted.header_values("x-real-ip").is_empty());
    let silent = by_query("caller=silent")?;
    assert_eq!(silent.header_values("x-forwarded-for"), ["127.0.0.1"]);
    trusting.shutdown().await;
    Ok(())
}

/// Sends one HTTP/1.1 GET over TLS to `addr`, first writing `preamble` on
/// the bare connection (a PROXY protocol header); the status code, or the
/// error.
async fn get_after(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    preamble: &[u8],
    path: &str,
) -> anyhow::Result<u16> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(preamble).await?;
    let tls = authproxy_tests::pki::client_config(ca_pem, &[b"http/1.1"])?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer alice-token\r\nX-Forwarded-For: 203.0.113.66\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok();
    let text = String::from_utf8_lossy(&answer);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    Ok(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_balancers_proxy_protocol_header_names_the_client() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let dir = tempfile::tempdir()?;
    let behind_balancer = env
        .another_proxy(
            dir.path(),
            "trustedProxies: ['127.0.0.1']\nproxyProtocol: true",
        )
        .await?;
    let addr = behind_balancer.addr();
    let ca = env.pki.ca_pem();
    // Version 1 and version 2 headers from the balancer (127.0.0.1).
    let v1 = b"PROXY TCP4 198.51.100.23 127.0.0.1 40000 8443\r\n".to_vec();
    let code = get_after(addr, ca, &v1, &format!("{PODS}?via=v1")).await?;
    assert_eq!(code, 200);
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21".to_vec();
    let mut block = vec![0u8; 36];
    block[..16].copy_from_slice(&"2001:db8::23".parse::<std::net::Ipv6Addr>()?.octets());
    block[32..34].copy_from_slice(&40000u16.to_be_bytes());
    v2.extend_from_slice(&36u16.to_be_bytes());
    v2.extend_from_slice(&block);
    let code = get_after(addr, ca, &v2, &format!("{PODS}?via=v2")).await?;
    assert_eq!(code, 200);
    // The balancer's own connection (`UNKNOWN`), and a named client that is
    // itself in trustedProxies: neither may speak for another address.
    let code = get_after(
        addr,
        ca,
        b"PROXY UNKNOWN\r\n",
        &format!("{PODS}?via=unknown"),
    )
    .await?;
    assert_eq!(code, 200);
    let inside = b"PROXY TCP4 127.0.0.1 127.0.0.1 40001 8443\r\n".to_vec();
    let code = get_after(addr, ca, &inside, &format!("{PODS}?via=inside")).await?;
    assert_eq!(code, 200);
    // A connection from the balancer without a header is not served.
    assert!(
        get_after(addr, ca, b"", &format!("{PODS}?via=none"))
            .await
            .is_err(),
        "a trusted peer without a PROXY header was served"
    );
    let requests = env.upstream_requests();
    let xff = |q: &str| {
        requests
            .iter()
            .find(|r| r.uri.query() == Some(q))
            .map(|r| r.header_values("x-forwarded-for"))
    };
    // The client the header named is the hop the proxy saw (it is not a
    // trusted proxy itself, so the X-Forwarded-For it sent is replaced).
    assert_eq!(xff("via=v1"), Some(vec!["198.51.100.23".to_owned()]));
    assert_eq!(xff("via=v2"), Some(vec!["2001:db8::23".to_owned()]));
    assert_eq!(xff("via=none"), None);
    assert_eq!(xff("via=unknown"), Some(vec!["127.0.0.1".to_owned()]));
    assert_eq!(xff("via=inside"), Some(vec!["127.0.0.1".to_owned()]));
    behind_balancer.shutdown().await;

    // A PROXY header from anyone else is not believed: the connection fails
    // (it is read as TLS), and nothing is forwarded.
    let code = get_after(
        env.proxy.as_ref().map(|p| p.addr()).context("proxy")?,
        ca,
        &v1,
        &format!("{PODS}?via=untrusted"),
    )
    .await;
    assert!(code.is_err(), "{code:?}");
    assert!(env
        .upstream_requests()
        .iter()
        .all(|r| r.uri.query() != Some("via=untrusted")));
    Ok(())
}

/// A second authproxy in `env`'s folder, whose upstream URL carries `prefix`.
async fn proxy_with_upstream_prefix(env: &Env, prefix: &str) -> anyhow::Result<RunningServer> {
    let cert = env.pki.issue_server("proxy-prefixed")?;
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         tls: {{certFile: {cert}, keyFile: {key}}}\n\
         upstream: {{url: '{url}{prefix}', caFile: {ca}, tokenFile: proxy-token, connectTimeout: 2s}}\n\
         authentication:\n  staticTokens: {{file: tokens.csv}}\n\
         shutdownTimeout: 2s\n",
        cert = cert.cert_path.display(),
        key = cert.key_path.display(),
        ca = env.pki.ca_path().display(),
        url = env.double.url(),
    );
    let path = env.dir.path().join("authproxy-prefixed.yaml");
    std::fs::write(&path, yaml)?;
    let config = FileConfig::load(&path)?;
    Ok(authproxy::server::start(&config, env.dir.path()).await?)
}

/// The segments a server that percent-decodes the path and then resolves
/// dot-segments (as Go's net/http users do) would act on.
fn resolved(path: &str) -> Vec<String> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    let mut out: Vec<String> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other.to_owned()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_never_climb_out_of_the_upstream_prefix() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let proxy = proxy_with_upstream_prefix(&env, "/k8s/clusters/c1").await?;
    let base = format!("https://{}", proxy.addr());
    let alice = "Authorization: Bearer alice-token";
    let ca = env.pki.ca_path();
    for (i, path) in [
        "/api/v1/../../../../v3/settings",
        "/%2e%2e/%2E%2e/%2e%2E/v3/settings",
        "/api/.%2e/%2E./%2e/../v3/settings",
    ]
    .iter()
    .enumerate()
    {
        let url = format!("{base}{path}?probe={i}");
        let (_code, body) = curl_with_ca(ca, &["--path-as-is", "-H", alice, &url]).await?;
        let seen = env
            .upstream_requests()
            .into_iter()
            .find(|r| r.uri.query() == Some(&format!("probe={i}")))
            .with_context(|| format!("{path} did not reach the double: {body}"))?;
        let segments = resolved(seen.uri.path());
        assert!(
            segments.len() >= 3 && segments[..3] == ["k8s", "clusters", "c1"],
            "{path} reached the API server as {} (resolves to {segments:?})",
            seen.uri
        );
        assert_eq!(seen.uri.path(), "/k8s/clusters/c1/v3/settings", "{path}");
    }
    // A dot-segment behind an encoded slash has no safe reading: refused.
    let url = format!("{base}/api/..%2f..%2f..%2fv3/settings?probe=slash");
    let (code, body) = curl_with_ca(ca, &["--path-as-is", "-H", alice, &url]).await?;
    assert_eq!(code, 400, "{body}");
    assert_status(&body, 400, "BadRequest");
    assert!(
        !env.upstream_requests()
            .iter()
            .any(|r| r.uri.query() == Some("probe=slash")),
        "the refused path reached the API server"
    );
    Ok(())
}

/// Adds an LDAP entry with the directory's admin account (after slapd started).
async fn ldap_add(slapd: &Slapd, ldif: &str) -> anyhow::Result<()> {
    require_tool("ldapadd")?;
    let mut child = tokio::process::Command::new("ldapadd")
        .args(["-x", "-H"])
        .arg(format!("ldap://127.0.0.1:{}", slapd.ldap_port))
        .args(["-D", &format!("cn=admin,{SUFFIX}"), "-w", "admin-secret"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("ldapadd stdin")?;
    stdin.write_all(ldif.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "ldapadd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_group_named_system_masters_is_refused_by_default() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    ldap_add(
        &slapd,
        &format!(
            "dn: cn=system:masters,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: system:masters\nmember: uid=alice,ou=people,{SUFFIX}\n"
        ),
    )
    .await?;
    let ldap = json!({
        "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
        "caFile": pki.ca_path(),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": slapd.service_password_file()?,
        "userSearch": {"baseDN": format!("ou=people,{SUFFIX}"), "filter": "(uid={username})"},
        "groupSearch": {"baseDN": format!("ou=groups,{SUFFIX}"), "filter": "(member={dn})", "nameAttribute": "cn"},
        "connectTimeout": "2s",
        "operationTimeout": "2s",
    });
    let env = Env::start_with(pki, &format!("  ldap: {ldap}")).await?;
    let url = format!("{}{PODS}", env.proxy_url());

    let (code, body) = env.curl(&["-u", "alice:alice-password", &url]).await?;
    assert_eq!(code, 401, "{body}");
    assert_status(&body, 401, "Unauthorized");
    assert!(!body.contains("alice-password"), "{body}");
    let escalated = env
        .upstream_requests()
        .into_iter()
        .filter(|r| {
            r.header_values("impersonate-group")
                .iter()
                .any(|g| g.starts_with("system:"))
        })
        .count();
    assert_eq!(escalated, 0, "a system: group reached the API server");

    // A directory user without reserved names still gets in.
    let (code, body) = env.curl(&["-u", "carol:carol-password", &url]).await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

/// Reads from `out` until `needle` shows up (bounded), returning all read.
async fn read_until(
    out: &mut (impl AsyncReadExt + Unpin),
    seen: &mut Vec<u8>,
    needle: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(seen).contains(needle) {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout_at(deadline, out.read(&mut buf))
            .await
            .with_context(|| {
                format!(
                    "{needle:?} not seen within 20s; seen: {}",
                    String::from_utf8_lossy(seen)
                )
            })??;
        anyhow::ensure!(
            n > 0,
            "output ended before {needle:?}: {}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_password_typed_on_a_terminal_is_not_echoed() -> anyhow::Result<()> {
    require_tool("script")?;
    let binary = authproxy_binary()?;
    let cache = tempfile::tempdir()?;
    // `script` gives the login a pseudo-terminal and copies it to stdout.
    // The server does not exist: only the prompt matters here.
    let command = format!(
        "{} login ldap --server https://127.0.0.1:9",
        binary.display()
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("AUTHPROXY_USERNAME", "alice")
        .env_remove("AUTHPROXY_PASSWORD")
        .env("XDG_CACHE_HOME", cache.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting script")?;
    let mut stdin = child.stdin.take().context("script stdin")?;
    let mut stdout = child.stdout.take().context("script stdout")?;
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, "Password").await?;
    stdin.write_all(b"hunter2-typed\n").await?;
    stdin.flush().await?;
    // The login then fails to reach the server and prints why.
    read_until(&mut stdout, &mut seen, "authproxy:").await?;
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let transcript = String::from_utf8_lossy(&seen);
    assert!(
        !transcript.contains("hunter2-typed"),
        "the password was echoed: {transcript}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_each_broken_kube_rule_with_its_path() -> anyhow::Result<()> {
    let binary = authproxy_binary()?;
    let pki = TestPki::new()?;
    let cert = pki.issue_server("proxy")?;
    let dir = tempfile::tempdir()?;
    let kube = dir.path().join("authn-config.yaml");
    std::fs::write(
        &kube,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n\
         - issuer: {url: 'https://idp.example', audiences: [kube]}\n  \
           claimMappings:\n    username: {claim: sub, prefix: ''}\n    groups: {claim: groups}\n",
    )?;
    let config = dir.path().join("authproxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\n\
             tls: {{certFile: {cert}, keyFile: {key}}}\n\
             upstream: {{url: 'https://127.0.0.1:6443', caFile: {ca}}}\n\
             authentication:\n  \
               authenticationConfigFile: authn-config.yaml\n  \
               jwt:\n  \
               - issuer: {{url: 'https://idp.example', audiences: [kube]}}\n    \
                 claimMappings:\n      \
                   username: {{claim: sub, prefix: ''}}\n      \
                   groups: {{claim: groups}}\n      \
                   extra:\n      \
                   - {{key: tenant, claim: t}}\n      \
                   - {{key: Acme.com/tenant, claim: t}}\n      \
                   - {{key: authentication.kubernetes.io/x, claim: t}}\n      \
                   - {{key: k8s.io/y, claim: t}}\n",
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
            ca = pki.ca_path().display(),
        ),
    )?;
    let out = tokio::process::Command::new(&binary)
        .arg("check-config")
        .arg(&config)
        .kill_on_drop(true)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let jwt = "authentication.jwt[0]";
    let file = format!("{}: jwt[0]", kube.display());
    for (field, words) in [
        (format!("{jwt}.claimMappings.groups.prefix"), "required"),
        (
            format!("{jwt}.claimMappings.extra[0].key"),
            "domain-prefixed",
        ),
        (format!("{jwt}.claimMappings.extra[1].key"), "lowercase"),
        (format!("{jwt}.claimMappings.extra[2].key"), "reserved"),
        (format!("{jwt}.claimMappings.extra[3].key"), "reserved"),
        (format!("{file}.claimMappings.groups.prefix"), "required"),
        (format!("{file}.issuer.url"), "duplicate issuer"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("{field}:")) && l.contains(words)),
            "{field} ({words}) not reported:\n{stderr}"
        );
    }
    assert!(stderr.contains("authproxy.yaml"), "{stderr}");
    Ok(())
}

/// An API server that answers every request with a redirect to `to`,
/// and counts the requests it was sent.
async fn redirecting_upstream(
    pki: &TestPki,
    to: &str,
) -> anyhow::Result<(
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let cert = pki.issue_server("redirecting")?;
    let tls = authproxy_tests::pki::server_config(&cert, &[b"http/1.1"])?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    let answer =
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let counted = counted.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                    if head.ends_with(b"\r\n\r\n") {
                        counted.fetch_add(1, Ordering::SeqCst);
                        head.clear();
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((addr, seen))
}

/// The shape of CVE-2020-8559 and CVE-2022-3172: an API server's redirect is
/// the caller's to follow, never the proxy's (it would carry the proxy's
/// credential and the impersonation headers somewhere else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_from_the_api_server_are_never_followed() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let pki = TestPki::new()?;
    // Where the redirect points: anything that connects here was followed.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = elsewhere.local_addr()?;
    let followed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = followed.clone();
    tokio::spawn(async move {
        while let Ok((_tcp, _)) = elsewhere.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (upstream, answered) =
        redirecting_upstream(&pki, &format!("https://{target}/stolen")).await?;
    let dir = tempfile::tempdir()?;
    let proxy = authproxy_tests::start_proxy(
        &pki,
        dir.path(),
        &format!("https://{upstream}"),
        pki.ca_path(),
        authproxy_tests::PROXY_TOKEN,
        "",
    )
    .await?;
    let url = format!("https://{}{PODS}/p/exec?command=sh", proxy.addr());
    for extra in [
        vec!["--http1.1"],
        vec!["--http2"],
        // an upgrade answered with a redirect
        vec![
            "--http1.1",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: SPDY/3.1",
        ],
    ] {
        let mut args = vec!["-D", "-", "-H", "Authorization: Bearer alice-token"];
        args.extend(extra.iter().copied());
        args.push(&url);
        let (code, body) = curl_with_ca(pki.ca_path(), &args).await?;
        assert_eq!(code, 307, "{extra:?}: {body}");
        assert!(body.contains("/stolen"), "{extra:?}: {body}");
    }
    assert!(
        answered.load(Ordering::SeqCst) >= 3,
        "the upstream was not asked"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A client certificate is checked on every request, as kube-apiserver
/// checks it, not once per connection: after its CA is rotated out of
/// `tls.clientCAFile`, the next request on the same open connection is no
/// longer authenticated by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_stops_working_on_an_open_connection_when_its_ca_is_rotated_out(
) -> anyhow::Result<()> {
    use http_body_util::{BodyExt, Empty};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let env = Env::start().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let serving = env.pki.issue_server("rotating-proxy")?;
    std::fs::write(d.join("client-ca.crt"), env.pki.ca_pem())?;
    std::fs::write(d.join("proxy-token"), authproxy_tests::PROXY_TOKEN)?;
    let path = d.join("authproxy.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nreloadInterval: 50ms\n\
             tls: {{certFile: {}, keyFile: {}, clientCAFile: client-ca.crt}}\n\
             upstream: {{url: '{}', caFile: {}, tokenFile: proxy-token}}\n\
             authentication: {{clientCertificates: true}}\n",
            serving.cert_path.display(),
            serving.key_path.display(),
            env.double.url(),
            env.pki.ca_path().display(),
        ),
    )?;
    let config = FileConfig::load(&path)?;
    let proxy = authproxy::server::start(&config, d).await?;

    // One connection, with alice's certificate.
    let alice = env
        .pki
        .issue_client("rotating-alice", "alice", Some("devs"))?;
    let chain =
        CertificateDer::pem_slice_iter(alice.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(alice.key_pem.as_bytes())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(env.pki.ca_pem().as_bytes()) {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(proxy.addr()).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(rustls_pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut get = async |query: &str| -> anyhow::Result<u16> {
        let request = http::Request::get(format!("{PODS}?{query}"))
            .header("host", "localhost")
            .body(Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    };
    assert_eq!(get("before").await?, 200);
    // The CA is rotated: only another CA's certificates are accepted now.
    std::fs::write(d.join("client-ca.crt"), TestPki::new()?.ca_pem())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get("after").await?,
        401,
        "the rotated-out certificate still authenticated on its open connection"
    );
    let requests = env.upstream_requests();
    assert!(requests.iter().any(
        |r| r.uri.query() == Some("before") && r.header_values("impersonate-user") == ["alice"]
    ));
    assert!(requests.iter().all(|r| r.uri.query() != Some("after")));
    proxy.shutdown().await;
    Ok(())
}
