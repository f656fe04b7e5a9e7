//! An axum server that is also an OIDC-authenticating proxy for the
//! Kubernetes API, from the configuration types the `authproxy` binary reads:
//! `/readyz` says whether the issuers' keys are loaded, `/whoami` is the
//! application's own handler behind the same authentication, and every other
//! path is proxied (authenticate → impersonate → forward).
//!
//! ```sh
//! OIDC_ISSUER=https://idp.example.com UPSTREAM_URL=https://127.0.0.1:6443 \
//! UPSTREAM_CA_FILE=ca.crt UPSTREAM_TOKEN_FILE=token \
//! cargo run -p authproxy-examples --example embed_oidc
//! ```
//!
//! proxy-core features: `oidc` (`default-features = false, features = ["oidc"]` is enough).

use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::StatusCode;
use proxy_core::config::{AuthenticationConfig, UpstreamConfig};
use proxy_core::layer::{AuthnLayer, ProxyBodyLayer};
use proxy_core::upstream::Upstream;
use proxy_core::Identity;
use tower::ServiceBuilder;
use tower::ServiceExt as _;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("set {name}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // OIDC as kube-apiserver's AuthenticationConfiguration reads it.
    let authn: AuthenticationConfig = serde_yaml_ng::from_str(&format!(
        "jwt:\n- issuer: {{url: '{}', audiences: [kubernetes]}}\n  \
           claimMappings: {{username: {{claim: email, prefix: ''}}, groups: {{claim: groups, prefix: 'oidc:'}}}}",
        env("OIDC_ISSUER")?
    ))?;
    let chain = authn.build("authentication", ".".as_ref())?;
    let upstream: UpstreamConfig = serde_yaml_ng::from_str(&format!(
        "{{url: '{}', caFile: '{}', tokenFile: '{}'}}",
        env("UPSTREAM_URL")?,
        env("UPSTREAM_CA_FILE")?,
        env("UPSTREAM_TOKEN_FILE")?
    ))?;
    let upstream: Upstream<Body> = upstream.build("upstream", ".".as_ref())?;
    // The proxy, its responses as axum's bodies.
    let proxy = proxy_core::proxy_stack(chain.clone(), upstream)
        .map_response(|response| response.map(Body::new));
    // Readiness: the chain is ready once every issuer's keys are loaded;
    // each issuer says how its keys stand (and why a fetch failed).
    let ready = chain.clone();
    let readyz = get(move || {
        let status = if ready.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let issuers: Vec<String> = ready.issuers().iter().map(ToString::to_string).collect();
        async move { (status, issuers.join("\n") + "\n") }
    });
    let app = Router::new()
        .route(
            "/whoami",
            get(|Extension(identity): Extension<Arc<Identity>>| async move {
                format!("{:?}\n", identity.user())
            }),
        )
        // The application's own handlers behind the same authentication.
        .route_layer(
            ServiceBuilder::new()
                .layer(AuthnLayer::new(chain))
                .layer(ProxyBodyLayer::new()),
        )
        .route("/readyz", readyz)
        .fallback_service(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://127.0.0.1:8080 (/readyz, /whoami; everything else is proxied)");
    axum::serve(listener, app).await?;
    Ok(())
}
