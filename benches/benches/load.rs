//! The load benchmark: authproxy against its peers, side by side in one run.
//!
//! One upstream answers a fixed 800-byte PodList when the proxies' own token
//! is presented: nginx (HTTP/2 offered by ALPN on one port, HTTP/1.1 only on
//! another), or, without nginx or with `LOAD_UPSTREAM_SERVER=builtin`, a
//! hyper server written here. It is reached by `wrk` over TLS on loopback:
//!
//! - `direct`: the upstream itself;
//! - `bare-h2`, `bare-h1`: a bare hyper pass-through proxy written here (TLS
//!   in, pooled TLS client out, URI rewritten, nothing else), to an upstream
//!   that offers HTTP/2 or only HTTP/1.1;
//! - `nginx`: nginx configured as the equivalent impersonating proxy (a `map`
//!   from the caller's token to the user, `proxy_set_header Impersonate-*` and
//!   the proxy's own `Authorization`, keep-alive upstream; nginx speaks only
//!   HTTP/1.1 to upstreams);
//! - `authproxy-h2`, `authproxy-h1`: the release `authproxy` binary with
//!   static-token authentication, to either upstream;
//! - `oidc-h2`, `oidc-h1`: the same with an RS256 ID token (token cache hit);
//! - `obs-h2`: static tokens with `/metrics` and an audit log file on;
//! - `base-h2`, `base-h1`: with `LOAD_BASELINE_BINARY=<path>`, another
//!   `authproxy` build (an earlier commit, say) with static tokens, for a
//!   before/after in one run.
//!
//! Each target runs at 1 connection (sequential requests: the latency one
//! kubectl user feels) and at 64 connections, twice in alternation, and the
//! better run is kept. Every process (upstream, pass-through, nginx,
//! authproxy, wrk) is its own, as deployed. The report prints requests/s, p50
//! and p99, p50 added over `direct`, and the ratios the targets are set in.
//! A non-2xx answer or a socket error fails the run.
//!
//! With `LOAD_CALLGRIND=1` it instead counts the instructions each proxy
//! executes per request under valgrind's callgrind (stable on a noisy
//! machine): two runs of each proxy, with 200 and 1,200 sequential requests,
//! the difference divided by 1,000, so start-up and warm-up cancel out.
//!
//! Run: `benches/load.sh` (installs wrk, nginx and valgrind when missing,
//! builds the release binary, then runs this). Knobs: `LOAD_SECONDS` (per
//! run, default 5), `LOAD_TARGETS=direct,nginx,authproxy-h2` (a subset),
//! `LOAD_CONNECTIONS=1,64`, `LOAD_BINARY` (the `authproxy` the authproxy,
//! oidc and obs targets run; default the release build),
//! `LOAD_UPSTREAM_SERVER=nginx|builtin`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use authproxy_benches::process::{env_or, fixtures_dir, release_binary};
use authproxy_tests::pki::{self, CertFiles, TestPki};
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

const PROXY_TOKEN: &str = "bench-proxy-token";
const USER_TOKEN: &str = "bench-user-token";
const PATH: &str = "/api/v1/namespaces/default/pods";
/// TLS 1.3 suites in authproxy's order (`proxy_core::tls::provider`), given
/// to nginx so every proxy in the bench encrypts alike.
const SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
/// The answer: a PodList of 800 bytes.
const BODY: &str = r#"{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"12345"},"items":[{"metadata":{"name":"web-0","namespace":"default","uid":"7c1f1a2e-0000-4000-8000-000000000001","labels":{"app":"web","tier":"frontend"},"creationTimestamp":"2026-01-01T00:00:00Z"},"spec":{"nodeName":"node-1","containers":[{"name":"web","image":"registry.example/web:1.2.3"}]},"status":{"phase":"Running","podIP":"10.0.0.12"}},{"metadata":{"name":"web-1","namespace":"default","uid":"7c1f1a2e-0000-4000-8000-000000000002","labels":{"app":"web","tier":"frontend"},"creationTimestamp":"2026-01-01T00:00:00Z"},"spec":{"nodeName":"node-2","containers":[{"name":"web","image":"registry.example/web:1.2.3"}]},"status":{"phase":"Running","podIP":"10.0.0.13"}},{"metadata":{"name":"web-2","namespace":"default"},"status":{"phase":"Pending"}}]}"#;

// ---------------------------------------------------------------------------
// Child roles: the bench binary runs itself as the upstream and as the bare
// pass-through, each in its own process (`LOAD_ROLE`).

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
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Every watch of the memory measurement on one connection
                // (hyper's default allows 200 streams; a pass-through's
                // client would queue the rest for ever).
                builder.http2().max_concurrent_streams(100_000);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The serving certificate the parent wrote (`LOAD_CERT`, `LOAD_KEY`).
fn child_cert() -> anyhow::Result<CertFiles> {
    let cert_path = PathBuf::from(std::env::var("LOAD_CERT")?);
    let key_path = PathBuf::from(std::env::var("LOAD_KEY")?);
    Ok(CertFiles {
        cert_pem: std::fs::read_to_string(&cert_path)?,
        key_pem: std::fs::read_to_string(&key_path)?,
        cert_path,
        key_path,
    })
}

fn json_response(status: StatusCode, body: String) -> Response<proxy_core::ProxyBody> {
    let mut response = Response::new(proxy_core::ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A watch as kube-apiserver answers it: one event, then the stream stays
/// open without a word (a quiet watch).
fn watch_response() -> Response<proxy_core::ProxyBody> {
    let event = Bytes::from_static(
        br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-0","namespace":"default","resourceVersion":"12346"}}}
"#,
    );
    let events =
        futures_util::stream::once(
            async move { Ok::<_, Infallible>(hyper::body::Frame::data(event)) },
        )
        .chain(futures_util::stream::pending());
    let mut response = Response::new(proxy_core::ProxyBody::new(http_body_util::StreamBody::new(
        events,
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The upstream: the PodList on two listeners (HTTP/2 offered by ALPN, and
/// HTTP/1.1 only), and an OIDC issuer's discovery document and keys on a third.
async fn role_upstream() -> anyhow::Result<()> {
    let cert = child_cert()?;
    let api = |req: Request<Incoming>| async move {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {PROXY_TOKEN}").as_bytes());
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=1" || kv == "watch=true"));
        Ok(if ok && watch {
            watch_response()
        } else if ok {
            json_response(StatusCode::OK, BODY.to_owned())
        } else {
            json_response(StatusCode::UNAUTHORIZED, String::new())
        })
    };
    let h2 = TcpListener::bind("127.0.0.1:0").await?;
    let h1 = TcpListener::bind("127.0.0.1:0").await?;
    let idp = TcpListener::bind("127.0.0.1:0").await?;
    let ports = (
        h2.local_addr()?.port(),
        h1.local_addr()?.port(),
        idp.local_addr()?.port(),
    );
    spawn_tls_server(h2, pki::server_config(&cert, &[b"h2", b"http/1.1"])?, api);
    spawn_tls_server(h1, pki::server_config(&cert, &[b"http/1.1"])?, api);
    let issuer = format!("https://127.0.0.1:{}", ports.2);
    let jwks: Arc<str> = std::fs::read_to_string(fixture("jwks.json")?)?.into();
    spawn_tls_server(
        idp,
        pki::server_config(&cert, &[b"http/1.1"])?,
        move |req: Request<Incoming>| {
            let issuer = issuer.clone();
            let jwks = jwks.clone();
            async move {
                Ok(match req.uri().path() {
                    "/.well-known/openid-configuration" => json_response(
                        StatusCode::OK,
                        serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")})
                            .to_string(),
                    ),
                    "/jwks" => json_response(StatusCode::OK, jwks.to_string()),
                    _ => json_response(StatusCode::NOT_FOUND, String::new()),
                })
            }
        },
    );
    println!("ready {} {} {}", ports.0, ports.1, ports.2);
    std::future::pending::<()>().await;
    Ok(())
}

/// A bare pass-through proxy to `LOAD_UPSTREAM`: TLS listener, pooled TLS
/// client (the same TLS and TCP settings as authproxy's), URI rewritten.
async fn bare_on(listener: std::net::TcpListener) -> anyhow::Result<()> {
    let cert = child_cert()?;
    let upstream: SocketAddr = std::env::var("LOAD_UPSTREAM")?.parse()?;
    let ca_pem = std::fs::read_to_string(std::env::var("LOAD_CA")?)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in proxy_core::tls::parse_certs(ca_pem.as_bytes(), "ca")? {
        roots.add(cert)?;
    }
    let client_tls = proxy_core::tls::client_config(roots, None, &[])?;
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(tcp);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let listener = TcpListener::from_std(listener)?;
    // authproxy's cipher suites, and the proxy picks one, as authproxy's listener does.
    let mut tls = rustls::ServerConfig::builder_with_provider(proxy_core::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            proxy_core::tls::parse_certs(cert.cert_pem.as_bytes(), "bench")?,
            {
                use rustls_pki_types::pem::PemObject;
                rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?
            },
        )?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tls.ignore_client_order = true;
    let tls = Arc::new(tls);
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
                Ok(response) => response.map(proxy_core::ProxyBody::from),
                Err(error) => {
                    // The first few failures say why the run is about to fail.
                    static SAID: std::sync::atomic::AtomicUsize =
                        std::sync::atomic::AtomicUsize::new(0);
                    if SAID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
                        eprintln!("bare: the upstream request failed: {error:?}");
                    }
                    json_response(StatusCode::BAD_GATEWAY, String::new())
                }
            })
        }
    });
    std::future::pending::<()>().await;
    Ok(())
}

/// The bare proxy: one multi-threaded runtime, or with
/// `LOAD_BARE_THREADS=per-core` one single-threaded runtime per core, each
/// accepting on the same socket with its own client.
fn role_bare(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    if std::env::var("LOAD_BARE_THREADS").is_ok_and(|v| v == "per-core") {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = Vec::new();
        for _ in 0..cores {
            let listener = listener.try_clone()?;
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(bare_on(listener))
            }));
        }
        println!("ready {port}");
        for t in threads {
            let _ = t.join();
        }
        return Ok(());
    }
    let _guard = runtime.enter();
    println!("ready {port}");
    runtime.block_on(bare_on(listener))
}

fn fixture(name: &str) -> anyhow::Result<PathBuf> {
    Ok(fixtures_dir()?.join(name))
}

// ---------------------------------------------------------------------------
// The processes under test.

/// A process under test; killed on drop.
struct Proc {
    name: String,
    child: Child,
}

/// The processes the bench started and has not stopped yet, stopped by
/// [`stop_children_on_signal`] when the bench is interrupted.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Asks process `pid` to stop. TERM first: nginx's master stops its workers
/// only when asked to; killed outright, it would leave them behind.
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// On Ctrl-C or SIGTERM (how a `LOAD_HOLD=1` run ends), stops every process
/// the bench started, then exits.
fn stop_children_on_signal() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let signalled = runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                result = tokio::signal::ctrl_c() => result,
                _ = term.recv() => Ok(()),
            }
        });
        if signalled.is_ok() {
            let pids = RUNNING.lock().map(|p| p.clone()).unwrap_or_default();
            for pid in pids {
                terminate(pid);
            }
            std::process::exit(130);
        }
    });
}

impl Proc {
    fn new(name: &str, child: Child) -> Proc {
        if let Ok(mut running) = RUNNING.lock() {
            running.push(child.id());
        }
        Proc {
            name: name.to_owned(),
            child,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id();
        if let Ok(mut running) = RUNNING.lock() {
            running.retain(|p| *p != pid);
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and reads its first stdout line, which must start with `ready`.
fn spawn_ready(name: &str, mut command: Command) -> anyhow::Result<(Proc, Vec<u16>)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let proc = Proc::new(name, child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let ports = line
        .strip_prefix("ready")
        .with_context(|| format!("{name} did not start: {line:?}"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<u16>, _>>()?;
    Ok((proc, ports))
}

/// Starts `command` with its stdout discarded.
fn spawn_quiet(name: &str, mut command: Command) -> anyhow::Result<Proc> {
    let child = command
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc::new(name, child))
}

/// `command` (the bench binary itself, maybe under valgrind) set up to run as `role`.
fn role_command(mut command: Command, role: &str, pki: &TestPki, cert: &CertFiles) -> Command {
    command
        .env("LOAD_ROLE", role)
        .env("LOAD_CERT", &cert.cert_path)
        .env("LOAD_KEY", &cert.key_path)
        .env("LOAD_CA", pki.ca_path());
    command
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What an authproxy target authenticates with.
#[derive(Clone, Copy)]
enum Auth {
    Static,
    Oidc,
    Observed,
}

/// Writes the configuration of an authproxy on `port` to `upstream_port`.
fn authproxy_config(
    dir: &Path,
    name: &str,
    port: u16,
    upstream_port: u16,
    idp_port: u16,
    auth: Auth,
    (pki, cert): (&TestPki, &CertFiles),
) -> anyhow::Result<PathBuf> {
    let authentication = match auth {
        Auth::Static | Auth::Observed => "  staticTokens: {file: tokens.csv}\n".to_owned(),
        Auth::Oidc => format!(
            "  jwt: {}\n",
            serde_json::json!([{
                "issuer": {"url": format!("https://127.0.0.1:{idp_port}"), "audiences": ["bench"],
                           "certificateAuthority": pki.ca_pem()},
                "claimMappings": {"username": {"claim": "email", "prefix": ""},
                                  "groups": {"claim": "groups", "prefix": "oidc:"}},
            }])
        ),
    };
    let observe = match auth {
        Auth::Observed => format!(
            "metrics: {{listen: '127.0.0.1:{}'}}\naudit: {{path: {name}-audit.log, maxSizeMB: 100, maxBackups: 1}}\n",
            free_port()?
        ),
        _ => String::new(),
    };
    // The memory measurement holds thousands of watches as one user.
    let (limits, streams) = if conn_memory::wanted() {
        (
            "limits: {maxConnections: 40000, longRunning: {perUser: 40000, total: 40000}}\n",
            ", maxStreamsPerConnection: 1000",
        )
    } else {
        ("", "")
    };
    let yaml = format!(
        "listen: 127.0.0.1:{port}\n\
         tls: {{certFile: {cert}, keyFile: {key}}}\n\
         upstream: {{url: 'https://127.0.0.1:{upstream_port}', caFile: {ca}, tokenFile: proxy-token{streams}}}\n\
         authentication:\n{authentication}\
         {observe}\
         {limits}\
         logging: {{level: error}}\n",
        cert = cert.cert_path.display(),
        key = cert.key_path.display(),
        ca = pki.ca_path().display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The part of an nginx configuration every nginx in the bench shares, up to
/// and including the opening of its `http` block: `workers` processes (0: one
/// process without a master, for callgrind), its pid, log and temporary files
/// under `root`, no access log.
fn nginx_preamble(root: &Path, workers: usize) -> anyhow::Result<String> {
    std::fs::create_dir_all(root)?;
    let process = if workers == 0 {
        "master_process off;\nworker_processes 1;\n".to_owned()
    } else {
        format!("worker_processes {workers};\n")
    };
    Ok(format!(
        "daemon off;\n{process}pid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n\
events {{ worker_connections 4096; }}\n\
http {{\n\
  access_log off;\n\
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n\
  fastcgi_temp_path {root}/fastcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;\n\
  keepalive_requests 1000000; keepalive_timeout 600s;\n",
        root = root.display(),
    ))
}

/// The TLS lines of an nginx `server` block: the bench certificate and the
/// TLS 1.3 suites in authproxy's order.
fn nginx_tls(cert: &CertFiles) -> String {
    format!(
        "    ssl_certificate {cert}; ssl_certificate_key {key};\n\
    ssl_protocols TLSv1.2 TLSv1.3;\n\
    ssl_prefer_server_ciphers on; ssl_conf_command Ciphersuites {SUITES};\n",
        cert = cert.cert_path.display(),
        key = cert.key_path.display(),
    )
}

/// Writes the configuration of the upstream nginx: the PodList, to a request
/// bearing the proxies' own token, on `h2_port` (HTTP/2 offered by ALPN) and
/// `h1_port` (HTTP/1.1 only); 401 to any other.
fn nginx_upstream_config(
    dir: &Path,
    (h2_port, h1_port): (u16, u16),
    cert: &CertFiles,
) -> anyhow::Result<PathBuf> {
    let root = dir.join("nginx-upstream");
    let mut conf = nginx_preamble(&root, 2)?;
    for listen in [format!("{h2_port} ssl http2"), format!("{h1_port} ssl")] {
        conf += &format!(
            "  server {{\n\
    listen 127.0.0.1:{listen};\n{tls}\
    location = {PATH} {{\n\
      if ($http_authorization != \"Bearer {PROXY_TOKEN}\") {{ return 401; }}\n\
      default_type application/json;\n\
      return 200 '{BODY}';\n\
    }}\n\
  }}\n",
            tls = nginx_tls(cert),
        );
    }
    conf += "}\n";
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// Writes an nginx configuration: the impersonating proxy on `port` to the
/// HTTP/1.1 upstream. `workers` 0 runs one process without a master (for
/// callgrind).
fn nginx_config(
    dir: &Path,
    port: u16,
    upstream_port: u16,
    workers: usize,
    pki: &TestPki,
    cert: &CertFiles,
) -> anyhow::Result<PathBuf> {
    let root = dir.join("nginx");
    let conf = format!(
        "{preamble}\
  proxy_headers_hash_max_size 1024; proxy_headers_hash_bucket_size 128;\n\
  map $http_authorization $bench_user {{ \"Bearer {USER_TOKEN}\" bench; default \"\"; }}\n\
  map $http_authorization $bench_uid {{ \"Bearer {USER_TOKEN}\" 1000; default \"\"; }}\n\
  upstream api {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}\n\
  server {{\n\
    listen 127.0.0.1:{port} ssl;\n{tls}\
    location / {{\n\
      if ($bench_user = \"\") {{ return 401; }}\n\
      proxy_pass https://api;\n\
      proxy_http_version 1.1;\n\
      proxy_set_header Connection \"\";\n\
      proxy_set_header Host $proxy_host;\n\
      proxy_set_header Authorization \"Bearer {PROXY_TOKEN}\";\n\
      proxy_set_header Impersonate-User $bench_user;\n\
      proxy_set_header Impersonate-Group devs;\n\
      proxy_set_header Impersonate-Group ops;\n\
      proxy_set_header Impersonate-Uid $bench_uid;\n\
      proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca};\n\
      proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_ssl_session_reuse on;\n\
      proxy_ssl_conf_command Ciphersuites {SUITES};\n\
    }}\n\
  }}\n\
}}\n",
        preamble = nginx_preamble(&root, workers)?,
        tls = nginx_tls(cert),
        ca = pki.ca_path().display(),
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// An RS256 ID token for the bench issuer on `idp_port`.
fn id_token(idp_port: u16) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({"iss": format!("https://127.0.0.1:{idp_port}"), "aud": "bench",
        "sub": "u1", "email": "bench@example.com", "email_verified": true, "groups": ["devs", "ops"],
        "iat": now, "exp": now + 3600});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-bench".into());
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-bench-only.pem")?)?)?;
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// A target: where it listens and the token it takes.
struct Target {
    name: &'static str,
    port: u16,
    token: Arc<str>,
    /// The process serving it (with its children: nginx's workers).
    pid: Option<u32>,
    /// The upstream process (for `direct`, the same as `pid`).
    upstream_pid: Option<u32>,
}

/// CPU time (user and kernel) and context switches of a process tree, from
/// `/proc/<pid>/task/*/schedstat` and `.../status`.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    cpu_ns: u64,
    switches: u64,
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn cpu_use(pid: u32) -> CpuUse {
    let mut total = CpuUse::default();
    let mut stack = vec![pid];
    while let Some(pid) = stack.pop() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                    total.cpu_ns += text
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                if let Ok(text) = std::fs::read_to_string(task.path().join("status")) {
                    total.switches += text
                        .lines()
                        .filter(|l| l.contains("ctxt_switches:"))
                        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .sum::<u64>();
                }
            }
        }
        stack.extend(children_of(pid));
    }
    total
}

/// Sends `count` sequential requests on one connection and checks each
/// answer is the PodList.
async fn check(
    target: &Target,
    client_tls: Arc<rustls::ClientConfig>,
    count: usize,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(("127.0.0.1", target.port)).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(client_tls)
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    for _ in 0..count {
        let request = Request::get(PATH)
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {}", target.token))
            .body(Empty::<Bytes>::new())?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK || body != BODY.as_bytes() {
            bail!(
                "{}: answer {status}: {}",
                target.name,
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(())
}

/// Waits until `target` answers the PodList.
async fn wait_ready(target: &Target, client_tls: Arc<rustls::ClientConfig>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check(target, client_tls.clone(), 1).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{} never answered", target.name)))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// wrk

struct WrkResult {
    rps: f64,
    p50: Duration,
    p99: Duration,
    requests: u64,
    /// The target's CPU time per request (user and kernel), in µs.
    cpu_us: Option<f64>,
    /// The target's context switches per request.
    switches: Option<f64>,
    /// The upstream's CPU time per request, in µs.
    upstream_cpu_us: Option<f64>,
}

fn parse_wrk_duration(s: &str) -> Option<Duration> {
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let value: f64 = number.parse().ok()?;
    let micros = match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        "m" => value * 60e6,
        _ => return None,
    };
    Some(Duration::from_secs_f64(micros / 1e6))
}

/// Parses wrk's `--latency` report; any non-2xx answer or socket error is an error.
fn parse_wrk(output: &str) -> anyhow::Result<WrkResult> {
    if let Some(line) = output
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk: {}", line.trim());
    }
    let field = |prefix: &str| {
        output
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("wrk printed no {prefix:?} line:\n{output}"))
    };
    let rps: f64 = field("Requests/sec:")?.parse()?;
    let p50 = parse_wrk_duration(field("50%")?).context("p50")?;
    let p99 = parse_wrk_duration(field("99%")?).context("p99")?;
    let requests = output
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .context("wrk printed no request count")?;
    Ok(WrkResult {
        rps,
        p50,
        p99,
        requests,
        cpu_us: None,
        switches: None,
        upstream_cpu_us: None,
    })
}

fn wrk(target: &Target, connections: usize, seconds: u64) -> anyhow::Result<WrkResult> {
    let before = target.pid.map(cpu_use);
    let upstream_before = target.upstream_pid.map(cpu_use);
    let output = Command::new("wrk")
        .arg(format!("-t{}", connections.min(2)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", target.token))
        .arg("-H")
        .arg("Accept: application/json")
        .arg(format!("https://127.0.0.1:{}{PATH}", target.port))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed on {}: {}{}",
            target.name,
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut result = parse_wrk(&text)
        .with_context(|| format!("{} at {connections} connections", target.name))?;
    if let (Some(pid), Some(before)) = (target.pid, before) {
        let after = cpu_use(pid);
        let requests = result.requests.max(1) as f64;
        result.cpu_us = Some(after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e3 / requests);
        result.switches = Some(after.switches.saturating_sub(before.switches) as f64 / requests);
        if let (Some(pid), Some(before)) = (target.upstream_pid, upstream_before) {
            let after = cpu_use(pid);
            result.upstream_cpu_us =
                Some(after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e3 / requests);
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------
// The run.

struct Setup {
    _dir: tempfile::TempDir,
    _pki: TestPki,
    procs: Vec<Proc>,
    targets: Vec<Target>,
    client_tls: Arc<rustls::ClientConfig>,
    /// What serves the PodList: `nginx` or `the bench's own server`.
    upstream: &'static str,
}

const ALL: &[&str] = &[
    "direct",
    "bare-h2",
    "bare-h1",
    "bare-pc-h2",
    "bare-pc-h1",
    "nginx",
    "authproxy-h2",
    "authproxy-h1",
    "oidc-h2",
    "oidc-h1",
    "obs-h2",
    "base-h2",
    "base-h1",
];

/// Starts the upstream and every wanted target (`callgrind`: each proxy
/// under valgrind, nginx as a single process).
fn setup(wanted: &[String], wrap: Option<&[String]>) -> anyhow::Result<Setup> {
    // `LOAD_BINARY` runs another build as the authproxy targets (an
    // instrumented one, to gather a profile for the optimizer).
    let binary = match std::env::var_os("LOAD_BINARY") {
        Some(path) => PathBuf::from(path),
        None => release_binary()?,
    };
    // An earlier build to compare with (`base-*` targets).
    let baseline = std::env::var_os("LOAD_BASELINE_BINARY").map(PathBuf::from);
    if let Some(baseline) = baseline.as_ref().filter(|b| !b.is_file()) {
        bail!("LOAD_BASELINE_BINARY: {} is not a file", baseline.display());
    }
    if !binary.is_file() {
        bail!(
            "{} is missing: run `cargo build --release -p proxy-bin` first (benches/load.sh does)",
            binary.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new()?;
    let cert = pki.issue_server("bench")?;
    let client_tls = pki::client_config(pki.ca_pem(), &[b"http/1.1"])?;
    let mut procs = Vec::new();
    let upstream_command = Command::new(std::env::current_exe()?);
    let (upstream, ports) = spawn_ready(
        "upstream",
        role_command(upstream_command, "upstream", &pki, &cert),
    )?;
    procs.push(upstream);
    let [builtin_h2, builtin_h1, idp] = ports[..] else {
        bail!("upstream printed {ports:?}");
    };
    let builtin_pid = procs.first().map(|p| p.child.id());
    const BUILTIN: &str = "the bench's own server";
    // The upstream every target reaches: nginx, as the one that serves fewest
    // instructions per request, or the bench's own (`LOAD_UPSTREAM_SERVER`).
    let (h2, h1, upstream_pid, upstream_name) = match (upstream_server()?, on_path("nginx")) {
        (UpstreamServer::Nginx, Some(nginx)) => {
            let ports = (free_port()?, free_port()?);
            let conf = nginx_upstream_config(dir.path(), ports, &cert)?;
            let mut command = Command::new(nginx);
            command.arg("-c").arg(&conf).arg("-e").arg("stderr");
            let proc = spawn_quiet("upstream nginx", command)?;
            let pid = proc.child.id();
            procs.push(proc);
            wait_listening(&[ports.0, ports.1])?;
            (ports.0, ports.1, Some(pid), "nginx")
        }
        (UpstreamServer::Nginx, None) => {
            println!("upstream: nginx is not installed, the bench's own upstream serves (benches/load.sh installs nginx: apt-get install nginx-light)");
            (builtin_h2, builtin_h1, builtin_pid, BUILTIN)
        }
        (UpstreamServer::Builtin, _) => (builtin_h2, builtin_h1, builtin_pid, BUILTIN),
    };
    let wrapped = |program: &Path| {
        let mut command = match wrap {
            Some(wrap) => {
                let mut c = Command::new(&wrap[0]);
                c.args(&wrap[1..]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.current_dir(dir.path());
        command
    };
    std::fs::write(dir.path().join("proxy-token"), PROXY_TOKEN)?;
    std::fs::write(
        dir.path().join("tokens.csv"),
        format!("{USER_TOKEN},bench,1000,\"devs,ops\"\n"),
    )?;
    let mut targets = Vec::new();
    let user: Arc<str> = USER_TOKEN.into();
    for &name in ALL {
        if !wanted.iter().any(|w| w == name) {
            continue;
        }
        let upstream_port = if name.ends_with("h1") || name == "nginx" {
            h1
        } else {
            h2
        };
        let port = match name {
            "direct" => {
                targets.push(Target {
                    name,
                    port: h2,
                    token: PROXY_TOKEN.into(),
                    pid: upstream_pid,
                    upstream_pid,
                });
                continue;
            }
            n if n.starts_with("bare") => {
                let mut command =
                    role_command(wrapped(&std::env::current_exe()?), "bare", &pki, &cert);
                if n.starts_with("bare-pc") {
                    command.env("LOAD_BARE_THREADS", "per-core");
                }
                command.env("LOAD_UPSTREAM", format!("127.0.0.1:{upstream_port}"));
                let (proc, ports) = spawn_ready(name, command)?;
                procs.push(proc);
                ports[0]
            }
            "nginx" => {
                let Some(nginx) = on_path("nginx") else {
                    println!("nginx: not installed, skipped (benches/load.sh installs it: apt-get install nginx-light)");
                    continue;
                };
                let port = free_port()?;
                let workers = if wrap.is_some() { 0 } else { 2 };
                let conf = nginx_config(dir.path(), port, upstream_port, workers, &pki, &cert)?;
                let mut command = wrapped(&nginx);
                command.arg("-c").arg(&conf).arg("-e").arg("stderr");
                procs.push(spawn_quiet(name, command)?);
                port
            }
            _ => {
                let auth = match name {
                    n if n.starts_with("oidc") => Auth::Oidc,
                    n if n.starts_with("obs") => Auth::Observed,
                    _ => Auth::Static,
                };
                let port = free_port()?;
                let config = authproxy_config(
                    dir.path(),
                    name,
                    port,
                    upstream_port,
                    idp,
                    auth,
                    (&pki, &cert),
                )?;
                let program = if name.starts_with("base") {
                    match &baseline {
                        Some(baseline) => baseline,
                        None => continue,
                    }
                } else {
                    &binary
                };
                let mut command = wrapped(program);
                command
                    .arg("serve")
                    .arg("--config")
                    .arg(&config)
                    .env_remove("RUST_LOG");
                procs.push(spawn_quiet(name, command)?);
                port
            }
        };
        let token = if name.starts_with("oidc") {
            id_token(idp)?.into()
        } else if name.starts_with("bare") {
            PROXY_TOKEN.into()
        } else {
            user.clone()
        };
        let pid = procs.last().map(|p| p.child.id());
        targets.push(Target {
            name,
            port,
            token,
            pid,
            upstream_pid,
        });
    }
    Ok(Setup {
        _dir: dir,
        _pki: pki,
        procs,
        targets,
        client_tls,
        upstream: upstream_name,
    })
}

/// Which server the targets reach (`LOAD_UPSTREAM_SERVER`).
#[derive(Clone, Copy)]
enum UpstreamServer {
    /// nginx, when installed (the default).
    Nginx,
    /// The bench's own hyper server.
    Builtin,
}

fn upstream_server() -> anyhow::Result<UpstreamServer> {
    match std::env::var("LOAD_UPSTREAM_SERVER").as_deref() {
        Err(_) | Ok("nginx") => Ok(UpstreamServer::Nginx),
        Ok("builtin") => Ok(UpstreamServer::Builtin),
        Ok(other) => bail!("LOAD_UPSTREAM_SERVER: {other:?} is neither nginx nor builtin"),
    }
}

/// Waits until every port in `ports` on loopback accepts connections.
fn wait_listening(ports: &[u16]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nothing listens on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn wanted_targets() -> anyhow::Result<Vec<String>> {
    Ok(match std::env::var("LOAD_TARGETS") {
        Ok(v) => {
            let names: Vec<String> = v.split(',').map(|t| t.trim().to_owned()).collect();
            if let Some(bad) = names.iter().find(|n| !ALL.contains(&n.as_str())) {
                bail!(
                    "LOAD_TARGETS: unknown target {bad:?}; the targets are {}",
                    ALL.join(", ")
                );
            }
            names
        }
        Err(_) => ALL.iter().map(|s| (*s).to_owned()).collect(),
    })
}

fn load(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if on_path("wrk").is_none() {
        bail!("wrk is not installed: run benches/load.sh (it installs wrk with apt-get)");
    }
    let seconds = env_or::<u64>("LOAD_SECONDS", 5).max(1);
    let rounds = env_or::<usize>("LOAD_ROUNDS", 2).max(1);
    let connections: Vec<usize> = std::env::var("LOAD_CONNECTIONS")
        .unwrap_or_else(|_| "1,64".into())
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()
        .context("LOAD_CONNECTIONS: numbers separated by commas")?;
    let mut setup = setup(&wanted_targets()?, None)?;
    for target in &setup.targets {
        runtime.block_on(wait_ready(target, setup.client_tls.clone()))?;
    }
    if std::env::var("LOAD_HOLD").is_ok_and(|v| v == "1") {
        // For profiling by hand: the targets stay up until interrupted, and
        // are stopped then (see `stop_children_on_signal`).
        for target in &setup.targets {
            println!(
                "{} https://127.0.0.1:{} pid {:?} token {}",
                target.name, target.port, target.pid, target.token
            );
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    println!(
        "load: wrk over TLS (HTTP/1.1 keep-alive), {seconds} s per run, best of {rounds} runs; GET {PATH} → {} bytes from {}; nginx reaches the upstream over HTTP/1.1",
        BODY.len(),
        setup.upstream,
    );
    for &c in &connections {
        // Warm-up: pools, TLS sessions, token caches.
        for target in &setup.targets {
            wrk(target, c, 1)?;
        }
        let mut best: HashMap<&str, WrkResult> = HashMap::new();
        for _round in 0..rounds {
            for target in &setup.targets {
                let result = wrk(target, c, seconds)?;
                if let Some(dead) = setup.procs.iter_mut().find_map(|p| {
                    matches!(p.child.try_wait(), Ok(Some(_)) | Err(_)).then(|| p.name.clone())
                }) {
                    bail!("{dead} exited during the run");
                }
                if best.get(target.name).is_none_or(|b| result.rps > b.rps) {
                    best.insert(target.name, result);
                }
            }
        }
        report(c, &setup.targets, &best);
    }
    Ok(())
}

fn report(connections: usize, targets: &[Target], best: &HashMap<&str, WrkResult>) {
    println!("\n{connections} connection(s)");
    println!(
        "{:<14} {:>9} {:>10} {:>9} {:>9} {:>10} {:>9} {:>8} {:>12}",
        "target", "requests", "req/s", "p50", "p99", "+p50", "cpu/req", "csw/req", "upstream cpu"
    );
    let direct_p50 = best.get("direct").map(|d| d.p50);
    for target in targets {
        let Some(r) = best.get(target.name) else {
            continue;
        };
        let added = direct_p50.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.0}µs", r.p50.as_secs_f64() * 1e6 - d.as_secs_f64() * 1e6),
        );
        let cpu = r
            .cpu_us
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}µs"));
        let switches = r
            .switches
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"));
        let upstream = r
            .upstream_cpu_us
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}µs"));
        println!(
            "{:<14} {:>9} {:>10.0} {:>7.0}µs {:>7.0}µs {added:>10} {cpu:>9} {switches:>8} {upstream:>12}",
            target.name,
            r.requests,
            r.rps,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
        );
    }
    let ratio = |a: &str, b: &str| {
        if let (Some(x), Some(y)) = (best.get(a), best.get(b)) {
            println!("ratio {a}/{b} req/s at {connections}: {:.2}", x.rps / y.rps);
        }
    };
    for a in ["authproxy-h2", "authproxy-h1", "oidc-h2"] {
        ratio(a, "nginx");
    }
    ratio("authproxy-h2", "base-h2");
    ratio("authproxy-h1", "base-h1");
    ratio("base-h2", "nginx");
    ratio("authproxy-h2", "bare-h2");
    ratio("authproxy-h1", "bare-h1");
    ratio("oidc-h2", "authproxy-h2");
    ratio("obs-h2", "authproxy-h2");
    if let (Some(d), Some(n)) = (direct_p50, best.get("nginx")) {
        for a in ["authproxy-h2", "authproxy-h1", "base-h2", "base-h1"] {
            if let Some(r) = best.get(a) {
                println!(
                    "added p50 at {connections}: {a} {:.0}µs, nginx {:.0}µs",
                    (r.p50.as_secs_f64() - d.as_secs_f64()) * 1e6,
                    (n.p50.as_secs_f64() - d.as_secs_f64()) * 1e6
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// callgrind

/// The `totals:` line of a callgrind output file: instructions executed.
fn callgrind_total(dir: &Path, prefix: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut found = false;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        if let Some(value) = text.lines().find_map(|l| l.strip_prefix("totals:")) {
            total += value
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse::<u64>()?;
            found = true;
        }
    }
    if !found {
        bail!("no callgrind output {prefix}* in {}", dir.display());
    }
    Ok(total)
}

fn callgrind(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if on_path("valgrind").is_none() {
        bail!("valgrind is not installed: run benches/load.sh (it installs valgrind with apt-get)");
    }
    let (short, long) = (200usize, 1_200usize);
    // LOAD_CALLGRIND_OUT keeps the profiles there, for callgrind_annotate.
    let out = tempfile::tempdir()?;
    let out_dir =
        std::env::var_os("LOAD_CALLGRIND_OUT").map_or_else(|| out.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&out_dir)?;
    let wanted = wanted_targets()?;
    println!(
        "callgrind: instructions each proxy executes per request (TLS both sides included), from runs of {short} and {long} sequential requests"
    );
    println!("{:<14} {:>14}", "target", "instr/request");
    for name in wanted.iter().filter(|n| *n != "direct") {
        let mut totals = Vec::new();
        for count in [short, long] {
            let prefix = format!("{name}-{count}.");
            let wrap = vec![
                "valgrind".to_owned(),
                "--tool=callgrind".to_owned(),
                "--trace-children=no".to_owned(),
                format!("--callgrind-out-file={}/{prefix}%p", out_dir.display()),
            ];
            let setup = setup(std::slice::from_ref(name), Some(&wrap))?;
            let Some(target) = setup.targets.first() else {
                break;
            };
            runtime.block_on(async {
                let deadline = Instant::now() + Duration::from_secs(120);
                while let Err(e) = check(target, setup.client_tls.clone(), 1).await {
                    if Instant::now() > deadline {
                        return Err(e.context(format!("{name} under valgrind never answered")));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                check(target, setup.client_tls.clone(), count - 1).await
            })?;
            let mut setup = setup;
            // The proxy is the last process started; TERM lets it finish
            // (and valgrind write its output) the way it shuts down normally.
            if let Some(proc) = setup.procs.last_mut() {
                let pid = proc.child.id();
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(60);
                while proc.child.try_wait()?.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            drop(setup);
            totals.push(callgrind_total(&out_dir, &prefix)?);
        }
        if let [a, b] = totals[..] {
            println!(
                "{name:<14} {:>14.0}",
                b.saturating_sub(a) as f64 / (long - short) as f64
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match std::env::var("LOAD_ROLE").as_deref() {
        Ok("upstream") => return runtime.block_on(role_upstream()),
        Ok("bare") => return role_bare(&runtime),
        Ok(other) => bail!("LOAD_ROLE={other:?}: not a role"),
        Err(_) => {}
    }
    stop_children_on_signal();
    if std::env::var("LOAD_CALLGRIND").is_ok_and(|v| v == "1") {
        callgrind(&runtime)
    } else if conn_memory::wanted() {
        conn_memory::run(&runtime)
    } else {
        load(&runtime)
    }
}

#[path = "load/conn_memory.rs"]
mod conn_memory;
