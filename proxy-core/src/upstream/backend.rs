//! How the proxy reaches one cluster's API server: directly with its own
//! client ([`Upstream`]), or through the tunnels its agents dialled
//! ([`AgentService`]). The layers above see one service either way.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};

use super::Upstream;
use crate::body::ProxyBody;
#[cfg(feature = "tunnel")]
use crate::tunnel::AgentService;
use crate::BoxError;

/// One cluster's way to its API server (see the module docs).
#[derive(Debug)]
pub enum Backend<B = hyper::body::Incoming> {
    /// The proxy connects to the API server.
    Direct(Upstream<B>),
    /// Through the cluster's agent tunnels.
    #[cfg(feature = "tunnel")]
    Agents(AgentService<B>),
}

impl<B> Clone for Backend<B> {
    fn clone(&self) -> Self {
        match self {
            Backend::Direct(upstream) => Backend::Direct(upstream.clone()),
            #[cfg(feature = "tunnel")]
            Backend::Agents(agents) => Backend::Agents(agents.clone()),
        }
    }
}

impl<B> From<Upstream<B>> for Backend<B> {
    fn from(upstream: Upstream<B>) -> Self {
        Backend::Direct(upstream)
    }
}

#[cfg(feature = "tunnel")]
impl<B> From<AgentService<B>> for Backend<B> {
    fn from(agents: AgentService<B>) -> Self {
        Backend::Agents(agents)
    }
}

impl<B> tower_service::Service<Request<B>> for Backend<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = <Upstream<B> as tower_service::Service<Request<B>>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self {
            Backend::Direct(upstream) => upstream.call(req),
            #[cfg(feature = "tunnel")]
            Backend::Agents(agents) => agents.call(req),
        }
    }
}
