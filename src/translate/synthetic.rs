//! Every response the proxy writes itself rather than relays: errors in the client's dialect
//! (with the headers that go with them) and the plain-text answers of the operational
//! endpoints.
//!
//! An error response's body carries its [`ErrorCode`] (`body.rs`, `Written`), so the access
//! log and the metrics read what the proxy said without parsing the body.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::dialect::Dialect;
use crate::error::{ApiError, ErrorCode};
use crate::headers::Present;
use crate::translate::body::ProxyBody;
use crate::translate::template::Envelopes;

/// An error in `dialect` (an envelope client's in the envelope of `envelopes`).
/// `upstream_headers`, when given, keep the retry and rate-limit headers the SDKs act on.
pub(crate) fn error_response(
    dialect: Dialect,
    envelopes: &Envelopes,
    error: &ApiError,
    upstream_headers: Option<HeaderMap>,
) -> Response<ProxyBody> {
    let body = envelopes.error_body(dialect, error);
    let mut headers = upstream_headers.unwrap_or_default();
    set_json_headers(&mut headers);
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = error.status;
    *response.headers_mut() = headers;
    if let Some(code) = error.proxy_code() {
        response.body_mut().set_error_code(code);
    }
    response
}

/// A JSON body's headers. The upstream's `Content-Length` is dropped, not replaced: the body's
/// exact size hint makes hyper write the new one itself, straight into the response head (a
/// `HeaderValue` from an integer costs two allocations per response).
pub(crate) fn set_json_headers(headers: &mut HeaderMap) {
    // One look at each name, then only the lookups of fields that are there: these three are
    // usually absent, and `Content-Type` usually already says `application/json`.
    let present = Present::of(headers);
    if present.content_encoding {
        headers.remove(header::CONTENT_ENCODING);
    }
    if present.etag {
        headers.remove(header::ETAG);
    }
    if present.content_length {
        headers.remove(header::CONTENT_LENGTH);
    }
    let json = HeaderValue::from_static("application/json");
    if !present.content_type || headers.get(header::CONTENT_TYPE) != Some(&json) {
        headers.insert(header::CONTENT_TYPE, json);
    }
}

/// A `text/plain` answer of an operational endpoint.
pub(crate) fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// 401 with the `WWW-Authenticate` challenge: no client key, or one this proxy does not accept.
pub(crate) fn unauthorized(dialect: Dialect, envelopes: &Envelopes) -> Response<ProxyBody> {
    let error = ApiError::proxy(
        ErrorCode::InvalidApiKey,
        "Missing or invalid API key: send `Authorization: Bearer <key>` with a key this proxy accepts.",
    );
    let mut response = error_response(dialect, envelopes, &error, None);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Which of the proxy's limits a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `--max-concurrent-requests`: the request is refused, the connection stays.
    ConcurrentRequests,
    /// `--max-connections`: the one request is answered, then the connection closes.
    Connections,
}

/// 503 `proxy_overloaded` with `Retry-After`, for either limit.
pub fn overloaded(dialect: Dialect, envelopes: &Envelopes, limit: Limit) -> Response<ProxyBody> {
    let message = match limit {
        Limit::ConcurrentRequests => "envelope-proxy is at its concurrent request limit (--max-concurrent-requests); retry shortly",
        Limit::Connections => "envelope-proxy is at its connection limit (--max-connections); retry shortly",
    };
    let error = ApiError::proxy(ErrorCode::ProxyOverloaded, message);
    let mut response = error_response(dialect, envelopes, &error, None);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if limit == Limit::Connections {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// 404 for a path outside both dialects' prefixes (always bare: the path named no dialect).
pub fn unknown_route(method: &Method, path: &str) -> Response<ProxyBody> {
    let error = ApiError::proxy(
        ErrorCode::UnknownRoute,
        format!(
            "Unknown path: {method} {path}. envelope-proxy serves /v1/… (bare dialect) and /api/v1/… (envelope dialect)."
        ),
    );
    error_response(Dialect::Bare, &Envelopes::standard(), &error, None)
}

/// 503 for a request cut when the shutdown grace period ran out.
pub fn shutting_down() -> ApiError {
    ApiError::proxy(
        ErrorCode::ShuttingDown,
        "the proxy is shutting down; retry the request",
    )
}

/// 400 when the client's upload broke (it ended early or its chunked framing was invalid).
pub(crate) fn broken_request_body() -> ApiError {
    ApiError::proxy(
        ErrorCode::InvalidRequestBody,
        "the request body could not be read: it ended before it was complete or its chunked encoding is invalid",
    )
}
