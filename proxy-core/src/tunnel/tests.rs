//! The registry and the forwarding service against real HTTP/2 agents
//! (hyper servers on in-memory pipes).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

use super::metrics::TunnelMetrics;
use super::registry::ClusterAgents;
use super::AgentService;

/// An agent that answers every request with `name` and the path it got,
/// connected to `agents` until the returned task is aborted.
async fn fake_agent(
    agents: &Arc<ClusterAgents>,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    let (proxy_io, agent_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let service =
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let text = format!("{name} {}", req.uri().path());
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from(text),
                )))
            });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(agent_io), service)
            .await;
    });
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(proxy_io))
        .await
        .unwrap();
    let registration = agents.add(SocketAddr::from(([192, 0, 2, 1], 1)), send);
    tokio::spawn(async move {
        let _ = connection.await;
        drop(registration);
    });
    server
}

async fn get(service: &mut AgentService<Empty<Bytes>>, path: &str) -> (StatusCode, String) {
    let response = service
        .call(Request::get(path).body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn without_a_connected_agent_the_answer_is_a_503_naming_the_cluster() {
    let agents = ClusterAgents::new("edge", &TunnelMetrics::default());
    let mut service = AgentService::new(agents);
    let (status, body) = get(&mut service, "/api").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("no agent of cluster edge is connected"),
        "{body}"
    );
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
}

#[tokio::test]
async fn requests_take_the_connected_agents_in_turn() {
    let agents = ClusterAgents::new("edge", &TunnelMetrics::default());
    let _a = fake_agent(&agents, "a").await;
    let _b = fake_agent(&agents, "b").await;
    assert_eq!(agents.connected(), 2);
    let mut service = AgentService::new(agents);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (status, body) = get(&mut service, "/api/v1/pods").await;
        assert_eq!(status, StatusCode::OK);
        seen.push(body);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "a /api/v1/pods",
            "a /api/v1/pods",
            "b /api/v1/pods",
            "b /api/v1/pods"
        ]
    );
}

#[tokio::test]
async fn a_lost_agent_is_removed_and_requests_go_to_the_other() {
    let metrics = TunnelMetrics::default();
    let agents = ClusterAgents::new("edge", &metrics);
    let a = fake_agent(&agents, "a").await;
    let _b = fake_agent(&agents, "b").await;
    a.abort();
    // The tunnel's connection notices the closed pipe and its registration goes.
    for _ in 0..100 {
        if agents.peers().len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(agents.peers().len(), 1);
    assert_eq!(agents.connected(), 1);
    let mut service = AgentService::new(agents.clone());
    for _ in 0..4 {
        assert_eq!(
            get(&mut service, "/api").await,
            (StatusCode::OK, "b /api".into())
        );
    }
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for sample in [
        "authproxy_tunnels_connected{cluster=\"edge\"} 1\n",
        "authproxy_tunnel_requests_total{cluster=\"edge\"} 4\n",
        "authproxy_tunnel_connects_total{cluster=\"edge\",result=\"refused\"} 0\n",
    ] {
        assert!(text.contains(sample), "{sample} in {text}");
    }
}

#[tokio::test]
async fn a_registration_token_file_that_holds_no_token_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("edge.token");
    std::fs::write(&empty, "  \n").unwrap();
    let mut endpoint = super::AgentEndpoint::new();
    let error = endpoint
        .add_cluster("edge", empty.clone(), std::time::Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(error.contains(&empty.display().to_string()), "{error}");
    assert!(error.contains("empty"), "{error}");
    let missing = dir.path().join("missing.token");
    let error = endpoint
        .add_cluster("edge", missing.clone(), std::time::Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(error.contains(&missing.display().to_string()), "{error}");
    let short = dir.path().join("short.token");
    std::fs::write(&short, "s3cret").unwrap();
    let error = endpoint
        .add_cluster("edge", short, std::time::Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(error.contains("shorter than 16 characters"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    assert!(endpoint.is_empty());
}

#[tokio::test]
async fn only_a_clusters_own_token_registers_for_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), "token-a-0123456789abcdef\n").unwrap();
    std::fs::write(dir.path().join("b"), "token-b-0123456789abcdef").unwrap();
    let mut endpoint = super::AgentEndpoint::new();
    let interval = std::time::Duration::from_secs(1);
    endpoint
        .add_cluster("a", dir.path().join("a"), interval)
        .unwrap();
    endpoint
        .add_cluster("b", dir.path().join("b"), interval)
        .unwrap();
    let register = |token: &str, claim: Option<&str>| {
        let mut request = Request::get(super::CONNECT_PATH)
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, super::UPGRADE_PROTOCOL)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(claim) = claim {
            request = request.header(super::CLUSTER_HEADER, claim);
        }
        endpoint
            .accept(
                request.body(()).unwrap(),
                SocketAddr::from(([192, 0, 2, 9], 4)),
            )
            .status()
    };
    assert_eq!(
        register("token-a-0123456789abcdef", Some("a")),
        StatusCode::SWITCHING_PROTOCOLS
    );
    assert_eq!(
        register("token-b-0123456789abcdef", None),
        StatusCode::SWITCHING_PROTOCOLS
    );
    assert_eq!(
        register("token-a-0123456789abcdef", Some("b")),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        register("token-a-0123456789abcde", Some("a")),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        register("token-a-0123456789abcdef0", Some("a")),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(register("", Some("a")), StatusCode::UNAUTHORIZED);
}
