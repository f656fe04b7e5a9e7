//! Long-running requests: which requests kube-apiserver counts as
//! long-running, and caps on how many one user and everyone together may hold.
//!
//! kube-apiserver treats the `watch` and `proxy` verbs and the `attach`,
//! `exec`, `proxy`, `log` and `portforward` subresources as long-running:
//! they hold a stream (or an upgraded connection) for as long as the caller
//! likes. The proxy counts them apart from short requests so that one caller
//! cannot take every upstream stream: a [`Limiter`] hands out a [`Permit`]
//! per request, refused when the caller's or the total cap is reached, and
//! the permit is given back when dropped (the response body or the tunnel
//! ended, or the caller went away).
//!
//! `log` counts only with `follow=true`: a plain `kubectl logs` ends on its
//! own as soon as the log is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Default for [`Limits::per_user`].
pub const DEFAULT_PER_USER: usize = 100;
/// Default for [`Limits::total`].
pub const DEFAULT_TOTAL: usize = 10_000;

/// True when kube-apiserver would treat this request as long-running.
///
/// `path` is the request path, `query` its query string (undecoded).
pub fn is_long_running(path: &str, query: Option<&str>) -> bool {
    let query_flag = |name: &str| {
        query.is_some_and(|q| {
            q.split('&').any(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                key == name && matches!(value, "true" | "1" | "True" | "TRUE")
            })
        })
    };
    let mut parts = crate::path::segments(path).filter(|p| !p.is_empty());
    // Skip the API prefix: /api/v1 or /apis/<group>/<version>.
    let skip = match parts.next() {
        Some("api") => 1,
        Some("apis") => 2,
        _ => return false,
    };
    // The first five segments after the prefix (all this needs to see) and
    // how many there are, counting at most six: no allocation per request.
    let mut seen = [""; 5];
    let mut len = 0;
    for part in parts.skip(skip) {
        if len == seen.len() {
            len += 1;
            break;
        }
        seen[len] = part;
        len += 1;
    }
    let kept = len.min(seen.len());
    match seen[..kept].first() {
        Some(&"watch") | Some(&"proxy") => return true,
        _ => {}
    }
    // namespaces/<ns>/<resource>/... (but namespaces/<name>/<subresource>
    // is the namespace object itself).
    let (rest, len) = if len > 2 && seen[0] == "namespaces" {
        (&seen[2..kept], len - 2)
    } else {
        (&seen[..kept], len)
    };
    let subresource = rest.get(2).copied();
    match subresource {
        Some("attach" | "exec" | "proxy" | "portforward") => true,
        Some("log") => query_flag("follow"),
        // A collection or object read with ?watch=true.
        _ if len <= 2 => query_flag("watch"),
        _ => false,
    }
}

/// Caps on long-running requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most held by one user (by username).
    pub per_user: usize,
    /// Most held by everyone together.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_user: DEFAULT_PER_USER,
            total: DEFAULT_TOTAL,
        }
    }
}

/// Which cap refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The user already holds `per_user` long-running requests.
    #[error("too many long-running requests for this user")]
    PerUser,
    /// The proxy already holds `total` long-running requests.
    #[error("too many long-running requests")]
    Total,
}

/// Counts long-running requests per user and in total.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug, Default)]
struct LimiterInner {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
}

impl Limiter {
    /// A limiter with these caps.
    pub fn new(limits: Limits) -> Self {
        Limiter {
            inner: Arc::new(LimiterInner {
                limits,
                counts: Mutex::default(),
            }),
        }
    }

    /// The caps.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// A permit for one more long-running request by `user`, or which cap
    /// refused it.
    pub fn try_acquire(&self, user: &str) -> Result<Permit, Refused> {
        let limits = self.inner.limits;
        let mut counts = self
            .inner
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.total >= limits.total {
            return Err(Refused::Total);
        }
        let held = counts.per_user.get(user).copied().unwrap_or(0);
        if held >= limits.per_user {
            return Err(Refused::PerUser);
        }
        counts.total += 1;
        *counts.per_user.entry(user.to_owned()).or_insert(0) += 1;
        Ok(Permit {
            limiter: self.inner.clone(),
            user: user.to_owned(),
        })
    }

    /// Long-running requests held now: (by `user`, in total).
    pub fn held(&self, user: &str) -> (usize, usize) {
        let counts = self
            .inner
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            counts.per_user.get(user).copied().unwrap_or(0),
            counts.total,
        )
    }
}

/// One long-running request's place; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<LimiterInner>,
    user: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_user.get_mut(&self.user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_long_running_requests_are_recognised() {
        for (path, query) in [
            ("/api/v1/pods", Some("watch=true")),
            (
                "/api/v1/namespaces/default/pods",
                Some("labelSelector=a&watch=1"),
            ),
            ("/api/v1/namespaces/default/pods/web-0", Some("watch=true")),
            ("/api/v1/watch/namespaces/default/pods", None),
            ("/apis/apps/v1/watch/deployments", None),
            (
                "/apis/apps/v1/namespaces/default/deployments",
                Some("watch=true"),
            ),
            (
                "/api/v1/namespaces/default/pods/web-0/exec",
                Some("command=sh"),
            ),
            ("/api/v1/namespaces/default/pods/web-0/attach", None),
            ("/api/v1/namespaces/default/pods/web-0/portforward", None),
            ("/api/v1/namespaces/default/pods/web-0/proxy/metrics", None),
            ("/api/v1/namespaces/default/services/web:80/proxy/", None),
            ("/api/v1/nodes/node-1/proxy/stats", None),
            ("/api/v1/proxy/namespaces/default/pods/web-0", None),
            (
                "/api/v1/namespaces/default/pods/web-0/log",
                Some("follow=true"),
            ),
        ] {
            assert!(is_long_running(path, query), "{path}?{query:?}");
        }
    }

    #[test]
    fn short_requests_are_not_long_running() {
        for (path, query) in [
            ("/api/v1/namespaces/default/pods", None),
            ("/api/v1/namespaces/default/pods", Some("watch=false")),
            (
                "/api/v1/namespaces/default/pods",
                Some("allowWatchBookmarks=true"),
            ),
            ("/api/v1/namespaces/default/pods/web-0/log", None),
            (
                "/api/v1/namespaces/default/pods/web-0/log",
                Some("follow=false"),
            ),
            (
                "/api/v1/namespaces/default/pods/web-0/status",
                Some("watch=true"),
            ),
            ("/api/v1/namespaces/watch", None),
            ("/apis/authentication.k8s.io/v1/selfsubjectreviews", None),
            ("/version", Some("watch=true")),
            ("/healthz", None),
            ("/", None),
        ] {
            assert!(!is_long_running(path, query), "{path}?{query:?}");
        }
    }

    #[test]
    fn caps_refuse_and_permits_come_back() {
        let limiter = Limiter::new(Limits {
            per_user: 2,
            total: 3,
        });
        let a1 = limiter.try_acquire("alice").unwrap();
        let _a2 = limiter.try_acquire("alice").unwrap();
        assert_eq!(limiter.try_acquire("alice").unwrap_err(), Refused::PerUser);
        let _b1 = limiter.try_acquire("bob").unwrap();
        assert_eq!(limiter.try_acquire("bob").unwrap_err(), Refused::Total);
        drop(a1);
        assert_eq!(limiter.held("alice"), (1, 2));
        let _a3 = limiter.try_acquire("alice").unwrap();
        assert_eq!(limiter.held("alice"), (2, 3));
    }
}
