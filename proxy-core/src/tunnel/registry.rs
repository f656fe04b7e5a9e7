//! The tunnels connected for one cluster, and how a request picks one.
//!
//! Each tunnel remembers (the digest of) the registration token it came
//! with: when the cluster's token changes, the tunnels of any other token
//! are retired ([`ClusterAgents::retire_other_tokens`]): out of the rotation
//! at once, and their connection told to close ([`Registration::retired`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::metrics::TunnelMetrics;
use super::TunnelSender;

/// Identifies a tunnel in its cluster.
pub type TunnelId = u64;

/// The SHA-256 digest of a registration token (never the token itself).
pub type TokenDigest = [u8; 32];

/// The agents of one cluster connected to this proxy now. A tunnel is added
/// when its agent registers and removed when its connection ends (its
/// [`Registration`] is dropped).
pub struct ClusterAgents {
    name: Arc<str>,
    tunnels: Mutex<Vec<Tunnel>>,
    next_id: AtomicU64,
    turn: AtomicUsize,
    /// Tunnel places taken (see [`ClusterAgents::reserve`]).
    reserved: AtomicUsize,
    connected: Gauge,
    retired: Counter,
    pub(crate) requests: Counter,
}

struct Tunnel {
    id: TunnelId,
    peer: SocketAddr,
    since: Instant,
    send: TunnelSender,
    token: TokenDigest,
    retire: Arc<Notify>,
}

impl std::fmt::Debug for ClusterAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAgents")
            .field("cluster", &self.name)
            .field("connected", &self.connected())
            .finish()
    }
}

impl ClusterAgents {
    /// No agent connected yet for `cluster`; counted in `metrics`.
    pub fn new(cluster: &str, metrics: &TunnelMetrics) -> Arc<Self> {
        metrics.declare(cluster);
        Arc::new(ClusterAgents {
            name: Arc::from(cluster),
            tunnels: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            turn: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            connected: metrics.connected(cluster),
            retired: metrics.closed(cluster, super::metrics::CloseReason::TokenRetired),
            requests: metrics.requests(cluster),
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tunnels connected now (closed ones not yet removed are not counted).
    pub fn connected(&self) -> usize {
        self.tunnels
            .lock()
            .map(|t| t.iter().filter(|t| !t.send.is_closed()).count())
            .unwrap_or(0)
    }

    /// The peer address and age of each connected tunnel, oldest first.
    pub fn peers(&self) -> Vec<(SocketAddr, std::time::Duration)> {
        self.tunnels
            .lock()
            .map(|t| t.iter().map(|t| (t.peer, t.since.elapsed())).collect())
            .unwrap_or_default()
    }

    /// Adds a tunnel from the agent at `peer`, registered with the token
    /// whose digest is `token`; it stays until the returned registration is
    /// dropped or its token is retired.
    pub fn add(
        self: &Arc<Self>,
        peer: SocketAddr,
        send: TunnelSender,
        token: TokenDigest,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let retire = Arc::new(Notify::new());
        if let Ok(mut tunnels) = self.tunnels.lock() {
            tunnels.push(Tunnel {
                id,
                peer,
                since: Instant::now(),
                send,
                token,
                retire: retire.clone(),
            });
            self.connected.inc();
        }
        Registration {
            agents: self.clone(),
            id,
            retire,
        }
    }

    /// Takes one of the cluster's `cap` tunnel places, from a registration
    /// accepted until its tunnel closes (drop the reservation then); `None`
    /// when every place is taken.
    pub fn reserve(self: &Arc<Self>, cap: usize) -> Option<Reservation> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        Some(Reservation {
            agents: self.clone(),
        })
    }

    /// Retires every tunnel registered with another token than `current`:
    /// it takes no new request, and its [`Registration::retired`] fires (the
    /// connection then closes after a grace for the requests in flight).
    /// Counted in `authproxy_tunnels_closed_total{reason="token_retired"}`;
    /// returns how many were retired.
    pub fn retire_other_tokens(&self, current: &TokenDigest) -> usize {
        let Ok(mut tunnels) = self.tunnels.lock() else {
            return 0;
        };
        let mut retired = 0;
        tunnels.retain(|t| {
            if bool::from(subtle::ConstantTimeEq::ct_eq(&t.token[..], &current[..])) {
                return true;
            }
            t.retire.notify_one();
            retired += 1;
            false
        });
        for _ in 0..retired {
            self.connected.dec();
            self.retired.inc();
        }
        retired
    }

    fn remove(&self, id: TunnelId) {
        if let Ok(mut tunnels) = self.tunnels.lock() {
            let before = tunnels.len();
            tunnels.retain(|t| t.id != id);
            if tunnels.len() < before {
                self.connected.dec();
            }
        }
    }

    /// The next open tunnel in turn that is not in `skip`, or `None` when
    /// there is none.
    pub fn pick(&self, skip: &[TunnelId]) -> Option<(TunnelId, TunnelSender)> {
        let tunnels = self.tunnels.lock().ok()?;
        let open: Vec<&Tunnel> = tunnels
            .iter()
            .filter(|t| !t.send.is_closed() && !skip.contains(&t.id))
            .collect();
        if open.is_empty() {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let chosen = open[turn % open.len()];
        Some((chosen.id, chosen.send.clone()))
    }
}

/// Keeps a tunnel in its cluster's [`ClusterAgents`] until dropped.
#[derive(Debug)]
pub struct Registration {
    agents: Arc<ClusterAgents>,
    id: TunnelId,
    retire: Arc<Notify>,
}

impl Registration {
    /// The tunnel's id.
    pub fn id(&self) -> TunnelId {
        self.id
    }

    /// Resolves once the tunnel's token has been retired (the tunnel is
    /// already out of the rotation then). Cancel-safe.
    pub async fn retired(&self) {
        self.retire.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.agents.remove(self.id);
    }
}

/// One of a cluster's tunnel places (see [`ClusterAgents::reserve`]),
/// given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    agents: Arc<ClusterAgents>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.agents.reserved.fetch_sub(1, Ordering::AcqRel);
    }
}
