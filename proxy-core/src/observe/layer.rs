//! [`ObserveLayer`]: the audit ID, the request's metrics and its audit event
//! (see the module above).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{header, HeaderName, HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;

use super::audit::{
    AuditLog, Event, EventUser, RequestFacts, ResponseStatus, AUTHENTICATOR_KEY, RESULT_KEY,
};
use super::audit_id::{AuditId, AUDIT_ID};
use super::metrics::{Metrics, RequestKind};
use super::record::{RequestRecord, RECORD};
use super::{audit, metrics, request_info};
use crate::body::{Hold, ProxyBody};
use crate::credential::ClientAddr;
use crate::impersonate::is_upgrade;
use crate::status::Reason;

/// Where the stack below an [`ObserveLayer`] sends a request's path, which
/// decides how the request is read (by the audit log, the metrics, and the
/// resolution of dot-segments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// One API server ([`crate::proxy_stack_with`]): every path is
    /// forwarded, dot-segments resolved, and read as that server reads it;
    /// `/k8s/clusters/...` is a path like any other. The default: a request
    /// is never recorded as naming an object its server will not see.
    #[default]
    Single,
    /// A router of named clusters ([`crate::proxy_stack_routed`]; set it
    /// with [`ObserveLayer::with_routing`]): `/k8s/clusters/<name>/<path>`
    /// is read as that cluster reads `<path>`, and a path whose
    /// dot-segments cross from one cluster's prefix to another is left as
    /// sent, for the router to refuse.
    Clusters,
}

/// Layer that gives every request an audit ID and, when configured, counts
/// it in the metrics and writes it to the audit log.
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer {
    metrics: Option<Metrics>,
    audit: Option<AuditLog>,
    routing: Routing,
}

impl ObserveLayer {
    /// Audit IDs only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts requests in `metrics` (and the audit log's counters, if any).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        if let Some(audit) = &self.audit {
            metrics.observe_audit(audit.counters());
        }
        self.metrics = Some(metrics);
        self
    }

    /// Writes every request to `audit` (by its policy). The event's user and
    /// authenticator come from a chain made by [`Metrics::instrument_chain`]
    /// (with or without [`ObserveLayer::with_metrics`]).
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        if let Some(metrics) = &self.metrics {
            metrics.observe_audit(audit.counters());
        }
        self.audit = Some(audit);
        self
    }

    /// Reads requests for the stack below as `routing` says (default
    /// [`Routing::Single`]; [`Routing::Clusters`] above
    /// [`crate::proxy_stack_routed`]).
    pub fn with_routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
            routing: self.routing,
        }
    }
}

/// Service made by [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Option<Metrics>,
    audit: Option<AuditLog>,
    routing: Routing,
}

impl<S> Observe<S> {
    /// The same audit IDs, metrics and audit log around another service
    /// (an endpoint served beside the proxy stack, such as a token exchange).
    pub fn around<T>(&self, inner: T) -> Observe<T> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
            routing: self.routing,
        }
    }
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // One reading of the path for everything after this: the path as it
        // will be forwarded, dot-segments resolved. One that cannot be
        // forwarded, or (with named clusters) whose dot-segments cross from
        // one cluster's prefix to another, stays as sent, to be refused.
        let routed = self.routing == Routing::Clusters;
        if let Ok(Some(resolved)) = crate::path::normalize_uri(req.uri()) {
            let routable = !routed
                || req
                    .uri()
                    .path_and_query()
                    .is_none_or(|pq| crate::upstream::router::route(pq.as_str()).is_ok());
            if routable {
                *req.uri_mut() = resolved;
            }
        }
        let id = AuditId::next();
        let id_value = id.header_value();
        forget_connection_tokens(req.headers_mut());
        req.headers_mut().insert(AUDIT_ID, id_value.clone());
        let span = tracing::info_span!("request", audit_id = %id);
        if self.metrics.is_none() && self.audit.is_none() {
            // Nothing to count or record: the request keeps its ID, and is
            // not classified or timed.
            let future = self.inner.call(req);
            return Box::pin(
                async move {
                    let mut response = future.await?;
                    // The upstream's own ID, when it sent one, stays.
                    response.headers_mut().entry(AUDIT_ID).or_insert(id_value);
                    Ok(response)
                }
                .instrument(span),
            );
        }
        let upgrade = is_upgrade(req.headers());
        let (info, resource) = request_info::classify(req.method(), req.uri(), upgrade, routed);
        let kind = if info.long_running {
            RequestKind::LongRunning
        } else {
            RequestKind::Short
        };
        let method = metrics::method_label(req.method());
        let started = Instant::now();
        let received = SystemTime::now();
        let in_flight = self.metrics.as_ref().map(|m| m.start(kind));
        // A long-running request is in flight until its response body ends
        // and, for an upgrade, until its upgraded stream closes: both keep
        // `stream_end`, and the last to let go ends it.
        let (in_flight, stream_end) = if kind == RequestKind::LongRunning {
            let end = Arc::new(StreamEnd {
                _in_flight: in_flight,
                completion: std::sync::Mutex::new(None),
            });
            if upgrade {
                Hold::new(end.clone()).keep_in(req.extensions_mut());
            }
            (None, Some(end))
        } else {
            (in_flight, None)
        };
        // Shared handles only: the writer thread formats them.
        let facts = self.audit.as_ref().map(|_| {
            // As the API server will see them: the caller's X-Forwarded-For
            // only from a trusted proxy, then the hop that connected.
            let origin = req.extensions().get::<crate::forwarded::Origin>();
            RequestFacts {
                uri: req.uri().clone(),
                user_agent: req.headers().get(header::USER_AGENT).cloned(),
                source_ip: origin
                    .map(|o| o.peer)
                    .or_else(|| req.extensions().get::<ClientAddr>().map(|a| a.0)),
                forwarded_for: origin
                    .filter(|o| o.peer_trusted)
                    .and_then(|_| joined(req.headers(), &crate::forwarded::X_FORWARDED_FOR)),
                resource,
                routed,
            }
        });
        let record = Arc::new(RequestRecord::default());
        let future = RECORD.scope(record.clone(), self.inner.call(req));
        let metrics = self.metrics.clone();
        let audit = self.audit.clone();
        Box::pin(
            async move {
                let mut response = future.await?;
                let code = response.status().as_u16();
                let proxy_reason = response.extensions().get::<Reason>().copied();
                let decision = record.decision.get();
                let authenticated = decision.is_some_and(|d| d.identity.is_some());
                let failed_authentication =
                    proxy_reason.is_some() && !authenticated && matches!(code, 401 | 429 | 503);
                if let Some(metrics) = &metrics {
                    metrics.answered(method, code, kind, started);
                    if failed_authentication && decision.is_none() {
                        metrics.unclaimed();
                    }
                    let not_upstream = response
                        .extensions()
                        .get::<crate::status::NotUpstream>()
                        .is_some();
                    if authenticated && proxy_reason.is_some() && !not_upstream {
                        match code {
                            502 => metrics.upstream_error("bad_gateway"),
                            503 => metrics.upstream_error("unavailable"),
                            504 => metrics.upstream_error("timeout"),
                            _ => {}
                        }
                    }
                }
                // Logged again at ResponseComplete when a long-running stream ends.
                let mut completion: Option<(AuditLog, Event)> = None;
                // Short requests end with this future (the gauge drops with it).
                let _in_flight = in_flight;
                if let (Some(audit), Some(facts)) = (&audit, facts) {
                    let path = facts.uri.path();
                    if failed_authentication || audit.policy().logs(path, info.is_read_only()) {
                        let mut event = Event::new(
                            id,
                            info.long_running,
                            info.verb,
                            facts,
                            ResponseStatus::new(code, proxy_reason),
                            received,
                        );
                        // Who decided and how, for every outcome; the user
                        // and who it acted as when authenticated.
                        if let Some(decision) = decision {
                            if let Some(identity) = &decision.identity {
                                event.user = EventUser::Authenticated {
                                    identity: identity.clone(),
                                    authenticator: decision.authenticator.clone(),
                                };
                                event.impersonated_user = record.impersonated.get().cloned();
                            }
                            event
                                .annotations
                                .insert(AUTHENTICATOR_KEY, decision.authenticator.to_string());
                            event
                                .annotations
                                .insert(RESULT_KEY, decision.result.to_owned());
                        } else if failed_authentication {
                            // No authenticator took the credential.
                            event.annotations.insert(AUTHENTICATOR_KEY, "none".into());
                            event.annotations.insert(RESULT_KEY, "unclaimed".into());
                        }
                        if let Some(path) = record.recording.get() {
                            event.annotations.insert(audit::RECORDING_KEY, path.clone());
                        }
                        if let Some(notes) = response.extensions().get::<audit::Annotations>() {
                            // (The proxy's own keys are not overwritten.)
                            for (key, value) in &notes.0 {
                                event
                                    .annotations
                                    .entry(key)
                                    .or_insert_with(|| value.clone());
                            }
                        }
                        if info.long_running {
                            completion = Some((audit.clone(), event.clone()));
                        }
                        audit.log(event);
                    }
                }
                response.headers_mut().entry(AUDIT_ID).or_insert(id_value);
                if let Some(end) = stream_end {
                    if let Ok(mut slot) = end.completion.lock() {
                        *slot = completion;
                    }
                    let (parts, body) = response.into_parts();
                    // Answered at once: the body lets go here; else with the stream.
                    let body = body.with_hold(Hold::new(end));
                    response = Response::from_parts(parts, body);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// Kept while a long-running response streams (and an upgraded stream is
/// open): lowers the in-flight gauge and logs the `ResponseComplete` stage
/// when dropped.
struct StreamEnd {
    _in_flight: Option<metrics::InFlight>,
    /// Set once the response head is known.
    completion: std::sync::Mutex<Option<(AuditLog, Event)>>,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        let completion = self.completion.get_mut().ok().and_then(Option::take);
        if let Some((audit, mut event)) = completion {
            event.long_running = false;
            event.stage_reached = audit::Timestamp(SystemTime::now());
            audit.log(event);
        }
    }
}

/// Removes `audit-id`, `traceparent` and `tracestate` from the caller's
/// `Connection` header, so a caller cannot have them stripped as hop-by-hop.
fn forget_connection_tokens(headers: &mut http::HeaderMap) {
    let protected = |t: &str| {
        ["audit-id", "traceparent", "tracestate"]
            .iter()
            .any(|p| t.trim().eq_ignore_ascii_case(p))
    };
    let mut found = false;
    let mut kept: Vec<String> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        // Values that are not text name nothing the next hop would strip.
        for token in value.to_str().unwrap_or("").split(',') {
            if protected(token) {
                found = true;
            } else if !token.trim().is_empty() {
                kept.push(token.trim().to_owned());
            }
        }
    }
    if !found {
        return;
    }
    headers.remove(header::CONNECTION);
    if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(header::CONNECTION, value);
        }
    }
}

/// Every value of header `name`, joined by `, ` as one value.
fn joined(headers: &http::HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut all = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        all.extend_from_slice(b", ");
        all.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&all).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn audit_ids_are_unique_and_uuid_shaped() {
        let ids: HashSet<String> = (0..10_000).map(|_| AuditId::next().to_string()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "4", "version: {id}");
            assert!(
                matches!(&id[19..20], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
        }
        // Random through and through: the first 32 bits are not shared.
        let prefixes: HashSet<&str> = ids.iter().map(|id| &id[..8]).collect();
        assert!(prefixes.len() > 9_900, "{} prefixes", prefixes.len());
    }

    #[test]
    fn connection_cannot_strip_correlation_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Audit-ID, keep-alive, traceparent"),
        );
        forget_connection_tokens(&mut h);
        assert_eq!(h[header::CONNECTION], "keep-alive");
    }
}
