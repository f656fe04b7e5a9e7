//! A `via: agent` cluster's service: each request goes as one HTTP/2
//! stream through a tunnel of the cluster.
//!
//! - Tunnels are taken in turn. A request that could not be sent because
//!   its tunnel had just closed is sent on another one; one that was sent
//!   and lost with its tunnel is answered `502` (it may have been carried
//!   out, so it is not repeated).
//! - No tunnel connected: `503` `Status` "no agent of cluster `<name>` is
//!   connected".
//! - Upgrades (SPDY/3.1 or WebSocket: exec, attach, port-forward) become an
//!   extended CONNECT (RFC 8441) whose `:protocol` is the `Upgrade` token and
//!   whose own method travels in [`super::METHOD_HEADER`]; the agent upgrades
//!   against its API server and answers `200` with the server's `101`
//!   headers; the caller gets its `101` and the bytes are copied both ways.
//! - Bodies stream both ways; nothing is buffered.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::registry::{ClusterAgents, TunnelId};
use super::{TunnelBody, METHOD_HEADER};
use crate::body::{Hold, ProxyBody};
use crate::impersonate::is_upgrade;
use crate::status::{Reason, Status};
use crate::BoxError;

/// Forwards a cluster's requests through its agents' tunnels (see the
/// module docs). Never fails: problems become `Status` responses.
pub struct AgentService<B = Incoming> {
    agents: Arc<ClusterAgents>,
    _body: PhantomData<fn(B)>,
}

impl<B> AgentService<B> {
    /// The service of the cluster whose tunnels `agents` holds.
    pub fn new(agents: Arc<ClusterAgents>) -> Self {
        AgentService {
            agents,
            _body: PhantomData,
        }
    }

    /// The cluster's tunnels.
    pub fn agents(&self) -> &Arc<ClusterAgents> {
        &self.agents
    }
}

impl<B> Clone for AgentService<B> {
    fn clone(&self) -> Self {
        AgentService::new(self.agents.clone())
    }
}

impl<B> std::fmt::Debug for AgentService<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("cluster", &self.agents.name())
            .finish()
    }
}

impl<B> tower_service::Service<Request<B>> for AgentService<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let agents = self.agents.clone();
        agents.requests.inc();
        if is_upgrade(req.headers()) {
            Box::pin(async move { Ok(forward_upgrade(agents, req).await) })
        } else {
            Box::pin(async move { Ok(forward(agents, req).await) })
        }
    }
}

/// The request as it travels in the tunnel: HTTP/2, an absolute URI whose
/// authority is the cluster name (the agent keeps only the path), no
/// hop-by-hop headers.
fn tunnel_request<B>(agents: &ClusterAgents, req: Request<B>) -> Result<Request<B>, Status> {
    let (mut parts, body) = req.into_parts();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTPS);
    uri.authority = http::uri::Authority::try_from(agents.name()).ok();
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    parts.uri = Uri::from_parts(uri).map_err(|_| {
        Status::failure(
            StatusCode::BAD_REQUEST,
            Reason::BadRequest,
            "request path cannot be forwarded",
        )
    })?;
    parts.version = Version::HTTP_2;
    for name in crate::impersonate::HOP_BY_HOP.iter().chain([&header::HOST]) {
        parts.headers.remove(name);
    }
    parts.headers.remove(METHOD_HEADER);
    Ok(Request::from_parts(parts, body))
}

fn boxed<B>(body: B) -> TunnelBody
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Sends `req` on a tunnel of the cluster, trying the next one while a
/// tunnel turns out closed before the request left.
async fn send(
    agents: &ClusterAgents,
    mut req: Request<TunnelBody>,
) -> Result<Response<Incoming>, Status> {
    let mut tried: Vec<TunnelId> = Vec::new();
    loop {
        let Some((id, mut sender)) = agents.pick(&tried) else {
            return Err(if tried.is_empty() {
                no_agent(agents.name())
            } else {
                lost(agents.name())
            });
        };
        tried.push(id);
        match sender.try_send_request(req).await {
            Ok(response) => return Ok(response),
            Err(mut error) => match error.take_message() {
                Some(unsent) => {
                    tracing::debug!(cluster = agents.name(), tunnel = id, error = %error.error(),
                        "tunnel closed before the request left; trying another");
                    req = unsent;
                }
                None => {
                    tracing::warn!(cluster = agents.name(), tunnel = id, error = %error.error(),
                        "request through the agent tunnel failed");
                    return Err(lost(agents.name()));
                }
            },
        }
    }
}

/// The `503` when no agent of `cluster` is connected.
pub fn no_agent(cluster: &str) -> Status {
    Status::failure(
        StatusCode::SERVICE_UNAVAILABLE,
        Reason::ServiceUnavailable,
        format!("no agent of cluster {cluster} is connected"),
    )
}

fn lost(cluster: &str) -> Status {
    Status::failure(
        StatusCode::BAD_GATEWAY,
        Reason::ServiceUnavailable,
        format!(
            "the tunnel to the agent of cluster {cluster} closed while the request was in flight"
        ),
    )
}

fn strip_response_hop_headers(headers: &mut http::HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
    ] {
        headers.remove(name);
    }
}

async fn forward<B>(agents: Arc<ClusterAgents>, mut req: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // The long-running layer keeps its own hold on the response body.
    req.extensions_mut().remove::<Hold>();
    if agents.connected() == 0 {
        // Refused before anything of the body was read.
        let refusal = no_agent(agents.name()).into_response();
        return crate::refusal::with_unread_body(refusal, req.into_body());
    }
    let req = match tunnel_request(&agents, req) {
        Ok(req) => req.map(boxed),
        Err(status) => return status.into_response(),
    };
    match send(&agents, req).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_response_hop_headers(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::from(body))
        }
        Err(status) => status.into_response(),
    }
}

async fn forward_upgrade<B>(agents: Arc<ClusterAgents>, mut req: Request<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let caller = hyper::upgrade::on(&mut req);
    // Kept (a long-running permit, say) until the tunnel closes.
    let hold = req.extensions_mut().remove::<Hold>();
    let recording = req.extensions_mut().remove::<crate::tap::UpgradeTaps>();
    let Some(protocol) = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').next().unwrap_or_default().trim().to_owned())
        .filter(|p| !p.is_empty())
    else {
        return Status::failure(
            StatusCode::BAD_REQUEST,
            Reason::BadRequest,
            "the Upgrade header is not usable",
        )
        .into_response();
    };
    let method = req.method().clone();
    let req = match tunnel_request(&agents, req) {
        Ok(req) => req,
        Err(status) => return status.into_response(),
    };
    let (mut parts, _body) = req.into_parts();
    parts.method = Method::CONNECT;
    if let Ok(value) = HeaderValue::from_str(method.as_str()) {
        parts.headers.insert(METHOD_HEADER, value);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .extensions
        .insert(hyper::ext::Protocol::from(protocol.as_str()));
    let empty = http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = match send(&agents, Request::from_parts(parts, empty)).await {
        Ok(response) => response,
        Err(status) => return status.into_response(),
    };
    if response.status() != StatusCode::OK {
        // The API server's refusal (a 400 for a pod without a node, say).
        let (mut parts, body) = response.into_parts();
        strip_response_hop_headers(&mut parts.headers);
        return Response::from_parts(parts, ProxyBody::from(body));
    }
    let tunnel = hyper::upgrade::on(&mut response);
    let cluster = agents.name().to_owned();
    let taps = match crate::tap::start(recording, response.headers(), &protocol) {
        Ok(taps) => taps,
        Err(refusal) => {
            // The stream through the tunnel closes with its response, unused.
            drop((tunnel, hold));
            let mut refusal = refusal.into_response();
            refusal.extensions_mut().insert(crate::status::NotUpstream);
            return refusal;
        }
    };
    tokio::spawn(async move {
        match tokio::try_join!(caller, tunnel) {
            Ok((caller, tunnel)) => {
                let (from_client, from_server) = taps.unzip();
                let mut caller = crate::tap::Tapped::new(TokioIo::new(caller), from_client);
                let mut tunnel = crate::tap::Tapped::new(TokioIo::new(tunnel), from_server);
                if let Err(error) = crate::upstream::join_upgraded(&mut caller, &mut tunnel).await {
                    tracing::debug!(%cluster, %error, "upgraded stream through the tunnel ended with an error");
                }
            }
            Err(error) => {
                tracing::warn!(%cluster, %error, "protocol upgrade through the tunnel failed")
            }
        }
        drop(hold);
    });
    let (mut parts, _body) = response.into_parts();
    parts.status = StatusCode::SWITCHING_PROTOCOLS;
    parts.version = Version::HTTP_11;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&protocol) {
        parts.headers.insert(header::UPGRADE, value);
    }
    Response::from_parts(parts, ProxyBody::empty())
}
