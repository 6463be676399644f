//! The chat completions the benchmarks read: one source for the criterion benches
//! (`benches/json.rs`) and the upstream `bench-tool` serves, so both measure the same bytes.

use bytes::Bytes;

/// The text of an English completion, repeated.
pub const LATIN: &str = "lorem ipsum ";

/// The text of a Chinese completion, repeated: a line of Chinese and its line break (a `\n`
/// escape), as such answers come.
pub const CHINESE: &str = "你好！这是一个关于代理服务器性能的测试，内容全部为中文。\\n";

/// [`CHINESE`] as a serialiser that writes only ASCII writes it (Python's `json.dumps` by
/// default): every character a `\u` escape.
pub const CHINESE_ASCII: &str = "\\u4f60\\u597d\\uff01\\u8fd9\\u662f\\u4e00\\u4e2a\\u5173\\u4e8e\\u4ee3\\u7406\\u670d\\u52a1\\u5668\\u6027\\u80fd\\u7684\\u6d4b\\u8bd5\\uff0c\\u5185\\u5bb9\\u5168\\u90e8\\u4e3a\\u4e2d\\u6587\\u3002\\n";

/// A bare chat completion of `size` bytes (at least ~300) whose content repeats `text`, cut to
/// the size (never in half a character or an escape, padded with spaces), inside a success
/// envelope when `envelope`.
pub fn completion(envelope: bool, size: usize, text: &str) -> Bytes {
    let head = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":""#;
    let tail = r#""},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
    let fill = size.saturating_sub(head.len() + tail.len()).max(1);
    let mut body = String::with_capacity(size + 80);
    if envelope {
        body.push_str(r#"{"success":true,"code":"200","message":"successful","data":"#);
    }
    body.push_str(head);
    let mut content = text.repeat(fill / text.len() + 1);
    let mut end = fill;
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    content.truncate(end);
    // Not cut inside an escape: `\\n` is two bytes, `\\u` six.
    if let Some(at) = content.rfind('\\') {
        let whole = if content[at..].starts_with("\\u") {
            6
        } else {
            2
        };
        if content.len() - at < whole {
            content.truncate(at);
        }
    }
    body.push_str(&content);
    body.push_str(&" ".repeat(fill - content.len()));
    body.push_str(tail);
    if envelope {
        body.push('}');
    }
    Bytes::from(body)
}
