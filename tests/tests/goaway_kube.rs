//! The real kube-apiserver with `--goaway-chance` at its highest (0.02):
//! after one answer in fifty it closes the HTTP/2 connection gracefully, with
//! a GOAWAY naming the last stream it took. A request authproxy sent on that
//! connection just after is refused unprocessed; authproxy sends it again on
//! another connection, so no caller sees the server going away.

use std::time::Duration;

use authproxy_tests::kube::{kube_with, unique_marker, KubeEnv};
use authproxy_tests::watchers::{body_text, H2Clients};
use authproxy_tests::TestPki;
use futures_util::future::join_all;

/// The flag, as an HA control plane behind a load balancer sets it.
const GOAWAY: &str = "--goaway-chance=0.02";
/// Callers, each sending its requests one after the other: new streams go
/// out all the time, so some leave just as kube sends a GOAWAY.
const CALLERS: usize = 32;
/// Requests per caller: about 60 GOAWAYs in all.
const REQUESTS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_kube_goes_away_at_random() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| kube_with(&[GOAWAY]).map(|_| ()))
        .await?
        .map_err(|e| e.context("kube-apiserver with --goaway-chance"))?;
    let env =
        KubeEnv::start_with_top_level(TestPki::new()?, "", "metrics: {listen: '127.0.0.1:0'}")
            .await?;
    let marker = unique_marker("goaway");
    env.kube.create_configmap(&marker, &marker).await?;
    let path = format!("/api/v1/namespaces/default/configmaps/{marker}");
    let proxy = env.proxy.as_ref().expect("proxy running");
    let (addr, metrics) = (
        proxy.addr(),
        proxy.metrics_addr().expect("metrics listener"),
    );
    let clients = H2Clients::connect_to(addr, env.pki.ca_pem(), 4).await?;

    let callers = (0..CALLERS).map(|caller| {
        let (clients, path, marker) = (&clients, &path, &marker);
        async move {
            let mut failures = Vec::new();
            for request in 0..REQUESTS {
                let answer = async {
                    let response = tokio::time::timeout(
                        Duration::from_secs(10),
                        clients.get(path, "alice-token"),
                    )
                    .await
                    .map_err(|_| anyhow::anyhow!("not answered within 10s"))??;
                    let status = response.status();
                    Ok::<_, anyhow::Error>((status, body_text(response).await?))
                };
                match answer.await {
                    Ok((status, body))
                        if status == http::StatusCode::OK && body.contains(marker) => {}
                    Ok((status, body)) => {
                        failures.push(format!("{caller}/{request}: {status} {body}"))
                    }
                    Err(e) => failures.push(format!("{caller}/{request}: {e:#}")),
                }
            }
            failures
        }
    });
    let failures: Vec<String> = join_all(callers).await.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed while kube went away at random: {failures:#?}",
        failures.len(),
        CALLERS * REQUESTS
    );
    // The server did go away under the callers, and requests were sent again.
    let scraped = authproxy_tests::observe::scrape(metrics).await?;
    let retried = scraped.value("authproxy_upstream_requests_retried_total{reason=\"goaway\"}");
    assert!(retried > 0.0, "no request was sent again: {}", scraped.text);
    Ok(())
}
