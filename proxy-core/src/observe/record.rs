//! What the authenticators decided about the request being served, told to
//! the [`Observe`](crate::observe) layer around them without going through
//! the authenticator interface: a task-local record set for the duration of
//! one request's future.
//!
//! Without the `observe` feature nothing reads the record (there is no
//! audit event); the layers still write it.
#![cfg_attr(not(feature = "observe"), allow(dead_code))]

use std::sync::{Arc, OnceLock};

use crate::authn::Identity;

/// Who decided about the credential, and how.
#[derive(Debug)]
pub(crate) struct Decision {
    /// The authenticator's label.
    pub authenticator: Arc<str>,
    /// `success`, `invalid`, `throttled` or `unavailable`.
    pub result: &'static str,
    /// The user, on success.
    pub identity: Option<Arc<Identity>>,
}

/// One request's record; the first decision wins.
#[derive(Debug, Default)]
pub(crate) struct RequestRecord {
    pub decision: OnceLock<Decision>,
    /// Who the request runs as when the caller asked for another identity
    /// (`kubectl --as`) and was allowed it.
    pub impersonated: OnceLock<Arc<Identity>>,
    /// Where the session the request opened is recorded.
    pub recording: OnceLock<String>,
}

tokio::task_local! {
    pub(crate) static RECORD: Arc<RequestRecord>;
}

/// Notes a decision in the current request's record, if there is one.
pub(crate) fn decided(
    authenticator: &Arc<str>,
    result: &'static str,
    identity: Option<&Arc<Identity>>,
) {
    let _ = RECORD.try_with(|record| {
        let _ = record.decision.set(Decision {
            authenticator: authenticator.clone(),
            result,
            identity: identity.cloned(),
        });
    });
}

/// Notes, in the current request's record, that the request runs as
/// `identity` at the caller's asking.
pub(crate) fn impersonated(identity: &Arc<Identity>) {
    let _ = RECORD.try_with(|record| {
        let _ = record.impersonated.set(identity.clone());
    });
}

/// Notes, in the current request's record, that the session it opened is
/// recorded at `path`.
pub(crate) fn recording(path: String) {
    let _ = RECORD.try_with(|record| {
        let _ = record.recording.set(path);
    });
}
