//! The IdP's documents: an OpenID discovery document and a JWKS, as the key
//! loader reads them. An input `discovery ␞ jwks` feeds both; any other input
//! is tried as each. Nothing may panic.
//!
//! Expected finding while JWKS keys without `alg` are not handled:
//! jsonwebtoken's `Jwk::is_supported` unwraps the missing `alg`.
#![no_main]

use std::sync::{Arc, OnceLock};

use authproxy_fuzz::{block_on, split, OIDC_ISSUER};
use jsonwebtoken::jwk::JwkSet;
use libfuzzer_sys::fuzz_target;
use proxy_core::authn::oidc::{discovery_jwks_uri, JwtAuthenticator, KeySet};

fn key_set() -> &'static Arc<KeySet> {
    static KEYS: OnceLock<Arc<KeySet>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let yaml = format!(
            "issuer: {{url: '{OIDC_ISSUER}', audiences: [kube]}}\nclaimMappings: {{username: {{claim: sub, prefix: ''}}}}\n"
        );
        let jwt: JwtAuthenticator = serde_yaml::from_str(&yaml).expect("fixture settings");
        let settings = jwt.settings("fuzz").expect("fixture settings");
        block_on(async { Arc::new(KeySet::new(&settings).expect("key set")) })
    })
}

fn jwks(document: &[u8]) {
    if let Ok(set) = serde_json::from_slice::<JwkSet>(document) {
        if key_set().preload(&set).is_ok() {
            assert!(key_set().is_loaded());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match split(data) {
        Some((discovery, keys)) => {
            if let Ok(uri) = discovery_jwks_uri(discovery, OIDC_ISSUER) {
                let _ = uri.parse::<http::Uri>();
            }
            jwks(keys);
        }
        None => {
            let _ = discovery_jwks_uri(data, OIDC_ISSUER);
            jwks(data);
        }
    }
});
