//! Driving the streaming body directly, without sockets: a hand-made upstream body, the
//! settings a proxied chat stream gets, and the chat chunks the benchmarks stream.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use envelope_proxy::config::StreamEnvelope;
use envelope_proxy::translate::sse::{EventMode, StreamSettings};
use envelope_proxy::translate::template::Envelopes;
use envelope_proxy::Dialect;
use http_body::{Body, Frame};

/// An upstream body that yields prepared chunks, one frame each, all at once.
pub struct Chunks(pub VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// One `data: <chunk>\n\n` event of about `size` bytes: a chat completion chunk whose
/// `content` is `x`s, inside the standard envelope when `envelope`.
pub fn chat_event(envelope: bool, size: usize) -> Bytes {
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
    Bytes::from(event)
}

/// A chat stream: `count` events of about `size` bytes (see [`chat_event`]), then `[DONE]`.
pub fn chat_events(envelope: bool, count: usize, size: usize) -> Vec<Bytes> {
    let mut events = vec![chat_event(envelope, size); count];
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// A stream's bytes cut into chunks: one per event (`chunk == 0`) or every `chunk` bytes.
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

/// Settings of a stream in `mode` between the dialects it implies, with the benchmarks' limits
/// (an idle timeout and an event cap no benchmark reaches).
pub fn mode_stream(mode: EventMode) -> StreamSettings {
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

/// Settings for a chat stream between `client` and `upstream` that requires `[DONE]`.
pub fn chat_stream(
    client: Dialect,
    upstream: Dialect,
    stream_envelope: StreamEnvelope,
) -> StreamSettings {
    StreamSettings {
        mode: EventMode::select(client, upstream, stream_envelope),
        client,
        upstream,
        require_done: true,
        idle_timeout: Duration::from_secs(60),
        keepalive: None,
        max_event_bytes: 1 << 20,
        envelopes: Envelopes::standard(),
    }
}
