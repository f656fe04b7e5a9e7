//! `authproxy login` and `authproxy kubeconfig`: getting credentials into
//! kubectl as an exec credential plugin (client.authentication.k8s.io/v1).
//!
//! `login ldap` exchanges a username and password (from the environment, or
//! a prompt on the terminal) for a token the proxy issues, prints it as an
//! `ExecCredential`, and keeps it in the user's cache directory (mode 0600)
//! until it expires, so kubectl does not send a password on every call and
//! the directory sees one login, not one per command. An expired cached
//! token is never printed: a new one is obtained instead.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

/// Environment variables `login ldap` reads credentials from.
pub const USERNAME_ENV: &str = "AUTHPROXY_USERNAME";
/// See [`USERNAME_ENV`].
pub const PASSWORD_ENV: &str = "AUTHPROXY_PASSWORD";

/// Tokens closer than this to expiry are renewed instead of printed.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// Where cached credentials live: `$XDG_CACHE_HOME/authproxy` or `~/.cache/authproxy`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("authproxy"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("authproxy"))
}

fn cache_file(server: &str, username: &str) -> anyhow::Result<PathBuf> {
    let key: String = Sha256::digest(format!("{server}\n{username}"))
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(cache_dir()?.join(format!("ldap-{key}.json")))
}

/// The still-valid cached ExecCredential, if any.
fn cached(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let expires =
        humantime::parse_rfc3339(value["status"]["expirationTimestamp"].as_str()?).ok()?;
    (expires > SystemTime::now() + EXPIRY_MARGIN).then_some(text)
}

fn store(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn credentials() -> anyhow::Result<(String, String)> {
    let username = match std::env::var(USERNAME_ENV) {
        Ok(u) if !u.is_empty() => u,
        _ => {
            eprint!("Username: ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
    };
    let password = match std::env::var(PASSWORD_ENV) {
        Ok(p) => p,
        Err(_) => {
            eprint!("Password (input is shown; set {PASSWORD_ENV} to avoid the prompt): ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if username.is_empty() || password.is_empty() {
        bail!("a username and a password are required");
    }
    Ok((username, password))
}

async fn request_token(
    server: &str,
    ca_file: Option<&Path>,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let roots = match ca_file {
        Some(path) => proxy_core::tls::root_store(
            &proxy_core::tls::read_file(path)?,
            &path.display().to_string(),
        )?,
        None => proxy_core::tls::system_roots()?,
    };
    let tls = proxy_core::tls::client_config(roots, None, &[])?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let request = http::Request::post(format!(
        "{}/authproxy/v1/token",
        server.trim_end_matches('/')
    ))
    .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
    .body(Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .context("the proxy did not answer in 30s")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        bail!("login refused: {message}");
    }
    let text = String::from_utf8(body.to_vec()).context("answer is not UTF-8")?;
    let value: serde_json::Value = serde_json::from_str(&text).context("answer is not JSON")?;
    if value["kind"] != "ExecCredential" || value["status"]["token"].as_str().is_none() {
        bail!("the proxy did not answer with an ExecCredential");
    }
    Ok(text)
}

/// `authproxy login ldap`: prints an ExecCredential for kubectl.
pub async fn login_ldap(server: &str, ca_file: Option<&Path>) -> anyhow::Result<String> {
    let (username, password) = credentials()?;
    let path = cache_file(server, &username)?;
    if let Some(text) = cached(&path) {
        return Ok(text);
    }
    let text = request_token(server, ca_file, &username, &password).await?;
    store(&path, &text)?;
    Ok(text)
}

/// `authproxy kubeconfig`: a kubeconfig whose user runs `authproxy login ldap`.
pub fn kubeconfig(
    server: &str,
    ca_file: Option<&Path>,
    name: &str,
    binary: &Path,
) -> anyhow::Result<String> {
    let ca = match ca_file {
        Some(path) => format!(
            "    certificate-authority: {}\n",
            std::fs::canonicalize(path)?.display()
        ),
        None => String::new(),
    };
    let mut args = format!("      - login\n      - ldap\n      - --server\n      - {server}\n");
    if let Some(path) = ca_file {
        args.push_str(&format!(
            "      - --ca-file\n      - {}\n",
            std::fs::canonicalize(path)?.display()
        ));
    }
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n{ca}users:\n- name: {name}\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      args:\n{args}      interactiveMode: IfAvailable\n      provideClusterInfo: false\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\n",
        binary.display()
    ))
}
