//! Memory per client connection (`LOAD_CONN_MEMORY=1`): how much each proxy
//! holds for a TLS client connection that is idle after one GET (HTTP/1.1,
//! then HTTP/2 by ALPN), and for one that holds a watch (HTTP/1.1), with the
//! bare pass-through in the same run as the reference.
//!
//! For each count N (`LOAD_CONN_COUNTS`, default `1000,5000`; 15,000 needs
//! the file-descriptor limit this machine has, 20,000) and each kind, every
//! target in turn, each time a fresh set of processes: its resident set (VmRSS) before, with N connections open
//! (opened 100 at a time), and `LOAD_CONN_SETTLE` seconds (default 30) after
//! they closed; per connection is (with − before) / N. While the watches are
//! held, 200 sequential GETs on another connection give p50 and p99.
//! The upstream is the bench's own server (watches need one that holds them:
//! one event, then a quiet open stream). Targets: `LOAD_TARGETS`, default
//! `bare-h2,authproxy-h2`. `LOAD_CONN_WRAP="heaptrack -o /tmp/ht"` runs each
//! proxy under that command (its RSS figures are then the wrapper's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use authproxy_benches::process::{env_or, memory_kib};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::{check, setup, wait_ready, Target, BODY, PATH};

/// What each connection does before it is left alone.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One GET over HTTP/1.1, then idle with keep-alive.
    IdleHttp1,
    /// One GET over HTTP/2, then idle.
    IdleHttp2,
    /// One watch over HTTP/1.1: its first event read, then held open.
    WatchHttp1,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::IdleHttp1 => "idle h1",
            Kind::IdleHttp2 => "idle h2",
            Kind::WatchHttp1 => "watch h1",
        }
    }
}

/// One open client connection and what keeps it open.
struct Held {
    _task: tokio::task::JoinHandle<()>,
    _sender: Option<Box<dyn std::any::Any + Send>>,
    _watch: Option<hyper::body::Incoming>,
}

fn request(target: &Target, path: &str) -> anyhow::Result<Request<Empty<Bytes>>> {
    Ok(Request::get(path)
        .header(header::HOST, "localhost")
        .header(header::AUTHORIZATION, format!("Bearer {}", target.token))
        .body(Empty::<Bytes>::new())?)
}

/// Reads `body` whole; an error unless it is the PodList.
async fn pod_list(target: &Target, body: hyper::body::Incoming) -> anyhow::Result<()> {
    let bytes = body.collect().await?.to_bytes();
    if bytes != BODY.as_bytes() {
        bail!("{}: not the PodList", target.name);
    }
    Ok(())
}

async fn open(target: &Target, tls: Arc<rustls::ClientConfig>, kind: Kind) -> anyhow::Result<Held> {
    let tcp = TcpStream::connect(("127.0.0.1", target.port)).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    let io = TokioIo::new(stream);
    match kind {
        Kind::IdleHttp1 | Kind::WatchHttp1 => {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await?;
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            let watch = matches!(kind, Kind::WatchHttp1);
            let path = if watch {
                format!("{PATH}?watch=1")
            } else {
                PATH.to_owned()
            };
            let response = sender.send_request(request(target, &path)?).await?;
            if response.status() != StatusCode::OK {
                bail!("{}: answer {}", target.name, response.status());
            }
            let mut body = response.into_body();
            if watch {
                // The first event, then the stream stays open.
                let frame = body
                    .frame()
                    .await
                    .context("the watch ended before its first event")??;
                if frame.data_ref().is_none_or(|d| d.is_empty()) {
                    bail!("{}: the watch's first frame held no event", target.name);
                }
                Ok(Held {
                    _task: task,
                    _sender: Some(Box::new(sender)),
                    _watch: Some(body),
                })
            } else {
                pod_list(target, body).await?;
                Ok(Held {
                    _task: task,
                    _sender: Some(Box::new(sender)),
                    _watch: None,
                })
            }
        }
        Kind::IdleHttp2 => {
            let (mut sender, connection) = hyper::client::conn::http2::handshake::<
                _,
                _,
                Empty<Bytes>,
            >(TokioExecutor::new(), io)
            .await?;
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            let response = sender.send_request(request(target, PATH)?).await?;
            if response.status() != StatusCode::OK {
                bail!("{}: answer {}", target.name, response.status());
            }
            pod_list(target, response.into_body()).await?;
            Ok(Held {
                _task: task,
                _sender: Some(Box::new(sender)),
                _watch: None,
            })
        }
    }
}

/// p50 and p99 of `count` sequential GETs on one new connection.
async fn short_requests(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    count: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let tcp = TcpStream::connect(("127.0.0.1", target.port)).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request(target, PATH)?).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if status != StatusCode::OK {
            bail!("{}: short request answered {status}", target.name);
        }
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[count / 2], times[(count * 99 / 100).min(count - 1)]))
}

fn kib(pid: u32) -> anyhow::Result<u64> {
    Ok(memory_kib(pid)?.0)
}

/// Whether this run measures memory per connection (`LOAD_CONN_MEMORY=1`).
pub fn wanted() -> bool {
    std::env::var("LOAD_CONN_MEMORY").is_ok_and(|v| v == "1")
}

/// Runs the measurement (see the module docs).
pub fn run(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    // Watches need the bench's own upstream.
    std::env::set_var("LOAD_UPSTREAM_SERVER", "builtin");
    if std::env::var_os("LOAD_TARGETS").is_none() {
        std::env::set_var("LOAD_TARGETS", "bare-h2,authproxy-h2");
    }
    let counts: Vec<usize> = std::env::var("LOAD_CONN_COUNTS")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()
        .context("LOAD_CONN_COUNTS: numbers separated by commas")?;
    let settle = Duration::from_secs(env_or("LOAD_CONN_SETTLE", 30));
    let targets = super::wanted_targets()?;
    // A command each proxy runs under (a heap profiler: `heaptrack -o DIR/x`).
    let wrap: Option<Vec<String>> = std::env::var("LOAD_CONN_WRAP")
        .ok()
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .filter(|w: &Vec<String>| !w.is_empty());
    println!(
        "connection memory: TLS client connections held open on loopback, RSS per connection = (held − before) / N; \
         each row a fresh set of processes; after = {} s after they closed",
        settle.as_secs()
    );
    println!(
        "{:<14} {:<9} {:>6} {:>11} {:>11} {:>11} {:>9} {:>14}",
        "target", "kind", "N", "before MiB", "held MiB", "after MiB", "KiB/conn", "short p50/p99"
    );
    for &n in &counts {
        for kind in [Kind::IdleHttp1, Kind::IdleHttp2, Kind::WatchHttp1] {
            for name in &targets {
                // A fresh process each time: memory freed by an earlier row
                // would otherwise be reused and hide this row's cost.
                let setup = setup(std::slice::from_ref(name), wrap.as_deref())?;
                let h1 = setup.client_tls.clone();
                let h2 = authproxy_tests::pki::client_config(setup._pki.ca_pem(), &[b"h2"])?;
                let target = setup
                    .targets
                    .iter()
                    .find(|t| t.name == name.as_str())
                    .with_context(|| format!("{name} did not start"))?;
                runtime.block_on(wait_ready(target, h1.clone()))?;
                // Warm: pools, TLS session caches, token caches.
                runtime.block_on(check(target, h1.clone(), 100))?;
                let pid = target.pid.context("a target without a process")?;
                let tls = match kind {
                    Kind::IdleHttp2 => h2.clone(),
                    _ => h1.clone(),
                };
                std::thread::sleep(Duration::from_secs(1));
                let before = kib(pid)?;
                let mut held = Vec::with_capacity(n);
                let started = Instant::now();
                while held.len() < n {
                    let batch = (n - held.len()).min(100);
                    let opened = runtime.block_on(futures_util::future::join_all(
                        (0..batch).map(|_| open(target, tls.clone(), kind)),
                    ));
                    for connection in opened {
                        held.push(connection.with_context(|| {
                            format!(
                                "{} {}: connection {}",
                                target.name,
                                kind.label(),
                                held.len()
                            )
                        })?);
                    }
                }
                let opened_in = started.elapsed();
                // Let the proxy's side settle (tasks parked, buffers released).
                std::thread::sleep(Duration::from_secs(2));
                let during = kib(pid)?;
                let short = if matches!(kind, Kind::WatchHttp1) {
                    let (p50, p99) = runtime.block_on(short_requests(target, h1.clone(), 200))?;
                    format!(
                        "{:.2}/{:.2} ms",
                        p50.as_secs_f64() * 1e3,
                        p99.as_secs_f64() * 1e3
                    )
                } else {
                    "-".into()
                };
                drop(held);
                std::thread::sleep(settle);
                let after = kib(pid)?;
                println!(
                    "{:<14} {:<9} {:>6} {:>11.1} {:>11.1} {:>11.1} {:>9.1} {:>14}   (opened in {:.1} s)",
                    target.name,
                    kind.label(),
                    n,
                    before as f64 / 1024.0,
                    during as f64 / 1024.0,
                    after as f64 / 1024.0,
                    during.saturating_sub(before) as f64 / n as f64,
                    short,
                    opened_in.as_secs_f64(),
                );
            }
        }
    }
    Ok(())
}
