//! What an OpenID provider sends: discovery documents and JWKS. Parsing
//! never panics, whatever the keys hold (no `alg`, unknown `kty`/`crv`,
//! malformed key material), and the allowed algorithms are honoured.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_core::authn::oidc::config::parse_algorithm;
use proxy_core::authn::oidc::{parse_discovery, parse_jwks};

const NAMES: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mask, document)) = data.split_first() else {
        return;
    };
    let allowed: Vec<_> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
        .filter_map(|(_, name)| parse_algorithm(name).ok())
        .collect();
    if let Ok(usable) = parse_jwks(document, &allowed) {
        assert!(usable > 0 && !allowed.is_empty());
    }
    let _ = parse_discovery(document);
});
