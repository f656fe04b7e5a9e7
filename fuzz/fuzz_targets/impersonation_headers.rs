//! Identity values become `Impersonate-*` headers unchanged or not at all,
//! and no caller header named `impersonate-*` or `authorization` survives
//! the rewrite.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use proxy_core::impersonate::{strip_caller_identity, ImpersonationHeaders};
use proxy_core::UserInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let fields: Vec<&str> = text.split('\u{1f}').collect();
    let mut user = UserInfo {
        username: fields.first().copied().unwrap_or_default().to_owned(),
        uid: fields.get(1).map(|s| s.to_string()),
        groups: fields.get(2).map(|g| vec![g.to_string()]).unwrap_or_default(),
        extra: Default::default(),
    };
    if let (Some(k), Some(v)) = (fields.get(3), fields.get(4)) {
        user.extra.insert(k.to_string(), vec![v.to_string()]);
    }
    if let Ok(headers) = ImpersonationHeaders::for_user(&user) {
        let (_, first) = &headers.entries()[0];
        assert_eq!(first.as_bytes(), user.username.as_bytes());
        for (_, value) in headers.entries() {
            assert!(!value.as_bytes().contains(&b'\r') && !value.as_bytes().contains(&b'\n'));
        }
    }

    let mut caller = HeaderMap::new();
    for pair in text.split('\n') {
        if let Some((name, value)) = pair.split_once(':') {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value.as_bytes())) {
                caller.append(name, value);
            }
        }
    }
    strip_caller_identity(&mut caller);
    for name in caller.keys() {
        assert!(!name.as_str().starts_with("impersonate-"), "{name} survived");
        assert!(name != http::header::AUTHORIZATION && name != http::header::PROXY_AUTHORIZATION);
    }
});
