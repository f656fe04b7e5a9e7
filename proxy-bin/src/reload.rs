//! Live reload of the configuration file's authentication part.
//!
//! The file (and the kube `AuthenticationConfiguration` file it names) is
//! re-read every `reloadInterval` and on SIGHUP. A changed file is loaded and
//! validated whole; the authenticator chain is built from it and, once every
//! authenticator in it is ready (OIDC keys loaded), swapped in: requests
//! already being authenticated finish with the old chain. A file that does
//! not load or build leaves the old chain serving; the refusal is logged
//! with the file and field and counted in `authproxy_config_reloads_total`.
//!
//! Settings that a running listener cannot change (addresses, TLS file
//! paths, upstream, upstreams, limits, logging, metrics, audit, webhook, issued-token
//! settings) are logged as needing a restart and otherwise ignored; the
//! contents of the TLS, CA, token and key files are watched on their own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proxy_core::authn::oidc::OidcFlags;
use proxy_core::authn::{Chain, IssuedTokens, SwappableChain};
use proxy_core::config::Reloading;
use proxy_core::observe::metrics::Metrics;
use proxy_core::reload::{watch_files_async, FileWatch, ReloadKind};

use crate::config::FileConfig;

/// Longest a rebuilt chain may take to become ready (OIDC discovery and
/// keys) before the reload is refused and the old chain stays.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the running configuration came from, so it can be read again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The configuration file.
    pub path: PathBuf,
    /// The `--oidc-*` flags it was loaded with.
    pub flags: OidcFlags,
}

/// The authenticator chain a listener asks, and what rebuilding it needs.
#[derive(Debug, Clone)]
pub struct LiveAuthentication {
    /// The chain in force; the listener's chain holds only this.
    pub chain: Arc<SwappableChain>,
    /// The token issuer, kept across rebuilds (its key files are watched).
    pub issuer: Option<Arc<IssuedTokens>>,
    /// The revocation store the issuer's tokens are checked against, watched
    /// while this lives (`issuedTokens.revocation`; read at start).
    pub revocation: Option<Arc<crate::revocation::Revocation>>,
    /// Metrics that instrument each rebuilt chain and count reloads.
    pub metrics: Option<Metrics>,
    /// How files are watched.
    pub reloading: Reloading,
}

impl LiveAuthentication {
    /// Builds the first chain from `config` (instrumented with `metrics`).
    pub fn build(
        config: &FileConfig,
        base: &Path,
        metrics: Option<Metrics>,
    ) -> Result<(LiveAuthentication, Chain), proxy_core::config::BuildError> {
        let reloading = Reloading {
            interval: config.reload_interval(),
            reporter: metrics
                .as_ref()
                .map(Metrics::reload_reporter)
                .unwrap_or_default(),
        };
        let (chain, issuer) =
            config
                .authentication
                .build_reloading("authentication", base, &reloading, None)?;
        let revocation = match &issuer {
            Some(issuer) => crate::revocation::start(config, base, issuer)?,
            None => None,
        };
        if let (Some(metrics), Some(revocation)) = (&metrics, &revocation) {
            metrics.observe_revocations(revocation.revocations().counters().clone());
        }
        let chain = instrument(&metrics, chain);
        let swappable = SwappableChain::new(chain);
        let outer = Chain::new(vec![swappable.clone()]);
        // Registered once: scrapes read the chain in force through it.
        if let Some(metrics) = &metrics {
            metrics.observe_chain(&outer);
        }
        Ok((
            LiveAuthentication {
                chain: swappable,
                issuer,
                revocation,
                metrics,
                reloading,
            },
            outer,
        ))
    }

    /// Re-reads `source` whenever it (or its `authenticationConfigFile`)
    /// changes, and swaps in the chain it describes; `started` is the
    /// configuration the listener started with. Must be called within a
    /// tokio runtime; stops when the returned watch is dropped.
    pub fn watch(&self, source: ConfigSource, started: &FileConfig) -> FileWatch {
        let base = started.base_dir(&source.path);
        let mut paths = vec![source.path.clone()];
        if let Some(file) = &started.authentication.authentication_config_file {
            paths.push(if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            });
        }
        let initial = paths
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_default())
            .collect();
        let live = self.clone();
        let started = Arc::new(started.clone());
        let source = Arc::new(source);
        watch_files_async(
            paths,
            self.reloading.interval,
            initial,
            ReloadKind::Authentication,
            self.reloading.reporter.clone(),
            move |_contents| {
                let (live, started, source) = (live.clone(), started.clone(), source.clone());
                async move { live.reload(&source, &started).await }
            },
        )
    }

    async fn reload(&self, source: &ConfigSource, started: &FileConfig) -> Result<(), String> {
        let config = FileConfig::load_with(&source.path, &source.flags)
            .map_err(|e| e.to_string().replace('\n', ";"))?;
        // The watch follows the file the proxy started with: a chain built
        // from another one would not be re-read when that one changes.
        // Compared as resolved (`a.yaml` and `./a.yaml` are one file).
        let resolved = |config: &FileConfig| {
            let base = config.base_dir(&source.path);
            config
                .authentication
                .authentication_config_file
                .as_ref()
                // Lexically: following symlinks would see every ConfigMap
                // update (a new `..data` target) as another file.
                .map(|file| {
                    base.join(file)
                        .components()
                        .filter(|c| !matches!(c, std::path::Component::CurDir))
                        .collect::<std::path::PathBuf>()
                })
        };
        if resolved(&config) != resolved(started) {
            return Err(format!(
                "{}: authentication.authenticationConfigFile: another file needs a restart; \
                 the running chain keeps the one it was started with",
                source.path.display()
            ));
        }
        for field in needs_restart(started, &config) {
            tracing::warn!(file = %source.path.display(), field, "changed; needs restart to take effect");
        }
        let base = config.base_dir(&source.path);
        let (chain, _) = config
            .authentication
            .build_reloading(
                "authentication",
                &base,
                &self.reloading,
                self.issuer.clone(),
            )
            .map_err(|e| format!("{}: {e}", source.path.display()))?;
        let ready = async {
            while !chain.is_ready() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(READY_TIMEOUT, ready).await.is_err() {
            let waiting: Vec<&str> = chain
                .authenticators()
                .iter()
                .filter(|a| !a.is_ready())
                .map(|a| a.name())
                .collect();
            return Err(format!(
                "{}: authenticators not ready after {READY_TIMEOUT:?}: {}",
                source.path.display(),
                waiting.join(", ")
            ));
        }
        if let Some(metrics) = &self.metrics {
            metrics.retire_chain(&self.chain.current());
        }
        self.chain.swap(instrument(&self.metrics, chain));
        Ok(())
    }
}

/// `chain` with its answers counted, when there are metrics.
fn instrument(metrics: &Option<Metrics>, chain: Chain) -> Chain {
    match metrics {
        Some(metrics) => metrics.wrap_chain(&chain),
        None => chain,
    }
}

/// The fields of `new` that differ from `started` and a running proxy cannot
/// change. Compared through their `Debug` form (paths and settings; the
/// configuration holds no secrets, only the files that do).
pub fn needs_restart(started: &FileConfig, new: &FileConfig) -> Vec<&'static str> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut fields = Vec::new();
    let mut check = |field: &'static str, changed: bool| {
        if changed {
            fields.push(field);
        }
    };
    check("listen", differs(&started.listen, &new.listen));
    check("tls", differs(&started.tls, &new.tls));
    check("upstream", differs(&started.upstream, &new.upstream));
    check("upstreams", differs(&started.upstreams, &new.upstreams));
    check("logging", differs(&started.logging, &new.logging));
    check("limits", differs(&started.limits, &new.limits));
    check(
        "shutdownTimeout",
        differs(&started.shutdown_timeout, &new.shutdown_timeout),
    );
    check("metrics", differs(&started.metrics, &new.metrics));
    check("audit", differs(&started.audit, &new.audit));
    check("webhook", differs(&started.webhook, &new.webhook));
    check(
        "trustedProxies",
        differs(&started.trusted_proxies, &new.trusted_proxies),
    );
    check(
        "proxyProtocol",
        differs(&started.proxy_protocol, &new.proxy_protocol),
    );
    check(
        "callerImpersonation",
        differs(&started.caller_impersonation, &new.caller_impersonation),
    );
    check(
        "identityHeaders",
        differs(&started.identity_headers, &new.identity_headers),
    );
    check("kubeconfig", differs(&started.kubeconfig, &new.kubeconfig));
    check(
        "sessionRecording",
        differs(&started.session_recording, &new.session_recording),
    );
    check(
        "reloadInterval",
        differs(&started.reload_interval, &new.reload_interval),
    );
    check(
        "authentication.issuedTokens",
        differs(
            &started.authentication.issued_tokens,
            &new.authentication.issued_tokens,
        ),
    );
    check(
        "authentication.authenticationConfigFile",
        differs(
            &started.authentication.authentication_config_file,
            &new.authentication.authentication_config_file,
        ),
    );
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_and_issued_tokens_need_a_restart_and_issuers_do_not() {
        let base = "tls: {certFile: a, keyFile: b}\nlisten: 127.0.0.1:1\nauthentication:\n  staticTokens: {file: t}\n";
        let started = FileConfig::parse(base).unwrap();
        let same_but_issuer = FileConfig::parse(&format!(
            "{base}  jwt: [{{issuer: {{url: 'https://idp', audiences: [k]}}, claimMappings: {{username: {{claim: sub, prefix: ''}}}}}}]\n"
        ))
        .unwrap();
        assert!(needs_restart(&started, &same_but_issuer).is_empty());
        let moved = FileConfig::parse(&base.replace("127.0.0.1:1", "127.0.0.1:2")).unwrap();
        assert_eq!(needs_restart(&started, &moved), ["listen"]);
    }
}
