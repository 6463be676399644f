//! The one error shape every client receives, and the normaliser that produces it.
//!
//! Upstreams report errors in many shapes (OpenAI, vLLM, llama.cpp, FastAPI, TGI, envelope
//! platforms, HTML pages from load balancers, empty bodies). [`normalise`] reads any of them
//! into an [`ApiError`], keeping `message`, `type`, `param` and `code` wherever the upstream had
//! them, and [`ApiError::to_body`] renders it in the client's dialect:
//!
//! - bare: `{"error":{"message","type","param","code"}}`
//! - envelope: `{"success":false,"code":"<status>","message":"<message>","data":null,"error":{…}}`
//!   (the inner `error` member keeps everything the bare form has, so nothing is lost).

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dialect::Dialect;
use crate::envelope::{self, Classified};

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

/// The OpenAI `type` for a status, used when the upstream named none (documented in the README).
pub fn error_type_for(status: StatusCode) -> &'static str {
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

    /// 413 for a request body over `--max-request-body`.
    pub fn request_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    pub fn with_type(mut self, error_type: impl Into<String>) -> Self {
        self.error_type = error_type.into();
        self
    }

    pub fn with_code(mut self, code: impl Into<Value>) -> Self {
        self.code = code.into();
        self
    }

    /// The JSON body in `dialect`.
    pub fn to_body(&self, dialect: Dialect) -> Bytes {
        let inner = InnerError {
            message: &self.message,
            error_type: &self.error_type,
            param: &self.param,
            code: &self.code,
        };
        // Serialising these types cannot fail: every key is a string and every value is JSON.
        let json = match dialect {
            Dialect::Bare => serde_json::to_vec(&BareError { error: inner }),
            Dialect::Envelope => serde_json::to_vec(&EnvelopeError {
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

/// Reads any upstream error body into an [`ApiError`] with `status`.
///
/// `content_type` only helps describe a non-JSON body; the JSON shapes are recognised by content.
pub fn normalise(status: StatusCode, content_type: Option<&str>, body: &[u8]) -> ApiError {
    match envelope::classify(body) {
        // The envelope's own code picks the status (see `Envelope::into_error`).
        Classified::Envelope(env) => env.into_error(status),
        Classified::Json => from_json_shapes(status, body)
            .unwrap_or_else(|| ApiError::new(status, describe_json(status, body))),
        Classified::NotJson => ApiError::new(status, describe_non_json(status, content_type, body))
            .with_type(error_type_for(status)),
    }
}

/// The shapes of JSON error bodies in the wild, tried in order.
fn from_json_shapes(status: StatusCode, body: &[u8]) -> Option<ApiError> {
    let shape: ErrorShapes = serde_json::from_slice(body).ok()?;
    // OpenAI and llama.cpp: {"error":{"message","type","param","code"}}.
    if let Some(Value::Object(inner)) = &shape.error {
        return Some(from_fields(
            status,
            inner.get("message"),
            inner.get("type"),
            inner.get("param"),
            inner.get("code"),
        ));
    }
    // TGI: {"error":"…","error_type":"…"}.
    if let Some(Value::String(message)) = &shape.error {
        let mut error = ApiError::new(status, message.clone());
        if let Some(Value::String(kind)) = &shape.error_type {
            error.error_type = kind.clone();
        }
        return Some(error);
    }
    // FastAPI: {"detail":"…"} or {"detail":[{"loc":[…],"msg":"…"}]}.
    if let Some(detail) = &shape.detail {
        return Some(ApiError::new(status, describe_detail(detail)));
    }
    // vLLM's flat error ({"object":"error","message",…,"code":400}) and bare {"message":"…"}.
    if shape.message.is_some() {
        return Some(from_fields(
            status,
            shape.message.as_ref(),
            shape.error_type_flat.as_ref(),
            shape.param.as_ref(),
            shape.code.as_ref(),
        ));
    }
    None
}

#[derive(Deserialize)]
struct ErrorShapes {
    error: Option<Value>,
    error_type: Option<Value>,
    detail: Option<Value>,
    message: Option<Value>,
    #[serde(rename = "type")]
    error_type_flat: Option<Value>,
    param: Option<Value>,
    code: Option<Value>,
}

/// Builds an error from loosely typed fields, keeping param and code as they came.
pub(crate) fn from_fields(
    status: StatusCode,
    message: Option<&Value>,
    error_type: Option<&Value>,
    param: Option<&Value>,
    code: Option<&Value>,
) -> ApiError {
    let message = match message {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => format!("upstream returned HTTP {}", status_line(status)),
        Some(other) => other.to_string(),
    };
    let mut error = ApiError::new(status, message);
    if let Some(Value::String(kind)) = error_type {
        error.error_type = kind.clone();
    }
    error.param = param.cloned().unwrap_or(Value::Null);
    error.code = code.cloned().unwrap_or(Value::Null);
    error
}

fn describe_detail(detail: &Value) -> String {
    match detail {
        Value::String(text) => text.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|item| {
                    let msg = item.get("msg").and_then(Value::as_str).unwrap_or("invalid");
                    match item.get("loc").and_then(Value::as_array) {
                        Some(loc) => {
                            let path: Vec<String> = loc
                                .iter()
                                .map(|p| match p {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                                .collect();
                            format!("{}: {msg}", path.join("."))
                        }
                        None => msg.to_string(),
                    }
                })
                .collect();
            parts.join("; ")
        }
        other => other.to_string(),
    }
}

fn describe_json(status: StatusCode, body: &[u8]) -> String {
    format!(
        "upstream returned HTTP {}: {}",
        status_line(status),
        excerpt(&String::from_utf8_lossy(body))
    )
}

fn describe_non_json(status: StatusCode, content_type: Option<&str>, body: &[u8]) -> String {
    let status = status_line(status);
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return format!("upstream returned HTTP {status} with an empty body");
    }
    let kind = content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim)
        .filter(|ct| !ct.is_empty())
        .unwrap_or("non-JSON");
    let text = String::from_utf8_lossy(trimmed);
    let summary = if looks_like_html(&text) {
        html_summary(&text)
    } else {
        excerpt(&text)
    };
    if summary.is_empty() {
        format!("upstream returned HTTP {status} with a {kind} body")
    } else {
        format!("upstream returned HTTP {status} with a {kind} body: {summary}")
    }
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

fn looks_like_html(text: &str) -> bool {
    let head: String = text
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    head.contains("<html")
        || head.contains("<!doctype")
        || head.contains("<head")
        || head.contains("<body")
}

/// The page's `<title>`, or its visible text, as a short single line.
fn html_summary(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    if let Some(start) = lower.find("<title") {
        if let Some(open_end) = lower[start..].find('>') {
            let from = start + open_end + 1;
            if let Some(len) = lower[from..].find("</title") {
                let title = excerpt(&strip_tags(&html[from..from + len]));
                if !title.is_empty() {
                    return title;
                }
            }
        }
    }
    excerpt(&strip_tags(html))
}

/// Drops tags, and the contents of script and style elements, from HTML.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len().min(4096));
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        out.push(' ');
        let tag = &rest[open..];
        let lower_head: String = tag.chars().take(8).collect::<String>().to_ascii_lowercase();
        let skip_to = if lower_head.starts_with("<script") {
            "</script"
        } else if lower_head.starts_with("<style") {
            "</style"
        } else {
            ""
        };
        let after_element = if skip_to.is_empty() {
            0
        } else {
            tag.to_ascii_lowercase().find(skip_to).unwrap_or(tag.len())
        };
        match tag[after_element..].find('>') {
            Some(close) => rest = &tag[after_element + close + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// At most 200 characters of `text` on one line, control characters removed.
fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut out = String::new();
    let mut count = 0;
    let mut pending_space = false;
    for ch in text.chars() {
        if ch.is_whitespace() || ch.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if count == MAX_CHARS {
            out.push('…');
            break;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(ch);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bare(error: &ApiError) -> Value {
        serde_json::from_slice(&error.to_body(Dialect::Bare)).unwrap()
    }

    #[test]
    fn openai_error_keeps_every_field() {
        let body = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let error = normalise(StatusCode::UNAUTHORIZED, Some("application/json"), body);
        assert_eq!(
            bare(&error),
            json!({"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}})
        );
    }

    #[test]
    fn vllm_flat_error_keeps_integer_code() {
        let body = br#"{"object":"error","message":"max_tokens too large","type":"BadRequestError","param":null,"code":400}"#;
        let error = normalise(StatusCode::BAD_REQUEST, None, body);
        assert_eq!(
            bare(&error),
            json!({"error":{"message":"max_tokens too large","type":"BadRequestError","param":null,"code":400}})
        );
    }

    #[test]
    fn tgi_and_fastapi_shapes() {
        let tgi = normalise(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            br#"{"error":"Input validation error","error_type":"validation"}"#,
        );
        assert_eq!(
            bare(&tgi),
            json!({"error":{"message":"Input validation error","type":"validation","param":null,"code":null}})
        );
        let detail = normalise(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            br#"{"detail":[{"type":"missing","loc":["body","messages"],"msg":"Field required"},{"loc":["body","n",0],"msg":"bad"}]}"#,
        );
        assert_eq!(
            detail.message,
            "body.messages: Field required; body.n.0: bad"
        );
        assert_eq!(detail.error_type, "invalid_request_error");
        let simple = normalise(
            StatusCode::UNAUTHORIZED,
            None,
            br#"{"detail":"Not authenticated"}"#,
        );
        assert_eq!(simple.message, "Not authenticated");
        assert_eq!(simple.error_type, "authentication_error");
    }

    #[test]
    fn html_becomes_a_short_sanitised_message() {
        let html = b"<!DOCTYPE html><html><head><title>example.com | 502: Bad gateway</title><style>body{}</style></head><body><script>alert(1)</script><h1>Bad gateway</h1></body></html>";
        let error = normalise(
            StatusCode::BAD_GATEWAY,
            Some("text/html; charset=UTF-8"),
            html,
        );
        assert_eq!(
            error.message,
            "upstream returned HTTP 502 Bad Gateway with a text/html body: example.com | 502: Bad gateway"
        );
        assert_eq!(error.error_type, "server_error");
        let untitled = normalise(
            StatusCode::BAD_GATEWAY,
            None,
            b"<html><body><script>x()</script><center><h1>502 Bad Gateway</h1></center></body></html>",
        );
        assert_eq!(
            untitled.message,
            "upstream returned HTTP 502 Bad Gateway with a non-JSON body: 502 Bad Gateway"
        );
    }

    #[test]
    fn empty_and_text_bodies() {
        let empty = normalise(StatusCode::SERVICE_UNAVAILABLE, None, b"");
        assert_eq!(
            empty.message,
            "upstream returned HTTP 503 Service Unavailable with an empty body"
        );
        let text = normalise(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("text/plain"),
            b"upstream connect error\r\n\tor disconnect\x07",
        );
        assert_eq!(
            text.message,
            "upstream returned HTTP 503 Service Unavailable with a text/plain body: upstream connect error or disconnect"
        );
    }

    #[test]
    fn excerpt_is_bounded() {
        let long = "x".repeat(1000);
        let error = normalise(StatusCode::BAD_GATEWAY, Some("text/plain"), long.as_bytes());
        let expected = format!(
            "upstream returned HTTP 502 Bad Gateway with a text/plain body: {}…",
            "x".repeat(200)
        );
        assert_eq!(error.message, expected);
    }

    #[test]
    fn an_envelope_error_naming_a_member_twice_is_an_invalid_body() {
        let body = br#"{"success":false,"code":"500","message":"a","message":"b","data":null}"#;
        let error = normalise(StatusCode::INTERNAL_SERVER_ERROR, None, body);
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            bare(&error),
            json!({"error":{"message":"upstream sent an invalid envelope under HTTP 500: the member `message` appears more than once","type":"upstream_error","param":null,"code":"upstream_invalid_body"}})
        );
    }

    #[test]
    fn envelope_rendering_keeps_the_inner_error() {
        let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .with_code("rate_limit_exceeded");
        let body: Value = serde_json::from_slice(&error.to_body(Dialect::Envelope)).unwrap();
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
}
