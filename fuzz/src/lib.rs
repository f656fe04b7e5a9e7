//! Fixtures the fuzz targets share: a runtime, signing keys the targets sign
//! fuzzed headers and claims with (so the input reaches the code behind the
//! signature check), and a folder of files a fuzzed config may name.
//!
//! Fixtures are made once per process; they panic when they cannot be made,
//! which is a broken machine, not a finding.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// Separates the parts of a structured input (`header ␞ claims`).
pub const RECORD: u8 = 0x1e;

/// The issuer the OIDC fixtures trust. Nothing listens there: a key fetch
/// fails at once and the preloaded keys stay.
pub const OIDC_ISSUER: &str = "https://127.0.0.1:9/idp";

/// Splits `data` at the first [`RECORD`] byte.
pub fn split(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = data.iter().position(|&b| b == RECORD)?;
    Some((&data[..at], &data[at + 1..]))
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
}

/// Runs `future` to completion on this thread's runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(future))
}

/// Signing keys and the JWKS that publishes their public halves.
pub struct Keys {
    es256: EncodingKey,
    eddsa: EncodingKey,
    /// PKCS#8 PEM of the P-256 key (the proxy's issued-token signing key).
    pub es256_pem: String,
    /// `{"keys":[...]}` with `ec-1` (ES256) and `ed-1` (EdDSA).
    pub jwks: String,
}

/// The process's keys.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key");
        let ec_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng)
            .expect("P-256 key");
        let point = ec_pair.public_key().as_ref();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        let ed_pair = Ed25519KeyPair::from_pkcs8(ed.as_ref()).expect("Ed25519 key");
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "ec-1",
             "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])},
            {"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": "ed-1",
             "x": URL_SAFE_NO_PAD.encode(ed_pair.public_key().as_ref())},
        ]});
        let b64 = base64::engine::general_purpose::STANDARD.encode(ec.as_ref());
        Keys {
            es256: EncodingKey::from_ec_der(ec.as_ref()),
            eddsa: EncodingKey::from_ed_der(ed.as_ref()),
            es256_pem: format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
            jwks: jwks.to_string(),
        }
    })
}

/// A compact JWS of `header` and `claims` exactly as given, signed with the
/// key the header's `alg` names (`EdDSA`, else the P-256 key). The header's
/// `kid` is replaced by `kid` when it is the text `"fuzz-kid"`.
pub fn sign(header: &[u8], claims: &[u8], kid: &str) -> String {
    let keys = keys();
    let mut header = header.to_vec();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&header).ok();
    if let Some(serde_json::Value::Object(mut map)) = parsed {
        if map.get("kid").and_then(|k| k.as_str()) == Some("fuzz-kid") {
            map.insert("kid".into(), kid.into());
            header = serde_json::Value::Object(map).to_string().into_bytes();
        }
    }
    let ed = serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(|a| a == "EdDSA"))
        .unwrap_or(false);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let (key, alg) = if ed {
        (&keys.eddsa, Algorithm::EdDSA)
    } else {
        (&keys.es256, Algorithm::ES256)
    };
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap_or_default();
    format!("{message}.{signature}")
}

/// A folder holding every file a fuzzed config or kubeconfig may name:
/// `tokens.csv`, `signing.pem`, `ca.crt`, `tls.crt`, `tls.key`, `token`,
/// `bind-password`, `kubeconfig`, `authentication.yaml`.
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("authproxy-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fixture folder");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let files = [
            ("tokens.csv", "s3cret-token,alice,1001,\"devs,ops\"\n".to_owned()),
            ("signing.pem", keys().es256_pem.clone()),
            ("ca.crt", cert.cert.pem()),
            ("tls.crt", cert.cert.pem()),
            ("tls.key", cert.key_pair.serialize_pem()),
            ("token", "upstream-token\n".to_owned()),
            ("bind-password", "bind-secret\n".to_owned()),
            (
                "kubeconfig",
                "apiVersion: v1\nkind: Config\ncurrent-context: one\nclusters:\n- name: c1\n  cluster: {server: 'https://127.0.0.1:6443', certificate-authority: ca.crt}\nusers:\n- name: u1\n  user: {tokenFile: token}\ncontexts:\n- name: one\n  context: {cluster: c1, user: u1}\n".to_owned(),
            ),
            (
                "authentication.yaml",
                "apiVersion: apiserver.config.k8s.io/v1beta1\nkind: AuthenticationConfiguration\njwt:\n- issuer: {url: 'https://idp.example', audiences: [kube]}\n  claimMappings: {username: {claim: email, prefix: ''}}\n".to_owned(),
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("fixture file");
        }
        dir
    })
}

/// True when every path `text` can spell stays inside [`fixture_dir`]: no
/// `/` (beyond a URL's `://`) and no `\` (so no YAML escape spells one).
/// Keeps a fuzzed config from reading `/dev/zero` or a FIFO.
pub fn confined(text: &str) -> bool {
    let rest = text.replace("://", "");
    !rest.contains('/') && !rest.contains('\\')
}
