//! `authentication.issuedTokens`: the tokens the proxy issues after a login,
//! and their revocation store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::shared::{resolve, BuildError, Reloading};
use crate::problem::{positive_durations, problem, Problem};

/// `issuedTokens`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuedTokensConfig {
    /// `iss` and `aud` of the tokens (default `authproxy`).
    pub issuer: Option<String>,
    /// PKCS#8 PEM keys (P-256 or Ed25519); the first signs, all verify.
    pub signing_key_files: Vec<PathBuf>,
    /// Token lifetime (default 8h); never past the expiry of the credential
    /// it was exchanged for.
    #[serde(default, with = "humantime_serde")]
    pub lifetime: Option<Duration>,
    /// Which logins may be exchanged for a token (default
    /// [`DEFAULT_EXCHANGE_FROM`]): `ldap`, `oidc`, `staticToken`,
    /// `clientCertificate`. Issued tokens are never exchanged.
    pub exchange_from: Option<Vec<crate::authn::Source>>,
    /// How many exchanges are allowed per client address and per user.
    #[serde(default)]
    pub exchange_limits: ExchangeLimits,
    /// How often the user of a token issued after an LDAP login is looked up
    /// in the directory again (default 60s): a deleted or disabled entry
    /// ends the session, changed groups apply.
    #[serde(default, with = "humantime_serde")]
    pub refresh_interval: Option<Duration>,
    /// With the directory down, how long its last answer holds (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub refresh_grace: Option<Duration>,
    /// Where revocations are kept and watched (none: tokens cannot be
    /// revoked, only their signing key removed).
    pub revocation: Option<RevocationConfig>,
}

/// `issuedTokens.revocation`: the revocation store, ConfigMaps in a
/// namespace of the Kubernetes API (see [`crate::authn::revocation::store`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RevocationConfig {
    /// The namespace of the store (default: the namespace the proxy runs in,
    /// from its service account).
    pub namespace: Option<String>,
    /// A kubeconfig to reach the store's API server (default: the
    /// `upstream` section, the API server the proxy forwards to).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context (default: its current context).
    pub context: Option<String>,
    /// Take issued tokens before the revocations have been read once
    /// (default false: until then they are refused as unavailable, and
    /// `/readyz` says why).
    #[serde(default)]
    pub serve_before_first_list: bool,
}

/// kube's DNS-1123 label, which a namespace name is: at most 63 lower-case
/// letters, digits and `-`, starting and ending with a letter or digit.
fn is_namespace_name(name: &str) -> bool {
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 63
        && ends(name.chars().next())
        && ends(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Where a pod's namespace is written by Kubernetes.
pub const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl RevocationConfig {
    /// The namespace: set, or the pod's own.
    pub fn namespace(&self) -> Option<String> {
        self.namespace.clone().or_else(|| {
            std::fs::read_to_string(POD_NAMESPACE_FILE)
                .ok()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
        })
    }

    /// Problems in the section, `prefix` being its path.
    pub fn problems(&self, prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        match self.namespace() {
            None => problems.push(problem(
                format!("{prefix}.namespace"),
                format!("is required outside a pod (no {POD_NAMESPACE_FILE})"),
            )),
            Some(ns) if !is_namespace_name(&ns) => problems.push(problem(
                format!("{prefix}.namespace"),
                format!("{ns:?} is not a namespace name (a DNS label)"),
            )),
            Some(_) => {}
        }
        problems
    }
}

/// Logins exchanged for issued tokens when `issuedTokens.exchangeFrom` is unset.
pub const DEFAULT_EXCHANGE_FROM: [crate::authn::Source; 2] =
    [crate::authn::Source::Ldap, crate::authn::Source::Oidc];

/// Exchanges per client address when `exchangeLimits.perClientPerMinute` is unset.
pub const DEFAULT_EXCHANGES_PER_CLIENT_PER_MINUTE: u32 = 60;
/// Exchanges per user when `exchangeLimits.perUserPerMinute` is unset.
pub const DEFAULT_EXCHANGES_PER_USER_PER_MINUTE: u32 = 10;

/// `issuedTokens.exchangeLimits`: token exchanges allowed per minute (in
/// bursts of up to that many); `0` turns a limit off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExchangeLimits {
    /// Per client address (default [`DEFAULT_EXCHANGES_PER_CLIENT_PER_MINUTE`]).
    pub per_client_per_minute: Option<u32>,
    /// Per authenticated user (default [`DEFAULT_EXCHANGES_PER_USER_PER_MINUTE`]).
    pub per_user_per_minute: Option<u32>,
}

impl ExchangeLimits {
    /// (per client, per user) with defaults filled in.
    pub fn resolved(&self) -> (u32, u32) {
        (
            self.per_client_per_minute
                .unwrap_or(DEFAULT_EXCHANGES_PER_CLIENT_PER_MINUTE),
            self.per_user_per_minute
                .unwrap_or(DEFAULT_EXCHANGES_PER_USER_PER_MINUTE),
        )
    }
}

impl IssuedTokensConfig {
    /// The logins that may be exchanged, defaults filled in.
    pub fn exchange_sources(&self) -> Vec<crate::authn::Source> {
        self.exchange_from
            .clone()
            .unwrap_or_else(|| DEFAULT_EXCHANGE_FROM.to_vec())
    }

    /// Problems in the section, `prefix` being its path.
    pub fn problems(&self, prefix: &str) -> Vec<Problem> {
        use crate::authn::Source;
        let mut problems = Vec::new();
        positive_durations(
            &mut problems,
            prefix,
            &[
                ("refreshInterval", self.refresh_interval),
                ("refreshGrace", self.refresh_grace),
            ],
        );
        if let Some(revocation) = &self.revocation {
            problems.extend(revocation.problems(&format!("{prefix}.revocation")));
        }
        for (i, source) in self.exchange_from.iter().flatten().enumerate() {
            if matches!(source, Source::Issued | Source::Other) {
                problems.push(problem(
                    format!("{prefix}.exchangeFrom[{i}]"),
                    format!(
                        "{:?} cannot be exchanged; use ldap, oidc, staticToken or clientCertificate",
                        source.as_str()
                    ),
                ));
            }
        }
        problems
    }

    /// Loads the keys and re-reads their files as `reloading` says.
    pub fn load_and_watch(
        &self,
        prefix: &str,
        base: &Path,
        reloading: &Reloading,
    ) -> Result<Arc<crate::authn::IssuedTokens>, BuildError> {
        self.loaded(prefix, base, |issuer, files, lifetime| {
            crate::authn::IssuedTokens::load_and_watch(
                issuer,
                files,
                lifetime,
                reloading.interval,
                reloading.reporter.clone(),
            )
        })
    }

    /// Loads the keys.
    pub fn load(
        &self,
        prefix: &str,
        base: &Path,
    ) -> Result<Arc<crate::authn::IssuedTokens>, BuildError> {
        self.loaded(prefix, base, crate::authn::IssuedTokens::load)
    }

    /// `load` called with the issuer, the key files (below `base`) and the
    /// lifetime, defaults filled in; its error at `signingKeyFiles`.
    fn loaded<E: std::fmt::Display>(
        &self,
        prefix: &str,
        base: &Path,
        load: impl FnOnce(&str, &[PathBuf], Duration) -> Result<Arc<crate::authn::IssuedTokens>, E>,
    ) -> Result<Arc<crate::authn::IssuedTokens>, BuildError> {
        let files: Vec<PathBuf> = self
            .signing_key_files
            .iter()
            .map(|f| resolve(base, f))
            .collect();
        load(
            self.issuer.as_deref().unwrap_or("authproxy"),
            &files,
            self.lifetime.unwrap_or(Duration::from_secs(8 * 3600)),
        )
        .map_err(|e| BuildError {
            field: format!("{prefix}.issuedTokens.signingKeyFiles"),
            message: e.to_string(),
        })
    }
}
