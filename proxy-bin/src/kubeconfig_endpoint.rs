//! `GET /authproxy/v1/kubeconfig`: a kubeconfig for this proxy that a team
//! shares by its URL. It names the proxy as users reach it, its CA (when
//! configured) and one context per cluster; its user runs
//! `authproxy login` (LDAP through issued tokens, or the OIDC issuer), so
//! it holds no secret and is served without authentication.

use std::path::Path;

use base64::Engine as _;
use http::{header, HeaderValue, Response, StatusCode};
use proxy_core::status::{Reason, Status};
use proxy_core::ProxyBody;

use crate::config::{FileConfig, KubeconfigEndpointConfig};
use crate::login::{kubeconfig, KubeconfigCluster};

/// Where the kubeconfig is served.
pub const KUBECONFIG_PATH: &str = "/authproxy/v1/kubeconfig";

/// How the served kubeconfig's user logs in.
#[derive(Debug, Clone)]
enum Login {
    /// `authproxy login ldap` (LDAP with issued tokens).
    Ldap,
    /// `authproxy login oidc` at the first issuer, its first audience as the
    /// client ID, with the issuer's CA when the configuration holds it.
    Oidc {
        issuer: String,
        client_id: String,
        ca_pem: Option<String>,
    },
}

/// The kubeconfig endpoint, built once from the configuration.
#[derive(Debug, Clone)]
pub struct KubeconfigEndpoint {
    settings: KubeconfigEndpointConfig,
    ca_pem: Option<Vec<u8>>,
    login: Option<Login>,
    default_upstream: bool,
    clusters: Vec<String>,
}

impl KubeconfigEndpoint {
    /// What `config` (in `base`) hands out; errors name the CA file that
    /// cannot be read.
    pub fn new(config: &FileConfig, base: &Path) -> Result<Self, String> {
        let settings = config.kubeconfig.clone().unwrap_or_default();
        let ca_pem = match &settings.ca_file {
            Some(file) => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    base.join(file)
                };
                Some(std::fs::read(&path).map_err(|e| {
                    format!("kubeconfig.caFile: cannot read {}: {e}", path.display())
                })?)
            }
            None => None,
        };
        let authn = &config.authentication;
        let login = if authn.ldap.is_some() && authn.issued_tokens.is_some() {
            Some(Login::Ldap)
        } else {
            // The issuers of an authenticationConfigFile count as much as
            // the section's own; a file that does not load was refused by
            // validation before this runs (read now, the section's own
            // issuers still count).
            let entries = authn
                .jwt_entries("authentication", base)
                .unwrap_or_else(|_| {
                    authn
                        .jwt
                        .iter()
                        .map(|j| (String::new(), j.clone()))
                        .collect()
                });
            entries.into_iter().find_map(|(_, jwt)| {
                Some(Login::Oidc {
                    issuer: jwt.issuer.url.clone(),
                    client_id: jwt.issuer.audiences.first()?.clone(),
                    ca_pem: jwt.issuer.certificate_authority.clone(),
                })
            })
        };
        Ok(KubeconfigEndpoint {
            settings,
            ca_pem,
            login,
            default_upstream: config.default_upstream().is_some(),
            clusters: config
                .named_upstreams()
                .iter()
                .filter_map(|u| u.name.clone())
                .collect(),
        })
    }

    /// The answer to `GET` [`KUBECONFIG_PATH`] sent to `host` (the
    /// request's `Host` or `:authority`).
    pub fn answer(&self, host: Option<&str>) -> Response<ProxyBody> {
        let Some(login) = &self.login else {
            return Status::failure(
                StatusCode::NOT_FOUND,
                Reason::NotFound,
                "no login to hand out: configure LDAP with issued tokens, or an OIDC issuer",
            )
            .into_response();
        };
        let server = match (&self.settings.server, host) {
            (Some(server), _) => server.clone(),
            (None, Some(host)) if is_authority(host) => format!("https://{host}"),
            _ => {
                return Status::failure(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    "the request names no usable host: set kubeconfig.server",
                )
                .into_response()
            }
        };
        let base64 = |pem: &[u8]| base64::engine::general_purpose::STANDARD.encode(pem);
        let mut args: Vec<String> = match login {
            Login::Ldap => {
                let mut args = vec![
                    "login".into(),
                    "ldap".into(),
                    "--server".into(),
                    server.clone(),
                ];
                if let Some(pem) = &self.ca_pem {
                    args.extend(["--ca-data".into(), base64(pem)]);
                }
                args
            }
            Login::Oidc {
                issuer,
                client_id,
                ca_pem,
            } => {
                let mut args = vec![
                    "login".into(),
                    "oidc".into(),
                    "--issuer".into(),
                    issuer.clone(),
                    "--client-id".into(),
                    client_id.clone(),
                ];
                if let Some(pem) = ca_pem {
                    args.extend(["--ca-data".into(), base64(pem.as_bytes())]);
                }
                args
            }
        };
        args.shrink_to_fit();
        let name = self.settings.name.as_deref().unwrap_or("authproxy");
        let named = crate::login::cluster_contexts(name, &server, &self.clusters);
        let mut clusters = Vec::new();
        if self.default_upstream {
            clusters.push(KubeconfigCluster {
                name,
                server: &server,
                ca_file: None,
                ca_pem: self.ca_pem.as_deref(),
            });
        }
        for (context, url) in &named {
            clusters.push(KubeconfigCluster {
                name: context,
                server: url,
                ca_file: None,
                ca_pem: self.ca_pem.as_deref(),
            });
        }
        let command = self.settings.command.as_deref().unwrap_or("authproxy");
        match kubeconfig(&clusters, name, command, &args, true) {
            Ok(text) => {
                let mut response = Response::new(ProxyBody::full(text));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/yaml"),
                );
                // Made from the request's host: no cache in between may
                // hand one caller's answer to another.
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(header::VARY, HeaderValue::from_static("Host"));
                response
            }
            Err(error) => Status::failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                Reason::InternalError,
                format!("cannot write the kubeconfig: {error}"),
            )
            .into_response(),
        }
    }
}

/// Whether `host` is a host (and port) and nothing else.
fn is_authority(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_host_and_port_names_the_server() {
        for good in [
            "proxy.example.com",
            "proxy:8443",
            "127.0.0.1:8443",
            "[::1]:8443",
        ] {
            assert!(is_authority(good), "{good}");
        }
        for bad in ["", "a b", "x\ny", "evil.com/\"#", "a@b", "x'y"] {
            assert!(!is_authority(bad), "{bad}");
        }
    }
}
