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
//! `log` counts only with `follow` set: a plain `kubectl logs` ends on its
//! own as soon as the log is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Default for [`Limits::per_user`].
pub const DEFAULT_PER_USER: usize = 100;
/// Default for [`Limits::total`].
pub const DEFAULT_TOTAL: usize = 10_000;

/// True when the request holds its stream open for as long as the caller
/// likes: what the caps count. Read once, as kube reads it
/// ([`crate::observe::request_info::holds_stream`]): a watch however its
/// flag is written (`?watch`, `?watch=t`, `?watch=%31`). `uri` is the
/// request as forwarded (below a router: without a named cluster's prefix);
/// one that still names a cluster counts if either reading holds a stream.
pub fn is_long_running(method: &http::Method, uri: &http::Uri, upgrade: bool) -> bool {
    crate::observe::request_info::holds_stream(method, uri, upgrade)
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

    fn held(method: &str, target: &str) -> bool {
        is_long_running(&method.parse().unwrap(), &target.parse().unwrap(), false)
    }

    #[test]
    fn kube_long_running_requests_are_recognised() {
        for target in [
            "/api/v1/pods?watch=true",
            "/api/v1/namespaces/default/pods?labelSelector=a&watch=1",
            "/api/v1/watch/namespaces/default/pods",
            "/apis/apps/v1/watch/deployments",
            "/apis/apps/v1/namespaces/default/deployments?watch=true",
            "/api/v1/namespaces/default/pods/web-0/exec?command=sh",
            "/api/v1/namespaces/default/pods/web-0/attach",
            "/api/v1/namespaces/default/pods/web-0/portforward",
            "/api/v1/namespaces/default/pods/web-0/proxy/metrics",
            "/api/v1/namespaces/default/services/web:80/proxy/",
            "/api/v1/nodes/node-1/proxy/stats",
            "/api/v1/proxy/namespaces/default/pods/web-0",
            "/api/v1/namespaces/default/pods/web-0/log?follow=true",
            // every spelling kube reads as true
            "/api/v1/pods?watch=t",
            "/api/v1/pods?watch=T",
            "/api/v1/pods?watch=%31",
            "/api/v1/pods?watch",
            "/api/v1/pods?watch=",
            "/api/v1/pods?watch=yes",
            "/api/v1/pods?w%61tch=1",
            "/api/v1/pods?watch=1&watch=false",
            "/api/v1/namespaces/default/pods/web-0/log?follow=yes",
            // percent-encoded path segments, decoded as Go decodes them
            "/api/v1/namespaces/default/pods/web-0/%65xec",
        ] {
            assert!(held("GET", target), "{target}");
        }
        assert!(held("POST", "/api/v1/watch/namespaces/default/pods"));
        assert!(held("GET", "/api/v1/pods?watch=%FF"));
        assert!(held("GET", "/api/v1/namespaces/d/pods/p/%70roxy/%FF"));
        assert!(held("GET", "/debug/pprof/profile?seconds=30"));
        // A path that still names a cluster when it is forwarded (behind a
        // single upstream, which may itself route clusters) counts when
        // either reading holds a stream.
        assert!(held(
            "GET",
            "/k8s/clusters/east/api/v1/namespaces/default/pods?watch=1"
        ));
        // an upgrade of any path (an aggregated API's console) holds its stream
        assert!(is_long_running(
            &http::Method::GET,
            &"/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/vm/vnc"
                .parse()
                .unwrap(),
            true
        ));
    }

    #[test]
    fn short_requests_are_not_long_running() {
        for target in [
            "/api/v1/namespaces/default/pods",
            "/api/v1/namespaces/default/pods?watch=false",
            "/api/v1/namespaces/default/pods?watch=FALSE",
            "/api/v1/namespaces/default/pods?watch=0",
            "/api/v1/namespaces/default/pods?watch=false&watch=true",
            "/api/v1/namespaces/default/pods?allowWatchBookmarks=true",
            "/api/v1/namespaces/default/pods?watch=%zz",
            "/api/v1/namespaces/default/pods?watch;x=1",
            "/api/v1/namespaces/default/pods/web-0/log",
            "/api/v1/namespaces/default/pods/web-0/log?follow=false",
            // kube reads a named object with ?watch as a get
            "/api/v1/namespaces/default/pods/web-0?watch=true",
            "/api/v1/namespaces/default/pods/web-0/status?watch=true",
            "/api/v1/namespaces/watch",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            "/version?watch=true",
            "/healthz",
            "/",
        ] {
            assert!(!held("GET", target), "{target}");
        }
        assert!(!held("POST", "/api/v1/namespaces/default/pods?watch=true"));
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
