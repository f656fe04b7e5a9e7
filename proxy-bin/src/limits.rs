//! Limits of a listener: timeouts, caps and sizes that keep slow, idle,
//! excess and hostile clients from holding the proxy's connections, buffers
//! and file descriptors.
//!
//! One `limits:` section of the configuration file sets them for the
//! process's listener (the proxy's, or the TokenReview webhook's). Every
//! default is one of the `DEFAULT_*` constants below.
//!
//! ```yaml
//! limits:
//!   tlsHandshakeTimeout: 10s
//!   headerReadTimeout: 30s
//!   idleTimeout: 90s
//!   maxConnections: 10000
//!   maxHeaderBytes: 65536
//!   maxRequestBodyBytes: 1048576
//!   workers: 2            # serving threads; default: one per CPU
//!   http2:
//!     maxConcurrentStreams: 250
//!     keepAliveInterval: 30s
//!     keepAliveTimeout: 20s
//!     maxPendingAcceptResetStreams: 20
//!     maxLocalErrorResetStreams: 1024
//!   agentTunnels:         # agents of via: agent clusters
//!     perCluster: 16
//!     total: 256          # agent connections, apart from maxConnections
//!     registrationsPerMinute: 60
//! ```

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use proxy_core::config::Problem;
use serde::Deserialize;

/// Default time a client has to finish the TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an HTTP/1 client has to send a whole request head; also how
/// long an HTTP/1 keep-alive connection may wait for its next request.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may stay open with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default most client connections open at once; accepting pauses at the cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default largest request head (HTTP/1 request line and headers; HTTP/2
/// header list), as Envoy's 60 KiB and a few KiB more.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default largest body the proxy's own endpoints read (token exchange,
/// TokenReview).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = proxy_core::tokenreview::MAX_BODY_BYTES;
/// Default most concurrent HTTP/2 streams per client connection (Go's and
/// kube-apiserver's default).
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 250;
/// Default interval of HTTP/2 PINGs that detect vanished clients.
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a PING may go unanswered before the connection is closed.
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default most streams a client may reset before the proxy accepted them
/// (the "rapid reset" attack) before the connection gets a GOAWAY.
pub const DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Default most streams the proxy resets for a client's protocol errors
/// before the connection gets a GOAWAY.
pub const DEFAULT_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The most serving threads `workers` may ask for.
const MAX_WORKERS: usize = proxy_core::worker::MAX_THREADS;

/// The smallest `maxHeaderBytes`: hyper's smallest HTTP/1 read buffer.
const MIN_HEADER_BYTES: usize = 8192;

/// Timeouts, caps and sizes of a listener (`limits:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Time a client has to finish the TLS handshake.
    #[serde(default = "tls_handshake_timeout", with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Time an HTTP/1 client has to send a whole request head (and the
    /// longest an HTTP/1 keep-alive connection waits for its next request).
    #[serde(default = "header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight; then it is
    /// closed gracefully (HTTP/2: GOAWAY). Streams in flight (watches, exec)
    /// keep a connection open however quiet they are.
    #[serde(default = "idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most client connections open at once (TLS handshakes and upgraded
    /// streams included). At the cap the listener stops accepting until one
    /// closes; open connections keep being served.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// Largest request head in bytes: the HTTP/1 request line and headers
    /// (beyond it: 431), the HTTP/2 header list (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    #[serde(default = "max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest body the proxy's own endpoints read (`/authproxy/v1/token`,
    /// TokenReview); beyond it: 413. Forwarded requests stream and are not
    /// limited here.
    #[serde(default = "max_request_body_bytes")]
    pub max_request_body_bytes: usize,
    /// HTTP/2 settings.
    #[serde(default)]
    pub http2: Http2Limits,
    /// Caps on long-running requests (watch, exec, attach, port-forward,
    /// proxy, `logs -f`) per user and in total.
    #[serde(default)]
    pub long_running: proxy_core::config::LongRunningConfig,
    /// Caps on the tunnels of `via: agent` clusters: per cluster, agent
    /// connections in all (apart from `maxConnections`), registrations per
    /// cluster per minute.
    #[serde(default)]
    pub agent_tunnels: proxy_core::tunnel::limits::TunnelLimitsConfig,
    /// Serving threads: each runs its own event loop and serves the
    /// connections handed to it (the one with the fewest open takes the
    /// next), over upstream connections it opened itself. Default: one per
    /// CPU the process may use.
    #[serde(default)]
    pub workers: Option<usize>,
}

/// HTTP/2 limits of a listener (`limits.http2:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Http2Limits {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: most streams open at once per connection.
    #[serde(default = "http2_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Interval of the PINGs sent to detect a vanished client; `0s` disables them.
    #[serde(default = "http2_keep_alive_interval", with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// Time a PING may go unanswered before the connection is closed.
    #[serde(default = "http2_keep_alive_timeout", with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Most streams a client may reset before they were accepted (rapid
    /// reset) before the connection is closed with GOAWAY.
    #[serde(default = "http2_max_pending_accept_reset_streams")]
    pub max_pending_accept_reset_streams: usize,
    /// Most streams reset for the client's protocol errors before the
    /// connection is closed with GOAWAY.
    #[serde(default = "http2_max_local_error_reset_streams")]
    pub max_local_error_reset_streams: usize,
}

fn tls_handshake_timeout() -> Duration {
    DEFAULT_TLS_HANDSHAKE_TIMEOUT
}
fn header_read_timeout() -> Duration {
    DEFAULT_HEADER_READ_TIMEOUT
}
fn idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}
fn max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn max_request_body_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BODY_BYTES
}
fn http2_max_concurrent_streams() -> u32 {
    DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS
}
fn http2_keep_alive_interval() -> Duration {
    DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL
}
fn http2_keep_alive_timeout() -> Duration {
    DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT
}
fn http2_max_pending_accept_reset_streams() -> usize {
    DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS
}
fn http2_max_local_error_reset_streams() -> usize {
    DEFAULT_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: tls_handshake_timeout(),
            header_read_timeout: header_read_timeout(),
            idle_timeout: idle_timeout(),
            max_connections: max_connections(),
            max_header_bytes: max_header_bytes(),
            max_request_body_bytes: max_request_body_bytes(),
            http2: Http2Limits::default(),
            long_running: Default::default(),
            agent_tunnels: Default::default(),
            workers: None,
        }
    }
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: http2_max_concurrent_streams(),
            keep_alive_interval: http2_keep_alive_interval(),
            keep_alive_timeout: http2_keep_alive_timeout(),
            max_pending_accept_reset_streams: http2_max_pending_accept_reset_streams(),
            max_local_error_reset_streams: http2_max_local_error_reset_streams(),
        }
    }
}

impl Limits {
    /// How many serving threads to run (`workers`, or one per CPU).
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(proxy_core::worker::default_count)
            .max(1)
    }

    /// The long-running caps with defaults filled in.
    pub fn long_running_limits(&self) -> proxy_core::long_running::Limits {
        self.long_running.limits()
    }

    /// Every problem, each with its field path under `prefix` (`limits`).
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut problems = self.long_running.validate(&format!("{prefix}.longRunning"));
        problems.extend(
            self.agent_tunnels
                .validate(&format!("{prefix}.agentTunnels")),
        );
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                field: format!("{prefix}.{field}"),
                message,
            })
        };
        for (field, value) in [
            ("tlsHandshakeTimeout", self.tls_handshake_timeout),
            ("headerReadTimeout", self.header_read_timeout),
            ("idleTimeout", self.idle_timeout),
            ("http2.keepAliveTimeout", self.http2.keep_alive_timeout),
        ] {
            if value.is_zero() {
                problem(field, "must be longer than 0s".into());
            }
        }
        if self.max_connections == 0 {
            problem("maxConnections", "must be at least 1".into());
        }
        match self.workers {
            Some(0) => problem("workers", "must be at least 1".into()),
            Some(n) if n > MAX_WORKERS => {
                problem("workers", format!("must be at most {MAX_WORKERS}"))
            }
            _ => {}
        }
        if self.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            problem(
                "maxConnections",
                format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            );
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            problem(
                "maxHeaderBytes",
                format!("must be at least {MIN_HEADER_BYTES}"),
            );
        }
        if u32::try_from(self.max_header_bytes).is_err() {
            problem("maxHeaderBytes", format!("must be at most {}", u32::MAX));
        }
        if self.max_request_body_bytes == 0 {
            problem("maxRequestBodyBytes", "must be at least 1".into());
        }
        if self.http2.max_concurrent_streams == 0 {
            problem("http2.maxConcurrentStreams", "must be at least 1".into());
        }
        for (field, value) in [
            (
                "http2.maxPendingAcceptResetStreams",
                self.http2.max_pending_accept_reset_streams,
            ),
            (
                "http2.maxLocalErrorResetStreams",
                self.http2.max_local_error_reset_streams,
            ),
        ] {
            if value == 0 {
                problem(field, "must be at least 1".into());
            }
        }
        problems
    }

    /// The connection builder with these limits applied (HTTP/1.1 and HTTP/2,
    /// with the timer hyper needs for its timeouts and PINGs). Call only on a
    /// validated value.
    pub fn connection_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // hyper answers 431 when a request head outgrows the read buffer.
            .max_buf_size(self.max_header_bytes.max(MIN_HEADER_BYTES));
        let keep_alive =
            (!self.http2.keep_alive_interval.is_zero()).then_some(self.http2.keep_alive_interval);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2.max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(keep_alive)
            .keep_alive_timeout(self.http2.keep_alive_timeout)
            .max_pending_accept_reset_streams(self.http2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.http2.max_local_error_reset_streams);
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_takes_every_default() {
        let limits: Limits = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(limits.tls_handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
        assert_eq!(limits.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
        assert_eq!(limits.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(limits.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(limits.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(
            limits.http2.max_concurrent_streams,
            DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS
        );
        assert!(limits.validate("limits").is_empty());
        assert_eq!(limits.worker_count(), proxy_core::worker::default_count());
    }

    #[test]
    fn workers_are_counted_as_set_within_bounds() {
        let limits: Limits = serde_yaml_ng::from_str("{workers: 3}").unwrap();
        assert_eq!(limits.worker_count(), 3);
        assert!(limits.validate("limits").is_empty());
        let limits: Limits = serde_yaml_ng::from_str("{workers: 5000}").unwrap();
        let problems = limits.validate("limits");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "limits.workers");
        assert!(
            problems[0].message.contains("1024"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn unusable_values_are_named_with_their_path() {
        let limits: Limits = serde_yaml_ng::from_str(
            "{idleTimeout: 0s, maxConnections: 0, workers: 0, maxHeaderBytes: 100, http2: {maxConcurrentStreams: 0}}",
        )
        .unwrap();
        let fields: Vec<String> = limits
            .validate("limits")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "limits.idleTimeout",
                "limits.maxConnections",
                "limits.workers",
                "limits.maxHeaderBytes",
                "limits.http2.maxConcurrentStreams"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_yaml_ng::from_str::<Limits>("{http2: {maxStreams: 5}}").is_err());
    }
}
