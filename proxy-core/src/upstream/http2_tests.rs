//! The HTTP/2 send path: the head it sends, the hop-by-hop headers it drops,
//! and what it keeps of a body once the answer came.

use super::*;
use http::StatusCode;
use http_body::Frame;

fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| {
            (
                header::HeaderName::from_static(n),
                HeaderValue::from_static(v),
            )
        })
        .collect()
}

/// A body the test feeds frame by frame.
type Fed = http_body_util::StreamBody<
    futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>,
>;

fn fed() -> (tokio::sync::mpsc::Sender<Bytes>, Fed) {
    use futures_util::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok(Frame::data(data)), rx))
    });
    (tx, http_body_util::StreamBody::new(stream.boxed()))
}

/// An upload the server answers before reading it all keeps no copy
/// once the answer's head has come, however long the rest takes: its
/// bytes are back in the budget at once, and what follows is not kept.
#[tokio::test]
async fn an_answered_upload_keeps_no_copy() {
    static SHARED: super::super::replay::Budget = super::super::replay::Budget::new(1024 * 1024);
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (got_first, first_seen) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.unwrap();
        let (request, mut respond) = connection.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while connection.accept().await.is_some() {} });
        let mut body = request.into_body();
        let first = body.data().await.unwrap().unwrap();
        got_first.send(first.len()).unwrap();
        // Answered at once, the rest of the body left unread for now.
        let _stream = respond.send_response(Response::new(()), false).unwrap();
        body
    });
    let (send_request, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(connection);
    let (caller, body) = fed();
    caller
        .send(Bytes::from(vec![b'x'; 100 * 1024]))
        .await
        .unwrap();
    let request = Request::post("http://upstream/upload")
        .body(Replay::with_budget(body, &SHARED))
        .unwrap();
    let answer = tokio::spawn(send(send_request, request));
    assert_eq!(
        first_seen.await.unwrap(),
        16 * 1024,
        "a first frame reached the server"
    );
    let Ok(response) = answer.await.unwrap() else {
        panic!("no answer");
    };
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(SHARED.held(), 0, "the copy outlived the answer");
    // The rest still reaches the server, and is not kept.
    let mut body = server.await.unwrap();
    caller.send(Bytes::from(vec![b'y'; 1000])).await.unwrap();
    let mut received = 16 * 1024;
    while received < 100 * 1024 + 1000 {
        let data = body.data().await.unwrap().unwrap();
        received += data.len();
        let _ = body.flow_control().release_capacity(data.len());
    }
    assert_eq!(received, 100 * 1024 + 1000);
    assert_eq!(SHARED.held(), 0);
    drop(caller);
}

#[test]
fn connection_specific_request_headers_are_removed_and_the_rest_kept() {
    let mut h = headers(&[
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
        ("accept", "application/json"),
        ("impersonate-user", "alice"),
    ]);
    strip_connection_headers(&mut h);
    let mut left: Vec<_> = h.keys().map(|n| n.as_str()).collect();
    left.sort();
    assert_eq!(left, ["accept", "impersonate-user"]);
    let mut h = headers(&[("te", "trailers")]);
    strip_connection_headers(&mut h);
    assert_eq!(h["te"], "trailers");
}

#[test]
fn hop_by_hop_response_headers_are_removed_and_the_rest_kept() {
    let mut h = headers(&[
        ("connection", "close"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("trailer", "x-check"),
        ("upgrade", "h2c"),
        ("proxy-authenticate", "Basic"),
        ("content-type", "application/json"),
        ("audit-id", "1"),
    ]);
    super::super::strip_response_hop_headers(&mut h);
    let mut left: Vec<_> = h.keys().map(|n| n.as_str()).collect();
    left.sort();
    assert_eq!(left, ["audit-id", "content-type"]);
}

#[test]
fn only_methods_with_payload_semantics_announce_an_empty_body() {
    for method in [Method::POST, Method::PUT, Method::PATCH] {
        assert!(has_payload_semantics(&method), "{method}");
    }
    for method in [Method::GET, Method::HEAD, Method::DELETE, Method::CONNECT] {
        assert!(!has_payload_semantics(&method), "{method}");
    }
}
