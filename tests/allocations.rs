//! Allocation counts on the streaming path, measured with dhat's heap profiler.
//!
//! Pass-through and wrap must allocate nothing per event (payloads are sliced, never copied),
//! unwrap a small constant number per event — none of it dependent on the event's size.
//! One test per binary: dhat's profiler is process-wide.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use envelope_proxy::config::StreamEnvelope;
use envelope_proxy::translate::sse::SseBody;
use envelope_proxy::Dialect;
use http_body::Body;

use test_support::streams;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// `events` events of about `size` bytes each (one per chunk, as hyper hands them over: slices
/// of a shared read buffer), then `[DONE]`.
fn stream(events: usize, size: usize, wrapped: bool) -> VecDeque<Bytes> {
    let content = "x".repeat(size);
    let chunk = format!(
        r#"{{"id":"c","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"{content}"}}}}]}}"#
    );
    let data = if wrapped {
        format!(r#"{{"success":true,"code":"200","message":"successful","data":{chunk}}}"#)
    } else {
        chunk
    };
    let event = format!("data: {data}\n\n");
    let mut buffer = BytesMut::new();
    for _ in 0..events {
        buffer.extend_from_slice(event.as_bytes());
    }
    buffer.extend_from_slice(b"data: [DONE]\n\n");
    let mut chunks = VecDeque::new();
    while buffer.len() > event.len() {
        chunks.push_back(buffer.split_to(event.len()).freeze());
    }
    chunks.push_back(buffer.split().freeze());
    chunks
}

/// Heap blocks allocated while the client-side body drains one stream.
fn allocations(
    runtime: &tokio::runtime::Runtime,
    client: Dialect,
    upstream: Dialect,
    stream_envelope: StreamEnvelope,
    chunks: VecDeque<Bytes>,
) -> u64 {
    let settings = streams::chat_stream(client, upstream, stream_envelope);
    runtime.block_on(async move {
        let before = dhat::HeapStats::get().total_blocks;
        let mut body = std::pin::pin!(SseBody::new(streams::Chunks(chunks), settings));
        let mut sent = 0usize;
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            sent += frame
                .expect("no stream error")
                .into_data()
                .map_or(0, |d| d.len());
        }
        assert!(sent > 0);
        dhat::HeapStats::get().total_blocks - before
    })
}

#[test]
fn per_event_allocations_are_constant_and_independent_of_event_size() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let modes = [
        (
            "pass-through",
            Dialect::Bare,
            Dialect::Bare,
            StreamEnvelope::Bare,
            false,
            0,
        ),
        // Validating the chunk as JSON allocates nothing (`translate/json_check.rs`: its stack
        // of open containers is a `u64` up to 64 levels deep).
        (
            "wrap",
            Dialect::Envelope,
            Dialect::Bare,
            StreamEnvelope::Wrap,
            false,
            0,
        ),
        // The envelope's members are found by the same one-pass check (`envelope::classify`),
        // which allocates nothing either (serde_json's parse kept a scratch buffer: 1 per event).
        (
            "unwrap",
            Dialect::Bare,
            Dialect::Envelope,
            StreamEnvelope::Bare,
            true,
            0,
        ),
    ];
    for (name, client, upstream, stream_envelope, wrapped, per_event) in modes {
        // The least of three runs: one-off allocations inside the runtime (its timer wheel,
        // thread-locals) fall on whichever run comes first and are not the stream's.
        let measure = |events, size| {
            (0..3)
                .map(|_| {
                    allocations(
                        &runtime,
                        client,
                        upstream,
                        stream_envelope,
                        stream(events, size, wrapped),
                    )
                })
                .min()
                .unwrap_or(u64::MAX)
        };
        // The shorter stream is long enough for the stream's own buffers to reach their
        // size: the events are ready together and gathered up to 64 pieces a frame, so the
        // queue and the gathering buffer grow over the first few dozen events.
        let small_few = measure(110, 16);
        let small_many = measure(1110, 16);
        let large_few = measure(110, 16 * 1024);
        let large_many = measure(1110, 16 * 1024);
        assert_eq!(
            (small_many - small_few) / 1000,
            per_event,
            "{name}: {small_few} → {small_many} for 1000 more events"
        );
        assert_eq!(
            (small_many - small_few) % 1000,
            0,
            "{name}: not a whole number per event"
        );
        // Per event, that is: a stream's one-off allocations may differ with the size (small
        // pieces are gathered into a buffer the stream keeps; large ones go out alone).
        assert_eq!(
            large_many - large_few,
            small_many - small_few,
            "{name}: allocations per event depend on the event size"
        );
    }
}
