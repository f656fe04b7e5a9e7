//! The API-server double: a TLS server that behaves like kube-apiserver
//! wherever authproxy relies on it.
//!
//! - authenticates only known bearer tokens (401 `Status` otherwise);
//! - honours `Impersonate-*` only for an identity granted the `impersonate`
//!   verb on users/serviceaccounts, groups, uids and `userextras/<key>`, answers
//!   400 for Group/Uid/Extra without User, percent-decodes and lower-cases
//!   extra keys, and adds `system:authenticated` to the effective user;
//! - authorizes the effective user with a rule table and answers 403 with
//!   kube's wording;
//! - serves discovery, pods list/get/watch (streamed), SelfSubjectReview and
//!   an upgrade endpoint that echoes bytes;
//! - acts as kube-apiserver's token webhook client ([`webhook_client`]);
//! - records every request it receives, headers included, before any check;
//! - allows [`MAX_CONCURRENT_STREAMS`] streams per HTTP/2 connection, as
//!   kube-apiserver does.

mod impersonation;
pub mod rbac;
mod routes;
pub mod webhook_client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use rbac::{Rule, UserInfo};

/// Streams a client may open at once on one HTTP/2 connection: kube-apiserver's
/// limit (its `--http2-max-streams-per-connection` default).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// How the double behaves.
pub struct DoubleConfig {
    /// TLS serving configuration (ALPN decides HTTP/1.1 or HTTP/2).
    pub tls: Arc<rustls::ServerConfig>,
    /// Bearer token → identity.
    pub tokens: HashMap<String, UserInfo>,
    /// Authorization rules.
    pub rules: Vec<Rule>,
    /// Events sent on a watch.
    pub watch_events: usize,
    /// Delay between watch events.
    pub watch_interval: Duration,
}

impl DoubleConfig {
    /// No tokens yet; rules: everyone authenticated may create
    /// selfsubjectreviews; groups `devs` and `oidc:devs` may get/list/watch pods and exec,
    /// attach and port-forward in `default`; group `admins` may do anything;
    /// the proxy's service account may impersonate anything.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        DoubleConfig {
            tls,
            tokens: HashMap::new(),
            rules: rbac::default_rules(crate::PROXY_USER),
            watch_events: 3,
            watch_interval: Duration::from_millis(300),
        }
    }

    /// Adds a token.
    pub fn with_token(mut self, token: &str, user: UserInfo) -> Self {
        self.tokens.insert(token.into(), user);
        self
    }
}

/// A request as the double received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub uri: http::Uri,
    /// HTTP version of the request.
    pub version: http::Version,
    /// Every header, as received.
    pub headers: http::HeaderMap,
}

impl RecordedRequest {
    /// All values of a header (any letter case), in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name.to_ascii_lowercase().as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The bearer token of the `Authorization` header.
    pub fn bearer_token(&self) -> Option<String> {
        self.header_values("authorization")
            .first()
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
    }
}

pub(crate) struct State {
    tokens: Mutex<HashMap<String, UserInfo>>,
    rules: Vec<Rule>,
    watch_events: usize,
    watch_interval: Duration,
    requests: Mutex<Vec<RecordedRequest>>,
}

/// A double serving in the background. Dropping it stops it.
pub struct RunningDouble {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Starts the double on `127.0.0.1:0`; it accepts as soon as this returns.
pub async fn start(config: DoubleConfig) -> anyhow::Result<RunningDouble> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        tokens: Mutex::new(config.tokens),
        rules: config.rules,
        watch_events: config.watch_events,
        watch_interval: config.watch_interval,
        requests: Mutex::new(Vec::new()),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(config.tls);
    let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    let task_state = state.clone();
    let task_connections = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let state = task_state.clone();
            let handle = tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req| routes::handle(state.clone(), req));
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http2()
                    .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
            if let Ok(mut list) = task_connections.lock() {
                list.retain(|h| !h.is_finished());
                list.push(handle);
            }
        }
    });
    Ok(RunningDouble {
        addr,
        state,
        task: Some(task),
        connections,
    })
}

impl RunningDouble {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        if let Ok(mut r) = self.state.requests.lock() {
            r.clear();
        }
    }

    /// Accepts another token from now on.
    pub fn add_token(&self, token: &str, user: UserInfo) {
        if let Ok(mut t) = self.state.tokens.lock() {
            t.insert(token.into(), user);
        }
    }

    /// Stops accepting a token.
    pub fn remove_token(&self, token: &str) {
        if let Ok(mut t) = self.state.tokens.lock() {
            t.remove(token);
        }
    }

    /// Stops listening and closes every open connection, as a crashed API
    /// server would.
    pub fn shutdown_now(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Ok(mut list) = self.connections.lock() {
            for h in list.drain(..) {
                h.abort();
            }
        }
    }
}

impl Drop for RunningDouble {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
