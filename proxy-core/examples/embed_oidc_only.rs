//! The smallest embedding: an OIDC-authenticating, impersonating proxy for
//! the Kubernetes API, with proxy-core built for OIDC alone
//! (`proxy-core = { version = "…", default-features = false, features =
//! ["oidc"] }`: no LDAP, CEL, metrics, tunnel or webhook code is compiled).
//!
//! ```sh
//! OIDC_ISSUER=https://idp.example.com UPSTREAM_URL=https://127.0.0.1:6443 \
//! UPSTREAM_CA_FILE=ca.crt UPSTREAM_TOKEN_FILE=token \
//! cargo run -p proxy-core --example embed_oidc_only --no-default-features --features oidc
//! ```
//!
//! It listens on plain HTTP on loopback to stay short; a real server puts
//! TLS in front (`proxy_core::tls`).

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use proxy_core::config::{AuthenticationConfig, UpstreamConfig};
use proxy_core::upstream::Upstream;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("set {name}").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The issuer as kube-apiserver's AuthenticationConfiguration writes it.
    let authn: AuthenticationConfig = serde_yaml_ng::from_str(&format!(
        "jwt:\n- issuer: {{url: '{}', audiences: [kubernetes]}}\n  \
           claimMappings: {{username: {{claim: email, prefix: ''}}, groups: {{claim: groups, prefix: 'oidc:'}}}}",
        env("OIDC_ISSUER")?
    ))?;
    let upstream: UpstreamConfig = serde_yaml_ng::from_str(&format!(
        "{{url: '{}', caFile: '{}', tokenFile: '{}'}}",
        env("UPSTREAM_URL")?,
        env("UPSTREAM_CA_FILE")?,
        env("UPSTREAM_TOKEN_FILE")?
    ))?;
    // Both builders answer with one error type (`proxy_core::config::BuildError`).
    let chain = authn.build("authentication", ".".as_ref())?;
    let upstream: Upstream = upstream.build("upstream", ".".as_ref())?;
    let proxy = proxy_core::proxy_stack(chain, upstream);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("proxying http://127.0.0.1:8080 to the API server");
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(proxy.clone());
        tokio::spawn(async move {
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                eprintln!("connection ended: {error}");
            }
        });
    }
}
