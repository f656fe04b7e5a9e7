//! `SelfSubjectReview`s over HTTP/2, for differential tests: the same
//! credential shown to kube-apiserver directly and through a proxy, and the
//! user each derived from it ([`Review`]).
//!
//! kube-apiserver sends GOAWAY on a connection that carried a refused
//! credential, so a [`ReviewClient`] opens connections again as they close
//! and sends a review again when it met a closing connection (a review
//! changes nothing: sending it twice is safe).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::Value;

use crate::pki;

/// How long one review may take before it is sent again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at one review before giving up.
const ATTEMPTS: u64 = 20;

const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
const REVIEW_BODY: &str = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;

/// What a server made of a credential: the user of its review, or a refusal.
#[derive(Debug, Clone, PartialEq)]
pub enum Review {
    /// 201 and `status.userInfo`, groups and extra as the server listed them.
    User {
        /// `username`.
        username: String,
        /// `uid`, empty when the server sent none.
        uid: String,
        /// `groups`, in the server's order.
        groups: Vec<String>,
        /// `extra`.
        extra: BTreeMap<String, Vec<String>>,
    },
    /// Any other status, with the message of the Status the server answered.
    Refused(u16, String),
}

impl Review {
    /// Whether the server accepted the credential.
    pub fn accepted(&self) -> bool {
        matches!(self, Review::User { .. })
    }
}

impl std::fmt::Display for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Review::User {
                username,
                uid,
                groups,
                extra,
            } => write!(
                f,
                "user {username:?} uid {uid:?} groups {groups:?} extra {extra:?}"
            ),
            Review::Refused(code, message) => write!(f, "refused {code} ({message})"),
        }
    }
}

/// HTTP/2 connections to one server (kube-apiserver or a proxy in front of
/// it) that asks it for `SelfSubjectReview`s.
pub struct ReviewClient {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    slots: Vec<tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>>,
    next: AtomicUsize,
}

impl ReviewClient {
    /// A client of the server at `addr`, whose certificate (for `localhost`)
    /// `ca_pem` signed, spreading reviews over `connections` connections
    /// (opened on first use).
    pub fn new(addr: SocketAddr, ca_pem: &str, connections: usize) -> anyhow::Result<Self> {
        let config = pki::client_config(ca_pem, &[b"h2"])?;
        Ok(ReviewClient {
            addr,
            connector: tokio_rustls::TlsConnector::from(config),
            slots: (0..connections.max(1))
                .map(|_| Default::default())
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// Asks for a review as the holder of bearer `token`. Fails only when
    /// the server gave no answer in 20 attempts.
    pub async fn review(&self, token: &str) -> anyhow::Result<Review> {
        let response = self.post(token).await?;
        let code = response.status().as_u16();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .context("the review's body did not arrive")??
            .to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if code != 201 {
            let message = value["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Ok(Review::Refused(code, message));
        }
        let info = &value["status"]["userInfo"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let extra = info["extra"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
            .unwrap_or_default();
        Ok(Review::User {
            username: info["username"].as_str().unwrap_or_default().to_owned(),
            uid: info["uid"].as_str().unwrap_or_default().to_owned(),
            groups: strings(&info["groups"]),
            extra,
        })
    }

    async fn sender(&self, slot: usize) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let mut held = self.slots[slot].lock().await;
        if let Some(send) = held.as_ref().filter(|s| !s.is_closed()) {
            return Ok(send.clone());
        }
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let tls = self
            .connector
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
            .await?;
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(connection);
        *held = Some(send.clone());
        Ok(send)
    }

    async fn post(&self, token: &str) -> anyhow::Result<http::Response<Incoming>> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut attempt = 0;
        loop {
            let request = http::Request::post(format!("https://localhost{REVIEW_PATH}"))
                .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(REVIEW_BODY.as_bytes())))?;
            let sent = match self.sender(slot).await {
                Ok(mut send) => {
                    match tokio::time::timeout(REQUEST_TIMEOUT, send.send_request(request)).await {
                        Ok(sent) => sent.map_err(anyhow::Error::from),
                        Err(_) => Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")),
                    }
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(response) => return Ok(response),
                Err(e) if attempt + 1 >= ATTEMPTS => {
                    return Err(e.context(format!("SelfSubjectReview, {ATTEMPTS} attempts")))
                }
                Err(_) => {
                    attempt += 1;
                    // a fresh connection for this slot once it is closed,
                    // or after a few failures on it
                    let mut held = self.slots[slot].lock().await;
                    if held.as_ref().is_some_and(|s| s.is_closed()) || attempt > 2 {
                        *held = None;
                    }
                    drop(held);
                    tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                }
            }
        }
    }
}
