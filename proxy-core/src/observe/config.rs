//! The `audit:` configuration section, its defaults and its validation.
//!
//! ```yaml
//! audit:
//!   path: /var/log/authproxy/audit.log   # or "-" for standard output
//!   maxSizeMB: 100
//!   maxBackups: 5
//!   queueSize: 10000
//!   level: Metadata                      # or None: only failed authentications
//!   omitPaths: [/livez, /readyz]
//!   logReadOnly: true
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::audit::{AuditError, AuditLog, Destination, Level, Policy};
use crate::problem::Problem;

/// Defaults of the `audit:` section, in one place.
pub mod defaults {
    /// Size at which the file is rotated, in MiB.
    pub const MAX_SIZE_MB: u64 = 100;
    /// Rotated files kept.
    pub const MAX_BACKUPS: u32 = 5;
    /// Events waiting to be written before new ones are dropped.
    pub const QUEUE_SIZE: usize = 10_000;
    /// Whether `get`, `list` and `watch` are logged.
    pub const LOG_READ_ONLY: bool = true;
}

/// `audit:`: where and what the audit log writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// The file, or `-` for standard output.
    pub path: PathBuf,
    /// Rotate the file at this size in MiB (default 100).
    #[serde(rename = "maxSizeMB")]
    pub max_size_mb: Option<u64>,
    /// Rotated files kept (default 5).
    pub max_backups: Option<u32>,
    /// Events queued for the writer; more are dropped and counted (default 10000).
    pub queue_size: Option<usize>,
    /// `Metadata` (default) or `None` (failed authentications only).
    #[serde(default)]
    pub level: Level,
    /// Paths not logged: exact, or a prefix ending in `*`.
    #[serde(default)]
    pub omit_paths: Vec<String>,
    /// Log read-only requests (`get`, `list`, `watch`); default true.
    pub log_read_only: Option<bool>,
}

fn problem(field: String, message: impl Into<String>) -> Problem {
    Problem {
        field,
        message: message.into(),
    }
}

impl AuditConfig {
    fn is_stdout(&self) -> bool {
        self.path.as_os_str() == "-"
    }

    fn resolved(&self, base: &Path) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            base.join(&self.path)
        }
    }

    /// Every problem in the section, `prefix` being its path.
    pub fn validate(&self, prefix: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push(problem(format!("{prefix}.path"), "must not be empty"));
        } else if !self.is_stdout() {
            let path = self.resolved(base);
            match path.parent() {
                Some(dir) if dir.is_dir() => {}
                _ => problems.push(problem(
                    format!("{prefix}.path"),
                    format!("the folder of {} does not exist", path.display()),
                )),
            }
        }
        if self.max_size_mb == Some(0) {
            problems.push(problem(format!("{prefix}.maxSizeMB"), "must be at least 1"));
        }
        if self.queue_size == Some(0) {
            problems.push(problem(format!("{prefix}.queueSize"), "must be at least 1"));
        }
        for (i, path) in self.omit_paths.iter().enumerate() {
            if !path.starts_with('/') {
                problems.push(problem(
                    format!("{prefix}.omitPaths[{i}]"),
                    format!("{path:?} does not start with /"),
                ));
            }
        }
        problems
    }

    /// Opens the destination and starts the writer.
    pub fn start(&self, base: &Path) -> Result<AuditLog, AuditError> {
        let destination = if self.is_stdout() {
            Destination::Stdout
        } else {
            Destination::File {
                path: self.resolved(base),
                max_bytes: self
                    .max_size_mb
                    .unwrap_or(defaults::MAX_SIZE_MB)
                    .saturating_mul(1024 * 1024),
                max_backups: self.max_backups.unwrap_or(defaults::MAX_BACKUPS),
            }
        };
        AuditLog::start(
            destination,
            Policy {
                level: self.level,
                omit_paths: self.omit_paths.clone(),
                log_read_only: self.log_read_only.unwrap_or(defaults::LOG_READ_ONLY),
            },
            self.queue_size.unwrap_or(defaults::QUEUE_SIZE),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_fields() {
        let config: AuditConfig = serde_yaml_ng::from_str(
            "path: /no/such/dir/audit.log\nmaxSizeMB: 0\nqueueSize: 0\nomitPaths: [livez]\n",
        )
        .unwrap();
        let fields: Vec<String> = config
            .validate("audit", Path::new("."))
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "audit.path",
                "audit.maxSizeMB",
                "audit.queueSize",
                "audit.omitPaths[0]"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_yaml_ng::from_str::<AuditConfig>("path: '-'\nlevel: Request\n").is_err());
        assert!(serde_yaml_ng::from_str::<AuditConfig>("path: '-'\nmaxSize: 3\n").is_err());
    }
}
