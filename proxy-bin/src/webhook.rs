//! `authproxy webhook`: the TokenReview endpoint kube-apiserver calls with
//! `--authentication-token-webhook-config-file` (on RKE nodes, the kube-api
//! auth endpoint that keeps a cluster reachable when the management server is
//! down). Same configuration file and authenticator chain as the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use proxy_core::credential::ClientCertificate;
use proxy_core::status::{Reason, Status};
use proxy_core::{tokenreview, Chain, ProxyBody};
use tokio::net::TcpListener;

use crate::config::FileConfig;
use crate::server::{listener_tls, plain, serve, Handler, RunningServer, StartError};

/// The default listen address: loopback, as kube-api-auth on RKE nodes.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6440";

/// The webhook request handler.
#[derive(Clone)]
pub struct Webhook {
    chain: Chain,
    metrics: Option<proxy_core::observe::metrics::Metrics>,
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
        let body = match Limited::new(req.into_body(), tokenreview::MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return Status::failure(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    "request body unreadable or larger than 1 MiB",
                )
                .into_response();
            }
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
        if let Some(metrics) = &self.metrics {
            metrics.tokenreview(&answer);
        }
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

/// Starts the TokenReview endpoint on `listen` with the config's TLS and authenticators.
pub async fn start(
    config: &FileConfig,
    base: &Path,
    listen: SocketAddr,
) -> Result<RunningServer, StartError> {
    let tls = listener_tls(config, base)?;
    let chain = config.authentication.build("authentication", base)?;
    let metrics = config
        .metrics
        .as_ref()
        .map(|_| proxy_core::observe::metrics::Metrics::new());
    let chain = match &metrics {
        Some(metrics) => metrics.instrument_chain(&chain),
        None => chain,
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let mut running = serve(
        listener,
        tls,
        Webhook {
            chain,
            metrics: metrics.clone(),
        },
        config.shutdown_timeout.unwrap_or(Duration::from_secs(30)),
    )?;
    running
        .serve_metrics(config.metrics.as_ref(), base, metrics)
        .await?;
    Ok(running)
}
