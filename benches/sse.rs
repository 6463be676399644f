//! SSE micro-benchmarks: the streaming response body ([`SseBody`]) driven over an in-memory
//! upstream body, in pass-through, wrap and unwrap, at several event sizes and chunkings.
//!
//! Throughput is reported in bytes of upstream event data per second, on one core (the
//! benchmark runs on a current-thread runtime). `cargo bench --bench sse -- --test` runs each
//! case once (the CI smoke check).

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use envelope_proxy::translate::sse::{EventMode, SseBody};
use http_body::Body;
use test_support::streams::{chat_events, chunked, mode_stream, Chunks};

/// Drives an [`SseBody`] over `chunks` to its end; returns the bytes sent to the client.
/// The per-event metrics work (the stream's stats) is part of what is measured.
async fn drive(chunks: &[Bytes], mode: EventMode) -> usize {
    let mut body = std::pin::pin!(SseBody::new(
        Chunks(chunks.iter().cloned().collect()),
        mode_stream(mode),
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
            let events = chat_events(mode == EventMode::Unwrap, 200, size);
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
