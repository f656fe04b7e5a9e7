//! An agent's registration request, as bytes on the wire: parsed as an
//! HTTP/1 request head (httparse, as hyper does), read by
//! `tunnel::register::read` (through `proxy_core::fuzzing`), then answered by an `AgentEndpoint` with one
//! cluster. Never a panic; a claimed cluster is a valid name; a token is
//! trimmed and not empty; the answer is one of the registration's statuses.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use proxy_core::fuzzing::{read_registration as read, Claim};
use proxy_core::tunnel::AgentEndpoint;

/// The token of the fuzzed endpoint's cluster `edge` (the seeds hold it).
const TOKEN: &str = "edge-registration-token-fuzz-0123";

fn endpoint() -> &'static AgentEndpoint {
    static ENDPOINT: OnceLock<AgentEndpoint> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let file = authproxy_fuzz::fixture_dir().join("edge-agent.token");
        std::fs::write(&file, format!("{TOKEN}\n")).expect("token fixture");
        authproxy_fuzz::block_on(async {
            let mut endpoint = AgentEndpoint::new();
            endpoint
                .add_cluster("edge", file, Duration::from_secs(3600))
                .expect("the fixture token");
            endpoint
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut head = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = head.parse(data) else {
        return;
    };
    let version = match head.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = HeaderMap::new();
    for header in head.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) {
            headers.append(name, value);
        }
    }
    let claim = match read(version, &headers) {
        Ok(registration) => {
            if let Some(token) = registration.token {
                assert!(!token.is_empty());
                assert_eq!(token, token.trim());
            }
            registration.claim
        }
        Err((_, claim)) => claim,
    };
    if let Claim::Cluster(name) = claim {
        assert!(
            proxy_core::upstream::router::validate_name(name).is_ok(),
            "{name:?}"
        );
    }
    let mut request = Request::new(());
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    if let Some(path) = head.path {
        if let Ok(uri) = path.parse() {
            *request.uri_mut() = uri;
        }
    }
    let peer = SocketAddr::from(([192, 0, 2, 1], 1));
    let endpoint = endpoint();
    let status = authproxy_fuzz::block_on(async { endpoint.accept(request, peer).status() });
    assert!(
        [
            StatusCode::SWITCHING_PROTOCOLS,
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ]
        .contains(&status),
        "{status}"
    );
});
