//! HTTP/1.1 connections to the API server: for protocol upgrades (exec,
//! attach, port-forward) and for servers that do not offer HTTP/2.
//!
//! A connection carries one request at a time. Once its answer has been read
//! (the response body ended or was dropped), it goes back to the pool it came
//! from, and the next request takes the connection put back last. One that
//! stays unused for the idle timeout is closed (looked for every half
//! timeout). A request that a pooled connection could not take (the server
//! had just closed it) goes again on a new connection; one that was already
//! sent is not repeated.
//!
//! The pool is a short list under a lock, with no task per request: the
//! request's own task sends on the connection and waits for the answer, and
//! the connection's task reads and writes the socket. `Upstream` keeps one
//! pool per serving thread (see [`crate::worker`]), so the lock is not
//! contended there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_rustls::HttpsConnector;
use tower_service::Service;

use super::counted::CountingConnector;
use crate::BoxError;

/// The connector HTTP/1.1 connections are opened with.
pub(crate) type Connector = CountingConnector<HttpsConnector<super::counted::TcpConnector>>;

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum Http1Error {
    /// No connection could be opened (TCP or TLS).
    Connect(BoxError),
    /// The connection failed: in the HTTP/1.1 handshake, while sending the
    /// request or while reading the answer's head.
    Request(hyper::Error),
}

impl Http1Error {
    /// Whether the server could not be reached at all.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Http1Error::Connect(_))
    }
}

impl std::fmt::Display for Http1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Http1Error::Connect(error) => write!(f, "could not connect: {error}"),
            Http1Error::Request(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Http1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Http1Error::Connect(error) => error.source(),
            Http1Error::Request(error) => std::error::Error::source(error),
        }
    }
}

/// The shortest wait between two sweeps of idle connections.
const MIN_SWEEP_PERIOD: Duration = Duration::from_millis(100);

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

/// The connections not carrying a request, the last put back at the end.
struct IdleList<B> {
    connections: Mutex<Vec<Idle<B>>>,
    /// Whether a task is closing connections idle too long.
    sweeping: AtomicBool,
    idle_timeout: Duration,
    /// Starts [`sweep`] (set where `B`'s bounds are known, so `Drop` of
    /// [`Checkin`] needs none); false when there is no runtime to run it on.
    start_sweep: fn(Weak<IdleList<B>>) -> bool,
}

/// HTTP/1.1 connections to one server, reused one request at a time.
pub(crate) struct Http1Pool<B> {
    connector: Connector,
    /// The server's URL, for the connector.
    target: Uri,
    /// The `Host` header every request carries.
    host: HeaderValue,
    idle: Arc<IdleList<B>>,
}

/// Gives a connection back to its pool when dropped: hold it until the
/// answer's body has ended or been dropped. An upgraded connection, or one
/// that closed, is not given back.
pub(crate) struct Checkin<B> {
    sender: Option<SendRequest<B>>,
    idle: Weak<IdleList<B>>,
}

impl<B> Http1Pool<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A pool opening connections to `target` with `connector`; a connection
    /// unused for `idle_timeout` is closed.
    pub(crate) fn new(connector: Connector, target: Uri, idle_timeout: Duration) -> Self {
        let host = match target.port_u16() {
            Some(443) | None => target.host().unwrap_or_default(),
            Some(_) => target.authority().map_or("", |a| a.as_str()),
        };
        Http1Pool {
            connector,
            host: HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("")),
            target,
            idle: Arc::new(IdleList {
                connections: Mutex::new(Vec::new()),
                sweeping: AtomicBool::new(false),
                idle_timeout,
                start_sweep: start_sweep::<B>,
            }),
        }
    }

    /// Sends `req` (its URI in origin form, `/path?query`) and waits for the
    /// answer's head. The returned [`Checkin`] must be held until the answer's
    /// body has been read or dropped.
    pub(crate) async fn send(
        &self,
        mut req: Request<B>,
    ) -> Result<(Response<Incoming>, Checkin<B>), Http1Error> {
        req.headers_mut().insert(header::HOST, self.host.clone());
        if let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, self.checkin(sender))),
                Err(mut error) => match error.take_message() {
                    // The connection closed before the request left: it
                    // goes on a new one.
                    Some(back) => req = back,
                    None => return Err(Http1Error::Request(error.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(response) => Ok((response, self.checkin(sender))),
            Err(error) => Err(Http1Error::Request(error)),
        }
    }

    /// The idle connection put back last that can take a request now;
    /// closed connections met on the way are dropped. Usually the last one
    /// is ready, so a pool of many idle connections costs no scan.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let mut idle = lock(&self.idle.connections);
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            let sender = &idle[index].sender;
            if sender.is_ready() {
                return Some(idle.remove(index).sender);
            }
            if sender.is_closed() {
                idle.remove(index);
            }
            // Otherwise its last answer is still being read: it becomes
            // ready in a moment, and stays in the list.
        }
        None
    }

    fn checkin(&self, sender: SendRequest<B>) -> Checkin<B> {
        Checkin {
            sender: Some(sender),
            idle: Arc::downgrade(&self.idle),
        }
    }

    /// Opens a connection and starts its task on the current runtime.
    async fn connect(&self) -> Result<SendRequest<B>, Http1Error> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(Http1Error::Connect)?;
        let (sender, connection) = Builder::new()
            .handshake(io)
            .await
            .map_err(Http1Error::Request)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl<B> Checkin<B> {
    /// Drops the connection instead of giving it back (it was upgraded).
    pub(crate) fn discard(mut self) {
        self.sender = None;
    }
}

impl<B> Drop for Checkin<B> {
    fn drop(&mut self) {
        let (Some(sender), Some(idle)) = (self.sender.take(), self.idle.upgrade()) else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let start_sweeper = {
            let mut connections = lock(&idle.connections);
            connections.push(Idle {
                sender,
                since: Instant::now(),
            });
            !idle.sweeping.swap(true, Ordering::Relaxed)
        };
        // Without a runtime the connection is still reused; it is dropped
        // when a later checkout finds it closed by the server.
        if start_sweeper && !(idle.start_sweep)(Arc::downgrade(&idle)) {
            idle.sweeping.store(false, Ordering::Relaxed);
        }
    }
}

fn start_sweep<B: Send + 'static>(idle: Weak<IdleList<B>>) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(sweep(idle));
            true
        }
        Err(_) => false,
    }
}

/// Closes connections left idle for the idle timeout; ends when none is left
/// (the next one put back starts it again) or the pool is gone.
async fn sweep<B>(idle: Weak<IdleList<B>>) {
    loop {
        let Some(period) = idle.upgrade().map(|list| list.idle_timeout) else {
            return;
        };
        tokio::time::sleep((period / 2).max(MIN_SWEEP_PERIOD)).await;
        let Some(list) = idle.upgrade() else {
            return;
        };
        let mut connections = lock(&list.connections);
        let now = Instant::now();
        connections.retain(|entry| {
            now.duration_since(entry.since) < list.idle_timeout && !entry.sender.is_closed()
        });
        if connections.is_empty() {
            // Under the lock: a connection put back from now on starts a
            // new sweeper.
            list.sweeping.store(false, Ordering::Relaxed);
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[path = "http1_tests.rs"]
mod tests;
