//! The double acting as kube-apiserver's token webhook client: it POSTs the
//! exact TokenReview JSON kube-apiserver sends (see k8s.io/apiserver's
//! webhook token authenticator) and returns the parsed answer.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

/// Sends a TokenReview for `token` (with `audiences`, kube omits the field
/// when empty) in `api_version` to `addr` over TLS trusting `ca_pem`.
pub async fn token_review(
    addr: SocketAddr,
    ca_pem: &str,
    api_version: &str,
    token: &str,
    audiences: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let mut spec = serde_json::json!({"token": token});
    if !audiences.is_empty() {
        spec["audiences"] = serde_json::json!(audiences);
    }
    let body = serde_json::json!({
        "kind": "TokenReview",
        "apiVersion": api_version,
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": {"user": {}},
    });
    let tls = crate::pki::client_config(ca_pem, &[b"http/1.1"])?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post("/v1/authenticate")
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json, */*")
        .header(
            http::header::USER_AGENT,
            "kube-apiserver/v1.30.0 (linux/amd64) kubernetes/webhook",
        )
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "webhook answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).context("webhook answer is not JSON")
}
