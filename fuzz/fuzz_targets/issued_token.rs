//! The proxy's own tokens: whatever a caller sends as one (or signs with a
//! trusted key, for an input `header ␞ claims`) never panics the verifier,
//! and every user the proxy issues a token for comes back unchanged.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use authproxy_fuzz::{block_on, fixture_dir, sign, split};
use libfuzzer_sys::fuzz_target;
use proxy_core::authn::IssuedTokens;
use proxy_core::credential::Secret;
use proxy_core::{Authenticator, Credential, UserInfo};

struct Fixture {
    tokens: Arc<IssuedTokens>,
    kid: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tokens = IssuedTokens::load(
            "authproxy",
            &[fixture_dir().join("signing.pem")],
            Duration::from_secs(3600),
        )
        .expect("fixture key");
        let (token, _) = tokens.issue(&UserInfo::default()).expect("a token");
        let kid = jsonwebtoken::decode_header(&token)
            .expect("a header")
            .kid
            .expect("a kid");
        Fixture { tokens, kid }
    })
}

fn verify(token: String) -> Option<UserInfo> {
    let credential = Credential::Bearer(Secret::new(token));
    match block_on(fixture().tokens.authenticate(&credential)) {
        Ok(Some(identity)) => Some(identity.user().clone()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    if let Some((header, claims)) = split(data) {
        verify(sign(header, claims, &f.kid));
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    verify(text.to_owned());
    let fields: Vec<&str> = text.split('\u{1f}').collect();
    let mut user = UserInfo {
        username: fields[0].to_owned(),
        uid: fields.get(1).map(|s| s.to_string()),
        groups: fields
            .iter()
            .skip(2)
            .take(3)
            .map(|s| s.to_string())
            .collect(),
        extra: Default::default(),
    };
    if let (Some(k), Some(v)) = (fields.get(5), fields.get(6)) {
        user.extra.insert(k.to_string(), vec![v.to_string()]);
    }
    let (token, _) = f
        .tokens
        .issue(&user)
        .expect("issuing never fails with a loaded key");
    assert_eq!(verify(token).as_ref(), Some(&user));
});
