//! SSE micro-benchmarks: the streaming response body ([`SseBody`]) driven over an in-memory
//! upstream body, in pass-through, wrap and unwrap, at several event sizes and chunkings.
//!
//! Throughput is reported in bytes of upstream event data per second, on one core (the
//! benchmark runs on a current-thread runtime). `cargo bench --bench sse -- --test` runs each
//! case once (the CI smoke check).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use envelope_proxy::translate::sse::{EventMode, SseBody, StreamSettings};
use envelope_proxy::translate::template::Envelopes;
use envelope_proxy::Dialect;
use http_body::{Body, Frame};

/// An upstream body that yields pre-cut chunks (cloning a `Bytes` copies nothing).
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// A chat stream of `events` chunks of about `size` bytes each, then `[DONE]`.
pub fn stream(envelope: bool, events: usize, size: usize) -> Vec<Bytes> {
    let head = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":""#;
    let tail = r#""},"finish_reason":null}]}"#;
    let fill = size.saturating_sub(head.len() + tail.len() + 8).max(1);
    let mut event = String::from("data: ");
    if envelope {
        event.push_str(r#"{"success":true,"code":"200","message":"successful","data":"#);
    }
    event.push_str(head);
    event.push_str(&"x".repeat(fill));
    event.push_str(tail);
    if envelope {
        event.push('}');
    }
    event.push_str("\n\n");
    let event = Bytes::from(event);
    let mut out = vec![event; events];
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The stream's bytes cut into chunks: one per event (`chunk == 0`) or every `chunk` bytes.
pub fn chunked(events: &[Bytes], chunk: usize) -> Vec<Bytes> {
    if chunk == 0 {
        return events.to_vec();
    }
    let all: Bytes = events.concat().into();
    (0..all.len())
        .step_by(chunk)
        .map(|at| all.slice(at..(at + chunk).min(all.len())))
        .collect()
}

pub fn settings(mode: EventMode) -> StreamSettings {
    let (client, upstream) = match mode {
        EventMode::Passthru => (Dialect::Bare, Dialect::Bare),
        EventMode::Wrap => (Dialect::Envelope, Dialect::Bare),
        EventMode::Unwrap => (Dialect::Bare, Dialect::Envelope),
        EventMode::Rewrap => (Dialect::Envelope, Dialect::Envelope),
    };
    StreamSettings {
        mode,
        client,
        upstream,
        require_done: true,
        idle_timeout: Duration::from_secs(300),
        keepalive: None,
        max_event_bytes: 4 << 20,
        envelopes: Envelopes::standard(),
    }
}

/// Drives an [`SseBody`] over `chunks` to its end; returns the bytes sent to the client.
/// The per-event metrics work (the stream's stats) is part of what is measured.
async fn drive(chunks: &[Bytes], mode: EventMode) -> usize {
    let mut body = std::pin::pin!(SseBody::new(
        Chunks(chunks.iter().cloned().collect()),
        settings(mode),
    ));
    let mut sent = 0;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(data) = frame.expect("no error").into_data() {
            sent += data.len();
        }
    }
    sent
}

fn bench_sse(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // (label, chunk size): one chunk per event as tokens arrive; 16 KiB reads of a burst;
    // 1 KiB chunks, where most events straddle two chunks.
    let chunkings = [("per-event", 0), ("16KiB", 16 * 1024), ("1KiB", 1024)];
    for (mode, name) in [
        (EventMode::Passthru, "passthru"),
        (EventMode::Wrap, "wrap"),
        (EventMode::Unwrap, "unwrap"),
    ] {
        let mut group = c.benchmark_group(format!("sse/{name}"));
        group.measurement_time(Duration::from_secs(2));
        group.warm_up_time(Duration::from_millis(500));
        for size in [256, 1024, 8192] {
            let events = stream(mode == EventMode::Unwrap, 200, size);
            let bytes: usize = events.iter().map(Bytes::len).sum();
            for (label, chunk) in chunkings {
                let chunks = chunked(&events, chunk);
                group.throughput(Throughput::Bytes(bytes as u64));
                group.bench_with_input(
                    BenchmarkId::new(format!("{size}B-events"), label),
                    &chunks,
                    |b, chunks| b.iter(|| runtime.block_on(drive(chunks, mode))),
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_sse);
criterion_main!(benches);
