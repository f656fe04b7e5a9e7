//! `authproxy agent`, and the proxy's side of `via: agent` clusters: the
//! command line of the agent (see [`proxy_core::tunnel::agent`]), the
//! stack of a cluster reached through agent tunnels, and the connections
//! the listener accepts for agents only past its client cap.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use proxy_core::config::{KubeconfigRef, UpstreamConfig};
use proxy_core::tunnel::agent::{Agent, AgentSettings};
use proxy_core::tunnel::backoff::Backoff;
use proxy_core::tunnel::budget::AgentConnections;
use proxy_core::tunnel::{AgentEndpoint, AgentService};
use proxy_core::upstream::{Backend, Upstream};
use proxy_core::NestedImpersonationLayer;

use crate::config::FileConfig;
use crate::start_error::StartError;

/// The stack of the `via: agent` cluster `name` (section `section`):
/// registered with `agents`, its requests sent through its tunnels. A
/// caller's own `Impersonate-*` headers are handled by the layer `nested`
/// makes over those tunnels: its access reviews go to that cluster's API
/// server the way the request itself would.
pub fn agent_cluster(
    agents: &mut AgentEndpoint,
    section: &str,
    name: &str,
    upstream: &UpstreamConfig,
    config: &FileConfig,
    base: &Path,
    nested: &dyn Fn(Backend<Full<Bytes>>) -> NestedImpersonationLayer,
) -> Result<proxy_core::Cluster, StartError> {
    let token_file = upstream
        .agent
        .as_ref()
        .map(|a| a.token_file_path(base))
        .ok_or_else(|| StartError::Refused {
            field: "upstreams[].agent.tokenFile",
            message: format!("{section}.agent.tokenFile is required with via: agent"),
        })?;
    let tunnels = agents
        .add_cluster(name, token_file, config.reload_interval())
        .map_err(|e| StartError::Refused {
            field: "upstreams[].agent.tokenFile",
            message: format!("{section}.agent.tokenFile: {e}"),
        })?;
    Ok(proxy_core::Cluster {
        nested: nested(AgentService::new(tunnels.clone()).into()),
        upstream: AgentService::new(tunnels).into(),
    })
}

/// The answer to anything but a registration on a connection accepted for
/// agents only (past `limits.maxConnections`): 503, and the connection closes.
pub fn agents_only() -> http::Response<proxy_core::ProxyBody> {
    let mut response = proxy_core::status::Status::failure(
        http::StatusCode::SERVICE_UNAVAILABLE,
        proxy_core::status::Reason::ServiceUnavailable,
        "the proxy is at its connection cap (limits.maxConnections); try again later",
    )
    .into_response();
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// A place among the agent connections `agents` (pending while none is
/// free), for a connection accepted past the client cap; `None` when there
/// are none.
pub async fn agent_place(
    agents: &Option<AgentConnections>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    agents.as_ref()?.clone().acquire_owned().await.ok()
}

/// `authproxy agent`: every flag can also be set by its environment variable
/// (for a Deployment).
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The proxy's URL (`https://host:port`); a host name with several
    /// addresses (a headless Service) gets a tunnel to each.
    #[arg(long, env = "AUTHPROXY_PROXY_URL")]
    pub proxy_url: String,
    /// CA bundle of the proxy's certificate (default: the system bundle).
    #[arg(long, env = "AUTHPROXY_PROXY_CA_FILE")]
    pub proxy_ca_file: Option<PathBuf>,
    /// The cluster's registration token (the file given as the cluster's
    /// `agent.tokenFile` on the proxy); read at each registration.
    #[arg(long, env = "AUTHPROXY_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The name of this cluster in the proxy's `upstreams:`.
    #[arg(long, env = "AUTHPROXY_CLUSTER")]
    pub cluster: String,
    /// Reach the local API server with this kubeconfig instead of the
    /// in-cluster service account.
    #[arg(long, env = "AUTHPROXY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current-context).
    #[arg(long, env = "AUTHPROXY_CONTEXT", requires = "kubeconfig")]
    pub context: Option<String>,
    /// How often the proxy's host name is looked up again.
    #[arg(long, env = "AUTHPROXY_RESOLVE_INTERVAL", value_parser = humantime::parse_duration,
          default_value = "30s")]
    pub resolve_interval: Duration,
    /// Time allowed to connect and register.
    #[arg(long, env = "AUTHPROXY_CONNECT_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "10s")]
    pub connect_timeout: Duration,
    /// The first ceiling of the wait before reconnecting (doubles up to --backoff-max).
    #[arg(long, env = "AUTHPROXY_BACKOFF_BASE", value_parser = humantime::parse_duration,
          default_value = "500ms")]
    pub backoff_base: Duration,
    /// The largest wait before reconnecting.
    #[arg(long, env = "AUTHPROXY_BACKOFF_MAX", value_parser = humantime::parse_duration,
          default_value = "30s")]
    pub backoff_max: Duration,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "AUTHPROXY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Log level (a tracing filter; `RUST_LOG` wins).
    #[arg(long, env = "AUTHPROXY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl AgentArgs {
    /// Builds the agent: reads the proxy CA and the local API server's
    /// settings (errors name the flag and the file). Call within a runtime.
    pub fn build(&self) -> anyhow::Result<Agent> {
        if self.resolve_interval.is_zero() {
            anyhow::bail!("--resolve-interval must be more than 0s");
        }
        let proxy_url = self
            .proxy_url
            .parse::<http::Uri>()
            .with_context(|| format!("--proxy-url {:?}", self.proxy_url))?;
        if proxy_url.scheme() != Some(&http::uri::Scheme::HTTPS) || proxy_url.host().is_none() {
            anyhow::bail!(
                "--proxy-url {:?}: must be an https:// URL with a host",
                self.proxy_url
            );
        }
        proxy_core::upstream::router::validate_name(&self.cluster)
            .with_context(|| format!("--cluster {:?}", self.cluster))?;
        let proxy_ca_pem = match &self.proxy_ca_file {
            Some(path) => Some(
                proxy_core::tls::read_file(path)
                    .with_context(|| format!("--proxy-ca-file {}", path.display()))?,
            ),
            None => None,
        };
        std::fs::metadata(&self.token_file)
            .with_context(|| format!("--token-file {}", self.token_file.display()))?;
        let local = UpstreamConfig {
            kubeconfig: self.kubeconfig.as_ref().map(|path| KubeconfigRef {
                path: path.clone(),
                context: self.context.clone(),
            }),
            ..UpstreamConfig::default()
        };
        let section = if self.kubeconfig.is_some() {
            "--kubeconfig"
        } else {
            "the local API server (in-cluster; elsewhere pass --kubeconfig)"
        };
        let base = std::env::current_dir().unwrap_or_default();
        let options = local
            .to_options(section, &base)
            .map_err(|e| anyhow::anyhow!("{section}: {}", e.message))?;
        let upstream = Upstream::new(options).with_context(|| section.to_owned())?;
        if let Some(ca) = local.ca_file_path(&base) {
            upstream
                .watch_ca_file(
                    ca,
                    proxy_core::reload::DEFAULT_INTERVAL,
                    proxy_core::reload::ReloadReporter::default(),
                )
                .with_context(|| section.to_owned())?;
        }
        let settings = AgentSettings {
            proxy_url,
            proxy_ca_pem,
            token_file: self.token_file.clone(),
            cluster: self.cluster.clone(),
            resolve_interval: self.resolve_interval,
            connect_timeout: self.connect_timeout,
            backoff: Backoff::new(self.backoff_base, self.backoff_max),
        };
        Ok(Agent::new(settings, upstream)?)
    }
}
