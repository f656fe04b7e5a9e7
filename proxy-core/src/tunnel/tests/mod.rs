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

mod registration;

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
    let registration = agents.add(SocketAddr::from(([192, 0, 2, 1], 1)), send, [0; 32]);
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

/// One proxy replica on `ip`: registers agents of `edge` with `token`.
async fn replica(
    tls: Arc<rustls::ServerConfig>,
    ip: &str,
    token_file: &std::path::Path,
) -> (SocketAddr, Arc<ClusterAgents>) {
    let mut endpoint = super::AgentEndpoint::new();
    let agents = endpoint
        .add_cluster(
            "edge",
            token_file.to_owned(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    let endpoint = Arc::new(endpoint);
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let (acceptor, endpoint) = (acceptor.clone(), endpoint.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, std::convert::Infallible>(endpoint.accept(req, peer)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, agents)
}

async fn wait_connected(agents: &ClusterAgents, want: usize) {
    for _ in 0..200 {
        if agents.connected() == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{} tunnels, want {want}", agents.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_one_tunnel_per_address_of_the_proxy() {
    use super::agent::{Agent, AgentSettings};
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("edge.token");
    std::fs::write(&token_file, "edge-registration-token-0123").unwrap();
    let (tls, ca_pem) = crate::test_tls::server("proxy.test", &[b"http/1.1"]);
    // Two replicas on two loopback addresses, behind one name.
    let (a, agents_a) = replica(tls.clone(), "127.0.0.1", &token_file).await;
    let (b, agents_b) = replica(tls, "127.0.0.2", &token_file).await;
    let upstream = crate::upstream::Upstream::new(crate::upstream::UpstreamOptions {
        url: "https://127.0.0.1:1".parse().unwrap(),
        ca_pem: Some(ca_pem.clone().into_bytes()),
        client_identity: None,
        server_name: None,
        credential: crate::upstream::UpstreamCredential::None,
        connect_timeout: std::time::Duration::from_secs(1),
        pool: Default::default(),
    })
    .unwrap();
    let agent = Agent::new(
        AgentSettings {
            proxy_url: "https://proxy.test:8443".parse().unwrap(),
            proxy_ca_pem: Some(ca_pem.into_bytes()),
            token_file,
            cluster: "edge".into(),
            resolve_interval: std::time::Duration::from_millis(50),
            connect_timeout: std::time::Duration::from_secs(2),
            backoff: super::backoff::Backoff::new(
                std::time::Duration::from_millis(20),
                std::time::Duration::from_millis(100),
            ),
        },
        upstream,
    )
    .unwrap();
    let addresses = Arc::new(std::sync::Mutex::new(vec![a, b]));
    let resolved = addresses.clone();
    let task = tokio::spawn(agent.run_resolving(move || {
        let now = resolved.lock().unwrap().clone();
        async move { Ok(now) }
    }));
    wait_connected(&agents_a, 1).await;
    wait_connected(&agents_b, 1).await;
    // A replica gone from the name loses its tunnel; the other keeps its own.
    *addresses.lock().unwrap() = vec![a];
    wait_connected(&agents_b, 0).await;
    assert_eq!(agents_a.connected(), 1);
    // Back again: dialled again.
    *addresses.lock().unwrap() = vec![a, b];
    wait_connected(&agents_b, 1).await;
    assert_eq!(
        agents_a.connected(),
        1,
        "no second tunnel to the same address"
    );
    task.abort();
}
