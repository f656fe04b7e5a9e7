//! The agent tunnel's cost: the real kube-apiserver (tests/src/kube) reached
//! (a) directly, (b) through authproxy with a direct upstream, and (c)
//! through the same authproxy via an agent tunnel (the agent in this
//! process, dialling the proxy on loopback), in one run.
//!
//! Each target gets the same request, `GET
//! /api/v1/namespaces/default/configmaps?limit=1`: direct as the proxy's
//! service account impersonating alice (the headers authproxy would send),
//! through the proxy as alice with her static token. First N sequential
//! requests (latency: p50, p99), then the same number spread over C
//! concurrent tasks (requests/s), each client a pooled hyper client over
//! rustls offering h2, in 3 rounds that alternate the targets (each keeps its
//! best round: the highest req/s, the latencies of its lowest p50). Every answer must be a 200. Printed: req/s, p50/p99,
//! the latency the tunnel adds over the direct upstream and over kube, and
//! the throughput ratios.
//!
//! Run: `cargo bench -p authproxy-benches --bench tunnel` (`TUNNEL_REQUESTS=N`,
//! default 2000; `TUNNEL_CONCURRENCY=C`, default 16). Needs the kube binaries
//! (`scripts/test.sh` builds them; `AUTHPROXY_KUBE_BIN` points at them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use authproxy::config::FileConfig;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proxy_core::tunnel::agent::{Agent, AgentSettings};
use proxy_core::tunnel::backoff::Backoff;
use proxy_core::upstream::{Upstream, UpstreamOptions};

const PATH: &str = "/api/v1/namespaces/default/configmaps?limit=1";
const REGISTRATION_TOKEN: &str = "bench-registration-token";
/// Rounds over all targets; each target reports its best.
const ROUNDS: usize = 3;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
}

struct Figures {
    sequential: Vec<Duration>,
    rate: f64,
}

fn client(ca_pem: &str) -> anyhow::Result<HttpsClient> {
    let config = authproxy_tests::pki::client_config(ca_pem, &[])?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_only()
        .enable_all_versions()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn once(client: &HttpsClient, target: &Target) -> anyhow::Result<()> {
    let mut request = Request::get(format!("{}{PATH}", target.url));
    for (name, value) in &target.headers {
        request = request.header(*name, value);
    }
    let response = client.request(request.body(Empty::new())?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!(
            "{}: {status} {}",
            target.name,
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

async fn measure(
    client: &HttpsClient,
    target: &Target,
    n: usize,
    c: usize,
) -> anyhow::Result<Figures> {
    for _ in 0..n / 10 {
        once(client, target).await?;
    }
    let mut sequential = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        once(client, target).await?;
        sequential.push(started.elapsed());
    }
    sequential.sort();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (client, target) = (client.clone(), target.clone());
        let each = n / c;
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                once(&client, &target).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = (n / c * c) as f64 / started.elapsed().as_secs_f64();
    Ok(Figures { sequential, rate })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name}={v:?} is not a positive number")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let n = env_number("TUNNEL_REQUESTS", 2000)?;
    let c = env_number("TUNNEL_CONCURRENCY", 16)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let kube = tokio::task::spawn_blocking(|| authproxy_tests::kube::kube().map_err(|e| e.to_string()))
            .await?
            .map_err(anyhow::Error::msg)?;
        let ca_pem = kube.pki().ca_pem().to_owned();
        let dir = tempfile::tempdir()?;
        let cert = kube.pki().issue_server("bench-tunnel-proxy")?;
        let mut csv = String::new();
        for (token, name, uid, groups) in authproxy_tests::USERS {
            csv.push_str(&format!("{token},{name},{uid},\"{groups}\"\n"));
        }
        std::fs::write(dir.path().join("tokens.csv"), csv)?;
        std::fs::write(dir.path().join("proxy.token"), kube.proxy_token())?;
        std::fs::write(dir.path().join("edge.token"), REGISTRATION_TOKEN)?;
        let yaml = format!(
            "listen: 127.0.0.1:0\n\
             tls: {{certFile: {cert}, keyFile: {key}}}\n\
             upstreams:\n\
             - {{name: direct, url: '{url}', caFile: {ca}, tokenFile: proxy.token}}\n\
             - {{name: edge, via: agent, agent: {{tokenFile: edge.token}}}}\n\
             authentication:\n  staticTokens: {{file: tokens.csv}}\n\
             callerImpersonation: {{mode: deny}}\n",
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
            url = kube.url(),
            ca = kube.pki().ca_path().display(),
        );
        let config_path = dir.path().join("authproxy.yaml");
        std::fs::write(&config_path, yaml)?;
        let config = FileConfig::load(&config_path)?;
        let proxy = authproxy::server::start(&config, dir.path()).await?;
        let proxy_url = format!("https://{}", proxy.addr());

        // The agent, in this process: kube with the proxy's service account.
        let upstream = Upstream::new(
            UpstreamOptions::new(kube.url().parse()?)
                .with_ca_pem(ca_pem.clone().into_bytes())
                .with_token_file(dir.path().join("proxy.token"), Duration::from_secs(60))
                .with_connect_timeout(Duration::from_secs(5)),
        )?;
        let agent = Agent::new(
            AgentSettings {
                proxy_url: proxy_url.parse()?,
                proxy_ca_pem: Some(ca_pem.clone().into_bytes()),
                token_file: dir.path().join("edge.token"),
                cluster: "edge".into(),
                resolve_interval: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(5),
                backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
            },
            upstream,
        )?;
        let agent_task = tokio::spawn(agent.run());

        let alice = vec![("authorization", "Bearer alice-token".to_owned())];
        let targets = [
            Target {
                name: "direct",
                url: kube.url(),
                headers: vec![
                    ("authorization", format!("Bearer {}", kube.proxy_token())),
                    ("impersonate-user", "alice".into()),
                    ("impersonate-uid", "1001".into()),
                    ("impersonate-group", "devs".into()),
                ],
            },
            Target {
                name: "proxy-direct",
                url: format!("{proxy_url}/k8s/clusters/direct"),
                headers: alice.clone(),
            },
            Target {
                name: "proxy-tunnel",
                url: format!("{proxy_url}/k8s/clusters/edge"),
                headers: alice,
            },
        ];
        let client = client(&ca_pem)?;
        // Wait for the agent's tunnel.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(error) = once(&client, &targets[2]).await {
            if Instant::now() > deadline {
                bail!("the agent's tunnel did not come up: {error:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("tunnel bench: {n} sequential GET {PATH}, then {n} over {c} concurrent tasks; best of {ROUNDS} rounds");
        println!("{:<14} {:>9} {:>9} {:>9}", "target", "req/s", "p50", "p99");
        // Targets alternate over the rounds, so a busy moment of the machine
        // does not fall on one target only; each keeps its best round.
        let mut all: Vec<Option<Figures>> = targets.iter().map(|_| None).collect();
        for _ in 0..ROUNDS {
            for (target, best) in targets.iter().zip(all.iter_mut()) {
                let figures = measure(&client, target, n, c).await?;
                let better = best.as_ref().is_none_or(|b| {
                    percentile(&figures.sequential, 0.5) < percentile(&b.sequential, 0.5)
                });
                let rate = best.as_ref().map_or(0.0, |b| b.rate).max(figures.rate);
                if better {
                    *best = Some(figures);
                }
                if let Some(best) = best.as_mut() {
                    best.rate = rate;
                }
            }
        }
        let all: Vec<Figures> = all.into_iter().flatten().collect();
        for (target, figures) in targets.iter().zip(&all) {
            println!(
                "{:<14} {:>9.0} {:>9.2?} {:>9.2?}",
                target.name,
                figures.rate,
                percentile(&figures.sequential, 0.5),
                percentile(&figures.sequential, 0.99)
            );
        }
        let p50 = |i: usize| percentile(&all[i].sequential, 0.5).as_secs_f64() * 1e3;
        println!(
            "tunnel adds {:.2} ms p50 over the direct upstream, {:.2} ms over kube itself",
            p50(2) - p50(1),
            p50(2) - p50(0)
        );
        println!(
            "throughput: tunnel / proxy-direct {:.2}, tunnel / direct {:.2}, proxy-direct / direct {:.2}",
            all[2].rate / all[1].rate,
            all[2].rate / all[0].rate,
            all[1].rate / all[0].rate
        );
        agent_task.abort();
        proxy.shutdown().await;
        Ok(())
    })
}
