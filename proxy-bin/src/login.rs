//! `authproxy login` and `authproxy kubeconfig`: getting credentials into
//! kubectl as an exec credential plugin (client.authentication.k8s.io/v1).
//!
//! `login ldap` exchanges a username and password (from the environment, or
//! a prompt on the terminal) for a token the proxy issues, prints it as an
//! `ExecCredential`, and keeps it in the user's cache directory (mode 0600)
//! until it expires, so kubectl does not send a password on every call and
//! the directory sees one login, not one per command. An expired cached
//! token is never printed: a new one is obtained instead.
//!
//! Secrets on the way: the password prompt does not echo on a terminal, the
//! password is zeroed in memory after use, and cache files are written
//! through a fresh private temporary file that is renamed into place.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreResponseMode,
    CoreResponseType, CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, CsrfToken, DeviceAuthorizationUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, ProviderMetadata, RedirectUrl, RefreshToken, Scope,
    TokenResponse,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

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

/// Reads a cache file without following a symlink planted in its place.
fn read_private(path: &Path) -> Option<String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let mut text = String::new();
    options.open(path).ok()?.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The still-valid cached ExecCredential, if any.
fn cached(path: &Path) -> Option<String> {
    let text = read_private(path)?;
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

/// Writes `text` to `path` as a private file, atomically: through a fresh
/// temporary file in the same folder (created exclusively, mode 0600, never
/// through a symlink) that is then renamed over `path`. A symlink or file
/// planted at a predictable name cannot redirect or read the secret, and a
/// reader never sees half a file. The folder is created with mode 0700.
fn store(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no folder")?;
    private_dir(dir)?;
    let name = path
        .file_name()
        .context("cache path has no file name")?
        .to_string_lossy();
    let mut random = [0u8; 12];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut random)
        .map_err(|_| anyhow::anyhow!("no random numbers for a temporary file name"))?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(error).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// An exclusive lock on a cache file, held until dropped (`None`: the
/// file system takes no locks, and the run goes on without one).
struct CacheLock {
    _file: Option<std::fs::File>,
}

/// The longest one run waits for another's sign-in: a browser sign-in's
/// own limit ([`SIGN_IN_WAIT`]) and a margin.
const LOCK_WAIT: Duration = Duration::from_secs(330);

/// Waits for, then takes, the lock of the cache file `path` (a private
/// `.lock` file beside it). kubectl runs the plugin once per command, often
/// several at once: only the holder spends a refresh token (providers that
/// rotate them revoke every token of the grant when one is used twice) or
/// asks for a sign-in; the others then find its result in the cache. A
/// waiting run says so on standard error, and gives up after
/// [`LOCK_WAIT`] naming the lock file. On a file system without locks
/// (some network home folders) it warns and goes on unlocked.
async fn lock_cache(path: &Path) -> anyhow::Result<CacheLock> {
    let dir = path.parent().context("cache path has no folder")?;
    private_dir(dir)?;
    let lock_path = path.with_extension("lock");
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = options
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(CacheLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(error)) => {
                eprintln!(
                    "warning: cannot lock {} ({error}); going on without it",
                    lock_path.display()
                );
                return Ok(CacheLock { _file: None });
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "another authproxy login has held {} for {}s; finish or stop it, then try again",
                lock_path.display(),
                LOCK_WAIT.as_secs()
            );
        }
        if !said {
            eprintln!(
                "waiting for another authproxy login to finish ({})",
                lock_path.display()
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `dir` (and its parents) with mode 0700 when missing.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Reads a line from the terminal (or standard input).
fn read_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line)
}

/// The user name from the environment, if it names one.
fn username_from_env() -> Option<String> {
    std::env::var(USERNAME_ENV).ok().filter(|u| !u.is_empty())
}

/// Where `login ldap` remembers who last logged in to `server` (a name, no
/// secret), so a fresh cached token is found without asking anything.
fn last_user_file(server: &str) -> anyhow::Result<PathBuf> {
    let key: String = Sha256::digest(server)
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(cache_dir()?.join(format!("ldap-{key}.user")))
}

fn credentials() -> anyhow::Result<(String, Zeroizing<String>)> {
    let username = match username_from_env() {
        Some(u) => u,
        None => {
            eprint!("Username: ");
            read_line()?.trim().to_owned()
        }
    };
    let password = match std::env::var(PASSWORD_ENV) {
        Ok(p) => Zeroizing::new(p),
        Err(_) => crate::prompt::password("Password: ").context("reading the password")?,
    };
    if username.is_empty() || password.is_empty() {
        bail!("a username and a password are required");
    }
    Ok((username, password))
}

type HttpsClient<B> =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, B>;

/// A CA bundle that verifies a server: read from a file, or carried in the
/// kubeconfig itself (`authproxy kubeconfig --embed-certs` writes it as
/// base64, so the file works on any machine).
#[derive(Debug, Clone)]
pub struct CaBundle {
    pem: Vec<u8>,
    label: String,
}

impl CaBundle {
    /// The bundle in the PEM file `path`.
    pub fn from_file(path: &Path) -> anyhow::Result<CaBundle> {
        Ok(CaBundle {
            pem: proxy_core::tls::read_file(path)?,
            label: path.display().to_string(),
        })
    }

    /// The bundle given as base64 of its PEM text (`--ca-data`).
    pub fn from_base64(text: &str) -> anyhow::Result<CaBundle> {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .context("--ca-data is not base64")?;
        Ok(CaBundle {
            pem,
            label: "--ca-data".into(),
        })
    }

    /// The bundle from a file or base64 text, when either is given.
    pub fn from_args(file: Option<&Path>, data: Option<&str>) -> anyhow::Result<Option<CaBundle>> {
        match (file, data) {
            (Some(_), Some(_)) => bail!("give --ca-file or --ca-data, not both"),
            (Some(path), None) => Self::from_file(path).map(Some),
            (None, Some(data)) => Self::from_base64(data).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The PEM text.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

fn https_client<B>(ca: Option<&CaBundle>) -> anyhow::Result<HttpsClient<B>>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let roots = match ca {
        Some(ca) => proxy_core::tls::root_store(&ca.pem, &ca.label)?,
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
    ca: Option<&CaBundle>,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let client: HttpsClient<Empty<Bytes>> = https_client(ca)?;
    let pair = Zeroizing::new(format!("{username}:{password}"));
    let basic = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
    let request = http::Request::post(format!(
        "{}/authproxy/v1/token",
        server.trim_end_matches('/')
    ))
    .header(http::header::AUTHORIZATION, {
        let mut value = http::HeaderValue::from_str(&format!("Basic {}", basic.as_str()))?;
        value.set_sensitive(true);
        value
    })
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

/// The fresh cached ExecCredential of the user known for `server` (named in
/// the environment, or the last one who logged in there), if any.
fn cached_for_known_user(server: &str) -> anyhow::Result<Option<String>> {
    let known = username_from_env().or_else(|| {
        let path = last_user_file(server).ok()?;
        read_private(&path).map(|name| name.trim().to_owned())
    });
    match known.filter(|u| !u.is_empty()) {
        Some(user) => Ok(cached(&cache_file(server, &user)?)),
        None => Ok(None),
    }
}

/// `authproxy login ldap`: prints an ExecCredential for kubectl.
pub async fn login_ldap(server: &str, ca: Option<&CaBundle>) -> anyhow::Result<String> {
    // The cache first: nothing is asked while a token is fresh, so kubectl
    // works without a terminal until it expires.
    if let Some(text) = cached_for_known_user(server)? {
        return Ok(text);
    }
    // One run at a time asks for a password for this server; the others
    // wait, then find what it stored.
    let _lock = lock_cache(&last_user_file(server)?).await?;
    if let Some(text) = cached_for_known_user(server)? {
        return Ok(text);
    }
    let (username, password) = credentials()?;
    let path = cache_file(server, &username)?;
    let text = request_token(server, ca, &username, &password).await?;
    store(&path, &text)?;
    store(&last_user_file(server)?, &username)?;
    Ok(text)
}

/// The context name and URL of each of a proxy's named `clusters`:
/// `<name>-<cluster>` at `<server>/k8s/clusters/<cluster>`.
pub fn cluster_contexts(name: &str, server: &str, clusters: &[String]) -> Vec<(String, String)> {
    let base = server.trim_end_matches('/');
    clusters
        .iter()
        .map(|cluster| {
            (
                format!("{name}-{cluster}"),
                format!(
                    "{base}{}/{cluster}",
                    proxy_core::upstream::router::CLUSTER_PREFIX
                ),
            )
        })
        .collect()
}

/// A cluster entry of a kubeconfig: the name of its context, its URL and the
/// CA bundle of its certificate.
#[derive(Debug, Clone)]
pub struct KubeconfigCluster<'a> {
    /// Name of the cluster and of its context.
    pub name: &'a str,
    /// The server URL.
    pub server: &'a str,
    /// CA bundle of the server's certificate (made absolute).
    pub ca_file: Option<&'a Path>,
    /// The CA bundle itself (written as data; instead of `ca_file`).
    pub ca_pem: Option<&'a [u8]>,
}

/// A kubeconfig with one context per cluster, all sharing one user `user`
/// that runs `command login_args...` as a client.authentication.k8s.io/v1
/// exec credential plugin. The first cluster's context is the current one.
/// With `embed_certs`, each cluster's CA goes in as
/// `certificate-authority-data` (the file works on any machine); else as
/// the absolute path of its file.
///
/// Errors when a CA file cannot be read.
pub fn kubeconfig(
    clusters: &[KubeconfigCluster<'_>],
    user: &str,
    command: &str,
    login_args: &[String],
    embed_certs: bool,
) -> anyhow::Result<String> {
    // Every value is written as a double-quoted scalar (a JSON string is
    // one): a path with `#`, a name with `: ` or a leading `-` stays the
    // value it is, and cannot start a comment or another key.
    let q = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    let mut cluster_text = String::new();
    let mut context_text = String::new();
    for cluster in clusters {
        let ca = match (cluster.ca_pem, cluster.ca_file) {
            (Some(pem), _) => format!(
                "    certificate-authority-data: {}\n",
                q(&base64::engine::general_purpose::STANDARD.encode(pem))
            ),
            (None, Some(path)) if embed_certs => format!(
                "    certificate-authority-data: {}\n",
                q(&base64::engine::general_purpose::STANDARD.encode(
                    std::fs::read(path).with_context(|| format!("CA file {}", path.display()))?
                ))
            ),
            (None, Some(path)) => format!(
                "    certificate-authority: {}\n",
                q(&std::fs::canonicalize(path)
                    .with_context(|| format!("CA file {}", path.display()))?
                    .display()
                    .to_string())
            ),
            (None, None) => String::new(),
        };
        cluster_text.push_str(&format!(
            "- name: {}\n  cluster:\n    server: {}\n{ca}",
            q(cluster.name),
            q(cluster.server)
        ));
        context_text.push_str(&format!(
            "- name: {0}\n  context:\n    cluster: {0}\n    user: {1}\n",
            q(cluster.name),
            q(user)
        ));
    }
    let current = clusters.first().map(|c| c.name).unwrap_or(user);
    let args: String = login_args
        .iter()
        .map(|a| format!("      - {}\n", q(a)))
        .collect();
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{cluster_text}users:\n- name: {}\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      args:\n{args}      interactiveMode: IfAvailable\n      provideClusterInfo: false\ncontexts:\n{context_text}current-context: {}\n",
        q(user),
        q(command),
        q(current)
    ))
}

/// What `login oidc` keeps between runs (mode 0600); zeroed when dropped.
#[derive(serde::Serialize, serde::Deserialize)]
struct OidcCache {
    id_token: String,
    refresh_token: Option<String>,
}

impl Drop for OidcCache {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.id_token.zeroize();
        self.refresh_token.zeroize();
    }
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
    Some((cache.id_token.clone(), expires))
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

/// The discovery document with the one field beyond OpenID Connect Discovery
/// that `login oidc --device` needs.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
struct DeviceEndpoint {
    #[serde(default)]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A failed exchange with the IdP, as `openidconnect` wants it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

type HttpFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, HttpError>> + Send>>;

/// Largest answer read from the IdP.
const MAX_IDP_ANSWER: usize = 1 << 20;

/// `openidconnect`'s HTTP client over the proxy's rustls client: every
/// exchange bounded to 30 s and [`MAX_IDP_ANSWER`]; redirects are not
/// followed.
fn idp_http(client: HttpsClient<Full<Bytes>>) -> impl Fn(HttpRequest) -> HttpFuture {
    move |request: HttpRequest| {
        let client = client.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
                .await
                .map_err(|_| HttpError("the IdP did not answer in 30s".into()))?
                .map_err(|e| HttpError(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_IDP_ANSWER)
                .collect()
                .await
                .map_err(|e| HttpError(format!("reading the IdP's answer: {e}")))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        }) as HttpFuture
    }
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The scopes asked for besides `openid`, which is always asked.
fn extra_scopes(scopes: &str) -> Vec<Scope> {
    scopes
        .split_whitespace()
        .filter(|s| *s != "openid")
        .map(|s| Scope::new(s.to_owned()))
        .collect()
}

/// Keeps the tokens of `response` once its ID token is verified (signature
/// with the IdP's published keys, issuer, audience = our client, expiry,
/// and `nonce` when one was sent).
fn verified_tokens<D: openidconnect::EndpointState>(
    client: &CoreClient<
        EndpointSet,
        D,
        EndpointNotSet,
        EndpointNotSet,
        EndpointMaybeSet,
        EndpointMaybeSet,
    >,
    response: &CoreTokenResponse,
    nonce: Option<&Nonce>,
    previous_refresh: Option<&str>,
) -> anyhow::Result<OidcCache> {
    let id_token = response
        .id_token()
        .context("the token answer has no id_token")?;
    let verifier = client.id_token_verifier();
    let checked = match nonce {
        Some(nonce) => id_token.claims(&verifier, nonce).map(|_| ()),
        // Device and refresh grants carry no nonce of ours.
        None => id_token
            .claims(&verifier, |_: Option<&Nonce>| Ok(()))
            .map(|_| ()),
    };
    checked.map_err(|e| anyhow::anyhow!("the IdP's ID token does not verify: {}", chain(&e)))?;
    Ok(OidcCache {
        id_token: id_token.to_string(),
        refresh_token: response
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| previous_refresh.map(str::to_owned)),
    })
}

type IdpClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The refresh grant; `None` when it is refused or its ID token does not verify.
async fn refresh(
    client: &IdpClient,
    http: &impl Fn(HttpRequest) -> HttpFuture,
    refresh_token: &str,
) -> Option<OidcCache> {
    let response = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
        .ok()?
        .request_async(http)
        .await
        .ok()?;
    verified_tokens(client, &response, None, Some(refresh_token)).ok()
}

/// The device-authorization flow: show a code, poll until it is approved.
async fn device(
    client: &IdpClient,
    http: &impl Fn(HttpRequest) -> HttpFuture,
    endpoint: Option<DeviceAuthorizationUrl>,
    scopes: &str,
) -> anyhow::Result<OidcCache> {
    let endpoint = endpoint.context("the IdP has no device_authorization_endpoint")?;
    let client = client.clone().set_device_authorization_url(endpoint);
    let details: CoreDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(extra_scopes(scopes))
        .add_scope(Scope::new("openid".into()))
        .request_async(http)
        .await
        .map_err(|e| anyhow::anyhow!("device authorization refused: {}", chain(&e)))?;
    let uri = details
        .verification_uri_complete()
        .map(|u| u.secret().clone())
        .unwrap_or_else(|| details.verification_uri().to_string());
    eprintln!("To sign in, open {uri}");
    eprintln!("and confirm the code {}", details.user_code().secret());
    // The IdP's lifetime, bounded so that no answer can overflow the clock.
    let limit = details.expires_in().min(Duration::from_secs(86_400));
    let response = client
        .exchange_device_access_token(&details)
        .map_err(|e| anyhow::anyhow!("{}", chain(&e)))?
        .request_async(http, tokio::time::sleep, Some(limit))
        .await
        .map_err(|e| anyhow::anyhow!("device login failed: {}", chain(&e)))?;
    verified_tokens(&client, &response, None, None)
}

/// Authorization code + PKCE with a loopback redirect, `state` and `nonce`.
async fn browser(
    client: &IdpClient,
    http: &impl Fn(HttpRequest) -> HttpFuture,
    scopes: &str,
) -> anyhow::Result<OidcCache> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let redirect = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let client = client.clone().set_redirect_uri(RedirectUrl::new(redirect)?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scopes(extra_scopes(scopes))
        .set_pkce_challenge(challenge)
        .url();
    eprintln!("To sign in, open {url}");
    // The browser is given a page of ours (0600, in the 0700 cache folder)
    // that moves on to the sign-in URL: a command line is readable by every
    // local user, and the URL's state and PKCE challenge would let one of
    // them hand this login an authorization code of their own.
    let mut page = None;
    if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some() {
        if let Ok(path) = cache_dir().and_then(|dir| write_sign_in_page(&dir, url.as_str())) {
            let _ = std::process::Command::new("xdg-open")
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            page = Some(path);
        }
    }
    let query = loopback_callback(&listener, state.secret(), SIGN_IN_WAIT).await;
    if let Some(path) = page {
        let _ = std::fs::remove_file(path);
    }
    let query = query.context("no sign-in within 5 minutes")?;
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
    if param("state").as_deref() != Some(state.secret().as_str()) {
        bail!("the sign-in answer does not match this login (state)");
    }
    let code = param("code")
        .with_context(|| format!("sign-in failed: {}", param("error").unwrap_or_default()))?;
    let response = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| anyhow::anyhow!("{}", chain(&e)))?
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(|e| anyhow::anyhow!("code exchange refused: {}", chain(&e)))?;
    verified_tokens(&client, &response, Some(&nonce), None)
}

/// A page that sends the browser on to `url` at once.
fn sign_in_page(url: &str) -> String {
    let mut escaped = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    format!(
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={escaped}\">\
         <title>authproxy sign-in</title><a href=\"{escaped}\">Sign in</a>\n"
    )
}

/// Writes [`sign_in_page`] for `url` into `dir` (the cache folder),
/// readable by its owner only, and returns its path (which says nothing of
/// the URL).
fn write_sign_in_page(dir: &Path, url: &str) -> anyhow::Result<PathBuf> {
    let mut random = [0u8; 8];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut random)
        .map_err(|_| anyhow::anyhow!("no random numbers for a file name"))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("sign-in-{name}.html"));
    store(&path, &sign_in_page(url))?;
    Ok(path)
}

/// How long the browser sign-in may take.
const SIGN_IN_WAIT: Duration = Duration::from_secs(300);
/// Time a connection to the loopback redirect has to send its request head.
const CALLBACK_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read from a connection to the loopback redirect.
const CALLBACK_MAX_HEAD: usize = 8192;

/// Waits up to `wait` for the browser's redirect to `/callback` carrying
/// `state`, and returns its query string. Connections are read side by side,
/// each within [`CALLBACK_READ_TIMEOUT`]: one that sends nothing (a browser's
/// preconnect, a port scan) or something else is answered or dropped and the
/// wait goes on.
async fn loopback_callback(
    listener: &tokio::net::TcpListener,
    state: &str,
    wait: Duration,
) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut reading = tokio::task::JoinSet::new();
    let state_param = format!("state={state}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    reading.spawn(read_callback(stream));
                }
            }
            Some(done) = reading.join_next() => {
                let Ok(Some((mut stream, query))) = done else { continue };
                if query.split('&').any(|kv| kv == state_param) {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nSigned in. You can close this window.\n").await;
                    return Ok(query);
                }
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nNot the sign-in this login waits for.\n").await;
            }
            () = tokio::time::sleep_until(deadline) => bail!("no redirect within {wait:?}"),
        }
    }
}

/// Reads one request head (bounded in time and size); returns the stream and
/// the query of a `GET /callback?...`, or `None` for anything else.
async fn read_callback(
    mut stream: tokio::net::TcpStream,
) -> Option<(tokio::net::TcpStream, String)> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(CALLBACK_READ_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < CALLBACK_MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return None;
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    let mut words = line.split_whitespace();
    let (method, target) = (words.next()?, words.next()?);
    let query = target.strip_prefix("/callback?")?;
    (method == "GET").then(|| (stream, query.to_owned()))
}

/// `authproxy login oidc`: prints an ExecCredential holding an ID token.
pub async fn login_oidc(
    issuer: &str,
    client_id: &str,
    ca: Option<&CaBundle>,
    device: bool,
    scopes: &str,
) -> anyhow::Result<String> {
    let key: String = Sha256::digest(format!("{issuer}\n{client_id}"))
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = cache_dir()?.join(format!("oidc-{key}.json"));
    let fresh = |text: Option<&str>| {
        let (id_token, exp) = usable_cached_id_token(text?, SystemTime::now())?;
        Some(exec_credential(&id_token, exp))
    };
    if let Some(credential) = fresh(read_private(&path).as_deref()) {
        return Ok(credential);
    }
    let _lock = lock_cache(&path).await?;
    // Read again under the lock: another run may have refreshed meanwhile,
    // spending the refresh token this one read.
    let text = read_private(&path);
    if let Some(credential) = fresh(text.as_deref()) {
        return Ok(credential);
    }
    let cached: Option<OidcCache> = text.and_then(|t| serde_json::from_str(&t).ok());
    let http = idp_http(https_client(ca)?);
    let issuer_url = IssuerUrl::new(issuer.to_owned())
        .with_context(|| format!("--oidc-issuer {issuer} is not a URL"))?;
    // Discovery (the issuer in the document must be this one) and the keys
    // the ID token is verified with.
    let metadata = Metadata::discover_async(issuer_url, &http)
        .await
        .map_err(|e| anyhow::anyhow!("discovery at {issuer} failed: {}", chain(&e)))?;
    let device_endpoint = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone();
    let client: IdpClient =
        CoreClient::from_provider_metadata(metadata, ClientId::new(client_id.to_owned()), None);
    let mut tokens = None;
    if let Some(refresh_token) = cached.as_ref().and_then(|c| c.refresh_token.as_deref()) {
        tokens = refresh(&client, &http, refresh_token).await;
    }
    let tokens = match tokens {
        Some(tokens) => tokens,
        None if device => self::device(&client, &http, device_endpoint, scopes).await?,
        None => browser(&client, &http, scopes).await?,
    };
    let exp = jwt_expiry(&tokens.id_token).context("the ID token has no exp")?;
    store(&path, &serde_json::to_string(&tokens)?)?;
    Ok(exec_credential(&tokens.id_token, exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn cache_is_written_privately_and_never_through_a_planted_symlink() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("authproxy");
        std::fs::create_dir(&cache).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let path = cache.join("ldap-0123.json");
        // The names a writer might predict: `<name>.tmp` and the file itself.
        symlink(&victim, path.with_extension("tmp")).unwrap();
        store(&path, "first-secret").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first-secret");
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");

        std::fs::remove_file(&path).unwrap();
        symlink(&victim, &path).unwrap();
        store(&path, "second-secret").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(read_private(&path).as_deref(), Some("second-secret"));
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_cache_file_is_not_read() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, "{}").unwrap();
        let path = dir.path().join("oidc-x.json");
        symlink(&elsewhere, &path).unwrap();
        assert_eq!(read_private(&path), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_second_run_waits_for_the_lock_and_takes_it_when_it_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authproxy").join("oidc-x.json");
        let first = lock_cache(&path).await.unwrap();
        let second = tokio::spawn({
            let path = path.clone();
            async move { lock_cache(&path).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "took a lock another run holds");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("never took the lock let go")
            .unwrap()
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path.with_extension("lock"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_new_cache_folder_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("authproxy").join("f.json");
        store(&path, "x").unwrap();
        let parent = path.parent().unwrap();
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
}

#[cfg(test)]
mod callback_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn answer_of(mut stream: tokio::net::TcpStream, request: &str) -> String {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        answer
    }

    #[tokio::test]
    async fn a_silent_or_stray_connection_does_not_block_the_sign_in_redirect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting = tokio::spawn(async move {
            loopback_callback(&listener, "s1", Duration::from_secs(60)).await
        });
        let clients = async {
            // A preconnect that never sends anything, held open.
            let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
            let stray = tokio::net::TcpStream::connect(addr).await.unwrap();
            let stray = answer_of(stray, "GET /callback?code=x&state=other HTTP/1.1\r\n\r\n").await;
            assert!(stray.starts_with("HTTP/1.1 400"), "{stray}");
            let real = tokio::net::TcpStream::connect(addr).await.unwrap();
            let real = answer_of(
                real,
                "GET /callback?code=c0de&state=s1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            )
            .await;
            assert!(real.starts_with("HTTP/1.1 200"), "{real}");
            let query = waiting.await.unwrap().unwrap();
            drop(silent);
            query
        };
        let query = tokio::time::timeout(Duration::from_secs(5), clients)
            .await
            .expect("the redirect was not taken while a silent connection was open");
        assert_eq!(query, "code=c0de&state=s1");
    }

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

#[cfg(test)]
mod sign_in_page_tests {
    use super::*;

    #[test]
    fn the_sign_in_url_goes_to_a_private_page_not_a_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let url = "https://idp/auth?state=s3cr3t&code_challenge=abc&x=\"<y>'";
        let path = write_sign_in_page(&dir.path().join("authproxy"), url).unwrap();
        assert!(!path.display().to_string().contains("s3cr3t"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(
            page.contains("url=https://idp/auth?state=s3cr3t&amp;code_challenge=abc&amp;x=&quot;&lt;y&gt;&#39;\""),
            "{page}"
        );
        assert!(!page.contains("<y>"), "{page}");
    }
}

#[cfg(test)]
mod kubeconfig_tests {
    use super::*;

    #[test]
    fn every_value_stays_what_it_is_whatever_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca #1.crt");
        std::fs::write(&ca, "x").unwrap();
        let binary = "/opt/tools #2/authproxy: login";
        let clusters = [KubeconfigCluster {
            name: "lab: east",
            server: "https://proxy:8443/#x",
            ca_file: Some(&ca),
            ca_pem: None,
        }];
        let args = vec!["login".to_owned(), "--server".into(), "- x #y".into()];
        let text = kubeconfig(&clusters, "user: #me", binary, &args, false).unwrap();
        let parsed: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(parsed["clusters"][0]["name"], "lab: east", "{text}");
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "https://proxy:8443/#x"
        );
        assert!(parsed["clusters"][0]["cluster"]["certificate-authority"]
            .as_str()
            .unwrap()
            .ends_with("ca #1.crt"));
        assert_eq!(parsed["users"][0]["name"], "user: #me");
        let exec = &parsed["users"][0]["user"]["exec"];
        assert_eq!(exec["command"], "/opt/tools #2/authproxy: login", "{text}");
        assert_eq!(exec["args"][2], "- x #y");
        assert_eq!(parsed["contexts"][0]["context"]["user"], "user: #me");
        assert_eq!(parsed["current-context"], "lab: east");
        // Embedded, the CA is in the file, not a path of this machine.
        let text = kubeconfig(&clusters, "me", "authproxy", &args, true).unwrap();
        let parsed: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        let cluster = &parsed["clusters"][0]["cluster"];
        assert!(cluster.get("certificate-authority").is_none(), "{text}");
        assert_eq!(cluster["certificate-authority-data"], "eA==", "{text}");
        assert_eq!(parsed["users"][0]["user"]["exec"]["command"], "authproxy");
    }
}

/// The user whose login `authproxy login ldap` cached for `server` (named
/// in the environment, or the last one who logged in there).
fn known_user(server: &str) -> Option<String> {
    username_from_env()
        .or_else(|| {
            let path = last_user_file(server).ok()?;
            read_private(&path).map(|name| name.trim().to_owned())
        })
        .filter(|u| !u.is_empty())
}

/// The token of a cached `ExecCredential`, fresh or not.
fn token_of(text: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(text).ok()?["status"]["token"]
        .as_str()
        .map(str::to_owned)
}

/// Sends `ask` to the proxy's revocation endpoint, as `bearer` when given;
/// the proxy's message.
async fn post_revocation(
    server: &str,
    ca: Option<&CaBundle>,
    ask: &serde_json::Value,
    bearer: Option<&str>,
) -> anyhow::Result<String> {
    let client: HttpsClient<Full<Bytes>> = https_client(ca)?;
    let mut request = http::Request::post(format!(
        "{}{}",
        server.trim_end_matches('/'),
        crate::revocation::REVOCATIONS_PATH
    ))
    .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the credential holds characters a header cannot carry")?;
        value.set_sensitive(true);
        request = request.header(http::header::AUTHORIZATION, value);
    }
    let request = request.body(Full::new(Bytes::from(ask.to_string())))?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .context("the proxy did not answer in 30s")??;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.to_string());
    if !status.is_success() {
        bail!("revocation refused ({}): {message}", status.as_u16());
    }
    Ok(message)
}

/// `authproxy logout`: revokes the token `login ldap` cached for `server`
/// at the proxy and removes it from the cache. Says what it did.
pub async fn logout(server: &str, ca: Option<&CaBundle>) -> anyhow::Result<String> {
    let Some(user) = known_user(server) else {
        return Ok(format!("not logged in at {server}"));
    };
    let path = cache_file(server, &user)?;
    let _lock = lock_cache(&last_user_file(server)?).await?;
    let Some(token) = read_private(&path).as_deref().and_then(token_of) else {
        let _ = std::fs::remove_file(&path);
        return Ok(format!("{user} is not logged in at {server}"));
    };
    let token = Zeroizing::new(token);
    // A token past its `exp` (and the proxy's leeway) needs no revocation:
    // the proxy refuses it anyway.
    let alive =
        jwt_expiry(&token).is_none_or(|exp| exp + Duration::from_secs(10) > SystemTime::now());
    let said = if alive {
        match post_revocation(
            server,
            ca,
            &serde_json::json!({"token": token.as_str()}),
            None,
        )
        .await
        {
            Ok(said) => said,
            // A token from before sessions cannot be revoked alone: it is
            // forgotten here all the same, and the user is told.
            Err(error) if error.to_string().contains("(400)") => {
                eprintln!("warning: the token was not revoked ({error:#}); it is removed from the cache and stays valid until it expires");
                "removed from the cache".to_owned()
            }
            Err(error) => return Err(error),
        }
    } else {
        "the token had expired".to_owned()
    };
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    if let Ok(last) = last_user_file(server) {
        let _ = std::fs::remove_file(last);
    }
    Ok(format!("{user} logged out of {server}: {said}"))
}

/// What `authproxy tokens revoke` revokes.
#[derive(Clone)]
pub enum Revoke {
    /// The session of this issued token (no other credential needed).
    Token(Zeroizing<String>),
    /// One session by its ID.
    Session(String),
    /// Every token of a user issued until now.
    User(String),
    /// Every token issued until this RFC 3339 time.
    IssuedBefore(String),
}

impl std::fmt::Debug for Revoke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revoke::Token(_) => f.write_str("Token(<redacted>)"),
            Revoke::Session(s) => f.debug_tuple("Session").field(s).finish(),
            Revoke::User(u) => f.debug_tuple("User").field(u).finish(),
            Revoke::IssuedBefore(t) => f.debug_tuple("IssuedBefore").field(t).finish(),
        }
    }
}

/// `authproxy tokens revoke`: revokes `what` at the proxy, authenticated
/// with `bearer` or else the login `login ldap` cached for `server` (a
/// token's own session needs neither). The proxy's message.
pub async fn revoke(
    server: &str,
    ca: Option<&CaBundle>,
    what: Revoke,
    bearer: Option<Zeroizing<String>>,
) -> anyhow::Result<String> {
    let ask = match &what {
        Revoke::Token(token) => serde_json::json!({"token": token.as_str()}),
        Revoke::Session(session) => serde_json::json!({"session": session}),
        Revoke::User(user) => serde_json::json!({"user": user}),
        Revoke::IssuedBefore(at) => serde_json::json!({"issuedBefore": at}),
    };
    let bearer = match (&what, bearer) {
        (Revoke::Token(_), _) => None,
        (_, Some(bearer)) => Some(bearer),
        (_, None) => known_user(server)
            .and_then(|user| cache_file(server, &user).ok())
            .and_then(|path| cached(&path))
            .and_then(|text| token_of(&text))
            .map(Zeroizing::new),
    };
    if bearer.is_none() && !matches!(what, Revoke::Token(_)) {
        bail!("no credential: set AUTHPROXY_BEARER_TOKEN, give --bearer-token-file, or log in with `authproxy login ldap` first");
    }
    post_revocation(server, ca, &ask, bearer.as_deref().map(String::as_str)).await
}
