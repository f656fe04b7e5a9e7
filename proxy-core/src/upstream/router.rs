//! Many API servers behind one proxy: [`Router`] sends
//! `/k8s/clusters/<name>/<kube path>` to the cluster named `<name>` with the
//! prefix removed, as Rancher's authentication proxy does, and every other
//! path to the single default upstream (when there is one).
//!
//! The path is read the way the API server behind it will read it:
//! dot-segments are resolved (as kube-apiserver resolves them) before the
//! prefix is split off, and a path whose dot-segments would move it into,
//! out of or between clusters (`/k8s/clusters/a/../b/api`,
//! `/k8s/clusters/a/../../api`, `/k8s/./clusters/b/api`) is refused with a
//! 400 `Status`: it names one cluster as sent and another once resolved, and
//! no reading of it is both faithful and safe. A cluster name with a
//! percent escape (`a%2fb`, `%61`) is refused too. An unknown name is a 404
//! `Status` (reason `NotFound`).
//!
//! The router puts the chosen [`ClusterName`] in the request extensions, so
//! layers below it (audit, metrics) can tell which cluster served a request.
//!
//! ```
//! use proxy_core::upstream::router::Router;
//! use tower_service::Service;
//!
//! # async fn run() {
//! let cluster = |name: &'static str| {
//!     tower::service_fn(move |req: http::Request<()>| async move {
//!         let body = format!("{name} {}", req.uri());
//!         Ok::<_, std::convert::Infallible>(http::Response::new(proxy_core::ProxyBody::full(body)))
//!     })
//! };
//! let mut router = Router::new(None, vec![("east".into(), cluster("east"))]).unwrap();
//! let response = router
//!     .call(http::Request::get("/k8s/clusters/east/api/v1/pods").body(()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.status(), 200); // "east /api/v1/pods"
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, Uri};
use tower_service::Service;

use crate::body::ProxyBody;
use crate::path;
pub use crate::path::PathError;
use crate::status::{Reason, Status};

/// The path prefix of a named cluster, without its trailing `/`.
pub const CLUSTER_PREFIX: &str = "/k8s/clusters";

/// Longest cluster name (a DNS label's limit).
pub const MAX_NAME_LENGTH: usize = 63;

/// The cluster a request was routed to, in the request extensions below a
/// [`Router`] that has named clusters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterName(pub Arc<str>);

/// Why a cluster name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty or longer than [`MAX_NAME_LENGTH`].
    #[error("must be 1 to {MAX_NAME_LENGTH} characters long")]
    Length,
    /// The name holds something other than `a-z`, `0-9` and inner `-`.
    #[error(
        "must be lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    Characters,
}

/// Checks that `name` can be a cluster name: a DNS label (`a-z`, `0-9`,
/// `-`, at most 63 characters, starting and ending with a letter or digit),
/// so it is one path segment that needs no escaping.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME_LENGTH {
        return Err(NameError::Length);
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let bytes = name.as_bytes();
    if !bytes.iter().all(|&b| allowed(b)) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(NameError::Characters);
    }
    Ok(())
}

/// A problem building a [`Router`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// A cluster name is not usable.
    #[error("cluster name {name:?}: {problem}")]
    Name {
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: NameError,
    },
    /// Two clusters have the same name.
    #[error("cluster name {0:?} is used twice")]
    Duplicate(String),
}

/// Where a request path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// Not a cluster path: to the default upstream, unchanged.
    Default,
    /// To the cluster `name`, with this path and query (the prefix removed).
    Cluster {
        /// The cluster name as it appears in the path.
        name: &'a str,
        /// `/<rest>` of the path, dot-segments removed, and the query.
        path_and_query: String,
    },
}

/// Why a request path cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The path cannot be forwarded at all.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Dot-segments move the path into, out of or between clusters.
    #[error("the request path names another cluster once its dot-segments are resolved")]
    CrossesClusters,
    /// The cluster name holds a percent escape.
    #[error("the cluster name in the request path must not be percent-encoded")]
    EncodedName,
}

/// The cluster name and the rest of `path` when it is below
/// [`CLUSTER_PREFIX`] (`/k8s/clusters` alone has an empty name).
fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(CLUSTER_PREFIX)?;
    if rest.is_empty() {
        return Some(("", ""));
    }
    let rest = rest.strip_prefix('/')?;
    Some(match rest.find('/') {
        Some(end) => (&rest[..end], &rest[end..]),
        None => (rest, ""),
    })
}

/// The path of a request to a named cluster with [`CLUSTER_PREFIX`] and the
/// name removed, as the API server behind it sees it; other paths as they
/// are. Used to read what a request is about (verb, resource) before it is
/// routed.
pub fn strip_cluster_prefix(path: &str) -> &str {
    match split(path) {
        Some((_, "")) => "/",
        Some((_, rest)) => rest,
        None => path,
    }
}

/// Reads where `path_and_query` goes (see the module docs).
pub fn route(path_and_query: &str) -> Result<Route<'_>, RouteError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let normalized = path::normalize(path)?;
    let as_sent = split(path).map(|(name, _)| name);
    let Some((name, rest)) = split(&normalized) else {
        if as_sent.is_some() {
            return Err(RouteError::CrossesClusters);
        }
        return Ok(Route::Default);
    };
    // The name as sent: borrowed from `path_and_query`, not from `normalized`.
    let Some(name_as_sent) = as_sent.filter(|sent| *sent == name) else {
        return Err(RouteError::CrossesClusters);
    };
    if name.contains('%') {
        return Err(RouteError::EncodedName);
    }
    let rest = if rest.is_empty() { "/" } else { rest };
    let mut out = String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(rest);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(Route::Cluster {
        name: name_as_sent,
        path_and_query: out,
    })
}

/// Sends each request to the default service or to a named cluster's
/// service by its path (see the module docs). Never fails itself: a path it
/// cannot route is answered with a `Status`.
///
/// With no named clusters every request goes to the default service
/// unchanged, `/k8s/clusters/...` included (a single upstream behind a
/// Rancher-style prefix of its own keeps working).
pub struct Router<S> {
    routes: Arc<Routes<S>>,
}

struct Routes<S> {
    default: Option<S>,
    clusters: HashMap<Arc<str>, S>,
}

impl<S> Clone for Router<S> {
    fn clone(&self) -> Self {
        Router {
            routes: self.routes.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.routes.clusters.keys().map(|n| &**n).collect();
        names.sort_unstable();
        f.debug_struct("Router")
            .field("default", &self.routes.default.is_some())
            .field("clusters", &names)
            .finish()
    }
}

impl<S> Router<S> {
    /// Every request to `service`, unchanged.
    pub fn single(service: S) -> Self {
        Router {
            routes: Arc::new(Routes {
                default: Some(service),
                clusters: HashMap::new(),
            }),
        }
    }

    /// Requests below `/k8s/clusters/<name>` to the cluster `name`, others
    /// to `default` (404 without one). Names must pass [`validate_name`] and
    /// be distinct.
    pub fn new(default: Option<S>, clusters: Vec<(String, S)>) -> Result<Self, RouterError> {
        let mut map = HashMap::with_capacity(clusters.len());
        for (name, service) in clusters {
            validate_name(&name).map_err(|problem| RouterError::Name {
                name: name.clone(),
                problem,
            })?;
            if map
                .insert(Arc::<str>::from(name.as_str()), service)
                .is_some()
            {
                return Err(RouterError::Duplicate(name));
            }
        }
        Ok(Router {
            routes: Arc::new(Routes {
                default,
                clusters: map,
            }),
        })
    }

    /// The names of the clusters, sorted.
    pub fn cluster_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.clusters.keys().map(|n| &**n).collect();
        names.sort_unstable();
        names
    }
}

/// The refusal of `req`, which carries its unread body ([`crate::refusal`]).
fn answer<E: Send + 'static, B: Send + 'static>(
    status: Status,
    req: Request<B>,
) -> RouterFuture<E> {
    let refusal = crate::refusal::with_unread_body(status.into_response(), req.into_body());
    Box::pin(std::future::ready(Ok(refusal)))
}

/// The response future of [`Router`].
pub type RouterFuture<E> = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, E>> + Send>>;

/// Calls a clone of `service` once it is ready.
fn call_when_ready<S, B>(service: &S, req: Request<B>) -> RouterFuture<S::Error>
where
    S: Service<Request<B>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    let mut service = service.clone();
    Box::pin(async move {
        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(req).await
    })
}

impl<S, B> Service<Request<B>> for Router<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = RouterFuture<S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Each request is sent to a clone of its route's service, polled there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let routes = &self.routes;
        if routes.clusters.is_empty() {
            return match &routes.default {
                Some(service) => call_when_ready(service, req),
                None => answer(not_found("no upstream is configured".into()), req),
            };
        }
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let (name, path_and_query) = match route(path_and_query) {
            Ok(Route::Default) => {
                return match &routes.default {
                    Some(service) => call_when_ready(service, req),
                    None => answer(
                        not_found(format!(
                            "the path names no cluster: use {CLUSTER_PREFIX}/<name>/"
                        )),
                        req,
                    ),
                }
            }
            Ok(Route::Cluster {
                name,
                path_and_query,
            }) => (name, path_and_query),
            Err(error) => {
                let status = Status::failure(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    error.to_string(),
                );
                return answer(status, req);
            }
        };
        let Some((name, service)) = routes.clusters.get_key_value(name) else {
            // Echoed only when it is a name (the caller's bytes otherwise).
            let message = match validate_name(name) {
                Ok(()) => format!("cluster {name:?} is not served by this proxy"),
                Err(_) => "the path names no cluster served by this proxy".to_owned(),
            };
            return answer(not_found(message), req);
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = match path_and_query.parse() {
            Ok(p) => Some(p),
            Err(_) => return answer(unforwardable(), req),
        };
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return answer(unforwardable(), req),
        }
        req.extensions_mut().insert(ClusterName(name.clone()));
        call_when_ready(service, req)
    }
}

fn unforwardable() -> Status {
    Status::failure(
        StatusCode::BAD_REQUEST,
        Reason::BadRequest,
        "request path cannot be forwarded",
    )
}

fn not_found(message: String) -> Status {
    Status::failure(StatusCode::NOT_FOUND, Reason::NotFound, message)
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
