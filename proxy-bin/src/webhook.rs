//! `authproxy webhook`: the TokenReview endpoint kube-apiserver calls with
//! `--authentication-token-webhook-config-file` (on RKE nodes, the kube-api
//! auth endpoint that keeps a cluster reachable when the management server is
//! down). Same configuration file and authenticator chain as the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use proxy_core::body::read_limited;
use proxy_core::credential::ClientCertificate;
use proxy_core::status::{Reason, Status};
use proxy_core::{tokenreview, Chain, ProxyBody};
use tokio::net::TcpListener;

use crate::config::FileConfig;
use crate::server::{listener_tls, plain, serve_with_limits, Handler, RunningServer, StartError};

/// The default listen address: loopback, as kube-api-auth on RKE nodes.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6440";

/// The webhook request handler.
#[derive(Clone)]
pub struct Webhook {
    chain: Chain,
    max_request_body_bytes: usize,
}

impl Webhook {
    async fn answer(self, req: Request<Incoming>) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/livez") => return plain(StatusCode::OK, "ok"),
            (&Method::GET, "/readyz") if self.chain.is_ready() => {
                return plain(StatusCode::OK, "ok")
            }
            (&Method::GET, "/readyz") => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: authenticators are still loading",
                )
            }
            (&Method::POST, _) => {}
            _ => {
                return Status::failure(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Reason::BadRequest,
                    "POST a TokenReview",
                )
                .into_response();
            }
        }
        let (parts, body) = req.into_parts();
        let body = match read_limited(&parts.headers, body, self.max_request_body_bytes).await {
            Ok(body) => body,
            Err(status) => return status.into_response(),
        };
        let request = match tokenreview::parse(&body) {
            Ok(request) => request,
            Err(error) => {
                return Status::failure(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    error.to_string(),
                )
                .into_response()
            }
        };
        let answer = tokenreview::review(&self.chain, request).await;
        let mut response = Response::new(ProxyBody::full(
            serde_json::to_vec(&answer).unwrap_or_default(),
        ));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl Handler for Webhook {
    async fn handle(
        self,
        req: Request<Incoming>,
        _cert: Option<ClientCertificate>,
        _peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        Ok(self.answer(req).await)
    }
}

/// Starts the TokenReview endpoint on `listen` with the config's TLS,
/// authenticators and `limits`.
pub async fn start(
    config: &FileConfig,
    base: &Path,
    listen: SocketAddr,
) -> Result<RunningServer, StartError> {
    let tls = listener_tls(config, base)?;
    let chain = config.authentication.build("authentication", base)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let webhook = Webhook {
        chain,
        max_request_body_bytes: config.limits.max_request_body_bytes,
    };
    serve_with_limits(
        listener,
        tls,
        webhook,
        config.limits.clone(),
        config.shutdown_timeout.unwrap_or(Duration::from_secs(30)),
    )
}
