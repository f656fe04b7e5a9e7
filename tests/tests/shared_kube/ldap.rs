//! LDAP logins against a real OpenLDAP slapd: bind-search-bind through
//! authproxy to the real kube-apiserver, with curl and the matching kubectl.

use std::time::Duration;

use anyhow::Context as _;
use authproxy_tests::kube::{
    assert_kubectl_acts_as, Expected, KubeEnv as Env, PROXY_SERVICE_ACCOUNT,
};
use authproxy_tests::slapd::{Slapd, SERVICE_DN};
use authproxy_tests::{output_text, TestPki};
use base64::Engine as _;
use serde_json::json;

const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";
const DAVE_DN: &str = "uid=dave,ou=people,dc=example,dc=org";

async fn world(start_tls: bool) -> anyhow::Result<(Env, Slapd)> {
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    world_tls(pki, slapd, start_tls, "").await
}

/// Like [`world`] (LDAPS), with `top_level` YAML added to the config.
async fn world_with(pki: TestPki, slapd: Slapd, top_level: &str) -> anyhow::Result<(Env, Slapd)> {
    world_tls(pki, slapd, false, top_level).await
}

async fn world_tls(
    pki: TestPki,
    slapd: Slapd,
    start_tls: bool,
    top_level: &str,
) -> anyhow::Result<(Env, Slapd)> {
    world_refreshing(pki, slapd, start_tls, top_level, None).await
}

/// Like [`world_tls`], issued tokens' users looked up again every
/// `refresh_interval` when given.
async fn world_refreshing(
    pki: TestPki,
    slapd: Slapd,
    start_tls: bool,
    top_level: &str,
    refresh_interval: Option<&str>,
) -> anyhow::Result<(Env, Slapd)> {
    let url = if start_tls {
        format!("ldap://127.0.0.1:{}", slapd.ldap_port)
    } else {
        format!("ldaps://127.0.0.1:{}", slapd.ldaps_port)
    };
    let ldap = json!({
        "url": url,
        "startTLS": start_tls,
        "caFile": pki.ca_path(),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": slapd.service_password_file()?,
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid", "uidAttribute": "employeeNumber"},
        "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
        "connectTimeout": "2s",
        "operationTimeout": "2s",
        "throttle": {"maxFailuresPerUser": 5, "maxFailuresPerClient": 50},
    });
    let key = pki.dir().join("issuer.pem");
    std::fs::write(
        &key,
        pki.issue_client("issuer-key", "unused", None)?.key_pem,
    )?;
    let mut issued =
        json!({"issuer": "authproxy-test", "signingKeyFiles": [key], "lifetime": "10m"});
    if let Some(interval) = refresh_interval {
        issued["refreshInterval"] = json!(interval);
    }
    let env = Env::start_with(
        pki,
        &format!("  ldap: {ldap}\n  issuedTokens: {issued}\n{top_level}"),
    )
    .await?;
    Ok((env, slapd))
}

/// The user agent of every [`pods_as`] request of `env`, to find them in
/// kube's audit log.
fn agent(env: &Env) -> String {
    format!("ldap-test/{}", env.proxy_url())
}

async fn pods_as(env: &Env, user: &str, password: &str) -> anyhow::Result<(u16, String)> {
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    env.curl(&["-A", &agent(env), "-u", &format!("{user}:{password}"), &url])
        .await
}

/// A kubeconfig whose users log in with username/password (client-go sends Basic).
fn basic_kubeconfig(env: &Env) -> anyhow::Result<std::path::PathBuf> {
    let path = env.dir.path().join("kubeconfig-ldap");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: alice\n  user: {{username: alice, password: alice-password}}\n- name: bob\n  user: {{username: bob, password: bob-password}}\n\
             contexts:\n- name: alice\n  context: {{cluster: proxy, user: alice, namespace: default}}\n- name: bob\n  context: {{cluster: proxy, user: bob, namespace: default}}\n\
             current-context: alice\n",
            env.proxy_url(),
            env.pki.ca_path().display()
        ),
    )?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_ldap_credentials_acts_as_the_directory_user_on_kube() -> anyhow::Result<()> {
    let (env, _slapd) = world(false).await?;
    let kubeconfig = basic_kubeconfig(&env)?;
    let alice = Expected {
        username: "alice",
        groups: &["devs"],
        uid: Some("1001"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&kubeconfig, Some("alice"), &alice).await?;
    let bob = Expected {
        username: "bob",
        groups: &[],
        uid: Some("1002"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&kubeconfig, Some("bob"), &bob).await?;
    // kube saw the proxy on behalf of alice; the password went nowhere
    let (code, body) = pods_as(&env, "alice", "alice-password").await?;
    assert_eq!(code, 200, "{body}");
    let event = &env.kube.wait_audit_by_agent(&agent(&env), 1).await?[0];
    assert_eq!(event["user"]["username"], PROXY_SERVICE_ACCOUNT, "{event}");
    assert_eq!(
        event["impersonatedUser"],
        json!({"username": "alice", "uid": "1001", "groups": ["devs", "system:authenticated"]}),
        "{event}"
    );
    assert!(!event.to_string().contains("alice-password"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_works_and_a_user_in_two_groups_gets_both() -> anyhow::Result<()> {
    let (env, _slapd) = world(true).await?;
    let review = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        env.proxy_url()
    );
    let (code, body) = env
        .curl(&[
            "-u",
            "carol:carol-password",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
            &review,
        ])
        .await?;
    assert_eq!(code, 201, "{body}");
    let review: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        review["status"]["userInfo"]["groups"],
        json!(["devs", "ops", "system:authenticated"]),
        "{review}"
    );
    // Static tokens work in the same chain as LDAP.
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let (code, body) = env
        .curl(&["-H", "Authorization: Bearer alice-token", &url])
        .await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_empty_passwords_are_refused_and_empty_never_binds() -> anyhow::Result<()> {
    let (env, slapd) = world(false).await?;
    let (code, body) = pods_as(&env, "alice", "wrong-password").await?;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains(r#""reason":"Unauthorized""#), "{body}");
    let (code, body) = pods_as(&env, "dave", "").await?;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        slapd.binds_for(DAVE_DN)?,
        0,
        "an empty-password bind reached slapd"
    );
    assert!(
        slapd.binds_for(SERVICE_DN)? >= 1,
        "slapd's bind log is not being read"
    );
    env.assert_not_forwarded(&agent(&env)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_injection_authenticates_nobody_but_metacharacters_in_a_real_name_work(
) -> anyhow::Result<()> {
    let (env, _slapd) = world(false).await?;
    for user in ["*)(uid=*", "*", "alice)(|(uid=*", "*)(objectClass=*"] {
        for password in ["alice-password", "x", "*"] {
            let (code, body) = pods_as(&env, user, password).await?;
            assert_eq!(code, 401, "{user:?}/{password:?}: {body}");
        }
    }
    env.assert_not_forwarded(&agent(&env)).await?;
    let (code, body) = pods_as(&env, "ev*l(user)", "evil-password").await?;
    assert_eq!(code, 200, "{body}");
    let event = &env.kube.wait_audit_by_agent(&agent(&env), 1).await?[0];
    assert_eq!(
        event["impersonatedUser"]["username"], "ev*l(user)",
        "{event}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_outage_is_503_and_recovery_needs_no_restart() -> anyhow::Result<()> {
    let (env, mut slapd) = world(false).await?;
    assert_eq!(pods_as(&env, "alice", "alice-password").await?.0, 200);
    slapd.kill().await;
    let (code, body) = pods_as(&env, "carol", "carol-password").await?;
    assert_eq!(code, 503, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["reason"], "ServiceUnavailable");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("LDAP"),
        "{body}"
    );
    slapd.restart().await?;
    let (code, body) = pods_as(&env, "carol", "carol-password").await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_throttled_and_slapd_sees_no_more_binds_than_the_limit() -> anyhow::Result<()>
{
    let (env, slapd) = world(false).await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    // 20 wrong passwords for alice at once, from one curl.
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "20",
        "--cacert",
    ])
    .arg(env.pki.ca_path())
    .args(["-w", "%{http_code}\\n"]);
    for i in 0..20 {
        cmd.args(["-o", "/dev/null", "-u", &format!("alice:guess-{i}"), &url]);
    }
    let started = std::time::Instant::now();
    let out = cmd.output().await?;
    let codes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(codes.len(), 20, "{}", String::from_utf8_lossy(&out.stderr));
    let refused = codes.iter().filter(|c| *c == "401").count();
    let throttled = codes.iter().filter(|c| *c == "429").count();
    assert_eq!(refused + throttled, 20, "{codes:?}");
    assert_eq!(
        refused, 5,
        "exactly the configured 5 attempts reach the directory: {codes:?}"
    );
    assert_eq!(
        slapd.binds_for(ALICE_DN)?,
        5,
        "slapd saw more binds than the limit"
    );
    // the right password is throttled too while the block lasts
    let (code, body) = pods_as(&env, "alice", "alice-password").await?;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains(r#""reason":"TooManyRequests""#), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ldap_login_is_exchanged_for_an_issued_token_and_slapd_sees_one_user_bind(
) -> anyhow::Result<()> {
    let (env, slapd) = world(false).await?;
    let url = format!("{}/authproxy/v1/token", env.proxy_url());
    let (code, body) = env
        .curl(&["-X", "POST", "-u", "dave:dave-password", &url])
        .await?;
    assert_eq!(code, 200, "{body}");
    let credential: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(credential["kind"], "ExecCredential");
    let token = credential["status"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(
        credential["status"]["expirationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert!(!token.contains("dave-password"));
    for _ in 0..5 {
        let pods = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
        let (code, body) = env
            .curl(&["-H", &format!("Authorization: Bearer {token}"), &pods])
            .await?;
        assert_eq!(
            code, 403,
            "dave has no pods rule, but is authenticated: {body}"
        );
        assert!(body.contains(r#"User \"dave\""#), "{body}");
    }
    assert_eq!(
        slapd.binds_for("uid=dave,ou=people,dc=example,dc=org")?,
        1,
        "one login, one user bind"
    );
    // an issued token cannot be exchanged for another (no endless renewal)
    let (code, _) = env
        .curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &url,
        ])
        .await?;
    assert_eq!(code, 401);
    // wrong password: no token
    let (code, _) = env.curl(&["-X", "POST", "-u", "dave:wrong", &url]).await?;
    assert_eq!(code, 401);
    Ok(())
}

/// The groups kube-apiserver gives requests sent with `token` through the
/// proxy (a `SelfSubjectReview`, kube's own groups left out), or the status
/// when the proxy refused.
async fn groups_with(env: &Env, token: &str) -> anyhow::Result<Result<Vec<String>, u16>> {
    let review = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        env.proxy_url()
    );
    let (code, body) = env
        .curl(&[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "--data",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
            &review,
        ])
        .await?;
    if code != 201 {
        return Ok(Err(code));
    }
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let mut groups: Vec<String> = answer["status"]["userInfo"]["groups"]
        .as_array()
        .context("groups")?
        .iter()
        .filter_map(|g| g.as_str())
        .filter(|g| !g.starts_with("system:"))
        .map(str::to_owned)
        .collect();
    groups.sort();
    Ok(Ok(groups))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_tokens_user_follows_the_directory_groups_and_deletion() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    let (env, slapd) = world_refreshing(
        pki,
        slapd,
        false,
        "metrics: {listen: '127.0.0.1:0'}",
        Some("1s"),
    )
    .await?;
    let url = format!("{}/authproxy/v1/token", env.proxy_url());
    let (code, body) = env
        .curl(&["-X", "POST", "-u", "carol:carol-password", &url])
        .await?;
    assert_eq!(code, 200, "{body}");
    let credential: serde_json::Value = serde_json::from_str(&body)?;
    let token = credential["status"]["token"]
        .as_str()
        .context("token")?
        .to_owned();
    assert_eq!(
        groups_with(&env, &token).await?,
        Ok(vec!["devs".to_owned(), "ops".to_owned()])
    );
    // carol leaves devs: her token's requests lose it within the interval
    // (and the lookup beside a request), no new login.
    slapd
        .modify("dn: cn=devs,ou=groups,dc=example,dc=org\nchangetype: modify\ndelete: member\nmember: uid=carol,ou=people,dc=example,dc=org\n")
        .await?;
    let left = std::time::Instant::now();
    authproxy_tests::wait_for(
        Duration::from_secs(6),
        "ops gone from carol's requests",
        || {
            let (env, token) = (&env, &token);
            async move {
                match groups_with(env, token).await {
                    Ok(Ok(groups)) if groups == ["ops"] => Ok(Some(())),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await?;
    let group_seen = left.elapsed();
    // alice locked by an administrator (ppolicy): her token is refused.
    let (code, body) = env
        .curl(&["-X", "POST", "-u", "alice:alice-password", &url])
        .await?;
    assert_eq!(code, 200, "{body}");
    let alice: serde_json::Value = serde_json::from_str(&body)?;
    let alice = alice["status"]["token"]
        .as_str()
        .context("token")?
        .to_owned();
    assert!(groups_with(&env, &alice).await?.is_ok());
    slapd
        .modify(&format!("dn: {ALICE_DN}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"))
        .await?;
    let locked = std::time::Instant::now();
    authproxy_tests::wait_for(Duration::from_secs(6), "alice's token refused", || {
        let (env, token) = (&env, &alice);
        async move {
            match groups_with(env, token).await {
                Ok(Err(401)) => Ok(Some(())),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await?;
    let lock_seen = locked.elapsed();
    // A locked account cannot log in either (its password is right, and
    // this directory's bind takes it: no policy applies to the entry).
    slapd
        .modify(&format!("dn: {DAVE_DN}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"))
        .await?;
    let (code, body) = env
        .curl(&["-X", "POST", "-u", "dave:dave-password", &url])
        .await?;
    assert_eq!(code, 401, "{body}");
    // ... though the directory took his password: the proxy refused.
    assert_eq!(slapd.successful_binds_for(DAVE_DN)?, 1);
    // carol deleted: her token is refused.
    slapd
        .modify("dn: uid=carol,ou=people,dc=example,dc=org\nchangetype: delete\n")
        .await?;
    let deleted = std::time::Instant::now();
    authproxy_tests::wait_for(Duration::from_secs(6), "carol's token refused", || {
        let (env, token) = (&env, &token);
        async move {
            match groups_with(env, token).await {
                Ok(Err(401)) => Ok(Some(())),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await?;
    println!(
        "refreshInterval 1s: a group removal seen after {group_seen:?}, a ppolicy lock refused after {lock_seen:?}, a deletion refused after {:?}",
        deleted.elapsed()
    );
    // Counted: the lookups that found carol, and the one that did not.
    let metrics_addr = env
        .proxy
        .as_ref()
        .and_then(|p| p.metrics_addr())
        .context("metrics listener")?;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{metrics_addr}/metrics"))
        .output()
        .await?;
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        metrics.contains("authproxy_issued_token_refreshes_total{result=\"gone\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_the_login_plugin_logs_in_once_and_caches_the_token_0600() -> anyhow::Result<()>
{
    use std::os::unix::fs::PermissionsExt;
    let (env, slapd) = world(false).await?;
    let binary = authproxy_tests::authproxy_binary()?;
    let kubeconfig = env.dir.path().join("kubeconfig-login");
    let out = tokio::process::Command::new(&binary)
        .args(["kubeconfig", "--server", &env.proxy_url(), "--ca-file"])
        .arg(env.pki.ca_path())
        .arg("--output")
        .arg(&kubeconfig)
        .output()
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let cache = tempfile::tempdir()?;
    let run = |args: &'static [&'static str]| {
        let cmd = authproxy_tests::kubectl_command().map(|mut cmd| {
            cmd.arg("--kubeconfig").arg(&kubeconfig).args(args);
            cmd.env("XDG_CACHE_HOME", cache.path())
                .env("AUTHPROXY_USERNAME", "alice")
                .env("AUTHPROXY_PASSWORD", "alice-password");
            cmd
        });
        async move {
            let mut cmd = cmd?;
            Ok::<_, anyhow::Error>(
                tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??,
            )
        }
    };
    for _ in 0..3 {
        let out = run(&["get", "pods", "-o", "json"]).await?;
        assert!(out.status.success(), "{}", output_text(&out));
    }
    assert_eq!(
        slapd.binds_for(ALICE_DN)?,
        1,
        "three kubectl calls, one directory login"
    );
    let files: Vec<_> = std::fs::read_dir(cache.path().join("authproxy"))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1);
    let cached = files[0].path();
    assert_eq!(
        std::fs::metadata(&cached)?.permissions().mode() & 0o777,
        0o600
    );
    // Later calls need nothing typed while the token is fresh: without a
    // terminal, and without the username or password in the environment.
    let mut bare = authproxy_tests::kubectl_command()?;
    bare.arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "pods", "-o", "json"])
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("AUTHPROXY_USERNAME")
        .env_remove("AUTHPROXY_PASSWORD")
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(30), bare.output()).await??;
    assert!(out.status.success(), "{}", output_text(&out));
    let out = run(&["auth", "whoami", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        review["status"]["userInfo"]["username"], "alice",
        "{review}"
    );
    assert_eq!(
        slapd.binds_for(ALICE_DN)?,
        1,
        "the cached token was not reused"
    );

    // An expired cached token is never sent: the plugin logs in again.
    let mut stale: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cached)?)?;
    stale["status"]["token"] = json!("stale-token-must-not-be-sent");
    stale["status"]["expirationTimestamp"] = json!("2020-01-01T00:00:00Z");
    std::fs::write(&cached, stale.to_string())?;
    let out = run(&["get", "pods", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", output_text(&out));
    // (the proxy answers this second login from its own short login cache)
    let fresh: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cached)?)?;
    assert_ne!(
        fresh["status"]["token"], "stale-token-must-not-be-sent",
        "the expired token was kept"
    );
    assert_ne!(
        fresh["status"]["expirationTimestamp"],
        "2020-01-01T00:00:00Z"
    );
    Ok(())
}

/// A kubeconfig to hand out: `--embed-certs --command authproxy` writes no
/// path of the machine it ran on (the CAs are in the file, the plugin is
/// found on PATH), and kubectl logs in with it from anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_with_embedded_certs_works_with_authproxy_on_path() -> anyhow::Result<()> {
    let (env, _slapd) = world(false).await?;
    let binary = authproxy_tests::authproxy_binary()?;
    let elsewhere = tempfile::tempdir()?;
    let kubeconfig = elsewhere.path().join("team-kubeconfig");
    let out = tokio::process::Command::new(&binary)
        .args(["kubeconfig", "--server", &env.proxy_url(), "--ca-file"])
        .arg(env.pki.ca_path())
        .args(["--embed-certs", "--command", "authproxy", "--output"])
        .arg(&kubeconfig)
        .output()
        .await?;
    assert!(out.status.success(), "{}", output_text(&out));
    let text = std::fs::read_to_string(&kubeconfig)?;
    let ca_path = env.pki.ca_path().display().to_string();
    assert!(!text.contains(&ca_path), "a local path in:\n{text}");
    assert!(!text.contains(&binary.display().to_string()), "{text}");
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&text)?;
    assert_eq!(parsed["users"][0]["user"]["exec"]["command"], "authproxy");
    assert!(parsed["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
    // kubectl with only that file, and authproxy on PATH.
    let bin_dir = binary.parent().context("binary folder")?;
    let path = std::env::join_paths(std::iter::once(bin_dir.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let cache = tempfile::tempdir()?;
    let mut cmd = authproxy_tests::kubectl_command()?;
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["auth", "whoami", "-o", "json"])
        .env("PATH", path)
        .env("XDG_CACHE_HOME", cache.path())
        .env("AUTHPROXY_USERNAME", "alice")
        .env("AUTHPROXY_PASSWORD", "alice-password");
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
    assert!(out.status.success(), "{}", output_text(&out));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    Ok(())
}

/// A 401 offers every scheme the proxy takes, one challenge per header:
/// Basic (LDAP) and Bearer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_offers_basic_and_bearer_when_ldap_is_on() -> anyhow::Result<()> {
    let (env, _slapd) = world(false).await?;
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let (code, text) = env.curl(&["-D", "-", &url]).await?;
    assert_eq!(code, 401, "{text}");
    let challenges: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("www-authenticate")
                .then(|| value.trim().to_owned())
        })
        .collect();
    assert_eq!(
        challenges,
        ["Basic realm=\"authproxy\"", "Bearer realm=\"authproxy\""],
        "{text}"
    );
    Ok(())
}

/// The proxy serves a kubeconfig for itself at a well-known path, without
/// authentication and without a secret in it: its server, CA and a user
/// that logs in with `authproxy login`; kubectl works with it as served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_kubeconfig_logs_in_as_served() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let ca = pki.ca_path().to_owned();
    let slapd = Slapd::start(&pki).await?;
    let (env, _slapd) = world_with(
        pki,
        slapd,
        &format!("kubeconfig: {{caFile: {}}}", ca.display()),
    )
    .await?;
    let (code, head) = env
        .curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{}/authproxy/v1/kubeconfig", env.proxy_url()),
        ])
        .await?;
    assert_eq!(code, 200, "{head}");
    // Made from the request's host: never kept by a cache in between.
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );
    let (code, text) = env
        .curl(&[&format!("{}/authproxy/v1/kubeconfig", env.proxy_url())])
        .await?;
    assert_eq!(code, 200, "{text}");
    let parsed: serde_json::Value = serde_yaml_ng::from_str(&text)?;
    assert_eq!(parsed["clusters"][0]["cluster"]["server"], env.proxy_url());
    assert_eq!(
        parsed["clusters"][0]["cluster"]["certificate-authority-data"],
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&ca)?)
    );
    let exec = &parsed["users"][0]["user"]["exec"];
    assert_eq!(exec["command"], "authproxy");
    assert_eq!(exec["args"][0], "login");
    assert_eq!(exec["args"][1], "ldap");
    let kubeconfig = env.dir.path().join("served-kubeconfig");
    std::fs::write(&kubeconfig, &text)?;
    let binary = authproxy_tests::authproxy_binary()?;
    let path = std::env::join_paths(
        std::iter::once(binary.parent().context("binary folder")?.to_owned()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ),
    )?;
    let cache = tempfile::tempdir()?;
    let mut cmd = authproxy_tests::kubectl_command()?;
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["auth", "whoami", "-o", "json"])
        .env("PATH", path)
        .env("XDG_CACHE_HOME", cache.path())
        .env("AUTHPROXY_USERNAME", "alice")
        .env("AUTHPROXY_PASSWORD", "alice-password");
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
    assert!(out.status.success(), "{}", output_text(&out));
    let review: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(review["status"]["userInfo"]["username"], "alice");
    Ok(())
}
