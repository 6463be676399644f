//! The proxy's error model: the boxed error of bodies and services, the one error shape every
//! client receives ([`ApiError`]) and its rendering, and the closed set of error codes the proxy
//! itself produces ([`ErrorCode`]).
//!
//! Each [`ErrorCode`] knows its wire string, its HTTP status, its OpenAI error `type`, the
//! metric kind it counts as and the level its access-log line is written at, so metrics and the
//! access log match on the enum and a misspelt code is a compile error. This module imports
//! nothing from the crate: everything else builds on it.
//!
//! [`ApiError::to_body`] renders an error in the client's dialect:
//!
//! - bare: `{"error":{"message","type","param","code"}}`
//! - envelope: `{"success":false,"code":"<status>","message":"<message>","data":null,"error":{…}}`
//!   (the inner `error` member keeps everything the bare form has, so nothing is lost).
//!
//! That envelope is the standard one; other envelopes (`--envelope`, the error templates) are
//! rendered by `translate::template` from the pieces this module gives: the message and
//! [`ApiError::error_object`], the `$error` of a template.
//!
//! Reading an upstream's error body into an [`ApiError`] is `error_body`'s job (its fields read
//! in bounded memory by `error_fields`).
//!
//! Errors below the HTTP layer (a connection reset, a TLS failure) are described here too:
//! [`describe_chain`] for the log, [`body_failure`] for what a client may be told.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tracing::Level;

/// The error type of response bodies and of the upstream client's service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The two dialects an error renders in (the same as `dialect::Dialect`, which converts into
/// this; kept here so the error model depends on nothing in the crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `{"error":{…}}`, as OpenAI sends it.
    Bare,
    /// `{"success":false,"code":…,"message":…,"data":null,"error":{…}}`.
    Envelope,
}

/// Why an exchange with the upstream failed: the `kind` label of the upstream error metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    Connect,
    Timeout,
    Tls,
    /// The connection closed or reset before the answer was complete.
    Reset,
    /// A body that is not what it claims: not JSON, a malformed envelope, too large.
    InvalidBody,
}

impl UpstreamErrorKind {
    pub(crate) const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::InvalidBody,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::InvalidBody => "invalid_body",
        }
    }

    /// The kind behind one of the proxy's own error codes (docs/errors.md); `None` for
    /// anything else, e.g. an error the upstream itself reported.
    #[cfg(test)]
    pub(crate) fn from_code(code: &str) -> Option<Self> {
        ErrorCode::parse(code).and_then(ErrorCode::metric_kind)
    }
}

/// Every error code the proxy itself produces (the table in docs/errors.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    // The client's request was refused before reaching the upstream.
    InvalidRequestTarget,
    TooManyHeaders,
    UnsupportedTransferCoding,
    DuplicateAuthorization,
    InvalidRequestBody,
    RequestTooLarge,
    InvalidApiKey,
    UnknownRoute,
    // The proxy's own state.
    ProxyOverloaded,
    ShuttingDown,
    // The exchange with the upstream failed.
    RequestTimeout,
    UpstreamUnreachable,
    UpstreamTlsError,
    UpstreamError,
    UpstreamConnectTimeout,
    UpstreamTimeout,
    UpstreamBodyTooLarge,
    UpstreamTruncated,
    UpstreamInvalidBody,
    UpstreamInvalidResponse,
    InvalidEnvelope,
    // An event stream ended early (reported in a final error event).
    StreamTruncated,
    UpstreamBroken,
    IdleTimeout,
    EventTooLarge,
}

impl ErrorCode {
    pub(crate) const ALL: [ErrorCode; 25] = [
        ErrorCode::InvalidRequestTarget,
        ErrorCode::TooManyHeaders,
        ErrorCode::UnsupportedTransferCoding,
        ErrorCode::DuplicateAuthorization,
        ErrorCode::InvalidRequestBody,
        ErrorCode::RequestTooLarge,
        ErrorCode::InvalidApiKey,
        ErrorCode::UnknownRoute,
        ErrorCode::ProxyOverloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::RequestTimeout,
        ErrorCode::UpstreamUnreachable,
        ErrorCode::UpstreamTlsError,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamConnectTimeout,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamBodyTooLarge,
        ErrorCode::UpstreamTruncated,
        ErrorCode::UpstreamInvalidBody,
        ErrorCode::UpstreamInvalidResponse,
        ErrorCode::InvalidEnvelope,
        ErrorCode::StreamTruncated,
        ErrorCode::UpstreamBroken,
        ErrorCode::IdleTimeout,
        ErrorCode::EventTooLarge,
    ];

    /// The `code` member of the error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequestTarget => "invalid_request_target",
            ErrorCode::TooManyHeaders => "too_many_headers",
            ErrorCode::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ErrorCode::DuplicateAuthorization => "duplicate_authorization",
            ErrorCode::InvalidRequestBody => "invalid_request_body",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::UnknownRoute => "unknown_route",
            ErrorCode::ProxyOverloaded => "proxy_overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamTlsError => "upstream_tls_error",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamConnectTimeout => "upstream_connect_timeout",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamBodyTooLarge => "upstream_body_too_large",
            ErrorCode::UpstreamTruncated => "upstream_truncated",
            ErrorCode::UpstreamInvalidBody => "upstream_invalid_body",
            ErrorCode::UpstreamInvalidResponse => "upstream_invalid_response",
            ErrorCode::InvalidEnvelope => "invalid_envelope",
            ErrorCode::StreamTruncated => "stream_truncated",
            ErrorCode::UpstreamBroken => "upstream_broken",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::EventTooLarge => "event_too_large",
        }
    }

    /// The code spelt `code`, if the proxy produces one by that name. An upstream error body
    /// naming one of these codes is read as that code (a chained proxy's error counts as the
    /// same kind of failure).
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|known| known.as_str() == code)
    }

    /// The HTTP status of a response carrying this error. Errors inside an event stream are
    /// rendered with `502` whatever this says (see [`ApiError::mid_stream`]), and an invalid
    /// upstream error body keeps the upstream's error status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequestTarget
            | ErrorCode::DuplicateAuthorization
            | ErrorCode::InvalidRequestBody => StatusCode::BAD_REQUEST,
            ErrorCode::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ErrorCode::UnknownRoute => StatusCode::NOT_FOUND,
            ErrorCode::ProxyOverloaded | ErrorCode::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RequestTimeout
            | ErrorCode::UpstreamConnectTimeout
            | ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::UpstreamUnreachable
            | ErrorCode::UpstreamTlsError
            | ErrorCode::UpstreamError
            | ErrorCode::UpstreamBodyTooLarge
            | ErrorCode::UpstreamTruncated
            | ErrorCode::UpstreamInvalidBody
            | ErrorCode::UpstreamInvalidResponse
            | ErrorCode::InvalidEnvelope
            | ErrorCode::StreamTruncated
            | ErrorCode::UpstreamBroken
            | ErrorCode::IdleTimeout
            | ErrorCode::EventTooLarge => StatusCode::BAD_GATEWAY,
        }
    }

    /// The error's `type`: the client's own mistakes use OpenAI's types, the proxy's state
    /// `server_error`, and every failure of the upstream `upstream_error`.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequestTarget
            | ErrorCode::TooManyHeaders
            | ErrorCode::UnsupportedTransferCoding
            | ErrorCode::DuplicateAuthorization
            | ErrorCode::InvalidRequestBody
            | ErrorCode::RequestTooLarge
            | ErrorCode::UnknownRoute => "invalid_request_error",
            ErrorCode::InvalidApiKey => "authentication_error",
            ErrorCode::ProxyOverloaded | ErrorCode::ShuttingDown => "server_error",
            ErrorCode::RequestTimeout
            | ErrorCode::UpstreamUnreachable
            | ErrorCode::UpstreamTlsError
            | ErrorCode::UpstreamError
            | ErrorCode::UpstreamConnectTimeout
            | ErrorCode::UpstreamTimeout
            | ErrorCode::UpstreamBodyTooLarge
            | ErrorCode::UpstreamTruncated
            | ErrorCode::UpstreamInvalidBody
            | ErrorCode::UpstreamInvalidResponse
            | ErrorCode::InvalidEnvelope
            | ErrorCode::StreamTruncated
            | ErrorCode::UpstreamBroken
            | ErrorCode::IdleTimeout
            | ErrorCode::EventTooLarge => "upstream_error",
        }
    }

    /// The upstream error metric this code counts in; `None` when the upstream is not to
    /// blame (a refused request, the proxy's own state) or the failure is counted elsewhere
    /// (a truncated stream is a stream outcome only).
    pub(crate) fn metric_kind(self) -> Option<UpstreamErrorKind> {
        match self {
            ErrorCode::UpstreamUnreachable => Some(UpstreamErrorKind::Connect),
            ErrorCode::UpstreamConnectTimeout
            | ErrorCode::UpstreamTimeout
            | ErrorCode::IdleTimeout
            | ErrorCode::RequestTimeout => Some(UpstreamErrorKind::Timeout),
            ErrorCode::UpstreamTlsError => Some(UpstreamErrorKind::Tls),
            ErrorCode::UpstreamError | ErrorCode::UpstreamTruncated | ErrorCode::UpstreamBroken => {
                Some(UpstreamErrorKind::Reset)
            }
            ErrorCode::UpstreamInvalidBody
            | ErrorCode::UpstreamInvalidResponse
            | ErrorCode::InvalidEnvelope
            | ErrorCode::UpstreamBodyTooLarge
            | ErrorCode::EventTooLarge => Some(UpstreamErrorKind::InvalidBody),
            ErrorCode::InvalidRequestTarget
            | ErrorCode::TooManyHeaders
            | ErrorCode::UnsupportedTransferCoding
            | ErrorCode::DuplicateAuthorization
            | ErrorCode::InvalidRequestBody
            | ErrorCode::RequestTooLarge
            | ErrorCode::InvalidApiKey
            | ErrorCode::UnknownRoute
            | ErrorCode::ProxyOverloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::StreamTruncated => None,
        }
    }

    /// The level of the access-log line of a request that ended with this code: WARN when
    /// the upstream failed (or a stream ended early), INFO for refusals and shutdown.
    pub fn log_level(self) -> Level {
        if self.metric_kind().is_some() || self == ErrorCode::StreamTruncated {
            Level::WARN
        } else {
            Level::INFO
        }
    }
}

/// The OpenAI `type` for a status, used when the upstream named none (docs/errors.md).
pub(crate) fn error_type_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "api_error",
    }
}

/// A normalised API error: what the client is told, in either dialect.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub error_type: String,
    /// Kept as the upstream sent it (string, null, …).
    pub param: Value,
    /// Kept as the upstream sent it (OpenAI sends strings, vLLM and llama.cpp integers).
    pub code: Value,
}

impl ApiError {
    /// An error with the status's default type and no param or code.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            error_type: error_type_for(status).to_string(),
            param: Value::Null,
            code: Value::Null,
        }
    }

    /// One of the proxy's own errors: status, type and code all follow from `code`.
    pub(crate) fn proxy(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            message: message.into(),
            error_type: code.error_type().to_string(),
            param: Value::Null,
            code: Value::String(code.as_str().to_string()),
        }
    }

    /// An error event that ends an event stream: the response status was sent long ago, so
    /// the event says `502`, the upstream's failure.
    pub(crate) fn mid_stream(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            error_type: "upstream_error".to_string(),
            ..Self::proxy(code, message)
        }
    }

    /// 413 for a request body over `--max-request-body`.
    pub fn request_too_large(limit: u64) -> Self {
        Self::proxy(
            ErrorCode::RequestTooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// 504 when the whole exchange outlived `--request-timeout`.
    pub fn request_timeout(limit: Duration) -> Self {
        Self::proxy(
            ErrorCode::RequestTimeout,
            format!(
                "the request did not complete within {}s (--request-timeout)",
                limit.as_secs_f64()
            ),
        )
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_type(mut self, error_type: impl Into<String>) -> Self {
        self.error_type = error_type.into();
        self
    }

    pub fn with_code(mut self, code: impl Into<Value>) -> Self {
        self.code = code.into();
        self
    }

    /// The proxy's own code this error carries, if any (for logs and metrics).
    pub(crate) fn proxy_code(&self) -> Option<ErrorCode> {
        match &self.code {
            Value::String(code) => ErrorCode::parse(code),
            _ => None,
        }
    }

    /// The OpenAI error object alone (`{"message","type","param","code"}`): what `$error`
    /// stands for in an envelope template.
    pub fn error_object(&self) -> Vec<u8> {
        let inner = InnerError {
            message: &self.message,
            error_type: &self.error_type,
            param: &self.param,
            code: &self.code,
        };
        // Serialising it cannot fail: every key is a string and every value is JSON.
        serde_json::to_vec(&inner).unwrap_or_default()
    }

    /// The JSON body in `form`.
    pub fn to_body(&self, form: impl Into<Form>) -> Bytes {
        let inner = InnerError {
            message: &self.message,
            error_type: &self.error_type,
            param: &self.param,
            code: &self.code,
        };
        // Serialising these types cannot fail: every key is a string and every value is JSON.
        let json = match form.into() {
            Form::Bare => serde_json::to_vec(&BareError { error: inner }),
            Form::Envelope => serde_json::to_vec(&EnvelopeError {
                success: false,
                code: self.status.as_str(),
                message: &self.message,
                data: (),
                error: inner,
            }),
        };
        Bytes::from(json.unwrap_or_default())
    }
}

/// `502 Bad Gateway`, or the bare number for a status without a reason phrase.
pub(crate) fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

#[derive(Serialize)]
struct InnerError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    error_type: &'a str,
    param: &'a Value,
    code: &'a Value,
}

#[derive(Serialize)]
struct BareError<'a> {
    error: InnerError<'a>,
}

#[derive(Serialize)]
struct EnvelopeError<'a> {
    success: bool,
    code: &'a str,
    message: &'a str,
    data: (),
    error: InnerError<'a>,
}

/// [`body_failure`] for a body whose HTTP framing (chunked encoding, or the head) was invalid.
pub(crate) const INVALID_FRAMING: &str = "the upstream sent invalid framing";

/// What a client may be told about a response body the upstream broke: the kind of failure,
/// without the OS error text (log [`describe_chain`] for that).
pub(crate) fn body_failure(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(error);
    while let Some(current) = source {
        if let Some(io_error) = current.downcast_ref::<io::Error>() {
            if matches!(
                io_error.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ) {
                return "the upstream reset the connection";
            }
            // hyper's chunked decoder: a bad size line, a bad chunk end, a trailer line not
            // ended by CRLF (rustls's corrupt records are `InvalidData` too, and invalid).
            if matches!(
                io_error.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
            ) {
                return INVALID_FRAMING;
            }
        }
        if current
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return INVALID_FRAMING;
        }
        // HTTP/2 (`--upstream-http2`, or an `https://` upstream that chose h2); a GOAWAY that
        // cuts a stream is the connection ending early, below.
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            if h2.is_library() {
                return "the upstream broke the HTTP/2 protocol";
            }
            if h2.is_remote() && h2.is_reset() {
                return "the upstream reset the stream";
            }
        }
        source = current.source();
    }
    "the upstream connection ended early"
}

/// The error's chain of causes on one line, without hyper-util's generic wrapper text.
pub(crate) fn describe_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_rendering_keeps_the_inner_error() {
        let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .with_code("rate_limit_exceeded");
        let body: Value = serde_json::from_slice(&error.to_body(Form::Envelope)).unwrap();
        assert_eq!(
            body,
            json!({"success":false,"code":"429","message":"slow down","data":null,
                   "error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}})
        );
    }

    #[test]
    fn type_table() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (409, "conflict_error"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "server_error"),
            (503, "server_error"),
            (402, "api_error"),
        ];
        for (status, kind) in cases {
            assert_eq!(
                error_type_for(StatusCode::from_u16(status).unwrap()),
                kind,
                "{status}"
            );
        }
    }

    #[test]
    fn every_code_reads_back_from_its_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("rate_limit_exceeded"), None);
    }

    #[test]
    fn a_proxy_error_carries_its_codes_status_and_type() {
        let error = ApiError::proxy(ErrorCode::UnknownRoute, "no such path");
        assert_eq!(
            serde_json::from_slice::<Value>(&error.to_body(Form::Bare)).unwrap(),
            json!({"error":{"message":"no such path","type":"invalid_request_error","param":null,"code":"unknown_route"}})
        );
        assert_eq!(error.status, StatusCode::NOT_FOUND);
        assert_eq!(error.proxy_code(), Some(ErrorCode::UnknownRoute));
        let event = ApiError::mid_stream(ErrorCode::ShuttingDown, "cut");
        assert_eq!(
            (event.status, event.error_type.as_str()),
            (StatusCode::BAD_GATEWAY, "upstream_error")
        );
    }
}
