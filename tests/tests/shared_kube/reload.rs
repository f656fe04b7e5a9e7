//! Live reload against the real kube-apiserver: a rotated serving
//! certificate is presented to new handshakes while an open watch goes on; an
//! issuer added to the config file is trusted without a restart and a broken
//! file leaves the old config serving (and is counted); the LDAP bind
//! password, the upstream CA and (through the built binary) SIGHUP.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use authproxy_tests::kube::{unique_marker, KubeEnv as Env};
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::slapd::{Slapd, SERVICE_DN, SERVICE_PASSWORD};
use authproxy_tests::watchers::H2Clients;
use authproxy_tests::{authproxy_binary, curl_with_ca, pki, start_proxy, wait_for, TestPki};
use http_body_util::BodyExt as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// Writes `text` to `path` whole (a rename), as a Secret volume update does.
fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn status_with(env: &Env, auth: &[&str]) -> anyhow::Result<u16> {
    let url = format!("{}/api/v1/namespaces/default/pods", env.proxy_url());
    let mut args: Vec<&str> = auth.to_vec();
    args.push(&url);
    Ok(env.curl(&args).await?.0)
}

async fn status_as(env: &Env, token: &str) -> anyhow::Result<u16> {
    status_with(env, &["-H", &format!("Authorization: Bearer {token}")]).await
}

async fn wait_status(env: &Env, token: &str, want: u16, what: &str) -> anyhow::Result<()> {
    wait_for(WAIT, what, || async move {
        match status_as(env, token).await {
            Ok(code) if code == want => Ok(Some(())),
            Ok(code) => Err(format!("HTTP {code}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// The end-entity certificate a fresh handshake with `addr` is shown.
async fn presented_cert(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> anyhow::Result<CertificateDer<'static>> {
    let config = pki::client_config(ca_pem, &[b"h2"])?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    let (_, connection) = tls.get_ref();
    let certs = connection
        .peer_certificates()
        .ok_or_else(|| anyhow::anyhow!("no certificate presented"))?;
    Ok(certs[0].clone().into_owned())
}

fn first_cert(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
}

/// The proxy in front of kube re-reading its files every 100 ms, and the
/// address of its metrics listener.
async fn reloading_env(pki: TestPki) -> anyhow::Result<(Env, std::net::SocketAddr)> {
    let env = Env::start_with(
        pki,
        "reloadInterval: 100ms\nmetrics: {listen: '127.0.0.1:0'}",
    )
    .await?;
    let metrics = env
        .proxy
        .as_ref()
        .and_then(|p| p.metrics_addr())
        .context("no metrics listener")?;
    Ok((env, metrics))
}

/// Waits until the failed reloads of the authentication config counted at
/// the metrics listener `addr` reach `count`.
async fn wait_reload_failures(addr: std::net::SocketAddr, count: f64) -> anyhow::Result<()> {
    let failure = "authproxy_config_reloads_total{file=\"authentication\",result=\"failure\"}";
    wait_for(WAIT, "the failed reload counted", || async move {
        match metric(addr, failure).await {
            Ok(Some(n)) if n >= count => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn metric(addr: std::net::SocketAddr, series: &str) -> anyhow::Result<Option<f64>> {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_serving_cert_is_presented_to_new_handshakes_while_a_watch_goes_on(
) -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let env = Env::start_with(pki, "reloadInterval: 100ms").await?;
    let addr = env.proxy.as_ref().expect("proxy").addr();
    let old_pem = std::fs::read_to_string(env.pki.dir().join("proxy.crt"))?;
    assert_eq!(
        presented_cert(addr, env.pki.ca_pem()).await?,
        first_cert(&old_pem)?
    );

    let marker = unique_marker("rotate");
    let clients = H2Clients::connect_to(addr, env.pki.ca_pem(), 1).await?;
    let path =
        format!("/api/v1/namespaces/default/configmaps?watch=true&labelSelector=marker%3D{marker}");
    let mut watch = clients.get(&path, "alice-token").await?;
    anyhow::ensure!(watch.status() == 200, "watch: {}", watch.status());

    // cert-manager writes a new pair into the same files.
    let new = env.pki.issue_server("proxy-rotated")?;
    replace_file(&env.pki.dir().join("proxy.key"), &new.key_pem)?;
    replace_file(&env.pki.dir().join("proxy.crt"), &new.cert_pem)?;
    let want = first_cert(&new.cert_pem)?;
    let ca = env.pki.ca_pem().to_owned();
    wait_for(WAIT, "the new certificate on a new handshake", || {
        let (want, ca) = (want.clone(), ca.clone());
        async move {
            match presented_cert(addr, &ca).await {
                Ok(cert) if cert == want => Ok(Some(())),
                Ok(_) => Err("still the old certificate".into()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await?;

    // The watch opened before the rotation still delivers events.
    let name = format!("cm-{marker}");
    env.kube.create_configmap(&name, &marker).await?;
    let event = tokio::time::timeout(WAIT, async {
        loop {
            let frame = watch.body_mut().frame().await;
            match frame {
                Some(Ok(frame)) => {
                    let data = frame.into_data().unwrap_or_default();
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if text.contains(&name) {
                        return Ok(text);
                    }
                }
                Some(Err(e)) => return Err(anyhow::anyhow!("watch failed: {e}")),
                None => return Err(anyhow::anyhow!("watch ended")),
            }
        }
    })
    .await??;
    assert!(event.contains("ADDED"), "{event}");
    // And requests on the old connection go on being served.
    let again = clients
        .get("/api/v1/namespaces/default/pods", "alice-token")
        .await?;
    assert_eq!(again.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_issuer_is_trusted_without_restart_and_a_broken_file_keeps_the_old_config(
) -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let key_dir = tempfile::tempdir()?;
    let keys = vec![generate_key(key_dir.path(), "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(&pki, &keys).await?;
    let jwt = json!([{
        "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}},
    }]);
    let (env, metrics) = reloading_env(pki).await?;
    let config_path = env.dir.path().join("authproxy.yaml");
    let token = idp.id_token("kubernetes", "alice").await?;
    assert_eq!(status_as(&env, &token).await?, 401);

    // Add the issuer.
    let started = std::fs::read_to_string(&config_path)?;
    let with_issuer = started.replace(
        "  clientCertificates: true\n",
        &format!("  clientCertificates: true\n  jwt: {jwt}\n"),
    );
    anyhow::ensure!(with_issuer != started, "config layout changed: {started}");
    replace_file(&config_path, &with_issuer)?;
    wait_status(&env, &token, 200, "the new issuer's token accepted").await?;
    let success = "authproxy_config_reloads_total{file=\"authentication\",result=\"success\"}";
    assert_eq!(metric(metrics, success).await?, Some(1.0));

    // Break the file: the old config serves on, the failure is counted once.
    replace_file(
        &config_path,
        &with_issuer.replace(
            "  clientCertificates: true\n",
            "  clientCertificates: true\n  bogusField: 1\n",
        ),
    )?;
    let failure = "authproxy_config_reloads_total{file=\"authentication\",result=\"failure\"}";
    wait_reload_failures(metrics, 1.0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(metrics, failure).await?, Some(1.0));
    assert_eq!(status_as(&env, &token).await?, 200);
    assert_eq!(status_as(&env, "alice-token").await?, 200);

    // Removing the issuer again takes its tokens away.
    replace_file(&config_path, &started)?;
    wait_status(&env, &token, 401, "the removed issuer's token refused").await?;
    assert_eq!(metric(metrics, success).await?, Some(2.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_ldap_bind_password_file_is_used_without_restart() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let slapd = Slapd::start(&pki).await?;
    let password_file = pki.dir().join("bind-password");
    std::fs::write(&password_file, "not-the-password\n")?;
    let ldap = json!({
        "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
        "caFile": pki.ca_path(),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": password_file,
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org", "filter": "(uid={username})", "usernameAttribute": "uid"},
        "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org", "filter": "(member={dn})", "nameAttribute": "cn"},
        "connectTimeout": "2s",
        "operationTimeout": "2s",
    });
    let env = Env::start_with(pki, &format!("  ldap: {ldap}\nreloadInterval: 100ms")).await?;
    let alice = ["-u", "alice:alice-password"];
    assert_eq!(status_with(&env, &alice).await?, 503);
    replace_file(&password_file, &format!("{SERVICE_PASSWORD}\n"))?;
    wait_for(WAIT, "LDAP login with the new bind password", || async {
        match status_with(&env, &alice).await {
            Ok(200) => Ok(Some(())),
            Ok(code) => Err(format!("HTTP {code}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_upstream_ca_is_used_for_new_connections() -> anyhow::Result<()> {
    let kube =
        tokio::task::spawn_blocking(|| authproxy_tests::kube::kube().map_err(|e| e.to_string()))
            .await?
            .map_err(anyhow::Error::msg)?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    // Starts trusting a CA that did not sign kube-apiserver's certificate.
    let upstream_ca = dir.path().join("upstream-ca.crt");
    std::fs::write(&upstream_ca, TestPki::new()?.ca_pem())?;
    let proxy = start_proxy(
        &pki,
        dir.path(),
        &kube.url(),
        &upstream_ca,
        kube.proxy_token(),
        "reloadInterval: 100ms",
    )
    .await?;
    let url = format!("https://{}/api/v1/namespaces/default/pods", proxy.addr());
    let get = || {
        let (url, ca) = (url.clone(), pki.ca_path().to_owned());
        async move {
            curl_with_ca(&ca, &["-H", "Authorization: Bearer alice-token", &url])
                .await
                .map(|(code, _)| code)
        }
    };
    let refused = get().await?;
    assert!(
        matches!(refused, 502 | 503),
        "HTTP {refused} with the wrong CA"
    );
    // A CA file without a certificate is refused; the next good one is taken.
    replace_file(&upstream_ca, "not a certificate\n")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get().await?, refused);
    replace_file(
        &upstream_ca,
        &std::fs::read_to_string(kube.pki().ca_path())?,
    )?;
    wait_for(WAIT, "kube-apiserver verified with the new CA", || async {
        match get().await {
            Ok(200) => Ok(Some(())),
            Ok(code) => Err(format!("HTTP {code}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_binary_read_its_files_at_once() -> anyhow::Result<()> {
    let kube =
        tokio::task::spawn_blocking(|| authproxy_tests::kube::kube().map_err(|e| e.to_string()))
            .await?
            .map_err(anyhow::Error::msg)?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let cert = pki.issue_server("proxy")?;
    std::fs::write(
        dir.path().join("tokens.csv"),
        "alice-token,alice,1001,\"devs\"\n",
    )?;
    std::fs::write(dir.path().join("proxy-token"), kube.proxy_token())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Intervals of an hour: only SIGHUP can make it read the files.
    let config = format!(
        "listen: 127.0.0.1:{port}\ntls: {{certFile: {}, keyFile: {}}}\n\
         upstream: {{url: '{}', caFile: {}, tokenFile: proxy-token}}\n\
         authentication:\n  staticTokens: {{file: tokens.csv, reloadInterval: 1h}}\n\
         reloadInterval: 1h\nshutdownTimeout: 1s\n",
        cert.cert_path.display(),
        cert.key_path.display(),
        kube.url(),
        kube.pki().ca_path().display(),
    );
    let config_path = dir.path().join("authproxy.yaml");
    std::fs::write(&config_path, config)?;
    let mut child = tokio::process::Command::new(authproxy_binary()?)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("https://127.0.0.1:{port}");
    let get = |token: &'static str| {
        let (base, ca) = (base.clone(), pki.ca_path().to_owned());
        async move {
            curl_with_ca(
                &ca,
                &[
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    &format!("{base}/api/v1/namespaces/default/pods"),
                ],
            )
            .await
            .map(|(code, _)| code)
        }
    };
    wait_for(WAIT, "authproxy serving", || async {
        match get("alice-token").await {
            Ok(200) => Ok(Some(())),
            Ok(code) => Err(format!("HTTP {code}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    std::fs::write(
        dir.path().join("tokens.csv"),
        "alice-token,alice,1001,\"devs\"\ncarol-token,carol,1003,\"devs\"\n",
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get("carol-token").await?, 401, "read before SIGHUP");
    let pid = child.id().expect("running").to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    wait_for(WAIT, "the new token after SIGHUP", || async {
        match get("carol-token").await {
            Ok(200) => Ok(Some(())),
            Ok(code) => Err(format!("HTTP {code}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    assert!(child.try_wait()?.is_none(), "SIGHUP stopped the proxy");
    let _ = child.start_kill();
    Ok(())
}

/// A refused reload converges once what refused it is there: a config that
/// names a file created a moment later (a ConfigMap landing before its
/// Secret) is taken when the file appears, without touching the config again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_naming_a_file_that_appears_later_is_taken_when_it_appears() -> anyhow::Result<()>
{
    let (env, metrics) = reloading_env(TestPki::new()?).await?;
    let config_path = env.dir.path().join("authproxy.yaml");
    let started = std::fs::read_to_string(&config_path)?;
    let naming_later = started.replace("file: tokens.csv", "file: later.csv");
    anyhow::ensure!(naming_later != started, "config layout changed: {started}");
    replace_file(&config_path, &naming_later)?;
    let failure = "authproxy_config_reloads_total{file=\"authentication\",result=\"failure\"}";
    wait_reload_failures(metrics, 1.0).await?;
    assert_eq!(
        status_as(&env, "alice-token").await?,
        200,
        "the old config serves on"
    );
    // The file it names appears; the config file is not touched again.
    replace_file(
        &env.dir.path().join("later.csv"),
        "later-token,zed,5,\"devs\"\n",
    )?;
    wait_status(&env, "later-token", 200, "the new config taken").await?;
    assert_eq!(status_as(&env, "alice-token").await?, 401);
    assert_eq!(
        metric(metrics, failure).await?,
        Some(1.0),
        "refused once, counted once"
    );
    Ok(())
}

/// The watch follows the `authenticationConfigFile` the proxy started with:
/// a config that names another one is refused whole (nothing else it
/// changes is taken either), and taken again once it names the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_naming_another_authentication_config_file_is_refused_whole() -> anyhow::Result<()>
{
    let kube_dir = tempfile::tempdir()?;
    let kube_config =
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt: []\n";
    let (first, second) = (
        kube_dir.path().join("a.yaml"),
        kube_dir.path().join("b.yaml"),
    );
    std::fs::write(&first, kube_config)?;
    std::fs::write(&second, kube_config)?;
    let env = Env::start_with(
        TestPki::new()?,
        &format!(
            "  authenticationConfigFile: {}\nreloadInterval: 100ms\nmetrics: {{listen: '127.0.0.1:0'}}",
            first.display()
        ),
    )
    .await?;
    let metrics = env
        .proxy
        .as_ref()
        .and_then(|p| p.metrics_addr())
        .context("no metrics listener")?;
    let config_path = env.dir.path().join("authproxy.yaml");
    let started = std::fs::read_to_string(&config_path)?;
    std::fs::write(
        env.dir.path().join("later.csv"),
        "later-token,zed,5,\"devs\"\n",
    )?;
    let with_new_tokens = started.replace("file: tokens.csv", "file: later.csv");
    anyhow::ensure!(
        with_new_tokens != started,
        "config layout changed: {started}"
    );
    let moved =
        with_new_tokens.replace(&first.display().to_string(), &second.display().to_string());
    replace_file(&config_path, &moved)?;
    wait_reload_failures(metrics, 1.0).await?;
    assert_eq!(
        status_as(&env, "later-token").await?,
        401,
        "nothing of the refused config is taken"
    );
    assert_eq!(status_as(&env, "alice-token").await?, 200);
    // Naming the first file again, the rest of the change is taken.
    replace_file(&config_path, &with_new_tokens)?;
    wait_status(&env, "later-token", 200, "the config naming the first file").await?;
    assert_eq!(status_as(&env, "alice-token").await?, 401);
    Ok(())
}
