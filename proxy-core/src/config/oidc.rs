//! `authentication.jwt` and `authentication.authenticationConfigFile`: the
//! OIDC issuers, built behind the token cache.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::shared::{field_path, resolve, BuildError};
use super::AuthenticationConfig;
use crate::authn::oidc::{JwtAuthenticator, OidcAuthenticator};
use crate::authn::policy::RefuseSystemNames;
use crate::authn::{Authenticator, CachedAuthenticator, Chain};
use crate::problem::{problem, Problem};

/// kube's `AuthenticationConfiguration` file (only `jwt:` is used).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeAuthenticationConfiguration {
    /// `apiserver.config.k8s.io/v1beta1` or `/v1`.
    pub api_version: String,
    /// `AuthenticationConfiguration`.
    pub kind: String,
    /// The JWT authenticators.
    #[serde(default)]
    pub jwt: Vec<JwtAuthenticator>,
    /// Anonymous access settings: not used by authproxy (refused when set).
    pub anonymous: Option<serde_json::Value>,
}

impl KubeAuthenticationConfiguration {
    /// Reads the file and checks apiVersion and kind.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = crate::reload::read_settled_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: Self =
            serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(&text))
                .map_err(|e| {
                    format!(
                        "{}: {}: {}",
                        path.display(),
                        field_path(e.path()),
                        e.inner()
                    )
                })?;
        if ![
            "apiserver.config.k8s.io/v1beta1",
            "apiserver.config.k8s.io/v1",
        ]
        .contains(&config.api_version.as_str())
        {
            return Err(format!(
                "{}: apiVersion {:?} is not apiserver.config.k8s.io/v1beta1 or v1",
                path.display(),
                config.api_version
            ));
        }
        if config.kind != "AuthenticationConfiguration" {
            return Err(format!(
                "{}: kind {:?} is not AuthenticationConfiguration",
                path.display(),
                config.kind
            ));
        }
        if config.anonymous.is_some() {
            return Err(format!(
                "{}: anonymous: anonymous access is not supported by authproxy",
                path.display()
            ));
        }
        Ok(config)
    }
}

impl AuthenticationConfig {
    /// Every `jwt:` entry with its path: this section's, then the kube file's.
    pub fn jwt_entries(
        &self,
        prefix: &str,
        base: &Path,
    ) -> Result<Vec<(String, JwtAuthenticator)>, Problem> {
        let mut entries: Vec<(String, JwtAuthenticator)> = self
            .jwt
            .iter()
            .enumerate()
            .map(|(i, j)| (format!("{prefix}.jwt[{i}]"), j.clone()))
            .collect();
        if let Some(file) = &self.authentication_config_file {
            let path = resolve(base, file);
            let kube = KubeAuthenticationConfiguration::load(&path).map_err(|message| {
                problem(format!("{prefix}.authenticationConfigFile"), message)
            })?;
            entries.extend(
                kube.jwt
                    .into_iter()
                    .enumerate()
                    .map(|(i, j)| (format!("{}: jwt[{i}]", path.display()), j)),
            );
        }
        Ok(entries)
    }

    /// Problems in the issuers; whether any is configured.
    pub(super) fn validate_jwt(
        &self,
        prefix: &str,
        base: &Path,
        problems: &mut Vec<Problem>,
    ) -> Result<bool, Problem> {
        let entries = self.jwt_entries(prefix, base)?;
        for (i, (path, jwt)) in entries.iter().enumerate() {
            if let Err(mut more) = jwt.settings(path) {
                problems.append(&mut more);
            }
            let url = &jwt.issuer.url;
            if entries[..i]
                .iter()
                .any(|(_, earlier)| &earlier.issuer.url == url)
            {
                problems.push(problem(
                    format!("{path}.issuer.url"),
                    format!("duplicate issuer {url:?}: each issuer may be configured once"),
                ));
            }
        }
        Ok(!entries.is_empty())
    }

    /// The issuers, one cached chain (`oidc`), when any is configured.
    pub(super) fn build_jwt(
        &self,
        prefix: &str,
        base: &Path,
    ) -> Result<Option<Arc<dyn Authenticator>>, BuildError> {
        let entries = self.jwt_entries(prefix, base).map_err(|p| BuildError {
            field: p.field,
            message: p.message,
        })?;
        if !entries.is_empty() {
            let mut issuers: Vec<Arc<dyn Authenticator>> = Vec::new();
            for (path, jwt) in entries {
                let settings = jwt.settings(&path).map_err(|problems| BuildError {
                    field: path.clone(),
                    message: problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
                let allow_system_names = settings.allow_system_names;
                let oidc_issuer = OidcAuthenticator::start(settings).map_err(|e| BuildError {
                    field: format!("{path}.issuer.certificateAuthority"),
                    message: e.to_string(),
                })?;
                issuers.push(RefuseSystemNames::unless_allowed(
                    oidc_issuer,
                    allow_system_names,
                ));
            }
            let oidc = Chain::named("oidc", issuers);
            return Ok(Some(Arc::new(CachedAuthenticator::new(
                Arc::new(oidc),
                self.cache_settings(),
            ))));
        }
        Ok(None)
    }
}
