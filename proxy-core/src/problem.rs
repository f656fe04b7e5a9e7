//! A problem in a configuration, named by the path of its field: what
//! every part's configuration check returns. A leaf: it knows no part.

use std::time::Duration;

/// One problem in a configuration, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field (`upstream.tokenFile`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Problem {}

/// Adds a problem for each of `fields` (names below `prefix`) that is set
/// to zero: intervals and timeouts where 0s would spin, or never wait.
pub fn positive_durations(
    problems: &mut Vec<Problem>,
    prefix: &str,
    fields: &[(&str, Option<Duration>)],
) {
    for (name, value) in fields {
        if *value == Some(Duration::ZERO) {
            problems.push(problem(format!("{prefix}.{name}"), "must be more than 0s"));
        }
    }
}

/// A [`Problem`] at `field`.
pub(crate) fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// A configuration section for a part this build of proxy-core was made
/// without (its cargo feature off): it reads as any value, so the file
/// still parses, and is then refused with a problem naming the feature
/// ([`NotBuilt::problem`]) rather than ignored.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct NotBuilt(serde::de::IgnoredAny);

impl NotBuilt {
    /// The problem for this section at `field`, which needs `feature`.
    pub fn problem(&self, field: impl Into<String>, feature: &str) -> Problem {
        problem(
            field,
            format!(
                "this build of proxy-core has no `{feature}` feature; rebuild with it to use this section"
            ),
        )
    }
}
