//! The response path: from the upstream's response to the client's, in the client's dialect.
//!
//! | upstream response                      | client dialect = upstream | client dialect ≠ upstream        |
//! |----------------------------------------|---------------------------|----------------------------------|
//! | 2xx/3xx JSON                           | passed through, streamed  | read, wrapped / unwrapped        |
//! | 2xx/3xx non-JSON (audio, files)        | passed through            | passed through                   |
//! | 2xx `text/event-stream`                | event stream, see `sse`   | event stream, see `sse`          |
//! | ≥ 400 JSON error                       | passed through            | normalised into client's dialect |
//! | ≥ 400 non-JSON (HTML, text, empty)     | normalised                | normalised                       |
//!
//! A body the proxy has to read is read whole (bounded by `--max-response-body`); if the
//! upstream cuts it short, the client gets a 502 in its dialect, never a partial body.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::api_error::{self, ApiError};
use crate::body::ProxyBody;
use crate::dialect::Dialect;
use crate::envelope::{self, Classified, Verdict};
use crate::headers;
use crate::sse::{EventMode, SseBody, StreamSettings};
use tokio_util::sync::CancellationToken;

/// What the response path needs to know about one exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub client: Dialect,
    pub upstream: Dialect,
    /// A HEAD request: the response has no body to translate.
    pub head: bool,
    pub max_response_body: u64,
    /// When a body the proxy reads must be complete, and the `--request-timeout` behind it.
    pub deadline: tokio::time::Instant,
    pub request_timeout: std::time::Duration,
    /// How event streams are handled (its mode already follows from the two dialects).
    pub stream: StreamSettings,
    /// Cancelled when the shutdown grace period runs out: open streams end with an error event.
    pub cut: CancellationToken,
}

/// Response extension: the body was rewritten from the upstream's dialect into the client's.
#[derive(Debug, Clone, Copy)]
pub struct Translated;

/// Response extension on every [`error_response`]: the error's `code`, for logs and metrics.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

fn translated(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response.extensions_mut().insert(Translated);
    response
}

impl Exchange {
    /// True when the response body may need rewriting, so the upstream must not compress it.
    pub fn translates(&self) -> bool {
        self.client != self.upstream
    }
}

/// Turns the upstream's response into the client's.
pub async fn respond(exchange: &Exchange, response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    let status = parts.status;

    if exchange.head || has_no_body(status) {
        return Response::from_parts(parts, ProxyBody::passthru(body));
    }
    if status.is_success() && headers::is_event_stream(&parts.headers) {
        return stream_response(exchange, parts, body);
    }
    if status.as_u16() < 400 {
        let same_dialect = exchange.client == exchange.upstream;
        if same_dialect || !headers::is_json_or_unspecified(&parts.headers) {
            return Response::from_parts(parts, ProxyBody::passthru(body));
        }
        let bytes = match read_body(exchange, body).await {
            Ok(bytes) => bytes,
            Err(error) => return error_response(exchange.client, &error, Some(parts.headers)),
        };
        return translate_success(exchange, parts, bytes);
    }
    translate_error(exchange, parts, body).await
}

/// 2xx `text/event-stream`: streamed event by event, never buffered.
fn stream_response(exchange: &Exchange, mut parts: Parts, body: Incoming) -> Response<ProxyBody> {
    let headers = &mut parts.headers;
    // The length changes when events are rewritten or an error event is added.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx (and compatible buffering proxies in front of us) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let rewrites = exchange.stream.mode != EventMode::Passthru;
    let body = SseBody::with_cut(body, exchange.stream, exchange.cut.clone());
    let response = Response::from_parts(parts, ProxyBody::sse(body));
    if rewrites {
        translated(response)
    } else {
        response
    }
}

/// 2xx JSON between different dialects.
fn translate_success(exchange: &Exchange, parts: Parts, body: Bytes) -> Response<ProxyBody> {
    match exchange.client {
        Dialect::Envelope => {
            // Validate, never rebuild: the payload goes out as the upstream wrote it.
            if !envelope::is_json(&body) {
                return error_response(exchange.client, &invalid_json(&parts), Some(parts.headers));
            }
            translated(json_response(
                StatusCode::OK,
                parts.headers,
                envelope::wrap_success(body),
            ))
        }
        Dialect::Bare => match envelope::classify(&body) {
            Classified::Envelope(env) => match env.verdict(parts.status) {
                Verdict::Success(data) => {
                    let payload = envelope::slice_payload(&body, data);
                    translated(json_response(
                        parts.status,
                        parts.headers,
                        [payload, Bytes::new(), Bytes::new()],
                    ))
                }
                Verdict::Error(error) => {
                    translated(error_response(exchange.client, &error, Some(parts.headers)))
                }
            },
            // Already bare: an upstream that answers some endpoints without an envelope.
            Classified::Json => json_response(
                parts.status,
                parts.headers,
                [body, Bytes::new(), Bytes::new()],
            ),
            Classified::NotJson => {
                error_response(exchange.client, &invalid_json(&parts), Some(parts.headers))
            }
        },
    }
}

/// Status ≥ 400: JSON errors pass between equal dialects; everything else is normalised.
async fn translate_error(
    exchange: &Exchange,
    mut parts: Parts,
    body: Incoming,
) -> Response<ProxyBody> {
    let same_dialect = exchange.client == exchange.upstream;
    // A compressed body cannot be inspected (we only ask for identity when translating).
    if same_dialect && headers::is_content_encoded(&parts.headers) {
        return Response::from_parts(parts, ProxyBody::passthru(body));
    }
    let bytes = match read_body(exchange, body).await {
        Ok(bytes) => bytes,
        Err(error) => return error_response(exchange.client, &error, Some(parts.headers)),
    };
    if same_dialect && envelope::is_json(&bytes) {
        return Response::from_parts(parts, ProxyBody::full(bytes));
    }
    let content_type = headers::media_type(&parts.headers);
    let error = if headers::is_content_encoded(&parts.headers) {
        let encoding = parts.headers.remove(header::CONTENT_ENCODING);
        ApiError::new(
            parts.status,
            format!(
                "upstream returned HTTP {} with a {}-encoded body",
                parts.status.as_u16(),
                encoding
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("compressed")
            ),
        )
    } else {
        api_error::normalise(parts.status, content_type.as_deref(), &bytes)
    };
    let response = error_response(exchange.client, &error, Some(parts.headers));
    if same_dialect {
        response
    } else {
        translated(response)
    }
}

/// Reads a body the proxy must inspect, bounded by `--max-response-body`.
async fn read_body(exchange: &Exchange, body: Incoming) -> Result<Bytes, ApiError> {
    let read = Limited::new(body, exchange.max_response_body as usize).collect();
    let Ok(read) = tokio::time::timeout_at(exchange.deadline, read).await else {
        return Err(crate::proxy::deadline_exceeded(exchange.request_timeout));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "upstream response body exceeds the limit of {} bytes (--max-response-body)",
                exchange.max_response_body
            ),
        )
        .with_type("upstream_error")
        .with_code("upstream_body_too_large")),
        Err(error) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!(
                "upstream response was cut short: {}",
                crate::upstream::describe_chain(error.as_ref())
            ),
        )
        .with_type("upstream_error")
        .with_code("upstream_truncated")),
    }
}

fn invalid_json(parts: &Parts) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "upstream sent a body that is not valid JSON under HTTP {}",
            parts.status.as_u16()
        ),
    )
    .with_type("upstream_error")
    .with_code("upstream_invalid_body")
}

fn has_no_body(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// A JSON response from pieces, keeping the upstream's end-to-end headers.
fn json_response(
    status: StatusCode,
    mut headers: HeaderMap,
    pieces: [Bytes; 3],
) -> Response<ProxyBody> {
    set_json_headers(&mut headers);
    let mut response = Response::new(ProxyBody::parts(pieces));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// An error in `dialect`. `upstream_headers`, when given, keep the retry and rate-limit
/// headers the SDKs act on.
pub fn error_response(
    dialect: Dialect,
    error: &ApiError,
    upstream_headers: Option<HeaderMap>,
) -> Response<ProxyBody> {
    let body = error.to_body(dialect);
    let mut headers = upstream_headers.unwrap_or_default();
    set_json_headers(&mut headers);
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = error.status;
    *response.headers_mut() = headers;
    if let serde_json::Value::String(code) = &error.code {
        response.extensions_mut().insert(ErrorCode(code.clone()));
    }
    response
}

/// A JSON body's headers. The upstream's `Content-Length` is dropped, not replaced: the body's
/// exact size hint makes hyper write the new one itself, straight into the response head (a
/// `HeaderValue` from an integer costs two allocations per response).
fn set_json_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::ETAG);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
}
