//! HTTP/2 connections to the API server, opened as streams run out.
//!
//! kube-apiserver lets a client open a limited number of concurrent streams
//! on one HTTP/2 connection (100 by default). Watches, `logs -f` and exec
//! sessions hold their stream for minutes or hours, so a proxy that sends
//! everything over one connection makes every new request queue behind
//! them. The pool counts the streams it has open on each connection and opens
//! another connection when every open one is full, up to
//! [`PoolSettings::max_connections`]; at that cap a request waits for a
//! stream to end. A stream slot is held until its response body ends or is
//! dropped (the caller's cancel included).
//!
//! Requests go straight to the `h2` crate: the request's own task opens the
//! stream and waits for the answer, and the connection's task reads and
//! writes the socket; no task or channel sits between them. A stream opened
//! past the peer's `SETTINGS_MAX_CONCURRENT_STREAMS` would wait inside the
//! connection, so the pool opens at most that many on a connection: the
//! server's value once its SETTINGS arrived (read again at each idle check,
//! within a second), never more than
//! [`PoolSettings::max_streams_per_connection`] (kube's 100 by default).
//!
//! Connections send HTTP/2 PING frames so a dead API server (or a silently
//! dropped NAT entry) is noticed: one left unanswered for
//! [`PoolSettings::keep_alive_timeout`] closes the connection, and its
//! requests fail with a `Status`. A connection whose server sent GOAWAY (a
//! graceful shutdown, as when kube-apiserver restarts) takes no new streams:
//! its open streams finish, and a request it refused before sending goes to
//! another connection. A closed connection leaves the pool at once, and one
//! without streams for [`PoolSettings::idle_timeout`] is closed.
//! Connections opened for a burst of watches do not linger that long: past
//! [`PoolSettings::max_idle_connections`] idle ones (counted per serving
//! thread, see [`crate::worker`]), a connection whose last stream ended is
//! closed after [`IDLE_GRACE`], so the memory its buffers hold (a few hundred
//! KiB each) is given back soon after the watches end.
//! When the server does not offer `h2` by ALPN the pool reports it, and the
//! caller falls back to its HTTP/1.1 client from then on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};
use tower_service::Service;

use crate::counters::{Open, Protocol, UpstreamCounters};
use proxy_support::gate::Gated;

/// Default for [`PoolSettings::max_connections`]: with kube's 100 streams per
/// connection, room for the default 10,000 long-running requests
/// ([`crate::long_running::DEFAULT_TOTAL`]) and as many short ones besides.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Default for [`PoolSettings::max_streams_per_connection`] (kube-apiserver's limit).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 100;
/// Default for [`PoolSettings::keep_alive_interval`].
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default for [`PoolSettings::keep_alive_timeout`].
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default for [`PoolSettings::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default for [`PoolSettings::max_idle_connections`].
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 2;
/// How long a connection beyond [`PoolSettings::max_idle_connections`] stays
/// open without streams, so that a request arriving just after its last
/// stream ended still finds it.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How many HTTP/2 connections the pool may open and how it keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolSettings {
    /// Most HTTP/2 connections open at once; at the cap, requests wait for a
    /// free stream.
    pub max_connections: usize,
    /// Most streams the pool opens on one connection before opening another;
    /// a server announcing fewer (its `--http2-max-streams-per-connection`)
    /// gets fewer.
    pub max_streams_per_connection: usize,
    /// How often an HTTP/2 PING is sent (`None`: never).
    pub keep_alive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub keep_alive_timeout: Duration,
    /// How long a connection without streams is kept open.
    pub idle_timeout: Duration,
    /// Most connections kept open without streams, per serving thread
    /// ([`crate::worker`]; one count for all unmarked threads); further idle
    /// ones are closed [`IDLE_GRACE`] after their last stream ended. Counted
    /// per thread so that each keeps a connection of its own between bursts
    /// instead of opening a new one.
    pub max_idle_connections: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            keep_alive_interval: Some(DEFAULT_KEEP_ALIVE_INTERVAL),
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_idle_connections: DEFAULT_MAX_IDLE_CONNECTIONS,
        }
    }
}

/// Why no stream could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// The connection could not be opened (TCP, TLS or the HTTP/2 handshake).
    #[error("connecting to the upstream failed: {0}")]
    Connect(String),
}

/// Where a request goes.
pub(crate) enum Route {
    /// Over this HTTP/2 connection; the guard holds the stream slot.
    Http2(SendRequest<Bytes>, StreamGuard),
    /// The server speaks only HTTP/1.1: use the HTTP/1.1 client.
    Http1,
}

/// The pool of HTTP/2 connections to one API server.
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl Clone for Pool {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

struct Shared {
    connector: HttpsConnector<super::counted::TcpConnector>,
    /// `https://host:port` to connect to.
    target: Uri,
    settings: PoolSettings,
    state: Mutex<State>,
    /// Signalled when a stream ends or a connection changes phase.
    changed: Notify,
    http1_only: AtomicBool,
    started: Instant,
    counters: Arc<UpstreamCounters>,
}

struct State {
    conns: Vec<Arc<Conn>>,
    next_id: u64,
}

enum Phase {
    Connecting,
    Ready(SendRequest<Bytes>),
    Failed(String),
    Http1,
    Closed,
}

enum Outcome {
    Send(SendRequest<Bytes>),
    Http1,
    Failed(String),
    Retry,
}

struct Conn {
    id: u64,
    /// The serving thread that opened it ([`crate::worker`]), if any.
    home: Option<usize>,
    in_flight: AtomicUsize,
    /// Milliseconds since the pool started when the last stream ended.
    last_used: AtomicU64,
    phase: watch::Receiver<Phase>,
    /// Streams opened here at most: the setting, or the server's lower
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` once known.
    limit: AtomicUsize,
    /// Set when the server sent GOAWAY: no new streams go here.
    gone_away: AtomicBool,
}

impl Conn {
    /// True while new streams may be opened on it.
    fn usable(&self) -> bool {
        if self.gone_away.load(Ordering::Acquire) {
            return false;
        }
        match &*self.phase.borrow() {
            Phase::Connecting | Phase::Ready(_) => true,
            Phase::Failed(_) | Phase::Http1 | Phase::Closed => false,
        }
    }
}

/// A stream slot on one connection, given back when dropped.
pub(crate) struct StreamGuard {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
    _in_flight: Open,
}

impl StreamGuard {
    /// Takes the connection out of the pool for new streams (the server sent
    /// GOAWAY); its open streams finish as they would.
    pub(crate) fn retire(&self) {
        self.conn.gone_away.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let now = self.shared.started.elapsed().as_millis() as u64;
        self.conn.last_used.store(now, Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shared.changed.notify_waiters();
    }
}

impl Pool {
    /// A pool connecting to `target` (`https://host:port`) through
    /// `connector`, counting its connections and streams in `counters`.
    pub(crate) fn new(
        connector: HttpsConnector<super::counted::TcpConnector>,
        target: Uri,
        settings: PoolSettings,
        counters: Arc<UpstreamCounters>,
    ) -> Self {
        Pool {
            shared: Arc::new(Shared {
                connector,
                target,
                settings,
                state: Mutex::new(State {
                    conns: Vec::new(),
                    next_id: 0,
                }),
                changed: Notify::new(),
                http1_only: AtomicBool::new(false),
                started: Instant::now(),
                counters,
            }),
        }
    }

    /// Open HTTP/2 connections (connecting ones included).
    pub(crate) fn connections(&self) -> usize {
        self.shared
            .state
            .lock()
            .map(|s| s.conns.iter().filter(|c| c.usable()).count())
            .unwrap_or(0)
    }

    /// A stream slot on a connection with room, opening a connection when
    /// every open one is full, waiting when the pool is at its cap.
    /// Cancel-safe: a slot taken by a cancelled call is given back.
    pub(crate) async fn acquire(&self) -> Result<Route, PoolError> {
        let shared = &self.shared;
        loop {
            if shared.http1_only.load(Ordering::Acquire) {
                return Ok(Route::Http1);
            }
            // The common case takes a slot without registering as a waiter;
            // only when none is free does it register, then look again (a
            // slot freed in between is not missed), then wait.
            let conn = match self.pick() {
                Some(conn) => conn,
                None => {
                    let changed = shared.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    match self.pick() {
                        Some(conn) => conn,
                        None => {
                            changed.await;
                            continue;
                        }
                    }
                }
            };
            let guard = StreamGuard {
                conn,
                shared: shared.clone(),
                _in_flight: shared.counters.request(Protocol::Http2),
            };
            let mut phase = guard.conn.phase.clone();
            let outcome = match phase.wait_for(|p| !matches!(p, Phase::Connecting)).await {
                Ok(current) => match &*current {
                    Phase::Ready(send) => Outcome::Send(send.clone()),
                    Phase::Http1 => Outcome::Http1,
                    Phase::Failed(error) => Outcome::Failed(error.clone()),
                    // Closed meanwhile: take a slot elsewhere.
                    Phase::Closed | Phase::Connecting => Outcome::Retry,
                },
                Err(_) => Outcome::Failed("the connection task ended".into()),
            };
            match outcome {
                Outcome::Send(send) => return Ok(Route::Http2(send, guard)),
                Outcome::Http1 => return Ok(Route::Http1),
                Outcome::Failed(error) => return Err(PoolError::Connect(error)),
                Outcome::Retry => continue,
            }
        }
    }

    /// Takes a slot on the first connection with room, or starts a new one.
    ///
    /// On a serving thread ([`crate::worker`]) the connections that thread
    /// opened come first: it opens its own while the pool is under its cap,
    /// and borrows another thread's only at the cap.
    fn pick(&self) -> Option<Arc<Conn>> {
        let shared = &self.shared;
        let here = crate::worker::current();
        let mut state = shared.state.lock().ok()?;
        state.conns.retain(|c| c.usable());
        let mut elsewhere = None;
        for conn in &state.conns {
            if conn.in_flight.load(Ordering::Acquire) < conn.limit.load(Ordering::Relaxed) {
                if conn.home == here {
                    conn.in_flight.fetch_add(1, Ordering::AcqRel);
                    return Some(conn.clone());
                }
                elsewhere.get_or_insert(conn);
            }
        }
        let at_cap = state.conns.len() >= shared.settings.max_connections.max(1);
        if let Some(conn) = elsewhere.filter(|_| at_cap || here.is_none()) {
            conn.in_flight.fetch_add(1, Ordering::AcqRel);
            return Some(conn.clone());
        }
        if at_cap {
            return None;
        }
        let (tx, rx) = watch::channel(Phase::Connecting);
        let conn = Arc::new(Conn {
            id: state.next_id,
            home: here,
            in_flight: AtomicUsize::new(1),
            last_used: AtomicU64::new(0),
            phase: rx,
            limit: AtomicUsize::new(shared.settings.max_streams_per_connection.max(1)),
            gone_away: AtomicBool::new(false),
        });
        state.next_id += 1;
        state.conns.push(conn.clone());
        tracing::debug!(
            connection = conn.id,
            open = state.conns.len(),
            "opening another upstream HTTP/2 connection"
        );
        drop(state);
        tokio::spawn(run_connection(shared.clone(), conn.clone(), tx));
        Some(conn)
    }
}

/// Opens one connection, publishes its phase, drives it until it closes,
/// stays idle too long or leaves a PING unanswered, then removes it from the
/// pool.
async fn run_connection(shared: Arc<Shared>, conn: Arc<Conn>, phase: watch::Sender<Phase>) {
    let finish = |next: Phase| {
        phase.send_replace(next);
        if let Ok(mut state) = shared.state.lock() {
            state.conns.retain(|c| c.id != conn.id);
        }
        shared.changed.notify_waiters();
    };
    let mut connector = shared.connector.clone();
    let stream = match connector.call(shared.target.clone()).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "connecting to the upstream failed");
            return finish(Phase::Failed(error.to_string()));
        }
    };
    if !stream.connected().is_negotiated_h2() {
        tracing::info!("the upstream does not offer HTTP/2; using HTTP/1.1");
        shared.http1_only.store(true, Ordering::Release);
        return finish(Phase::Http1);
    }
    let settings = &shared.settings;
    let (send, mut connection) = match h2_builder(settings.max_streams_per_connection)
        .handshake::<_, Bytes>(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(error) => {
            tracing::warn!(%error, "the upstream HTTP/2 handshake failed");
            return finish(Phase::Failed(error.to_string()));
        }
    };
    let mut keep_alive = KeepAlive::new(
        connection.ping_pong(),
        settings.keep_alive_interval,
        settings.keep_alive_timeout,
    );
    // Reads the server's stream limit; dropped before an idle close.
    let mut probe = Some(send.clone());
    phase.send_replace(Phase::Ready(send));
    shared.changed.notify_waiters();
    let _open = shared.counters.connection(Protocol::Http2);
    let setting = settings.max_streams_per_connection.max(1);

    let idle_timeout = settings.idle_timeout;
    let max_idle = settings.max_idle_connections;
    // Often enough to close a connection beyond `max_idle` about
    // `IDLE_GRACE` after its last stream ended.
    let period = (idle_timeout / 2).clamp(Duration::from_millis(100), IDLE_GRACE);
    // Gated: the connection's task wakes for every frame, and this fires
    // a few times a second at most.
    let mut check = Gated::new(Box::pin(tokio::time::sleep(Duration::ZERO)));
    let result = loop {
        tokio::select! {
            biased;
            result = &mut connection => break result,
            alive = keep_alive.check() => {
                if !alive {
                    tracing::warn!(
                        connection = conn.id,
                        timeout = ?settings.keep_alive_timeout,
                        "the upstream left a PING unanswered; closing the connection"
                    );
                    // Dropping the connection ends its streams with an error.
                    finish(Phase::Closed);
                    return;
                }
            }
            () = &mut check => {
                let next = tokio::time::Instant::now() + period;
                check.get_mut().as_mut().reset(next);
                if let Some(probe) = &probe {
                    let limit = probe.current_max_send_streams().clamp(1, setting);
                    if conn.limit.swap(limit, Ordering::Relaxed) < limit {
                        // Room for waiting requests.
                        shared.changed.notify_waiters();
                    }
                }
                if conn.in_flight.load(Ordering::Acquire) != 0 {
                    continue;
                }
                let now = shared.started.elapsed().as_millis() as u64;
                let idle_for = Duration::from_millis(
                    now.saturating_sub(conn.last_used.load(Ordering::Relaxed)),
                );
                if idle_for < IDLE_GRACE.min(idle_timeout) {
                    continue;
                }
                // Checked again under the lock, where slots are taken.
                let removed = match shared.state.lock() {
                    Ok(mut state) if conn.in_flight.load(Ordering::Acquire) == 0 => {
                        let close = idle_for >= idle_timeout || {
                            let other_idle = state
                                .conns
                                .iter()
                                .filter(|c| {
                                    c.id != conn.id
                                        && c.home == conn.home
                                        && c.in_flight.load(Ordering::Acquire) == 0
                                        && c.usable()
                                })
                                .count();
                            other_idle >= max_idle
                        };
                        if close {
                            state.conns.retain(|c| c.id != conn.id);
                        }
                        close
                    }
                    _ => false,
                };
                if removed {
                    tracing::debug!(connection = conn.id, "closing an idle upstream connection");
                    // With the last `SendRequest` gone and no stream open, h2
                    // sends GOAWAY and closes at its next poll.
                    drop(probe.take());
                    phase.send_replace(Phase::Closed);
                    shared.changed.notify_waiters();
                    break connection.await;
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::info!(connection = conn.id, %error, "upstream HTTP/2 connection closed");
    }
    finish(Phase::Closed);
}

/// Receive window of each upstream HTTP/2 stream: a watch's burst of events
/// or a large list arrives without waiting for window updates.
pub(crate) const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The receive window of a connection that carries up to `streams` streams
/// at once: every stream's window, so that answers nobody reads (a client
/// that stopped reading its watch, its logs or a large list) hold their own
/// streams' windows and never the connection's, and the streams beside them
/// go on. Memory stays bounded by the stream windows of the streams open
/// (2 MiB for each whose reader stopped reading; by default at most 100
/// streams per connection). Go's HTTP/2 client, kube's own, keeps its
/// connection window far above its stream windows for the same reason.
/// HTTP/2 allows at most 2^31 - 1: past 1,023 streams the window is that.
pub(crate) fn connection_window(streams: usize) -> u32 {
    let streams = u64::try_from(streams.max(1)).unwrap_or(u64::MAX);
    let window = streams.saturating_mul(u64::from(STREAM_WINDOW));
    u32::try_from(window.min((1 << 31) - 1)).unwrap_or(u32::MAX >> 1)
}

/// HTTP/2 settings of upstream connections carrying up to `streams` streams:
/// [`STREAM_WINDOW`] per stream and [`connection_window`] per connection,
/// 16 KiB frames, at most 16 KiB of response headers, no server push.
fn h2_builder(streams: usize) -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_max_send_streams(DEFAULT_MAX_STREAMS_PER_CONNECTION)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(connection_window(streams))
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false);
    builder
}

/// Sends a PING every `interval` and reports a connection dead when one is
/// not answered within `timeout`.
struct KeepAlive {
    ping_pong: Option<h2::PingPong>,
    interval: Option<Duration>,
    timeout: Duration,
    /// When the next PING is due, or when the one in flight times out.
    deadline: Gated<std::pin::Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl KeepAlive {
    fn new(ping_pong: Option<h2::PingPong>, interval: Option<Duration>, timeout: Duration) -> Self {
        let first = interval.unwrap_or(Duration::from_secs(3600));
        KeepAlive {
            ping_pong,
            interval,
            timeout,
            deadline: Gated::new(Box::pin(tokio::time::sleep(first))),
            waiting: false,
        }
    }

    /// Resolves `true` when a PONG arrived or a PING went out, `false` when
    /// a PING went unanswered; pending forever when keep-alive is off.
    async fn check(&mut self) -> bool {
        let (Some(interval), Some(ping_pong)) = (self.interval, self.ping_pong.as_mut()) else {
            return std::future::pending().await;
        };
        if self.waiting {
            tokio::select! {
                biased;
                pong = std::future::poll_fn(|cx| ping_pong.poll_pong(cx)) => {
                    self.waiting = false;
                    if pong.is_err() {
                        // The connection is closing; its own future says why.
                        return std::future::pending().await;
                    }
                    let next = tokio::time::Instant::now() + interval;
                    self.deadline.get_mut().as_mut().reset(next);
                    true
                }
                () = &mut self.deadline => false,
            }
        } else {
            (&mut self.deadline).await;
            if ping_pong.send_ping(h2::Ping::opaque()).is_err() {
                return std::future::pending().await;
            }
            self.waiting = true;
            let timeout = tokio::time::Instant::now() + self.timeout;
            self.deadline.get_mut().as_mut().reset(timeout);
            true
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
