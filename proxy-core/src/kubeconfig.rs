//! Just enough of kubeconfig to reach an API server the way kubectl does:
//! the context's cluster (server, CA, TLS server name) and user (token, token
//! file, client certificate). Paths are relative to the kubeconfig's folder.
//!
//! The `Debug` form of a [`Kubeconfig`] redacts every secret it holds (the
//! token, inline client keys), and those are zeroed in memory when dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use crate::credential::Secret;
use crate::tls;
use crate::upstream::{UpstreamCredential, UpstreamOptions};

/// A kubeconfig problem, naming the file and the entry.
#[derive(Debug, thiserror::Error)]
#[error("kubeconfig {path}: {message}")]
pub struct KubeconfigError {
    /// The kubeconfig file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Raw {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    current_context: String,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    /// Basic-auth password (never used to reach the API server, but it is a
    /// secret the file may hold, so it is redacted and zeroed like the rest).
    password: Option<String>,
    /// Basic-auth user name: refused, as kube-apiserver no longer takes it.
    username: Option<String>,
    /// An exec credential plugin: refused, the proxy runs no programs to
    /// get its credential.
    exec: Option<serde::de::IgnoredAny>,
    /// A legacy auth provider: refused like `exec`.
    auth_provider: Option<serde::de::IgnoredAny>,
}

/// `Some("[redacted]")` for a secret that is set, so Debug shows presence only.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "[redacted]")
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("client_certificate", &self.client_certificate)
            .field(
                "client_certificate_data",
                &self.client_certificate_data.as_ref().map(|_| "[set]"),
            )
            .field("client_key", &self.client_key)
            .field("client_key_data", &redacted(&self.client_key_data))
            .field("password", &redacted(&self.password))
            .field("username", &self.username)
            .field("exec", &self.exec.is_some())
            .field("auth_provider", &self.auth_provider.is_some())
            .finish()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.token.zeroize();
        self.client_key_data.zeroize();
        self.password.zeroize();
    }
}

#[derive(Debug, Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

/// A loaded kubeconfig.
#[derive(Debug)]
pub struct Kubeconfig {
    path: PathBuf,
    raw: Raw,
}

impl Kubeconfig {
    /// Reads and parses a kubeconfig file.
    pub fn load(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
        let err = |message: String| KubeconfigError {
            path: path.to_owned(),
            message,
        };
        let text = crate::reload::read_settled_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text, path)
    }

    /// Parses kubeconfig YAML as if read from `path` (relative file names in
    /// it are resolved against `path`'s folder when [`Kubeconfig::upstream`]
    /// reads them). Nothing is read here.
    pub fn parse(text: &str, path: &Path) -> Result<Kubeconfig, KubeconfigError> {
        let raw: Raw = serde_yaml_ng::from_str(text).map_err(|e| KubeconfigError {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Kubeconfig {
            path: path.to_owned(),
            raw,
        })
    }

    fn err(&self, message: impl Into<String>) -> KubeconfigError {
        KubeconfigError {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn file(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }

    fn data_or_file(
        &self,
        data: &Option<String>,
        file: &Option<PathBuf>,
        what: &str,
    ) -> Result<Option<Vec<u8>>, KubeconfigError> {
        if let Some(data) = data {
            return base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map(Some)
                .map_err(|_| self.err(format!("{what}-data is not base64")));
        }
        match file {
            Some(path) => tls::read_file(&self.file(path))
                .map(Some)
                .map_err(|e| self.err(e.to_string())),
            None => Ok(None),
        }
    }

    /// Client options for `context` (default: the current context).
    pub fn upstream(&self, context: Option<&str>) -> Result<UpstreamOptions, KubeconfigError> {
        let name = context.unwrap_or(&self.raw.current_context);
        if name.is_empty() {
            return Err(self.err("no context given and no current-context set"));
        }
        let ctx = self
            .raw
            .contexts
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| self.err(format!("context {name:?} not found")))?;
        let cluster = self
            .raw
            .clusters
            .iter()
            .find(|c| c.name == ctx.value.cluster)
            .ok_or_else(|| {
                self.err(format!(
                    "cluster {:?} of context {name:?} not found",
                    ctx.value.cluster
                ))
            })?;
        let default_user = User::default();
        let user = self
            .raw
            .users
            .iter()
            .find(|u| u.name == ctx.value.user)
            .map(|u| &u.value)
            .unwrap_or(&default_user);
        let who = &ctx.value.user;
        for (set, what) in [
            (user.exec.is_some(), "an exec credential plugin"),
            (user.auth_provider.is_some(), "an auth-provider"),
            (
                user.username.is_some() || user.password.is_some(),
                "a username and password",
            ),
        ] {
            if set {
                return Err(self.err(format!(
                    "user {who:?} of context {name:?} uses {what}, which the proxy does not \
                     use to reach the API server (it would go without a credential): give the \
                     user a token, tokenFile or client certificate"
                )));
            }
        }
        let c = &cluster.value;
        let url = c
            .server
            .parse::<http::Uri>()
            .ok()
            .filter(|uri| uri.scheme_str() == Some("https") && uri.host().is_some())
            // The server is not echoed: it may carry a password.
            .ok_or_else(|| {
                self.err(format!(
                    "cluster {:?}: server is not an https:// URL",
                    cluster.name
                ))
            })?;
        let ca_pem = self.data_or_file(
            &c.certificate_authority_data,
            &c.certificate_authority,
            "certificate-authority",
        )?;
        let cert = self.data_or_file(
            &user.client_certificate_data,
            &user.client_certificate,
            "client-certificate",
        )?;
        let key = self
            .data_or_file(&user.client_key_data, &user.client_key, "client-key")?
            .map(zeroize::Zeroizing::new);
        let client_identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((
                tls::parse_certs(&cert, "kubeconfig client-certificate")
                    .map_err(|e| self.err(e.to_string()))?,
                Arc::new(
                    tls::parse_key(&key, "kubeconfig client-key")
                        .map_err(|e| self.err(e.to_string()))?,
                ),
            )),
            (None, None) => None,
            _ => return Err(self.err("client-certificate and client-key go together")),
        };
        let credential = match (&user.token, &user.token_file) {
            (Some(token), _) => UpstreamCredential::StaticToken(Secret::new(token.clone())),
            (None, Some(file)) => UpstreamCredential::TokenFile {
                path: self.file(file),
                interval: crate::reload::DEFAULT_INTERVAL,
            },
            (None, None) => UpstreamCredential::None,
        };
        Ok(UpstreamOptions {
            url,
            ca_pem,
            client_identity,
            server_name: c.tls_server_name.clone(),
            credential,
            connect_timeout: crate::upstream::DEFAULT_CONNECT_TIMEOUT,
            pool: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_tokens_passwords_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            r#"
current-context: one
clusters:
- name: c1
  cluster: {server: "https://10.0.0.1:6443"}
users:
- name: u1
  user: {token: tok-SECRET-1, client-key-data: S0VZLVNFQ1JFVC0y, password: pw-SECRET-3}
contexts:
- name: one
  context: {cluster: c1, user: u1}
"#,
        )
        .unwrap();
        let kubeconfig = Kubeconfig::load(&path).unwrap();
        let debug = format!("{kubeconfig:?} {kubeconfig:#?}");
        for secret in ["tok-SECRET-1", "S0VZLVNFQ1JFVC0y", "pw-SECRET-3"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("[redacted]"), "{debug}");
        assert!(debug.contains("https://10.0.0.1:6443"), "{debug}");
    }

    #[test]
    fn context_cluster_and_user_are_resolved() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "abc").unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            r#"
apiVersion: v1
kind: Config
current-context: one
clusters:
- name: c1
  cluster: {server: "https://10.0.0.1:6443", tls-server-name: kubernetes}
users:
- name: u1
  user: {tokenFile: tok}
contexts:
- name: one
  context: {cluster: c1, user: u1}
"#,
        )
        .unwrap();
        let options = Kubeconfig::load(&path).unwrap().upstream(None).unwrap();
        assert_eq!(options.url.host(), Some("10.0.0.1"));
        assert_eq!(options.server_name.as_deref(), Some("kubernetes"));
        match options.credential {
            UpstreamCredential::TokenFile { path, .. } => assert_eq!(path, dir.path().join("tok")),
            other => panic!("{other:?}"),
        }
        let missing = Kubeconfig::load(&path)
            .unwrap()
            .upstream(Some("nope"))
            .unwrap_err();
        assert!(
            missing.to_string().contains("\"nope\" not found"),
            "{missing}"
        );
    }

    #[test]
    fn users_whose_credential_the_proxy_would_not_send_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        for (user, said) in [
            (
                "{exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}",
                "exec credential plugin",
            ),
            ("{auth-provider: {name: oidc}}", "auth-provider"),
            (
                "{username: admin, password: secret-pw}",
                "username and password",
            ),
        ] {
            let text = format!(
                "current-context: one\nclusters:\n- name: c1\n  cluster: {{server: \"https://10.0.0.1:6443\"}}\nusers:\n- name: u1\n  user: {user}\ncontexts:\n- name: one\n  context: {{cluster: c1, user: u1}}\n"
            );
            let error = Kubeconfig::parse(&text, &path)
                .unwrap()
                .upstream(None)
                .unwrap_err()
                .to_string();
            assert!(error.contains(said), "{user}: {error}");
            assert!(!error.contains("secret-pw"), "{error}");
        }
        let text = "current-context: one\nclusters:\n- name: c1\n  cluster: {server: \"http://admin:hunter2@10.0.0.1:8080\"}\nusers:\n- name: u1\n  user: {token: t}\ncontexts:\n- name: one\n  context: {cluster: c1, user: u1}\n";
        let error = Kubeconfig::parse(text, &path)
            .unwrap()
            .upstream(None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an https:// URL"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
