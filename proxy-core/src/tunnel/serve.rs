//! The proxy's side of one accepted tunnel, from the upgraded connection to
//! its close: the HTTP/2 handshake (the proxy is the client), its place in
//! the cluster's [`ClusterAgents`] and, when its registration token is
//! retired, its close: no new request from then on, the requests in flight
//! get [`Tunnel::grace`], then the connection is dropped with whatever is
//! still open on it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioTimer;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;

use super::registry::{ClusterAgents, Reservation, TokenDigest};
use super::token::ClusterToken;
use super::KEEP_ALIVE;

/// Spawns the tasks of one tunnel's HTTP/2 connection and keeps a handle on
/// each, so that the connection can be dropped whole: dropping hyper's
/// client connection alone leaves its streams running.
#[derive(Clone, Default)]
struct TunnelExecutor {
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl<F> hyper::rt::Executor<F> for TunnelExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let task = tokio::spawn(future);
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task.abort_handle());
        }
    }
}

impl TunnelExecutor {
    fn running(&self) -> bool {
        self.tasks
            .lock()
            .map(|t| t.iter().any(|t| !t.is_finished()))
            .unwrap_or(false)
    }

    fn abort_all(&self) {
        if let Ok(tasks) = self.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
    }
}

/// One registration the endpoint accepted, until its connection is upgraded.
pub(super) struct Tunnel {
    /// The cluster's tunnels.
    pub agents: Arc<ClusterAgents>,
    /// The cluster's token (checked again once the tunnel is up).
    pub token: Arc<ClusterToken>,
    /// The digest of the token the agent presented.
    pub presented: TokenDigest,
    /// The agent's address.
    pub peer: SocketAddr,
    /// How long requests in flight may take once the token is retired.
    pub grace: Duration,
    /// The tunnel's place among the cluster's and among the agent
    /// connections, held until it closes.
    pub places: (Reservation, OwnedSemaphorePermit),
}

impl Tunnel {
    /// Serves the tunnel on the upgraded connection until it ends or its
    /// token is retired (then closes it after the grace).
    pub(super) async fn run(self, on_upgrade: OnUpgrade) {
        let Tunnel {
            agents,
            token,
            presented,
            peer,
            grace,
            places,
        } = self;
        let cluster = agents.name().to_owned();
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::warn!(%cluster, %peer, %error, "agent tunnel upgrade failed");
                return;
            }
        };
        let executor = TunnelExecutor::default();
        let mut builder = hyper::client::conn::http2::Builder::new(executor.clone());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE.0)
            .keep_alive_timeout(KEEP_ALIVE.1)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            // Downloads (logs, cp, port-forward) in frames of up to 64 KiB.
            .max_frame_size(super::MAX_FRAME_SIZE);
        let (send, connection) = match builder.handshake(upgraded).await {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%cluster, %peer, %error, "agent tunnel HTTP/2 handshake failed");
                return;
            }
        };
        let registration = agents.add(peer, send, presented);
        let id = registration.id();
        tracing::info!(%cluster, %peer, tunnel = id, connected = agents.connected(), "agent tunnel connected");
        // The token may have changed since the registration was checked.
        if let Some(current) = token.current() {
            agents.retire_other_tokens(&current);
        }
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::info!(%cluster, %peer, tunnel = id, %error, "agent tunnel ended with an error");
                }
            }
            () = registration.retired() => {
                tracing::info!(%cluster, %peer, tunnel = id, ?grace, "agent tunnel's registration token was retired: closing it once its requests in flight end");
                let drained = tokio::time::timeout(grace, async {
                    let _ = (&mut connection).await;
                    while executor.running() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .is_ok();
                if !drained {
                    tracing::info!(%cluster, %peer, tunnel = id, "requests still in flight on a retired tunnel are cut");
                }
            }
        }
        executor.abort_all();
        drop(registration);
        drop(places);
        tracing::info!(%cluster, %peer, tunnel = id, connected = agents.connected(), "agent tunnel closed");
    }
}
