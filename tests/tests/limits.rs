//! The listener's limits against slow, idle, excess and oversized clients, on
//! real sockets over TLS on loopback: each slow or excess client is dropped
//! or made to wait while the others keep being served. The webhook listener
//! gets the same limits.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use authproxy::config::FileConfig;
use authproxy::server::RunningServer;
use authproxy_tests::TestPki;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// Longest any bounded wait in these tests takes before it fails.
const BOUND: Duration = Duration::from_secs(10);

/// authproxy (or its webhook) with `limits:` set, in front of nothing: the
/// limits are the listener's, and `/livez` and the token endpoint answer
/// without an upstream.
struct Listener {
    pki: TestPki,
    dir: tempfile::TempDir,
    server: RunningServer,
}

impl Listener {
    async fn proxy(limits: &str) -> anyhow::Result<Listener> {
        Self::start(limits, false).await
    }

    async fn webhook(limits: &str) -> anyhow::Result<Listener> {
        Self::start(limits, true).await
    }

    async fn start(limits: &str, webhook: bool) -> anyhow::Result<Listener> {
        let pki = TestPki::new()?;
        let dir = tempfile::tempdir()?;
        let cert = pki.issue_server("proxy")?;
        std::fs::write(
            dir.path().join("tokens.csv"),
            "alice-token,alice,1001,\"devs\"\n",
        )?;
        std::fs::write(dir.path().join("proxy-token"), "unused")?;
        std::fs::write(
            dir.path().join("issuer.pem"),
            pki.issue_client("issuer-key", "unused", None)?.key_pem,
        )?;
        let yaml = format!(
            "listen: 127.0.0.1:0\n\
             tls: {{certFile: {cert}, keyFile: {key}}}\n\
             upstream: {{url: 'https://127.0.0.1:9', caFile: {ca}, tokenFile: proxy-token}}\n\
             authentication:\n  staticTokens: {{file: tokens.csv}}\n  \
             issuedTokens: {{issuer: authproxy-test, signingKeyFiles: [issuer.pem], exchangeFrom: [staticToken]}}\n\
             limits: {limits}\n\
             shutdownTimeout: 2s\n",
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
            ca = pki.ca_path().display(),
        );
        let path = dir.path().join("authproxy.yaml");
        std::fs::write(&path, yaml)?;
        let config = FileConfig::load(&path)?;
        let server = if webhook {
            authproxy::webhook::start(&config, dir.path(), "127.0.0.1:0".parse()?).await?
        } else {
            authproxy::server::start(&config, dir.path()).await?
        };
        Ok(Listener { pki, dir, server })
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A TLS connection offering `alpn`.
    async fn tls(&self, alpn: &[&[u8]]) -> anyhow::Result<TlsStream<TcpStream>> {
        let config = authproxy_tests::pki::client_config(self.pki.ca_pem(), alpn)?;
        let tcp = TcpStream::connect(self.addr()).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        Ok(tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?)
    }

    /// An HTTP/1.1 client connection; the task ends when the connection closes.
    async fn http1(&self) -> anyhow::Result<Http1> {
        let stream = self.tls(&[b"http/1.1"]).await?;
        let (send, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(Http1 {
            send,
            connection: tokio::spawn(connection),
        })
    }

    /// `curl` with the test CA against `path`; returns (status, body).
    async fn curl(&self, path: &str, args: &[&str]) -> anyhow::Result<(u16, String)> {
        let url = format!("https://localhost:{}{path}", self.addr().port());
        let resolve = format!("localhost:{}:127.0.0.1", self.addr().port());
        let mut all = vec!["--resolve", &resolve, url.as_str()];
        all.extend_from_slice(args);
        authproxy_tests::curl_with_ca(self.pki.ca_path(), &all).await
    }
}

struct Http1 {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    connection: JoinHandle<hyper::Result<()>>,
}

impl Http1 {
    /// GET `path`; returns the status.
    async fn get(&mut self, path: &str) -> anyhow::Result<u16> {
        let request = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::new())?;
        let response = tokio::time::timeout(BOUND, self.send.send_request(request))
            .await
            .context("no answer")??;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }

    /// Waits (bounded) until the server closes the connection.
    async fn closed_by_server(self, what: &str) -> anyhow::Result<()> {
        let Http1 { send, connection } = self;
        match tokio::time::timeout(BOUND, connection).await {
            Ok(_) => {
                drop(send);
                Ok(())
            }
            Err(_) => bail!("{what}: the server kept the connection open for {BOUND:?}"),
        }
    }
}

/// Reads until the peer closes (EOF or reset), bounded; returns what was read.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    read_until_closed_within(stream, what, BOUND).await
}

/// [`read_until_closed`] with its own bound.
async fn read_until_closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    what: &str,
    bound: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        bail!(
            "{what}: still open after {bound:?}; read: {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_half_a_header_is_dropped_while_others_are_served() -> anyhow::Result<()> {
    let proxy = Listener::proxy("{headerReadTimeout: 1s, idleTimeout: 60s}").await?;
    let mut slow = proxy.tls(&[b"http/1.1"]).await?;
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await?;
    slow.flush().await?;

    // Another client is served while the slow one is still being waited for.
    let mut other = proxy.http1().await?;
    assert_eq!(other.get("/livez").await?, 200);

    let seen = read_until_closed(&mut slow, "half a request header").await?;
    assert!(
        !String::from_utf8_lossy(&seen).contains(" 200 "),
        "the half request was answered: {}",
        String::from_utf8_lossy(&seen)
    );
    // A new client is served too. (`other` itself may be gone by now: on
    // HTTP/1.1 the header-read timeout also bounds the wait for the next
    // request on a keep-alive connection.)
    assert_eq!(proxy.http1().await?.get("/livez").await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_finishes_the_handshake_is_dropped() -> anyhow::Result<()> {
    let proxy = Listener::proxy("{tlsHandshakeTimeout: 1s}").await?;
    // One sends nothing; one sends a TLS record header announcing a
    // ClientHello that never comes.
    let mut silent = TcpStream::connect(proxy.addr()).await?;
    let mut partial = TcpStream::connect(proxy.addr()).await?;
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await?;

    let mut other = proxy.http1().await?;
    assert_eq!(other.get("/livez").await?, 200);

    // Five times the timeout: generous, and well short of the former fixed 10s.
    let bound = Duration::from_secs(5);
    read_until_closed_within(&mut silent, "a client that sent nothing", bound).await?;
    read_until_closed_within(
        &mut partial,
        "a client that sent part of a ClientHello",
        bound,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    // The header-read timeout is long: only the idle timeout can close these.
    let proxy = Listener::proxy("{idleTimeout: 1s, headerReadTimeout: 60s}").await?;
    let mut keep_alive = proxy.http1().await?;
    assert_eq!(keep_alive.get("/livez").await?, 200);
    keep_alive
        .closed_by_server("an idle HTTP/1.1 keep-alive connection")
        .await?;

    let stream = proxy.tls(&[b"h2"]).await?;
    let (mut send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("https://localhost:{}/livez", proxy.addr().port()))
        .body(Empty::<Bytes>::new())?;
    let response = tokio::time::timeout(BOUND, send.send_request(request))
        .await
        .context("no HTTP/2 answer")??;
    assert_eq!(response.status(), 200);
    drop(response);
    if tokio::time::timeout(BOUND, connection).await.is_err() {
        bail!("an idle HTTP/2 connection was kept open for {BOUND:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_next_client_waits_until_one_closes() -> anyhow::Result<()> {
    let proxy = Listener::proxy("{maxConnections: 2}").await?;
    let mut first = proxy.http1().await?;
    let mut second = proxy.http1().await?;
    assert_eq!(first.get("/livez").await?, 200);
    assert_eq!(second.get("/livez").await?, 200);

    let pki_ca = proxy.pki.ca_pem().to_owned();
    let addr = proxy.addr();
    let mut third = tokio::spawn(async move {
        let config = authproxy_tests::pki::client_config(&pki_ca, &[b"http/1.1"])?;
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let (send, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let mut client = Http1 {
            send,
            connection: tokio::spawn(connection),
        };
        client.get("/livez").await
    });
    // Not served while both slots are taken (a wait, not a timing bound).
    let early = tokio::time::timeout(Duration::from_millis(1500), &mut third).await;
    assert!(
        early.is_err(),
        "a third connection was served at a cap of 2: {early:?}"
    );
    // The open connections keep being served.
    assert_eq!(first.get("/livez").await?, 200);

    // One closes: the waiting one is served.
    drop(second.send);
    second.connection.abort();
    let status = tokio::time::timeout(BOUND, third)
        .await
        .context("the waiting connection was not served after a slot freed")???;
    assert_eq!(status, 200);
    assert_eq!(first.get("/livez").await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() -> anyhow::Result<()> {
    let proxy = Listener::proxy("{maxHeaderBytes: 16384}").await?;
    let big = "x".repeat(20_000);
    let small = "x".repeat(4_000);
    let (code, _) = proxy
        .curl("/livez", &["--http1.1", "-H", &format!("X-Big: {small}")])
        .await?;
    assert_eq!(code, 200, "a 4 KB header is within the limit");

    let mut raw = proxy.tls(&[b"http/1.1"]).await?;
    raw.write_all(
        format!("GET /livez HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await?;
    raw.flush().await?;
    let seen = read_until_closed(&mut raw, "a 20 KB request head").await?;
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 431"),
        "a 20 KB head was answered: {seen}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_beyond_the_limit_are_refused_by_settings() -> anyhow::Result<()> {
    let proxy = Listener::proxy("{http2: {maxConcurrentStreams: 3}}").await?;
    let stream = proxy.tls(&[b"h2"]).await?;
    let (mut send, connection) = h2::client::handshake(stream).await?;
    let (advertised_tx, advertised) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut connection = Box::pin(connection);
        std::future::poll_fn(|cx| {
            let polled = std::future::Future::poll(connection.as_mut(), cx);
            advertised_tx.send_replace(connection.max_concurrent_send_streams());
            polled
        })
        .await
    });
    let uri = format!("https://localhost:{}", proxy.addr().port());
    let get = |path: &str| {
        http::Request::get(format!("{uri}{path}"))
            .body(())
            .map_err(anyhow::Error::from)
    };
    let (answer, _) = send.send_request(get("/livez")?, true)?;
    let answer = tokio::time::timeout(BOUND, answer)
        .await
        .context("no answer")??;
    assert_eq!(answer.status(), 200);
    // the connection task publishes what it applied after its own poll
    let mut advertised = advertised;
    let seen = tokio::time::timeout(BOUND, advertised.wait_for(|v| *v == 3))
        .await
        .map(|r| r.map(|v| *v).unwrap_or(0))
        .unwrap_or_else(|_| *advertised.borrow());
    assert_eq!(
        seen, 3,
        "SETTINGS_MAX_CONCURRENT_STREAMS the server advertised"
    );

    // Three token requests whose bodies never end hold the three streams.
    let mut open = Vec::new();
    for _ in 0..3 {
        send = send.ready().await?;
        let post = http::Request::post(format!("{uri}/authproxy/v1/token"))
            .header(http::header::AUTHORIZATION, "Bearer alice-token")
            .body(())?;
        open.push(send.send_request(post, false)?);
    }
    send = send.ready().await?;
    let (fourth, _) = send.send_request(get("/livez")?, true)?;
    let mut fourth = Box::pin(fourth);
    let early = tokio::time::timeout(Duration::from_millis(1500), fourth.as_mut()).await;
    assert!(
        early.is_err(),
        "a fourth stream was served at a limit of 3: {early:?}"
    );
    // One ends: the fourth is served.
    let (first_answer, mut first_body) = open.remove(0);
    first_body.send_data(Bytes::new(), true)?;
    let first_answer = tokio::time::timeout(BOUND, first_answer)
        .await
        .context("the token request was not answered")??;
    assert_eq!(first_answer.status(), 200);
    let fourth = tokio::time::timeout(BOUND, fourth)
        .await
        .context("the queued stream was not served after one ended")??;
    assert_eq!(fourth.status(), 200);
    Ok(())
}

/// An HTTP/2 frame header: payload length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_burst_gets_goaway_while_others_are_served() -> anyhow::Result<()> {
    let proxy = Listener::proxy("{http2: {maxPendingAcceptResetStreams: 2}}").await?;
    let mut raw = proxy.tls(&[b"h2"]).await?;
    // Preface and empty SETTINGS, then ten streams each opened (HEADERS:
    // GET https / from HPACK's static table) and at once reset (CANCEL), all
    // in one write so the server reads them before accepting any.
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(frame(0x4, 0, 0, &[]));
    for stream in (1..20).step_by(2) {
        burst.extend(frame(0x1, 0x5, stream, &[0x82, 0x87, 0x84]));
        burst.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    raw.write_all(&burst).await?;
    raw.flush().await?;

    let mut seen = Vec::new();
    let goaway = tokio::time::timeout(BOUND, async {
        loop {
            let mut head = [0u8; 9];
            if raw.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if raw.read_exact(&mut payload).await.is_err() {
                return None;
            }
            seen.push(head[3]);
            if head[3] == 0x7 && payload.len() >= 8 {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
    })
    .await;
    match goaway {
        Ok(Some(code)) => assert_eq!(code, 0xb, "GOAWAY error code (ENHANCE_YOUR_CALM)"),
        Ok(None) => bail!("connection closed without GOAWAY; frame types seen: {seen:?}"),
        Err(_) => bail!("no GOAWAY within {BOUND:?}; frame types seen: {seen:?}"),
    }

    let mut other = proxy.http1().await?;
    assert_eq!(other.get("/livez").await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_token_exchange_bodies_get_413() -> anyhow::Result<()> {
    let proxy = Listener::proxy("{maxRequestBodyBytes: 1024}").await?;
    let body = proxy.dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 2048])?;
    let body_arg = format!("@{}", body.display());
    let auth = ["-H", "Authorization: Bearer alice-token"];
    for framing in [&[][..], &["-H", "Transfer-Encoding: chunked"][..]] {
        let mut args = vec!["-X", "POST", "--data-binary", &body_arg];
        args.extend_from_slice(&auth);
        args.extend_from_slice(framing);
        let (code, answer) = proxy.curl("/authproxy/v1/token", &args).await?;
        assert_eq!(code, 413, "{framing:?}: {answer}");
        let status: serde_json::Value = serde_json::from_str(&answer)?;
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "RequestEntityTooLarge");
        assert_eq!(status["code"], 413);
    }
    let mut args = vec!["-X", "POST", "--data-binary", "{}"];
    args.extend_from_slice(&auth);
    let (code, answer) = proxy.curl("/authproxy/v1/token", &args).await?;
    assert_eq!(code, 200, "a small body is within the limit: {answer}");
    assert!(answer.contains("ExecCredential"), "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_listener_has_the_same_limits() -> anyhow::Result<()> {
    let webhook =
        Listener::webhook("{maxRequestBodyBytes: 1024, headerReadTimeout: 1s, idleTimeout: 60s}")
            .await?;
    let review = |token: &str| {
        serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        })
        .to_string()
    };
    let (code, answer) = webhook
        .curl(
            "/",
            &["-X", "POST", "--data-binary", &review(&"x".repeat(2048))],
        )
        .await?;
    assert_eq!(code, 413, "{answer}");
    let status: serde_json::Value = serde_json::from_str(&answer)?;
    assert_eq!(status["reason"], "RequestEntityTooLarge");

    let mut slow = webhook.tls(&[b"http/1.1"]).await?;
    slow.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\n")
        .await?;
    slow.flush().await?;
    let (code, answer) = webhook
        .curl(
            "/",
            &["-X", "POST", "--data-binary", &review("alice-token")],
        )
        .await?;
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains(r#""authenticated":true"#), "{answer}");
    read_until_closed(&mut slow, "half a request header at the webhook").await?;
    Ok(())
}
