//! The real kube-apiserver with `--goaway-chance` at its highest (0.02):
//! after one answer in fifty it closes the HTTP/2 connection gracefully, with
//! a GOAWAY naming the last stream it took. A request authproxy sent on that
//! connection just after is refused unprocessed; authproxy sends it again on
//! another connection, body and all, so no caller sees the server going away.

use std::future::Future;
use std::time::Duration;

use authproxy_tests::kube::{kube_with, unique_marker, KubeEnv};
use authproxy_tests::watchers::{body_text, H2Clients};
use authproxy_tests::TestPki;
use futures_util::future::join_all;
use http::{Method, StatusCode};

/// The flag, as an HA control plane behind a load balancer sets it.
const GOAWAY: &str = "--goaway-chance=0.02";
/// Callers, each sending its requests one after the other: new streams go
/// out all the time, so some leave just as kube sends a GOAWAY.
const CALLERS: usize = 32;
/// Requests per caller: about 60 GOAWAYs in all.
const REQUESTS: usize = 100;

/// Starts kube with [`GOAWAY`] and authproxy in front of it (metrics on).
async fn start() -> anyhow::Result<KubeEnv> {
    tokio::task::spawn_blocking(|| kube_with(&[GOAWAY]).map(|_| ()))
        .await?
        .map_err(|e| e.context("kube-apiserver with --goaway-chance"))?;
    KubeEnv::start_with_top_level(TestPki::new()?, "", "metrics: {listen: '127.0.0.1:0'}").await
}

/// Runs [`CALLERS`] callers of [`REQUESTS`] requests each through `env`'s
/// proxy over 4 HTTP/2 connections. `request(clients, caller, n)` sends one
/// and answers whether the answer was the expected one (`Ok(None)`) or what
/// was wrong with it. Every request must succeed, and the proxy must report
/// requests it sent again: proof that kube went away under the callers.
async fn every_request_succeeds<F, R>(env: &KubeEnv, request: F) -> anyhow::Result<()>
where
    F: Fn(H2Clients, usize, usize) -> R,
    R: Future<Output = anyhow::Result<Option<String>>>,
{
    let proxy = env.proxy.as_ref().expect("proxy running");
    let (addr, metrics) = (
        proxy.addr(),
        proxy.metrics_addr().expect("metrics listener"),
    );
    let clients = H2Clients::connect_to(addr, env.pki.ca_pem(), 4).await?;
    let callers = (0..CALLERS).map(|caller| {
        let (clients, request) = (&clients, &request);
        async move {
            let mut failures = Vec::new();
            for n in 0..REQUESTS {
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    request(clients.clone(), caller, n),
                )
                .await
                .map_err(|_| anyhow::anyhow!("not answered within 10s"));
                match answer {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(wrong))) => failures.push(format!("{caller}/{n}: {wrong}")),
                    Ok(Err(e)) | Err(e) => failures.push(format!("{caller}/{n}: {e:#}")),
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
    let scraped = authproxy_tests::observe::scrape(metrics).await?;
    let retried = scraped.value("authproxy_upstream_requests_retried_total{reason=\"goaway\"}");
    assert!(retried > 0.0, "no request was sent again: {}", scraped.text);
    Ok(())
}

/// `None` when the answer is 200 and its body holds `expected`; else what
/// came instead.
async fn check(
    response: http::Response<hyper::body::Incoming>,
    expected: &str,
) -> anyhow::Result<Option<String>> {
    let status = response.status();
    let body = body_text(response).await?;
    Ok((status != StatusCode::OK || !body.contains(expected)).then(|| format!("{status} {body}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_fails_while_kube_goes_away_at_random() -> anyhow::Result<()> {
    let env = start().await?;
    let marker = unique_marker("goaway");
    env.kube.create_configmap(&marker, &marker).await?;
    let path = format!("/api/v1/namespaces/default/configmaps/{marker}");
    every_request_succeeds(&env, |clients, _, _| {
        let (path, marker) = (&path, &marker);
        async move { check(clients.get(path, "alice-token").await?, marker).await }
    })
    .await
}

/// Writes carry a body, which the proxy keeps until kube answers, so that a
/// write kube did not process goes again whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_write_fails_while_kube_goes_away_at_random() -> anyhow::Result<()> {
    let env = start().await?;
    let marker = unique_marker("goaway-write");
    // One configmap per caller, so that each answer stays small.
    let names: Vec<String> = (0..CALLERS).map(|c| format!("{marker}-{c}")).collect();
    for created in join_all(
        names
            .iter()
            .map(|name| env.kube.create_configmap(name, &marker)),
    )
    .await
    {
        created?;
    }
    env.kube
        .apply_rbac(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n\
             metadata: {name: goaway-writers, namespace: default}\n\
             rules:\n- {apiGroups: [''], resources: [configmaps], verbs: [patch]}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
             metadata: {name: goaway-writers, namespace: default}\n\
             roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: goaway-writers}\n\
             subjects:\n- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}\n",
            &[&["patch", "configmaps", "-n", "default", "--as", "alice"]],
        )
        .await?;
    every_request_succeeds(&env, |clients, caller, n| {
        let path = format!("/api/v1/namespaces/default/configmaps/{}", names[caller]);
        async move {
            // Each write's own value, padded to a few KiB as real objects
            // are; kube's answer is the object as stored.
            let value = format!("{caller}-{n}-{}", "x".repeat(2048));
            let patch = format!(r#"{{"data":{{"value":"{value}"}}}}"#);
            let response = clients
                .send(Method::PATCH, &path, "alice-token", Some(patch))
                .await?;
            check(response, &value).await
        }
    })
    .await
}
