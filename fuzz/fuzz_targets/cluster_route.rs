//! The caller's request path read by the cluster router: never a panic, and a
//! routed path names, as sent, the cluster it goes to and keeps no
//! dot-segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_core::upstream::router::{route, Route, CLUSTER_PREFIX};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{text}");
    if let Ok(Route::Cluster {
        name,
        path_and_query,
    }) = route(&path)
    {
        assert!(path.starts_with(CLUSTER_PREFIX), "{path} -> {name}");
        if !name.is_empty() {
            assert!(
                path.starts_with(&format!("{CLUSTER_PREFIX}/{name}")),
                "{path} -> {name}"
            );
        }
        assert!(
            !name.contains('%') && !name.contains('/'),
            "{path} -> {name}"
        );
        assert!(
            path_and_query.starts_with('/'),
            "{path} -> {path_and_query}"
        );
        let path_part = path_and_query.split('?').next().unwrap_or_default();
        for segment in path_part.split('/') {
            assert!(
                segment != "." && segment != "..",
                "{path} -> {path_and_query}"
            );
        }
    }
});
