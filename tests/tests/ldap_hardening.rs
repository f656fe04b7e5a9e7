//! LDAP brute-force protection that cannot be turned against users, and a
//! directory that hangs: against a real slapd (paused with SIGSTOP where it
//! must hang), through authproxy, with curl and a raw HTTP/2 client that
//! cancels its streams. slapd's own statistics log is the witness of what
//! reached the directory.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use authproxy_tests::slapd::{Slapd, SERVICE_DN};
use authproxy_tests::{Env, TestPki};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

const ALICE_DN: &str = "uid=alice,ou=people,dc=example,dc=org";
const BOB_DN: &str = "uid=bob,ou=people,dc=example,dc=org";

/// authproxy with LDAP (LDAPS) in front of the double; `overrides` replace
/// or add fields of the `ldap:` section.
async fn world(overrides: Value) -> anyhow::Result<(Env, Slapd)> {
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    let mut ldap = json!({
        "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
        "caFile": pki.ca_path(),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": slapd.service_password_file()?,
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid", "uidAttribute": "employeeNumber"},
        "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
        "connectTimeout": "2s",
        "operationTimeout": "2s",
        "throttle": {"maxFailuresPerUser": 5, "maxFailuresPerClient": 50},
    });
    if let (Some(ldap), Some(overrides)) = (ldap.as_object_mut(), overrides.as_object()) {
        for (key, value) in overrides {
            if value.is_null() {
                ldap.remove(key);
            } else {
                ldap.insert(key.clone(), value.clone());
            }
        }
    }
    let env = Env::start_with(pki, &format!("  ldap: {ldap}\n")).await?;
    Ok((env, slapd))
}

/// One login through curl (HTTP/2 over TLS): (status, body, time taken).
async fn login(env: &Env, user: &str, password: &str) -> anyhow::Result<(u16, String, Duration)> {
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "15", "--cacert"])
        .arg(env.pki.ca_path())
        .args(["-u", &format!("{user}:{password}"), &url])
        .args(["-w", "\n%{http_code}"])
        .kill_on_drop(true);
    let started = Instant::now();
    let out = cmd.output().await.context("running curl")?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let code: u16 = code.trim().parse().unwrap_or(0);
    if code == 0 {
        anyhow::bail!(
            "no HTTP answer for {user:?} after {took:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((code, body.to_owned(), took))
}

/// Whether an answer shows the proxy authenticated `user` (dave and bob
/// may not list pods: 403 naming them still proves the login).
fn authenticated_as(code: u16, body: &str, user: &str) -> bool {
    code == 200 || (code == 403 && body.contains(&format!(r#"User \"{user}\""#)))
}

/// An HTTP/2 connection to authproxy whose streams the test can cancel one
/// by one (dropping a response future resets its stream).
async fn h2_connection(env: &Env) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let config = authproxy_tests::pki::client_config(env.pki.ca_pem(), &[b"h2"])?;
    let addr = env.proxy.as_ref().context("proxy running")?.addr();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(send)
}

/// Starts a login on the HTTP/2 connection; aborting the task resets the stream.
fn h2_login(
    env: &Env,
    send: &SendRequest<Empty<Bytes>>,
    user: &str,
    password: &str,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<u16>>> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let request = http::Request::get(format!(
        "{}/api/v1/namespaces/default/pods",
        env.proxy_url()
    ))
    .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
    .body(Empty::new())?;
    let mut send = send.clone();
    Ok(tokio::spawn(async move {
        send.ready().await?;
        Ok(send.send_request(request).await?.status().as_u16())
    }))
}

/// Sends a login on the HTTP/2 connection to a paused slapd and returns once
/// its search waits, unread, in slapd's socket (so it holds its throttle
/// slots); a login refused before that is sent again, within a bound.
async fn login_reaching_slapd(
    env: &Env,
    slapd: &Slapd,
    send: &SendRequest<Empty<Bytes>>,
    user: &str,
    password: &str,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<u16>>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::from("nothing");
    loop {
        let before = slapd.unread_bytes()?;
        let mut task = h2_login(env, send, user, password)?;
        loop {
            if slapd.unread_bytes()? > before {
                return Ok(task);
            }
            if task.is_finished() {
                last = format!("answered {:?}", (&mut task).await?);
                break;
            }
            if Instant::now() > deadline {
                task.abort();
                anyhow::bail!("{user}'s login never reached slapd within 15s; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_http2_logins_release_their_throttle_slots() -> anyhow::Result<()> {
    // One pooled connection, so every search waits on the paused slapd
    // (rather than failing fast while opening a second connection).
    let (env, slapd) = world(json!({
        "poolSize": 1,
        "operationTimeout": "60s",
        "throttle": {"maxFailuresPerUser": 3, "maxFailuresPerClient": 6},
    }))
    .await?;
    let (code, body, _) = login(&env, "dave", "dave-password").await?;
    assert!(
        authenticated_as(code, &body, "dave"),
        "warming the pool: {body}"
    );
    slapd.pause().await?;
    let send = h2_connection(&env).await?;
    // Six wrong guesses wait for slapd: both users' and the client's budgets
    // are in use, and a seventh login is refused at once.
    let mut guesses = Vec::new();
    for i in 0..3 {
        for user in ["alice", "bob"] {
            let guess = format!("guess-{i}");
            guesses.push(login_reaching_slapd(&env, &slapd, &send, user, &guess).await?);
        }
    }
    let probe = h2_login(&env, &send, "carol", "probe")?;
    let code = tokio::time::timeout(Duration::from_secs(10), probe).await???;
    assert_eq!(code, 429, "the six waiting logins do not hold their slots");
    // Reset their streams; the connection stays open.
    for guess in &guesses {
        assert!(!guess.is_finished(), "a guess did not wait for slapd");
        guess.abort();
    }
    // Every slot comes back: three logins per user reach slapd again (with
    // the right password, so they are harmless if they complete).
    let mut logins = Vec::new();
    for (user, password) in [("alice", "alice-password"), ("bob", "bob-password")] {
        for _ in 0..3 {
            let login = login_reaching_slapd(&env, &slapd, &send, user, password).await;
            logins.push((user, login.context("slots of cancelled logins were kept")?));
        }
    }
    assert!(
        !send.is_closed(),
        "only streams were reset, not the connection"
    );
    slapd.resume().await?;
    for (user, login) in logins {
        let code = tokio::time::timeout(Duration::from_secs(15), login).await???;
        assert!(
            code == 200 || (user == "bob" && code == 403),
            "{user}: {code}"
        );
    }
    assert_eq!(
        (slapd.binds_for(ALICE_DN)?, slapd.binds_for(BOB_DN)?),
        (3, 3),
        "a cancelled guess reached a bind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_directory_answers_503_within_the_operation_timeout_and_the_next_login_succeeds(
) -> anyhow::Result<()> {
    let (env, slapd) = world(json!({"operationTimeout": "1s", "connectTimeout": "1s"})).await?;
    let (code, body, _) = login(&env, "dave", "dave-password").await?;
    assert!(
        authenticated_as(code, &body, "dave"),
        "warming the pool: {body}"
    );
    slapd.pause().await?;
    // Every login meets an operation on a pooled connection or on a new one;
    // each must end within connect + operation timeouts (generous bound).
    for user in ["alice", "bob", "carol", "alice"] {
        let (code, body, took) = login(&env, user, "some-password").await?;
        assert_eq!(code, 503, "{user}, answered after {took:?}: {body}");
        assert!(body.contains(r#""reason":"ServiceUnavailable""#), "{body}");
        assert!(
            took < Duration::from_secs(6),
            "{user}: answered after {took:?}"
        );
    }
    slapd.resume().await?;
    let (code, body, took) = login(&env, "carol", "carol-password").await?;
    assert_eq!(code, 200, "after SIGCONT ({took:?}): {body}");
    let seen = env
        .upstream_requests()
        .pop()
        .context("a request upstream")?;
    assert_eq!(seen.header_values("impersonate-user"), ["carol"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_one_name_and_other_names_of_one_entry_share_one_budget() -> anyhow::Result<()>
{
    let (env, slapd) = world(json!({
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(|(uid={username})(employeeNumber={username}))"},
        "throttle": {"maxFailuresPerUser": 3, "maxFailuresPerClient": 50},
    }))
    .await?;
    // slapd matches uid without regard to case and insignificant spaces.
    for user in [" bob", "bob  ", "BoB"] {
        let (code, body, _) = login(&env, user, "wrong").await?;
        assert_eq!(code, 401, "{user:?}: {body}");
    }
    let (code, body, _) = login(&env, "bob", "bob-password").await?;
    assert_eq!(code, 429, "bob had a fresh budget per spelling: {body}");
    assert_eq!(slapd.binds_for(BOB_DN)?, 3);
    // Two names of one entry (uid and employeeNumber) count against its DN.
    for user in ["alice", " Alice", "1001"] {
        let (code, body, _) = login(&env, user, "wrong").await?;
        assert_eq!(code, 401, "{user:?}: {body}");
    }
    let (code, body, _) = login(&env, "alice", "alice-password").await?;
    assert_eq!(code, 429, "the entry had a fresh budget per name: {body}");
    assert_eq!(slapd.binds_for(ALICE_DN)?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_clears_only_its_own_account_not_the_client_failures_of_other_names(
) -> anyhow::Result<()> {
    let (env, _slapd) = world(json!({
        "throttle": {"maxFailuresPerUser": 10, "maxFailuresPerClient": 4},
    }))
    .await?;
    for i in 0..3 {
        let (code, body, _) = login(&env, "bob", &format!("guess-{i}")).await?;
        assert_eq!(code, 401, "{body}");
    }
    let (code, body, _) = login(&env, "alice", "alice-password").await?;
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = login(&env, "carol", "guess").await?;
    assert_eq!(code, 401, "{body}");
    // four failures from this client: blocked, whatever name comes next
    let (code, body, _) = login(&env, "carol", "carol-password").await?;
    assert_eq!(
        code, 429,
        "alice's success wiped the client's failures: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_user_names_are_refused_before_any_search_and_spend_no_budget(
) -> anyhow::Result<()> {
    let (env, slapd) = world(json!({
        "throttle": {"maxFailuresPerUser": 5, "maxFailuresPerClient": 5},
    }))
    .await?;
    for i in 0..10 {
        // over the default limit of 256 bytes
        let user = format!("overlong{i}{}", "x".repeat(300));
        let (code, body, _) = login(&env, &user, "guess").await?;
        assert_eq!(code, 401, "{body}");
        assert!(body.contains(r#""reason":"Unauthorized""#), "{body}");
    }
    assert_eq!(
        slapd.log_lines_containing("overlong")?,
        0,
        "an overlong user name reached slapd"
    );
    // A name at the limit is searched as usual.
    let at_limit = format!("atlimit{}", "y".repeat(249));
    assert_eq!(at_limit.len(), 256);
    let (code, body, _) = login(&env, &at_limit, "guess").await?;
    assert_eq!(code, 401, "{body}");
    assert_eq!(slapd.log_lines_containing(&at_limit)?, 1, "searched once");
    // The refused names did not use the client's budget.
    let (code, body, _) = login(&env, "alice", "alice-password").await?;
    assert_eq!(code, 200, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_groups_are_only_those_under_the_configured_base_dn() -> anyhow::Result<()> {
    // seeAlso is a DN-valued attribute every person may hold: it stands in
    // for memberOf, which slapd fills only through an overlay.
    let (env, slapd) = world(json!({
        "groupSearch": null,
        "memberOfAttribute": "seeAlso",
        "memberOfBaseDN": "ou=groups,dc=example,dc=org",
    }))
    .await?;
    slapd
        .add(
            "dn: uid=frank,ou=people,dc=example,dc=org\n\
             objectClass: inetOrgPerson\n\
             uid: frank\ncn: Frank\nsn: Fischer\nuserPassword: frank-password\n\
             seeAlso: cn=devs,ou=groups,dc=example,dc=org\n\
             seeAlso: CN=ops, OU=Groups, DC=example, DC=org\n\
             seeAlso: cn=admins,ou=roles,dc=example,dc=org\n\
             seeAlso: cn=root,ou=groups,dc=example,dc=org,dc=elsewhere\n\
             seeAlso: uid=alice,ou=people,dc=example,dc=org\n",
        )
        .await?;
    let (code, body, _) = login(&env, "frank", "frank-password").await?;
    assert_eq!(code, 200, "{body}");
    let seen = env
        .upstream_requests()
        .pop()
        .context("a request upstream")?;
    assert_eq!(seen.header_values("impersonate-user"), ["frank"]);
    assert_eq!(seen.header_values("impersonate-group"), ["devs", "ops"]);
    Ok(())
}
