//! [`SseBody`]: the streaming response body.
//!
//! It re-frames the upstream body into whole events, hands each to the [`EventMode`], and
//! yields the result as soon as it is complete — nothing is buffered beyond one partial event.
//! Invariants:
//! - only whole events reach the client; a partial event is never sent, not even at the
//!   end of the stream (the framer discards an unterminated tail; only a lone
//!   `data: [DONE]` line is completed);
//! - a stream that breaks (transport error, idle timeout, over-size event), that ends in the
//!   middle of an event (on every route, whatever `--require-done` says), or that ends
//!   without `data: [DONE]` when one is required ends with exactly one error event in the
//!   form of the surrounding events, and never with `[DONE]`;
//! - a stream that already carried an upstream error event, or finished with `[DONE]`,
//!   gets no extra event;
//! - dropping the body (the client went away) drops the upstream body with it, which closes
//!   that upstream connection instead of returning it to the pool;
//! - when the shutdown grace period runs out (`cut`), the stream ends with a `shutting_down`
//!   error event instead of being dropped mid-event.
//!
//! How the stream ended ([`SseBody::stream_end`]) is read by the access log and the metrics.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::framer::{SseEvent, SseFramer};
use super::transform::{error_event, EventKind, EventMode};
use crate::dialect::Dialect;
use crate::error::BoxError;
use crate::error::{ApiError, ErrorCode};

/// Everything a stream needs to know, fixed when the response headers arrive.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    pub mode: EventMode,
    pub client: Dialect,
    pub upstream: Dialect,
    /// End a stream that closes without `[DONE]` with a truncation error event.
    pub require_done: bool,
    /// Longest wait for the next upstream bytes.
    pub idle_timeout: Duration,
    /// Send `: keep-alive` after this long without output (never when `None`).
    pub keepalive: Option<Duration>,
    pub max_event_bytes: usize,
}

/// How a stream ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The upstream finished (with `[DONE]`, or without it when not required), with every
    /// event whole.
    Complete,
    /// The upstream reported an error event itself.
    UpstreamErrorEvent,
    Truncated,
    Broken,
    IdleTimeout,
    EventTooLarge,
    ClientCancelled,
    /// Cut when the shutdown grace period ran out.
    ShuttingDown,
}

impl StreamEnd {
    /// The `outcome` label of metrics and the access log; for an early end, the code of the
    /// error event that reported it (checked by a test below).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Complete => "ok",
            StreamEnd::UpstreamErrorEvent => "upstream_error_event",
            StreamEnd::Truncated => "stream_truncated",
            StreamEnd::Broken => "upstream_broken",
            StreamEnd::IdleTimeout => "idle_timeout",
            StreamEnd::EventTooLarge => "event_too_large",
            StreamEnd::ClientCancelled => "client_cancelled",
            StreamEnd::ShuttingDown => "shutting_down",
        }
    }

    /// The code of the error event the proxy ends the stream with; `None` when the stream
    /// ended whole, with the upstream's own error event, or without a client to tell.
    pub(crate) fn error_code(self) -> Option<ErrorCode> {
        match self {
            StreamEnd::Complete | StreamEnd::UpstreamErrorEvent | StreamEnd::ClientCancelled => {
                None
            }
            StreamEnd::Truncated => Some(ErrorCode::StreamTruncated),
            StreamEnd::Broken => Some(ErrorCode::UpstreamBroken),
            StreamEnd::IdleTimeout => Some(ErrorCode::IdleTimeout),
            StreamEnd::EventTooLarge => Some(ErrorCode::EventTooLarge),
            StreamEnd::ShuttingDown => Some(ErrorCode::ShuttingDown),
        }
    }
}

const KEEPALIVE_COMMENT: Bytes = Bytes::from_static(b": keep-alive\n\n");

pin_project! {
    /// A response body that streams SSE events from `B`, translated per [`EventMode`].
    pub struct SseBody<B> {
        #[pin]
        inner: B,
        framer: SseFramer,
        out: VecDeque<Bytes>,
        settings: StreamSettings,
        error_form: Dialect,
        saw_done: bool,
        saw_error: bool,
        upstream_ended: bool,
        last_upstream: Instant,
        last_output: Instant,
        // Bytes arrived / went out since `last_*` were set: the clock is read once per wait,
        // when the body goes pending, not once per frame.
        upstream_moved: bool,
        output_moved: bool,
        #[pin]
        timer: Sleep,
        cut: CancellationToken,
        #[pin]
        cut_wait: WaitForCancellationFutureOwned,
        outcome: Option<StreamEnd>,
    }
}

impl<B> SseBody<B> {
    /// A stream that is never cut short by the proxy itself.
    pub fn new(inner: B, settings: StreamSettings) -> Self {
        Self::with_cut(inner, settings, CancellationToken::new())
    }

    /// `cut` ends the stream with a `shutting_down` error event when cancelled.
    pub(crate) fn with_cut(inner: B, settings: StreamSettings, cut: CancellationToken) -> Self {
        let now = Instant::now();
        Self {
            inner,
            framer: SseFramer::new(settings.max_event_bytes),
            // Room for a few rewritten events: allocated once per stream, not per event.
            out: VecDeque::with_capacity(8),
            error_form: settings.mode.error_form(settings.client, settings.upstream),
            settings,
            saw_done: false,
            saw_error: false,
            upstream_ended: false,
            last_upstream: now,
            last_output: now,
            upstream_moved: false,
            output_moved: false,
            timer: tokio::time::sleep_until(next_deadline(&settings, now, now)),
            cut_wait: cut.clone().cancelled_owned(),
            cut,
            outcome: None,
        }
    }

    /// How the stream ended; `None` while it runs (and when the client left before the end).
    pub(crate) fn stream_end(&self) -> Option<StreamEnd> {
        self.outcome
    }
}

/// The earlier of the idle deadline and the next keep-alive.
fn next_deadline(
    settings: &StreamSettings,
    last_upstream: Instant,
    last_output: Instant,
) -> Instant {
    let idle = last_upstream + settings.idle_timeout;
    match settings.keepalive {
        Some(every) => idle.min(last_output + every),
        None => idle,
    }
}

impl<B> Body for SseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(piece) = this.out.pop_front() {
                *this.output_moved = true;
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if this.outcome.is_some() {
                return Poll::Ready(None);
            }
            // Whole events already buffered go out before we wait on the upstream again.
            match this.framer.next_event() {
                Ok(Some(event)) => {
                    apply(
                        this.settings,
                        this.out,
                        this.saw_done,
                        this.saw_error,
                        event,
                    );
                    continue;
                }
                Ok(None) => {}
                Err(error) => {
                    let message = format!(
                        "the upstream sent an event larger than {} bytes",
                        error_limit(&error)
                    );
                    end_with_error(
                        this.out,
                        this.outcome,
                        *this.error_form,
                        StreamEnd::EventTooLarge,
                        message,
                    );
                    continue;
                }
            }
            if *this.upstream_ended {
                finish(
                    this.settings,
                    this.framer,
                    this.out,
                    this.saw_done,
                    this.saw_error,
                    *this.error_form,
                    this.outcome,
                );
                continue;
            }
            if this.cut.is_cancelled() {
                let message =
                    "the proxy is shutting down; the stream was closed before it finished"
                        .to_string();
                end_with_error(
                    this.out,
                    this.outcome,
                    *this.error_form,
                    StreamEnd::ShuttingDown,
                    message,
                );
                continue;
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.upstream_moved = true;
                    // Trailers carry nothing a client of an event stream can use.
                    if let Ok(data) = frame.into_data() {
                        this.framer.push(data);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    if *this.saw_done || *this.saw_error {
                        // The answer was already complete (or already failed visibly).
                        *this.outcome = Some(if *this.saw_done {
                            StreamEnd::Complete
                        } else {
                            StreamEnd::UpstreamErrorEvent
                        });
                        continue;
                    }
                    let error = error.into();
                    // The OS error text is for the log; the client is told what kind of failure.
                    let cause = crate::error::describe_chain(error.as_ref());
                    tracing::warn!(%cause, "upstream event stream broke");
                    let failure = crate::error::body_failure(error.as_ref());
                    let message = format!("the upstream stream broke before it finished ({failure}); the answer is incomplete");
                    end_with_error(
                        this.out,
                        this.outcome,
                        *this.error_form,
                        StreamEnd::Broken,
                        message,
                    );
                }
                Poll::Ready(None) => *this.upstream_ended = true,
                Poll::Pending => {
                    let now = Instant::now();
                    if std::mem::take(this.upstream_moved) {
                        *this.last_upstream = now;
                    }
                    if std::mem::take(this.output_moved) {
                        *this.last_output = now;
                    }
                    if now >= *this.last_upstream + this.settings.idle_timeout {
                        let message = format!(
                            "the upstream sent nothing for {}s; the stream was closed and the answer is incomplete",
                            this.settings.idle_timeout.as_secs_f64()
                        );
                        end_with_error(
                            this.out,
                            this.outcome,
                            *this.error_form,
                            StreamEnd::IdleTimeout,
                            message,
                        );
                        continue;
                    }
                    if let Some(every) = this.settings.keepalive {
                        // Between our own frames is always an event boundary: we emit whole events.
                        if now >= *this.last_output + every {
                            this.out.push_back(KEEPALIVE_COMMENT);
                            continue;
                        }
                    }
                    let deadline =
                        next_deadline(this.settings, *this.last_upstream, *this.last_output);
                    // Deadlines only move later while a stream flows, so the timer is reset only
                    // when it must fire sooner or has fired: an early wake-up just comes back
                    // here and sets the real deadline, once per period instead of per event.
                    if deadline < this.timer.deadline() || this.timer.is_elapsed() {
                        this.timer.as_mut().reset(deadline);
                    }
                    if this.timer.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                    if this.cut_wait.as_mut().poll(cx).is_ready() {
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.outcome.is_some() && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn apply(
    settings: &StreamSettings,
    out: &mut VecDeque<Bytes>,
    saw_done: &mut bool,
    saw_error: &mut bool,
    event: SseEvent,
) {
    match settings.mode.apply(event, settings.upstream, out) {
        EventKind::Done => *saw_done = true,
        EventKind::Error => *saw_error = true,
        EventKind::Normal => {}
    }
}

/// The upstream body ended cleanly: flush the last whole events, then decide whether the
/// stream was complete.
fn finish(
    settings: &StreamSettings,
    framer: &mut SseFramer,
    out: &mut VecDeque<Bytes>,
    saw_done: &mut bool,
    saw_error: &mut bool,
    error_form: Dialect,
    outcome: &mut Option<StreamEnd>,
) {
    // finish() hands out what is left one event at a time.
    loop {
        match framer.finish() {
            Ok(Some(event)) => apply(settings, out, saw_done, saw_error, event),
            Ok(None) => break,
            Err(error) => {
                let message = format!(
                    "the upstream sent an event larger than {} bytes",
                    error_limit(&error)
                );
                return end_with_error(out, outcome, error_form, StreamEnd::EventTooLarge, message);
            }
        }
    }
    if *saw_error {
        *outcome = Some(StreamEnd::UpstreamErrorEvent);
    } else if *saw_done {
        // What follows `[DONE]` cannot make the answer incomplete (clients stop reading there).
        *outcome = Some(StreamEnd::Complete);
    } else if framer.discarded_partial() {
        let message = "the upstream closed the stream in the middle of an event; the incomplete event was dropped and the answer is incomplete".to_string();
        end_with_error(out, outcome, error_form, StreamEnd::Truncated, message);
    } else if !settings.require_done {
        *outcome = Some(StreamEnd::Complete);
    } else {
        let message = "the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete".to_string();
        end_with_error(out, outcome, error_form, StreamEnd::Truncated, message);
    }
}

fn end_with_error(
    out: &mut VecDeque<Bytes>,
    outcome: &mut Option<StreamEnd>,
    form: Dialect,
    end: StreamEnd,
    message: String,
) {
    // Every end reported here is one of the proxy's codes (see `StreamEnd::error_code`).
    let error = match end.error_code() {
        Some(code) => ApiError::mid_stream(code, message),
        None => ApiError::new(StatusCode::BAD_GATEWAY, message).with_type("upstream_error"),
    };
    out.push_back(error_event(&error, form));
    *outcome = Some(end);
}

fn error_limit(error: &super::framer::FramerError) -> usize {
    match error {
        super::framer::FramerError::EventTooLarge { limit } => *limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_end_is_labelled_with_its_error_events_code() {
        let ends = [
            StreamEnd::Complete,
            StreamEnd::UpstreamErrorEvent,
            StreamEnd::Truncated,
            StreamEnd::Broken,
            StreamEnd::IdleTimeout,
            StreamEnd::EventTooLarge,
            StreamEnd::ClientCancelled,
            StreamEnd::ShuttingDown,
        ];
        let coded: Vec<(&str, &str)> = ends
            .into_iter()
            .filter_map(|end| end.error_code().map(|code| (end.as_str(), code.as_str())))
            .collect();
        assert_eq!(
            coded,
            [
                ("stream_truncated", "stream_truncated"),
                ("upstream_broken", "upstream_broken"),
                ("idle_timeout", "idle_timeout"),
                ("event_too_large", "event_too_large"),
                ("shutting_down", "shutting_down"),
            ]
        );
    }

    /// A hand-made upstream body: its chunks one frame each, then a transport error if given.
    struct Upstream {
        chunks: VecDeque<Bytes>,
        error: Option<&'static str>,
    }

    impl Body for Upstream {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if let Some(chunk) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Ready(self.error.take().map(|e| Err(e.into())))
        }
    }

    fn settings(mode: EventMode, require_done: bool) -> StreamSettings {
        let (client, upstream) = match mode {
            EventMode::Passthru => (Dialect::Bare, Dialect::Bare),
            EventMode::Wrap => (Dialect::Envelope, Dialect::Bare),
            EventMode::Unwrap => (Dialect::Bare, Dialect::Envelope),
        };
        StreamSettings {
            mode,
            client,
            upstream,
            require_done,
            idle_timeout: Duration::from_secs(60),
            keepalive: None,
            max_event_bytes: 1 << 20,
        }
    }

    /// Streams `chunks` (then `error`, if any) through an [`SseBody`]: what the client gets,
    /// and how the stream ended.
    async fn stream(
        settings: StreamSettings,
        chunks: &[&'static [u8]],
        error: Option<&'static str>,
    ) -> (String, Option<StreamEnd>) {
        let upstream = Upstream {
            chunks: chunks.iter().map(|c| Bytes::from_static(c)).collect(),
            error,
        };
        let mut body = std::pin::pin!(SseBody::new(upstream, settings));
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.expect("the body itself never fails");
            out.extend_from_slice(&frame.into_data().unwrap_or_default());
        }
        assert!(body.is_end_stream());
        (String::from_utf8(out).unwrap(), body.stream_end())
    }

    const CHUNK: &[u8] = br#"data: {"id":"c1","choices":[]}

"#;
    const WRAPPED_CHUNK: &[u8] = br#"data: {"success":true,"code":"200","message":"successful","data":{"id":"c1","choices":[]}}

"#;
    /// The end of the stream in the issue: an event cut inside its JSON.
    const CUT: &[u8] = br#"data: {"id":"c1","object":"chat.completion.chu"#;
    const MID_EVENT: &str = "the upstream closed the stream in the middle of an event; the incomplete event was dropped and the answer is incomplete";

    fn mid_event_error(form: Dialect) -> String {
        let error = ApiError::new(StatusCode::BAD_GATEWAY, MID_EVENT)
            .with_type("upstream_error")
            .with_code("stream_truncated");
        String::from_utf8(error_event(&error, form).to_vec()).unwrap()
    }

    /// What the client gets for [`CHUNK`] in `mode`, and the form of its error events.
    fn chunk_for(mode: EventMode) -> (&'static str, Dialect) {
        let text = |b: &'static [u8]| std::str::from_utf8(b).unwrap();
        match mode {
            EventMode::Wrap => (text(WRAPPED_CHUNK), Dialect::Envelope),
            _ => (text(CHUNK), Dialect::Bare),
        }
    }

    #[tokio::test]
    async fn a_partial_last_event_is_dropped_and_ends_the_stream_with_an_error() {
        for mode in [EventMode::Passthru, EventMode::Wrap, EventMode::Unwrap] {
            let upstream_chunk = if mode == EventMode::Unwrap {
                WRAPPED_CHUNK
            } else {
                CHUNK
            };
            let (first, form) = chunk_for(mode);
            for require_done in [true, false] {
                let settings = settings(mode, require_done);
                let expected = format!("{first}{}", mid_event_error(form));
                // Cut inside the JSON, after the data line, and before the blank line.
                for tail in [
                    CUT,
                    b"data: {\"id\":\"c2\",\"choices\":[]}\n",
                    b": ping\r\n",
                ] {
                    let case = format!("{mode:?}, require_done {require_done}, tail {tail:?}");
                    let (out, end) = stream(settings, &[upstream_chunk, tail], None).await;
                    assert_eq!(out, expected, "{case}");
                    assert_eq!(end, Some(StreamEnd::Truncated), "{case}");
                    // However the tail arrives.
                    let (out, end) =
                        stream(settings, &[upstream_chunk, &tail[..3], &tail[3..]], None).await;
                    assert_eq!((out, end), (expected.clone(), Some(StreamEnd::Truncated)));
                }
            }
        }
    }

    #[tokio::test]
    async fn a_reset_mid_event_drops_the_partial_event() {
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let (first, form) = chunk_for(mode);
            let (out, end) = stream(settings(mode, false), &[CHUNK, CUT], Some("reset")).await;
            let error = ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the upstream stream broke before it finished (the upstream connection ended early); the answer is incomplete",
            )
            .with_type("upstream_error")
            .with_code("upstream_broken");
            let error = String::from_utf8(error_event(&error, form).to_vec()).unwrap();
            assert_eq!(out, format!("{first}{error}"), "{mode:?}");
            assert_eq!(end, Some(StreamEnd::Broken));
        }
    }

    #[tokio::test]
    async fn a_lone_done_line_completes_the_stream() {
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let (first, _) = chunk_for(mode);
            for tail in [&b"data: [DONE]"[..], b"data: [DONE]\r\n", b"data:[DONE]\n"] {
                let (out, end) = stream(settings(mode, true), &[CHUNK, tail], None).await;
                assert_eq!(out, format!("{first}data: [DONE]\n\n"), "{mode:?} {tail:?}");
                assert_eq!(end, Some(StreamEnd::Complete));
            }
        }
    }

    #[tokio::test]
    async fn whole_events_and_blank_lines_end_cleanly_without_require_done() {
        let settings = settings(EventMode::Passthru, false);
        let (out, end) = stream(settings, &[CHUNK, b"\n\r\n"], None).await;
        assert_eq!((out.as_bytes(), end), (CHUNK, Some(StreamEnd::Complete)));
        // With `--require-done`, the same stream is truncated before `[DONE]`.
        let (out, end) = stream(self::settings(EventMode::Passthru, true), &[CHUNK], None).await;
        assert!(out.starts_with(std::str::from_utf8(CHUNK).unwrap()));
        assert!(out.contains("before `data: [DONE]`"));
        assert_eq!(end, Some(StreamEnd::Truncated));
    }

    #[tokio::test]
    async fn after_done_or_an_upstream_error_a_partial_tail_adds_nothing() {
        let settings = settings(EventMode::Passthru, true);
        let (out, end) = stream(settings, &[CHUNK, b"data: [DONE]\n\n", CUT], None).await;
        let expected = format!("{}data: [DONE]\n\n", std::str::from_utf8(CHUNK).unwrap());
        assert_eq!((out, end), (expected, Some(StreamEnd::Complete)));
        let error: &[u8] = b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        let (out, end) = stream(settings, &[error, CUT], None).await;
        assert_eq!(out.as_bytes(), error);
        assert_eq!(end, Some(StreamEnd::UpstreamErrorEvent));
    }
}
