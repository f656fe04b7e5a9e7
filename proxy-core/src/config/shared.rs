//! What every part's configuration uses: paths resolved against the
//! configuration file's folder, file checks, the build error, and how built
//! parts re-read their files. A leaf of `config`: the parts' sections
//! (`config::ldap`, `config::oidc`, `config::issued`) use it without
//! importing `config` itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::problem::{problem, Problem};
use crate::tls;

/// The dotted path of the field a parse error is at, `(top level)` for the
/// root (or a key YAML reads as empty, as in `? `), so a message always
/// names a field.
pub fn field_path(path: &serde_path_to_error::Path) -> String {
    let field = path.to_string();
    if field == "." || field.is_empty() {
        "(top level)".to_owned()
    } else {
        field
    }
}

pub(crate) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

pub(crate) fn check_readable(problems: &mut Vec<Problem>, field: &str, path: &Path) {
    if let Err(e) = std::fs::metadata(path) {
        problems.push(problem(
            field,
            format!("cannot read {}: {e}", path.display()),
        ));
    }
}

/// Adds a problem at `field` unless `path` holds PEM CA certificates that
/// rustls takes as roots (an empty or garbled file is refused here, not
/// when the first connection needs it).
pub fn check_ca_file(problems: &mut Vec<Problem>, field: &str, path: &Path) {
    match std::fs::read(path) {
        Err(e) => problems.push(problem(
            field,
            format!("cannot read {}: {e}", path.display()),
        )),
        Ok(pem) => {
            if let Err(e) = tls::root_store(&pem, &path.display().to_string()) {
                problems.push(problem(field, e.to_string()));
            }
        }
    }
}

/// Adds a problem at the field that is wrong unless `cert` holds a PEM
/// certificate chain valid now and `key` the private key that belongs to
/// it: each file is named in its own field, a key that does not match is
/// the key's problem, an expired certificate the certificate's.
pub fn check_cert_and_key(
    problems: &mut Vec<Problem>,
    (cert_field, cert): (&str, &Path),
    (key_field, key): (&str, &Path),
) {
    let read = |field: &str, path: &Path, problems: &mut Vec<Problem>| match std::fs::read(path) {
        Ok(pem) => Some(pem),
        Err(e) => {
            problems.push(problem(
                field,
                format!("cannot read {}: {e}", path.display()),
            ));
            None
        }
    };
    let (cert_name, key_name) = (cert.display().to_string(), key.display().to_string());
    let cert_pem =
        read(cert_field, cert, problems).filter(|pem| match tls::parse_certs(pem, &cert_name) {
            Ok(_) => true,
            Err(e) => {
                problems.push(problem(cert_field, e.to_string()));
                false
            }
        });
    let key_pem =
        read(key_field, key, problems).filter(|pem| match tls::parse_key(pem, &key_name) {
            Ok(_) => true,
            Err(e) => {
                problems.push(problem(key_field, e.to_string()));
                false
            }
        });
    let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) else {
        return;
    };
    match crate::reload::tls::certified_key(&cert_pem, &cert_name, &key_pem, &key_name) {
        Err(e) => problems.push(problem(key_field, e.to_string())),
        Ok(certified) => {
            if let Some(why) =
                crate::reload::tls::outside_validity(&certified, rustls_pki_types::UnixTime::now())
            {
                problems.push(problem(cert_field, format!("{cert_name}: {why}")));
            }
        }
    }
}

/// How built authenticators watch their files (bind password, signing keys,
/// static tokens report here too).
#[derive(Debug, Clone)]
pub struct Reloading {
    /// How often files are re-read.
    pub interval: Duration,
    /// Where results go (the metrics).
    pub reporter: crate::reload::ReloadReporter,
}

impl Default for Reloading {
    fn default() -> Self {
        Reloading {
            interval: crate::reload::DEFAULT_INTERVAL,
            reporter: crate::reload::ReloadReporter::default(),
        }
    }
}

/// A problem building authenticators or the upstream from a valid-looking config.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BuildError {
    /// The field whose value could not be used.
    pub field: String,
    /// Why.
    pub message: String,
}

/// A configuration problem is a build error at the same field, so the two
/// meet in one `?`.
impl From<Problem> for BuildError {
    fn from(problem: Problem) -> Self {
        BuildError {
            field: problem.field,
            message: problem.message,
        }
    }
}
