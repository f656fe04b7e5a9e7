//! Clusters the proxy cannot reach: an agent in the cluster dials the proxy
//! and carries the API traffic back through that connection.
//!
//! ```text
//! agent ──TLS──▶ proxy  GET /authproxy/agent/connect, Upgrade: authproxy-tunnel/1,
//!                       Authorization: Bearer <registration token of the cluster>
//!       ◀──101──        the token decides the cluster (never the agent's claim)
//! proxy ══HTTP/2══▶ agent   on the upgraded connection the proxy is the HTTP/2
//!                           client and the agent the server; every request of the
//!                           cluster is one stream, the agent forwards it to its
//!                           API server with its own service account
//! ```
//!
//! - `accept`: the proxy's side of registration ([`AgentEndpoint`]): which
//!   cluster a token belongs to, the HTTP/2 client on the upgraded connection.
//! - `register`: reading a registration request's head (untrusted bytes).
//! - `refusal`: why a registration is refused, its answer, its
//!   rate-limited log line.
//! - [`limits`]: tunnels per cluster, agent connections, registrations per
//!   minute (`limits.agentTunnels`); [`budget`]: agent connections counted
//!   apart from the listener's client connections.
//! - `token`: each cluster's registration token, watched in its file; a
//!   changed token retires the tunnels registered with the one before.
//! - [`registry`]: the tunnels connected per cluster ([`ClusterAgents`]).
//! - `forward`: a cluster's service over its tunnels ([`AgentService`]):
//!   round-robin over connected agents, a request that could not be sent on
//!   a tunnel that just closed goes to another one, `503` when none is
//!   connected. Upgrades (exec, attach, port-forward) travel as HTTP/2
//!   extended CONNECT (RFC 8441) with the upgrade token as `:protocol`.
//! - [`agent`]: the agent's side: dial every address of the proxy, register,
//!   serve, reconnect with [`backoff`].
//! - [`metrics`]: tunnels connected, registrations, requests, per cluster.

mod accept;
pub mod agent;
pub mod backoff;
pub mod budget;
mod forward;
pub mod limits;
pub mod metrics;
mod refusal;
pub(crate) mod register;
pub mod registry;
mod serve;
pub(crate) mod token;

use std::time::Duration;

pub use accept::{AcceptError, AgentEndpoint};
pub use forward::AgentService;
pub use registry::ClusterAgents;

/// The path agents dial on the proxy's listener.
pub const CONNECT_PATH: &str = "/authproxy/agent/connect";

/// The `Upgrade` token of a tunnel.
pub const UPGRADE_PROTOCOL: &str = "authproxy-tunnel/1";

/// The header in which an agent names the cluster it serves (checked
/// against the cluster its token belongs to).
pub const CLUSTER_HEADER: &str = "x-authproxy-cluster";

/// The header that carries an upgrade request's own method (`GET` for
/// WebSocket, `POST` for SPDY exec) across the tunnel, where the request
/// travels as `CONNECT`.
pub const METHOD_HEADER: &str = "x-authproxy-tunnel-method";

/// How often the proxy pings an idle tunnel, and how long the answer may take.
pub const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(20), Duration::from_secs(10));

/// The largest HTTP/2 frame either end of a tunnel accepts: bulk streams
/// travel in a quarter as many frames as with HTTP/2's default of 16 KiB,
/// while a frame still takes well under a millisecond, so short requests
/// do not wait long behind one.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// How much of one stream either end of a tunnel takes in before the
/// stream's reader has read it (HTTP/2's stream window, fixed). A window
/// that grows with the bandwidth-delay product (hyper's adaptive window)
/// starts at 64 KiB and, where the delay is a loopback's or a LAN's, stays
/// small: the sender waits for window updates and both ends spend more CPU
/// per MiB (benches/README.md). 2 MiB carries 20 MiB/s per stream at 100 ms
/// of round trip.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The most streams the agent's end of a tunnel takes at once.
pub const MAX_STREAMS: u32 = 1000;

/// How much of all streams together either end of a tunnel takes in before
/// their readers have read it: every stream's window, so that streams
/// nobody reads (a client that stopped reading its exec output or its
/// download) hold their own windows and never the tunnel's, and the streams
/// beside them go on. Memory stays bounded by the windows of the streams
/// open: at most 2 MiB for each stream whose reader stopped reading. (Go's
/// HTTP/2 client, kube's own, keeps its connection window, 1 GiB, far above
/// its stream windows, 4 MiB, for the same reason.) HTTP/2 allows at most
/// 2^31 - 1.
pub const CONNECTION_WINDOW: u32 = MAX_STREAMS * STREAM_WINDOW;

const _: () = assert!(CONNECTION_WINDOW < 1 << 31);

/// The body of requests sent through a tunnel.
pub type TunnelBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::BoxError>;

/// The proxy's HTTP/2 handle on one tunnel.
pub type TunnelSender = hyper::client::conn::http2::SendRequest<TunnelBody>;

#[cfg(test)]
mod tests;
