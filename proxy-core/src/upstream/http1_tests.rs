//! The HTTP/1.1 pool, through `Upstream`, against a real HTTP/1.1-only
//! server on loopback (it offers no `h2` by ALPN, so every request falls back).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tower_service::Service;

use crate::counters::Protocol;
use crate::upstream::pool::PoolSettings;
use crate::upstream::{Upstream, UpstreamCredential, UpstreamOptions};

struct TestServer {
    addr: std::net::SocketAddr,
    ca_pem: String,
    /// The connections that carried at least one request, by number.
    used: Arc<Mutex<HashSet<usize>>>,
    /// The `Host` header of every request, in order.
    hosts: Arc<Mutex<Vec<String>>>,
    /// Notified: every open connection is closed at once, without a word.
    close_all: Arc<tokio::sync::Notify>,
}

/// `/endless` answers with a body that never ends; anything else with the
/// request's path and query.
async fn start_server() -> TestServer {
    let crate::test_tls::Loopback {
        listener,
        acceptor,
        addr,
        ca_pem,
    } = crate::test_tls::loopback("localhost", &[b"http/1.1"]).await;
    let used = Arc::new(Mutex::new(HashSet::new()));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let close_all = Arc::new(tokio::sync::Notify::new());
    let (used_by, hosts_seen, closing) = (used.clone(), hosts.clone(), close_all.clone());
    tokio::spawn(async move {
        let mut number = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            number += 1;
            let (acceptor, used, hosts, closing) = (
                acceptor.clone(),
                used_by.clone(),
                hosts_seen.clone(),
                closing.clone(),
            );
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    used.lock().unwrap().insert(number);
                    let host = req.headers().get(http::header::HOST);
                    hosts.lock().unwrap().push(
                        host.map(|h| h.to_str().unwrap().to_owned())
                            .unwrap_or_default(),
                    );
                    async move {
                        let _: &Request<hyper::body::Incoming> = &req;
                        if req.uri().path() == "/endless" {
                            let stream = futures_util::stream::repeat_with(|| {
                                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"more\n")))
                            })
                            .then(|frame| async {
                                tokio::task::yield_now().await;
                                frame
                            });
                            return Ok::<_, Infallible>(Response::new(BodyExt::boxed(
                                StreamBody::new(stream),
                            )));
                        }
                        let text = req.uri().to_string();
                        Ok(Response::new(
                            http_body_util::Full::new(Bytes::from(text)).boxed(),
                        ))
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    () = closing.notified() => {}
                }
            });
        }
    });
    TestServer {
        addr,
        ca_pem,
        used,
        hosts,
        close_all,
    }
}

fn upstream(server: &TestServer, idle_timeout: Duration) -> Upstream<Empty<Bytes>> {
    Upstream::new(UpstreamOptions {
        url: format!("https://{}", server.addr).parse().unwrap(),
        ca_pem: Some(server.ca_pem.clone().into_bytes()),
        client_identity: None,
        server_name: Some("localhost".into()),
        credential: UpstreamCredential::None,
        connect_timeout: Duration::from_secs(5),
        pool: PoolSettings {
            idle_timeout,
            ..PoolSettings::default()
        },
    })
    .unwrap()
}

async fn text(upstream: &mut Upstream<Empty<Bytes>>, path: &str) -> String {
    let request = Request::get(path).body(Empty::new()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), upstream.call(request))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Waits until `open` HTTP/1.1 connections are left open, failing after 10 s.
async fn until_open(upstream: &Upstream<Empty<Bytes>>, open: i64, why: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while upstream.counters().connections(Protocol::Http1) > open {
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sequential_requests_share_one_connection_in_origin_form_with_the_host() {
    let server = start_server().await;
    let mut upstream = upstream(&server, Duration::from_secs(90));
    for i in 0..5 {
        let path = format!("/api/v1/pods?n={i}");
        assert_eq!(text(&mut upstream, &path).await, path);
    }
    assert_eq!(server.used.lock().unwrap().len(), 1);
    assert_eq!(upstream.counters().connections(Protocol::Http1), 1);
    assert_eq!(upstream.counters().in_flight(Protocol::Http1), 0);
    let hosts = server.hosts.lock().unwrap().clone();
    assert_eq!(hosts, vec![server.addr.to_string(); 5]);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_both_are_reused() {
    let server = start_server().await;
    let mut upstream = upstream(&server, Duration::from_secs(90));
    let (a, b) = tokio::join!(
        upstream
            .clone()
            .call(Request::get("/a").body(Empty::new()).unwrap()),
        upstream
            .clone()
            .call(Request::get("/b").body(Empty::new()).unwrap()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(upstream.counters().in_flight(Protocol::Http1), 2);
    assert_eq!(upstream.counters().connections(Protocol::Http1), 2);
    for response in [a, b] {
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(upstream.counters().in_flight(Protocol::Http1), 0);
    for _ in 0..4 {
        assert_eq!(text(&mut upstream, "/c").await, "/c");
    }
    assert_eq!(server.used.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_answer_dropped_unread_takes_its_connection_with_it() {
    let server = start_server().await;
    let mut upstream = upstream(&server, Duration::from_secs(90));
    let request = Request::get("/endless").body(Empty::new()).unwrap();
    let mut response = upstream.call(request).await.unwrap();
    let frame = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "more\n");
    drop(response);
    assert_eq!(upstream.counters().in_flight(Protocol::Http1), 0);
    // The connection still has an answer on the way: it cannot carry the
    // next request.
    assert_eq!(text(&mut upstream, "/next").await, "/next");
    assert_eq!(server.used.lock().unwrap().len(), 2);
    // The new one stays for the next request; the abandoned one closes.
    until_open(&upstream, 1, "the abandoned connection was not closed").await;
}

#[tokio::test]
async fn a_connection_the_server_closed_is_not_used_again() {
    let server = start_server().await;
    let mut upstream = upstream(&server, Duration::from_secs(90));
    assert_eq!(text(&mut upstream, "/first").await, "/first");
    server.close_all.notify_waiters();
    until_open(&upstream, 0, "the closed connection was still counted").await;
    assert_eq!(text(&mut upstream, "/second").await, "/second");
    assert_eq!(server.used.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let server = start_server().await;
    let mut upstream = upstream(&server, Duration::from_millis(300));
    assert_eq!(text(&mut upstream, "/first").await, "/first");
    assert_eq!(upstream.counters().connections(Protocol::Http1), 1);
    until_open(
        &upstream,
        0,
        "the idle connection was still open after 10 s",
    )
    .await;
    // The pool starts over with a new connection.
    assert_eq!(text(&mut upstream, "/second").await, "/second");
    assert_eq!(server.used.lock().unwrap().len(), 2);
}

/// Each serving thread ([`crate::worker`]) keeps HTTP/1.1 connections of its
/// own, however many threads there are: a request on one thread does not take
/// an idle connection another (still running) thread opened.
#[test]
fn serving_threads_keep_connections_of_their_own() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let server = server_runtime.block_on(start_server());
    let shared = {
        let _entered = server_runtime.enter();
        upstream(&server, Duration::from_secs(90))
    };
    // Thread numbers past the CPU count included.
    let indices = [0, crate::worker::default_count(), 7];
    // Each thread's connections live on its runtime: it keeps running until
    // stopped.
    let running: Vec<_> = indices
        .iter()
        .map(|&index| {
            let mut upstream = shared.clone();
            crate::worker::TestThread::run(index, async move {
                for _ in 0..2 {
                    assert_eq!(text(&mut upstream, "/").await, "/");
                }
            })
        })
        .collect();
    assert_eq!(
        server.used.lock().unwrap().len(),
        indices.len(),
        "serving threads {indices:?} each used a connection of their own"
    );
    for thread in running {
        thread.stop();
    }
}
