//! Kubernetes `Status` objects: how the proxy tells a caller what went wrong.
//!
//! kubectl and client-go print the `message` of a `metav1.Status` body, so
//! every failure the proxy produces itself is one of these, with the HTTP code
//! and `reason` kube-apiserver would use for the same condition.

use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::body::ProxyBody;

/// The `reason` field of a Status, as kube-apiserver spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// 401: no credential, or one that could not be verified.
    Unauthorized,
    /// 403: the request is understood but refused.
    Forbidden,
    /// 400: the request is malformed.
    BadRequest,
    /// 404: nothing is served at this path (an unknown cluster name).
    NotFound,
    /// 413: the request body is larger than the endpoint accepts.
    RequestEntityTooLarge,
    /// 429: too many failed attempts; retry later.
    TooManyRequests,
    /// 500: something failed inside the proxy.
    InternalError,
    /// 503 (or 502): a backend the proxy needs is unreachable.
    ServiceUnavailable,
    /// 504: a backend did not answer in time.
    Timeout,
}

/// A `metav1.Status` failure object.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    kind: &'static str,
    api_version: &'static str,
    metadata: Metadata,
    status: &'static str,
    /// Human-readable description; never contains a secret.
    pub message: String,
    /// Machine-readable reason.
    pub reason: Reason,
    /// The HTTP status code, repeated in the body as kube does.
    pub code: u16,
    /// How long to wait before trying again, for a 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

#[derive(Debug, Clone, Serialize)]
struct Metadata {}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Details {
    retry_after_seconds: u64,
}

/// Marks a response the proxy made for a reason of its own policy (a
/// session that must be recorded and cannot be, a revocation not written):
/// not an upstream failure, which the metrics count apart.
#[derive(Debug, Clone, Copy)]
pub struct NotUpstream;

impl Status {
    /// A failure Status with the given HTTP code, reason and message.
    pub fn failure(code: StatusCode, reason: Reason, message: impl Into<String>) -> Self {
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: Metadata {},
            status: "Failure",
            message: message.into(),
            reason,
            code: code.as_u16(),
            details: None,
        }
    }

    /// The Status telling the caller to wait `seconds` before trying again,
    /// as kube does: `details.retryAfterSeconds` and a `Retry-After` header.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.details = Some(Details {
            retry_after_seconds: seconds,
        });
        self
    }

    /// 401 Unauthorized with kube's wording.
    pub fn unauthorized() -> Self {
        Self::failure(
            StatusCode::UNAUTHORIZED,
            Reason::Unauthorized,
            "Unauthorized",
        )
    }

    /// 413 Request Entity Too Large with kube's wording.
    pub fn too_large(limit: usize) -> Self {
        Self::failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::RequestEntityTooLarge,
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// The Status as an HTTP response with a JSON body. The response's
    /// extensions hold its [`Reason`], which marks it as made by the proxy.
    pub fn into_response(self) -> Response<ProxyBody> {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Serializing this struct cannot fail: it holds only strings and numbers.
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(ProxyBody::full(body));
        *response.status_mut() = code;
        response.extensions_mut().insert(self.reason);
        if let Some(details) = &self.details {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(details.retry_after_seconds),
            );
        }
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_status_matches_kube_shape() {
        let json = serde_json::to_value(Status::unauthorized()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "Unauthorized",
                "reason": "Unauthorized", "code": 401
            })
        );
    }

    #[test]
    fn response_carries_code_and_content_type() {
        let r = Status::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::ServiceUnavailable,
            "down",
        )
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
