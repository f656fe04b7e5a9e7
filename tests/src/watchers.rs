//! Many callers holding watches open through authproxy: an [`Env`] with a
//! set of watcher users and a double whose watches stay open, and HTTP/2
//! client connections to spread thousands of streams over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;

use crate::{double, pki, Env, TestPki, UserInfo, PROXY_TOKEN, PROXY_USER};

/// The token of watcher user `i` (user `watcher-<i>`, group `devs`).
pub fn watcher_token(i: usize) -> String {
    format!("watcher-{i}-token")
}

/// How the double's watches behave and what authproxy's config adds.
pub struct WatchEnvOptions {
    /// Watcher users in the token file.
    pub users: usize,
    /// Events per watch before the double ends it.
    pub watch_events: usize,
    /// Time between events.
    pub watch_interval: Duration,
    /// Top-level YAML appended to authproxy's config (e.g. `limits:`).
    pub extra_yaml: String,
}

impl Default for WatchEnvOptions {
    /// Watches that send one event and then stay open for an hour.
    fn default() -> Self {
        WatchEnvOptions {
            users: 1,
            watch_events: 2,
            watch_interval: Duration::from_secs(3600),
            extra_yaml: String::new(),
        }
    }
}

/// Starts the double (kube's 100 streams per connection) and authproxy in
/// front of it, with `options.users` watcher users.
pub async fn start(options: WatchEnvOptions) -> anyhow::Result<Env> {
    let pki = TestPki::new()?;
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    let mut config = double::DoubleConfig::new(tls).with_token(
        PROXY_TOKEN,
        UserInfo {
            username: PROXY_USER.into(),
            uid: String::new(),
            groups: vec!["system:serviceaccounts".into()],
            extra: Default::default(),
        },
    );
    config.watch_events = options.watch_events;
    config.watch_interval = options.watch_interval;
    let double = double::start(config).await?;
    let dir = tempfile::tempdir()?;
    let proxy_cert = pki.issue_server("proxy")?;
    let mut csv = String::new();
    for i in 0..options.users {
        csv.push_str(&format!(
            "{},watcher-{i},{},\"devs\"\n",
            watcher_token(i),
            2000 + i
        ));
    }
    std::fs::write(dir.path().join("tokens.csv"), csv)?;
    std::fs::write(dir.path().join("proxy-token"), PROXY_TOKEN)?;
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         tls: {{certFile: {cert}, keyFile: {key}}}\n\
         upstream: {{url: '{url}', caFile: {ca}, tokenFile: proxy-token, connectTimeout: 2s}}\n\
         authentication:\n  staticTokens: {{file: tokens.csv}}\n\
         shutdownTimeout: 2s\n{extra}\n",
        cert = proxy_cert.cert_path.display(),
        key = proxy_cert.key_path.display(),
        ca = pki.ca_path().display(),
        url = double.url(),
        extra = options.extra_yaml,
    );
    let config_path = dir.path().join("authproxy.yaml");
    std::fs::write(&config_path, yaml)?;
    let config = authproxy::config::FileConfig::load(&config_path)?;
    let proxy = authproxy::server::start(&config, dir.path()).await?;
    Ok(Env {
        pki,
        double,
        proxy: Some(proxy),
        dir,
    })
}

/// HTTP/2 connections to authproxy; requests go round-robin over them.
#[derive(Clone)]
pub struct H2Clients {
    senders: Vec<SendRequest<Full<Bytes>>>,
    next: Arc<AtomicUsize>,
}

impl H2Clients {
    /// Opens `connections` HTTP/2 connections to the proxy of `env`.
    pub async fn connect(env: &Env, connections: usize) -> anyhow::Result<H2Clients> {
        let addr = env.proxy.as_ref().context("proxy running")?.addr();
        Self::connect_to(addr, env.pki.ca_pem(), connections).await
    }

    /// Opens `connections` HTTP/2 connections to a proxy at `addr` whose
    /// certificate (for `localhost`) is signed by `ca_pem`.
    pub async fn connect_to(
        addr: std::net::SocketAddr,
        ca_pem: &str,
        connections: usize,
    ) -> anyhow::Result<H2Clients> {
        let config = pki::client_config(ca_pem, &[b"h2"])?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut senders = Vec::new();
        for _ in 0..connections {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector
                .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
                .await?;
            let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tls))
                .await?;
            tokio::spawn(connection);
            senders.push(send);
        }
        Ok(H2Clients {
            senders,
            next: Arc::default(),
        })
    }

    /// GET `path` as the holder of `token`.
    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<Response<Incoming>> {
        self.send(http::Method::GET, path, token, None).await
    }

    /// `method` on `path` as the holder of `token`, with `body` (JSON, or a
    /// merge patch for PATCH) when given.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        token: &str,
        body: Option<String>,
    ) -> anyhow::Result<Response<Incoming>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let mut send = self.senders[i].clone();
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("https://localhost{path}"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            let kind = if method == http::Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            request = request.header(http::header::CONTENT_TYPE, kind);
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        Ok(send.send_request(request).await?)
    }
}

/// Path of a watch on the pods of `default`.
pub const WATCH_PATH: &str = "/api/v1/namespaces/default/pods?watch=true";

/// Opens a watch and waits (up to `limit`) for its first event; returns the
/// response with the rest of the stream.
pub async fn open_watch(
    clients: &H2Clients,
    token: &str,
    limit: Duration,
) -> anyhow::Result<Response<Incoming>> {
    tokio::time::timeout(limit, async {
        let mut response = clients.get(WATCH_PATH, token).await?;
        anyhow::ensure!(
            response.status() == http::StatusCode::OK,
            "watch answered {}",
            response.status()
        );
        let frame = response
            .body_mut()
            .frame()
            .await
            .context("watch ended before its first event")??;
        let data = frame.into_data().unwrap_or_default();
        anyhow::ensure!(
            data.starts_with(b"{\"object\"") || data.starts_with(b"{\"type\""),
            "not a watch event: {}",
            String::from_utf8_lossy(&data)
        );
        Ok(response)
    })
    .await
    .with_context(|| format!("watch did not deliver its first event within {limit:?}"))?
}

/// Reads a whole response body as text.
pub async fn body_text(response: Response<Incoming>) -> anyhow::Result<String> {
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Sends `count` GETs of pod `web-0` in `default` at once (request `i` with
/// `token(i)`), each bounded by 10 s, and returns their latencies sorted;
/// fails on any answer but 200 with the pod.
pub async fn short_get_latencies(
    clients: &H2Clients,
    count: usize,
    token: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Duration>> {
    let requests = (0..count).map(|i| {
        let clients = clients.clone();
        let token = token(i);
        async move {
            let start = std::time::Instant::now();
            let response = tokio::time::timeout(
                Duration::from_secs(10),
                clients.get("/api/v1/namespaces/default/pods/web-0", &token),
            )
            .await
            .map_err(|_| anyhow::anyhow!("short request {i} not answered within 10s"))??;
            let status = response.status();
            let body = body_text(response).await?;
            anyhow::ensure!(
                status == http::StatusCode::OK,
                "short request {i}: {status} {body}"
            );
            anyhow::ensure!(body.contains("\"web-0\""), "short request {i}: {body}");
            Ok(start.elapsed())
        }
    });
    let mut latencies = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    latencies.sort();
    Ok(latencies)
}

/// The 99th percentile of sorted `latencies`.
pub fn p99(latencies: &[Duration]) -> Duration {
    latencies[(latencies.len() * 99).div_ceil(100).max(1) - 1]
}
