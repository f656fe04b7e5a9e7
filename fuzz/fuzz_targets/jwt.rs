//! OIDC ID tokens: JWT header and claims through the whole verify path
//! (header, algorithm, key lookup, signature, registered claims, kube's claim
//! mapping). An input `header ␞ claims` is signed with a key the
//! authenticator trusts, so fuzzed claims get past the signature; any other
//! input is sent as the token itself. Nothing may panic, and an accepted
//! token maps to a user with a name.
#![no_main]

use std::sync::{Arc, OnceLock};

use authproxy_fuzz::{block_on, keys, sign, split, OIDC_ISSUER};
use libfuzzer_sys::fuzz_target;
use proxy_core::authn::oidc::{map_claims, peek_issuer, IssuerSettings, JwtAuthenticator};
use proxy_core::authn::OidcAuthenticator;
use proxy_core::credential::Secret;
use proxy_core::{Authenticator, Credential};

fn settings() -> &'static IssuerSettings {
    static SETTINGS: OnceLock<IssuerSettings> = OnceLock::new();
    SETTINGS.get_or_init(make_settings)
}

fn make_settings() -> IssuerSettings {
    let yaml = format!(
        "issuer: {{url: '{OIDC_ISSUER}', audiences: [kube, other]}}\n\
         claimMappings:\n  username: {{claim: email, prefix: ''}}\n  groups: {{claim: groups, prefix: 'oidc:'}}\n  uid: {{claim: sub}}\n  extra: [{{key: example.com/tenant, claim: tenant}}]\n\
         claimValidationRules: [{{claim: hd, requiredValue: example.com}}]\n\
         signingAlgorithms: [ES256, EdDSA, RS256]\nkeyRefreshMinInterval: 24h\n"
    );
    let jwt: JwtAuthenticator = serde_yaml_ng::from_str(&yaml).expect("fixture settings");
    jwt.settings("fuzz").expect("fixture settings")
}

fn authenticator() -> &'static Arc<OidcAuthenticator> {
    static OIDC: OnceLock<Arc<OidcAuthenticator>> = OnceLock::new();
    OIDC.get_or_init(|| {
        block_on(async {
            let oidc = OidcAuthenticator::start(settings().clone()).expect("authenticator");
            let jwks = serde_json::from_str(&keys().jwks).expect("fixture JWKS");
            oidc.keys().preload(&jwks).expect("fixture JWKS");
            oidc
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let oidc = authenticator();
    let token = match split(data) {
        Some((header, claims)) => {
            if let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(claims) {
                let _ = map_claims(settings(), &claims);
            }
            sign(header, claims, "ec-1")
        }
        None => match std::str::from_utf8(data) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        },
    };
    let _ = peek_issuer(&token);
    let _ = jsonwebtoken::decode_header(&token);
    let credential = Credential::Bearer(Secret::new(token));
    if let Ok(Some(identity)) = block_on(oidc.authenticate(&credential)) {
        assert!(!identity.user().username.is_empty());
    }
});
