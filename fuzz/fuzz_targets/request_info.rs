//! The caller's request path and query, read as kube's RequestInfo for the
//! audit log and metrics: must never panic, and the cheap classification
//! must agree with the full parse.
#![no_main]

use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use proxy_core::observe::request_info::{classify, object_ref, parse};

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
    let (light, resource) = classify(&method, &uri, upgrade);
    assert_eq!((full.verb, full.long_running), (light.verb, light.long_running));
    assert_eq!(resource, full.object.is_some());
    assert_eq!(object_ref(&uri), full.object);
});
