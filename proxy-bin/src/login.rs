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
    is_fresh_exec_credential(&text, SystemTime::now()).then_some(text)
}

/// Whether `text`, the content of a `login ldap` cache file, is an
/// `ExecCredential` whose `status.expirationTimestamp` is still comfortably
/// ahead of `now`. Anything unreadable is not fresh.
pub fn is_fresh_exec_credential(text: &str, now: SystemTime) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let Some(stamp) = value["status"]["expirationTimestamp"].as_str() else {
        return false;
    };
    humantime::parse_rfc3339(stamp).is_ok_and(|expires| expires > now + EXPIRY_MARGIN)
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

type HttpsClient<B> =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, B>;

fn https_client<B>(ca_file: Option<&Path>) -> anyhow::Result<HttpsClient<B>>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn request_token(
    server: &str,
    ca_file: Option<&Path>,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let client: HttpsClient<Empty<Bytes>> = https_client(ca_file)?;
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

/// `authproxy kubeconfig`: a kubeconfig whose user runs `authproxy` with
/// `login_args` (e.g. `login ldap --server …`) as an exec credential plugin.
pub fn kubeconfig(
    server: &str,
    ca_file: Option<&Path>,
    name: &str,
    binary: &Path,
    login_args: &[String],
) -> anyhow::Result<String> {
    let ca = match ca_file {
        Some(path) => format!(
            "    certificate-authority: {}\n",
            std::fs::canonicalize(path)?.display()
        ),
        None => String::new(),
    };
    let args: String = login_args
        .iter()
        .map(|a| format!("      - {}\n", serde_json::Value::String(a.clone())))
        .collect();
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n{ca}users:\n- name: {name}\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      args:\n{args}      interactiveMode: IfAvailable\n      provideClusterInfo: false\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\n",
        binary.display()
    ))
}

/// What `login oidc` keeps between runs (mode 0600).
#[derive(serde::Serialize, serde::Deserialize)]
struct OidcCache {
    id_token: String,
    refresh_token: Option<String>,
}

fn jwt_expiry(id_token: &str) -> Option<SystemTime> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// The ID token kept in `text`, the content of a `login oidc` cache file,
/// with its expiry, when it is still comfortably valid at `now`. The token
/// is read without verification (the IdP and the proxy verify it).
pub fn usable_cached_id_token(text: &str, now: SystemTime) -> Option<(String, SystemTime)> {
    let cache: OidcCache = serde_json::from_str(text).ok()?;
    let expires = jwt_expiry(&cache.id_token).filter(|e| *e > now + EXPIRY_MARGIN)?;
    Some((cache.id_token, expires))
}

/// A client.authentication.k8s.io/v1 `ExecCredential` holding `token`.
pub fn exec_credential(token: &str, expires: SystemTime) -> String {
    serde_json::json!({
        "kind": "ExecCredential",
        "apiVersion": "client.authentication.k8s.io/v1",
        "spec": {"interactive": false},
        "status": {"token": token, "expirationTimestamp": humantime::format_rfc3339_seconds(expires).to_string()},
    })
    .to_string()
}

struct Oidc {
    client: HttpsClient<http_body_util::Full<Bytes>>,
    client_id: String,
    token_endpoint: String,
    authorization_endpoint: String,
    device_endpoint: Option<String>,
}

impl Oidc {
    async fn send(
        &self,
        request: http::Request<http_body_util::Full<Bytes>>,
    ) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .context("the IdP did not answer in 30s")??;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    async fn post_form(
        &self,
        url: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
        let body = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let request = http::Request::post(url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))?;
        self.send(request).await
    }

    fn tokens(answer: &serde_json::Value) -> Option<OidcCache> {
        Some(OidcCache {
            id_token: answer["id_token"].as_str()?.to_owned(),
            refresh_token: answer["refresh_token"].as_str().map(str::to_owned),
        })
    }

    async fn refresh(&self, refresh_token: &str) -> Option<OidcCache> {
        let (status, answer) = self
            .post_form(
                &self.token_endpoint,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", &self.client_id),
                ],
            )
            .await
            .ok()?;
        if !status.is_success() {
            return None;
        }
        let mut tokens = Self::tokens(&answer)?;
        tokens.refresh_token = tokens
            .refresh_token
            .or_else(|| Some(refresh_token.to_owned()));
        Some(tokens)
    }

    /// The device-authorization flow: show a code, poll until it is approved.
    async fn device(&self, scopes: &str) -> anyhow::Result<OidcCache> {
        let endpoint = self
            .device_endpoint
            .as_deref()
            .context("the IdP has no device_authorization_endpoint")?;
        let (status, start) = self
            .post_form(
                endpoint,
                &[("client_id", &self.client_id), ("scope", scopes)],
            )
            .await?;
        if !status.is_success() {
            bail!("device authorization refused: {start}");
        }
        let device_code = start["device_code"].as_str().context("no device_code")?;
        let uri = start["verification_uri_complete"]
            .as_str()
            .or(start["verification_uri"].as_str())
            .context("no verification_uri")?;
        eprintln!("To sign in, open {uri}");
        eprintln!(
            "and confirm the code {}",
            start["user_code"].as_str().unwrap_or("?")
        );
        let mut interval = Duration::from_secs(start["interval"].as_u64().unwrap_or(5).max(1));
        // The IdP's number, bounded so that no answer can overflow the clock.
        let expires_in = start["expires_in"].as_u64().unwrap_or(600).min(86_400);
        let deadline = std::time::Instant::now() + Duration::from_secs(expires_in);
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(interval).await;
            let (status, answer) = self
                .post_form(
                    &self.token_endpoint,
                    &[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                        ("device_code", device_code),
                        ("client_id", &self.client_id),
                    ],
                )
                .await?;
            if status.is_success() {
                return Self::tokens(&answer).context("the token answer has no id_token");
            }
            match answer["error"].as_str() {
                Some("authorization_pending") => {}
                Some("slow_down") => interval += Duration::from_secs(5),
                _ => bail!("device login failed: {answer}"),
            }
        }
        bail!("the device code expired before it was confirmed")
    }

    /// Authorization code + PKCE with a loopback redirect.
    async fn browser(&self, scopes: &str) -> anyhow::Result<OidcCache> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut random = [0u8; 32];
        let _ = rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut random);
        let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        let state =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&Sha256::digest(random)[..12]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let redirect = format!(
            "http://127.0.0.1:{}/callback",
            listener.local_addr()?.port()
        );
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let url = format!(
            "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&code_challenge={challenge}&code_challenge_method=S256&state={state}",
            self.authorization_endpoint,
            enc(&self.client_id),
            enc(&redirect),
            enc(scopes)
        );
        eprintln!("To sign in, open {url}");
        if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some() {
            let _ = std::process::Command::new("xdg-open")
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(300), listener.accept())
            .await
            .context("no sign-in within 5 minutes")??;
        let mut head = vec![0u8; 8192];
        let n = stream.read(&mut head).await?;
        let line = String::from_utf8_lossy(&head[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let query = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.split_once('?'))
            .map(|(_, q)| q.to_owned())
            .unwrap_or_default();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
        };
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nSigned in. You can close this window.\n").await;
        if param("state").as_deref() != Some(state.as_str()) {
            bail!("the sign-in answer does not match this login (state)");
        }
        let code = param("code")
            .with_context(|| format!("sign-in failed: {}", param("error").unwrap_or_default()))?;
        let (status, answer) = self
            .post_form(
                &self.token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &redirect),
                    ("client_id", &self.client_id),
                    ("code_verifier", &verifier),
                ],
            )
            .await?;
        if !status.is_success() {
            bail!("code exchange refused: {answer}");
        }
        Self::tokens(&answer).context("the token answer has no id_token")
    }
}

/// `authproxy login oidc`: prints an ExecCredential holding an ID token.
pub async fn login_oidc(
    issuer: &str,
    client_id: &str,
    ca_file: Option<&Path>,
    device: bool,
    scopes: &str,
) -> anyhow::Result<String> {
    let key: String = Sha256::digest(format!("{issuer}\n{client_id}"))
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = cache_dir()?.join(format!("oidc-{key}.json"));
    let text = std::fs::read_to_string(&path).ok();
    if let Some((id_token, exp)) = text
        .as_deref()
        .and_then(|t| usable_cached_id_token(t, SystemTime::now()))
    {
        return Ok(exec_credential(&id_token, exp));
    }
    let cached: Option<OidcCache> = text.and_then(|t| serde_json::from_str(&t).ok());
    let client: HttpsClient<http_body_util::Full<Bytes>> = https_client(ca_file)?;
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let request =
        http::Request::get(discovery_url.as_str()).body(http_body_util::Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .context("the IdP did not answer in 30s")??;
    let body = response.into_body().collect().await?.to_bytes();
    let discovery: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("{discovery_url} is not a discovery document"))?;
    let text = |k: &str| discovery[k].as_str().map(str::to_owned);
    let oidc = Oidc {
        client,
        client_id: client_id.to_owned(),
        token_endpoint: text("token_endpoint").context("no token_endpoint")?,
        authorization_endpoint: text("authorization_endpoint")
            .context("no authorization_endpoint")?,
        device_endpoint: text("device_authorization_endpoint"),
    };
    let mut tokens = None;
    if let Some(refresh) = cached.as_ref().and_then(|c| c.refresh_token.as_deref()) {
        tokens = oidc.refresh(refresh).await;
    }
    let tokens = match tokens {
        Some(tokens) => tokens,
        None if device => oidc.device(scopes).await?,
        None => oidc.browser(scopes).await?,
    };
    let exp = jwt_expiry(&tokens.id_token).context("the ID token has no exp")?;
    store(&path, &serde_json::to_string(&tokens)?)?;
    Ok(exec_credential(&tokens.id_token, exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_token(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn a_cached_id_token_with_an_exp_beyond_the_clock_is_not_used() {
        let now = SystemTime::now();
        let far = serde_json::json!({"id_token": id_token(r#"{"exp":18446744073709551615}"#)});
        assert_eq!(usable_cached_id_token(&far.to_string(), now), None);
        let valid = id_token(r#"{"exp":4102444800}"#);
        let cache = serde_json::json!({"id_token": valid, "refresh_token": "r"});
        let (token, expires) = usable_cached_id_token(&cache.to_string(), now).unwrap();
        assert_eq!((token.as_str(), expires > now), (valid.as_str(), true));
        let expired = serde_json::json!({"id_token": id_token(r#"{"exp":1}"#)});
        assert_eq!(usable_cached_id_token(&expired.to_string(), now), None);
    }

    #[test]
    fn a_cached_exec_credential_is_fresh_only_before_its_expiry() {
        let now = SystemTime::now();
        let at = |stamp: &str| {
            serde_json::json!({"status": {"token": "t", "expirationTimestamp": stamp}}).to_string()
        };
        assert!(is_fresh_exec_credential(&at("2099-01-01T00:00:00Z"), now));
        assert!(!is_fresh_exec_credential(&at("2001-01-01T00:00:00Z"), now));
        assert!(!is_fresh_exec_credential(&at("99999-01-01T00:00:00Z"), now));
        assert!(!is_fresh_exec_credential("{", now));
    }
}
