//! Configuration shared by library users and the `authproxy` binary: which
//! authenticators run, and how the API server is reached.
//!
//! Types deserialize from YAML/JSON with camelCase keys and refuse unknown
//! fields. [`AuthenticationConfig::validate`] and [`UpstreamConfig::validate`]
//! report every problem with its path (`upstream.caFile`), so one run of
//! `authproxy check-config` shows them all. Relative paths are resolved
//! against a base directory (the config file's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

#[cfg(feature = "issued-tokens")]
mod issued;
#[cfg(feature = "ldap")]
mod ldap;
#[cfg(feature = "oidc")]
mod oidc;
mod shared;

#[cfg(feature = "issued-tokens")]
pub use issued::{
    ExchangeLimits, IssuedTokensConfig, RevocationConfig, DEFAULT_EXCHANGES_PER_CLIENT_PER_MINUTE,
    DEFAULT_EXCHANGES_PER_USER_PER_MINUTE, DEFAULT_EXCHANGE_FROM, POD_NAMESPACE_FILE,
};
#[cfg(feature = "oidc")]
pub use oidc::KubeAuthenticationConfiguration;
pub use shared::{check_ca_file, check_cert_and_key, field_path, BuildError, Reloading};
use shared::{check_readable, resolve};

use crate::authn::cache::CacheSettings;
use crate::authn::{Authenticator, Chain, ClientCertificates, StaticTokens};
use crate::kubeconfig::Kubeconfig;
use crate::long_running;
use crate::tls;
use crate::upstream::{PoolSettings, UpstreamCredential, UpstreamOptions};

/// Where the in-cluster service-account files live.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

use crate::problem::problem;
pub use crate::problem::{positive_durations, NotBuilt, Problem};

/// What `authentication.jwt` lists: kube's `JwtAuthenticator`, or, in a
/// build without the `oidc` feature, [`NotBuilt`].
#[cfg(feature = "oidc")]
pub type JwtSection = crate::authn::oidc::JwtAuthenticator;
/// What `authentication.jwt` lists: kube's `JwtAuthenticator`, or, in a
/// build without the `oidc` feature, [`NotBuilt`].
#[cfg(not(feature = "oidc"))]
pub type JwtSection = NotBuilt;

/// `authentication.ldap`: [`crate::authn::ldap::LdapConfig`], or, in a build
/// without the `ldap` feature, [`NotBuilt`].
#[cfg(feature = "ldap")]
pub type LdapSection = crate::authn::ldap::LdapConfig;
/// `authentication.ldap`: `authn::ldap::LdapConfig`, or, in a build
/// without the `ldap` feature, [`NotBuilt`].
#[cfg(not(feature = "ldap"))]
pub type LdapSection = NotBuilt;

/// `authentication.issuedTokens`: [`IssuedTokensConfig`], or, in a build
/// without the `issued-tokens` feature, [`NotBuilt`].
#[cfg(feature = "issued-tokens")]
pub type IssuedTokensSection = IssuedTokensConfig;
/// `authentication.issuedTokens`: `IssuedTokensConfig`, or, in a build
/// without the `issued-tokens` feature, [`NotBuilt`].
#[cfg(not(feature = "issued-tokens"))]
pub type IssuedTokensSection = NotBuilt;

/// The running token issuer, or, in a build without the `issued-tokens`
/// feature, a type with no values (so there is never one).
#[cfg(feature = "issued-tokens")]
pub type Issuer = Arc<crate::authn::IssuedTokens>;
/// The running token issuer, or, in a build without the `issued-tokens`
/// feature, a type with no values (so there is never one).
#[cfg(not(feature = "issued-tokens"))]
pub type Issuer = std::convert::Infallible;

/// Which authenticators run, in this order: client certificates, static
/// tokens, OIDC issuers (behind a token cache).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthenticationConfig {
    /// Accept TLS client certificates verified by the listener (CN → user, O → groups).
    #[serde(default)]
    pub client_certificates: bool,
    /// Static bearer tokens from a kube `--token-auth-file` CSV.
    pub static_tokens: Option<StaticTokensConfig>,
    /// OIDC issuers, as the `jwt:` list of kube's `AuthenticationConfiguration`.
    #[serde(default)]
    pub jwt: Vec<JwtSection>,
    /// A kube `AuthenticationConfiguration` file whose `jwt:` entries are added.
    pub authentication_config_file: Option<PathBuf>,
    /// The cache in front of token authenticators.
    #[serde(default)]
    pub cache: CacheConfig,
    /// LDAP logins with `Authorization: Basic`.
    pub ldap: Option<LdapSection>,
    /// Tokens the proxy issues after a login (`POST /authproxy/v1/token`).
    pub issued_tokens: Option<IssuedTokensSection>,
}

/// Token cache settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheConfig {
    /// Longest a verified token is trusted without re-verification (default 2m;
    /// never past the token's own `exp`).
    #[serde(default, rename = "maxTTL", with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    /// How long a refused token stays refused without re-verification (default 10s).
    #[serde(default, rename = "negativeTTL", with = "humantime_serde")]
    pub negative_ttl: Option<Duration>,
    /// Most cached tokens (default 10000).
    pub capacity: Option<u64>,
}

/// Static token file settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticTokensConfig {
    /// The CSV file (`token,user,uid,"group1,group2"`).
    pub file: PathBuf,
    /// How often the file is re-read (default 1s).
    #[serde(default, with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}

impl AuthenticationConfig {
    /// Every problem in the section, `prefix` being its path.
    pub fn validate(&self, prefix: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(st) = &self.static_tokens {
            positive_durations(
                &mut problems,
                &format!("{prefix}.staticTokens"),
                &[("reloadInterval", st.reload_interval)],
            );
            let field = format!("{prefix}.staticTokens.file");
            let path = resolve(base, &st.file);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Err(e) = StaticTokens::from_csv(&text, &path.display().to_string()) {
                        problems.push(problem(field, e.to_string()));
                    }
                }
                Err(e) => problems.push(problem(
                    field,
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        problems.extend(self.not_built(prefix));
        #[cfg(feature = "issued-tokens")]
        if let Some(issued) = &self.issued_tokens {
            problems.extend(issued.problems(&format!("{prefix}.issuedTokens")));
            if let Err(e) = issued.load(prefix, base) {
                problems.push(problem(e.field, e.message));
            }
        }
        #[cfg(feature = "ldap")]
        if let Some(ldap) = &self.ldap {
            ldap::validate(ldap, &format!("{prefix}.ldap"), base, &mut problems);
        }
        #[cfg(feature = "oidc")]
        let issuers = match self.validate_jwt(prefix, base, &mut problems) {
            Ok(any) => any,
            Err(p) => {
                problems.push(p);
                true
            }
        };
        // A section refused above as not built still counts as configured.
        #[cfg(not(feature = "oidc"))]
        let issuers = !self.jwt.is_empty() || self.authentication_config_file.is_some();
        if !self.client_certificates
            && self.static_tokens.is_none()
            && self.ldap.is_none()
            && self.issued_tokens.is_none()
            && !issuers
        {
            problems.push(problem(prefix, "no authenticator is configured"));
        }
        problems
    }

    /// The cache settings with defaults filled in.
    pub fn cache_settings(&self) -> CacheSettings {
        let d = CacheSettings::default();
        CacheSettings {
            max_ttl: self.cache.max_ttl.unwrap_or(d.max_ttl),
            negative_ttl: self.cache.negative_ttl.unwrap_or(d.negative_ttl),
            capacity: self.cache.capacity.unwrap_or(d.capacity),
        }
    }

    /// Builds the chain. Watches files, so call it within a tokio runtime.
    pub fn build(&self, prefix: &str, base: &Path) -> Result<Chain, BuildError> {
        Ok(self.build_with_issuer(prefix, base)?.0)
    }

    /// Builds the chain and, when configured, the token issuer (also in the chain).
    pub fn build_with_issuer(
        &self,
        prefix: &str,
        base: &Path,
    ) -> Result<(Chain, Option<Issuer>), BuildError> {
        self.build_reloading(prefix, base, &Reloading::default(), None)
    }

    /// Builds the chain and the token issuer, watching files as `reloading`
    /// says (the static token file at its own `reloadInterval`). With
    /// `issuer`, that issuer is used instead of loading one (a rebuilt chain
    /// keeps the running issuer and its key watch). Call within a tokio
    /// runtime.
    ///
    /// A section for a part this build was made without (a cargo feature
    /// off) is refused here, as [`AuthenticationConfig::validate`] refuses it.
    pub fn build_reloading(
        &self,
        prefix: &str,
        base: &Path,
        reloading: &Reloading,
        issuer: Option<Issuer>,
    ) -> Result<(Chain, Option<Issuer>), BuildError> {
        if let Some(problem) = self.not_built(prefix).into_iter().next() {
            return Err(BuildError {
                field: problem.field,
                message: problem.message,
            });
        }
        let mut chain: Vec<Arc<dyn Authenticator>> = Vec::new();
        #[cfg(feature = "issued-tokens")]
        let issuer = match (&self.issued_tokens, issuer) {
            (Some(_), Some(running)) => Some(running),
            (Some(config), None) => Some(config.load_and_watch(prefix, base, reloading)?),
            (None, _) => None,
        };
        if self.client_certificates {
            chain.push(Arc::new(ClientCertificates));
        }
        if let Some(st) = &self.static_tokens {
            let path = resolve(base, &st.file);
            let interval = st
                .reload_interval
                .unwrap_or(crate::reload::DEFAULT_INTERVAL);
            let tokens =
                StaticTokens::load_and_watch_reported(&path, interval, reloading.reporter.clone())
                    .map_err(|e| BuildError {
                        field: format!("{prefix}.staticTokens.file"),
                        message: e.to_string(),
                    })?;
            chain.push(tokens);
        }
        #[cfg(feature = "ldap")]
        let ldap_authenticator = match &self.ldap {
            Some(config) => Some(ldap::build(
                config,
                &format!("{prefix}.ldap"),
                base,
                reloading,
            )?),
            None => None,
        };
        // Issued tokens before LDAP; tokens issued after an LDAP login look
        // their user up in this chain's directory.
        #[cfg(feature = "issued-tokens")]
        if let (Some(issuer), Some(config)) = (&issuer, &self.issued_tokens) {
            #[cfg(feature = "ldap")]
            let directory = ldap_authenticator.as_ref().map(|built| built.directory());
            #[cfg(not(feature = "ldap"))]
            let directory = None;
            chain.push(Arc::new(
                issuer.refreshing(crate::authn::refresh::Refreshing {
                    directory,
                    settings: crate::authn::refresh::RefreshSettings {
                        interval: config
                            .refresh_interval
                            .unwrap_or(crate::authn::refresh::DEFAULT_INTERVAL),
                        grace: config
                            .refresh_grace
                            .unwrap_or(crate::authn::refresh::DEFAULT_GRACE),
                    },
                }),
            ));
        }
        #[cfg(feature = "ldap")]
        if let Some(built) = ldap_authenticator {
            chain.push(built.refusing);
        }
        #[cfg(feature = "oidc")]
        if let Some(oidc) = self.build_jwt(prefix, base)? {
            chain.push(oidc);
        }
        Ok((Chain::new(chain), issuer))
    }

    /// The sections this build cannot serve: a part left out by a cargo
    /// feature (empty with the default features).
    pub fn not_built(&self, prefix: &str) -> Vec<Problem> {
        #[allow(unused_mut)]
        let mut problems = Vec::new();
        #[cfg(not(feature = "issued-tokens"))]
        if let Some(section) = &self.issued_tokens {
            problems.push(section.problem(format!("{prefix}.issuedTokens"), "issued-tokens"));
        }
        #[cfg(not(feature = "ldap"))]
        if let Some(section) = &self.ldap {
            problems.push(section.problem(format!("{prefix}.ldap"), "ldap"));
        }
        #[cfg(not(feature = "oidc"))]
        {
            if !self.jwt.is_empty() {
                problems.push(NotBuilt::default().problem(format!("{prefix}.jwt"), "oidc"));
            }
            if self.authentication_config_file.is_some() {
                problems.push(
                    NotBuilt::default()
                        .problem(format!("{prefix}.authenticationConfigFile"), "oidc"),
                );
            }
        }
        let _ = prefix;
        problems
    }
}

/// How the API server is reached. With neither `url` nor `kubeconfig`, the
/// in-cluster service account is used (`KUBERNETES_SERVICE_HOST`/`_PORT` and
/// the files under [`SERVICE_ACCOUNT_DIR`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    /// The cluster's name, in `upstreams:` only (a DNS label): requests below
    /// `/k8s/clusters/<name>/` go to it (see [`crate::upstream::router`]).
    pub name: Option<String>,
    /// `https://host:port` of the API server (optionally with a path prefix).
    pub url: Option<String>,
    /// PEM CA bundle for the server certificate (default: the system bundle).
    pub ca_file: Option<PathBuf>,
    /// File holding the proxy's bearer token; re-read as it rotates.
    pub token_file: Option<PathBuf>,
    /// Client certificate presented to the server (PEM).
    pub client_cert_file: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    pub client_key_file: Option<PathBuf>,
    /// Name verified in the server certificate instead of the URL's host.
    pub server_name: Option<String>,
    /// Take server, CA and credential from a kubeconfig instead.
    pub kubeconfig: Option<KubeconfigRef>,
    /// Time allowed to connect (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// How often the token file is re-read (default 1s).
    #[serde(default, with = "humantime_serde")]
    pub token_reload_interval: Option<Duration>,
    /// Most HTTP/2 connections to the API server (default
    /// [`crate::upstream::pool::DEFAULT_MAX_CONNECTIONS`]); another is opened when every open
    /// one has `maxStreamsPerConnection` streams.
    pub max_connections: Option<usize>,
    /// Most streams opened on one HTTP/2 connection before another is opened
    /// (default [`crate::upstream::pool::DEFAULT_MAX_STREAMS_PER_CONNECTION`], kube-apiserver's);
    /// fewer when the server announces fewer.
    pub max_streams_per_connection: Option<usize>,
    /// How often an HTTP/2 PING checks the connection (default 30s; `0s`: never).
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is dropped (default 15s).
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_timeout: Option<Duration>,
    /// Most HTTP/2 connections kept open without streams, per serving thread
    /// (default [`crate::upstream::pool::DEFAULT_MAX_IDLE_CONNECTIONS`]); further
    /// idle ones close a second after their last stream ended.
    pub max_idle_connections: Option<usize>,
    /// How the API server is reached: `direct` (default) or `agent`, through
    /// the tunnels that agents in the cluster dial in (see [`crate::tunnel`]).
    #[serde(default)]
    pub via: Via,
    /// The agents of a `via: agent` cluster.
    pub agent: Option<AgentClusterConfig>,
}

/// How a cluster's API server is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    /// The proxy connects to the API server.
    #[default]
    Direct,
    /// Agents in the cluster dial the proxy; requests go through their tunnels.
    Agent,
}

/// `upstreams[].agent`: how the agents of a `via: agent` cluster prove
/// which cluster they serve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentClusterConfig {
    /// File holding the cluster's registration token (the agents present it
    /// as a bearer token); re-read every `reloadInterval`.
    pub token_file: PathBuf,
}

impl AgentClusterConfig {
    /// `tokenFile`, relative to `base` (the configuration file's folder).
    pub fn token_file_path(&self, base: &Path) -> PathBuf {
        resolve(base, &self.token_file)
    }
}

/// `limits.longRunning`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LongRunningConfig {
    /// Most long-running requests one user may hold open (default
    /// [`crate::long_running::DEFAULT_PER_USER`]).
    pub per_user: Option<usize>,
    /// Most long-running requests open through the proxy (default
    /// [`crate::long_running::DEFAULT_TOTAL`]).
    pub total: Option<usize>,
}

impl LongRunningConfig {
    /// Every problem in the section, `prefix` being its path
    /// (`limits.longRunning`).
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let limits = self.limits();
        if self.per_user == Some(0) {
            problems.push(problem(format!("{prefix}.perUser"), "must be at least 1"));
        }
        if self.total == Some(0) {
            problems.push(problem(format!("{prefix}.total"), "must be at least 1"));
        }
        if limits.per_user > limits.total {
            problems.push(problem(
                format!("{prefix}.perUser"),
                format!("{} is more than total ({})", limits.per_user, limits.total),
            ));
        }
        problems
    }

    /// The long-running caps with defaults filled in.
    pub fn limits(&self) -> long_running::Limits {
        let d = long_running::Limits::default();
        long_running::Limits {
            per_user: self.per_user.unwrap_or(d.per_user),
            total: self.total.unwrap_or(d.total),
        }
    }
}

/// A kubeconfig file and the context to use in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeconfigRef {
    /// The kubeconfig file.
    pub path: PathBuf,
    /// The context (default: the file's current-context).
    pub context: Option<String>,
}

/// Every problem in the single `upstream:` section and the named clusters
/// of `upstreams:`, each with its path (`upstreams[1].name`): each section
/// as [`UpstreamConfig::validate`] checks it, and what contradicts between
/// them (a name on `upstream`, a cluster without a name or with one used
/// twice, a cluster without `url` or `kubeconfig`, an empty list, two
/// `via: agent` clusters with the same registration token).
pub fn validate_upstreams(
    single: Option<&UpstreamConfig>,
    named: Option<&[UpstreamConfig]>,
    base: &Path,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(single) = single {
        problems.extend(single.validate("upstream", base));
        if single.via == Via::Agent {
            problems.push(problem(
                "upstream.via",
                "only clusters in upstreams can be reached through agents; move this section \
                 into upstreams with a name",
            ));
        }
        if single.name.is_some() {
            problems.push(problem(
                "upstream.name",
                "only clusters in upstreams have names; move this section into upstreams",
            ));
        }
    }
    let Some(named) = named else {
        return problems;
    };
    if named.is_empty() {
        problems.push(problem(
            "upstreams",
            "lists no cluster: add one or remove the setting",
        ));
    }
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    // The registration token of each `via: agent` cluster read so far.
    #[cfg(feature = "tunnel")]
    let mut tokens: Vec<(crate::tunnel::registry::TokenDigest, usize)> = Vec::new();
    for (i, cluster) in named.iter().enumerate() {
        let prefix = format!("upstreams[{i}]");
        problems.extend(cluster.validate(&prefix, base));
        match cluster.name.as_deref() {
            None => problems.push(problem(
                format!("{prefix}.name"),
                "is required: requests reach the cluster at /k8s/clusters/<name>/",
            )),
            Some(name) => {
                if let Err(e) = crate::upstream::router::validate_name(name) {
                    problems.push(problem(format!("{prefix}.name"), format!("{name:?} {e}")));
                } else if let Some(first) = seen.get(name).copied() {
                    problems.push(problem(
                        format!("{prefix}.name"),
                        format!("{name:?} is also the name of upstreams[{first}]"),
                    ));
                } else {
                    seen.insert(name, i);
                }
            }
        }
        if cluster.via == Via::Agent {
            #[cfg(feature = "tunnel")]
            {
                problems.extend(cluster.validate_agent(&prefix, base));
                let digest = cluster.agent.as_ref().and_then(|agent| {
                    crate::tunnel::token::file_digest(
                        &std::fs::read(agent.token_file_path(base)).ok()?,
                    )
                    .ok()
                });
                if let Some(digest) = digest {
                    match tokens
                        .iter()
                        .find(|(other, _)| crate::tunnel::token::same(other, &digest))
                    {
                        Some((_, first)) => problems.push(problem(
                            format!("{prefix}.agent.tokenFile"),
                            format!(
                                "same registration token as upstreams[{first}]: the token decides the \
                                 cluster, so each cluster needs its own"
                            ),
                        )),
                        None => tokens.push((digest, i)),
                    }
                }
            }
            #[cfg(not(feature = "tunnel"))]
            problems.push(NotBuilt::default().problem(format!("{prefix}.via"), "tunnel"));
        } else if cluster.url.is_none() && cluster.kubeconfig.is_none() {
            problems.push(problem(
                format!("{prefix}.url"),
                "set url or kubeconfig: only the single upstream defaults to the in-cluster \
                 service account",
            ));
        }
    }
    problems
}

impl UpstreamConfig {
    /// The problems of a `via: agent` cluster: it needs `agent.tokenFile`,
    /// and the settings that say how to connect to an API server contradict it.
    #[cfg(feature = "tunnel")]
    fn validate_agent(&self, prefix: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        match &self.agent {
            None => problems.push(problem(
                format!("{prefix}.agent.tokenFile"),
                "is required with via: agent: the agents of the cluster prove themselves with it",
            )),
            Some(agent) => {
                let field = format!("{prefix}.agent.tokenFile");
                let path = resolve(base, &agent.token_file);
                match std::fs::read(&path) {
                    Err(e) => problems.push(problem(
                        field,
                        format!("cannot read {}: {e}", path.display()),
                    )),
                    Ok(content) => {
                        if let Err(message) = crate::tunnel::token::parse_token(&content) {
                            problems.push(problem(field, format!("{}: {message}", path.display())));
                        }
                    }
                }
            }
        }
        let set = [
            ("url", self.url.is_some()),
            ("caFile", self.ca_file.is_some()),
            ("tokenFile", self.token_file.is_some()),
            ("clientCertFile", self.client_cert_file.is_some()),
            ("clientKeyFile", self.client_key_file.is_some()),
            ("serverName", self.server_name.is_some()),
            ("kubeconfig", self.kubeconfig.is_some()),
            ("maxConnections", self.max_connections.is_some()),
            (
                "maxStreamsPerConnection",
                self.max_streams_per_connection.is_some(),
            ),
        ];
        for (field, is_set) in set {
            if is_set {
                problems.push(problem(
                    format!("{prefix}.{field}"),
                    "contradicts via: agent: the agent in the cluster reaches its API server \
                     with its own service account",
                ));
            }
        }
        problems
    }

    /// Every problem in the section, `prefix` being its path.
    pub fn validate(&self, prefix: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        positive_durations(
            &mut problems,
            prefix,
            &[
                ("tokenReloadInterval", self.token_reload_interval),
                ("connectTimeout", self.connect_timeout),
                ("keepAliveTimeout", self.keep_alive_timeout),
            ],
        );
        if self.via == Via::Direct && self.agent.is_some() {
            problems.push(problem(
                format!("{prefix}.agent"),
                "is only read with via: agent",
            ));
        }
        if self.url.is_some() && self.kubeconfig.is_some() {
            problems.push(problem(
                format!("{prefix}.kubeconfig"),
                "set either url or kubeconfig, not both",
            ));
        }
        if let Some(url) = &self.url {
            let shown = crate::upstream::without_userinfo(url);
            match url.parse::<http::Uri>() {
                Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
                    problems.push(problem(
                        format!("{prefix}.url"),
                        format!(
                            "{shown:?} holds a user name or password: remove it (the proxy sends its \
                             tokenFile or client certificate, and the URL is logged)"
                        ),
                    ))
                }
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
                _ => problems.push(problem(
                    format!("{prefix}.url"),
                    format!("{shown:?} is not an https:// URL"),
                )),
            }
        }
        if let Some(path) = &self.ca_file {
            check_ca_file(
                &mut problems,
                &format!("{prefix}.caFile"),
                &resolve(base, path),
            );
        }
        if let Some(path) = &self.token_file {
            check_readable(
                &mut problems,
                &format!("{prefix}.tokenFile"),
                &resolve(base, path),
            );
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => check_cert_and_key(
                &mut problems,
                (&format!("{prefix}.clientCertFile"), &resolve(base, cert)),
                (&format!("{prefix}.clientKeyFile"), &resolve(base, key)),
            ),
            (None, None) => {}
            _ => problems.push(problem(
                format!("{prefix}.clientKeyFile"),
                "clientCertFile and clientKeyFile go together",
            )),
        }
        if let Some(k) = &self.kubeconfig {
            // Resolved as the proxy will use it, and held to the same checks
            // as a section that names its files itself.
            match Kubeconfig::load(&resolve(base, &k.path))
                .and_then(|kc| kc.upstream(k.context.as_deref()))
            {
                Err(e) => problems.push(problem(format!("{prefix}.kubeconfig"), e.to_string())),
                Ok(options) => {
                    if let UpstreamCredential::TokenFile { path, .. } = &options.credential {
                        check_readable(&mut problems, &format!("{prefix}.kubeconfig"), path);
                    }
                }
            }
            for (field, is_set) in [
                ("caFile", self.ca_file.is_some()),
                ("tokenFile", self.token_file.is_some()),
                ("clientCertFile", self.client_cert_file.is_some()),
                ("clientKeyFile", self.client_key_file.is_some()),
                ("serverName", self.server_name.is_some()),
            ] {
                if is_set {
                    problems.push(problem(
                        format!("{prefix}.{field}"),
                        "contradicts kubeconfig: the kubeconfig's cluster and user are used",
                    ));
                }
            }
        }
        if self.max_connections == Some(0) {
            problems.push(problem(
                format!("{prefix}.maxConnections"),
                "must be at least 1",
            ));
        }
        if self.max_streams_per_connection == Some(0) {
            problems.push(problem(
                format!("{prefix}.maxStreamsPerConnection"),
                "must be at least 1",
            ));
        }
        if let Some(name) = &self.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                problems.push(problem(
                    format!("{prefix}.serverName"),
                    "not a DNS name or IP address",
                ));
            }
        }
        problems
    }

    /// The pool settings with defaults filled in.
    pub fn pool_settings(&self) -> PoolSettings {
        let d = PoolSettings::default();
        PoolSettings {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_streams_per_connection: self
                .max_streams_per_connection
                .unwrap_or(d.max_streams_per_connection),
            keep_alive_interval: match self.keep_alive_interval {
                Some(Duration::ZERO) => None,
                Some(interval) => Some(interval),
                None => d.keep_alive_interval,
            },
            keep_alive_timeout: self.keep_alive_timeout.unwrap_or(d.keep_alive_timeout),
            idle_timeout: d.idle_timeout,
            max_idle_connections: self.max_idle_connections.unwrap_or(d.max_idle_connections),
        }
    }

    /// The CA file the API server is verified against, when it is a file
    /// of this section (`caFile`, or the in-cluster `ca.crt`); `None` for
    /// the system bundle or a kubeconfig.
    pub fn ca_file_path(&self, base: &Path) -> Option<PathBuf> {
        if self.kubeconfig.is_some() {
            return None;
        }
        match (&self.ca_file, &self.url) {
            (Some(file), _) => Some(resolve(base, file)),
            (None, None) => Some(Path::new(SERVICE_ACCOUNT_DIR).join("ca.crt")),
            (None, Some(_)) => None,
        }
    }

    /// The client to the API server this section names: [`Self::to_options`]
    /// then [`crate::upstream::Upstream::new`], with one error type (the
    /// field is `prefix`'s when the client cannot be made from the options).
    /// A `via: agent` section is refused: its agents dial in.
    /// Call within a tokio runtime (the token file is watched).
    pub fn build<B>(
        &self,
        prefix: &str,
        base: &Path,
    ) -> Result<crate::upstream::Upstream<B>, BuildError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::BoxError>,
    {
        if self.via == Via::Agent {
            return Err(BuildError {
                field: format!("{prefix}.via"),
                message: "a cluster reached through agents has no client of its own to build: its \
                          agents dial in (see `proxy_core::tunnel`)"
                    .into(),
            });
        }
        let options = self.to_options(prefix, base)?;
        crate::upstream::Upstream::new(options).map_err(|e| BuildError {
            field: prefix.to_owned(),
            message: e.to_string(),
        })
    }

    /// Resolves the section into client options (reads CA and key files).
    pub fn to_options(&self, prefix: &str, base: &Path) -> Result<UpstreamOptions, BuildError> {
        let err = |field: &str, message: String| BuildError {
            field: format!("{prefix}.{field}"),
            message,
        };
        let connect_timeout = self
            .connect_timeout
            .unwrap_or(crate::upstream::DEFAULT_CONNECT_TIMEOUT);
        let interval = self
            .token_reload_interval
            .unwrap_or(crate::reload::DEFAULT_INTERVAL);
        if let Some(k) = &self.kubeconfig {
            let mut options = Kubeconfig::load(&resolve(base, &k.path))
                .and_then(|kc| kc.upstream(k.context.as_deref()))
                .map_err(|e| err("kubeconfig", e.to_string()))?;
            options.connect_timeout = connect_timeout;
            options.pool = self.pool_settings();
            if let UpstreamCredential::TokenFile { interval: i, .. } = &mut options.credential {
                *i = interval;
            }
            return Ok(options);
        }
        let (url, default_ca, default_token) = match &self.url {
            Some(url) => (url.clone(), None, None),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    err(
                        "url",
                        "not set, and not running in a cluster (KUBERNETES_SERVICE_HOST is unset)"
                            .into(),
                    )
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                let dir = Path::new(SERVICE_ACCOUNT_DIR);
                (
                    format!("https://{host}:{port}"),
                    Some(dir.join("ca.crt")),
                    Some(dir.join("token")),
                )
            }
        };
        let url = url
            .parse::<http::Uri>()
            .map_err(|e| err("url", e.to_string()))?;
        let ca_file = self
            .ca_file
            .as_ref()
            .map(|p| resolve(base, p))
            .or(default_ca);
        let ca_pem = match &ca_file {
            Some(path) => Some(tls::read_file(path).map_err(|e| err("caFile", e.to_string()))?),
            None => None,
        };
        let client_identity = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some((
                tls::load_certs(&resolve(base, cert))
                    .map_err(|e| err("clientCertFile", e.to_string()))?,
                Arc::new(
                    tls::load_key(&resolve(base, key))
                        .map_err(|e| err("clientKeyFile", e.to_string()))?,
                ),
            )),
            _ => None,
        };
        let token_file = self
            .token_file
            .as_ref()
            .map(|p| resolve(base, p))
            .or(default_token);
        Ok(UpstreamOptions {
            url,
            ca_pem,
            client_identity,
            server_name: self.server_name.clone(),
            credential: match token_file {
                Some(path) => UpstreamCredential::TokenFile { path, interval },
                None => UpstreamCredential::None,
            },
            connect_timeout,
            pool: self.pool_settings(),
        })
    }
}

#[cfg(test)]
mod tests {

    /// A section for a part this build left out parses, and is refused by
    /// both validation and build, naming the feature; what the build has
    /// still works beside it.
    #[cfg(not(all(feature = "ldap", feature = "issued-tokens", feature = "cel")))]
    #[test]
    fn a_section_for_a_part_left_out_is_refused_naming_its_feature() {
        let base = std::path::Path::new(".");
        let mut missing = Vec::new();
        #[cfg(not(feature = "ldap"))]
        missing.push((
            "ldap: {url: 'ldaps://ldap.example.com', bindDN: cn=x, bindPasswordFile: p}",
            "authentication.ldap",
            "`ldap`",
        ));
        #[cfg(not(feature = "issued-tokens"))]
        missing.push((
            "issuedTokens: {signingKeyFiles: [k.pem]}",
            "authentication.issuedTokens",
            "`issued-tokens`",
        ));
        #[cfg(not(feature = "oidc"))]
        missing.push((
            "jwt: [{issuer: {url: 'https://idp.example.com', audiences: [k]}}]",
            "authentication.jwt",
            "`oidc`",
        ));
        #[cfg(all(feature = "oidc", not(feature = "cel")))]
        missing.push((
            "jwt: [{issuer: {url: 'https://idp.example.com', audiences: [k]}, \
             claimMappings: {username: {expression: 'claims.sub'}}}]",
            "authentication.jwt[0].claimMappings.username.expression",
            "`cel`",
        ));
        assert!(!missing.is_empty());
        for (yaml, field, feature) in missing {
            let config: AuthenticationConfig =
                serde_yaml_ng::from_str(&format!("clientCertificates: true\n{yaml}")).unwrap();
            let problems = config.validate("authentication", base);
            assert!(
                problems
                    .iter()
                    .any(|p| p.field == field && p.message.contains(feature)),
                "{yaml}: {problems:?}"
            );
            let built = config.build("authentication", base);
            assert!(built.is_err(), "{yaml} was built");
        }
        // Claims alone need no more than the build has.
        #[cfg(feature = "oidc")]
        {
            let config: AuthenticationConfig = serde_yaml_ng::from_str(
                "jwt: [{issuer: {url: 'https://idp.example.com', audiences: [k]}, \
                 claimMappings: {username: {claim: sub, prefix: ''}}}]",
            )
            .unwrap();
            assert_eq!(config.validate("authentication", base), vec![]);
        }
    }

    #[test]
    fn an_upstream_url_with_a_password_is_refused_without_showing_it() {
        let config: UpstreamConfig =
            serde_yaml_ng::from_str("{url: 'https://admin:s3cret-pw@10.0.0.1:6443'}").unwrap();
        let problems = config.validate("upstream", std::path::Path::new("/"));
        let text = format!("{problems:?}");
        assert!(text.contains("user name or password"), "{text}");
        assert!(
            !text.contains("s3cret-pw") && !text.contains("admin"),
            "{text}"
        );
        assert_eq!(
            crate::upstream::without_userinfo("https://a:b@h:1/p?q"),
            "https://h:1/p?q"
        );
    }
    use super::*;

    #[test]
    fn certificate_keys_and_cas_are_checked_for_what_they_hold_not_only_that_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let pair = |not_after: (i32, u8, u8)| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["proxy".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
            (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let (good_cert, good_key) = pair((4000, 1, 1));
        let (old_cert, old_key) = pair((2001, 1, 1));
        let (_, other_key) = pair((4000, 1, 1));
        write("good.crt", &good_cert);
        write("good.key", &good_key);
        write("old.crt", &old_cert);
        write("old.key", &old_key);
        write("other.key", &other_key);
        write("empty.crt", "");
        let problems = |yaml: &str| -> Vec<String> {
            let config: UpstreamConfig = serde_yaml_ng::from_str(yaml).unwrap();
            config
                .validate("upstream", dir.path())
                .into_iter()
                .map(|p| p.to_string())
                .collect()
        };
        assert_eq!(
            problems("{url: 'https://k', caFile: good.crt, clientCertFile: good.crt, clientKeyFile: good.key}"),
            Vec::<String>::new()
        );
        let found = problems("{url: 'https://k', caFile: empty.crt}");
        assert!(
            found.len() == 1
                && found[0].starts_with("upstream.caFile: ")
                && found[0].contains("no PEM certificate"),
            "{found:?}"
        );
        let found =
            problems("{url: 'https://k', clientCertFile: good.crt, clientKeyFile: other.key}");
        assert!(
            found.len() == 1
                && found[0].starts_with("upstream.clientKeyFile: ")
                && found[0].contains("does not belong to the certificate"),
            "{found:?}"
        );
        let found = problems("{url: 'https://k', clientCertFile: old.crt, clientKeyFile: old.key}");
        assert!(
            found.len() == 1
                && found[0].starts_with("upstream.clientCertFile: ")
                && found[0].contains("expired"),
            "{found:?}"
        );
        let found =
            problems("{url: 'https://k', clientCertFile: good.key, clientKeyFile: good.crt}");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("upstream.clientCertFile: "))
                && found
                    .iter()
                    .any(|p| p.starts_with("upstream.clientKeyFile: ")),
            "{found:?}"
        );
    }

    #[cfg(feature = "oidc")]
    #[test]
    fn an_authentication_configuration_error_at_an_empty_key_names_a_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authn.yaml");
        std::fs::write(&path, " ?").unwrap();
        let message = KubeAuthenticationConfiguration::load(&path).unwrap_err();
        assert!(message.contains(": (top level): "), "{message}");
    }

    #[test]
    fn zero_intervals_and_timeouts_are_refused_where_they_would_spin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"\"\n").unwrap();
        let auth: AuthenticationConfig =
            serde_yaml_ng::from_str("staticTokens: {file: tokens.csv, reloadInterval: 0s}")
                .unwrap();
        let fields: Vec<String> = auth
            .validate("authentication", dir.path())
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert!(
            fields.contains(&"authentication.staticTokens.reloadInterval".to_owned()),
            "{fields:?}"
        );
        let upstream: UpstreamConfig = serde_yaml_ng::from_str(
            "{url: 'https://k', tokenReloadInterval: 0s, connectTimeout: 0s, keepAliveTimeout: 0s}",
        )
        .unwrap();
        let fields: Vec<String> = upstream
            .validate("upstream", dir.path())
            .into_iter()
            .map(|p| p.field)
            .collect();
        for field in ["tokenReloadInterval", "connectTimeout", "keepAliveTimeout"] {
            assert!(fields.contains(&format!("upstream.{field}")), "{fields:?}");
        }
    }
}
