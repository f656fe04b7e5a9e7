//! Small text answers the binary makes itself (health endpoints).

use http::{Response, StatusCode};
use proxy_core::ProxyBody;

/// A small text response (health endpoints).
pub fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    plain_owned(status, text.to_owned())
}

/// [`plain`] with text made at run time.
pub fn plain_owned(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}
