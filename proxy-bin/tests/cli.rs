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
        smuggled.contains(r#""username":"alice""#) && !smuggled.contains("system:masters"),
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
}

#[test]
fn check_config_accepts_the_example_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/authproxy.example.yaml");
    std::fs::copy(example, dir.path().join("authproxy.yaml")).expect("copy");
    for file in [
        "tls.crt",
        "tls.key",
        "client-ca.crt",
        "upstream-ca.crt",
        "proxy-token",
    ] {
        std::fs::write(dir.path().join(file), "x").expect("write");
    }
    std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"devs\"\n").expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(dir.path().join("authproxy.yaml"))
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
    for file in ["tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(file), "x").expect("write");
    }
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
