//! Non-streaming micro-benchmarks: what the response path does to a whole JSON body.
//!
//! - wrap (bare upstream → envelope client): validate the payload, then prefix + payload + `}`
//!   (the steps of `translate::translate_success`);
//! - unwrap (envelope upstream → bare client): classify, judge, slice `data` out;
//! - normalise: an upstream error body (OpenAI JSON, or an HTML page) into the client's
//!   error, rendered in the envelope dialect.
//!
//! - usage-scan: what a pass-through success costs, its `usage` and `model` read as it goes
//!   by (`translate::usage::UsageScan`, fed in 16 KiB frames); wrap and unwrap read theirs
//!   from the payload they hold, as `translate_success` does.
//!
//! At 1 KiB, 64 KiB and 1 MiB; throughput in bytes of upstream body per second.
//!
//! - validate: `envelope::is_json` (`translate::json_check`, one pass) beside what it replaced
//!   (`from_utf8` + serde_json's `IgnoredAny`), on a 300-byte chat completion chunk (the
//!   check runs once per event of a wrapped stream) and on a 64 KiB body.

use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use envelope_proxy::translate::envelope::{self, Classified, Verdict};
use envelope_proxy::translate::error_body;
use envelope_proxy::translate::usage::{UsageReport, UsageScan};
use envelope_proxy::Dialect;
use http::StatusCode;
use serde::de::IgnoredAny;

#[path = "tools/bodies.rs"]
mod bodies;

fn completion(envelope: bool, size: usize) -> Bytes {
    bodies::completion(envelope, size, bodies::LATIN)
}

fn openai_error(size: usize) -> Bytes {
    let head = r#"{"error":{"message":""#;
    let tail =
        r#"","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let fill = size.saturating_sub(head.len() + tail.len()).max(1);
    Bytes::from(format!("{head}{}{tail}", "a".repeat(fill)))
}

fn html_error(size: usize) -> Bytes {
    let head = "<html><head><title>502 Bad Gateway</title></head><body>";
    let tail = "</body></html>";
    let fill = size.saturating_sub(head.len() + tail.len()).max(1);
    Bytes::from(format!("{head}{}{tail}", "<p>x</p>".repeat(fill / 8 + 1)))
}

fn wrap(body: &Bytes) -> [Bytes; 3] {
    assert!(envelope::is_json(body));
    black_box(UsageReport::of(body, false));
    envelope::wrap_success(body.clone())
}

fn scan(body: &Bytes) -> Option<UsageReport> {
    let mut scan = UsageScan::new(false);
    for frame in body.chunks(16 << 10) {
        scan.feed(frame);
    }
    scan.finish()
}

fn unwrap(body: &Bytes) -> Bytes {
    match envelope::classify(body) {
        Classified::Envelope(env) => match env.verdict(StatusCode::OK) {
            Verdict::Success(data) => {
                let payload = envelope::slice_payload(body, data);
                black_box(UsageReport::of(&payload, false));
                payload
            }
            Verdict::Error(_) => unreachable!(),
        },
        _ => unreachable!(),
    }
}

fn bench_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("json");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    for (label, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let bare = completion(false, size);
        let wrapped = completion(true, size);
        let error = openai_error(size);
        let html = html_error(size);
        group.throughput(Throughput::Bytes(bare.len() as u64));
        group.bench_with_input(BenchmarkId::new("wrap", label), &bare, |b, body| {
            b.iter(|| wrap(black_box(body)))
        });
        // The bodies carry usage: the scan measured is one that finds it.
        assert!(scan(&bare).is_some_and(|r| r.usage.is_some()));
        group.bench_with_input(BenchmarkId::new("usage-scan", label), &bare, |b, body| {
            b.iter(|| scan(black_box(body)))
        });
        group.throughput(Throughput::Bytes(wrapped.len() as u64));
        group.bench_with_input(BenchmarkId::new("unwrap", label), &wrapped, |b, body| {
            b.iter(|| unwrap(black_box(body)))
        });
        group.throughput(Throughput::Bytes(error.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("normalise-json", label),
            &error,
            |b, body| {
                b.iter(|| {
                    error_body::normalise(
                        StatusCode::BAD_REQUEST,
                        Some("application/json"),
                        black_box(body),
                    )
                    .to_body(Dialect::Envelope)
                })
            },
        );
        group.throughput(Throughput::Bytes(html.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("normalise-html", label),
            &html,
            |b, body| {
                b.iter(|| {
                    error_body::normalise(
                        StatusCode::BAD_GATEWAY,
                        Some("text/html"),
                        black_box(body),
                    )
                    .to_body(Dialect::Envelope)
                })
            },
        );
    }
    group.finish();
}

/// A streamed chat completion chunk of 300 bytes, as one SSE event's data.
fn chat_chunk() -> Bytes {
    chat_chunk_of("lorem ipsum ")
}

/// A chat completion chunk whose content, 5 characters of Chinese, is one token's.
fn chat_chunk_zh() -> Bytes {
    let head = r#"{"id":"chatcmpl-AbCdEf0123456789","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0123456789","choices":[{"index":0,"delta":{"content":""#;
    let tail = r#""},"logprobs":null,"finish_reason":null}]}"#;
    Bytes::from(format!("{head}代理服务器{tail}"))
}

/// A chat completion chunk of 300 bytes whose content repeats `text` (ASCII).
fn chat_chunk_of(text: &str) -> Bytes {
    let head = r#"{"id":"chatcmpl-AbCdEf0123456789","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0123456789","choices":[{"index":0,"delta":{"content":""#;
    let tail = r#""},"logprobs":null,"finish_reason":null}]}"#;
    let fill = 300 - head.len() - tail.len();
    Bytes::from(format!(
        "{head}{}{tail}",
        &text.repeat(fill / text.len() + 1)[..fill]
    ))
}

/// What `envelope::is_json` was before `json_check`.
fn serde_is_json(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok() && serde_json::from_slice::<IgnoredAny>(body).is_ok()
}

fn bench_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("json/validate");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    assert_eq!(chat_chunk().len(), 300);
    for (label, body) in [
        ("300B", chat_chunk()),
        ("chunk-zh", chat_chunk_zh()),
        ("64KiB", completion(false, 64 << 10)),
        // A Chinese completion: three-byte characters, most of its bytes non-ASCII.
        (
            "64KiB-zh",
            bodies::completion(false, 64 << 10, bodies::CHINESE),
        ),
        (
            "64KiB-zh-ascii",
            bodies::completion(false, 64 << 10, bodies::CHINESE_ASCII),
        ),
    ] {
        assert!(serde_is_json(&body) && envelope::is_json(&body));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("serde+utf8", label), &body, |b, body| {
            b.iter(|| serde_is_json(black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("json_check", label), &body, |b, body| {
            b.iter(|| envelope::is_json(black_box(body)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_json, bench_validate);
criterion_main!(benches);
