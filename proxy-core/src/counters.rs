//! Counters that components own and bump with atomics, read by the metrics
//! at scrape time ([`crate::observe::metrics`]).
//!
//! A component (an OIDC key set, the LDAP directory, a throttle, the
//! upstream pool) keeps an `Arc` of its counters and never learns whether
//! anybody reads them; the metrics are handed the same `Arc` when the proxy
//! is put together. Bumping one is an atomic add: no lock, no allocation.
//! Every label a reader derives from them is bounded: an issuer URL from the
//! configuration, an operation, an error kind, a scope. Never a user name,
//! token, `kid` or DN.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A histogram of durations with fixed bucket bounds, in atomics.
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: &'static [f64],
    /// One per bound, then one for `+Inf`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observed durations, in seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// `(upper bound in seconds, observations in this bucket)`, not
    /// cumulative, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        LatencyHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The values now (each read on its own: a scrape racing an
    /// observation may see it in the count but not yet in a bucket).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
    }
}

impl HistogramSnapshot {
    /// Adds `other`'s observations (same bounds) to these.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        self.sum += other.sum;
        self.count += other.count;
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.1 += theirs.1;
        }
    }
}

/// How one check of a caller's own impersonation (`kubectl --as`) was
/// answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewResult {
    /// Asked of the API server, which allowed it.
    Allowed,
    /// Asked of the API server, which refused it.
    Denied,
    /// Asked of the API server, which could not be asked or answered badly.
    Failed,
    /// Answered from the cache: not asked.
    Cached,
    /// Not asked: the user's review budget was used up.
    Throttled,
}

impl ReviewResult {
    /// Every result, in label order.
    pub const ALL: [ReviewResult; 5] = [
        ReviewResult::Allowed,
        ReviewResult::Denied,
        ReviewResult::Failed,
        ReviewResult::Cached,
        ReviewResult::Throttled,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            ReviewResult::Allowed => "allowed",
            ReviewResult::Denied => "denied",
            ReviewResult::Failed => "error",
            ReviewResult::Cached => "cached",
            ReviewResult::Throttled => "throttled",
        }
    }
}

/// Checks of callers' own impersonation, by result.
#[derive(Debug, Default)]
pub struct ReviewCounters {
    counts: [AtomicU64; 5],
}

impl ReviewCounters {
    /// Counts one check.
    pub fn count(&self, result: ReviewResult) {
        self.counts[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Checks with `result` so far.
    pub fn get(&self, result: ReviewResult) -> u64 {
        self.counts[result as usize].load(Ordering::Relaxed)
    }
}

/// Which budget refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleScope {
    /// A user name (or the directory entry it names).
    User,
    /// A client address.
    Client,
    /// A presented token (kept only as a keyed hash).
    Token,
}

impl ThrottleScope {
    /// Every scope, in label order.
    pub const ALL: [ThrottleScope; 3] = [
        ThrottleScope::User,
        ThrottleScope::Client,
        ThrottleScope::Token,
    ];
}

impl ThrottleScope {
    /// The `scope` label.
    pub fn label(self) -> &'static str {
        match self {
            ThrottleScope::User => "user",
            ThrottleScope::Client => "client",
            ThrottleScope::Token => "token",
        }
    }
}

/// Logins refused by a throttle, by scope.
#[derive(Debug, Default)]
pub struct ThrottleCounters {
    user: AtomicU64,
    client: AtomicU64,
    token: AtomicU64,
}

impl ThrottleCounters {
    /// Counts one refused attempt.
    pub fn throttled(&self, scope: ThrottleScope) {
        let counter = match scope {
            ThrottleScope::User => &self.user,
            ThrottleScope::Client => &self.client,
            ThrottleScope::Token => &self.token,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Refused attempts in `scope` so far.
    pub fn get(&self, scope: ThrottleScope) -> u64 {
        match scope {
            ThrottleScope::User => self.user.load(Ordering::Relaxed),
            ThrottleScope::Client => self.client.load(Ordering::Relaxed),
            ThrottleScope::Token => self.token.load(Ordering::Relaxed),
        }
    }
}

/// JWKS fetches of one OIDC issuer and when its keys were last loaded.
#[derive(Debug)]
pub struct KeyFetchCounters {
    issuer: Arc<str>,
    succeeded: AtomicU64,
    failed: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last load, plus one; 0: never.
    loaded_at: AtomicU64,
    /// Why the last fetch failed, while no fetch has succeeded since.
    last_error: std::sync::Mutex<Option<String>>,
}

impl KeyFetchCounters {
    /// Counters for the issuer with this (configured) URL.
    pub fn new(issuer: &str) -> Self {
        KeyFetchCounters {
            issuer: issuer.into(),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: Instant::now(),
            loaded_at: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// Counts a fetch that failed, and says why (never a secret: an
    /// issuer's URL and what went wrong with it).
    pub fn failed_because(&self, error: &str) {
        self.failed();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_owned());
        }
    }

    /// Why the last fetch failed, while no fetch has succeeded since.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    /// The issuer URL, as configured.
    pub fn issuer(&self) -> &Arc<str> {
        &self.issuer
    }

    /// Counts a fetch that failed (the last good keys stay in use).
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a fetch that loaded keys now (`fetched`) or keys installed
    /// without a fetch (`!fetched`, preloaded): either way their age restarts.
    pub fn loaded(&self, fetched: bool) {
        if fetched {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.loaded_at.store(millis + 1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
    }

    /// `(succeeded, failed)` fetches so far.
    pub fn fetches(&self) -> (u64, u64) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// How long ago the keys in use were loaded; `None` before the first load.
    pub fn keys_age(&self) -> Option<Duration> {
        match self.loaded_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(at - 1)),
            ),
        }
    }
}

/// An LDAP operation, as timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapOperation {
    /// A user's bind with their password.
    Bind,
    /// The service account's bind on a new pooled connection.
    ServiceBind,
    /// A search as the service account.
    Search,
}

impl LdapOperation {
    /// Every operation, in label order.
    pub const ALL: [LdapOperation; 3] = [
        LdapOperation::Bind,
        LdapOperation::ServiceBind,
        LdapOperation::Search,
    ];

    /// The `operation` label.
    pub fn label(self) -> &'static str {
        match self {
            LdapOperation::Bind => "bind",
            LdapOperation::ServiceBind => "service_bind",
            LdapOperation::Search => "search",
        }
    }
}

/// Why an LDAP operation (or opening a connection) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdapErrorKind {
    /// No answer within `connectTimeout` / `operationTimeout`.
    Timeout,
    /// The directory could not be reached, or the connection broke.
    Unavailable,
    /// The directory answered something unusable (a refused service bind,
    /// an error result, a TLS or protocol failure).
    Protocol,
}

impl LdapErrorKind {
    /// Every kind, in label order.
    pub const ALL: [LdapErrorKind; 3] = [
        LdapErrorKind::Timeout,
        LdapErrorKind::Unavailable,
        LdapErrorKind::Protocol,
    ];

    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            LdapErrorKind::Timeout => "timeout",
            LdapErrorKind::Unavailable => "unavailable",
            LdapErrorKind::Protocol => "protocol",
        }
    }
}

/// Bucket bounds of LDAP operations: 0.5 ms to ~16 s.
const LDAP_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096, 8.192, 16.384,
];

#[derive(Debug, Default)]
struct PoolSlot {
    open: AtomicBool,
    in_use: AtomicU32,
}

/// Counters of one LDAP directory: its service connection pool, operation
/// latencies, errors and throttled logins.
#[derive(Debug)]
pub struct LdapCounters {
    slots: Box<[PoolSlot]>,
    latency: [LatencyHistogram; 3],
    errors: [AtomicU64; 3],
    /// Logins refused by the per-user and per-client throttles.
    pub throttled: ThrottleCounters,
}

/// Marks a pooled connection in use until dropped.
#[derive(Debug)]
pub struct InUse<'a>(&'a AtomicU32);

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LdapCounters {
    /// Counters for a pool of `pool_size` service connections.
    pub fn new(pool_size: usize) -> Self {
        LdapCounters {
            slots: (0..pool_size).map(|_| PoolSlot::default()).collect(),
            latency: LdapOperation::ALL.map(|_| LatencyHistogram::new(LDAP_BOUNDS)),
            errors: Default::default(),
            throttled: ThrottleCounters::default(),
        }
    }

    /// Records whether pool slot `slot` holds an open connection.
    pub fn set_open(&self, slot: usize, open: bool) {
        if let Some(s) = self.slots.get(slot) {
            s.open.store(open, Ordering::Relaxed);
        }
    }

    /// Marks pool slot `slot`'s connection in use until the guard is dropped.
    pub fn in_use(&self, slot: usize) -> Option<InUse<'_>> {
        let s = self.slots.get(slot)?;
        s.in_use.fetch_add(1, Ordering::Relaxed);
        Some(InUse(&s.in_use))
    }

    /// `(idle, in use)` open pooled connections now.
    pub fn pool(&self) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| s.open.load(Ordering::Relaxed))
            .fold((0, 0), |(idle, busy), s| {
                if s.in_use.load(Ordering::Relaxed) > 0 {
                    (idle, busy + 1)
                } else {
                    (idle + 1, busy)
                }
            })
    }

    /// The latency histogram of `operation`.
    pub fn latency(&self, operation: LdapOperation) -> &LatencyHistogram {
        &self.latency[operation as usize]
    }

    /// Counts one failure.
    pub fn failed(&self, kind: LdapErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures of `kind` so far.
    pub fn errors(&self, kind: LdapErrorKind) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }
}

/// The protocol of an upstream connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2, over the pool.
    Http2,
    /// HTTP/1.1: servers without HTTP/2, and upgrades.
    Http1,
}

impl Protocol {
    /// Both, in label order.
    pub const ALL: [Protocol; 2] = [Protocol::Http2, Protocol::Http1];

    /// The `protocol` label.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http2 => "http2",
            Protocol::Http1 => "http1",
        }
    }
}

/// Why a request was sent to the API server again: it had not processed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Its connection got GOAWAY before the request went out, or the GOAWAY
    /// named an earlier last stream.
    GoAway,
    /// Its stream was reset with `REFUSED_STREAM`.
    Refused,
}

impl RetryReason {
    /// Both, in label order.
    pub const ALL: [RetryReason; 2] = [RetryReason::GoAway, RetryReason::Refused];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::GoAway => "goaway",
            RetryReason::Refused => "refused",
        }
    }
}

/// Connections to the API server and requests on them, now, and requests
/// sent again so far; and how the API server last answered the proxy's
/// own credential.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    connections: [AtomicI64; 2],
    in_flight: [AtomicI64; 2],
    retried: [AtomicU64; 2],
    health: Arc<UpstreamHealth>,
}

/// How an API server last answered the proxy's own credential, shared by
/// the clients that reach it (the proxy's, and its readiness check's).
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    /// Answers that refused the proxy's credential (401).
    credential_refused: AtomicU64,
    /// Since when (ms since the Unix epoch) the API server refuses the
    /// proxy's credential; 0 while it takes it.
    refused_since: AtomicU64,
    /// Since when the API server cannot be reached; 0 while it answers.
    unreachable_since: AtomicU64,
    /// When a refusal of the credential was last logged.
    last_warned: AtomicU64,
}

/// Milliseconds since the Unix epoch, now.
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .max(1)
}

/// How long an API server may be unreachable before the proxy stops
/// calling itself ready (a restart of the API server is not an outage).
pub const UNREACHABLE_GRACE: Duration = Duration::from_secs(10);

/// Why an API server is not ready for the proxy's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTrouble {
    /// It refuses the proxy's own credential, since `for_` ago.
    CredentialRefused {
        /// How long it has.
        for_: Duration,
    },
    /// It cannot be reached, since `for_` ago.
    Unreachable {
        /// How long it has.
        for_: Duration,
    },
}

/// Lowers a gauge of [`UpstreamCounters`] when dropped.
#[derive(Debug)]
pub struct Open {
    counters: Arc<UpstreamCounters>,
    protocol: Protocol,
    request: bool,
}

impl Drop for Open {
    fn drop(&mut self) {
        let gauges = if self.request {
            &self.counters.in_flight
        } else {
            &self.counters.connections
        };
        gauges[self.protocol as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamCounters {
    /// Counts a connection open until the guard is dropped.
    pub fn connection(self: &Arc<Self>, protocol: Protocol) -> Open {
        self.connections[protocol as usize].fetch_add(1, Ordering::Relaxed);
        Open {
            counters: self.clone(),
            protocol,
            request: false,
        }
    }

    /// Counts a request (an HTTP/2 stream) in flight until the guard is
    /// dropped.
    pub fn request(self: &Arc<Self>, protocol: Protocol) -> Open {
        self.in_flight[protocol as usize].fetch_add(1, Ordering::Relaxed);
        Open {
            counters: self.clone(),
            protocol,
            request: true,
        }
    }

    /// Connections open now.
    pub fn connections(&self, protocol: Protocol) -> i64 {
        self.connections[protocol as usize].load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self, protocol: Protocol) -> i64 {
        self.in_flight[protocol as usize].load(Ordering::Relaxed)
    }

    /// Counts a request sent again, for `reason`.
    pub fn count_retry(&self, reason: RetryReason) {
        self.retried[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests sent again so far, for `reason`.
    pub fn retried(&self, reason: RetryReason) -> u64 {
        self.retried[reason as usize].load(Ordering::Relaxed)
    }

    /// Counters of another client of the same API server, sharing this
    /// one's [`UpstreamHealth`].
    pub fn sharing_health(&self) -> UpstreamCounters {
        UpstreamCounters {
            health: self.health.clone(),
            ..Default::default()
        }
    }

    /// How the API server answers the proxy's credential.
    pub fn health(&self) -> &Arc<UpstreamHealth> {
        &self.health
    }
}

impl UpstreamHealth {
    /// Notes an answer that shows the API server takes the proxy's
    /// credential (anything but a 401).
    pub fn note_taken(&self) {
        self.unreachable_since.store(0, Ordering::Relaxed);
        self.refused_since.store(0, Ordering::Relaxed);
    }

    /// Notes that the API server answered (whatever it said).
    pub fn note_reachable(&self) {
        self.unreachable_since.store(0, Ordering::Relaxed);
    }

    /// Notes that the proxy's own check was refused with a 401: the API
    /// server refuses the proxy's credential. Returns true when this should
    /// be logged (at most once a minute). Only the proxy's checks say so: a
    /// caller's request can be answered 401 by what kube proxies to (a
    /// pod, an aggregated API server), which says nothing of the proxy.
    pub fn note_refused(&self) -> bool {
        self.unreachable_since.store(0, Ordering::Relaxed);
        let now = now_millis();
        let _ = self
            .refused_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        let last = self.last_warned.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 60_000
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether a check found the proxy's credential refused (and nothing
    /// has taken it since).
    pub fn refused(&self) -> bool {
        self.refused_since.load(Ordering::Relaxed) != 0
    }

    /// Counts a caller's request answered 503 because the credential is
    /// refused.
    pub fn count_refused(&self) {
        self.credential_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that the API server could not be reached.
    pub fn note_unreachable(&self) {
        let _ = self.unreachable_since.compare_exchange(
            0,
            now_millis(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Answers that refused the proxy's credential so far.
    pub fn credential_refused(&self) -> u64 {
        self.credential_refused.load(Ordering::Relaxed)
    }

    /// What keeps the API server from serving the proxy's requests, if
    /// anything: a refused credential at once, an unreachable server once
    /// it has been for `grace`.
    pub fn trouble(&self, grace: Duration) -> Option<UpstreamTrouble> {
        let now = now_millis();
        let since = |at: &AtomicU64| match at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(now.saturating_sub(at))),
        };
        if let Some(for_) = since(&self.refused_since) {
            return Some(UpstreamTrouble::CredentialRefused { for_ });
        }
        since(&self.unreachable_since)
            .filter(|for_| *for_ >= grace)
            .map(|for_| UpstreamTrouble::Unreachable { for_ })
    }
}

/// The counters found in an authenticator chain, for the metrics (see
/// [`crate::authn::Authenticator::counters`]).
#[derive(Debug, Default, Clone)]
pub struct AuthnCounters {
    /// One per OIDC issuer.
    pub key_fetches: Vec<Arc<KeyFetchCounters>>,
    /// One per LDAP directory.
    pub ldap: Vec<Arc<LdapCounters>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let h = LatencyHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)]);
        assert!((s.sum - 3.0065).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn pool_slots_are_idle_or_in_use_only_while_open() {
        let c = LdapCounters::new(3);
        c.set_open(0, true);
        c.set_open(1, true);
        let busy = c.in_use(1);
        let closed = c.in_use(2);
        assert_eq!(c.pool(), (1, 1));
        drop((busy, closed));
        assert_eq!(c.pool(), (2, 0));
        assert!(c.in_use(7).is_none());
    }

    #[test]
    fn upstream_gauges_fall_when_guards_drop() {
        let c = Arc::new(UpstreamCounters::default());
        let conn = c.connection(Protocol::Http2);
        let a = c.request(Protocol::Http2);
        let b = c.request(Protocol::Http1);
        assert_eq!(c.connections(Protocol::Http2), 1);
        assert_eq!(c.in_flight(Protocol::Http2), 1);
        assert_eq!(c.in_flight(Protocol::Http1), 1);
        drop((a, b, conn));
        assert_eq!(c.connections(Protocol::Http2), 0);
        assert_eq!(c.in_flight(Protocol::Http1), 0);
    }

    #[test]
    fn keys_have_no_age_until_loaded() {
        let c = KeyFetchCounters::new("https://idp.example");
        assert_eq!(c.keys_age(), None);
        c.failed();
        c.loaded(true);
        assert!(c.keys_age().is_some());
        assert_eq!(c.fetches(), (1, 1));
    }
}

/// Counts of what recording did, for metrics.
#[derive(Debug, Default)]
pub struct RecordingCounters {
    /// Sessions recorded (a file was created).
    pub sessions: AtomicU64,
    /// Sessions that were to be recorded and could not be (the file could
    /// not be created).
    pub failed: AtomicU64,
    /// Bytes of sessions not recorded because a writer fell behind.
    pub dropped_bytes: AtomicU64,
    /// Recorded sessions part of whose stream could not be read (marked in
    /// their recordings).
    pub unreadable: AtomicU64,
    /// Recorded sessions whose recording a failed write (a full disk, say)
    /// cut short (marked in their recordings when there was room).
    pub truncated: AtomicU64,
}

/// Directory lookups by result, for metrics.
#[derive(Debug, Default)]
pub struct RefreshCounters {
    /// The user is there.
    pub found: AtomicU64,
    /// The user is gone or disabled.
    pub gone: AtomicU64,
    /// The directory could not be asked.
    pub failed: AtomicU64,
}

/// Counters and gauges of the revocation set, for metrics.
#[derive(Debug, Default)]
pub struct RevocationCounters {
    /// Revocations known (entries, not yet expired).
    pub known: AtomicU64,
    /// 1 while the store is watched, 0 while it cannot be reached.
    pub store_up: AtomicBool,
    /// Revocations this process wrote, by kind: session, user, all.
    pub written: [AtomicU64; 3],
    /// Sum of the delays (milliseconds) between a revocation being made and
    /// this process learning it from the store.
    pub lag_ms_sum: AtomicU64,
    /// How many delays are in `lag_ms_sum`.
    pub lag_count: AtomicU64,
    /// The longest such delay seen, in milliseconds.
    pub lag_ms_max: AtomicU64,
    /// Issued tokens refused as revoked.
    pub refused: AtomicU64,
}
