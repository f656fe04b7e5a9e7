//! Long-running requests through authproxy: a thousand held watches do not
//! starve short requests (the upstream pool opens connections as kube's 100
//! streams per connection are used), and watches, exec tunnels and `logs -f`
//! are capped per user and in total with a 429 `Status`, their places coming
//! back when they end.

use std::time::Duration;

use authproxy_tests::watchers::{
    self, body_text, open_watch, p99, short_get_latencies, watcher_token, H2Clients,
    WatchEnvOptions, WATCH_PATH,
};
use futures_util::future::join_all;
use http::StatusCode;

/// Watches held open at once.
const WATCHES: usize = 1000;
/// Users holding them (100 each: the default per-user cap).
const USERS: usize = 10;
/// Short requests sent while they are held.
const SHORT_REQUESTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_held_watches_do_not_starve_short_requests() -> anyhow::Result<()> {
    let env = watchers::start(WatchEnvOptions {
        users: USERS,
        ..Default::default()
    })
    .await?;
    let clients = H2Clients::connect(&env, 20).await?;

    let opened =
        join_all(
            (0..WATCHES).map(|i| {
                let clients = clients.clone();
                async move {
                    open_watch(&clients, &watcher_token(i % USERS), Duration::from_secs(60)).await
                }
            }),
        )
        .await;
    let mut held = Vec::new();
    for (i, watch) in opened.into_iter().enumerate() {
        held.push(watch.map_err(|e| e.context(format!("watch {i} of {WATCHES}")))?);
    }

    let sorted =
        short_get_latencies(&clients, SHORT_REQUESTS, |i| watcher_token(i % USERS)).await?;
    let p99 = p99(&sorted);
    assert!(
        p99 < Duration::from_secs(1),
        "p99 of short requests with {WATCHES} watches held: {p99:?} (all: {sorted:?})"
    );
    // Every watch is still open: each has its next event pending.
    assert_eq!(held.len(), WATCHES);
    let watch_requests = env
        .upstream_requests()
        .iter()
        .filter(|r| r.uri.query() == Some("watch=true"))
        .count();
    assert_eq!(
        watch_requests, WATCHES,
        "every watch reached the API server"
    );
    Ok(())
}

fn assert_too_many(status: StatusCode, retry_after: Option<&http::HeaderValue>, body: &str) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let json: serde_json::Value = serde_json::from_str(body).expect("a Status body");
    assert_eq!(json["kind"], "Status", "{body}");
    assert_eq!(json["reason"], "TooManyRequests", "{body}");
    assert_eq!(json["code"], 429, "{body}");
    assert_eq!(
        retry_after.and_then(|v| v.to_str().ok()),
        Some("1"),
        "Retry-After"
    );
}

/// Waits (bounded) until `token` may open a watch again.
async fn watch_allowed_again(clients: &H2Clients, token: &str) -> anyhow::Result<()> {
    authproxy_tests::wait_for(Duration::from_secs(10), "a freed watch place", || async {
        let response = clients
            .get(WATCH_PATH, token)
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            StatusCode::OK => Ok(Some(())),
            status => Err(format!("answered {status}")),
        }
    })
    .await
}

#[tokio::test]
async fn long_running_caps_answer_429_and_places_come_back_when_the_caller_goes(
) -> anyhow::Result<()> {
    let env = watchers::start(WatchEnvOptions {
        users: 3,
        extra_yaml: "limits: {longRunning: {perUser: 3, total: 5}}".into(),
        ..Default::default()
    })
    .await?;
    let clients = H2Clients::connect(&env, 1).await?;
    let limit = Duration::from_secs(10);
    let (w0, w1, w2) = (watcher_token(0), watcher_token(1), watcher_token(2));

    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(open_watch(&clients, &w0, limit).await?);
    }
    let refused = clients.get(WATCH_PATH, &w0).await?;
    let retry_after = refused.headers().get(http::header::RETRY_AFTER).cloned();
    let status = refused.status();
    let body = body_text(refused).await?;
    assert_too_many(status, retry_after.as_ref(), &body);
    assert!(body.contains("by this user"), "{body}");
    // `logs -f` counts too; a plain log read does not, nor does a GET.
    let follow = clients
        .get("/api/v1/namespaces/default/pods/web-0/log?follow=true", &w0)
        .await?;
    assert_eq!(follow.status(), StatusCode::TOO_MANY_REQUESTS);
    let get = clients
        .get("/api/v1/namespaces/default/pods/web-0", &w0)
        .await?;
    assert_eq!(
        get.status(),
        StatusCode::OK,
        "short requests are not capped"
    );

    // Another user fills the total.
    let _second = [
        open_watch(&clients, &w1, limit).await?,
        open_watch(&clients, &w1, limit).await?,
    ];
    let refused = clients.get(WATCH_PATH, &w2).await?;
    let retry_after = refused.headers().get(http::header::RETRY_AFTER).cloned();
    let status = refused.status();
    let body = body_text(refused).await?;
    assert_too_many(status, retry_after.as_ref(), &body);

    // w0's caller goes away mid-stream: its place comes back.
    drop(first.pop());
    watch_allowed_again(&clients, &w0).await?;
    Ok(())
}

#[tokio::test]
async fn places_come_back_when_watches_end_and_tunnels_close() -> anyhow::Result<()> {
    let env = watchers::start(WatchEnvOptions {
        users: 1,
        watch_events: 2,
        watch_interval: Duration::from_millis(200),
        extra_yaml: "limits: {longRunning: {perUser: 1, total: 10}}".into(),
    })
    .await?;
    let clients = H2Clients::connect(&env, 1).await?;
    let token = watcher_token(0);

    // A watch the server ends.
    let watch = open_watch(&clients, &token, Duration::from_secs(10)).await?;
    assert_eq!(
        clients.get(WATCH_PATH, &token).await?.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let rest = tokio::time::timeout(Duration::from_secs(10), body_text(watch)).await??;
    assert!(rest.contains("watched-1"), "{rest}");
    watch_allowed_again(&clients, &token).await?;

    // An exec tunnel holds its place until it closes.
    let exec = "/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true";
    let mut tunnel = authproxy_tests::upgrade::open(&env, exec, &token, "SPDY/3.1").await?;
    assert_eq!(tunnel.round_trip(b"ping").await?, b"ping");
    assert_eq!(
        clients.get(WATCH_PATH, &token).await?.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the open tunnel holds the user's only place"
    );
    drop(tunnel);
    watch_allowed_again(&clients, &token).await?;
    Ok(())
}
