//! Prometheus metrics of the proxy, with the `prometheus-client` crate.
//!
//! One [`Metrics`] per proxy holds every family; [`Metrics::encode`] writes
//! them in the OpenMetrics text format for a `/metrics` endpoint. Labels are
//! bounded: HTTP method, status code, request kind, authenticator name (from
//! configuration) and result. Never a user name, token or path.
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `authproxy_http_requests_total` | counter | `code`, `method`, `kind` (`short`, `long_running`) |
//! | `authproxy_http_request_duration_seconds` | histogram | `method` (short requests, to the response head) |
//! | `authproxy_http_requests_in_flight` | gauge | `kind` |
//! | `authproxy_authentications_total` | counter | `authenticator`, `result` (`success`, `invalid`, `throttled`, `unavailable`; `unclaimed` for authenticator `none`) |
//! | `authproxy_authentication_duration_seconds` | histogram | `authenticator` |
//! | `authproxy_token_cache_hits_total`, `_misses_total` | counter | |
//! | `authproxy_token_cache_entries` | gauge | |
//! | `authproxy_upstream_errors_total` | counter | `kind` (`unavailable`, `bad_gateway`, `timeout`) |
//! | `authproxy_tokenreviews_total` | counter | `result` (`authenticated`, `unauthenticated`, `error`) |
//! | `authproxy_issued_tokens_total` | counter | |
//! | `authproxy_audit_events_total` | counter | |
//! | `authproxy_audit_events_dropped_total` | counter | `reason` (`queue_full`, `write_error`) |
//! | `authproxy_audit_file_reopened_total` | counter | |
//! | `authproxy_oidc_key_fetches_total` | counter | `issuer` (configured URL), `result` (`success`, `failure`) |
//! | `authproxy_oidc_keys_age_seconds` | gauge | `issuer` (from the first load on) |
//! | `authproxy_ldap_pool_connections` | gauge | `state` (`idle`, `in_use`) |
//! | `authproxy_ldap_operation_duration_seconds` | histogram | `operation` (`bind`, `service_bind`, `search`) |
//! | `authproxy_ldap_errors_total` | counter | `kind` (`timeout`, `unavailable`, `protocol`) |
//! | `authproxy_login_throttled_total` | counter | `authenticator` (`ldap`, `token-exchange`, `webhook`), `scope` (`user`, `client`, `token`) |
//! | `authproxy_upstream_connections` | gauge | `protocol` (`http2`, `http1`) |
//! | `authproxy_upstream_requests_in_flight` | gauge | `protocol` |
//! | `authproxy_upstream_requests_retried_total` | counter | `reason` (`goaway`, `refused`) |
//! | `authproxy_impersonation_reviews_total` | counter | `result` (`allowed`, `denied`, `error`: asked of the API server; `cached`, `throttled`: not asked) |
//! | `authproxy_build_info` | info | `version` |
//! | `authproxy_config_reloads_total` | counter | `file` (see [`crate::reload::ReloadKind`]), `result` (`success`, `failure`) |
//! | `authproxy_config_last_reload_success_timestamp_seconds` | gauge | `file` |
//!
//! The OIDC, LDAP, throttle and upstream families are read at scrape time
//! from counters those parts own (see [`crate::counters`]): a chain given to
//! [`Metrics::instrument_chain`] brings its issuers' and directory's, and
//! [`Metrics::observe_upstream`] and [`Metrics::observe_throttle`] add the others.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::authn::{Authenticator, AuthnError, AuthnFuture, Chain};
use crate::credential::Credential;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which kind of request: kube's long-running requests (watches, logs,
/// exec, attach, port-forward, proxy) or the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Answers once.
    Short,
    /// Streams for long.
    LongRunning,
}

impl RequestKind {
    fn label(self) -> &'static str {
        match self {
            RequestKind::Short => "short",
            RequestKind::LongRunning => "long_running",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    code: u16,
    method: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthnLabels {
    authenticator: Arc<str>,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthenticatorLabel {
    authenticator: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 1 ms .. ~32 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn authn_histogram() -> Histogram {
    // 0.1 ms .. ~13 s: a cache hit, an IdP round trip, an LDAP bind.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The method label: the standard methods, else `other` (bounded).
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counters kept by the audit log, exported with the metrics.
#[derive(Debug, Default)]
pub struct AuditCounters {
    /// Events written.
    pub written: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Events that could not be written to the file.
    pub write_errors: AtomicU64,
    /// Times the file was opened again because it had been moved or deleted.
    pub reopened: AtomicU64,
}

/// Reads the caches of the instrumented chains and the audit counters at scrape time.
#[derive(Default)]
struct ScrapeTime {
    chains: Mutex<Vec<Chain>>,
    audit: Mutex<Option<Arc<AuditCounters>>>,
}

impl std::fmt::Debug for ScrapeTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeTime")
    }
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self
            .chains
            .lock()
            .map(|chains| {
                chains
                    .iter()
                    .fold(Default::default(), |sum: crate::authn::CacheStats, c| {
                        sum + Authenticator::cache_stats(c)
                    })
            })
            .unwrap_or_default();
        let counter = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        counter(
            &mut encoder,
            "authproxy_token_cache_hits",
            "Token authentications answered from the cache",
            stats.hits,
        )?;
        counter(
            &mut encoder,
            "authproxy_token_cache_misses",
            "Token authentications the cache could not answer",
            stats.misses,
        )?;
        let entries = ConstGauge::new(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        entries.encode(encoder.encode_descriptor(
            "authproxy_token_cache_entries",
            "Tokens held in the cache (approximate)",
            None,
            entries.metric_type(),
        )?)?;
        let audit = self.audit.lock().ok().and_then(|a| a.clone());
        let [written, queue_full, write_error, reopened] = audit
            .map(|a| {
                [&a.written, &a.dropped, &a.write_errors, &a.reopened]
                    .map(|c| c.load(Ordering::Relaxed))
            })
            .unwrap_or_default();
        counter(
            &mut encoder,
            "authproxy_audit_events",
            "Audit events written",
            written,
        )?;
        let mut dropped = encoder.encode_descriptor(
            "authproxy_audit_events_dropped",
            "Audit events not written, by reason: queue_full (the writer fell behind), \
             write_error (the file could not be written)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, value) in [("queue_full", queue_full), ("write_error", write_error)] {
            dropped
                .encode_family(&[("reason", reason)])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)?;
        }
        counter(
            &mut encoder,
            "authproxy_audit_file_reopened",
            "Times the audit file was opened again after it was moved or deleted",
            reopened,
        )
    }
}

struct Families {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<MethodLabel>,
    in_flight_short: Gauge,
    in_flight_long: Gauge,
    authentications: Family<AuthnLabels, Counter>,
    authn_duration: HistogramFamily<AuthenticatorLabel>,
    upstream_errors: Family<KindLabel, Counter>,
    #[cfg_attr(not(feature = "webhook"), allow(dead_code))]
    tokenreviews: Family<ResultLabel, Counter>,
    issued_tokens: Counter,
    scrape_time: Arc<ScrapeTime>,
    backends: Arc<super::backends::BackendFamilies>,
    config_reloads: ConfigReloads,
}

/// Every metric of one proxy. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "authproxy_http_requests",
            "Requests answered, by status code, method and kind",
            requests.clone(),
        );
        let request_duration: HistogramFamily<MethodLabel> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "authproxy_http_request_duration_seconds",
            "Time to the response head of short (not long-running) requests",
            request_duration.clone(),
        );
        let in_flight = Family::<KindLabel, Gauge>::default();
        registry.register(
            "authproxy_http_requests_in_flight",
            "Requests being served, by kind; long-running ones until their stream ends",
            in_flight.clone(),
        );
        let in_flight_short = in_flight
            .get_or_create(&KindLabel {
                kind: RequestKind::Short.label(),
            })
            .clone();
        let in_flight_long = in_flight
            .get_or_create(&KindLabel {
                kind: RequestKind::LongRunning.label(),
            })
            .clone();
        let authentications = Family::<AuthnLabels, Counter>::default();
        registry.register(
            "authproxy_authentications",
            "Credentials an authenticator decided on, by authenticator and result",
            authentications.clone(),
        );
        let authn_duration: HistogramFamily<AuthenticatorLabel> =
            Family::new_with_constructor(authn_histogram);
        registry.register(
            "authproxy_authentication_duration_seconds",
            "Time an authenticator took to decide, cache hits included",
            authn_duration.clone(),
        );
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "authproxy_upstream_errors",
            "Authenticated requests the API server could not be asked, by kind",
            upstream_errors.clone(),
        );
        let tokenreviews = Family::<ResultLabel, Counter>::default();
        registry.register(
            "authproxy_tokenreviews",
            "TokenReviews answered by the webhook, by result",
            tokenreviews.clone(),
        );
        let issued_tokens = Counter::default();
        registry.register(
            "authproxy_issued_tokens",
            "Tokens issued after a login",
            issued_tokens.clone(),
        );
        registry.register(
            "authproxy_build",
            "The version of authproxy",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        // Every bounded label value starts at zero, so rate() and alerts see the series.
        for kind in ["unavailable", "bad_gateway", "timeout"] {
            let _ = upstream_errors.get_or_create(&KindLabel { kind });
        }
        for result in ["authenticated", "unauthenticated", "error"] {
            let _ = tokenreviews.get_or_create(&ResultLabel { result });
        }
        let _ = authentications.get_or_create(&AuthnLabels {
            authenticator: Arc::from("none"),
            result: "unclaimed",
        });
        let scrape_time = Arc::new(ScrapeTime::default());
        registry.register_collector(Box::new(scrape_time.clone()));
        let backends = Arc::new(super::backends::BackendFamilies::default());
        registry.register_collector(Box::new(backends.clone()));
        let config_reloads = ConfigReloads::register(&mut registry);
        Metrics {
            families: Arc::new(Families {
                registry: Mutex::new(registry),
                requests,
                request_duration,
                in_flight_short,
                in_flight_long,
                authentications,
                authn_duration,
                upstream_errors,
                tokenreviews,
                issued_tokens,
                scrape_time,
                backends,
                config_reloads,
            }),
        }
    }

    /// Every family in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Ok(registry) = self.families.registry.lock() {
            if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
                text.clear();
                let _ = writeln!(text, "# encoding failed\n# EOF");
            }
        }
        text
    }

    /// A chain whose members count their answers and time them, labelled by
    /// name (`static-tokens`, `x509`, `issued`, `ldap`, `oidc`); its caches,
    /// OIDC key sets and LDAP directory are read at scrape time.
    pub fn instrument_chain(&self, chain: &Chain) -> Chain {
        self.observe_chain(chain);
        self.wrap_chain(chain)
    }

    /// Reads `chain`'s token cache, OIDC key and LDAP counters at each
    /// scrape. Register a chain once: one whose authenticators are replaced
    /// on reload ([`crate::authn::SwappableChain`]) shows the ones in force.
    pub fn observe_chain(&self, chain: &Chain) {
        if let Ok(mut chains) = self.families.scrape_time.chains.lock() {
            chains.push(chain.clone());
        }
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            sources.chains.push(chain.clone());
        }
    }

    /// Keeps the OIDC and LDAP counts of `chain`, about to be replaced (a
    /// reload): the totals go on from them instead of starting again.
    pub fn retire_chain(&self, chain: &Chain) {
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            let mut counters = crate::counters::AuthnCounters::default();
            chain.counters(&mut counters);
            let retired = &mut sources.retired;
            for ldap in counters.ldap {
                if !retired.ldap.iter().any(|l| Arc::ptr_eq(l, &ldap)) {
                    retired.ldap.push(ldap);
                }
            }
            for keys in counters.key_fetches {
                if !retired.key_fetches.iter().any(|k| Arc::ptr_eq(k, &keys)) {
                    retired.key_fetches.push(keys);
                }
            }
        }
    }

    /// `chain` with every authenticator counting and timing its answers,
    /// without registering it (see [`Metrics::observe_chain`]).
    pub fn wrap_chain(&self, chain: &Chain) -> Chain {
        Chain::new(
            chain
                .authenticators()
                .iter()
                .map(|a| Arc::new(self.instrument(a.clone())) as Arc<dyn Authenticator>)
                .collect(),
        )
    }

    /// One authenticator that counts its answers and times them.
    pub fn instrument(&self, inner: Arc<dyn Authenticator>) -> InstrumentedAuthenticator {
        let label: Arc<str> = authenticator_label(inner.name()).into();
        let f = &self.families;
        let count = |result: &'static str| {
            f.authentications
                .get_or_create(&AuthnLabels {
                    authenticator: label.clone(),
                    result,
                })
                .clone()
        };
        InstrumentedAuthenticator {
            success: count("success"),
            invalid: count("invalid"),
            throttled: count("throttled"),
            unavailable: count("unavailable"),
            duration: f
                .authn_duration
                .get_or_create(&AuthenticatorLabel {
                    authenticator: label.clone(),
                })
                .clone(),
            label,
            inner,
        }
    }

    /// Shares the audit log's counters with the scrape.
    pub fn observe_audit(&self, counters: Arc<AuditCounters>) {
        if let Ok(mut audit) = self.families.scrape_time.audit.lock() {
            *audit = Some(counters);
        }
    }

    /// Reads the upstream's connections and requests in flight at scrape time.
    pub fn observe_upstream(&self, counters: Arc<crate::counters::UpstreamCounters>) {
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            sources.upstreams.push(counters);
        }
    }

    /// Reads the checks of callers' own impersonation of one API server
    /// at scrape time.
    pub fn observe_reviews(&self, counters: Arc<crate::counters::ReviewCounters>) {
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            sources.reviews.push(counters);
        }
    }

    #[cfg(feature = "tunnel")]
    /// Adds the agent tunnel families (see [`crate::tunnel::metrics`]).
    pub fn register_tunnels(&self, tunnels: &crate::tunnel::metrics::TunnelMetrics) {
        if let Ok(mut registry) = self.families.registry.lock() {
            tunnels.register(&mut registry);
        }
    }

    /// Reads a login throttle's refusals at scrape time, labelled
    /// `authenticator` (a fixed name: `token-exchange`, `webhook`).
    pub fn observe_throttle(
        &self,
        authenticator: &'static str,
        counters: Arc<crate::counters::ThrottleCounters>,
    ) {
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            sources.throttles.push((authenticator, counters));
        }
    }

    /// Reports the directory lookups of issued tokens' users
    /// (`authproxy_issued_token_refreshes_total`).
    pub fn observe_refreshes(&self, counters: Arc<crate::counters::RefreshCounters>) {
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            sources.refreshes.push(counters);
        }
    }

    /// Reports the revocations of issued tokens (`authproxy_revocations_*`).
    pub fn observe_revocations(&self, counters: Arc<crate::counters::RevocationCounters>) {
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            sources.revocations.push(counters);
        }
    }

    /// Reports what session recording does (`authproxy_session_recordings`,
    /// `authproxy_session_recording_dropped_bytes`).
    pub fn observe_recordings(&self, counters: Arc<crate::counters::RecordingCounters>) {
        if let Ok(mut sources) = self.families.backends.sources.lock() {
            sources.recordings.push(counters);
        }
    }

    /// Counts one request that started: the returned guard lowers the
    /// in-flight gauge when dropped.
    pub(crate) fn start(&self, kind: RequestKind) -> InFlight {
        let gauge = match kind {
            RequestKind::Short => &self.families.in_flight_short,
            RequestKind::LongRunning => &self.families.in_flight_long,
        };
        gauge.inc();
        InFlight(gauge.clone())
    }

    /// Counts one answered request (at its response head).
    pub(crate) fn answered(
        &self,
        method: &'static str,
        code: u16,
        kind: RequestKind,
        started: Instant,
    ) {
        let f = &self.families;
        f.requests
            .get_or_create(&RequestLabels {
                code,
                method,
                kind: kind.label(),
            })
            .inc();
        if kind == RequestKind::Short {
            f.request_duration
                .get_or_create(&MethodLabel { method })
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Counts a request no authenticator claimed (or without a credential).
    pub(crate) fn unclaimed(&self) {
        self.families
            .authentications
            .get_or_create(&AuthnLabels {
                authenticator: Arc::from("none"),
                result: "unclaimed",
            })
            .inc();
    }

    /// Counts an authenticated request the API server could not be asked.
    pub(crate) fn upstream_error(&self, kind: &'static str) {
        self.families
            .upstream_errors
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    #[cfg(feature = "webhook")]
    /// Counts one TokenReview answer by result: `authenticated`,
    /// `unauthenticated` (no, unknown or invalid token) or `error` (a
    /// backend is unavailable, or logins are throttled).
    pub fn tokenreview(&self, answer: &crate::tokenreview::TokenReviewResponse) {
        let result = match (answer.status.authenticated, answer.status.error.as_deref()) {
            (true, _) => "authenticated",
            (false, Some("no token" | "token not recognized" | "token is invalid") | None) => {
                "unauthenticated"
            }
            (false, Some(_)) => "error",
        };
        self.families
            .tokenreviews
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts one issued token.
    pub fn issued_token(&self) {
        self.families.issued_tokens.inc();
    }
}

/// The label of an authenticator: its name, without a cache's `cached(...)`.
fn authenticator_label(name: &str) -> &str {
    name.strip_prefix("cached(")
        .and_then(|n| n.strip_suffix(')'))
        .unwrap_or(name)
}

/// Lowers an in-flight gauge when dropped.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An authenticator that counts its answers by result and times them, and
/// tells the request's audit record who decided (see the `record` module of `observe`).
pub struct InstrumentedAuthenticator {
    inner: Arc<dyn Authenticator>,
    label: Arc<str>,
    success: Counter,
    invalid: Counter,
    throttled: Counter,
    unavailable: Counter,
    duration: Histogram,
}

impl InstrumentedAuthenticator {
    async fn timed(
        &self,
        credential: &Credential,
    ) -> Result<Option<Arc<crate::Identity>>, AuthnError> {
        let started = Instant::now();
        let result = self.inner.authenticate(credential).await;
        let outcome = match &result {
            Ok(None) => return result,
            Ok(Some(_)) => {
                self.success.inc();
                "success"
            }
            Err(AuthnError::Invalid(_)) => {
                self.invalid.inc();
                "invalid"
            }
            Err(AuthnError::TooManyAttempts { .. }) => {
                self.throttled.inc();
                "throttled"
            }
            Err(AuthnError::Unavailable { .. }) => {
                self.unavailable.inc();
                "unavailable"
            }
        };
        self.duration.observe(started.elapsed().as_secs_f64());
        super::record::decided(
            &self.label,
            outcome,
            result.as_ref().ok().and_then(Option::as_ref),
        );
        result
    }
}

impl Authenticator for InstrumentedAuthenticator {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        Box::pin(self.timed(credential))
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        self.inner.counters(found);
    }

    fn cache_stats(&self) -> crate::authn::CacheStats {
        self.inner.cache_stats()
    }
}

// Reloads of watched files (certificates, CAs, keys, the authentication config).

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FileLabel {
    file: &'static str,
}

struct ConfigReloads {
    results: Family<ReloadLabels, Counter>,
    last_success: Family<FileLabel, Gauge<f64, AtomicU64>>,
}

impl ConfigReloads {
    fn register(registry: &mut Registry) -> Self {
        let results = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "authproxy_config_reloads",
            "Changed files (certificates, CAs, keys, authentication config) taken or refused, by file kind and result",
            results.clone(),
        );
        let last_success = Family::<FileLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "authproxy_config_last_reload_success_timestamp_seconds",
            "When a changed file of this kind was last taken (Unix time)",
            last_success.clone(),
        );
        for kind in crate::reload::ReloadKind::ALL {
            for result in ["success", "failure"] {
                let _ = results.get_or_create(&ReloadLabels {
                    file: kind.as_str(),
                    result,
                });
            }
        }
        ConfigReloads {
            results,
            last_success,
        }
    }
}

impl crate::reload::ReloadObserver for Metrics {
    fn reload_result(&self, kind: crate::reload::ReloadKind, success: bool) {
        let reloads = &self.families.config_reloads;
        let file = kind.as_str();
        let result = if success { "success" } else { "failure" };
        reloads
            .results
            .get_or_create(&ReloadLabels { file, result })
            .inc();
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            reloads
                .last_success
                .get_or_create(&FileLabel { file })
                .set(now);
        }
    }
}

impl Metrics {
    /// A reporter that counts reloads in `authproxy_config_reloads_total`.
    pub fn reload_reporter(&self) -> crate::reload::ReloadReporter {
        crate::reload::ReloadReporter::new(Arc::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::StaticTokens;
    use crate::credential::Secret;

    #[tokio::test]
    async fn authentications_are_counted_by_authenticator_and_result() {
        let metrics = Metrics::new();
        let tokens = StaticTokens::from_csv("good,alice,1,devs\n", "inline").unwrap();
        let chain = metrics.instrument_chain(&Chain::new(vec![Arc::new(tokens)]));
        for token in ["good", "good", "bad"] {
            let _ = chain
                .authenticate(&Credential::Bearer(Secret::new(token)))
                .await;
        }
        let text = metrics.encode();
        assert!(
            text.contains(
                "authproxy_authentications_total{authenticator=\"static-tokens\",result=\"success\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("authproxy_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            !text.contains("good"),
            "a token reached the metrics: {text}"
        );
    }

    /// The checks of callers' impersonation of every API server are summed
    /// by result; the family is declared before any reviewer exists.
    #[test]
    fn impersonation_reviews_are_counted_by_result() {
        use crate::counters::{ReviewCounters, ReviewResult};
        let metrics = Metrics::new();
        assert!(
            metrics
                .encode()
                .contains("# TYPE authproxy_impersonation_reviews counter"),
            "{}",
            metrics.encode()
        );
        let (first, second) = (
            Arc::new(ReviewCounters::default()),
            Arc::new(ReviewCounters::default()),
        );
        metrics.observe_reviews(first.clone());
        metrics.observe_reviews(second.clone());
        first.count(ReviewResult::Allowed);
        second.count(ReviewResult::Allowed);
        second.count(ReviewResult::Throttled);
        let text = metrics.encode();
        for line in [
            "authproxy_impersonation_reviews_total{result=\"allowed\"} 2\n",
            "authproxy_impersonation_reviews_total{result=\"throttled\"} 1\n",
            "authproxy_impersonation_reviews_total{result=\"denied\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[tokio::test]
    async fn cache_hits_and_misses_are_read_at_scrape_time() {
        let metrics = Metrics::new();
        let tokens = StaticTokens::from_csv("good,alice,1,devs\n", "inline").unwrap();
        let cached = crate::authn::CachedAuthenticator::new(
            Arc::new(Chain::named("oidc", vec![Arc::new(tokens)])),
            crate::authn::cache::CacheSettings::default(),
        );
        let chain = metrics.instrument_chain(&Chain::new(vec![Arc::new(cached)]));
        for token in ["good", "good", "good", "other"] {
            let _ = chain
                .authenticate(&Credential::Bearer(Secret::new(token)))
                .await;
        }
        let text = metrics.encode();
        assert!(
            text.contains("authproxy_token_cache_hits_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("authproxy_token_cache_misses_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "authproxy_authentications_total{authenticator=\"oidc\",result=\"success\"} 3"
            ),
            "{text}"
        );
    }

    #[test]
    fn backend_families_are_declared_and_read_at_scrape_time() {
        use crate::counters::{
            Protocol, RetryReason, ThrottleCounters, ThrottleScope, UpstreamCounters,
        };
        let metrics = Metrics::new();
        let text = metrics.encode();
        for family in [
            "# TYPE authproxy_oidc_key_fetches counter",
            "# TYPE authproxy_oidc_keys_age_seconds gauge",
            "# TYPE authproxy_ldap_pool_connections gauge",
            "# TYPE authproxy_ldap_operation_duration_seconds histogram",
            "# TYPE authproxy_ldap_errors counter",
            "# TYPE authproxy_login_throttled counter",
            "# TYPE authproxy_upstream_connections gauge",
            "# TYPE authproxy_upstream_requests_in_flight gauge",
            "# TYPE authproxy_upstream_requests_retried counter",
        ] {
            assert!(text.contains(family), "{family} in {text}");
        }
        let upstream = Arc::new(UpstreamCounters::default());
        let throttle = Arc::new(ThrottleCounters::default());
        metrics.observe_upstream(upstream.clone());
        metrics.observe_throttle("webhook", throttle.clone());
        let _conn = upstream.connection(Protocol::Http2);
        let _streams = [
            upstream.request(Protocol::Http2),
            upstream.request(Protocol::Http2),
        ];
        throttle.throttled(ThrottleScope::Client);
        upstream.count_retry(RetryReason::GoAway);
        let text = metrics.encode();
        for sample in [
            "authproxy_upstream_connections{protocol=\"http2\"} 1\n",
            "authproxy_upstream_connections{protocol=\"http1\"} 0\n",
            "authproxy_upstream_requests_in_flight{protocol=\"http2\"} 2\n",
            "authproxy_upstream_requests_retried_total{reason=\"goaway\"} 1\n",
            "authproxy_upstream_requests_retried_total{reason=\"refused\"} 0\n",
            "authproxy_login_throttled_total{authenticator=\"webhook\",scope=\"client\"} 1\n",
            "authproxy_login_throttled_total{authenticator=\"webhook\",scope=\"user\"} 0\n",
        ] {
            assert!(text.contains(sample), "{sample} in {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn cache_names_are_unwrapped() {
        assert_eq!(authenticator_label("cached(oidc)"), "oidc");
        assert_eq!(authenticator_label("ldap"), "ldap");
    }
}
