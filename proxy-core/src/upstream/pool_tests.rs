//! The pool against a real HTTP/2 server on loopback that allows two streams
//! per connection.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

use super::PoolSettings;
use crate::upstream::{Upstream, UpstreamCredential, UpstreamOptions};
use crate::worker::TestThread;

/// Streams the test server allows per connection.
const SERVER_STREAMS: u32 = 2;

struct TestServer {
    addr: std::net::SocketAddr,
    ca_pem: String,
    accepted: Arc<AtomicUsize>,
    /// Notified: every open connection sends GOAWAY and closes once its
    /// streams end (a graceful shutdown).
    go_away: Arc<tokio::sync::Notify>,
}

/// A loopback HTTP/2 TLS listener with its acceptor, and the [`TestServer`]
/// that describes it (nothing accepted yet).
async fn bind() -> (
    tokio::net::TcpListener,
    tokio_rustls::TlsAcceptor,
    TestServer,
) {
    let crate::test_tls::Loopback {
        listener,
        acceptor,
        addr,
        ca_pem,
    } = crate::test_tls::loopback("localhost", &[b"h2"]).await;
    let server = TestServer {
        addr,
        ca_pem,
        accepted: Arc::new(AtomicUsize::new(0)),
        go_away: Arc::new(tokio::sync::Notify::new()),
    };
    (listener, acceptor, server)
}

/// `/hold` answers with a body that never ends; anything else with `ok`.
async fn start_server() -> TestServer {
    let (listener, acceptor, server) = bind().await;
    let (counter, go_away) = (server.accepted.clone(), server.go_away.clone());
    tokio::spawn(serve(listener, acceptor, counter, go_away, SERVER_STREAMS));
    server
}

/// The test server's accept loop: each connection is counted in `counter`
/// and served (see [`start_server`]) with up to `streams` streams at once;
/// `shutdown` notified, each closes gracefully.
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    counter: Arc<AtomicUsize>,
    shutdown: Arc<tokio::sync::Notify>,
    streams: u32,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        counter.fetch_add(1, Ordering::SeqCst);
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    if req.uri().path() == "/echo" {
                        // The length of the body read, and its trailer.
                        let collected = req.into_body().collect().await.unwrap();
                        let trailer = collected
                            .trailers()
                            .and_then(|t| t.get("x-check"))
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let text = format!("{} {trailer}", collected.to_bytes().len());
                        return Ok(Response::new(
                            http_body_util::Full::new(Bytes::from(text)).boxed(),
                        ));
                    }
                    if req.uri().path() == "/early" {
                        // Answers without reading the body.
                        return Ok(Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"early")).boxed(),
                        ));
                    }
                    if req.uri().path() == "/big" {
                        // BIG_ANSWER bytes, sent as fast as the window lets.
                        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                        let stream = futures_util::stream::iter(
                            (0..BIG_ANSWER / chunk.len())
                                .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
                        );
                        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
                    }
                    if req.uri().path() == "/hold" {
                        let stream = futures_util::stream::once(async {
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"held\n")))
                        })
                        .chain(futures_util::stream::pending());
                        Ok::<_, Infallible>(Response::new(BodyExt::boxed(StreamBody::new(stream))))
                    } else {
                        Ok(Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")).boxed(),
                        ))
                    }
                });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(streams)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = &mut connection => {}
                () = shutdown.notified() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

#[test]
fn the_connection_window_holds_every_streams_window_up_to_http2s_largest() {
    use super::{connection_window, STREAM_WINDOW};
    assert_eq!(connection_window(0), STREAM_WINDOW);
    assert_eq!(connection_window(1), STREAM_WINDOW);
    assert_eq!(connection_window(100), 100 * STREAM_WINDOW);
    assert_eq!(connection_window(1024), (1 << 31) - 1);
    assert_eq!(connection_window(usize::MAX), (1 << 31) - 1);
}

/// The size of `/big`'s answer: more than a stream's receive window.
const BIG_ANSWER: usize = 8 << 20;

/// Answers whose readers stopped reading hold their streams' windows, and
/// no more: the connection's window never runs out before its streams do,
/// so a stream beside them on the same connection is answered whole.
#[tokio::test]
async fn answers_nobody_reads_do_not_stop_the_other_streams_of_their_connection() {
    const STREAMS: usize = 8;
    let (listener, acceptor, server) = bind().await;
    let (counter, go_away) = (server.accepted.clone(), server.go_away.clone());
    tokio::spawn(serve(listener, acceptor, counter, go_away, STREAMS as u32));
    let mut settings = options(&server, 1);
    settings.pool.max_streams_per_connection = STREAMS;
    let mut upstream: Upstream<Empty<Bytes>> = Upstream::new(settings).unwrap();
    // Every stream but one answered and not read: each fills its window.
    let mut stalled = Vec::new();
    for _ in 1..STREAMS {
        let first = async {
            let mut response = upstream.call(get("/big")).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.body_mut().frame().await.unwrap().unwrap();
            response
        };
        let response = tokio::time::timeout(Duration::from_secs(10), first)
            .await
            .expect("each answer's first bytes arrive beside the unread ones");
        stalled.push(response);
    }
    // Time for their windows to fill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beside = async {
        let response = upstream.call(get("/big")).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    };
    let body = tokio::time::timeout(Duration::from_secs(10), beside)
        .await
        .expect("the answer beside the unread ones arrived whole");
    assert_eq!(body.len(), BIG_ANSWER);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1, "one connection");
    drop(stalled);
}

fn upstream(server: &TestServer, max_connections: usize) -> Upstream<Empty<Bytes>> {
    Upstream::new(options(server, max_connections)).unwrap()
}

fn options(server: &TestServer, max_connections: usize) -> UpstreamOptions {
    UpstreamOptions {
        url: format!("https://{}", server.addr).parse().unwrap(),
        ca_pem: Some(server.ca_pem.clone().into_bytes()),
        client_identity: None,
        server_name: Some("localhost".into()),
        credential: UpstreamCredential::None,
        connect_timeout: Duration::from_secs(5),
        pool: PoolSettings {
            max_connections,
            max_streams_per_connection: SERVER_STREAMS as usize,
            ..PoolSettings::default()
        },
    }
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

/// Sends `/hold` and returns the response once its first bytes arrived.
async fn hold(upstream: &mut Upstream<Empty<Bytes>>) -> Response<crate::ProxyBody> {
    let mut response = upstream.call(get("/hold")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let frame = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "held\n");
    response
}

async fn short(upstream: &mut Upstream<Empty<Bytes>>) -> String {
    let response = tokio::time::timeout(Duration::from_secs(5), upstream.call(get("/")))
        .await
        .expect("a short request was answered while streams were held")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn pool_opens_a_second_connection_when_the_first_is_full() {
    let server = start_server().await;
    let mut upstream = upstream(&server, 8);
    let held: Vec<_> = {
        let mut held = Vec::new();
        for _ in 0..SERVER_STREAMS {
            held.push(hold(&mut upstream).await);
        }
        held
    };
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(short(&mut upstream).await, "ok");
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        2,
        "the short request went over a second connection"
    );
    assert_eq!(upstream.http2_connections(), 2);
    drop(held);
}

#[tokio::test]
async fn at_the_connection_cap_requests_wait_for_a_stream_to_end() {
    let server = start_server().await;
    let mut upstream = upstream(&server, 1);
    let mut first = hold(&mut upstream).await;
    let _second = hold(&mut upstream).await;
    let mut waiting = Box::pin(upstream.clone().call(get("/")));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "answered although every stream of the only allowed connection is held"
    );
    // The caller goes away mid-stream: its slot comes back.
    drop(std::mem::replace(
        first.body_mut(),
        crate::ProxyBody::empty(),
    ));
    drop(first);
    let response = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting request got the freed stream")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_connections_beyond_the_setting_close_soon_after_their_streams_end() {
    let server = start_server().await;
    let mut upstream = Upstream::new(UpstreamOptions {
        url: format!("https://{}", server.addr).parse().unwrap(),
        ca_pem: Some(server.ca_pem.clone().into_bytes()),
        client_identity: None,
        server_name: Some("localhost".into()),
        credential: UpstreamCredential::None,
        connect_timeout: Duration::from_secs(5),
        pool: PoolSettings {
            max_connections: 8,
            max_streams_per_connection: SERVER_STREAMS as usize,
            max_idle_connections: 1,
            ..PoolSettings::default()
        },
    })
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 * SERVER_STREAMS {
        held.push(hold(&mut upstream).await);
    }
    assert_eq!(upstream.http2_connections(), 3);
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while upstream.http2_connections() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} idle connections still open 10 s after their streams ended",
            upstream.http2_connections()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The one within the setting stays for the idle timeout (90 s) and
    // serves the next request without a new handshake.
    tokio::time::sleep(super::IDLE_GRACE * 3).await;
    assert_eq!(upstream.http2_connections(), 1);
    assert_eq!(short(&mut upstream).await, "ok");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
}

/// Serving thread `index` ([`crate::worker`]), kept running after it sent
/// three short requests through `upstream`.
fn serving_thread(index: usize, upstream: &Upstream<Empty<Bytes>>) -> TestThread {
    let mut upstream = upstream.clone();
    TestThread::run(index, async move {
        for _ in 0..3 {
            assert_eq!(short(&mut upstream).await, "ok");
        }
    })
}

/// Runs serving threads 0 and 1 one after the other through `upstream`,
/// calls `check` while both still drive their connections, then stops them.
fn with_two_serving_threads(upstream: &Upstream<Empty<Bytes>>, check: impl FnOnce()) {
    let first = serving_thread(0, upstream);
    let second = serving_thread(1, upstream);
    check();
    first.stop();
    second.stop();
}

/// Serving threads ([`crate::worker`]) each open their own connection while
/// the pool is under its cap, and use another thread's at the cap.
#[test]
fn serving_threads_open_their_own_connections_and_share_at_the_cap() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let server = server_runtime.block_on(start_server());
    for (cap, opened) in [(4, 2), (1, 1)] {
        let before = server.accepted.load(Ordering::SeqCst);
        let shared = {
            let _entered = server_runtime.enter();
            upstream(&server, cap)
        };
        with_two_serving_threads(&shared, || {
            assert_eq!(
                server.accepted.load(Ordering::SeqCst) - before,
                opened,
                "connections opened by two serving threads with max_connections {cap}"
            );
            assert_eq!(shared.http2_connections(), opened);
        });
    }
}

/// `max_idle_connections` counts per serving thread: with one allowed, each
/// of two threads keeps its own idle connection past the grace period.
#[test]
fn each_serving_thread_keeps_its_idle_connection() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let server = server_runtime.block_on(start_server());
    let shared = {
        let _entered = server_runtime.enter();
        let mut options = options(&server, 4);
        options.pool.max_idle_connections = 1;
        Upstream::new(options).unwrap()
    };
    with_two_serving_threads(&shared, || {
        assert_eq!(shared.http2_connections(), 2);
        // Past the grace period and the next idle check.
        std::thread::sleep(super::IDLE_GRACE * 2 + Duration::from_millis(500));
        assert_eq!(shared.http2_connections(), 2);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    });
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, crate::BoxError>;

fn body_upstream(server: &TestServer) -> Upstream<TestBody> {
    Upstream::new(options(server, 4)).unwrap()
}

/// A body of `chunks` chunks of 64 KiB, then `trailer` if given, then the
/// end, or a body that never ends when `endless`.
fn chunked_body(chunks: usize, trailer: Option<&'static str>, endless: bool) -> TestBody {
    let data = (0..chunks).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))));
    let trailer = trailer.map(|value| {
        let mut map = http::HeaderMap::new();
        map.insert("x-check", value.parse().unwrap());
        Ok(Frame::trailers(map))
    });
    let frames = futures_util::stream::iter(data.chain(trailer));
    if endless {
        BodyExt::boxed(StreamBody::new(
            frames.chain(futures_util::stream::pending()),
        ))
    } else {
        BodyExt::boxed(StreamBody::new(frames))
    }
}

async fn text(response: Response<crate::ProxyBody>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// A body larger than the server's stream and connection windows (64 KiB
/// by default) is sent as the server grants window, with its trailers.
#[tokio::test]
async fn a_request_body_past_the_window_reaches_the_server_whole_with_trailers() {
    let server = start_server().await;
    let mut upstream = body_upstream(&server);
    let request = Request::post("/echo")
        .body(chunked_body(80, Some("done"), false))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), upstream.call(request))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, format!("{} done", 80 * 64 * 1024));
}

/// A server that answers before reading the body (kube's 401 or 403) is
/// passed on at once, and the connection goes on serving.
#[tokio::test]
async fn an_answer_before_the_body_is_read_is_passed_on() {
    let server = start_server().await;
    let mut upstream = body_upstream(&server);
    let request = Request::post("/early")
        .body(chunked_body(2, None, true))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), upstream.call(request))
        .await
        .expect("the early answer arrived while the body was still open")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "early");
    let request = Request::post("/echo")
        .body(chunked_body(1, None, false))
        .unwrap();
    let response = upstream.call(request).await.unwrap();
    assert_eq!(text(response).await, format!("{} ", 64 * 1024));
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

/// A server that completes the TLS handshake and then reads nothing (hung,
/// or a NAT entry dropped without a reset): the unanswered PING closes the
/// connection, and the request waiting on it gets a 502 instead of hanging.
#[tokio::test]
async fn an_unanswered_ping_closes_the_connection_and_fails_its_requests() {
    let (listener, acceptor, server) = bind().await;
    let (hung_tx, hung_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = acceptor.accept(tcp).await.unwrap();
        // Held open, never read.
        let _ = hung_tx.send(stream);
    });
    let mut options = options(&server, 4);
    options.pool.keep_alive_interval = Some(Duration::from_millis(200));
    options.pool.keep_alive_timeout = Duration::from_millis(300);
    let mut upstream: Upstream<Empty<Bytes>> = Upstream::new(options).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), upstream.call(get("/")))
        .await
        .expect("the request failed instead of hanging")
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(upstream.http2_connections(), 0);
    drop(hung_rx);
}

/// A server shutting down gracefully sends GOAWAY: the watch open on that
/// connection goes on, and a new request goes to a new connection instead
/// of failing on the old one.
#[tokio::test]
async fn after_goaway_new_requests_go_to_a_new_connection() {
    let server = start_server().await;
    let mut upstream = upstream(&server, 4);
    let mut held = hold(&mut upstream).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    server.go_away.notify_waiters();
    // Until the client has read the GOAWAY, a request may still be sent on
    // the old connection and answered there; after it, never.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        assert_eq!(short(&mut upstream).await, "ok");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    // The held stream was not cut.
    let more = tokio::time::timeout(Duration::from_millis(200), held.body_mut().frame()).await;
    assert!(more.is_err(), "the held stream ended: {more:?}");
}

/// With a setting above the server's limit, the pool learns the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (2 here) and opens a second connection
/// instead of queueing a third stream inside the first.
#[tokio::test]
async fn the_servers_stream_limit_is_learnt_when_lower_than_the_setting() {
    let server = start_server().await;
    let mut options = options(&server, 4);
    options.pool.max_streams_per_connection = 10;
    let mut upstream: Upstream<Empty<Bytes>> = Upstream::new(options).unwrap();
    let mut held = vec![hold(&mut upstream).await];
    // Past the next check, where the limit is read.
    tokio::time::sleep(super::IDLE_GRACE * 2).await;
    for _ in 0..2 {
        let response = tokio::time::timeout(Duration::from_secs(5), hold(&mut upstream))
            .await
            .expect("the stream opened instead of queueing on a full connection");
        held.push(response);
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(upstream.http2_connections(), 2);
}

/// Reads one HTTP/2 frame: its type, flags, stream and payload; `None` at
/// the end of the connection.
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], id, payload))
}

/// A frame: type, flags, stream and payload.
fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// How the first connection's server turns away the second stream.
#[derive(Clone, Copy)]
enum TurnAway {
    /// GOAWAY without error, naming the first stream as the last processed.
    GoAway,
    /// `RST_STREAM` with `REFUSED_STREAM`.
    Refused,
    /// GOAWAY with `INTERNAL_ERROR` naming the second stream as processed,
    /// then the connection closes: the stream may have been processed.
    Failed,
}

/// Frames to give `data` bytes of window back, on the connection and, when
/// `id` is not 0, on stream `id`.
fn window_back(id: u32, data: usize) -> Vec<u8> {
    let increment = (data as u32).to_be_bytes();
    let mut out = frame(0x8, 0, 0, &increment);
    if id != 0 {
        out.extend(frame(0x8, 0, id, &increment));
    }
    out
}

/// The first connection is served frame by frame: it waits for two requests
/// (streams 1 and 3) and for `body_seen` bytes of the second's body (giving
/// the window back as they come), turns the second away as `how` says, and
/// answers the first with 200 and no body. Later streams on it are answered
/// `ok`, or with the length of their body when they have one; later
/// connections are the test server's ([`serve`]).
async fn turn_away_second_stream(
    how: TurnAway,
    body_seen: usize,
) -> (TestServer, Upstream<TestBody>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (listener, acceptor, server) = bind().await;
    let (counter, go_away) = (server.accepted.clone(), server.go_away.clone());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        counter.fetch_add(1, Ordering::SeqCst);
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut preface = [0u8; 24];
        tls.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        tls.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        let mut streams = Vec::new();
        let mut seen = 0;
        while streams.len() < 2 || seen < body_seen {
            match read_frame(&mut tls).await.expect("two requests") {
                (0x4, 0, _, _) => tls.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(),
                (0x1, _, id, _) => streams.push(id),
                (0x0, _, id, data) => {
                    seen += data.len();
                    tls.write_all(&window_back(id, data.len())).await.unwrap();
                }
                _ => {}
            }
        }
        assert_eq!(streams, [1, 3]);
        // HEADERS with END_STREAM and END_HEADERS; 0x88 is `:status 200`
        // from the static table.
        let answer = frame(0x1, 0x4 | 0x1, 1, &[0x88]);
        let out = match how {
            TurnAway::GoAway => [frame(0x7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]), answer],
            TurnAway::Refused => [frame(0x3, 0, 3, &[0, 0, 0, 0x7]), answer],
            TurnAway::Failed => [answer, frame(0x7, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0x2])],
        };
        tls.write_all(&out.concat()).await.unwrap();
        tls.flush().await.unwrap();
        if matches!(how, TurnAway::Failed) {
            tls.shutdown().await.unwrap();
        } else {
            tokio::spawn(answer_later_streams(tls));
        }
        serve(listener, acceptor, counter, go_away, SERVER_STREAMS).await;
    });
    let upstream = body_upstream(&server);
    (server, upstream)
}

/// Answers the streams after the third on a connection served frame by
/// frame, once each has ended: `ok`, or the length of its body.
async fn answer_later_streams<S>(mut tls: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let mut bodies = std::collections::HashMap::<u32, usize>::new();
    while let Some((kind, flags, id, payload)) = read_frame(&mut tls).await {
        let mut out = Vec::new();
        if kind == 0x0 {
            out.extend(window_back(if id > 3 { id } else { 0 }, payload.len()));
            *bodies.entry(id).or_default() += payload.len();
        }
        // DATA or HEADERS (the request's or its trailers') with END_STREAM.
        if id > 3 && (kind == 0x0 || kind == 0x1) && flags & 0x1 != 0 {
            let text = bodies
                .remove(&id)
                .map_or("ok".to_owned(), |n| n.to_string());
            out.extend(frame(0x1, 0x4, id, &[0x88]));
            out.extend(frame(0x0, 0x1, id, text.as_bytes()));
        }
        if !out.is_empty() && tls.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A GET of `path`, as the upstream of the turn-away tests takes it.
fn get_boxed(path: &str) -> Request<TestBody> {
    Request::get(path)
        .body(BodyExt::boxed(Empty::new().map_err(|e| match e {})))
        .unwrap()
}

/// Sends `GET /first`, then `second` once the first is on its way, and
/// returns both answers' status and body.
async fn two_requests(
    upstream: &Upstream<TestBody>,
    second: Request<TestBody>,
) -> [(StatusCode, String); 2] {
    let send = |request: Request<TestBody>| {
        let mut upstream = upstream.clone();
        tokio::spawn(async move {
            let response = tokio::time::timeout(Duration::from_secs(5), upstream.call(request))
                .await
                .expect("no answer")
                .unwrap();
            (response.status(), text(response).await)
        })
    };
    let first = send(get_boxed("/first"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send(second);
    [first.await.unwrap(), second.await.unwrap()]
}

/// The second request, turned away as `how` says once `body_seen` bytes of
/// its body arrived, is answered `expected` after going again; the server
/// accepted `connections` in all.
async fn second_is_sent_again(
    how: TurnAway,
    second: Request<TestBody>,
    body_seen: usize,
    expected: &str,
    connections: usize,
) {
    let (server, upstream) = turn_away_second_stream(how, body_seen).await;
    let [first, second] = two_requests(&upstream, second).await;
    assert_eq!(first, (StatusCode::OK, String::new()));
    assert_eq!(second, (StatusCode::OK, expected.to_owned()));
    assert_eq!(server.accepted.load(Ordering::SeqCst), connections);
}

/// A POST to `/echo` of `chunks` chunks of 64 KiB and the trailer `done`.
fn post(chunks: usize) -> Request<TestBody> {
    Request::post("/echo")
        .body(chunked_body(chunks, Some("done"), false))
        .unwrap()
}

/// A request the server's GOAWAY names as not processed (its stream is
/// above the last one) goes again on a new connection instead of failing.
#[tokio::test]
async fn a_request_beyond_the_goaway_last_stream_is_sent_again() {
    second_is_sent_again(TurnAway::GoAway, get_boxed("/second"), 0, "ok", 2).await;
}

/// A stream the server resets with `REFUSED_STREAM` was not processed
/// either: its request goes again, on the same connection, which stays.
#[tokio::test]
async fn a_refused_stream_is_sent_again() {
    second_is_sent_again(TurnAway::Refused, get_boxed("/second"), 0, "ok", 1).await;
}

/// A request with a body goes again whole, trailers included, though part
/// of its body had been sent on the connection that went away.
#[tokio::test]
async fn a_request_body_beyond_the_goaway_last_stream_is_sent_again_whole() {
    let length = 3 * 64 * 1024;
    let expected = format!("{length} done");
    second_is_sent_again(TurnAway::GoAway, post(3), 100 * 1024, &expected, 2).await;
}

/// The same on a refused stream: the body goes again on the same connection.
#[tokio::test]
async fn a_refused_request_body_is_sent_again_whole() {
    let expected = (3 * 64 * 1024).to_string();
    second_is_sent_again(TurnAway::Refused, post(3), 100 * 1024, &expected, 1).await;
}

/// Once more of the body was sent than is kept ([`crate::upstream::REPLAY_LIMIT`]),
/// the request cannot go again: it fails with 502.
#[tokio::test]
async fn a_request_body_sent_past_the_replay_limit_is_not_sent_again() {
    let (server, upstream) =
        turn_away_second_stream(TurnAway::GoAway, crate::upstream::REPLAY_LIMIT + 1).await;
    let chunks = crate::upstream::REPLAY_LIMIT / (64 * 1024) + 2;
    let [first, second] = two_requests(&upstream, post(chunks)).await;
    assert_eq!(first, (StatusCode::OK, String::new()));
    assert_eq!(second.0, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

/// A stream cut by a GOAWAY with an error, at or below its last stream, may
/// have been processed: its request fails (502) and is not sent again.
#[tokio::test]
async fn a_request_the_server_may_have_processed_is_not_sent_again() {
    let (server, upstream) = turn_away_second_stream(TurnAway::Failed, 0).await;
    let [first, second] = two_requests(&upstream, get_boxed("/second")).await;
    assert_eq!(first, (StatusCode::OK, String::new()));
    assert_eq!(second.0, StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}
