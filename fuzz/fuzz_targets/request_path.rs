//! The caller's request path joined below an upstream prefix: never a panic,
//! and an accepted path always stays below the prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_core::fuzzing::path_join as join;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{text}");
    if let Ok(joined) = join("/k8s/clusters/c1", &path) {
        assert!(
            joined.starts_with("/k8s/clusters/c1/"),
            "{path} -> {joined}"
        );
        let path_part = joined.split('?').next().unwrap_or_default();
        for segment in path_part.split('/') {
            assert!(segment != "." && segment != "..", "{path} -> {joined}");
        }
    }
});
