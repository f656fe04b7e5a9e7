//! Registrations through [`AgentEndpoint::accept`] over real HTTP/1.1
//! upgrades on in-memory pipes: the agent's side is a hyper client that
//! upgrades, then serves HTTP/2 on the upgraded connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;
use tower_service::Service;

use super::super::{AgentEndpoint, AgentService, CLUSTER_HEADER, CONNECT_PATH, UPGRADE_PROTOCOL};

/// The address every fake agent registers from.
pub(super) const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)),
    40000,
);

/// An agent connected over a pipe: its HTTP/2 server ends when the proxy
/// drops the tunnel.
pub(super) struct FakeAgent {
    pub server: JoinHandle<()>,
}

/// Registers an agent of `cluster` presenting `token` with `endpoint`: the
/// refusal's status, or the connected agent. The agent answers `/slow/<ms>`
/// after that many milliseconds, `/hang` never, anything else at once, with
/// `name` and the path.
pub(super) async fn register(
    endpoint: &Arc<AgentEndpoint>,
    cluster: &str,
    token: &str,
    name: &'static str,
) -> Result<FakeAgent, StatusCode> {
    let (proxy_io, agent_io) = tokio::io::duplex(64 * 1024);
    let serving = endpoint.clone();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let endpoint = serving.clone();
            async move { Ok::<_, std::convert::Infallible>(endpoint.accept(req, PEER)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(proxy_io), service)
            .with_upgrades()
            .await;
    });
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(agent_io))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = Request::get(CONNECT_PATH)
        .header(http::header::HOST, "proxy.test")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, UPGRADE_PROTOCOL)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(CLUSTER_HEADER, cluster)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(response.status());
    }
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let server = tokio::spawn(async move {
        let service =
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let path = req.uri().path().to_owned();
                if let Some(ms) = path.strip_prefix("/slow/") {
                    let ms = ms.parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                } else if path == "/hang" {
                    std::future::pending::<()>().await;
                }
                let text = format!("{name} {path}");
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from(text),
                )))
            });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(upgraded, service)
            .await;
    });
    Ok(FakeAgent { server })
}

/// `GET path` through the cluster's tunnels.
pub(super) async fn get(service: &AgentService<Empty<Bytes>>, path: &str) -> (StatusCode, String) {
    let response = service
        .clone()
        .call(Request::get(path).body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(error) => format!("body failed: {error}"),
    };
    (status, body)
}

/// Polls `done` every 10 ms for up to 5 s.
pub(super) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5s: {what}");
}

/// The text exposition of `endpoint`'s tunnel metrics.
pub(super) fn metrics_text(endpoint: &AgentEndpoint) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    endpoint.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

fn write(path: &Path, token: &str) {
    std::fs::write(path, token).unwrap();
}

const OLD: &str = "old-registration-token-0123456789";
const NEW: &str = "new-registration-token-9876543210";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_closes_the_tunnels_registered_with_the_old_one_after_a_grace() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("edge.token");
    write(&token_file, OLD);
    let mut endpoint = AgentEndpoint::new();
    let agents = endpoint
        .add_cluster("edge", token_file.clone(), Duration::from_millis(50))
        .unwrap();
    let endpoint = Arc::new(endpoint);
    let a = register(&endpoint, "edge", OLD, "a").await.unwrap();
    let b = register(&endpoint, "edge", OLD, "b").await.unwrap();
    eventually("two tunnels", || agents.connected() == 2).await;
    let service = AgentService::<Empty<Bytes>>::new(agents.clone());
    // A request in flight when the token is retired is answered (within the grace).
    let in_flight = {
        let service = service.clone();
        tokio::spawn(async move { get(&service, "/slow/800").await })
    };
    // One that never ends is cut when the grace is over.
    let hanging = {
        let service = service.clone();
        tokio::spawn(async move { get(&service, "/hang").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(&token_file, NEW);
    eventually("the old tunnels out of the rotation", || {
        agents.connected() == 0
    })
    .await;
    assert_eq!(
        get(&service, "/api").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "no retired tunnel takes new requests"
    );
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with(" /slow/800"), "{body}");
    // The agents' connections are closed, the hanging request with them.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = a.server.await;
        let _ = b.server.await;
    })
    .await;
    assert!(closed.is_ok(), "the retired tunnels are still open");
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), hanging)
        .await
        .expect("the hanging request ends with its tunnel")
        .unwrap();
    assert_ne!(status, StatusCode::OK);
    assert!(
        metrics_text(&endpoint).contains(
            "authproxy_tunnels_closed_total{cluster=\"edge\",reason=\"token_retired\"} 2\n"
        ),
        "{}",
        metrics_text(&endpoint)
    );
    // The old token no longer registers; the new one does.
    assert_eq!(
        register(&endpoint, "edge", OLD, "c").await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    register(&endpoint, "edge", NEW, "d").await.unwrap();
    eventually("the new agent", || agents.connected() == 1).await;
    assert_eq!(
        get(&service, "/api").await,
        (StatusCode::OK, "d /api".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_rewritten_to_another_clusters_token_is_refused_and_the_old_token_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (a_file, b_file) = (dir.path().join("a.token"), dir.path().join("b.token"));
    write(&a_file, OLD);
    write(&b_file, NEW);
    let mut endpoint = AgentEndpoint::new();
    let interval = Duration::from_millis(20);
    let a = endpoint.add_cluster("a", a_file, interval).unwrap();
    let b = endpoint.add_cluster("b", b_file.clone(), interval).unwrap();
    let endpoint = Arc::new(endpoint);
    register(&endpoint, "b", NEW, "b1").await.unwrap();
    eventually("b's agent", || b.connected() == 1).await;
    // b's file now holds a's token: refused, b keeps its own.
    write(&b_file, &format!("{OLD}\n"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.connected(), 1, "b's tunnel stays");
    assert_eq!(
        register(&endpoint, "b", OLD, "b2").await.err(),
        Some(StatusCode::UNAUTHORIZED),
        "a's token does not register for b"
    );
    register(&endpoint, "b", NEW, "b3").await.unwrap();
    register(&endpoint, "a", OLD, "a1").await.unwrap();
    eventually("a's agent and b's two", || {
        a.connected() == 1 && b.connected() == 2
    })
    .await;
    // Two clusters cannot start with one token either.
    let mut second = AgentEndpoint::new();
    second
        .add_cluster("x", dir.path().join("a.token"), interval)
        .unwrap();
    let error = second
        .add_cluster("y", b_file, interval)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("same registration token as cluster x"),
        "{error}"
    );
    assert!(!error.contains(OLD), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_takes_at_most_16_tunnels_and_a_closed_one_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("edge.token");
    write(&token_file, OLD);
    let mut endpoint = AgentEndpoint::new();
    let agents = endpoint
        .add_cluster("edge", token_file, Duration::from_secs(60))
        .unwrap();
    let endpoint = Arc::new(endpoint);
    let mut connected = Vec::new();
    for _ in 0..16 {
        connected.push(register(&endpoint, "edge", OLD, "a").await.unwrap());
    }
    assert_eq!(
        register(&endpoint, "edge", OLD, "b").await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS),
        "the 17th tunnel is refused"
    );
    let text = metrics_text(&endpoint);
    assert!(
        text.contains(
            "authproxy_tunnel_refusals_total{cluster=\"edge\",reason=\"cluster_full\"} 1\n"
        ),
        "{text}"
    );
    eventually("16 tunnels", || agents.connected() == 16).await;
    // One agent goes: its place is free again.
    connected.pop().unwrap().server.abort();
    eventually("15 tunnels", || agents.connected() == 15).await;
    let mut again = None;
    for _ in 0..100 {
        match register(&endpoint, "edge", OLD, "c").await {
            Ok(agent) => {
                again = Some(agent);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(again.is_some(), "a closed tunnel's place is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_clusters_rate_or_the_agent_connections_are_refused() {
    use crate::tunnel::limits::TunnelLimits;
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a"), OLD);
    write(&dir.path().join("b"), NEW);
    let mut endpoint = AgentEndpoint::with_limits(TunnelLimits {
        per_cluster: 16,
        total: 4,
        registrations_per_minute: 3,
    });
    let interval = Duration::from_secs(60);
    endpoint
        .add_cluster("a", dir.path().join("a"), interval)
        .unwrap();
    endpoint
        .add_cluster("b", dir.path().join("b"), interval)
        .unwrap();
    let endpoint = Arc::new(endpoint);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(register(&endpoint, "a", OLD, "a").await.unwrap());
    }
    // a's fourth registration this minute is refused; b has its own allowance.
    assert_eq!(
        register(&endpoint, "a", OLD, "a").await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    held.push(register(&endpoint, "b", NEW, "b").await.unwrap());
    // Four agent connections in all: b's next is refused, though b has room.
    assert_eq!(
        register(&endpoint, "b", NEW, "b").await.err(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    let text = metrics_text(&endpoint);
    for sample in [
        "authproxy_tunnel_refusals_total{cluster=\"a\",reason=\"rate_limited\"} 1\n",
        "authproxy_tunnel_refusals_total{cluster=\"b\",reason=\"agent_connections\"} 1\n",
        "authproxy_tunnel_connects_total{cluster=\"a\",result=\"refused\"} 1\n",
    ] {
        assert!(text.contains(sample), "{sample} in {text}");
    }
}
