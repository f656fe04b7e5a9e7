//! The load benchmark: one upstream reached (a) directly, (b) through a bare
//! hyper pass-through proxy written here (TLS in, TLS out, nothing else), and
//! (c) through authproxy with static-token authentication and impersonation.
//!
//! A fixed number of requests is spread over 64 concurrent keep-alive
//! HTTP/1.1 connections. Each target is run twice, alternating, and the best
//! run is reported: requests/s, p50 and p99 latency, and the throughput ratio
//! authproxy / pass-through. Everything runs on loopback in this process.
//!
//! Run: `cargo bench -p authproxy-benches --bench load`
//! (`LOAD_REQUESTS=N` sets the count, default 40000).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use authproxy::server::{serve, Proxy};
use authproxy_tests::pki::{self, TestPki};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_core::authn::StaticTokens;
use proxy_core::upstream::{Upstream, UpstreamCredential, UpstreamOptions};
use proxy_core::{proxy_stack, Chain};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 64;
const PROXY_TOKEN: &str = "bench-proxy-token";
const USER_TOKEN: &str = "bench-user-token";
const BODY: &str = r#"{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"12345"},"items":[{"metadata":{"name":"web-0","namespace":"default","uid":"7c1f1a2e-0000-4000-8000-000000000001"},"status":{"phase":"Running","podIP":"10.0.0.12"}},{"metadata":{"name":"web-1","namespace":"default"},"status":{"phase":"Running"}}]}"#;

/// Accepts TLS connections on `listener` and serves `handler` on each.
fn spawn_tls_server<F, Fut>(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<proxy_core::ProxyBody>, Infallible>>
        + Send
        + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(handler);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The upstream: answers the pods list when the proxy's token is presented.
async fn upstream(tls: Arc<rustls::ServerConfig>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    spawn_tls_server(listener, tls, |req: Request<Incoming>| async move {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {PROXY_TOKEN}").as_bytes());
        let mut response = Response::new(proxy_core::ProxyBody::full(if ok { BODY } else { "" }));
        *response.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    });
    Ok(addr)
}

/// A bare pass-through proxy: TLS listener, pooled TLS client, URI rewritten, nothing else.
async fn bare_proxy(
    tls: Arc<rustls::ServerConfig>,
    ca_pem: &str,
    upstream: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in proxy_core::tls::parse_certs(ca_pem.as_bytes(), "ca")? {
        roots.add(cert)?;
    }
    let client_tls = proxy_core::tls::client_config(roots, None, &[])?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls)
        .https_only()
        .enable_all_versions()
        .build();
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    spawn_tls_server(listener, tls, move |mut req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            *req.uri_mut() = format!("https://{upstream}{path}")
                .parse()
                .unwrap_or_default();
            req.headers_mut().remove(header::HOST);
            Ok(match client.request(req).await {
                Ok(response) => response.map(proxy_core::ProxyBody::Incoming),
                Err(_) => {
                    let mut r = Response::new(proxy_core::ProxyBody::empty());
                    *r.status_mut() = StatusCode::BAD_GATEWAY;
                    r
                }
            })
        }
    });
    Ok(addr)
}

/// An OIDC issuer with the bench keys preloaded, behind the token cache, and
/// an RS256 ID token it accepts.
fn oidc_chain() -> anyhow::Result<(Chain, String)> {
    use proxy_core::authn::cache::CacheSettings;
    use proxy_core::authn::oidc::{JwtAuthenticator, OidcAuthenticator};
    use proxy_core::authn::CachedAuthenticator;
    let issuer = "https://127.0.0.1:9"; // never reached: keys are preloaded
    let jwt: JwtAuthenticator = serde_json::from_value(serde_json::json!({
        "issuer": {"url": issuer, "audiences": ["bench"]},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}},
    }))?;
    let oidc = OidcAuthenticator::start(
        jwt.settings("bench")
            .map_err(|p| anyhow::anyhow!("{p:?}"))?,
    )?;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&std::fs::read_to_string(format!("{fixtures}/jwks.json"))?)?;
    oidc.keys().preload(&jwks).map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({"iss": issuer, "aud": "bench", "sub": "u1", "email": "bench@example.com",
        "email_verified": true, "groups": ["devs", "ops"], "iat": now, "exp": now + 3600});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-bench".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(format!(
        "{fixtures}/rs256-bench-only.pem"
    ))?)?;
    let token = jsonwebtoken::encode(&header, &claims, &key)?;
    let cached = CachedAuthenticator::new(oidc, CacheSettings::default());
    Ok((Chain::new(vec![Arc::new(cached)]), token))
}

/// authproxy: `chain` (default: static tokens) + impersonation + upstream with a token file.
async fn authproxy(
    tls: Arc<rustls::ServerConfig>,
    ca_pem: &str,
    upstream: SocketAddr,
    dir: &std::path::Path,
    chain: Option<Chain>,
) -> anyhow::Result<(SocketAddr, authproxy::server::RunningServer)> {
    let tokens =
        StaticTokens::from_csv(&format!("{USER_TOKEN},bench,1000,\"devs,ops\"\n"), "bench")?;
    let chain = chain.unwrap_or_else(|| Chain::new(vec![Arc::new(tokens)]));
    let token_file = dir.join("proxy-token");
    std::fs::write(&token_file, PROXY_TOKEN)?;
    let upstream = Upstream::new(UpstreamOptions {
        url: format!("https://{upstream}").parse()?,
        ca_pem: Some(ca_pem.as_bytes().to_vec()),
        client_identity: None,
        server_name: None,
        credential: UpstreamCredential::TokenFile {
            path: token_file,
            interval: Duration::from_secs(1),
        },
        connect_timeout: Duration::from_secs(5),
    })?;
    let proxy = Proxy {
        stack: proxy_stack(chain.clone(), upstream),
        chain,
        issuer: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let running = serve(listener, tls, proxy, Duration::from_secs(1))?;
    Ok((addr, running))
}

struct RunResult {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl RunResult {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// Sends `total` requests over 64 keep-alive HTTP/1.1 connections.
async fn load(
    addr: SocketAddr,
    token: Arc<str>,
    client_tls: Arc<rustls::ClientConfig>,
    total: usize,
) -> anyhow::Result<RunResult> {
    let per_connection = total.div_ceil(CONNECTIONS);
    let connector = tokio_rustls::TlsConnector::from(client_tls);
    let mut senders = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
            .await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for mut sender in senders {
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_connection);
            for _ in 0..per_connection {
                let request = Request::get("/api/v1/namespaces/default/pods")
                    .header(header::HOST, "localhost")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::ACCEPT, "application/json")
                    .body(Empty::<Bytes>::new())?;
                let sent = Instant::now();
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                latencies.push(sent.elapsed());
                if status != StatusCode::OK || body.len() != BODY.len() {
                    bail!(
                        "unexpected answer {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(per_connection * CONNECTIONS);
    for task in tasks {
        latencies.extend(task.await.context("load task")??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(RunResult {
        requests: latencies.len(),
        elapsed,
        latencies,
    })
}

fn main() -> anyhow::Result<()> {
    let total: usize = std::env::var("LOAD_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let pki = TestPki::new()?;
        let cert = pki.issue_server("bench")?;
        let server_tls = pki::server_config(&cert, &[b"h2", b"http/1.1"])?;
        let client_tls = pki::client_config(pki.ca_pem(), &[b"http/1.1"])?;
        let dir = tempfile::tempdir()?;
        let upstream_addr = upstream(server_tls.clone()).await?;
        let bare_addr = bare_proxy(server_tls.clone(), pki.ca_pem(), upstream_addr).await?;
        let (authproxy_addr, _running) = authproxy(server_tls.clone(), pki.ca_pem(), upstream_addr, dir.path(), None).await?;
        let (oidc, id_token) = oidc_chain()?;
        let (oidc_addr, _running_oidc) = authproxy(server_tls.clone(), pki.ca_pem(), upstream_addr, dir.path(), Some(oidc)).await?;
        let targets: [(&str, SocketAddr, Arc<str>); 4] = [
            ("direct", upstream_addr, PROXY_TOKEN.into()),
            ("bare-proxy", bare_addr, PROXY_TOKEN.into()),
            ("authproxy", authproxy_addr, USER_TOKEN.into()),
            ("authproxy-oidc", oidc_addr, id_token.into()),
        ];

        println!("load: {total} requests over {CONNECTIONS} keep-alive HTTP/1.1 connections per run, best of 2 runs");
        for (_, addr, token) in &targets {
            load(*addr, token.clone(), client_tls.clone(), total / 10).await?; // warm-up: pools, caches
        }
        let mut best: Vec<Option<RunResult>> = vec![None, None, None, None];
        for _round in 0..2 {
            for (i, (_, addr, token)) in targets.iter().enumerate() {
                let result = load(*addr, token.clone(), client_tls.clone(), total).await?;
                if best[i].as_ref().is_none_or(|b| result.rps() > b.rps()) {
                    best[i] = Some(result);
                }
            }
        }
        println!("{:<15} {:>9} {:>10} {:>9} {:>9}", "target", "requests", "req/s", "p50", "p99");
        for ((name, _, _), result) in targets.iter().zip(&best) {
            let r = result.as_ref().context("result")?;
            println!("{name:<15} {:>9} {:>10.0} {:>7}µs {:>7}µs", r.requests, r.rps(), r.percentile(0.5).as_micros(), r.percentile(0.99).as_micros());
        }
        let rps = |i: usize| best[i].as_ref().map(RunResult::rps).unwrap_or(0.0);
        println!("ratio authproxy/bare-proxy throughput: {:.2}", rps(2) / rps(1));
        println!("ratio authproxy-oidc/bare-proxy throughput: {:.2}", rps(3) / rps(1));
        println!("ratio authproxy/direct throughput: {:.2}", rps(2) / rps(0));
        Ok(())
    })
}
