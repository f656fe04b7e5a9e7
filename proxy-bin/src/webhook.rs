//! `authproxy webhook`: the TokenReview endpoint kube-apiserver calls with
//! `--authentication-token-webhook-config-file` (on RKE nodes, the kube-api
//! auth endpoint that keeps a cluster reachable when the management server is
//! down). Same configuration file and authenticator chain as the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::plain::plain;
use crate::request_body::read_limited;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use proxy_core::authn::ClientCertificates as CertificateUsers;
use proxy_core::counters::{ThrottleCounters, ThrottleScope};
use proxy_core::credential::{ClientCertificate, Secret};
use proxy_core::refusal::read_some;
use proxy_core::status::{Reason, Status};
use proxy_core::{tokenreview, Chain, ProxyBody};
use proxy_support::rate_limit::RateLimiter;
use tokio::net::TcpListener;

use crate::config::FileConfig;
use crate::reload::{ConfigSource, LiveAuthentication};
use crate::server::{
    listener_tls_reporting, serve_with_limits, ClientCertificates, Handler, RunningServer,
    StartError,
};

/// The default listen address: loopback, as kube-api-auth on RKE nodes.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6440";

/// The webhook request handler.
///
/// Its caller is kube-apiserver, which passes on every bearer token anyone
/// presents to it: nothing here is limited per caller address (that would let
/// anyone switch the webhook off for every user). Refused reviews are limited
/// per token, which is what the presenter controls; a token that
/// authenticates is not counted.
#[derive(Clone)]
pub struct Webhook {
    chain: Chain,
    failed_reviews: Arc<RateLimiter>,
    throttled: Arc<ThrottleCounters>,
    max_request_body_bytes: usize,
    api_audiences: Arc<[String]>,
    allowed_client_names: Arc<[String]>,
    /// `tls.clientCAFile` is set: every request needs a valid client
    /// certificate (one the CAs in force still accept, see
    /// `ClientCertRecheck`), not only the handshake.
    require_client_cert: bool,
    metrics: Option<proxy_core::observe::metrics::Metrics>,
    /// The revocation store, kept watched while the webhook serves.
    _revocation: Option<Arc<crate::revocation::Revocation>>,
}

fn throttled(retry_after_secs: u64) -> Response<ProxyBody> {
    let mut response = Status::failure(
        StatusCode::TOO_MANY_REQUESTS,
        Reason::TooManyRequests,
        format!("too many failed reviews of this token, retry after {retry_after_secs}s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

impl Webhook {
    /// Whether a caller with this (verified) client certificate may ask:
    /// always without `webhook.allowedClientNames`, else when the leaf's
    /// common name is one of them.
    fn caller_allowed(&self, cert: Option<&ClientCertificate>) -> Result<(), String> {
        if self.require_client_cert && cert.is_none() {
            return Err("a valid client certificate is required to ask for token reviews".into());
        }
        if self.allowed_client_names.is_empty() {
            return Ok(());
        }
        let name = cert
            .and_then(|chain| chain.0.first())
            .and_then(|leaf| CertificateUsers::user_from_der(leaf).ok())
            .map(|user| user.username);
        match name {
            Some(name) if self.allowed_client_names.contains(&name) => Ok(()),
            Some(name) => Err(format!(
                "client certificate {name:?} may not ask for token reviews"
            )),
            None => Err("a client certificate is required to ask for token reviews".into()),
        }
    }

    async fn answer(
        self,
        req: Request<Incoming>,
        cert: Option<ClientCertificate>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::POST {
            if let Err(message) = self.caller_allowed(cert.as_ref()) {
                tracing::info!(%message, "token review refused: caller not allowed");
                // Read the (bounded) body first: an HTTP/2 client whose
                // request is answered before it is sent sees a stream reset.
                let (parts, body) = req.into_parts();
                let _ = read_limited(&parts.headers, body, self.max_request_body_bytes).await;
                return Status::failure(StatusCode::FORBIDDEN, Reason::Forbidden, message)
                    .into_response();
            }
        }
        self.answer_allowed(req).await
    }

    async fn answer_allowed(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            // `/healthcheck` is Rancher kube-api-auth's, so RKE setups keep their probes
            (&Method::GET, "/livez" | "/healthcheck") => return plain(StatusCode::OK, "ok"),
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
                // Some of the body is read first (see proxy_core::refusal).
                read_some(req.into_body()).await;
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
                .into_response();
            }
        };
        // The limiter keeps a keyed hash of the token, never the token.
        let token = Secret::new(request.spec.token.clone());
        if let Err(wait) = self.failed_reviews.check(token.expose()) {
            tracing::info!("token review refused: too many failed reviews of this token");
            self.throttled.throttled(ThrottleScope::Token);
            return throttled(wait);
        }
        let answer = tokenreview::review(&self.chain, &self.api_audiences, request).await;
        if let Some(metrics) = &self.metrics {
            metrics.tokenreview(&answer);
        }
        if answer.is_refusal() {
            self.failed_reviews.record(token.expose());
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
        cert: Option<ClientCertificate>,
        _peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        Ok(self.answer(req, cert).await)
    }
}

/// Starts the TokenReview endpoint on `listen` with the config's TLS and authenticators.
///
/// With `tls.clientCAFile` set, callers must present a client certificate it
/// verifies (kube-apiserver presents its own with `client-certificate` in the
/// webhook kubeconfig). Without it, the webhook listens on loopback only,
/// unless `webhook.allowUnauthenticatedClients` says otherwise.
pub async fn start(
    config: &FileConfig,
    base: &Path,
    listen: SocketAddr,
) -> Result<RunningServer, StartError> {
    start_from(config, base, listen, None).await
}

/// Like [`start`] for the configuration file `source` (already loaded as
/// `config`): its `authentication` section is re-read as it changes, and on
/// SIGHUP (see [`crate::reload`]).
pub async fn start_watching(
    config: &FileConfig,
    source: ConfigSource,
    listen: SocketAddr,
) -> Result<RunningServer, StartError> {
    let base = config.base_dir(&source.path);
    start_from(config, &base, listen, Some(source)).await
}

async fn start_from(
    config: &FileConfig,
    base: &Path,
    listen: SocketAddr,
    source: Option<ConfigSource>,
) -> Result<RunningServer, StartError> {
    let verified = config.tls.client_ca_file.is_some();
    if !verified && !listen.ip().is_loopback() && !config.webhook.allow_unauthenticated_clients {
        return Err(StartError::Refused {
            field: "webhook.allowUnauthenticatedClients",
            message: format!(
                "{listen} is not a loopback address and tls.clientCAFile is not set, so anyone \
                 who reaches it could ask who holds a token; set tls.clientCAFile to require \
                 kube-apiserver's client certificate, listen on loopback, or set \
                 webhook.allowUnauthenticatedClients: true"
            ),
        });
    }
    let metrics = config
        .metrics
        .as_ref()
        .map(|_| proxy_core::observe::metrics::Metrics::new());
    let (live, chain) = LiveAuthentication::build(config, base, metrics.clone())?;
    let tls = listener_tls_reporting(
        config,
        base,
        ClientCertificates::Required,
        live.reloading.reporter.clone(),
    )?;
    if verified {
        tracing::info!(%listen, "webhook: callers must present a client certificate signed by tls.clientCAFile");
    } else if listen.ip().is_loopback() {
        tracing::info!(%listen, "webhook: loopback only; no client certificate required (set tls.clientCAFile to require one)");
    } else {
        tracing::warn!(%listen, "webhook: answering anyone who can reach it (webhook.allowUnauthenticatedClients)");
    }
    for warning in config.warnings() {
        tracing::warn!(field = %warning.field, "{}", warning.message);
    }
    let failed_reviews = Arc::new(RateLimiter::per_minute(
        config.webhook.failed_reviews_per_minute(),
    ));
    let throttled = Arc::new(ThrottleCounters::default());
    if let Some(metrics) = &metrics {
        metrics.observe_throttle("webhook", throttled.clone());
        if let Some(issuer) = &live.issuer {
            metrics.observe_refreshes(issuer.refresher().counters().clone());
        }
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let ready = chain.clone();
    let webhook = Webhook {
        chain,
        failed_reviews,
        throttled,
        max_request_body_bytes: config.limits.max_request_body_bytes,
        api_audiences: config.webhook.api_audiences().into(),
        allowed_client_names: config.webhook.allowed_client_names.clone().into(),
        require_client_cert: verified,
        metrics: metrics.clone(),
        _revocation: live.revocation.clone(),
    };
    let mut running = serve_with_limits(
        listener,
        tls,
        webhook,
        config.limits.clone(),
        config.shutdown_timeout.unwrap_or(Duration::from_secs(30)),
    )?;
    running
        .serve_metrics(
            config.metrics.as_ref(),
            base,
            metrics,
            crate::readiness::Readiness::of_chain(ready).with_revocation(live.revocation.clone()),
            &live.reloading,
        )
        .await?;
    if let Some(source) = source {
        running.watch_config(&live, source, config);
    }
    Ok(running)
}
