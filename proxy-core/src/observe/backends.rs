//! The metric families read at scrape time from the counters that the
//! proxy's parts own ([`crate::counters`]): OIDC key fetches, the LDAP
//! directory, login throttles and the upstream connections.
//!
//! Every family is declared even when nothing feeds it (no LDAP configured,
//! say), so dashboards and alerts see the name; series appear as their
//! sources do. Labels are bounded: an issuer URL from the configuration,
//! and fixed words.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;

use crate::counters::{
    AuthnCounters, HistogramSnapshot, LdapErrorKind, LdapOperation, Protocol, RetryReason,
    ReviewCounters, ReviewResult, ThrottleCounters, ThrottleScope, UpstreamCounters,
};

/// The sources, registered as the proxy is put together.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    /// Chains whose OIDC and LDAP counters are read at each scrape (a chain
    /// that is swapped on reload shows the one in force).
    pub(crate) chains: Vec<crate::authn::Chain>,
    /// The OIDC and LDAP counters of chains replaced on reload: their
    /// counts stay in the totals (a counter never goes down).
    pub(crate) retired: AuthnCounters,
    /// `(authenticator label, counters)` of every login throttle.
    pub(crate) throttles: Vec<(&'static str, Arc<ThrottleCounters>)>,
    pub(crate) upstreams: Vec<Arc<UpstreamCounters>>,
    /// The checks of callers' own impersonation, one set per API server.
    pub(crate) reviews: Vec<Arc<ReviewCounters>>,
    /// What session recording did.
    pub(crate) recordings: Vec<Arc<crate::counters::RecordingCounters>>,
    /// Directory lookups of issued tokens' users.
    pub(crate) refreshes: Vec<Arc<crate::counters::RefreshCounters>>,
    /// The revocation set of issued tokens.
    pub(crate) revocations: Vec<Arc<crate::counters::RevocationCounters>>,
}

/// Encodes the families of [`Sources`] at scrape time.
#[derive(Debug, Default)]
pub(crate) struct BackendFamilies {
    pub(crate) sources: Mutex<Sources>,
}

/// One family whose samples a closure writes.
struct Samples<F> {
    kind: MetricType,
    write: F,
}

impl<F> std::fmt::Debug for Samples<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Samples")
    }
}

impl<F> EncodeMetric for Samples<F>
where
    F: Fn(&mut MetricEncoder) -> Result<(), std::fmt::Error>,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        (self.write)(&mut encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

fn family<F>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    write: F,
) -> Result<(), std::fmt::Error>
where
    F: Fn(&mut MetricEncoder) -> Result<(), std::fmt::Error>,
{
    let samples = Samples { kind, write };
    samples.encode(encoder.encode_descriptor(name, help, None, kind)?)
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

fn counter<const N: usize>(
    encoder: &mut MetricEncoder,
    labels: &Labels<'_, N>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_family(labels)?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)
}

fn gauge<const N: usize, V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut MetricEncoder,
    labels: &Labels<'_, N>,
    value: V,
) -> Result<(), std::fmt::Error> {
    encoder.encode_family(labels)?.encode_gauge(&value)
}

impl Collector for BackendFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(sources) = self.sources.lock() else {
            return Ok(());
        };
        let mut authn = AuthnCounters::default();
        for chain in &sources.chains {
            crate::authn::Authenticator::counters(chain, &mut authn);
        }
        // Counts of replaced chains, and of the chains in force: each once.
        let mut all = authn.clone();
        for retired in &sources.retired.ldap {
            if !all.ldap.iter().any(|l| Arc::ptr_eq(l, retired)) {
                all.ldap.push(retired.clone());
            }
        }
        for retired in &sources.retired.key_fetches {
            if !all.key_fetches.iter().any(|k| Arc::ptr_eq(k, retired)) {
                all.key_fetches.push(retired.clone());
            }
        }
        let e = &mut encoder;
        let oidc = &all.key_fetches;
        family(
            e,
            "authproxy_oidc_key_fetches",
            "Signing key (discovery and JWKS) fetches of an OIDC issuer, by result",
            MetricType::Counter,
            |m| {
                // One sample per issuer, old chains' counts included.
                let mut by_issuer: std::collections::BTreeMap<&str, (u64, u64)> =
                    std::collections::BTreeMap::new();
                for keys in oidc {
                    let (succeeded, failed) = keys.fetches();
                    let total = by_issuer.entry(keys.issuer()).or_default();
                    total.0 += succeeded;
                    total.1 += failed;
                }
                for (issuer, (succeeded, failed)) in by_issuer {
                    counter(m, &[("issuer", issuer), ("result", "success")], succeeded)?;
                    counter(m, &[("issuer", issuer), ("result", "failure")], failed)?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "authproxy_oidc_keys_age_seconds",
            "Time since the signing keys in use were loaded (absent until the first load)",
            MetricType::Gauge,
            |m| {
                for keys in &authn.key_fetches {
                    if let Some(age) = keys.keys_age() {
                        gauge(m, &[("issuer", keys.issuer())], age.as_secs_f64())?;
                    }
                }
                Ok(())
            },
        )?;
        let ldap = &all.ldap;
        let ldap_now = &authn.ldap;
        family(
            e,
            "authproxy_ldap_pool_connections",
            "Pooled LDAP service connections open, by state (idle, in_use)",
            MetricType::Gauge,
            |m| {
                if ldap_now.is_empty() {
                    return Ok(());
                }
                let (idle, busy) = ldap_now.iter().fold((0, 0), |(i, b), l| {
                    let (idle, busy) = l.pool();
                    (i + idle, b + busy)
                });
                gauge(m, &[("state", "idle")], idle)?;
                gauge(m, &[("state", "in_use")], busy)
            },
        )?;
        family(
            e,
            "authproxy_ldap_operation_duration_seconds",
            "Time LDAP operations took, failed and timed-out ones included, by operation",
            MetricType::Histogram,
            |m| {
                for op in LdapOperation::ALL {
                    let mut sum: Option<HistogramSnapshot> = None;
                    for l in ldap {
                        let s = l.latency(op).snapshot();
                        match &mut sum {
                            Some(total) => total.add(&s),
                            None => sum = Some(s),
                        }
                    }
                    if let Some(s) = sum {
                        m.encode_family(&[("operation", op.label())])?
                            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                            s.sum, s.count, &s.buckets, None,
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            e,
            "authproxy_ldap_errors",
            "LDAP operations and connections that failed, by kind (timeout, unavailable, protocol)",
            MetricType::Counter,
            |m| {
                if ldap.is_empty() {
                    return Ok(());
                }
                for kind in LdapErrorKind::ALL {
                    let total = ldap.iter().map(|l| l.errors(kind)).sum();
                    counter(m, &[("kind", kind.label())], total)?;
                }
                Ok(())
            },
        )?;
        let throttles: Vec<(&str, &ThrottleCounters)> = ldap
            .iter()
            .map(|l| ("ldap", &l.throttled))
            .chain(sources.throttles.iter().map(|(n, c)| (*n, &**c)))
            .collect();
        family(
            e,
            "authproxy_login_throttled",
            "Logins refused by a throttle before they were checked, by authenticator and scope (user, client, token)",
            MetricType::Counter,
            |m| {
                // One sample per authenticator and scope: several directories,
                // and the counts of replaced chains, add up.
                let mut totals: Vec<(&str, [u64; ThrottleScope::ALL.len()])> = Vec::new();
                for (authenticator, c) in &throttles {
                    let at = match totals.iter().position(|(a, _)| a == authenticator) {
                        Some(at) => at,
                        None => {
                            totals.push((authenticator, [0; ThrottleScope::ALL.len()]));
                            totals.len() - 1
                        }
                    };
                    for (i, scope) in ThrottleScope::ALL.into_iter().enumerate() {
                        totals[at].1[i] += c.get(scope);
                    }
                }
                for (authenticator, counts) in &totals {
                    for (i, scope) in ThrottleScope::ALL.into_iter().enumerate() {
                        counter(
                            m,
                            &[("authenticator", authenticator), ("scope", scope.label())],
                            counts[i],
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        let reviews = &sources.reviews;
        family(
            e,
            "authproxy_impersonation_reviews",
            "Checks of a caller's own impersonation (kubectl --as), by result (allowed, denied, error: asked of the API server; cached, throttled: not asked)",
            MetricType::Counter,
            |m| {
                if reviews.is_empty() {
                    return Ok(());
                }
                for result in ReviewResult::ALL {
                    let total: u64 = reviews.iter().map(|r| r.get(result)).sum();
                    counter(m, &[("result", result.label())], total)?;
                }
                Ok(())
            },
        )?;
        let refreshes = &sources.refreshes;
        family(
            e,
            "authproxy_issued_token_refreshes",
            "Directory lookups of the users of tokens issued after an LDAP login, by result (found, gone: deleted or disabled, failed: the directory could not be asked)",
            MetricType::Counter,
            |m| {
                if refreshes.is_empty() {
                    return Ok(());
                }
                let sum = |f: fn(&crate::counters::RefreshCounters) -> &std::sync::atomic::AtomicU64| -> u64 {
                    refreshes.iter().map(|r| f(r).load(std::sync::atomic::Ordering::Relaxed)).sum()
                };
                counter(m, &[("result", "found")], sum(|r| &r.found))?;
                counter(m, &[("result", "gone")], sum(|r| &r.gone))?;
                counter(m, &[("result", "failed")], sum(|r| &r.failed))
            },
        )?;
        let revocations = &sources.revocations;
        {
            use std::sync::atomic::Ordering::Relaxed;
            let sum = |f: fn(&crate::counters::RevocationCounters) -> u64| -> u64 {
                revocations.iter().map(|r| f(r)).sum()
            };
            family(
                e,
                "authproxy_revocations_known",
                "Revocations of issued tokens this process knows (not yet expired)",
                MetricType::Gauge,
                |m| {
                    if revocations.is_empty() {
                        return Ok(());
                    }
                    gauge(m, &[], sum(|r| r.known.load(Relaxed)) as i64)
                },
            )?;
            family(
                e,
                "authproxy_revocation_store_up",
                "1 while the revocation store is listed and watched, 0 while it cannot be reached (the last known revocations stay in force)",
                MetricType::Gauge,
                |m| {
                    if revocations.is_empty() {
                        return Ok(());
                    }
                    gauge(m, &[], sum(|r| u64::from(r.store_up.load(Relaxed))) as i64)
                },
            )?;
            family(
                e,
                "authproxy_revocations_written",
                "Revocations this process wrote to the store, by kind (session, user, all)",
                MetricType::Counter,
                |m| {
                    if revocations.is_empty() {
                        return Ok(());
                    }
                    for (i, kind) in ["session", "user", "all"].into_iter().enumerate() {
                        let total: u64 =
                            revocations.iter().map(|r| r.written[i].load(Relaxed)).sum();
                        counter(m, &[("kind", kind)], total)?;
                    }
                    Ok(())
                },
            )?;
            family(
                e,
                "authproxy_revocations_learned",
                "Revocations made elsewhere (or here) that this process learned from the store's watch",
                MetricType::Counter,
                |m| {
                    if revocations.is_empty() {
                        return Ok(());
                    }
                    counter(m, &[], sum(|r| r.lag_count.load(Relaxed)))
                },
            )?;
            family(
                e,
                "authproxy_revocation_lag_milliseconds",
                "Total delay, in milliseconds, between revocations being made and this process learning them (divide by authproxy_revocations_learned for the mean)",
                MetricType::Counter,
                |m| {
                    if revocations.is_empty() {
                        return Ok(());
                    }
                    counter(m, &[], sum(|r| r.lag_ms_sum.load(Relaxed)))
                },
            )?;
            family(
                e,
                "authproxy_revocation_lag_max_seconds",
                "The longest delay seen between a revocation being made and this process learning it",
                MetricType::Gauge,
                |m| {
                    if revocations.is_empty() {
                        return Ok(());
                    }
                    let max = revocations.iter().map(|r| r.lag_ms_max.load(Relaxed)).max().unwrap_or(0);
                    gauge(m, &[], max as f64 / 1000.0)
                },
            )?;
            family(
                e,
                "authproxy_revoked_token_refusals",
                "Requests with an issued token refused because it was revoked",
                MetricType::Counter,
                |m| {
                    if revocations.is_empty() {
                        return Ok(());
                    }
                    counter(m, &[], sum(|r| r.refused.load(Relaxed)))
                },
            )?;
        }
        let recordings = &sources.recordings;
        family(
            e,
            "authproxy_session_recordings",
            "exec and attach sessions chosen for recording, by result (recorded: a file was written; failed: it could not be created, or the protocol cannot be read, and the session went on unrecorded; incomplete: recorded, but part of the stream could not be read, as a marker in the file says; truncated: recorded until a write failed, a full disk say, and the file ends there, as a marker in it says when there was room)",
            MetricType::Counter,
            |m| {
                if recordings.is_empty() {
                    return Ok(());
                }
                let sum = |f: fn(&crate::counters::RecordingCounters) -> &std::sync::atomic::AtomicU64| -> u64 {
                    recordings.iter().map(|r| f(r).load(std::sync::atomic::Ordering::Relaxed)).sum()
                };
                counter(m, &[("result", "recorded")], sum(|r| &r.sessions))?;
                counter(m, &[("result", "failed")], sum(|r| &r.failed))?;
                counter(m, &[("result", "incomplete")], sum(|r| &r.unreadable))?;
                counter(m, &[("result", "truncated")], sum(|r| &r.truncated))
            },
        )?;
        family(
            e,
            "authproxy_session_recording_dropped_bytes",
            "Bytes of recorded sessions left out of their recordings because the writer fell behind (the session itself lost nothing)",
            MetricType::Counter,
            |m| {
                if recordings.is_empty() {
                    return Ok(());
                }
                let total: u64 = recordings
                    .iter()
                    .map(|r| r.dropped_bytes.load(std::sync::atomic::Ordering::Relaxed))
                    .sum();
                counter(m, &[], total)
            },
        )?;
        let upstreams = &sources.upstreams;
        family(
            e,
            "authproxy_upstream_connections",
            "Connections open to the API server, by protocol (http2, http1)",
            MetricType::Gauge,
            |m| {
                if upstreams.is_empty() {
                    return Ok(());
                }
                for protocol in Protocol::ALL {
                    let open: i64 = upstreams.iter().map(|u| u.connections(protocol)).sum();
                    gauge(m, &[("protocol", protocol.label())], open)?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "authproxy_upstream_requests_retried",
            "Requests sent to the API server again because it had not processed them, by reason (goaway: the connection was going away; refused: REFUSED_STREAM)",
            MetricType::Counter,
            |m| {
                if upstreams.is_empty() {
                    return Ok(());
                }
                for reason in RetryReason::ALL {
                    let total: u64 = upstreams.iter().map(|u| u.retried(reason)).sum();
                    counter(m, &[("reason", reason.label())], total)?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "authproxy_upstream_credential_refused",
            "Requests answered 503 because the API server refuses the proxy's own credential (found by the proxy's checks)",
            MetricType::Counter,
            |m| {
                if upstreams.is_empty() {
                    return Ok(());
                }
                let total: u64 = upstreams.iter().map(|u| u.health().credential_refused()).sum();
                counter(m, &[], total)
            },
        )?;
        family(
            e,
            "authproxy_upstream_trouble",
            "API servers that cannot serve the proxy's requests now, by reason (credential_refused: at once; unreachable: for longer than the readiness grace)",
            MetricType::Gauge,
            |m| {
                if upstreams.is_empty() {
                    return Ok(());
                }
                let (mut refused, mut unreachable) = (0i64, 0i64);
                for upstream in upstreams {
                    match upstream.health().trouble(crate::counters::UNREACHABLE_GRACE) {
                        Some(crate::counters::UpstreamTrouble::CredentialRefused { .. }) => {
                            refused += 1
                        }
                        Some(crate::counters::UpstreamTrouble::Unreachable { .. }) => {
                            unreachable += 1
                        }
                        None => {}
                    }
                }
                gauge(m, &[("reason", "credential_refused")], refused)?;
                gauge(m, &[("reason", "unreachable")], unreachable)
            },
        )?;
        family(
            e,
            "authproxy_upstream_requests_in_flight",
            "Requests to the API server not yet finished (HTTP/2 streams, HTTP/1.1 requests and upgraded tunnels), by protocol",
            MetricType::Gauge,
            |m| {
                if upstreams.is_empty() {
                    return Ok(());
                }
                for protocol in Protocol::ALL {
                    let open: i64 = upstreams.iter().map(|u| u.in_flight(protocol)).sum();
                    gauge(m, &[("protocol", protocol.label())], open)?;
                }
                Ok(())
            },
        )
    }
}
