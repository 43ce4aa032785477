//! The responses the handlers of the HTTPS port share: whole bodies, plain text, JSON (the
//! canonical proto3 JSON of `gavel.v1` messages) and the JSON errors `{code, message}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The body of a response built whole before it is sent.
pub(super) type Body = Full<Bytes>;

/// A whole response of `content_type`.
fn whole(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain-text response.
pub(super) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    whole(status, "text/plain; charset=utf-8", body.into())
}

/// A JSON response of `value` (a `gavel.v1` message: canonical proto3 JSON).
pub(super) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => whole(status, "application/json", Bytes::from(body)),
        // Not reachable with the generated messages (no floats, no maps with non-string
        // keys), but a fault must not take the connection down.
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("could not encode the response: {e}"),
        ),
    }
}

/// A JSON error: `{"code": "...", "message": "..."}`.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "code": code, "message": message });
    whole(status, "application/json", Bytes::from(body.to_string()))
}

/// A JSON error that also names the owner of the auction's partition:
/// `{"code": "...", "message": "...", "owner": {PartitionOwner}}`.
pub(super) fn error_naming(
    status: StatusCode,
    code: &str,
    message: &str,
    owner: &gavel_proto::pb::PartitionOwner,
) -> Response<Body> {
    let owner = serde_json::to_value(owner).unwrap_or_default();
    let body = serde_json::json!({ "code": code, "message": message, "owner": owner });
    whole(status, "application/json", Bytes::from(body.to_string()))
}

/// 405 with the methods the route allows.
pub(super) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this route allows {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
