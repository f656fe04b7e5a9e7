//! A small JWT issuer of the test's own on loopback: OpenID discovery and a
//! JWKS over TLS from the test CA, and keys made by the test (RSA with and
//! without `alg` in their JWK, and P-256), so a test can sign any claims it
//! wants with any of them and have kube-apiserver and authproxy fetch the
//! same keys the same way.
//!
//! One issuer serves any number of issuer URLs: `https://127.0.0.1:PORT/<name>`
//! answers discovery at `/<name>/.well-known/openid-configuration` (its
//! `issuer` is that URL) and every one points at the same `/jwks`. An
//! `AuthenticationConfiguration` can so list several `jwt` entries, one per
//! configuration variant, all served by one process.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use crate::oidc::{generate_key, SigningKey};
use crate::pki::{self, TestPki};
use crate::require_tool;

/// The keys of a [`JwtIssuer`], by what their JWK says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKey {
    /// RSA, its JWK naming `alg: RS256`.
    Rsa,
    /// RSA, its JWK naming no `alg`.
    RsaWithoutAlg,
    /// P-256, its JWK naming `alg: ES256`.
    P256,
}

/// A running loopback issuer; it stops when dropped.
pub struct JwtIssuer {
    port: u16,
    keys: Vec<(IssuerKey, String, jsonwebtoken::EncodingKey)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwtIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The public half of `key` as a JWK (RFC 7517), with `kid`, `use` and
/// `alg` (if given) set; made by node's crypto, as the key was.
async fn public_jwk(key: &SigningKey, alg: Option<&str>) -> anyhow::Result<Value> {
    require_tool("node")?;
    let exported = crate::oidc::public_key_export(key, "{format:'jwk'}").await?;
    let mut jwk: Value = serde_json::from_str(&exported).context("node's JWK")?;
    jwk["kid"] = json!(key.kid);
    jwk["use"] = json!("sig");
    if let Some(alg) = alg {
        jwk["alg"] = json!(alg);
    }
    Ok(jwk)
}

impl JwtIssuer {
    /// Makes its keys in `dir` and starts serving discovery and the JWKS on
    /// a free loopback port, with a serving certificate from `pki`.
    pub async fn start(pki: &TestPki, dir: &Path) -> anyhow::Result<JwtIssuer> {
        let mut keys = Vec::new();
        let mut jwks = Vec::new();
        for (which, kind, kid, alg) in [
            (IssuerKey::Rsa, "rsa", "oracle-rsa", Some("RS256")),
            (IssuerKey::RsaWithoutAlg, "rsa", "oracle-rsa-any", None),
            (IssuerKey::P256, "ec", "oracle-p256", Some("ES256")),
        ] {
            let key = generate_key(dir, kind, kid).await?;
            jwks.push(public_jwk(&key, alg).await?);
            let encoding = match which {
                IssuerKey::P256 => jsonwebtoken::EncodingKey::from_ec_pem(key.pem.as_bytes())?,
                _ => jsonwebtoken::EncodingKey::from_rsa_pem(key.pem.as_bytes())?,
            };
            keys.push((which, key.kid, encoding));
        }
        let jwks = Bytes::from(json!({ "keys": jwks }).to_string());
        let tls = pki::server_config(&pki.issue_server("jwt-issuer")?, &[b"http/1.1"])?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let base: Arc<str> = format!("https://127.0.0.1:{port}").into();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, jwks, base) = (acceptor.clone(), jwks.clone(), base.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let answer = answer(&request, &base, &jwks);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(JwtIssuer { port, keys, task })
    }

    /// The issuer URL named `name`: `https://127.0.0.1:PORT/<name>`.
    pub fn issuer(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// Signs `claims` (any JSON object, as given) with RS256 and the RSA
    /// key.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        self.sign_with(claims, IssuerKey::Rsa, jsonwebtoken::Algorithm::RS256)
    }

    /// Signs `claims` with `key` and `alg` (any the key's type can make,
    /// whatever its JWK names), the header naming the key's id.
    pub fn sign_with(
        &self,
        claims: &Value,
        key: IssuerKey,
        alg: jsonwebtoken::Algorithm,
    ) -> anyhow::Result<String> {
        let (_, kid, encoding) = self
            .keys
            .iter()
            .find(|(which, _, _)| *which == key)
            .context("the issuer has every key")?;
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, encoding)?)
    }
}

/// Discovery for `/<name>/.well-known/openid-configuration`, the key set
/// for `/jwks`, 404 for anything else.
fn answer<B>(request: &http::Request<B>, base: &str, jwks: &Bytes) -> http::Response<Full<Bytes>> {
    let path = request.uri().path();
    let json = |body: Bytes| {
        let mut response = http::Response::new(Full::new(body));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    };
    if path == "/jwks" {
        return json(jwks.clone());
    }
    if let Some(name) = path.strip_suffix("/.well-known/openid-configuration") {
        let issuer = format!("{base}{name}");
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{base}/jwks"),
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        return json(Bytes::from(discovery.to_string()));
    }
    let mut response = http::Response::new(Full::new(Bytes::from_static(b"not found\n")));
    *response.status_mut() = http::StatusCode::NOT_FOUND;
    response
}
