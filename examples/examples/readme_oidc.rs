//! The README's embedding example, compiled with the workspace: OIDC
//! authentication and the API server's client from the same configuration
//! types the `authproxy` binary reads, composed into one tower service.
//! (`tests` in this package checks that the README shows this code.)
//!
//! ```sh
//! cargo run -p authproxy-examples --example readme_oidc   # needs the files and the issuer it names
//! ```
//!
//! proxy-core features: `oidc` (`default-features = false, features = ["oidc"]` is enough).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // README:begin
    use proxy_core::config::{AuthenticationConfig, UpstreamConfig};

    // OIDC as kube-apiserver's AuthenticationConfiguration reads it; static tokens, LDAP and
    // client certificates are other keys of the same section.
    let authn: AuthenticationConfig = serde_yaml_ng::from_str(
        "jwt:\n- issuer: {url: 'https://idp.example.com', audiences: [kubernetes]}\n  \
           claimMappings: {username: {claim: email, prefix: ''}, groups: {claim: groups, prefix: 'oidc:'}}",
    )?;
    // The chain of authenticators; building it starts the issuers' key fetch.
    let chain = authn.build("authentication", ".".as_ref())?;
    // The API server, with the proxy's own credential (paths relative to the base folder).
    let upstream: UpstreamConfig = serde_yaml_ng::from_str(
        "{url: 'https://kube.example.com:6443', caFile: ca.crt, tokenFile: token}",
    )?;
    let upstream: proxy_core::upstream::Upstream = upstream.build("upstream", ".".as_ref())?;
    // authenticate → cap long-running requests → the caller's own --as → impersonate → forward
    let service = proxy_core::proxy_stack(chain, upstream);
    // README:end
    let _ = service; // serve it with hyper-util, or mount it in axum (see embed_in_axum.rs)
    Ok(())
}
