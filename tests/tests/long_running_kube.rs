//! Many long-running requests held through authproxy against the real
//! kube-apiserver, whose HTTP/2 connections carry at most 100 streams each:
//! short requests are still answered at once.

use std::time::Duration;

use authproxy_tests::kube::KubeEnv;
use authproxy_tests::watchers::{open_watch, p99, short_get_latencies, H2Clients};
use authproxy_tests::TestPki;
use futures_util::future::join_all;

/// Watches held open at once: three times what one upstream connection carries.
const WATCHES: usize = 300;
/// Short requests sent while they are held.
const SHORT_REQUESTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_watches_on_kube_do_not_starve_short_requests() -> anyhow::Result<()> {
    // One user holds them all: lift the per-user cap above the count.
    let env = KubeEnv::start_with(
        TestPki::new()?,
        "limits: {longRunning: {perUser: 1000, total: 2000}}",
    )
    .await?;
    let addr = env.proxy.as_ref().map(|p| p.addr()).expect("proxy running");
    let clients = H2Clients::connect_to(addr, env.pki.ca_pem(), 10).await?;

    let opened = join_all((0..WATCHES).map(|_| {
        let clients = clients.clone();
        async move { open_watch(&clients, "alice-token", Duration::from_secs(60)).await }
    }))
    .await;
    let mut held = Vec::new();
    for (i, watch) in opened.into_iter().enumerate() {
        held.push(watch.map_err(|e| e.context(format!("watch {i} of {WATCHES}")))?);
    }

    let sorted =
        short_get_latencies(&clients, SHORT_REQUESTS, |_| "alice-token".to_owned()).await?;
    let p99 = p99(&sorted);
    assert!(
        p99 < Duration::from_secs(1),
        "p99 of short requests with {WATCHES} watches held on kube: {p99:?} (all: {sorted:?})"
    );
    assert_eq!(held.len(), WATCHES);
    Ok(())
}

/// With two serving threads (`limits.workers: 2`), two client connections
/// are handed one to each thread (the one with fewer open takes the next),
/// and each thread reaches kube over an HTTP/2 connection it opened itself:
/// a watch through each holds two upstream connections, though one would
/// carry both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_serving_thread_reaches_kube_over_its_own_connection() -> anyhow::Result<()> {
    let env = KubeEnv::start_with_top_level(
        TestPki::new()?,
        "",
        "limits: {workers: 2}\nmetrics: {listen: '127.0.0.1:0'}",
    )
    .await?;
    let proxy = env.proxy.as_ref().expect("proxy running");
    let metrics = proxy.metrics_addr().expect("metrics listener");
    let clients = H2Clients::connect_to(proxy.addr(), env.pki.ca_pem(), 2).await?;
    // Round-robin: one watch on each client connection.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(open_watch(&clients, "alice-token", Duration::from_secs(30)).await?);
    }
    let scraped = authproxy_tests::observe::scrape(metrics).await?;
    let connections = scraped.value("authproxy_upstream_connections{protocol=\"http2\"}");
    let streams = scraped.value("authproxy_upstream_requests_in_flight{protocol=\"http2\"}");
    assert_eq!(streams, 2.0, "{}", scraped.text);
    assert_eq!(connections, 2.0, "{}", scraped.text);
    drop(held);
    Ok(())
}

/// The per-user cap counts every request kube holds open, however its flag
/// or path is written: kube reads `?watch=t`, `?watch`, `?watch=%31` and
/// `?w%61tch=1` as watches, and resolves dot-segments before it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_watch_counts_against_the_per_user_cap() -> anyhow::Result<()> {
    let env = KubeEnv::start_with(
        TestPki::new()?,
        "limits: {longRunning: {perUser: 2, total: 100}}",
    )
    .await?;
    let configmaps = format!("{}/api/v1/namespaces/default/configmaps", env.proxy_url());
    // Two plain watches held, one after the other: alice's cap is reached.
    let mut holders = Vec::new();
    for i in 0..2 {
        let headers = env.dir.path().join(format!("holder-{i}.headers"));
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "-N", "-o", "/dev/null", "--max-time", "60", "-D"])
            .arg(&headers)
            .arg("--cacert")
            .arg(env.pki.ca_path())
            .args(["-H", "Authorization: Bearer alice-token"])
            .arg(format!("{configmaps}?watch=1"))
            .kill_on_drop(true);
        holders.push(cmd.spawn()?);
        authproxy_tests::wait_for(Duration::from_secs(20), "a watch held", || {
            let headers = headers.clone();
            async move {
                let text = std::fs::read_to_string(&headers).unwrap_or_default();
                if text.contains(" 429") {
                    return Err(text);
                }
                Ok(text.contains(" 200").then_some(()))
            }
        })
        .await?;
    }
    let base = env.proxy_url();
    for target in [
        format!("{configmaps}?watch=t"),
        format!("{configmaps}?watch=T"),
        format!("{configmaps}?watch=%31"),
        format!("{configmaps}?watch"),
        format!("{configmaps}?watch=yes"),
        format!("{configmaps}?w%61tch=1"),
        format!("{configmaps}?watch=1&watch=0"),
        format!("{base}/api/v1/x/../namespaces/default/configmaps?watch=1"),
        format!("{base}/api/v1/watch/namespaces/default/configmaps"),
        format!("{base}/api/v1/namespaces/default/pods/no-such-pod/log?follow=yes"),
    ] {
        let (code, body) = env
            .curl(&[
                "--path-as-is",
                "--max-time",
                "5",
                "-H",
                "Authorization: Bearer alice-token",
                &target,
            ])
            .await
            .unwrap_or((0, "held past 5s".into()));
        assert_eq!(code, 429, "{target} was not counted: {body}");
    }
    // Requests kube answers at once are not counted.
    for target in [
        format!("{configmaps}?watch=0"),
        format!("{configmaps}?watch=false&watch=1"),
    ] {
        let (code, body) = env
            .curl(&[
                "--max-time",
                "5",
                "-H",
                "Authorization: Bearer alice-token",
                &target,
            ])
            .await?;
        assert_eq!(code, 200, "{target}: {body}");
    }
    drop(holders);
    Ok(())
}
