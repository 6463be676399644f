//! Driving the streaming body directly, without sockets: a hand-made upstream body and the
//! settings a proxied chat stream gets.

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
