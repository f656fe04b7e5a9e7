//! The proxy's side of `via: agent` clusters, in process: agent tunnels and
//! client connections do not take each other's places (a registered tunnel
//! leaves `limits.maxConnections` for the agent connections,
//! `limits.agentTunnels.total`, and while clients hold every client
//! connection an agent still connects), and a configuration that gives two
//! clusters one registration token is refused on reload. The agents are
//! hyper clients over TLS that upgrade and then serve HTTP/2 on the tunnel.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use authproxy::config::FileConfig;
use authproxy::server::RunningServer;
use authproxy_tests::TestPki;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const BOUND: Duration = Duration::from_secs(10);
const TOKEN: &str = "edge-registration-token-6d0e2a";

struct Proxy {
    pki: TestPki,
    dir: tempfile::TempDir,
    server: RunningServer,
}

impl Proxy {
    async fn start(limits: &str) -> anyhow::Result<Proxy> {
        Self::start_with(&format!("limits: {limits}\n"), false).await
    }

    /// The proxy with `extra` top-level settings; with `watching`, its
    /// configuration file is re-read as it changes.
    async fn start_with(extra: &str, watching: bool) -> anyhow::Result<Proxy> {
        let pki = TestPki::new()?;
        let dir = tempfile::tempdir()?;
        let cert = pki.issue_server("proxy")?;
        std::fs::write(
            dir.path().join("tokens.csv"),
            "alice-token,alice,1001,\"devs\"\n",
        )?;
        std::fs::write(dir.path().join("edge.token"), TOKEN)?;
        let yaml = format!(
            "listen: 127.0.0.1:0\n\
             tls: {{certFile: {cert}, keyFile: {key}}}\n\
             upstreams: [{{name: edge, via: agent, agent: {{tokenFile: edge.token}}}}]\n\
             authentication:\n  staticTokens: {{file: tokens.csv}}\n\
             {extra}\
             shutdownTimeout: 1s\n",
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
        );
        let path = dir.path().join("authproxy.yaml");
        std::fs::write(&path, yaml)?;
        let config = FileConfig::load(&path)?;
        let server = if watching {
            let source = authproxy::reload::ConfigSource {
                path,
                flags: Default::default(),
            };
            authproxy::server::start_watching(&config, source).await?
        } else {
            authproxy::server::start(&config, dir.path()).await?
        };
        Ok(Proxy { pki, dir, server })
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// An HTTP/1.1 connection over TLS (bounded: the accept may be paused).
    async fn http1(
        &self,
    ) -> anyhow::Result<(
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        JoinHandle<()>,
    )> {
        let config = authproxy_tests::pki::client_config(self.pki.ca_pem(), &[b"http/1.1"])?;
        let connect = async {
            let tcp = TcpStream::connect(self.addr()).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            let (send, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let connection = tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            anyhow::Ok((send, connection))
        };
        tokio::time::timeout(BOUND, connect)
            .await
            .context("no TLS connection to the proxy")?
    }

    /// Registers an agent of `edge` that answers every request with `name`
    /// and the path; the task serves its tunnel.
    async fn agent(&self, name: &'static str) -> anyhow::Result<JoinHandle<()>> {
        let (mut send, _connection) = self.http1().await?;
        let request = http::Request::get(proxy_core::tunnel::CONNECT_PATH)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, proxy_core::tunnel::UPGRADE_PROTOCOL)
            .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(proxy_core::tunnel::CLUSTER_HEADER, "edge")
            .body(Empty::new())?;
        let response = tokio::time::timeout(BOUND, async {
            send.ready().await?;
            send.send_request(request).await
        })
        .await
        .context("no answer to the registration")??;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            bail!("registration refused: {}", response.status());
        }
        let upgraded = hyper::upgrade::on(response).await?;
        Ok(tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| async move {
                    let text = format!("{name} {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        text,
                    ))))
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(upgraded, service)
                .await;
        }))
    }
}

/// GET `path` as alice on `send`: status and body.
async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::AUTHORIZATION, "Bearer alice-token")
        .body(Empty::new())?;
    let response = tokio::time::timeout(BOUND, async {
        send.ready().await?;
        send.send_request(request).await
    })
    .await
    .context("no answer")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tunnels_and_clients_do_not_take_each_others_connections() -> anyhow::Result<()> {
    let proxy = Proxy::start("{maxConnections: 2}").await?;
    // Three tunnels at a cap of two client connections: they leave it.
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        agents.push(proxy.agent(name).await.context(name)?);
    }
    // Both client connections are free for users, and reach the agents.
    let (mut first, _first) = proxy.http1().await?;
    let (mut second, _second) = proxy.http1().await?;
    let (status, body) = get(&mut first, "/k8s/clusters/edge/api").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(" /api"), "{body}");
    assert_eq!(get(&mut second, "/livez").await?.0, 200);
    // Clients hold both client connections now: an agent still registers.
    agents.push(
        proxy
            .agent("d")
            .await
            .context("an agent at the client cap")?,
    );
    // A client past the cap is told so, not served.
    let (mut third, _third) = proxy.http1().await?;
    let (status, body) = get(&mut third, "/k8s/clusters/edge/api").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("limits.maxConnections"), "{body}");
    // The clients within the cap keep being served, by every agent in turn.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let (status, body) = get(&mut first, "/k8s/clusters/edge/api").await?;
        assert_eq!(status, 200, "{body}");
        seen.insert(body);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    Ok(())
}

/// The value of the series `series` (name and labels) at `addr`'s /metrics.
async fn metric(addr: SocketAddr, series: &str) -> anyhow::Result<Option<f64>> {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_giving_two_agent_clusters_one_token_is_refused_and_the_old_config_serves(
) -> anyhow::Result<()> {
    let proxy = Proxy::start_with(
        "reloadInterval: 100ms\nmetrics: {listen: '127.0.0.1:0'}\n",
        true,
    )
    .await?;
    let metrics = proxy.server.metrics_addr().context("metrics listener")?;
    let config_path = proxy.dir.path().join("authproxy.yaml");
    let started = std::fs::read_to_string(&config_path)?;
    std::fs::write(
        proxy.dir.path().join("more-tokens.csv"),
        "alice-token,alice,1001,\"devs\"\nbob-token,bob,1002,\"devs\"\n",
    )?;
    let with_bob = started.replace("file: tokens.csv", "file: more-tokens.csv");
    anyhow::ensure!(with_bob != started, "config layout changed: {started}");
    // bob is added, and a second cluster with edge's token file.
    let duplicate = with_bob.replace(
        "upstreams: [{name: edge, via: agent, agent: {tokenFile: edge.token}}]",
        "upstreams: [{name: edge, via: agent, agent: {tokenFile: edge.token}}, \
         {name: twin, via: agent, agent: {tokenFile: edge.token}}]",
    );
    anyhow::ensure!(duplicate != with_bob, "config layout changed: {with_bob}");
    let bob_status = || async {
        let (mut send, _connection) = proxy.http1().await?;
        let request = http::Request::get("/authproxy/v1/whoami-unused")
            .header(http::header::HOST, "localhost")
            .header(http::header::AUTHORIZATION, "Bearer bob-token")
            .body(Empty::<Bytes>::new())?;
        send.ready().await?;
        let response = tokio::time::timeout(BOUND, send.send_request(request)).await??;
        anyhow::Ok(response.status().as_u16())
    };
    assert_eq!(bob_status().await?, 401, "bob is not a user yet");
    let failure = "authproxy_config_reloads_total{file=\"authentication\",result=\"failure\"}";
    let success = "authproxy_config_reloads_total{file=\"authentication\",result=\"success\"}";
    std::fs::write(&config_path, &duplicate)?;
    authproxy_tests::wait_for(BOUND, "the refused reload counted", || async move {
        match metric(metrics, failure).await {
            Ok(Some(n)) if n >= 1.0 => Ok(Some(())),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    assert_eq!(bob_status().await?, 401, "the refused file is not in force");
    assert_eq!(metric(metrics, success).await?, Some(0.0));
    // The same change without the shared token is taken.
    std::fs::write(&config_path, &with_bob)?;
    authproxy_tests::wait_for(BOUND, "bob accepted", || async {
        match bob_status().await {
            Ok(401) => Err("401".to_owned()),
            Ok(status) => Ok(Some(status)),
            Err(error) => Err(error.to_string()),
        }
    })
    .await?;
    Ok(())
}
