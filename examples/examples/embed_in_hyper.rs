//! The whole proxy stack (authenticate → impersonate → forward) served by a
//! plain hyper server.
//!
//! For brevity this listens without TLS on loopback; a real deployment
//! terminates TLS in front of the stack as `authproxy serve` does.
//!
//! ```sh
//! UPSTREAM_URL=https://127.0.0.1:6443 UPSTREAM_CA_FILE=ca.crt UPSTREAM_TOKEN_FILE=token \
//! TOKENS_CSV=tokens.csv cargo run -p authproxy-examples --example embed_in_hyper
//! ```
//!
//! proxy-core features: none (static tokens and the layers are always built:
//! `default-features = false` is enough).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use proxy_core::authn::StaticTokens;
use proxy_core::upstream::{Upstream, UpstreamOptions};
use proxy_core::{proxy_stack, Chain};

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("set {name}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tokens = StaticTokens::load_and_watch(env("TOKENS_CSV")?.as_ref(), Duration::from_secs(1))?;
    let chain = Chain::new(vec![tokens]);
    let upstream: Upstream = Upstream::new(
        UpstreamOptions::new(env("UPSTREAM_URL")?.parse()?)
            .with_ca_pem(std::fs::read(env("UPSTREAM_CA_FILE")?)?)
            .with_token_file(env("UPSTREAM_TOKEN_FILE")?, Duration::from_secs(1)),
    )?;
    let stack = Arc::new(proxy_stack(chain, upstream));

    // hyper applies its HTTP/1 header-read timeout and HTTP/2 PINGs only
    // with a timer: without one, a client that sends half a request head
    // holds its connection for good. (`authproxy serve` also caps
    // connections and closes idle ones; see its `limits:` settings.)
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://127.0.0.1:8080");
    loop {
        let (tcp, _) = listener.accept().await?;
        let service = TowerToHyperService::new(proxy_stack_clone(&stack));
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Each connection gets its own clone of the stack (cheap: it is all `Arc`s).
fn proxy_stack_clone(stack: &Arc<proxy_core::ProxyStack>) -> proxy_core::ProxyStack {
    proxy_core::ProxyStack::clone(stack)
}
