//! Reading an upstream's error body into the proxy's [`ApiError`].
//!
//! Upstreams report errors in many shapes (OpenAI, vLLM, llama.cpp, FastAPI, TGI, envelope
//! platforms, HTML pages from load balancers, empty bodies). [`normalise`] reads any of them
//! into an [`ApiError`], keeping `message`, `type`, `param` and `code` wherever the upstream had
//! them; `error` renders it in the client's dialect. An envelope upstream with another envelope
//! than the standard one has its error bodies read by its templates first ([`normalise_from`],
//! `template.rs`).
//!
//! JSON bodies are read by their members as written, and the error built from them, in bounded
//! memory (`error_fields.rs`, shared with the envelopes' own error readers).

use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{error_type_for, status_line, ApiError};
use crate::translate::envelope::{self, Classified};
use crate::translate::error_fields::{
    for_each_item, from_fields, is_array, members, text, Built, ErrorObject,
};
use crate::translate::template::Shape;

/// The part of a non-JSON body read for its summary. Error pages from proxies and load
/// balancers are a few KB, title first (the Cloudflare page in fixtures/ is 10 KB); 64 KiB
/// leaves room for inline styles and scripts ahead of the text and bounds the work.
const MAX_SCANNED_BYTES: usize = 64 * 1024;

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

/// The shapes of JSON error bodies in the wild, tried in order. Members are read as written
/// and looked into only as far as the message needs: a huge member costs no memory.
fn from_json_shapes(status: StatusCode, body: &[u8]) -> Option<ApiError> {
    let shape: ErrorShapes<'_> = serde_json::from_slice(body).ok()?;
    // OpenAI and llama.cpp: {"error":{"message","type","param","code"}}.
    if let Some(inner) = shape.error.and_then(ErrorObject::read) {
        return Some(inner.into_error(status, inner.message));
    }
    // TGI: {"error":"…","error_type":"…"}.
    if let Some(message) = shape.error.and_then(text) {
        let mut error = ApiError::new(status, message);
        if let Some(kind) = shape.error_type.and_then(text) {
            error.error_type = kind.into_owned();
        }
        return Some(error);
    }
    // FastAPI: {"detail":"…"} or {"detail":[{"loc":[…],"msg":"…"}]}.
    if let Some(detail) = shape.detail {
        return Some(ApiError::new(status, describe_detail(detail)));
    }
    // vLLM's flat error ({"object":"error","message",…,"code":400}) and bare {"message":"…"}.
    if shape.message.is_some() {
        return Some(from_fields(
            status,
            shape.message,
            shape.error_type_flat,
            shape.param,
            shape.code,
        ));
    }
    None
}

#[derive(Deserialize)]
struct ErrorShapes<'a> {
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    error_type: Option<&'a RawValue>,
    #[serde(borrow)]
    detail: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    error_type_flat: Option<&'a RawValue>,
    #[serde(borrow)]
    param: Option<&'a RawValue>,
    #[serde(borrow)]
    code: Option<&'a RawValue>,
}

/// `detail`: a string as written; a list of validation errors as `loc.a.b: msg; …`; any other
/// value as JSON. A list's message is cut after
/// [`MAX_BUILT_CHARS`](super::error_fields::MAX_BUILT_CHARS) and its walk stops there.
fn describe_detail(detail: &RawValue) -> String {
    if let Some(text) = text(detail) {
        return text.into_owned();
    }
    let mut out = Built::default();
    if !is_array(detail) {
        out.push_json(detail);
        return out.finish();
    }
    for_each_item(detail, |index, item| {
        if index > 0 {
            out.push("; ");
        }
        let [msg, loc] = members(item, ["msg", "loc"]).unwrap_or_default();
        let msg = msg.and_then(text);
        if let Some(loc) = loc.filter(|loc| is_array(loc)) {
            for_each_item(loc, |index, part| {
                if index > 0 {
                    out.push(".");
                }
                match text(part) {
                    Some(part) => out.push(&part),
                    None => out.push_json(part),
                }
                !out.is_full()
            });
            out.push(": ");
        }
        out.push(msg.as_deref().unwrap_or("invalid"));
        !out.is_full()
    });
    out.finish()
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
    let text = String::from_utf8_lossy(scanned(trimmed));
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

/// The first [`MAX_SCANNED_BYTES`] of `body`, without cutting a UTF-8 character in two.
fn scanned(body: &[u8]) -> &[u8] {
    if body.len() <= MAX_SCANNED_BYTES {
        return body;
    }
    let mut end = MAX_SCANNED_BYTES;
    // A character is at most 4 bytes: at most 3 continuation bytes to step back over.
    while end > MAX_SCANNED_BYTES - 3 && body[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &body[..end]
}

/// The page's `<title>`, or its visible text, as a short single line.
fn html_summary(html: &str) -> String {
    if let Some(start) = find_ignoring_case(html, "<title") {
        if let Some(open_end) = html[start..].find('>') {
            let from = start + open_end + 1;
            if let Some(len) = find_ignoring_case(&html[from..], "</title") {
                let title = excerpt(&strip_tags(&html[from..from + len]));
                if !title.is_empty() {
                    return title;
                }
            }
        }
    }
    excerpt(&strip_tags(html))
}

/// Drops tags, and the contents of script and style elements, from HTML. Each search starts
/// where the last one ended: the scan only moves forward.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len().min(4096));
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        out.push(' ');
        let tag = &rest[open..];
        let skip_to = if starts_with_ignoring_case(tag, "<script") {
            "</script"
        } else if starts_with_ignoring_case(tag, "<style") {
            "</style"
        } else {
            ""
        };
        let after_element = if skip_to.is_empty() {
            0
        } else {
            find_ignoring_case(tag, skip_to).unwrap_or(tag.len())
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

fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Where the ASCII `needle` first occurs in `haystack`, ignoring ASCII case, without copying
/// either. A needle starting with `<` only matches at a character boundary.
fn find_ignoring_case(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
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
    use serde_json::{json, Value};

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

    // === Adversarial bodies: bounded work and output ===

    /// `{"detail":[0,0,…]}` with `n` items.
    fn detail_of_zeros(n: usize) -> Vec<u8> {
        let mut body = br#"{"detail":["#.to_vec();
        body.extend_from_slice(&b"0,".repeat(n)[..2 * n - 1]);
        body.extend_from_slice(b"]}");
        body
    }

    /// The first 2,000 characters of `message`, then `…`: how a built message is cut.
    fn cut(message: &str) -> String {
        format!("{}…", message.chars().take(2000).collect::<String>())
    }

    #[test]
    fn a_detail_of_a_million_items_is_cut_after_2000_characters() {
        let error = normalise(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            &detail_of_zeros(1_000_000),
        );
        // 222 times "invalid; ", then "in": 2,000 characters.
        let expected = format!("{}in…", "invalid; ".repeat(222));
        assert_eq!(error.message, expected);
        assert_eq!(error.message.chars().count(), 2001);
        assert_eq!(error.error_type, "invalid_request_error");
    }

    #[test]
    fn a_detail_message_of_2000_characters_is_whole_and_one_more_is_cut() {
        // "invalid" and 199 times "; invalid": 7 + 199 × 9 = 1,798 characters; a loc of
        // 200 one-digit parts adds "0.0.…0: " (401) to the first: 2,199.
        let whole = normalise(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            &detail_of_zeros(200),
        );
        assert_eq!(whole.message, vec!["invalid"; 200].join("; "));
        let exact = br#"{"detail":[{"msg":"MSG"}]}"#;
        let msg = "m".repeat(2000);
        let body = String::from_utf8_lossy(exact).replace("MSG", &msg);
        let error = normalise(StatusCode::UNPROCESSABLE_ENTITY, None, body.as_bytes());
        assert_eq!(error.message, msg);
        let body = body.replace(&msg, &format!("{msg}é"));
        let error = normalise(StatusCode::UNPROCESSABLE_ENTITY, None, body.as_bytes());
        assert_eq!(error.message, format!("{msg}…"));
    }

    #[test]
    fn a_loc_of_a_million_parts_is_cut_too() {
        let body = format!(
            r#"{{"detail":[{{"loc":[{}],"msg":"bad"}},{{"msg":"never read"}}]}}"#,
            vec!["7"; 1_000_000].join(",")
        );
        let error = normalise(StatusCode::UNPROCESSABLE_ENTITY, None, body.as_bytes());
        assert_eq!(error.message, cut(&"7.".repeat(1000)));
    }

    #[test]
    fn a_huge_non_string_message_is_cut_and_a_huge_param_or_code_dropped() {
        let items = vec!["1"; 1_000_000].join(",");
        let body = format!(
            r#"{{"error":{{"message":[{items}],"type":"t","param":[{items}],"code":"c"}}}}"#
        );
        let error = normalise(StatusCode::BAD_REQUEST, None, body.as_bytes());
        assert_eq!(
            bare(&error),
            json!({"error":{"message":cut(&format!("[{items}]")),"type":"t","param":null,"code":"c"}})
        );
        // Just small enough (4,096 bytes as written): kept as sent.
        let code = format!("\"{}\"", "c".repeat(4094));
        let body = format!(r#"{{"message":"m","param":[{items}],"code":{code}}}"#);
        let error = normalise(StatusCode::BAD_REQUEST, None, body.as_bytes());
        assert_eq!(
            bare(&error),
            json!({"error":{"message":"m","type":"invalid_request_error","param":null,"code":"c".repeat(4094)}})
        );
    }

    /// The messages every shape gave when each was read into a `Value`: unchanged.
    #[test]
    fn json_shapes_read_as_written_say_what_they_always_said() {
        let cases: &[(&str, &str)] = &[
            (r#"{"detail":[]}"#, ""),
            (r#"{"detail":[{"loc":[],"msg":"x"}]}"#, ": x"),
            (
                r#"{"detail":[{"loc":["body",0,1.5,1e2,-3,true,null,{"b":1,"a":[2, 3]},["x"]],"msg":"bad"}]}"#,
                r#"body.0.1.5.100.0.-3.true.null.{"a":[2,3],"b":1}.["x"]: bad"#,
            ),
            (
                r#"{"detail":[{"msg":"first","msg":"last","loc":["a"],"loc":["b"]}]}"#,
                "b: last",
            ),
            (
                r#"{"detail":[{"m\u0073g":"caf\u00e9 \"q\"","loc":"body"}]}"#,
                "café \"q\"",
            ),
            (
                r#"{"detail":[{"msg":5},"text",null,[1],{"loc":[1]}]}"#,
                "invalid; invalid; invalid; invalid; 1: invalid",
            ),
            (
                r#"{"detail":{"b":1,"a":[1.0, "x"]}}"#,
                r#"{"a":[1.0,"x"],"b":1}"#,
            ),
            (r#"{"detail":12}"#, "12"),
            (r#"{"detail":true}"#, "true"),
            (r#"{"detail":"as \u0077ritten"}"#, "as written"),
            (r#"{"detail":null,"message":"flat"}"#, "flat"),
            (r#"{"error":null,"detail":"d"}"#, "d"),
            (r#"{"error":[1],"detail":"d"}"#, "d"),
            (r#"{"error":{"message":"a","message":"b"}}"#, "b"),
            (
                r#"{"error":{"message":null}}"#,
                "upstream returned HTTP 400 Bad Request",
            ),
            (r#"{"error":{}}"#, "upstream returned HTTP 400 Bad Request"),
            (
                r#"{"error":{"message":{"z":null,"a":-0.5}}}"#,
                r#"{"a":-0.5,"z":null}"#,
            ),
            (r#"{"message":["a", 1]}"#, r#"["a",1]"#),
            (
                r#"{"message":"m","message":"n"}"#,
                "upstream returned HTTP 400 Bad Request: {\"message\":\"m\",\"message\":\"n\"}",
            ),
            (
                r#"{"other":1}"#,
                "upstream returned HTTP 400 Bad Request: {\"other\":1}",
            ),
        ];
        for (body, message) in cases {
            let error = normalise(StatusCode::BAD_REQUEST, None, body.as_bytes());
            assert_eq!(error.message, *message, "{body}");
        }
        let body = br#"{"error":{"message":"m","type":"t","param":{"b":[1, 2],"a":null},"code":12,"type":"u","extra":[[[]]]}}"#;
        assert_eq!(
            bare(&normalise(StatusCode::BAD_REQUEST, None, body)),
            json!({"error":{"message":"m","type":"u","param":{"a":null,"b":[1,2]},"code":12}})
        );
        let tgi = br#"{"error":"e","error_type":"k","error_type":"l"}"#;
        let error = normalise(StatusCode::BAD_REQUEST, None, tgi);
        assert_eq!(error.message, "upstream returned HTTP 400 Bad Request: {\"error\":\"e\",\"error_type\":\"k\",\"error_type\":\"l\"}");
        let tgi = br#"{"error":"e","error_type":7}"#;
        let error = normalise(StatusCode::BAD_REQUEST, None, tgi);
        assert_eq!(
            (error.message.as_str(), error.error_type.as_str()),
            ("e", "invalid_request_error")
        );
    }

    /// `<script></script>` `n` times.
    fn scripts(n: usize) -> String {
        "<script></script>".repeat(n)
    }

    /// Stripping is linear: 16 MiB of script elements is one pass. (Searching for each
    /// element's end in a lower-cased copy of the rest of the page took ~10 minutes.)
    #[test]
    fn stripping_sixteen_mib_of_script_elements_is_one_pass() {
        let n = 16 * 1024 * 1024 / 18;
        let html = format!("{}end", "<SCRIPT>x</Script>".repeat(n));
        assert_eq!(strip_tags(&html), format!("{}end", " ".repeat(n)));
        let html = format!("{}<style>a</STYLE >b<scripT", "<StYlE>x</style>".repeat(n));
        assert_eq!(strip_tags(&html), format!("{}b ", " ".repeat(n + 1)));
    }

    #[test]
    fn a_page_of_sixteen_mib_of_scripts_is_summarised_from_its_first_64_kib() {
        let html = format!(
            "<html><body><h1>502 Bad Gateway</h1>{}<p>never read</p></body></html>",
            scripts(1_000_000)
        );
        let error = normalise(StatusCode::BAD_GATEWAY, Some("text/html"), html.as_bytes());
        assert_eq!(
            error.message,
            "upstream returned HTTP 502 Bad Gateway with a text/html body: 502 Bad Gateway"
        );
        // A title holding the elements is empty once stripped: the page's text is used.
        let html = format!(
            "<html><head><title>{}</title></head><body>Bad gateway{}</body></html>",
            scripts(1000),
            scripts(1_000_000)
        );
        let error = normalise(StatusCode::BAD_GATEWAY, None, html.as_bytes());
        assert_eq!(
            error.message,
            "upstream returned HTTP 502 Bad Gateway with a non-JSON body: Bad gateway"
        );
    }

    #[test]
    fn text_or_a_title_past_the_first_64_kib_is_not_read() {
        // `<html><body>` and 3,855 elements end at byte 65,547: past the 65,536 read.
        let html = format!("<html><body>{}<h1>late</h1>", scripts(3855));
        let error = normalise(StatusCode::BAD_GATEWAY, Some("text/html"), html.as_bytes());
        assert_eq!(
            error.message,
            "upstream returned HTTP 502 Bad Gateway with a text/html body"
        );
        // With one element fewer, `<h1>` ends at byte 65,534: "ok" is the last text read.
        let html = format!("<html><body>{}<h1>ok</h1>cut", scripts(3854));
        let error = normalise(StatusCode::BAD_GATEWAY, Some("text/html"), html.as_bytes());
        assert_eq!(
            error.message,
            "upstream returned HTTP 502 Bad Gateway with a text/html body: ok"
        );
        let html = format!("<html><head>{}<title>Gone</title>", scripts(3855));
        let error = normalise(StatusCode::BAD_GATEWAY, None, html.as_bytes());
        assert_eq!(
            error.message,
            "upstream returned HTTP 502 Bad Gateway with a non-JSON body"
        );
    }

    #[test]
    fn the_scanned_part_never_cuts_a_character_in_two() {
        // "é" is 2 bytes: the 65,536th byte is the first half of the 32,768th.
        let text = format!("x{}", "é".repeat(40_000));
        let error = normalise(StatusCode::BAD_GATEWAY, None, text.as_bytes());
        assert_eq!(
            error.message,
            format!(
                "upstream returned HTTP 502 Bad Gateway with a non-JSON body: x{}…",
                "é".repeat(199)
            )
        );
        assert_eq!(scanned(text.as_bytes()).len(), 65_535);
        assert_eq!(scanned(&[0x80; 70_000]).len(), 65_533);
    }
}
