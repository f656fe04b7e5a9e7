//! The PROXY protocol header a load balancer sends before the TLS handshake:
//! must never panic nor claim bytes past the input, and because the listener
//! parses whatever part has arrived, every shorter part of a complete header
//! must ask for more (never fail, never complete early).
#![no_main]

use libfuzzer_sys::fuzz_target;
use authproxy::proxy_protocol::{parse, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(header)) = parse(data) else {
        return;
    };
    assert!(header.len <= data.len() && header.len <= MAX_HEADER);
    assert_eq!(parse(&data[..header.len]), Ok(Some(header)));
    for cut in 1..header.len {
        assert_eq!(parse(&data[..cut]), Ok(None), "a part of {cut} bytes");
    }
});
