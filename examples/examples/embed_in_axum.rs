//! The proxy mounted in an axum router: `/hello` is the application's own
//! route, every other path goes through authenticate → impersonate → forward.
//!
//! ```sh
//! UPSTREAM_URL=https://127.0.0.1:6443 UPSTREAM_CA_FILE=ca.crt UPSTREAM_TOKEN_FILE=token \
//! TOKENS_CSV=tokens.csv cargo run -p authproxy-examples --example embed_in_axum
//! ```
//!
//! proxy-core features: none (static tokens and the layers are always built:
//! `default-features = false` is enough).

use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use proxy_core::authn::StaticTokens;
use proxy_core::upstream::{Upstream, UpstreamOptions};
use proxy_core::{AuthnLayer, Chain, ImpersonateLayer};
use tower::ServiceExt;
use tower_layer::Layer;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("set {name}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tokens = StaticTokens::load_and_watch(env("TOKENS_CSV")?.as_ref(), Duration::from_secs(1))?;
    // `Upstream` is generic over the request body: here axum's `Body`.
    let upstream: Upstream<Body> = Upstream::new(
        UpstreamOptions::new(env("UPSTREAM_URL")?.parse()?)
            .with_ca_pem(std::fs::read(env("UPSTREAM_CA_FILE")?)?)
            .with_token_file(env("UPSTREAM_TOKEN_FILE")?, Duration::from_secs(1)),
    )?;
    // The layers in the order a request meets them.
    let proxy = AuthnLayer::new(Chain::new(vec![tokens]))
        .layer(ImpersonateLayer::new().layer(upstream))
        .map_response(|response| response.map(Body::new));

    let app = Router::new()
        .route("/hello", get(|| async { "hello from the application\n" }))
        .fallback_service(proxy);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://127.0.0.1:8080 (/hello is local; everything else is proxied)");
    axum::serve(listener, app).await?;
    Ok(())
}
