//! The heap an upstream error with a huge member costs, measured with dhat: every reader of an
//! error (an envelope's, a template's, a stream's error event) reads members as written, so
//! the peak stays a small multiple of the body; serde's `Value` of the member alone would cost
//! ~16 bytes per byte of JSON (~32 MB for the 2 MB member here).
//! One test per binary: dhat's profiler is process-wide.

use std::collections::VecDeque;

use bytes::Bytes;
use envelope_proxy::config::StreamEnvelope;
use envelope_proxy::translate::error_body::normalise;
use envelope_proxy::translate::sse::SseBody;
use envelope_proxy::translate::template::{Envelopes, Preset, SideFlags, Unwrapped};
use envelope_proxy::Dialect;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;

use test_support::streams;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// The most the heap may grow while an error is read: less than half the body (2 MB). The
/// body is never copied, let alone turned into a `Value`.
const GROWTH_LIMIT: usize = 1 << 20;

/// `before`, `[1,1,…,1]` with a million items (2 MB as written), `after`: built in place, so
/// that the heap's peak so far is the body itself.
fn with_a_million_ones(before: &str, after: &str) -> String {
    let mut body = String::with_capacity(before.len() + 2_000_001 + after.len());
    body.push_str(before);
    body.push('[');
    for _ in 0..999_999 {
        body.push_str("1,");
    }
    body.push_str("1]");
    body.push_str(after);
    body
}

/// The message such a member becomes: its first 2,000 characters, then `…`.
fn cut() -> String {
    format!("[{}1…", "1,".repeat(999))
}

/// Runs `read` and checks how far the heap grew meanwhile: the peak so far, less what was live
/// before (the peak before was the body's own, built just before).
fn assert_bounded<T>(what: &str, read: impl FnOnce() -> T) -> T {
    let live = dhat::HeapStats::get().curr_bytes;
    let out = read();
    let growth = dhat::HeapStats::get().max_bytes.saturating_sub(live);
    assert!(
        growth < GROWTH_LIMIT,
        "{what}: the heap grew by {growth} bytes (limit {GROWTH_LIMIT})"
    );
    out
}

#[test]
fn errors_with_a_huge_member_are_read_in_bounded_memory() {
    let _profiler = dhat::Profiler::builder().testing().build();

    // The standard envelope (`Envelope::into_error`).
    let body = with_a_million_ones(
        r#"{"success":false,"code":"500","message":"#,
        r#","data":null}"#,
    );
    let error = assert_bounded("an envelope's message", || {
        normalise(StatusCode::BAD_GATEWAY, None, body.as_bytes())
    });
    assert_eq!(
        (error.status, error.message),
        (StatusCode::INTERNAL_SERVER_ERROR, cut())
    );
    drop(body);

    // A template's error envelope (JSend) and its discriminator.
    let jsend = Envelopes::build(
        &SideFlags {
            preset: Some(Preset::Jsend),
            ..SideFlags::default()
        },
        &SideFlags::default(),
        true,
    )
    .expect("the JSend preset");
    let body = with_a_million_ones(
        r#"{"status":"error","message":"m","code":503,"data":{"param":"#,
        "}}",
    );
    let error = assert_bounded("a template's error object", || {
        jsend
            .upstream()
            .read_error(StatusCode::BAD_GATEWAY, body.as_bytes())
    });
    assert_eq!(
        error.map(|e| (e.status, e.message, e.param)),
        Some((StatusCode::SERVICE_UNAVAILABLE, "m".into(), Value::Null))
    );
    drop(body);
    let body = Bytes::from(with_a_million_ones(r#"{"status":"#, r#","data":1}"#));
    let read = assert_bounded("a template's discriminator", || {
        jsend.upstream().unwrap(&body, StatusCode::OK)
    });
    assert!(
        matches!(&read, Unwrapped::Error(e) if e.message.ends_with("neither success nor error")),
        "{read:?}"
    );
    drop(body);

    // A bare stream's error event wrapped for an envelope client (`stream_error`).
    let mut settings = streams::chat_stream(Dialect::Envelope, Dialect::Bare, StreamEnvelope::Wrap);
    settings.max_event_bytes = 4 << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let event = with_a_million_ones(r#"data: {"error":{"message":"#, ",\"code\":503}}\n\n");
    let chunks = VecDeque::from([Bytes::from(event), Bytes::from_static(b"data: [DONE]\n\n")]);
    let out = assert_bounded("a stream's error event", || {
        runtime.block_on(async move {
            let body = SseBody::new(streams::Chunks(chunks), settings);
            body.collect().await.expect("no stream error").to_bytes()
        })
    });
    let expected = format!(
        "data: {{\"success\":false,\"code\":\"503\",\"message\":\"{cut}\",\"data\":null,\"error\":{{\"message\":\"{cut}\",\"type\":\"server_error\",\"param\":null,\"code\":503}}}}\n\ndata: [DONE]\n\n",
        cut = cut()
    );
    assert_eq!(String::from_utf8_lossy(&out), expected);
}
