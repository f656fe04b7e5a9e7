//! The `authproxy` configuration file (YAML).
//!
//! ```yaml
//! listen: 0.0.0.0:8443
//! tls: {certFile: tls.crt, keyFile: tls.key, clientCAFile: client-ca.crt}
//! upstream: {url: https://10.0.0.1:6443, caFile: ca.crt, tokenFile: token}
//! # more API servers, at https://proxy/k8s/clusters/<name>/:
//! upstreams:
//!   - {name: east, url: https://10.0.1.1:6443, caFile: east-ca.crt, tokenFile: east-token}
//! authentication:
//!   staticTokens: {file: tokens.csv}
//! logging: {format: json, level: info}
//! limits: {headerReadTimeout: 30s, idleTimeout: 90s, maxConnections: 10000}
//! shutdownTimeout: 30s
//! ```
//!
//! Loading reports every problem at once, each naming the file and the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_core::authn::oidc::OidcFlags;
use proxy_core::config::{AuthenticationConfig, Problem, UpstreamConfig};
use serde::Deserialize;

use crate::limits::Limits;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// Address the proxy listens on (default `0.0.0.0:8443`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The listener's certificate, key and optional client CA.
    pub tls: ListenerTls,
    /// How the API server is reached (default: in-cluster service account,
    /// unless `upstreams` is set: then no default). Use
    /// [`FileConfig::default_upstream`].
    pub upstream: Option<UpstreamConfig>,
    /// Named API servers, each reached at `/k8s/clusters/<name>/` through its
    /// own client and connection pool (same fields as `upstream`, plus
    /// `name`). Use [`FileConfig::named_upstreams`].
    pub upstreams: Option<Vec<UpstreamConfig>>,
    /// Which authenticators run.
    pub authentication: AuthenticationConfig,
    /// Log format and level.
    #[serde(default)]
    pub logging: Logging,
    /// Timeouts, caps and sizes of the listener, and caps on long-running
    /// requests (see [`crate::limits`]).
    #[serde(default)]
    pub limits: Limits,
    /// How long in-flight requests may take to finish on SIGTERM (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// The `/metrics` listener (off without this section).
    pub metrics: Option<MetricsConfig>,
    /// The audit log (off without this section).
    pub audit: Option<proxy_core::observe::config::AuditConfig>,
    /// Settings of `authproxy webhook` (the TokenReview endpoint).
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// What to do with a caller's own `Impersonate-*` headers (`kubectl
    /// --as`): `authorize` (default) or `deny`.
    #[serde(default)]
    pub caller_impersonation: proxy_core::impersonate::nested::Config,
    /// How the identity goes upstream: `Impersonate-*` headers (default) or
    /// front-proxy request headers.
    #[serde(default)]
    pub identity_headers: proxy_core::impersonate::ForwardConfig,
    /// Load balancers and ingresses whose `X-Forwarded-For` entries and PROXY
    /// protocol headers are believed: CIDR blocks or addresses (default none:
    /// a caller's `X-Forwarded-For` is replaced by its address).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Read a PROXY protocol header (v1 or v2) at the start of every
    /// connection from `trustedProxies` (an L4 load balancer's
    /// `send-proxy`), so the client's address survives the balancer; other
    /// connections are read as TLS (default false).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// How often watched files are re-read: serving certificate and key,
    /// client and upstream CAs, this file's `authentication` section and its
    /// `authenticationConfigFile`, the LDAP bind password, issued-token keys
    /// (default [`proxy_core::reload::DEFAULT_INTERVAL`], 1s). SIGHUP reads
    /// them at once.
    #[serde(default, with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
    /// What the kubeconfig served at
    /// [`crate::kubeconfig_endpoint::KUBECONFIG_PATH`] says (its server URL,
    /// CA and login command).
    #[serde(default)]
    pub kubeconfig: Option<KubeconfigEndpointConfig>,
    /// Recording of exec and attach sessions (off without this section).
    #[serde(default)]
    pub session_recording: Option<proxy_core::observe::sessions::SessionRecordingConfig>,
}

/// `kubeconfig:`: what the served kubeconfig says (every field optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeconfigEndpointConfig {
    /// The proxy's URL as users reach it (default: `https://` and the host
    /// the request was sent to).
    pub server: Option<String>,
    /// The CA bundle users verify the proxy with, written into the
    /// kubeconfig (default: none; clients use their system roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// What kubectl runs to log in (default `authproxy`, found on PATH).
    pub command: Option<String>,
    /// The name of the user, and of the context of the default upstream
    /// (default `authproxy`).
    pub name: Option<String>,
}

/// Failed TokenReviews allowed per token and minute when
/// `webhook.failedReviewsPerMinute` is unset.
pub const DEFAULT_FAILED_REVIEWS_PER_MINUTE: u32 = 300;

/// `webhook`: who may ask for TokenReviews and how often they may fail.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// Serve TokenReviews on a non-loopback address without `tls.clientCAFile`,
    /// that is to anyone who can reach it (default false: refused at start).
    #[serde(default)]
    pub allow_unauthenticated_clients: bool,
    /// Refused reviews allowed per token and minute, in bursts of up to that
    /// many; past it the webhook answers `429` with `Retry-After` for that
    /// token, which kube-apiserver treats as an error (retried, never
    /// cached). Never counted per caller address: the caller is
    /// kube-apiserver, which passes on every token anyone presents to it.
    /// Default [`DEFAULT_FAILED_REVIEWS_PER_MINUTE`]; `0` turns it off.
    pub failed_reviews_per_minute: Option<u32>,
    /// Common names a caller's verified client certificate may have, as
    /// kube-apiserver's `--requestheader-allowed-names`; others are answered
    /// 403. Empty (the default): any certificate `tls.clientCAFile` signed.
    #[serde(default)]
    pub allowed_client_names: Vec<String>,
    /// The API audiences of the kube-apiserver that calls the webhook (its
    /// `--api-audiences`, by default its `--service-account-issuer`): OIDC ID
    /// tokens and issued tokens are valid for these besides their own
    /// audiences. Default [`proxy_core::tokenreview::DEFAULT_API_AUDIENCES`].
    pub api_audiences: Option<Vec<String>>,
}

impl WebhookConfig {
    /// The API audiences with their default filled in.
    pub fn api_audiences(&self) -> Vec<String> {
        match &self.api_audiences {
            Some(audiences) => audiences.clone(),
            None => proxy_core::tokenreview::DEFAULT_API_AUDIENCES
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }

    /// The failed-review limit with its default filled in.
    pub fn failed_reviews_per_minute(&self) -> u32 {
        self.failed_reviews_per_minute
            .unwrap_or(DEFAULT_FAILED_REVIEWS_PER_MINUTE)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

/// TLS settings of the listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerTls {
    /// PEM certificate chain served to clients.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, client certificates signed by it are verified
    /// and can authenticate (with `authentication.clientCertificates`).
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

/// Log output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Logging {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `authproxy=debug,info`); `RUST_LOG` wins.
    pub level: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration file that cannot be used: every problem, with the file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The problems, each with its field path.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} problem(s)",
            self.path.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {p}", self.path.display())?;
        }
        Ok(())
    }
}

impl FileConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        Self::load_with(path, &OidcFlags::default())
    }

    /// Like [`FileConfig::load`], adding the issuer of kube-apiserver style
    /// `--oidc-*` flags to `authentication.jwt`.
    pub fn load_with(path: &Path, flags: &OidcFlags) -> Result<FileConfig, ConfigError> {
        let fail = |field: &str, message: String| ConfigError {
            path: path.to_owned(),
            problems: vec![Problem {
                field: field.to_owned(),
                message,
            }],
        };
        let text = proxy_core::reload::read_settled_to_string(path)
            .map_err(|e| fail("(file)", e.to_string()))?;
        let mut config = Self::parse_all(&text).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems: problems
                .into_iter()
                .map(|(field, message)| Problem { field, message })
                .collect(),
        })?;
        match flags.to_jwt() {
            Ok(Some(jwt)) => config.authentication.jwt.push(jwt),
            Ok(None) => {}
            Err(problem) => return Err(fail(&problem.field, problem.message)),
        }
        let problems = config.validate(&config.base_dir(path));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Parses YAML; on failure returns every structural problem (unknown
    /// fields, values of the wrong type, missing fields), each with its field
    /// path and the line it is on, not only the first: a problem's node is
    /// left out and the rest read again, until nothing more is found.
    pub fn parse_all(text: &str) -> Result<FileConfig, Vec<(String, String)>> {
        /// More would be another file than the one meant.
        const MOST: usize = 64;
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let first = match serde_path_to_error::deserialize::<_, FileConfig>(deserializer) {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        let mut problems = vec![(
            proxy_core::config::field_path(first.path()),
            first.inner().to_string(),
        )];
        // Not YAML at all: nothing more can be read.
        let Ok(mut value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
            return Err(problems);
        };
        let mut last = (
            first.path().iter().cloned().collect::<Vec<_>>(),
            first.into_inner().to_string(),
        );
        // List items left out, as (the list's path in the file, the item's
        // index there): later problems are named as in the file.
        let mut removed: Vec<(String, usize)> = Vec::new();
        while problems.len() < MOST {
            match leave_out(&mut value, &last.0, &last.1) {
                None => break,
                Some(LeftOut::Key) => {}
                Some(LeftOut::Item { parents, index }) => {
                    let mut item = parents;
                    item.push(serde_path_to_error::Segment::Seq { index });
                    let in_file = as_in_file(&item, &removed);
                    if let Some((serde_path_to_error::Segment::Seq { index }, list)) =
                        in_file.split_last()
                    {
                        removed.push((path_text(list), *index));
                    }
                }
            }
            match serde_path_to_error::deserialize::<_, FileConfig>(value.clone()) {
                Ok(_) => break,
                Err(error) => {
                    let segments: Vec<_> = error.path().iter().cloned().collect();
                    let message = error.inner().to_string();
                    let in_file = as_in_file(&segments, &removed);
                    let line = line_of(text, &in_file, &message)
                        .map(|n| format!(" at line {n}"))
                        .unwrap_or_default();
                    problems.push((path_text(&in_file), format!("{message}{line}")));
                    last = (segments, message);
                }
            }
        }
        Err(problems)
    }

    /// Parses YAML; on failure returns the field path and the message.
    pub fn parse(text: &str) -> Result<FileConfig, (String, String)> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = proxy_core::config::field_path(e.path());
            (field, e.into_inner().to_string())
        })
    }

    /// The upstream of requests without a `/k8s/clusters/<name>/` prefix:
    /// `upstream`, or the in-cluster service account when neither `upstream`
    /// nor `upstreams` is set; `None` when only `upstreams` is set.
    pub fn default_upstream(&self) -> Option<UpstreamConfig> {
        match (&self.upstream, &self.upstreams) {
            (Some(upstream), _) => Some(upstream.clone()),
            (None, None) => Some(UpstreamConfig::default()),
            (None, Some(_)) => None,
        }
    }

    /// The named clusters of `upstreams` (empty without it).
    pub fn named_upstreams(&self) -> &[UpstreamConfig] {
        self.upstreams.as_deref().unwrap_or_default()
    }

    /// Every configured upstream section with its path (`upstream`,
    /// `upstreams[1]`).
    pub fn upstream_sections(&self) -> Vec<(String, UpstreamConfig)> {
        let mut sections: Vec<(String, UpstreamConfig)> = self
            .default_upstream()
            .map(|u| ("upstream".to_owned(), u))
            .into_iter()
            .collect();
        for (i, cluster) in self.named_upstreams().iter().enumerate() {
            sections.push((format!("upstreams[{i}]"), cluster.clone()));
        }
        sections
    }

    /// `trustedProxies`, parsed; on failure the index of the first bad
    /// entry and why.
    pub fn trusted_proxy_blocks(
        &self,
    ) -> Result<proxy_core::forwarded::TrustedProxies, (usize, String)> {
        proxy_core::forwarded::TrustedProxies::parse(&self.trusted_proxies)
    }

    /// The reload interval with its default filled in.
    pub fn reload_interval(&self) -> Duration {
        self.reload_interval
            .unwrap_or(proxy_core::reload::DEFAULT_INTERVAL)
    }

    /// The folder relative paths in `path` are resolved against.
    pub fn base_dir(&self, path: &Path) -> PathBuf {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// What the configuration allows but is likely a mistake, each with its
    /// field (`check-config` prints these as warnings; the webhook logs them).
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        if self.authentication.client_certificates
            && self.tls.client_ca_file.is_some()
            && self.webhook.allowed_client_names.is_empty()
        {
            warnings.push(Problem {
                field: "webhook.allowedClientNames".into(),
                message: "tls.clientCAFile also signs the users' certificates \
                          (authentication.clientCertificates), so `authproxy webhook` with this file \
                          answers any user who presents one: set the names of kube-apiserver's \
                          webhook client certificate here"
                    .into(),
            });
        }
        if self.authentication.ldap.is_some() && self.authentication.issued_tokens.is_none() {
            warnings.push(Problem {
                field: "authentication.issuedTokens".into(),
                message: "authentication.ldap is set without it: `authproxy login ldap` (and \
                          `authproxy kubeconfig` for LDAP users) needs issued tokens and is refused; \
                          without them kubectl can only send the password with every request (Basic)"
                    .into(),
            });
        }
        if let Some(issued) = &self.authentication.issued_tokens {
            warnings.extend(self.exchange_warnings(issued));
        }
        let ldap_login =
            self.authentication.ldap.is_some() && self.authentication.issued_tokens.is_some();
        if self.kubeconfig.is_some()
            && !ldap_login
            && self.authentication.jwt.is_empty()
            && self.authentication.authentication_config_file.is_none()
        {
            warnings.push(Problem {
                field: "kubeconfig".into(),
                message: "the served kubeconfig names a login, and there is none to name: it \
                          answers 404 until authentication has LDAP with issuedTokens, or an \
                          OIDC issuer"
                    .into(),
            });
        }
        if !self.trusted_proxies.is_empty() && !self.proxy_protocol {
            warnings.push(Problem {
                field: "trustedProxies".into(),
                message: "X-Forwarded-For from these addresses is believed: list only proxies that set \
                          it themselves. An L4 load balancer in TLS passthrough cannot, so behind one \
                          callers would write their own address; use proxyProtocol for it"
                    .into(),
            });
        }
        warnings
    }

    /// What `issuedTokens.exchangeFrom` names that nothing in
    /// `authentication` provides, and the logins it leaves out that
    /// `authproxy login` would need.
    fn exchange_warnings(&self, issued: &proxy_core::config::IssuedTokensConfig) -> Vec<Problem> {
        use proxy_core::authn::Source;
        let authn = &self.authentication;
        let configured = |source: Source| match source {
            Source::ClientCertificate => authn.client_certificates,
            Source::StaticToken => authn.static_tokens.is_some(),
            Source::Ldap => authn.ldap.is_some(),
            Source::Oidc => !authn.jwt.is_empty() || authn.authentication_config_file.is_some(),
            Source::Issued | Source::Other => true,
        };
        let section = |source: Source| match source {
            Source::ClientCertificate => "authentication.clientCertificates",
            Source::StaticToken => "authentication.staticTokens",
            Source::Ldap => "authentication.ldap",
            Source::Oidc => "authentication.jwt or authentication.authenticationConfigFile",
            Source::Issued | Source::Other => "",
        };
        let mut warnings = Vec::new();
        for (i, source) in issued.exchange_from.iter().flatten().enumerate() {
            if !configured(*source) {
                warnings.push(Problem {
                    field: format!("authentication.issuedTokens.exchangeFrom[{i}]"),
                    message: format!(
                        "{} is not configured ({}), so nothing is exchanged from it",
                        source.as_str(),
                        section(*source)
                    ),
                });
            }
        }
        let sources = issued.exchange_sources();
        if !sources.iter().any(|s| configured(*s)) {
            warnings.push(Problem {
                field: "authentication.issuedTokens".into(),
                message: "none of the logins it exchanges from is configured: no token is ever \
                          issued"
                    .into(),
            });
        } else if authn.ldap.is_some() && !sources.contains(&Source::Ldap) {
            warnings.push(Problem {
                field: "authentication.issuedTokens.exchangeFrom".into(),
                message:
                    "leaves out ldap while authentication.ldap is set: `authproxy login ldap` \
                          is refused"
                        .into(),
            });
        }
        warnings
    }

    /// Every problem in the configuration.
    pub fn validate(&self, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        let resolve = |path: &Path| {
            if path.is_absolute() {
                path.to_owned()
            } else {
                base.join(path)
            }
        };
        proxy_core::config::check_cert_and_key(
            &mut problems,
            ("tls.certFile", &resolve(&self.tls.cert_file)),
            ("tls.keyFile", &resolve(&self.tls.key_file)),
        );
        if let Some(ca) = &self.tls.client_ca_file {
            proxy_core::config::check_ca_file(&mut problems, "tls.clientCAFile", &resolve(ca));
        }
        if let Some(ca) = self.kubeconfig.as_ref().and_then(|k| k.ca_file.as_ref()) {
            proxy_core::config::check_ca_file(&mut problems, "kubeconfig.caFile", &resolve(ca));
        }
        if self.reload_interval == Some(Duration::ZERO) {
            problems.push(Problem {
                field: "reloadInterval".into(),
                message: "must be more than 0s".into(),
            });
        }
        if let Err((i, message)) = self.trusted_proxy_blocks() {
            problems.push(Problem {
                field: format!("trustedProxies[{i}]"),
                message,
            });
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            problems.push(Problem {
                field: "proxyProtocol".into(),
                message: "needs trustedProxies: PROXY protocol headers are read only from the \
                          load balancers named there"
                    .into(),
            });
        }
        if !self.webhook.allowed_client_names.is_empty() && self.tls.client_ca_file.is_none() {
            problems.push(Problem {
                field: "webhook.allowedClientNames".into(),
                message:
                    "needs tls.clientCAFile: names are checked on verified client certificates"
                        .into(),
            });
        }
        if let Some(i) = self
            .webhook
            .allowed_client_names
            .iter()
            .position(|n| n.trim().is_empty())
        {
            problems.push(Problem {
                field: format!("webhook.allowedClientNames[{i}]"),
                message: "must not be empty".into(),
            });
        }
        if self.authentication.client_certificates && self.tls.client_ca_file.is_none() {
            problems.push(Problem {
                field: "authentication.clientCertificates".into(),
                message: "needs tls.clientCAFile to verify client certificates".into(),
            });
        }
        problems.extend(proxy_core::config::validate_upstreams(
            self.default_upstream().as_ref(),
            self.upstreams.as_deref(),
            base,
        ));
        if self.identity_headers.mode == proxy_core::impersonate::ForwardMode::FrontProxy {
            if let Err(problem) = self.identity_headers.front_proxy_names("identityHeaders") {
                problems.push(problem);
            }
            for (section, upstream) in self.upstream_sections() {
                if upstream.via == proxy_core::config::Via::Agent {
                    problems.push(Problem {
                        field: format!("{section}.via"),
                        message: "identityHeaders.mode frontProxy cannot reach a cluster through \
                                  agents: the agent presents its service-account token"
                            .into(),
                    });
                    continue;
                }
                if upstream.kubeconfig.is_some() {
                    // What the kubeconfig resolves to is what is sent; a
                    // kubeconfig that does not load is reported above.
                    if let Ok(options) = upstream.to_options(&section, base) {
                        problems.extend(front_proxy_credential_problems(&section, &options));
                    }
                    continue;
                }
                if upstream.url.is_none() {
                    problems.push(Problem {
                        field: format!("{section}.url"),
                        message: "identityHeaders.mode frontProxy needs the API server's URL (the \
                                  in-cluster default would send the service-account token)"
                            .into(),
                    });
                }
                if upstream.client_cert_file.is_none() || upstream.client_key_file.is_none() {
                    problems.push(Problem {
                        field: format!("{section}.clientCertFile"),
                        message: "identityHeaders.mode frontProxy needs a client certificate and \
                                  key signed by the API server's --requestheader-client-ca-file"
                            .into(),
                    });
                }
                if upstream.token_file.is_some() {
                    problems.push(Problem {
                        field: format!("{section}.tokenFile"),
                        message: "contradicts identityHeaders.mode frontProxy: the API server \
                                  would take the identity from the token, not the headers"
                            .into(),
                    });
                }
            }
        }
        problems.extend(self.authentication.validate("authentication", base));
        problems.extend(self.limits.validate("limits"));
        let long_running = self.limits.long_running_limits().total;
        for (section, upstream) in self.upstream_sections() {
            if upstream.via == proxy_core::config::Via::Agent {
                continue;
            }
            let pool = upstream.pool_settings();
            let streams = pool
                .max_connections
                .saturating_mul(pool.max_streams_per_connection);
            if streams > 0 && long_running >= streams {
                problems.push(Problem {
                    field: "limits.longRunning.total".into(),
                    message: format!(
                        "{long_running} long-running requests could hold all {streams} upstream streams \
                         ({section}.maxConnections × {section}.maxStreamsPerConnection), leaving none for \
                         short requests"
                    ),
                });
            }
        }
        if let Some(metrics) = &self.metrics {
            problems.extend(metrics.validate("metrics", base));
        }
        if let Some(audit) = &self.audit {
            problems.extend(audit.validate("audit", base));
        }
        if let Some(recording) = &self.session_recording {
            problems.extend(recording.validate("sessionRecording", base));
        }
        problems
    }
}

/// What is wrong with reaching the API server with `options` in front-proxy
/// mode: the proxy must prove itself with a client certificate that the API
/// server's `--requestheader-client-ca-file` signed, and send no token (with
/// one, kube-apiserver takes the identity from the token and ignores the
/// headers, so every user would act as the proxy).
fn front_proxy_credential_problems(
    section: &str,
    options: &proxy_core::upstream::UpstreamOptions,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    if options.client_identity.is_none() {
        problems.push(Problem {
            field: format!("{section}.kubeconfig"),
            message: "identityHeaders.mode frontProxy needs the kubeconfig's user to have a \
                      client certificate and key signed by the API server's \
                      --requestheader-client-ca-file"
                .into(),
        });
    }
    if !matches!(
        options.credential,
        proxy_core::upstream::UpstreamCredential::None
    ) {
        problems.push(Problem {
            field: format!("{section}.kubeconfig"),
            message: "the kubeconfig's user has a token, which contradicts identityHeaders.mode \
                      frontProxy: the API server would take the identity from the token, not \
                      the headers"
                .into(),
        });
    }
    problems
}

/// The name in backquotes of an unknown-field message (`unknown field
/// `x`, expected ...`).
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
}

/// What [`leave_out`] took out of a value.
enum LeftOut {
    /// A key of a map.
    Key,
    /// The item `index` of the list at `parents`: later items moved up one.
    Item {
        parents: Vec<serde_path_to_error::Segment>,
        index: usize,
    },
}

/// Leaves out of `value` the node a problem at `path` names (the unknown
/// key itself for an unknown field, the section lacking a missing field);
/// `None` when there is nothing to leave out (the top level, or a path that
/// leads nowhere).
fn leave_out(
    value: &mut serde_yaml_ng::Value,
    path: &[serde_path_to_error::Segment],
    message: &str,
) -> Option<LeftOut> {
    use serde_path_to_error::Segment;
    // A missing field: the section lacking it is left out (its problem is
    // said), so the rest can be read. The path then names that section.
    let mut node = value;
    let mut segments = path.to_vec();
    let unknown = unknown_field(message).map(str::to_owned);
    // The path of an unknown field ends at the map holding it, or at it.
    if let (Some(name), Some(Segment::Map { key })) = (&unknown, segments.last()) {
        if key == name {
            segments.pop();
        }
    }
    let (leaf, parents) = match &unknown {
        Some(name) => Some((Segment::Map { key: name.clone() }, segments.as_slice())),
        None => segments.split_last().map(|(l, p)| (l.clone(), p)),
    }?;
    for segment in parents {
        let next = match (segment, node) {
            (Segment::Map { key }, serde_yaml_ng::Value::Mapping(map)) => map.get_mut(key.as_str()),
            (Segment::Seq { index }, serde_yaml_ng::Value::Sequence(seq)) => seq.get_mut(*index),
            _ => None,
        };
        node = next?;
    }
    match (leaf, node) {
        (Segment::Map { key }, serde_yaml_ng::Value::Mapping(map)) => {
            map.remove(key.as_str()).map(|_| LeftOut::Key)
        }
        (Segment::Seq { index }, serde_yaml_ng::Value::Sequence(seq)) if index < seq.len() => {
            seq.remove(index);
            Some(LeftOut::Item {
                parents: parents.to_vec(),
                index,
            })
        }
        _ => None,
    }
}

/// `path` as it was in the file, before the list items in `removed` (each
/// a list's path in the file and the item's index there, in the order they
/// were left out) were taken out.
fn as_in_file(
    path: &[serde_path_to_error::Segment],
    removed: &[(String, usize)],
) -> Vec<serde_path_to_error::Segment> {
    use serde_path_to_error::Segment;
    let mut out: Vec<Segment> = Vec::with_capacity(path.len());
    for segment in path {
        let segment = match segment {
            Segment::Seq { index } => {
                let list = path_text(&out);
                let mut gone: Vec<usize> = removed
                    .iter()
                    .filter(|(at, _)| *at == list)
                    .map(|(_, i)| *i)
                    .collect();
                gone.sort_unstable();
                let mut index = *index;
                for i in gone {
                    if i <= index {
                        index += 1;
                    }
                }
                Segment::Seq { index }
            }
            other => other.clone(),
        };
        out.push(segment);
    }
    out
}

/// A path written as serde_path_to_error writes it (`a.b[0].c`), or
/// `(top level)`.
fn path_text(path: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Segment::Enum { variant } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(variant);
            }
            Segment::Unknown => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push('?');
            }
        }
    }
    if text.is_empty() {
        "(top level)".to_owned()
    } else {
        text
    }
}

/// The line (from 1) of the last key `path` names in `text`, found by
/// following the keys down the file (each after the one before).
fn line_of(text: &str, path: &[serde_path_to_error::Segment], message: &str) -> Option<usize> {
    use serde_path_to_error::Segment;
    let mut steps: Vec<Segment> = path.to_vec();
    if let Some(name) = unknown_field(message) {
        if !matches!(steps.last(), Some(Segment::Map { key }) if key == name) {
            steps.push(Segment::Map {
                key: name.to_owned(),
            });
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut from = 0;
    let mut found = None;
    for step in &steps {
        let at = match step {
            Segment::Map { key } => (from..lines.len()).find(|&i| {
                let line = lines[i].trim_start().trim_start_matches("- ");
                line.starts_with(&format!("{key}:"))
                    || line.starts_with(&format!("{key} :"))
                    || lines[i].contains(&format!("{{{key}:"))
                    || lines[i].contains(&format!(", {key}:"))
                    || lines[i].contains(&format!("{{ {key}:"))
            })?,
            // The item `index` of a block list: the list's items start with
            // `- ` at the indentation of its first item.
            Segment::Seq { index } => {
                let first =
                    (from + 1..lines.len()).find(|&i| lines[i].trim_start().starts_with("- "))?;
                let depth = indent(lines[first]);
                (first..lines.len())
                    .filter(|&i| {
                        indent(lines[i]) == depth && lines[i].trim_start().starts_with("- ")
                    })
                    .nth(*index)?
            }
            _ => continue,
        };
        found = Some(at + 1);
        from = at;
    }
    found
}

// The `metrics:` section (served by `metrics_listener`).

/// The default metrics address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9095";

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9095))
}

/// `metrics:`: where `/metrics` is served. Without the section there is no
/// metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Address of the listener (default `127.0.0.1:9095`).
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    /// Serve TLS with this certificate and key instead of plain HTTP.
    pub tls: Option<MetricsTls>,
}

/// TLS of the metrics listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `path`, relative to `base` unless it is absolute.
pub(crate) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl MetricsConfig {
    /// Every problem in the section, `prefix` being its path.
    pub fn validate(&self, prefix: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(tls) = &self.tls {
            proxy_core::config::check_cert_and_key(
                &mut problems,
                (
                    &format!("{prefix}.tls.certFile"),
                    &resolve(base, &tls.cert_file),
                ),
                (
                    &format!("{prefix}.tls.keyFile"),
                    &resolve(base, &tls.key_file),
                ),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn ldap_without_issued_tokens_is_warned_about_naming_the_login() {
        let base = "tls: {certFile: a, keyFile: b}\nauthentication:\n  ldap: {url: 'ldaps://d', bindDN: x, bindPasswordFile: p, userSearch: {baseDN: b, filter: '(uid={username})'}}\n";
        let config = FileConfig::parse(base).unwrap();
        let warning = config
            .warnings()
            .into_iter()
            .find(|w| w.field == "authentication.issuedTokens")
            .expect("a warning");
        assert!(
            warning.message.contains("authproxy login ldap"),
            "{}",
            warning.message
        );
        let with_tokens = FileConfig::parse(&format!(
            "{base}  issuedTokens: {{issuer: i, signingKeyFiles: [k]}}\n"
        ))
        .unwrap();
        assert!(with_tokens
            .warnings()
            .iter()
            .all(|w| w.field != "authentication.issuedTokens"));
    }

    #[test]
    fn exchange_sources_that_nothing_provides_are_warned_about() {
        let warnings = |authn: &str| -> Vec<String> {
            FileConfig::parse(&format!(
                "tls: {{certFile: a, keyFile: b}}\nauthentication:\n{authn}"
            ))
            .unwrap()
            .warnings()
            .into_iter()
            .map(|w| w.to_string())
            .collect()
        };
        let ldap = "  ldap: {url: 'ldaps://d', bindDN: x, bindPasswordFile: p, userSearch: {baseDN: b, filter: '(uid={username})'}}\n";
        let tokens = "  staticTokens: {file: t.csv}\n";
        // LDAP with the default sources: nothing to say.
        let found = warnings(&format!(
            "{ldap}  issuedTokens: {{issuer: i, signingKeyFiles: [k]}}\n"
        ));
        assert!(!found.iter().any(|w| w.contains("exchange")), "{found:?}");
        // A source named that nothing provides; LDAP left out of the list.
        let found = warnings(&format!(
            "{ldap}{tokens}  issuedTokens: {{issuer: i, signingKeyFiles: [k], exchangeFrom: [staticToken, oidc]}}\n"
        ));
        assert!(
            found.iter().any(|w| w.starts_with(
                "authentication.issuedTokens.exchangeFrom[1]: oidc is not configured"
            )),
            "{found:?}"
        );
        assert!(
            found.iter().any(|w| w.starts_with("authentication.issuedTokens.exchangeFrom: leaves out ldap")),
            "{found:?}"
        );
        // Static tokens only, default sources (ldap, oidc): never issued.
        let found = warnings(&format!(
            "{tokens}  issuedTokens: {{issuer: i, signingKeyFiles: [k]}}\n"
        ));
        assert!(
            found.iter().any(|w| w.contains("no token is ever issued")),
            "{found:?}"
        );
    }

    #[test]
    fn problems_in_list_items_are_named_by_their_place_in_the_file() {
        let text = "tls: {certFile: a, keyFile: b}\n\
                    authentication:\n\
                    \x20 jwt:\n\
                    \x20 - claimMappings: {username: {claim: sub, prefix: ''}}\n\
                    \x20 - issuer: {url: 'https://b', audiences: [k]}\n\
                    \x20   claimMappings: {username: {claim: sub, prefix: ''}}\n\
                    \x20   colour: red\n";
        let problems = FileConfig::parse_all(text).unwrap_err();
        let find = |field: &str| {
            problems
                .iter()
                .find(|(f, _)| f == field)
                .unwrap_or_else(|| panic!("{field} not among {problems:?}"))
        };
        assert!(find("authentication.jwt[0]")
            .1
            .contains("missing field `issuer`"));
        let (_, colour) = find("authentication.jwt[1].colour");
        assert!(colour.contains("unknown field `colour`"), "{colour}");
        assert!(colour.contains("line 7"), "{colour}");
    }

    #[test]
    fn every_structural_problem_is_named_in_one_run_with_its_line() {
        let text = "listen: 127.0.0.1:8443\n\
                    listn: 1\n\
                    tls: {certFile: a, keyFile: b}\n\
                    authentication:\n  staticTokens:\n    fille: t.csv\n\
                    limits:\n  maxConnections: many\n\
                    logging: {format: text, colour: true}\n";
        let problems = FileConfig::parse_all(text).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        for (field, words, line) in [
            ("listn", "unknown field `listn`", 2),
            ("authentication.staticTokens", "unknown field `fille`", 6),
            ("limits.maxConnections", "invalid type", 8),
            ("logging", "unknown field `colour`", 9),
        ] {
            let (_, message) = problems
                .iter()
                .find(|(f, m)| f.starts_with(field) && m.contains(words))
                .unwrap_or_else(|| panic!("{field} ({words}) not among {problems:?}"));
            assert!(
                message.contains(&format!("line {line}")),
                "{field}: {message}"
            );
        }
        assert!(fields.len() >= 4, "{problems:?}");
        // A file that is not YAML at all: one problem, its own.
        assert_eq!(FileConfig::parse_all("a: [").unwrap_err().len(), 1);
    }
    use super::*;

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let (field, message) = FileConfig::parse(
            "tls: {certFile: a, keyFile: b}\nauthentication: {}\nupstream: {urll: x}\n",
        )
        .unwrap_err();
        assert_eq!(field, "upstream.urll");
        assert!(message.contains("unknown field"), "{message}");
    }

    /// Writes `tls.crt` and `tls.key` in `dir`: a certificate and its key.
    fn write_serving_pair(dir: &Path) {
        let served = crate::pki::ThrowawayCa::new("test CA")
            .unwrap()
            .issue_server("proxy")
            .unwrap();
        std::fs::write(dir.join("tls.crt"), served.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), served.key_pem).unwrap();
    }

    /// The problems of a config with `tls` files that exist, `authentication: {}`
    /// and `rest`, in a folder with `ca.crt` and `token`, other than the
    /// missing authenticator.
    fn problems_with(rest: &str) -> Vec<Problem> {
        let dir = tempfile::tempdir().unwrap();
        // `a` holds a certificate and its key, as tls.certFile and
        // tls.keyFile both name it.
        let ca = crate::pki::ThrowawayCa::new("test CA").unwrap();
        let served = ca.issue_server("proxy").unwrap();
        std::fs::write(
            dir.path().join("a"),
            format!("{}{}", served.cert_pem, served.key_pem),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.ca_pem()).unwrap();
        std::fs::write(dir.path().join("token"), "x").unwrap();
        std::fs::write(
            dir.path().join("agent.token"),
            "a-long-random-registration-token",
        )
        .unwrap();
        let text = format!("tls: {{certFile: a, keyFile: a}}\nauthentication: {{}}\n{rest}");
        let config = FileConfig::parse(&text).unwrap();
        let mut problems = config.validate(dir.path());
        // No authenticator is configured: not what these tests look at.
        problems.retain(|p| p.field != "authentication");
        problems
    }

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn the_listeners_pairs_and_cas_are_checked_for_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        write_serving_pair(dir.path());
        let other = crate::pki::ThrowawayCa::new("other CA")
            .unwrap()
            .issue_server("other")
            .unwrap();
        std::fs::write(dir.path().join("other.key"), other.key_pem).unwrap();
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"devs\"\n").unwrap();
        let text = "tls: {certFile: tls.crt, keyFile: other.key, clientCAFile: empty.crt}\n\
                    authentication: {staticTokens: {file: tokens.csv}}\n\
                    kubeconfig: {caFile: empty.crt}\n\
                    metrics: {listen: '127.0.0.1:0', tls: {certFile: tls.crt, keyFile: tls.crt}}\n";
        let config = FileConfig::parse(text).unwrap();
        let problems = config.validate(dir.path());
        assert_eq!(
            fields(&problems),
            [
                "tls.keyFile",
                "tls.clientCAFile",
                "kubeconfig.caFile",
                "metrics.tls.keyFile"
            ],
            "{problems:?}"
        );
        assert!(
            problems[0]
                .message
                .contains("does not belong to the certificate"),
            "{problems:?}"
        );
        // A kubeconfig to serve, and no login to name in it.
        let warnings = config.warnings();
        assert!(
            warnings.iter().any(|w| w.field == "kubeconfig"),
            "{warnings:?}"
        );
    }

    #[test]
    fn named_clusters_validate_with_their_paths() {
        let ok = problems_with(
            "upstreams:\n\
             - {name: east, url: 'https://10.0.0.1:6443', caFile: ca.crt, tokenFile: token}\n\
             - {name: west-2, url: 'https://10.0.0.2:6443', caFile: ca.crt, tokenFile: token}\n",
        );
        assert!(ok.is_empty(), "{ok:?}");
        let problems = problems_with(
            "upstreams:\n\
             - {name: east, url: 'https://10.0.0.1:6443'}\n\
             - {name: east, url: 'https://10.0.0.2:6443'}\n\
             - {name: East_1, url: 'https://10.0.0.3:6443'}\n\
             - {url: 'https://10.0.0.4:6443', caFile: missing.crt}\n\
             - {name: bare}\n\
             - {name: plain, url: 'http://10.0.0.6'}\n",
        );
        assert_eq!(
            fields(&problems),
            [
                "upstreams[1].name",
                "upstreams[2].name",
                "upstreams[3].caFile",
                "upstreams[3].name",
                "upstreams[4].url",
                "upstreams[5].url",
            ],
            "{problems:?}"
        );
        assert!(
            problems[0]
                .message
                .contains("also the name of upstreams[0]"),
            "{problems:?}"
        );
    }

    #[test]
    fn contradictory_upstream_settings_are_caught() {
        let problems =
            problems_with("upstream: {name: east, url: 'https://10.0.0.1:6443'}\nupstreams: []\n");
        assert_eq!(
            fields(&problems),
            ["upstream.name", "upstreams"],
            "{problems:?}"
        );
        // The stream check runs for every cluster's pool.
        let problems = problems_with(
            "upstreams: [{name: east, url: 'https://10.0.0.1:6443', maxConnections: 1, maxStreamsPerConnection: 10}]\n\
             limits: {longRunning: {perUser: 5, total: 10}}\n",
        );
        assert_eq!(
            fields(&problems),
            ["limits.longRunning.total"],
            "{problems:?}"
        );
        assert!(
            problems[0].message.contains("upstreams[0].maxConnections"),
            "{problems:?}"
        );
    }

    #[test]
    fn agent_clusters_need_a_token_file_and_nothing_of_a_direct_connection() {
        // A good one: a token file, nothing else.
        let problems = problems_with(
            "upstreams: [{name: edge, via: agent, agent: {tokenFile: agent.token}}]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let problems = problems_with(
            "upstreams:\n\
             - {name: a, via: agent}\n\
             - {name: b, via: agent, agent: {tokenFile: missing}}\n\
             - {name: e, via: agent, agent: {tokenFile: token}}\n\
             - {name: c, via: agent, url: 'https://10.0.0.1:6443', caFile: ca.crt, agent: {tokenFile: agent.token}}\n\
             - {name: d, url: 'https://10.0.0.1:6443', agent: {tokenFile: agent.token}}\n\
             upstream: {via: agent}\n",
        );
        assert_eq!(
            fields(&problems),
            [
                "upstream.via",
                "upstreams[0].agent.tokenFile",
                "upstreams[1].agent.tokenFile",
                "upstreams[2].agent.tokenFile",
                "upstreams[3].url",
                "upstreams[3].caFile",
                "upstreams[4].agent",
            ],
            "{problems:?}"
        );
        assert!(problems[1].message.contains("is required"), "{problems:?}");
        assert!(problems[2].message.contains("missing"), "{problems:?}");
        assert!(
            problems[3].message.contains("shorter than 16"),
            "{problems:?}"
        );
        assert!(
            problems[4].message.contains("contradicts via: agent"),
            "{problems:?}"
        );
        // An unknown field in the agent section is refused by name.
        let error = FileConfig::parse(
            "tls: {certFile: a, keyFile: a}\nauthentication: {}\n\
             upstreams: [{name: edge, via: agent, agent: {tokenFile: t, token: x}}]\n",
        )
        .unwrap_err();
        assert!(error.0.contains("upstreams[0].agent"), "{error:?}");
        let error = FileConfig::parse(
            "tls: {certFile: a, keyFile: a}\nauthentication: {}\n\
             upstreams: [{name: edge, via: tunnel}]\n",
        )
        .unwrap_err();
        assert!(error.0.contains("upstreams[0].via"), "{error:?}");
    }

    #[test]
    fn agent_clusters_sharing_a_registration_token_are_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        write_serving_pair(dir.path());
        std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"devs\"\n").unwrap();
        let token = "shared-registration-token-4f9a1c";
        std::fs::write(dir.path().join("a.token"), token).unwrap();
        // The same token, written otherwise (the surrounding whitespace goes).
        std::fs::write(dir.path().join("b.token"), format!("  {token}\n")).unwrap();
        std::fs::write(dir.path().join("c.token"), "another-registration-token-77").unwrap();
        let path = dir.path().join("authproxy.yaml");
        std::fs::write(
            &path,
            "tls: {certFile: tls.crt, keyFile: tls.key}\n\
             authentication: {staticTokens: {file: tokens.csv}}\n\
             upstreams:\n\
             - {name: a, via: agent, agent: {tokenFile: a.token}}\n\
             - {name: b, via: agent, agent: {tokenFile: b.token}}\n\
             - {name: c, via: agent, agent: {tokenFile: c.token}}\n\
             - {name: d, via: agent, agent: {tokenFile: a.token}}\n",
        )
        .unwrap();
        // Loading (at start, in check-config, and for every reload) refuses it.
        let error = FileConfig::load(&path).unwrap_err();
        let fields: Vec<&str> = error.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "upstreams[1].agent.tokenFile",
                "upstreams[3].agent.tokenFile"
            ],
            "{error}"
        );
        for problem in &error.problems {
            assert!(
                problem
                    .message
                    .contains("same registration token as upstreams[0]"),
                "{problem:?}"
            );
        }
        let text = error.to_string();
        assert!(!text.contains(token), "{text}");
        assert!(!text.contains("shared-registration"), "{text}");
    }

    #[test]
    fn only_upstreams_means_no_default_upstream() {
        let config = FileConfig::parse(
            "tls: {certFile: a, keyFile: a}\nauthentication: {}\n\
             upstreams: [{name: east, url: 'https://10.0.0.1:6443'}]\n",
        )
        .unwrap();
        assert!(config.default_upstream().is_none());
        assert_eq!(config.named_upstreams().len(), 1);
        let config =
            FileConfig::parse("tls: {certFile: a, keyFile: a}\nauthentication: {}\n").unwrap();
        assert!(config.default_upstream().is_some(), "in-cluster default");
    }

    #[test]
    fn front_proxy_mode_refuses_contradictory_upstream_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authproxy.yaml");
        write_serving_pair(dir.path());
        std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"devs\"\n").unwrap();
        let check = |upstream: &str, identity: &str| {
            std::fs::write(
                &path,
                format!("tls: {{certFile: tls.crt, keyFile: tls.key}}\nupstream: {upstream}\nauthentication: {{staticTokens: {{file: tokens.csv}}}}\nidentityHeaders: {identity}\n"),
            )
            .unwrap();
            FileConfig::parse(&std::fs::read_to_string(&path).unwrap())
                .unwrap()
                .validate(dir.path())
                .into_iter()
                .map(|p| p.field)
                .collect::<Vec<_>>()
        };
        // No client certificate, and a token that would win over the headers.
        let fields = check(
            "{url: 'https://k', tokenFile: tls.key}",
            "{mode: frontProxy}",
        );
        assert!(
            fields.contains(&"upstream.clientCertFile".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"upstream.tokenFile".to_string()),
            "{fields:?}"
        );
        // The in-cluster default would send the service account's token.
        let fields = check("{}", "{mode: frontProxy}");
        assert!(fields.contains(&"upstream.url".to_string()), "{fields:?}");
        // Header names that would collide with impersonation.
        let fields = check(
            "{url: 'https://k', clientCertFile: tls.crt, clientKeyFile: tls.key}",
            "{mode: frontProxy, userHeader: Impersonate-User}",
        );
        assert_eq!(fields, ["identityHeaders.userHeader"]);
        // Consistent: nothing to say.
        let fields = check(
            "{url: 'https://k', clientCertFile: tls.crt, clientKeyFile: tls.key}",
            "{mode: frontProxy}",
        );
        assert!(fields.is_empty(), "{fields:?}");
        // The same upstream without front-proxy mode is fine too.
        let fields = check(
            "{url: 'https://k', tokenFile: tls.key}",
            "{mode: impersonate}",
        );
        assert!(fields.is_empty(), "{fields:?}");
    }

    #[test]
    fn front_proxy_mode_holds_a_kubeconfig_upstream_to_what_it_resolves_to() {
        let dir = tempfile::tempdir().unwrap();
        write_serving_pair(dir.path());
        std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"devs\"\n").unwrap();
        let client = crate::pki::ThrowawayCa::new("front-proxy-ca")
            .unwrap()
            .issue_client("authproxy", None)
            .unwrap();
        std::fs::write(dir.path().join("proxy.crt"), &client.cert_pem).unwrap();
        std::fs::write(dir.path().join("proxy.key"), &client.key_pem).unwrap();
        std::fs::write(dir.path().join("sa-token"), "a-service-account-token").unwrap();
        let check = |user: &str, identity: &str| {
            std::fs::write(
                dir.path().join("upstream.kubeconfig"),
                format!("current-context: c\nclusters:\n- name: k\n  cluster: {{server: 'https://k:6443'}}\nusers:\n- name: u\n  user: {user}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\n"),
            )
            .unwrap();
            let text = format!("tls: {{certFile: tls.crt, keyFile: tls.key}}\nupstream: {{kubeconfig: {{path: upstream.kubeconfig}}}}\nauthentication: {{staticTokens: {{file: tokens.csv}}}}\nidentityHeaders: {identity}\n");
            FileConfig::parse(&text)
                .unwrap()
                .validate(dir.path())
                .into_iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
        };
        // A token (inline or as a file) would make every user the proxy.
        for user in ["{token: a-service-account-token}", "{tokenFile: sa-token}"] {
            let found = check(user, "{mode: frontProxy}");
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with("upstream.kubeconfig:") && p.contains("token")),
                "{user}: {found:?}"
            );
            assert!(
                found.iter().any(|p| p.contains("client certificate")),
                "{user}: {found:?}"
            );
            assert!(
                !found.iter().any(|p| p.contains("a-service-account-token")),
                "{found:?}"
            );
            assert!(check(user, "{mode: impersonate}").is_empty(), "{user}");
        }
        // An exec plugin would be skipped, and requests go without a credential.
        let found = check("{exec: {command: get-token}}", "{mode: impersonate}");
        assert!(
            found.iter().any(|p| p.contains("exec credential plugin")),
            "{found:?}"
        );
        // A client certificate alone is what front-proxy mode needs.
        let found = check(
            "{client-certificate: proxy.crt, client-key: proxy.key}",
            "{mode: frontProxy}",
        );
        assert!(found.is_empty(), "{found:?}");
        // The same, with a token beside it, is refused.
        let found = check(
            "{client-certificate: proxy.crt, client-key: proxy.key, token: x}",
            "{mode: frontProxy}",
        );
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn an_error_at_an_empty_top_level_key_still_names_a_field() {
        let (field, _) = FileConfig::parse(" ?").unwrap_err();
        assert_eq!(field, "(top level)");
    }

    #[test]
    fn every_problem_is_reported_with_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authproxy.yaml");
        std::fs::write(&path, "tls: {certFile: missing.crt, keyFile: missing.key}\nupstream: {url: 'http://x'}\nauthentication: {}\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err();
        let text = err.to_string();
        for field in [
            "tls.certFile",
            "tls.keyFile",
            "upstream.url",
            "authentication",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        assert!(text.contains("authproxy.yaml"), "{text}");
    }

    #[test]
    fn the_example_issued_tokens_block_parses_and_validates() {
        let example = include_str!("../example/authproxy.yaml");
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("  # ") {
                Some(rest) if line.contains("issuedTokens:") || rest.starts_with("  ") => {
                    format!("  {rest}\n")
                }
                _ => format!("{line}\n"),
            })
            .collect();
        let config = FileConfig::parse(&uncommented).unwrap();
        let issued = config.authentication.issued_tokens.expect("issuedTokens");
        assert!(issued.problems("authentication.issuedTokens").is_empty());
        assert_eq!(
            issued.exchange_sources(),
            proxy_core::config::DEFAULT_EXCHANGE_FROM
        );
        assert_eq!(issued.exchange_limits.resolved(), (60, 10));
        assert_eq!(
            config.webhook.failed_reviews_per_minute(),
            DEFAULT_FAILED_REVIEWS_PER_MINUTE
        );
    }

    #[test]
    fn issued_tokens_cannot_be_an_exchange_source() {
        let config = FileConfig::parse(
            "tls: {certFile: a, keyFile: b}\nauthentication:\n  issuedTokens: {signingKeyFiles: [k], exchangeFrom: [oidc, issued]}\n",
        )
        .unwrap();
        let problems = config
            .authentication
            .issued_tokens
            .unwrap()
            .problems("authentication.issuedTokens");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].field,
            "authentication.issuedTokens.exchangeFrom[1]"
        );
    }

    #[test]
    fn long_running_total_must_leave_upstream_streams_for_short_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authproxy.yaml");
        std::fs::write(
            &path,
            "tls: {certFile: a, keyFile: b}\nupstream: {url: 'https://x', maxConnections: 2}\n\
             authentication: {}\nlimits: {longRunning: {perUser: 10, total: 200}}\n",
        )
        .unwrap();
        let text = FileConfig::load(&path).unwrap_err().to_string();
        assert!(text.contains("limits.longRunning.total"), "{text}");
        assert!(text.contains("all 200 upstream streams"), "{text}");
    }

    #[test]
    fn zero_caps_and_pool_sizes_are_named_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authproxy.yaml");
        std::fs::write(
            &path,
            "tls: {certFile: a, keyFile: b}\nupstream: {url: 'https://x', maxConnections: 0, maxStreamsPerConnection: 0, keepAliveTimeout: 0s}\n\
             authentication: {}\nlimits: {longRunning: {perUser: 20, total: 10}}\n",
        )
        .unwrap();
        let text = FileConfig::load(&path).unwrap_err().to_string();
        for field in [
            "upstream.maxConnections",
            "upstream.maxStreamsPerConnection",
            "upstream.keepAliveTimeout",
            "limits.longRunning.perUser",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
    }

    #[test]
    fn metrics_and_audit_problems_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authproxy.yaml");
        std::fs::write(dir.path().join("tokens.csv"), "t,alice,1,\"devs\"\n").unwrap();
        std::fs::write(&path, "tls: {certFile: tokens.csv, keyFile: tokens.csv}\nupstream: {url: 'https://x'}\nauthentication: {staticTokens: {file: tokens.csv}}\nmetrics: {tls: {certFile: m.crt, keyFile: m.key}}\naudit: {path: nowhere/audit.log, queueSize: 0, omitPaths: [livez]}\n").unwrap();
        let text = FileConfig::load(&path).unwrap_err().to_string();
        for field in [
            "metrics.tls.certFile",
            "metrics.tls.keyFile",
            "audit.path",
            "audit.queueSize",
            "audit.omitPaths[0]",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        let (field, _) = FileConfig::parse(
            "tls: {certFile: a, keyFile: b}\nauthentication: {}\naudit: {path: x, level: RequestResponse}\n",
        )
        .unwrap_err();
        assert_eq!(field, "audit.level");
    }
}
