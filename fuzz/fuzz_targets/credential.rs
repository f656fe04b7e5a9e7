//! The caller's `Authorization` header: parsing must never panic.
#![no_main]

use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use proxy_core::Credential;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        let _ = Credential::from_parts(&headers, &http::Extensions::new());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Credential::from_authorization(text);
    }
});
