//! The caller's request path and query, read as kube's RequestInfo for the
//! audit log and metrics: must never panic, and the cheap classification
//! must agree with the full parse.
#![no_main]

use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use proxy_core::observe::request_info::{classify, holds_stream, object_ref, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(uri) = Uri::try_from(rest) else {
        return;
    };
    let method = [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::HEAD]
        [usize::from(first) % 6]
        .clone();
    let upgrade = first & 0x80 != 0;
    let full = parse(&method, &uri, upgrade);
    let (light, resource) = classify(&method, &uri, upgrade, true);
    assert_eq!((full.verb, full.long_running), (light.verb, light.long_running));
    assert_eq!(resource, full.object.is_some());
    assert_eq!(object_ref(&uri, true), full.object);
    // Behind a single upstream (nothing removed from the path): the cheap
    // reading agrees with itself, and what it holds open the caps count.
    let (single, single_resource) = classify(&method, &uri, upgrade, false);
    assert_eq!(single_resource, object_ref(&uri, false).is_some());
    if light.long_running || single.long_running {
        // A `log` counts only with `follow`; every other long-running
        // request holds its stream, under either reading.
        let log = full.object.as_ref().is_some_and(|o| o.subresource == "log")
            || object_ref(&uri, false).is_some_and(|o| o.subresource == "log");
        if !log {
            assert!(holds_stream(&method, &uri, upgrade), "{uri}");
        }
    }
});
