//! Reading an upstream's error body into the proxy's [`ApiError`].
//!
//! Upstreams report errors in many shapes (OpenAI, vLLM, llama.cpp, FastAPI, TGI, envelope
//! platforms, HTML pages from load balancers, empty bodies). [`normalise`] reads any of them
//! into an [`ApiError`], keeping `message`, `type`, `param` and `code` wherever the upstream had
//! them; `error` renders it in the client's dialect. An envelope upstream with another envelope
//! than the standard one has its error bodies read by its templates first ([`normalise_from`],
//! `template.rs`).

use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{error_type_for, status_line, ApiError};
use crate::translate::envelope::{self, Classified};
use crate::translate::template::Shape;

/// Reads an upstream error body into an [`ApiError`], first by the rules of `shape` (an
/// envelope upstream's envelope, when it is not the standard one), then as [`normalise`] does.
pub fn normalise_from(
    shape: Option<&Shape>,
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiError {
    shape
        .and_then(|shape| shape.read_error(status, body))
        .unwrap_or_else(|| normalise(status, content_type, body))
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
        return Some(ApiError::from_fields(
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
        return Some(ApiError::from_fields(
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
    use crate::dialect::Dialect;
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
}
