//! `authentication.ldap`: checked and built here, from the section's own
//! type ([`LdapConfig`]).

use std::path::Path;
use std::sync::Arc;

use super::shared::{check_ca_file, check_readable, resolve, BuildError, Reloading};
use crate::authn::ldap::{LdapAuthenticator, LdapConfig};
use crate::authn::policy::RefuseSystemNames;
use crate::authn::Authenticator;
use crate::problem::Problem;
use crate::tls;

/// Every problem in the section, `prefix` being its path (`authentication.ldap`).
pub(super) fn validate(ldap: &LdapConfig, prefix: &str, base: &Path, problems: &mut Vec<Problem>) {
    problems.extend(ldap.problems(prefix));
    check_readable(
        problems,
        &format!("{prefix}.bindPasswordFile"),
        &resolve(base, &ldap.bind_password_file),
    );
    if let Some(ca) = &ldap.ca_file {
        check_ca_file(problems, &format!("{prefix}.caFile"), &resolve(base, ca));
    }
}

/// The built LDAP authenticator.
pub(super) struct Built {
    #[cfg_attr(not(feature = "issued-tokens"), allow(dead_code))]
    authenticator: Arc<LdapAuthenticator>,
    #[cfg_attr(not(feature = "issued-tokens"), allow(dead_code))]
    allow_system_names: bool,
    /// What goes in the chain: the authenticator behind the system-name policy.
    pub(super) refusing: Arc<dyn Authenticator>,
}

impl Built {
    /// The directory tokens issued after an LDAP login look their user up in.
    #[cfg(feature = "issued-tokens")]
    pub(super) fn directory(&self) -> Arc<dyn crate::authn::refresh::Directory> {
        Arc::new(crate::authn::ldap::SharedDirectory {
            ldap: self.authenticator.clone(),
            allow_system_names: self.allow_system_names,
        })
    }
}

/// Builds the authenticator and starts watching its bind password file.
pub(super) fn build(
    ldap: &LdapConfig,
    prefix: &str,
    base: &Path,
    reloading: &Reloading,
) -> Result<Built, BuildError> {
    let err = |field: &str, message: String| BuildError {
        field: format!("{prefix}.{field}"),
        message,
    };
    let password_file = resolve(base, &ldap.bind_password_file);
    let password = crate::reload::read_settled(&password_file)
        .map_err(|e| err("bindPasswordFile", e.to_string()))
        .and_then(|content| {
            crate::authn::ldap::bind_password_from(&content).map_err(|problem| {
                err(
                    "bindPasswordFile",
                    format!("{}: {problem}", password_file.display()),
                )
            })
        })?;
    let roots = match &ldap.ca_file {
        Some(ca) => {
            let path = resolve(base, ca);
            let pem = tls::read_file(&path).map_err(|e| err("caFile", e.to_string()))?;
            tls::root_store(&pem, &path.display().to_string())
                .map_err(|e| err("caFile", e.to_string()))?
        }
        None => tls::system_roots().map_err(|e| err("caFile", e.to_string()))?,
    };
    let client = tls::client_config(roots, None, &[]).map_err(|e| err("caFile", e.to_string()))?;
    let authenticator = Arc::new(LdapAuthenticator::new(ldap, client, password));
    authenticator.watch_bind_password(
        password_file,
        reloading.interval,
        reloading.reporter.clone(),
    );
    let allow_system_names = ldap
        .allow_system_names
        .unwrap_or(crate::authn::policy::DEFAULT_ALLOW_SYSTEM_NAMES);
    Ok(Built {
        refusing: RefuseSystemNames::unless_allowed(authenticator.clone(), allow_system_names),
        authenticator,
        allow_system_names,
    })
}
