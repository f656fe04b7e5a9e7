//! proxy-core's layers composed the ways an axum embedder composes them:
//! protecting the embedder's own handlers (`route_layer`), under
//! `nest_service` and `fallback_service`, and with any tower middleware
//! (tower-http's `TraceLayer`) between `AuthnLayer` and `ImpersonateLayer`.
//! Each request is answered in process (no network).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use proxy_core::authn::StaticTokens;
use proxy_core::layer::{AuthnLayer, ImpersonateLayer, ProxyBodyLayer};
use proxy_core::{Chain, Identity, ProxyBody};
use tower::{ServiceBuilder, ServiceExt as _};

fn chain() -> Chain {
    let tokens = StaticTokens::from_csv("alice-token,alice,1001,\"devs\"\n", "compose")
        .expect("a valid token table");
    Chain::new(vec![Arc::new(tokens)])
}

/// The embedder's own handler: greets whoever `AuthnLayer` authenticated.
async fn hello(Extension(identity): Extension<Arc<Identity>>) -> String {
    format!("hello {}", identity.user().username)
}

async fn answer(app: Router, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .oneshot(request.body(Body::empty()).expect("a request"))
        .await
        .expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A 401 is kube's `Status`, not an empty body.
fn assert_refused((status, body): (StatusCode, String)) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("a JSON Status");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
}

#[tokio::test]
async fn authn_protects_an_embedders_own_handlers_as_a_route_layer() {
    let app = Router::new()
        .route("/hello", get(hello))
        .route_layer(
            ServiceBuilder::new()
                .layer(AuthnLayer::new(chain()))
                .layer(ProxyBodyLayer::new()),
        )
        .route("/open", get(|| async { "open" }));
    assert_eq!(
        answer(app.clone(), "/hello", Some("alice-token")).await,
        (StatusCode::OK, "hello alice".to_owned())
    );
    assert_refused(answer(app.clone(), "/hello", None).await);
    assert_refused(answer(app.clone(), "/hello", Some("wrong")).await);
    assert_eq!(
        answer(app, "/open", None).await,
        (StatusCode::OK, "open".to_owned())
    );
}

/// What the API server would see: the impersonation headers set by
/// `ImpersonateLayer`, echoed by a stand-in for the upstream.
async fn echo_identity(request: Request<Body>) -> Result<Response<ProxyBody>, Infallible> {
    let user = request
        .headers()
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let groups: Vec<&str> = request
        .headers()
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Ok(Response::new(ProxyBody::full(format!(
        "{user} {}",
        groups.join(",")
    ))))
}

#[tokio::test]
async fn any_tower_middleware_sits_between_the_layers_under_nest_and_fallback() {
    // AuthnLayer → TraceLayer → ImpersonateLayer → the upstream stand-in.
    let stack = ServiceBuilder::new()
        .layer(AuthnLayer::new(chain()))
        .layer(ProxyBodyLayer::new())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(ImpersonateLayer::new())
        .service_fn(echo_identity);
    let nested = Router::new().nest_service("/k8s", stack.clone());
    let (status, body) = answer(nested.clone(), "/k8s/api", Some("alice-token")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice devs"));
    assert_refused(answer(nested, "/k8s/api", None).await);
    let fallback = Router::new()
        .route("/own", get(|| async { "the application's" }))
        .fallback_service(stack);
    let (status, body) = answer(fallback.clone(), "/api/v1/pods", Some("alice-token")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "alice devs"));
    assert_refused(answer(fallback.clone(), "/api/v1/pods", None).await);
    assert_eq!(
        answer(fallback, "/own", None).await,
        (StatusCode::OK, "the application's".to_owned())
    );
}
