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
//!
//! `poll_frame` only dispatches. The stream's state is one `StreamState` whose `on_*`
//! methods are the things that can happen to a stream (an upstream frame, its end or failure,
//! a quiet upstream, the cut); `Deadlines` keeps the idle and keep-alive clock, and `Wakeups`
//! the timer and the cut that wake a waiting stream.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::framer::{FramerError, SseEvent, SseFramer};
use super::transform::{error_event, EventKind, EventMode, StreamStats};
use crate::dialect::Dialect;
use crate::error::BoxError;
use crate::error::{ApiError, ErrorCode};
use crate::translate::json_check::EventChecks;
use crate::translate::template::Envelopes;
use crate::woken::WokenBody;

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
    /// The envelopes of both sides (`--envelope`, `--upstream-envelope`, the templates).
    pub envelopes: Envelopes,
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

/// The most bytes gathered into one frame (see [`StreamState::next_output`]): the copy stays
/// small beside the per-frame work it saves, and so does the buffer a stream keeps for it.
const GATHER_LIMIT: usize = 4 * 1024;
/// The most pieces queued ahead when gathering: bounds the queue whatever the events' size.
const MAX_GATHERED_PIECES: usize = 64;

pin_project! {
    /// A response body that streams SSE events from `B`, translated per [`EventMode`].
    pub struct SseBody<B> {
        // Asked again after an empty ask only once it has woken the task: the ask before each
        // frame (see `poll_frame`) costs a dripping stream nothing.
        #[pin]
        inner: WokenBody<B>,
        #[pin]
        wakeups: Wakeups,
        state: StreamState,
    }
}

impl<B> SseBody<B> {
    /// A stream that is never cut short by the proxy itself.
    pub fn new(inner: B, settings: StreamSettings) -> Self {
        Self::with_cut(inner, settings, CancellationToken::new())
    }

    /// `cut` ends the stream with a `shutting_down` error event when cancelled.
    pub(crate) fn with_cut(inner: B, settings: StreamSettings, cut: CancellationToken) -> Self {
        let state = StreamState::new(settings, Instant::now());
        Self {
            inner: WokenBody::new(inner),
            wakeups: Wakeups::new(state.deadlines.next(), cut),
            state,
        }
    }

    /// True when events are rewritten (any mode but pass-through).
    pub(crate) fn rewrites(&self) -> bool {
        self.state.settings.mode != EventMode::Passthru
    }

    /// What the events said so far (taken: the stream keeps counting from zero).
    pub(crate) fn take_stats(self: Pin<&mut Self>) -> StreamStats {
        std::mem::take(&mut self.project().state.stats)
    }

    /// How the stream ended; `None` while it runs (and when the client left before the end).
    pub(crate) fn stream_end(&self) -> Option<StreamEnd> {
        self.state.outcome
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
        // Our last Pending let hyper flush what went before: what was left for then is done.
        if std::mem::take(&mut this.state.settle_when_woken) {
            this.state.stats.settle();
        }
        // Set once the upstream had nothing ready in this call: asked again only to wait.
        let mut upstream_waits = false;
        loop {
            // Before a frame goes out, frames the upstream already has join it: servers send an
            // event per chunk, and a burst of them becomes one frame (one pass through hyper's
            // write path), not one per event. Only what is ready: nothing waits for more.
            if !upstream_waits && this.state.has_room_to_gather() {
                match this.inner.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => this.state.on_frame(frame),
                    Poll::Ready(Some(Err(error))) => this.state.on_upstream_error(error.into()),
                    Poll::Ready(None) => this.state.on_upstream_end(),
                    Poll::Pending => upstream_waits = true,
                }
                continue;
            }
            if let Some(data) = this.state.next_output() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.state.outcome.is_some() {
                return Poll::Ready(None);
            }
            // Whole events already buffered go out before we wait on the upstream again.
            if this.state.transform_next_event() {
                continue;
            }
            if this.state.upstream_ended {
                this.state.finish();
                continue;
            }
            if this.wakeups.is_cut() {
                this.state.on_cut();
                continue;
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => this.state.on_frame(frame),
                Poll::Ready(Some(Err(error))) => this.state.on_upstream_error(error.into()),
                Poll::Ready(None) => this.state.on_upstream_end(),
                Poll::Pending => {
                    if let Some(deadline) = this.state.on_quiet(Instant::now()) {
                        if this.wakeups.as_mut().poll_until(deadline, cx).is_pending() {
                            this.state.on_wait(cx);
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.outcome.is_some() && self.state.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The stream's mutable state, apart from the upstream body and the wake-ups: each `on_*`
/// method is one thing that can happen to the stream, and queues what the client gets for it.
struct StreamState {
    settings: StreamSettings,
    /// The form of the error events the proxy adds.
    error_form: Dialect,
    framer: SseFramer,
    /// Pieces ready for the client, in order.
    out: VecDeque<Bytes>,
    /// The bytes of `out[..out_counted]` (see [`StreamState::queued_bytes`]).
    out_bytes: usize,
    out_counted: usize,
    /// Where small pieces are gathered into one frame (see [`StreamState::next_output`]);
    /// reused, so gathering allocates nothing per event.
    gathered: BytesMut,
    saw_done: bool,
    /// The upstream sent an error event of its own.
    saw_error: bool,
    /// The upstream body ended: the framer holds all there is left.
    upstream_ended: bool,
    deadlines: Deadlines,
    /// How the stream ended; once set, only `out` is left to send.
    outcome: Option<StreamEnd>,
    /// What the events said, for the metrics and the access log.
    stats: StreamStats,
    /// The checks of the events' JSON, each resumed where it stops matching the last.
    checks: EventChecks,
    /// An event is left to look into for the first token once the client has what went
    /// before (see [`StreamState::on_wait`]).
    settle_when_woken: bool,
}

impl StreamState {
    fn new(settings: StreamSettings, now: Instant) -> Self {
        StreamState {
            framer: SseFramer::new(settings.max_event_bytes),
            // Room for a few rewritten events: allocated once per stream, not per event.
            out: VecDeque::with_capacity(8),
            out_bytes: 0,
            out_counted: 0,
            gathered: BytesMut::new(),
            error_form: settings.mode.error_form(settings.client, settings.upstream),
            saw_done: false,
            saw_error: false,
            upstream_ended: false,
            deadlines: Deadlines::new(&settings, now),
            outcome: None,
            stats: StreamStats::default(),
            checks: EventChecks::default(),
            settle_when_woken: false,
            settings,
        }
    }

    /// What goes to the client next, if anything is ready: every event already buffered is
    /// transformed first, and the queued pieces are handed over as one frame of up to
    /// [`GATHER_LIMIT`] bytes. A rewritten event is three pieces and one upstream read often
    /// holds several events; a frame per piece cost more (a trip through every body layer
    /// and hyper's write loop, and a piece in writev's list) than copying the small ones
    /// once. A piece that does not fit goes alone, uncopied.
    fn next_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        while self.outcome.is_none()
            && self.out.len() < MAX_GATHERED_PIECES
            && self.transform_next_event()
        {}
        self.deadlines.output_moved();
        let (mut pieces, mut size) = (0, 0);
        for piece in &self.out {
            if size + piece.len() > GATHER_LIMIT {
                break;
            }
            pieces += 1;
            size += piece.len();
        }
        // What is left is counted again when asked (see `queued_bytes`).
        (self.out_bytes, self.out_counted) = (0, 0);
        if pieces < 2 {
            return self.out.pop_front();
        }
        // Reserved at once: the buffer grows to the largest frame gathered and is reused once
        // hyper has let go of the last frame (written it, or copied it over HTTP/2).
        self.gathered.reserve(size);
        for piece in self.out.drain(..pieces) {
            self.gathered.extend_from_slice(&piece);
        }
        Some(self.gathered.split().freeze())
    }

    /// True when pieces wait for the client and the frame they make has room for more than the
    /// framer holds (its whole events are transformed first): the upstream may be asked for
    /// what it has ready.
    fn has_room_to_gather(&mut self) -> bool {
        if self.out.is_empty() {
            return false;
        }
        loop {
            let room = self.outcome.is_none()
                && !self.upstream_ended
                && self.out.len() < MAX_GATHERED_PIECES
                && self.queued_bytes() < GATHER_LIMIT;
            if !room || !self.transform_next_event() {
                return room;
            }
        }
    }

    /// The bytes queued in `out`: only the pieces queued since the last call are added (summed
    /// anew each time, it cost a pass over the queue per event); pieces leave `out` only in
    /// [`Self::next_output`], which starts the count again.
    fn queued_bytes(&mut self) -> usize {
        if self.out_counted > self.out.len() {
            (self.out_bytes, self.out_counted) = (0, 0);
        }
        self.out_bytes += self
            .out
            .range(self.out_counted..)
            .map(Bytes::len)
            .sum::<usize>();
        self.out_counted = self.out.len();
        self.out_bytes
    }

    /// Hands the next whole event the framer holds to the transform; false when it holds none.
    fn transform_next_event(&mut self) -> bool {
        match self.framer.next_event() {
            Ok(Some(event)) => self.on_event(event),
            Ok(None) => return false,
            Err(error) => self.on_event_too_large(&error),
        }
        true
    }

    /// The stream waits (returns `Pending`), and hyper flushes what it was given before. An
    /// event that may hold the first token is looked into right after that ([`StreamStats`]
    /// keeps when it was queued): the task wakes itself once for it, so the parse is not on
    /// the way of a stream's first bytes.
    fn on_wait(&mut self, cx: &Context<'_>) {
        if self.stats.unsettled() {
            self.settle_when_woken = true;
            cx.waker().wake_by_ref();
        }
    }

    /// A frame from the upstream.
    fn on_frame(&mut self, frame: Frame<Bytes>) {
        self.deadlines.upstream_moved();
        // Trailers carry nothing a client of an event stream can use.
        if let Ok(data) = frame.into_data() {
            self.framer.push(data);
        }
    }

    fn on_event(&mut self, event: SseEvent) {
        match self.settings.mode.apply(
            event,
            self.settings.upstream,
            self.settings.envelopes,
            &mut self.out,
            &mut self.stats,
            &mut self.checks,
        ) {
            EventKind::Done => self.saw_done = true,
            EventKind::Error => self.saw_error = true,
            EventKind::Normal => {}
        }
    }

    fn on_event_too_large(&mut self, error: &FramerError) {
        let FramerError::EventTooLarge { limit } = error;
        let message = format!("the upstream sent an event larger than {limit} bytes");
        self.end_with_error(StreamEnd::EventTooLarge, message);
    }

    /// The upstream body ended: what the framer still holds goes out before [`Self::finish`]
    /// decides how the stream ended.
    fn on_upstream_end(&mut self) {
        self.upstream_ended = true;
    }

    /// The upstream body failed (a transport error).
    fn on_upstream_error(&mut self, error: BoxError) {
        if self.saw_done || self.saw_error {
            // The answer was already complete (or already failed visibly).
            self.outcome = Some(if self.saw_done {
                StreamEnd::Complete
            } else {
                StreamEnd::UpstreamErrorEvent
            });
            return;
        }
        // The OS error text is for the log; the client is told what kind of failure.
        let cause = crate::error::describe_chain(error.as_ref());
        tracing::warn!(%cause, "upstream event stream broke");
        let failure = crate::error::body_failure(error.as_ref());
        let message = format!(
            "the upstream stream broke before it finished ({failure}); the answer is incomplete"
        );
        self.end_with_error(StreamEnd::Broken, message);
    }

    /// The upstream has nothing for now: acts on a deadline that has passed, or returns the
    /// next one to wait for.
    fn on_quiet(&mut self, now: Instant) -> Option<Instant> {
        self.deadlines.catch_up(now);
        if self.deadlines.idle_expired(now) {
            self.on_idle_timeout();
            return None;
        }
        if self.deadlines.keepalive_due(now) {
            // Between our own frames is always an event boundary: we emit whole events.
            self.out.push_back(KEEPALIVE_COMMENT);
            return None;
        }
        Some(self.deadlines.next())
    }

    fn on_idle_timeout(&mut self) {
        let message = format!(
            "the upstream sent nothing for {}s; the stream was closed and the answer is incomplete",
            self.settings.idle_timeout.as_secs_f64()
        );
        self.end_with_error(StreamEnd::IdleTimeout, message);
    }

    /// The shutdown grace period ran out.
    fn on_cut(&mut self) {
        let message = "the proxy is shutting down; the stream was closed before it finished";
        self.end_with_error(StreamEnd::ShuttingDown, message.to_string());
    }

    /// The upstream body ended cleanly: flush the last whole events, then decide whether the
    /// stream was complete.
    fn finish(&mut self) {
        // finish() hands out what is left one event at a time.
        loop {
            match self.framer.finish() {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => break,
                Err(error) => return self.on_event_too_large(&error),
            }
        }
        if self.saw_error {
            self.outcome = Some(StreamEnd::UpstreamErrorEvent);
        } else if self.saw_done {
            // What follows `[DONE]` cannot make the answer incomplete (clients stop reading there).
            self.outcome = Some(StreamEnd::Complete);
        } else if self.framer.discarded_partial() {
            let message = "the upstream closed the stream in the middle of an event; the incomplete event was dropped and the answer is incomplete";
            self.end_with_error(StreamEnd::Truncated, message.to_string());
        } else if !self.settings.require_done {
            self.outcome = Some(StreamEnd::Complete);
        } else {
            let message = "the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete";
            self.end_with_error(StreamEnd::Truncated, message.to_string());
        }
    }

    fn end_with_error(&mut self, end: StreamEnd, message: String) {
        // Every end reported here is one of the proxy's codes (see `StreamEnd::error_code`).
        let error = match end.error_code() {
            Some(code) => ApiError::mid_stream(code, message),
            None => ApiError::new(StatusCode::BAD_GATEWAY, message).with_type("upstream_error"),
        };
        let event = error_event(&error, self.error_form, self.settings.envelopes);
        self.out.push_back(event);
        self.outcome = Some(end);
    }
}

/// When bytes last came from the upstream and went to the client, and the deadlines that
/// follow from that: the idle timeout and the next keep-alive.
struct Deadlines {
    idle_timeout: Duration,
    keepalive: Option<Duration>,
    last_upstream: Instant,
    last_output: Instant,
    // Bytes arrived / went out since `last_*` were set: the clock is read once per wait,
    // when the body goes pending, not once per frame.
    upstream_moved: bool,
    output_moved: bool,
}

impl Deadlines {
    fn new(settings: &StreamSettings, now: Instant) -> Self {
        Deadlines {
            idle_timeout: settings.idle_timeout,
            keepalive: settings.keepalive,
            last_upstream: now,
            last_output: now,
            upstream_moved: false,
            output_moved: false,
        }
    }

    fn upstream_moved(&mut self) {
        self.upstream_moved = true;
    }

    fn output_moved(&mut self) {
        self.output_moved = true;
    }

    /// Moves `last_*` to `now` for the bytes that moved since the last wait.
    fn catch_up(&mut self, now: Instant) {
        if std::mem::take(&mut self.upstream_moved) {
            self.last_upstream = now;
        }
        if std::mem::take(&mut self.output_moved) {
            self.last_output = now;
        }
    }

    fn idle_expired(&self, now: Instant) -> bool {
        now >= self.last_upstream + self.idle_timeout
    }

    fn keepalive_due(&self, now: Instant) -> bool {
        self.keepalive
            .is_some_and(|every| now >= self.last_output + every)
    }

    /// The earlier of the idle deadline and the next keep-alive.
    fn next(&self) -> Instant {
        let idle = self.last_upstream + self.idle_timeout;
        match self.keepalive {
            Some(every) => idle.min(self.last_output + every),
            None => idle,
        }
    }
}

pin_project! {
    /// What wakes a stream whose upstream is quiet: its next deadline, or the cut.
    struct Wakeups {
        #[pin]
        timer: Sleep,
        cut: CancellationToken,
        #[pin]
        cut_wait: WaitForCancellationFutureOwned,
    }
}

impl Wakeups {
    fn new(deadline: Instant, cut: CancellationToken) -> Self {
        Wakeups {
            timer: tokio::time::sleep_until(deadline),
            cut_wait: cut.clone().cancelled_owned(),
            cut,
        }
    }

    fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Ready once `deadline` has passed or the stream is cut; until then the task is woken
    /// for either.
    fn poll_until(self: Pin<&mut Self>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Deadlines only move later while a stream flows, so the timer is reset only when it
        // must fire sooner or has fired: an early wake-up just comes back here and sets the
        // real deadline, once per period instead of per event.
        if deadline < this.timer.deadline() || this.timer.is_elapsed() {
            this.timer.as_mut().reset(deadline);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.cut_wait.poll(cx)
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

    /// One step of a hand-made upstream body.
    enum Step {
        Chunk(&'static [u8]),
        Trailers,
        /// Nothing for this long (on the test's paused clock).
        Wait(Duration),
        /// A transport error.
        Fail(&'static str),
        /// Nothing ever again, without ending.
        Stall,
    }

    /// A hand-made upstream body: plays its steps in order, one frame each, then ends.
    struct Upstream {
        steps: VecDeque<Step>,
        wait: Option<Pin<Box<Sleep>>>,
        /// Polls so far: a body that spins on its upstream fails the test instead of hanging it.
        polls: usize,
    }

    impl Upstream {
        fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            Upstream {
                steps: steps.into_iter().collect(),
                wait: None,
                polls: 0,
            }
        }
    }

    impl Body for Upstream {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.polls += 1;
            assert!(
                self.polls < 1000,
                "the body polls its upstream in a busy loop"
            );
            loop {
                if let Some(wait) = self.wait.as_mut() {
                    std::task::ready!(wait.as_mut().poll(cx));
                    self.wait = None;
                }
                let frame = match self.steps.pop_front() {
                    None => return Poll::Ready(None),
                    Some(Step::Chunk(chunk)) => Frame::data(Bytes::from_static(chunk)),
                    Some(Step::Trailers) => Frame::trailers(http::HeaderMap::new()),
                    Some(Step::Wait(time)) => {
                        self.wait = Some(Box::pin(tokio::time::sleep(time)));
                        continue;
                    }
                    Some(Step::Fail(error)) => return Poll::Ready(Some(Err(error.into()))),
                    Some(Step::Stall) => {
                        self.steps.push_front(Step::Stall);
                        return Poll::Pending;
                    }
                };
                return Poll::Ready(Some(Ok(frame)));
            }
        }
    }

    fn settings(mode: EventMode, require_done: bool) -> StreamSettings {
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
            require_done,
            idle_timeout: Duration::from_secs(60),
            keepalive: None,
            max_event_bytes: 1 << 20,
            envelopes: Envelopes::standard(),
        }
    }

    /// Streams `chunks` (then `error`, if any) through an [`SseBody`]: what the client gets,
    /// and how the stream ended.
    async fn stream(
        settings: StreamSettings,
        chunks: &[&'static [u8]],
        error: Option<&'static str>,
    ) -> (String, Option<StreamEnd>) {
        let steps = chunks.iter().map(|chunk| Step::Chunk(chunk));
        let upstream = Upstream::new(steps.chain(error.map(Step::Fail)));
        let (frames, end) = play(SseBody::new(upstream, settings)).await;
        (frames.into_iter().map(|(_, text)| text).collect(), end)
    }

    /// Drives `body` to its end: each frame's text with when it came out (on the paused clock,
    /// from the start), and how the stream ended.
    async fn play<B>(body: SseBody<B>) -> (Vec<(Duration, String)>, Option<StreamEnd>)
    where
        SseBody<B>: Body<Data = Bytes, Error = BoxError>,
    {
        let start = Instant::now();
        let mut body = std::pin::pin!(body);
        let mut frames = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.expect("the body itself never fails");
            let data = frame.into_data().expect("only data frames");
            frames.push((start.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
            assert!(frames.len() < 100, "a runaway stream: {frames:?}");
        }
        assert!(body.is_end_stream());
        (frames, body.stream_end())
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
        String::from_utf8(error_event(&error, form, Envelopes::standard()).to_vec()).unwrap()
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
            let error =
                String::from_utf8(error_event(&error, form, Envelopes::standard()).to_vec())
                    .unwrap();
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

    /// The error event the proxy ends a stream with, written out by hand.
    fn proxy_error_event(form: Dialect, code: &str, message: &str) -> String {
        let error = format!(
            r#"{{"message":"{message}","type":"upstream_error","param":null,"code":"{code}"}}"#
        );
        match form {
            Dialect::Bare => format!("data: {{\"error\":{error}}}\n\n"),
            Dialect::Envelope => format!(
                "data: {{\"success\":false,\"code\":\"502\",\"message\":\"{message}\",\"data\":null,\"error\":{error}}}\n\n"
            ),
        }
    }

    fn idle_error(form: Dialect) -> String {
        let message =
            "the upstream sent nothing for 60s; the stream was closed and the answer is incomplete";
        proxy_error_event(form, "idle_timeout", message)
    }

    const KEEPALIVE: &str = ": keep-alive\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn text(bytes: &'static [u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// `frames` as the body sends them when all that is ready at one instant is ready at one
    /// poll (as the test upstream has it): consecutive pieces of one time in one frame.
    fn gathered(frames: Vec<(Duration, String)>) -> Vec<(Duration, String)> {
        let mut out: Vec<(Duration, String)> = Vec::new();
        for (time, frame) in frames {
            match out.last_mut() {
                Some((last, joined)) if *last == time => joined.push_str(&frame),
                _ => out.push((time, frame)),
            }
        }
        out
    }

    /// The frames that carry [`CHUNK`] to the client in `mode` (a wrapped event's three
    /// pieces gathered into one), at `time`.
    fn chunk_frames(mode: EventMode, time: u64) -> Vec<(Duration, String)> {
        let event = match mode {
            EventMode::Wrap => WRAPPED_CHUNK,
            _ => CHUNK,
        };
        vec![(secs(time), String::from_utf8(event.to_vec()).unwrap())]
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_token_is_looked_into_after_its_frame_went_out_and_keeps_its_time() {
        const ROLE: &[u8] =
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        const TOKEN: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        let upstream = Upstream::new([
            Step::Chunk(ROLE),
            Step::Wait(secs(1)),
            Step::Chunk(TOKEN),
            Step::Wait(secs(1)),
            Step::Chunk(b"data: [DONE]\n\n"),
        ]);
        let start = Instant::now();
        let mut body = std::pin::pin!(SseBody::new(upstream, settings(EventMode::Passthru, true)));
        let wakes = std::sync::Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(std::sync::Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut poll =
            |body: &mut Pin<&mut SseBody<Upstream>>| match body.as_mut().poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => Some(frame.into_data().unwrap()),
                Poll::Pending => None,
                other => panic!("unexpected {other:?}"),
            };

        // Each candidate goes out unparsed; the Pending after it (hyper flushes then) wakes the
        // task once, and only the poll after that looks into it.
        for (event, at) in [(ROLE, secs(0)), (TOKEN, secs(1))] {
            assert_eq!(poll(&mut body).as_deref(), Some(event));
            assert_eq!(start.elapsed(), at);
            assert!(body.state.stats.unsettled(), "looked into before the flush");
            let before = woken();
            assert_eq!(poll(&mut body), None);
            assert!(body.state.stats.unsettled(), "looked into before the flush");
            assert_eq!(woken(), before + 1, "no wake-up to look into it");
            // Late, on purpose: the first token keeps the time its event was queued at.
            tokio::time::advance(Duration::from_millis(500)).await;
            assert_eq!(poll(&mut body), None);
            assert!(!body.state.stats.unsettled());
            assert_eq!(woken(), before + 1, "a wake-up with nothing to do");
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        assert_eq!(body.take_stats().first_token(), Some(start + secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_never_sends_a_byte_times_out_at_the_idle_deadline() {
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let (_, form) = chunk_for(mode);
            let body = SseBody::new(Upstream::new([Step::Stall]), settings(mode, true));
            let (frames, end) = play(body).await;
            assert_eq!(frames, [(secs(60), idle_error(form))], "{mode:?}");
            assert_eq!(end, Some(StreamEnd::IdleTimeout), "{mode:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_counts_from_the_last_upstream_bytes() {
        let steps = [
            Step::Chunk(CHUNK),
            Step::Wait(secs(40)),
            Step::Chunk(CHUNK),
            Step::Wait(secs(40)),
            Step::Chunk(CHUNK),
            Step::Stall,
        ];
        let body = SseBody::new(Upstream::new(steps), settings(EventMode::Passthru, true));
        let (frames, end) = play(body).await;
        let expected = [
            (secs(0), text(CHUNK)),
            (secs(40), text(CHUNK)),
            (secs(80), text(CHUNK)),
            (secs(140), idle_error(Dialect::Bare)),
        ];
        assert_eq!(frames, expected);
        assert_eq!(end, Some(StreamEnd::IdleTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_fill_the_quiet_and_the_idle_deadline_still_ends_the_stream() {
        let settings = StreamSettings {
            keepalive: Some(secs(15)),
            ..settings(EventMode::Passthru, true)
        };
        let steps = [
            Step::Chunk(CHUNK),
            Step::Wait(secs(20)),
            Step::Chunk(CHUNK),
            Step::Stall,
        ];
        let (frames, end) = play(SseBody::new(Upstream::new(steps), settings)).await;
        let expected = [
            (secs(0), text(CHUNK)),
            (secs(15), KEEPALIVE.to_string()),
            // Output restarts the keep-alive period.
            (secs(20), text(CHUNK)),
            (secs(35), KEEPALIVE.to_string()),
            (secs(50), KEEPALIVE.to_string()),
            (secs(65), KEEPALIVE.to_string()),
            // A keep-alive is due too, but the idle deadline comes first.
            (secs(80), idle_error(Dialect::Bare)),
        ];
        assert_eq!(frames, expected);
        assert_eq!(end, Some(StreamEnd::IdleTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_goes_between_events_while_the_next_one_is_half_received() {
        let settings = StreamSettings {
            keepalive: Some(secs(15)),
            ..settings(EventMode::Passthru, false)
        };
        let steps = [
            Step::Chunk(CHUNK),
            Step::Wait(secs(10)),
            Step::Chunk(b"data: {\"id\":\"c2\","),
            Step::Wait(secs(10)),
            Step::Chunk(b"\"choices\":[]}\n\n"),
        ];
        let (frames, end) = play(SseBody::new(Upstream::new(steps), settings)).await;
        let expected = [
            (secs(0), text(CHUNK)),
            // Upstream bytes that complete no event are not output.
            (secs(15), KEEPALIVE.to_string()),
            (
                secs(20),
                "data: {\"id\":\"c2\",\"choices\":[]}\n\n".to_string(),
            ),
        ];
        assert_eq!(frames, expected);
        assert_eq!(end, Some(StreamEnd::Complete));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_ends_a_running_stream_with_a_shutting_down_event() {
        let message = "the proxy is shutting down; the stream was closed before it finished";
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let (_, form) = chunk_for(mode);
            let shutting_down = proxy_error_event(form, "shutting_down", message);
            // Cut while the upstream is silent, and while it is still sending.
            let stalled = vec![Step::Chunk(CHUNK), Step::Stall];
            let sending = vec![Step::Chunk(CHUNK), Step::Wait(secs(10)), Step::Chunk(CHUNK)];
            for steps in [stalled, sending] {
                let cut = CancellationToken::new();
                let body =
                    SseBody::with_cut(Upstream::new(steps), settings(mode, true), cut.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(secs(5)).await;
                    cut.cancel();
                });
                let (frames, end) = play(body).await;
                let mut expected = chunk_frames(mode, 0);
                expected.push((secs(5), shutting_down.clone()));
                assert_eq!(frames, expected, "{mode:?}");
                assert_eq!(end, Some(StreamEnd::ShuttingDown), "{mode:?}");
            }
            // Cut before the first poll: nothing of the upstream goes out.
            let cut = CancellationToken::new();
            cut.cancel();
            let upstream = Upstream::new([Step::Chunk(CHUNK)]);
            let body = SseBody::with_cut(upstream, settings(mode, true), cut);
            let (frames, end) = play(body).await;
            assert_eq!(frames, [(secs(0), shutting_down)], "{mode:?}");
            assert_eq!(end, Some(StreamEnd::ShuttingDown), "{mode:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_error_after_whole_events_ends_with_a_broken_event() {
        let message = "the upstream stream broke before it finished (the upstream connection ended early); the answer is incomplete";
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let (_, form) = chunk_for(mode);
            let steps = [
                Step::Chunk(CHUNK),
                Step::Wait(secs(1)),
                Step::Chunk(CHUNK),
                Step::Fail("reset"),
            ];
            let (frames, end) =
                play(SseBody::new(Upstream::new(steps), settings(mode, false))).await;
            let broken = (secs(1), proxy_error_event(form, "upstream_broken", message));
            let expected = [chunk_frames(mode, 0), chunk_frames(mode, 1), vec![broken]].concat();
            assert_eq!(frames, gathered(expected), "{mode:?}");
            assert_eq!(end, Some(StreamEnd::Broken), "{mode:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_error_after_done_or_an_error_event_adds_nothing() {
        let settings = settings(EventMode::Passthru, true);
        let steps = [Step::Chunk(CHUNK), Step::Chunk(DONE), Step::Fail("reset")];
        let (out, end) = play(SseBody::new(Upstream::new(steps), settings)).await;
        let expected = gathered(vec![(secs(0), text(CHUNK)), (secs(0), text(DONE))]);
        assert_eq!((out, end), (expected, Some(StreamEnd::Complete)));
        let error: &[u8] = b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        let steps = [Step::Chunk(error), Step::Fail("reset")];
        let (out, end) = play(SseBody::new(Upstream::new(steps), settings)).await;
        let expected = [(secs(0), text(error))];
        assert_eq!(
            (out, end),
            (expected.to_vec(), Some(StreamEnd::UpstreamErrorEvent))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_over_the_size_limit_ends_the_stream_with_event_too_large() {
        let message = "the upstream sent an event larger than 64 bytes";
        let large: &[u8] = b"data: {\"id\":\"c2\",\"choices\":[{\"delta\":{\"content\":\"more than the limit\"}}]}\n\n";
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let (_, form) = chunk_for(mode);
            let settings = StreamSettings {
                max_event_bytes: 64,
                ..settings(mode, true)
            };
            // Whole or still arriving, and with more events behind it.
            let steps = [Step::Chunk(CHUNK), Step::Chunk(large), Step::Chunk(CHUNK)];
            let (frames, end) = play(SseBody::new(Upstream::new(steps), settings)).await;
            let mut expected = chunk_frames(mode, 0);
            expected.push((secs(0), proxy_error_event(form, "event_too_large", message)));
            let expected = gathered(expected);
            assert_eq!(frames, expected, "{mode:?}");
            assert_eq!(end, Some(StreamEnd::EventTooLarge), "{mode:?}");
            let steps = [Step::Chunk(CHUNK), Step::Chunk(&large[..70]), Step::Stall];
            let (frames, end) = play(SseBody::new(Upstream::new(steps), settings)).await;
            assert_eq!(
                (frames, end),
                (expected.clone(), Some(StreamEnd::EventTooLarge))
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_from_the_upstream_are_dropped() {
        let steps = [Step::Chunk(CHUNK), Step::Trailers, Step::Chunk(DONE)];
        let body = SseBody::new(Upstream::new(steps), settings(EventMode::Passthru, true));
        let (frames, end) = play(body).await;
        let expected = gathered(vec![(secs(0), text(CHUNK)), (secs(0), text(DONE))]);
        assert_eq!((frames, end), (expected, Some(StreamEnd::Complete)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_early_without_done_says_so_when_done_is_required() {
        let message = "the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete";
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let (_, form) = chunk_for(mode);
            let upstream = Upstream::new([Step::Chunk(CHUNK)]);
            let (frames, end) = play(SseBody::new(upstream, settings(mode, true))).await;
            let mut expected = chunk_frames(mode, 0);
            expected.push((
                secs(0),
                proxy_error_event(form, "stream_truncated", message),
            ));
            assert_eq!((frames, end), (expected, Some(StreamEnd::Truncated)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_error_event_then_done_ends_as_an_upstream_error_event() {
        let error: &[u8] = b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        let upstream = Upstream::new([Step::Chunk(error), Step::Chunk(DONE)]);
        let body = SseBody::new(upstream, settings(EventMode::Passthru, true));
        let (frames, end) = play(body).await;
        let expected = gathered(vec![(secs(0), text(error)), (secs(0), text(DONE))]);
        assert_eq!(
            (frames, end),
            (expected, Some(StreamEnd::UpstreamErrorEvent))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn events_the_upstream_has_ready_in_chunks_of_their_own_go_out_together() {
        // An event per upstream chunk, as servers send them: a burst is one frame, and an event
        // that comes alone goes out as soon as it comes, without waiting for more.
        let mut steps: Vec<Step> = (0..10).map(|_| Step::Chunk(CHUNK)).collect();
        steps.extend([Step::Wait(secs(1)), Step::Chunk(CHUNK), Step::Wait(secs(1))]);
        steps.push(Step::Chunk(DONE));
        let body = SseBody::new(Upstream::new(steps), settings(EventMode::Passthru, true));
        let (frames, end) = play(body).await;
        let expected = [
            (secs(0), text(CHUNK).repeat(10)),
            (secs(1), text(CHUNK)),
            (secs(2), text(DONE)),
        ];
        assert_eq!(
            (frames, end),
            (expected.to_vec(), Some(StreamEnd::Complete))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn events_read_together_go_out_in_few_frames_within_the_gather_limit() {
        // 200 events in one upstream read: 600 pieces once wrapped, 200 in pass-through.
        let input = CHUNK.repeat(200).leak();
        for (mode, event) in [
            (EventMode::Wrap, WRAPPED_CHUNK),
            (EventMode::Passthru, CHUNK),
        ] {
            let upstream = Upstream::new([Step::Chunk(input), Step::Chunk(b"data: [DONE]\n\n")]);
            let (frames, end) = play(SseBody::new(upstream, settings(mode, true))).await;
            assert_eq!(end, Some(StreamEnd::Complete), "{mode:?}");
            let joined: String = frames.iter().map(|(_, frame)| frame.as_str()).collect();
            let expected =
                String::from_utf8([event.repeat(200), b"data: [DONE]\n\n".to_vec()].concat());
            assert_eq!(joined, expected.unwrap(), "{mode:?}");
            // Whole events (at most 64 pieces queued ahead), each frame within the limit; the
            // `[DONE]`, in a read of its own but ready with the others, joins the last frame.
            let per_frame = match mode {
                EventMode::Wrap => 64 / 3 + 1,
                _ => 64,
            };
            assert!(event.len() * per_frame <= GATHER_LIMIT, "{mode:?}");
            let mut expected = vec![event.len() * per_frame; 200 / per_frame];
            expected.push(event.len() * (200 % per_frame) + 14);
            let sizes: Vec<usize> = frames.iter().map(|(_, frame)| frame.len()).collect();
            assert_eq!(sizes, expected, "{mode:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn large_events_ready_together_fill_each_frame_up_to_the_byte_limit() {
        // Twelve events of 1,000 bytes, each in an upstream read of its own, all ready: four
        // fit under the limit, a fifth would not, and what is left over starts the next frame.
        let payload = format!(r#"{{"id":"{}"}}"#, "x".repeat(1000 - 17));
        let event: &'static [u8] = format!("data: {payload}\n\n").into_bytes().leak();
        assert_eq!(event.len(), 1000);
        let steps = (0..12).map(|_| Step::Chunk(event));
        let upstream = Upstream::new(steps.chain([Step::Chunk(b"data: [DONE]\n\n")]));
        let (frames, end) = play(SseBody::new(upstream, settings(EventMode::Passthru, true))).await;
        assert_eq!(end, Some(StreamEnd::Complete));
        let sizes: Vec<usize> = frames.iter().map(|(_, frame)| frame.len()).collect();
        assert_eq!(sizes, [4000, 4000, 4014]);
        let joined: String = frames.iter().map(|(_, frame)| frame.as_str()).collect();
        assert_eq!(joined, text(event).repeat(12) + "data: [DONE]\n\n");
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_is_not_over_until_its_last_piece_is_out() {
        // An event completed only by the end of the stream (its blank line a lone `\r`),
        // wrapped into pieces, its payload too large to be gathered with the others: the
        // outcome is known before they are all out.
        let payload = format!(r#"{{"id":"{}"}}"#, "x".repeat(GATHER_LIMIT));
        let event = format!("data: {payload}\r\r").into_bytes().leak();
        let upstream = Upstream::new([Step::Chunk(event)]);
        let mut body = std::pin::pin!(SseBody::new(upstream, settings(EventMode::Wrap, false)));
        assert!(!body.is_end_stream());
        let mut seen = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let data = frame.unwrap().into_data().unwrap();
            let hint = body.size_hint();
            assert_eq!((hint.lower(), hint.upper()), (0, None));
            seen.push((
                String::from_utf8(data.to_vec()).unwrap(),
                body.is_end_stream(),
            ));
            assert!(seen.len() < 100, "a runaway stream: {seen:?}");
        }
        let expected = [
            (
                r#"data: {"success":true,"code":"200","message":"successful","data":"#,
                false,
            ),
            (&payload, false),
            // The line endings as received.
            ("}\r\r", true),
        ];
        let expected: Vec<_> = expected.map(|(s, end)| (s.to_string(), end)).into();
        assert_eq!(seen, expected);
        assert_eq!(body.stream_end(), Some(StreamEnd::Complete));
    }
}
