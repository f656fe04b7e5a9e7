//! The `authproxy` binary as a user runs it: `demo` and `check-config`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run scripts/test.sh, which installs it"
    );
}

/// Runs `authproxy demo`, then every curl and kubectl command it prints,
/// exactly as printed, through a shell.
#[test]
fn demo_prints_commands_that_show_the_impersonated_identity_and_a_401() {
    require("curl");
    require("kubectl");
    let child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start authproxy demo");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut commands = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("demo printed its instructions within 30s");
        if line.contains("Press Ctrl-C") {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("curl ") || trimmed.starts_with("kubectl ") {
            commands.push(trimmed.to_owned());
        }
    }
    assert!(
        commands.len() >= 5,
        "too few commands printed: {commands:?}"
    );
    let run = |command: &str| {
        let out = Command::new("sh")
            .args(["-c", command])
            .env_remove("KUBECONFIG")
            .output()
            .expect("sh");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let whoami = run(&commands[0]);
    assert!(whoami.contains(r#""username":"alice""#), "{whoami}");
    assert!(whoami.contains(r#""devs""#), "{whoami}");
    let smuggled = run(&commands[1]);
    assert!(
        smuggled.contains(r#""code":403"#)
            && smuggled.contains("impersonation through this proxy is not allowed")
            && !smuggled.contains("system:masters"),
        "{smuggled}"
    );
    let alice = run(commands
        .iter()
        .find(|c| c.contains("--context alice"))
        .expect("alice command"));
    assert!(alice.contains("web-0"), "{alice}");
    let bob = run(commands
        .iter()
        .find(|c| c.contains("--context bob"))
        .expect("bob command"));
    assert!(
        bob.contains(r#"User "bob" cannot list resource "pods""#),
        "{bob}"
    );
    let bad = run(commands
        .iter()
        .find(|c| c.contains("wrong-token") && c.starts_with("curl"))
        .expect("bad token command"));
    assert!(
        bad.contains(r#""reason":"Unauthorized""#) && bad.contains(r#""code":401"#),
        "{bad}"
    );

    // Stopped as a user stops it, the demo exits cleanly and removes the
    // folder with its keys and tokens.
    let kubeconfig = commands
        .iter()
        .flat_map(|c| c.split_whitespace())
        .find(|word| word.ends_with("/kubeconfig"))
        .expect("a command names the kubeconfig");
    let dir = std::path::Path::new(kubeconfig.trim_matches('\''))
        .parent()
        .expect("kubeconfig folder")
        .to_owned();
    assert!(dir.join("tokens.csv").is_file(), "{}", dir.display());
    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "demo still running 15s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn check_config_accepts_the_example_file() {
    // As shipped: the placeholder files beside it are what it names.
    // This checkout's: cargo (and scripts/suite.sh) run a test in its
    // package's folder, while `env!("CARGO_MANIFEST_DIR")` names the checkout
    // the test was built in, which a kept build folder may no longer hold.
    let example = std::env::current_dir()
        .expect("the working folder")
        .join("example/authproxy.yaml");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(example)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn check_config_names_the_file_and_every_bad_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "tls: {certFile: nope.crt, keyFile: nope.key}\nupstream: {url: 'http://plain'}\nauthentication:\n  staticTokens: {file: missing.csv}\n").expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "bad.yaml",
        "tls.certFile",
        "tls.keyFile",
        "upstream.url",
        "authentication.staticTokens.file",
    ] {
        assert!(stderr.contains(needle), "{needle} missing in:\n{stderr}");
    }
    std::fs::write(
        &path,
        "tls: {certFile: a, keyFile: b}\nauthentication: {}\nupstream: {urll: x}\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("upstream.urll") && stderr.contains("bad.yaml"),
        "{stderr}"
    );
}

#[test]
fn bad_token_file_line_is_reported_without_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("tokens.csv"),
        "ok-token,alice,1\nverysecrettoken,bob\n",
    )
    .expect("write");
    write_serving_pair(dir.path());
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "tls: {certFile: tls.crt, keyFile: tls.key}\nupstream: {url: 'https://127.0.0.1:6443'}\nauthentication: {staticTokens: {file: tokens.csv}}\n").expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 2") && stderr.contains("tokens.csv"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("verysecrettoken"),
        "a token leaked into an error: {stderr}"
    );
}

/// Writes `tls.crt` and `tls.key` in `dir`: a serving certificate and its key.
fn write_serving_pair(dir: &std::path::Path) {
    let served = authproxy::pki::ThrowawayCa::new("cli test CA")
        .expect("ca")
        .issue_server("proxy")
        .expect("issue");
    std::fs::write(dir.join("tls.crt"), served.cert_pem).expect("write");
    std::fs::write(dir.join("tls.key"), served.key_pem).expect("write");
}

fn minimal_config(dir: &std::path::Path, authentication: &str) -> std::path::PathBuf {
    write_serving_pair(dir);
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        format!("tls: {{certFile: tls.crt, keyFile: tls.key}}\nupstream: {{url: 'https://127.0.0.1:6443'}}\nauthentication:\n{authentication}\n"),
    )
    .expect("write");
    path
}

#[test]
fn oidc_flags_are_accepted_with_kube_names_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = minimal_config(dir.path(), "  clientCertificates: false");
    let ok = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .args([
            "--oidc-issuer-url",
            "https://idp.example",
            "--oidc-client-id",
            "kubernetes",
            "--oidc-username-claim",
            "email",
        ])
        .args([
            "--oidc-groups-claim",
            "groups",
            "--oidc-groups-prefix",
            "oidc:",
            "--oidc-required-claim",
            "hd=example.com",
        ])
        .args(["--oidc-signing-algs", "RS256,ES256"])
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let hs = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .args([
            "--oidc-issuer-url",
            "https://idp.example",
            "--oidc-client-id",
            "k",
            "--oidc-signing-algs",
            "HS256",
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&hs.stderr);
    assert!(
        !hs.status.success() && stderr.contains("signingAlgorithms[0]") && stderr.contains("HS256"),
        "{stderr}"
    );
    let no_client = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .args(["--oidc-issuer-url", "https://idp"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&no_client.stderr).contains("--oidc-client-id"));
}

#[test]
fn kube_authentication_configuration_file_is_read_and_bad_cel_is_refused_by_field_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = dir.path().join("auth-config.yaml");
    for (version, mapping, refusal) in [
        ("v1beta1", "username: {claim: email, prefix: ''}", None),
        (
            "v1",
            "username: {claim: sub, prefix: 'oidc:'}\n    groups: {claim: groups, prefix: ''}",
            None,
        ),
        (
            "v1",
            "username: {expression: 'claims.email_verified ? claims.email : \"\"'}\n    groups: {expression: 'claims.roles.split(\",\").map(g, \"oidc:\" + g)'}",
            None,
        ),
        (
            "v1",
            "username: {claim: sub, prefix: ''}\n    groups: {expression: 'claims.groups.map(g, \"oidc:\" + g)'}",
            Some(("groups", "cannot be range of a comprehension")),
        ),
        (
            "v1",
            "username: {expression: 'claims.email'}",
            Some(("username", "claims.email_verified must be used")),
        ),
        (
            "v1",
            "username: {expression: 'claims.sub +'}",
            Some(("username", "compilation failed")),
        ),
    ] {
        let expect_ok = refusal.is_none();
        std::fs::write(
            &kube,
            format!("apiVersion: apiserver.config.k8s.io/{version}\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: https://idp.example\n    audiences: [kubernetes]\n  claimMappings:\n    {mapping}\n"),
        )
        .expect("write");
        let path = minimal_config(dir.path(), "  authenticationConfigFile: auth-config.yaml");
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{version} {mapping}: {stderr}"
        );
        if let Some((field, words)) = refusal {
            assert!(
                stderr.contains(&format!("jwt[0].claimMappings.{field}.expression"))
                    && stderr.contains(words),
                "{stderr}"
            );
            assert!(stderr.contains("auth-config.yaml"), "{stderr}");
        }
    }
}

/// Runs `authproxy serve` with debug logs, sends good, bad and JWT-shaped
/// tokens and a Basic password, and checks that none of them reached a log line.
#[test]
fn secrets_never_reach_a_log_line() {
    require("curl");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = authproxy::pki::ThrowawayCa::new("log test CA").expect("ca");
    let serving = ca.issue_server("localhost").expect("cert");
    std::fs::write(dir.path().join("ca.crt"), ca.ca_pem()).expect("write");
    std::fs::write(dir.path().join("tls.crt"), &serving.cert_pem).expect("write");
    std::fs::write(dir.path().join("tls.key"), &serving.key_pem).expect("write");
    std::fs::write(
        dir.path().join("tokens.csv"),
        "good-secret-token-1234,alice,1,\"devs\"\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("proxy-token"), "proxy-secret-token-5678").expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ntls: {{certFile: tls.crt, keyFile: tls.key}}\nupstream: {{url: 'https://127.0.0.1:1', caFile: ca.crt, tokenFile: proxy-token, connectTimeout: 1s}}\n\
             authentication:\n  staticTokens: {{file: tokens.csv}}\n  jwt:\n  - issuer: {{url: 'https://127.0.0.1:2', audiences: [k]}}\n    claimMappings: {{username: {{claim: sub, prefix: ''}}}}\n\
             logging: {{format: json, level: debug}}\n"
        ),
    )
    .expect("write");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    let mut child = KillOnDrop(child);
    let url = format!("https://127.0.0.1:{port}/api/v1/namespaces/default/pods");
    let ca_path = dir.path().join("ca.crt");
    let curl = |header: &str| {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&ca_path)
            .args(["-H", header, &url])
            .output()
            .expect("curl")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl("X-Probe: 1").stdout.is_empty() {
        assert!(
            Instant::now() < deadline,
            "authproxy did not answer within 20s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // header.payload.signature with iss of the configured issuer
    let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6Imsxc2VjcmV0In0.eyJpc3MiOiJodHRwczovLzEyNy4wLjAuMToyIiwic3ViIjoiand0LXNlY3JldC1wYXlsb2FkIn0.c2lnbmF0dXJlLXNlY3JldA";
    for header in [
        "Authorization: Bearer good-secret-token-1234".to_string(),
        "Authorization: Bearer bad-secret-token-9999".to_string(),
        format!("Authorization: Bearer {jwt}"),
        "Authorization: Basic YWxpY2U6cGFzc3dvcmQtc2VjcmV0LTQyNDI=".to_string(), // alice:password-secret-4242
    ] {
        let out = curl(&header);
        assert!(!out.stdout.is_empty(), "no answer for {header}");
    }
    let _ = child.0.kill();
    let output = child.0.wait_with_output_ref();
    for secret in [
        "good-secret-token-1234",
        "bad-secret-token-9999",
        "proxy-secret-token-5678",
        jwt,
        "c2lnbmF0dXJlLXNlY3JldA",
        "password-secret-4242",
        "YWxpY2U6cGFzc3dvcmQtc2VjcmV0LTQyNDI=",
    ] {
        assert!(
            !output.contains(secret),
            "a secret reached the logs: {secret}\n{output}"
        );
    }
    assert!(
        output.contains("authentication failed") || output.contains("no authenticator accepted"),
        "expected authentication log lines:\n{output}"
    );
}

/// `authproxy serve` says in one line what it serves (version, address,
/// upstreams, authenticators), and writes no colour codes when its output is
/// not a terminal.
#[test]
fn serve_names_what_it_serves_in_one_plain_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = authproxy::pki::ThrowawayCa::new("log test CA").expect("ca");
    let serving = ca.issue_server("localhost").expect("cert");
    std::fs::write(dir.path().join("ca.crt"), ca.ca_pem()).expect("write");
    std::fs::write(dir.path().join("tls.crt"), &serving.cert_pem).expect("write");
    std::fs::write(dir.path().join("tls.key"), &serving.key_pem).expect("write");
    std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"devs\"\n").expect("write");
    std::fs::write(dir.path().join("proxy-token"), "proxy-token").expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ntls: {{certFile: tls.crt, keyFile: tls.key}}\nupstream: {{url: 'https://127.0.0.1:1', caFile: ca.crt, tokenFile: proxy-token, connectTimeout: 1s}}\n\
             authentication:\n  staticTokens: {{file: tokens.csv}}\n\
             logging: {{format: text, level: info}}\n"
        ),
    )
    .expect("write");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    let mut child = KillOnDrop(child);
    // The start line is read as it comes: a busy machine may let the
    // listener open well before the line is written.
    let stderr = child.0.stderr.take().expect("stderr");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut output = String::new();
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(next) => {
                output.push_str(&next);
                output.push('\n');
                if next.contains("authproxy starting") {
                    break next;
                }
            }
            Err(_) => panic!("no start line within 20s:\n{output}"),
        }
    };
    assert!(
        wait_for_listener(port, deadline),
        "authproxy did not listen within 20s"
    );
    let _ = child.0.kill();
    let _ = child.0.wait();
    // The rest of what it wrote, up to its exit (the reader ends with it).
    for next in seen.iter() {
        output.push_str(&next);
        output.push('\n');
    }
    assert!(
        !output.contains('\x1b'),
        "colour codes in plain output:\n{output}"
    );
    for part in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        format!("listen=127.0.0.1:{port}"),
        "upstreams=https://127.0.0.1:1".to_owned(),
        "authenticators=static-tokens".to_owned(),
    ] {
        assert!(line.contains(&part), "{part} missing from: {line}");
    }
}

/// Whether something listens on `port` before `deadline`.
fn wait_for_listener(port: u16, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        let _ = self.wait();
        text
    }
}
