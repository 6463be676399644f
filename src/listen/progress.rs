//! Progress deadlines for client connections: nothing holds a connection slot, a request permit
//! or an upstream connection while its client makes no progress.
//!
//! One [`Tracker`] per accepted connection, shared by the connection's service (which reports
//! each request and wraps each response body in [`Watched`]) and the connection's task, which
//! waits on [`Tracker::next_action`] beside the connection itself (see `server.rs`). Deadlines:
//!
//! - **Request head** (`--header-read-timeout`): from accept — TLS handshake and HTTP
//!   version detection included — until the service is first called, which hyper does once a
//!   request head is complete (HTTP/1.1 and HTTP/2 alike); on HTTP/1.1 also from the end of
//!   each request (when no other is open) until the next head is complete, an idle keep-alive
//!   connection included, as hyper's own `header_read_timeout` would. That one is off: it
//!   armed a timer of its own for every head. Missed: [`Action::Close`], the socket is closed.
//! - **Idle** (`--idle-timeout`): from the moment no request is open. Missed:
//!   [`Action::Shutdown`] (HTTP/2 GOAWAY; HTTP/1.1 closes at once when idle). A connection over
//!   `--max-connections` gets that as soon as its first answer is out.
//! - **Closing**: a connection told to shut down that still has not ended [`CLOSE_GRACE`] after
//!   its last request ended (a peer that never answers GOAWAY's ping, an abandoned HTTP/2
//!   stream hyper still holds) gets [`Action::Close`].
//! - **Client writes** (`--client-write-timeout`), per response, below.
//!
//! ## Detecting a client that takes nothing
//!
//! hyper has no write-progress hook, but it polls a response body for its next frame only when
//! it can send more: HTTP/1.1 once its write buffer has room (the socket took the earlier
//! bytes), HTTP/2 once the frame it already holds got flow-control window (hyper 1.12's
//! `PipeToSendStream` polls the next frame only after handing the previous one to h2, which
//! needs at least one byte of stream window). So [`Watched`] counts the frames it hands hyper:
//! a body that handed one over (or has not been polled since its headers were sent) and is not
//! polled again within `--client-write-timeout` has a client that takes nothing. A body that
//! answered `Pending` is waiting for the upstream, not the client; it has no client deadline
//! (the upstream's own timeouts apply). The tracker is not told of every frame, nor is the
//! time of each read (a wake-up or a clock read per frame cost more than the rest of the
//! watching): it samples each response's count every quarter period and dates a count from
//! the sample that first saw it, so a stall is acted on between 1 and 1.25 periods after the
//! last frame the client took. Wrapping the socket to count written bytes would see
//! HTTP/1.1 progress but not which HTTP/2 stream is stuck behind its window; the body poll
//! sees both. Frames are handed over in pieces of at most [`MAX_HANDED`] bytes, so "progress"
//! means the client took that much, whatever the size of the upstream's frames.
//!
//! When the deadline passes, the tracker takes the body out of the response (the slot is
//! shared with the tracker for that) and drops it: the upstream response goes with it (its
//! connection is closed, so the upstream stops generating), the request's permit is freed and
//! the access log says `client_stalled` (see [`Abandon`]). hyper gets an error if it ever polls
//! the body again (RST_STREAM on HTTP/2). An HTTP/1.1 connection with a stalled response is of
//! no further use and is closed at once; an HTTP/2 connection keeps serving its other streams.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::BoxError;

/// How long a connection told to shut down may take to go, once it has no open request.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The most a response body hands hyper at once. hyper asks for the next frame only once the
/// client has taken (nearly) all of the last one, so a whole translated body in one frame
/// (megabytes of embeddings) would leave a slow but reading client no sign of progress for as
/// long as it takes to read it all. In pieces this size (sliced, not copied), a client that
/// takes at least this much per `--client-write-timeout` is never cut off.
pub(crate) const MAX_HANDED: usize = 64 * 1024;

/// The deadlines, from the configuration. A zero `idle` or `client_write` means none.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub client_write: Duration,
}

/// What the connection's task must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Close gracefully: GOAWAY on HTTP/2, close when idle on HTTP/1.1.
    Shutdown,
    /// Drop the connection (close the socket) now.
    Close,
}

/// A body that can be told it is being abandoned because its client stopped reading.
pub(crate) trait Abandon {
    /// Called once, just before the body is dropped for a stalled client.
    fn abandon(self: Pin<&mut Self>);
}

/// One connection's progress: see the module docs.
pub(crate) struct Tracker {
    limits: Limits,
    /// Over `--max-connections`: shut down once the first answer is out.
    answer_once: bool,
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    accepted: Instant,
    /// A request head was complete at least once.
    served: bool,
    http1: bool,
    open: usize,
    /// When `open` last dropped to zero.
    idle_since: Instant,
    /// When [`Action::Shutdown`] was given.
    shutdown: bool,
    /// The responses to sample (only with a write deadline), finished ones among them until
    /// the next sample or [`State::note_response`] drops them.
    responses: Vec<Weak<dyn Stall>>,
    /// When the tracker will look again by itself; `None` while it evaluates or waits for a
    /// notification only. A change whose deadline is no sooner needs no wake-up (one per
    /// request, on a busy keep-alive connection, cost more than the rest of the tracking).
    wakes_at: Option<Instant>,
}

impl State {
    /// Adds a response to sample. An entry keeps its response's memory (the slot, with the
    /// body's place) allocated until it leaves the list, and a busy keep-alive connection
    /// finishes thousands of responses between two samples, a quarter of
    /// `--client-write-timeout` apart: 35,000 a second of 1 KiB ones held 300 MB. So the
    /// finished ones leave here too, whenever the list is full, and the list keeps room for
    /// as many again as it still holds: it never holds more than twice the most responses
    /// open at once (four on HTTP/1.1), and each entry is passed over about twice at most.
    fn note_response(&mut self, response: Weak<dyn Stall>) {
        if self.responses.len() == self.responses.capacity() {
            self.responses.retain(|r| r.strong_count() > 0);
            self.responses.reserve(self.responses.len());
        }
        self.responses.push(response);
    }

    /// True when the tracker must be woken to act by `deadline`.
    fn must_wake_by(&self, deadline: Instant) -> bool {
        self.wakes_at.is_none_or(|wakes_at| wakes_at > deadline)
    }
}

impl Tracker {
    pub fn new(limits: Limits, answer_once: bool) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            limits,
            answer_once,
            state: Mutex::new(State {
                accepted: now,
                served: false,
                http1: false,
                open: 0,
                idle_since: now,
                shutdown: false,
                responses: Vec::new(),
                wakes_at: None,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request head is complete: the request is open until the returned guard is dropped
    /// (with its response body, or with the request if it never gets one).
    pub(crate) fn request_started(self: &Arc<Self>, version: Version) -> OpenRequest {
        let mut state = self.lock();
        state.served = true;
        state.http1 = version < Version::HTTP_2;
        state.open += 1;
        // No wake-up: this only removes deadlines (first head, idle), and a deadline that
        // fires finds the request open.
        OpenRequest(Arc::clone(self))
    }

    /// Waits until the connection must shut down or close; pending for as long as it makes
    /// progress. Abandons stalled responses on the way. Cancel-safe.
    pub(crate) async fn next_action(&self) -> Action {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let evaluated = self.evaluate();
            self.lock().wakes_at = evaluated.ok().flatten();
            match evaluated {
                Err(action) => return action,
                Ok(Some(deadline)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = &mut changed => {}
                    }
                }
                Ok(None) => changed.await,
            }
        }
    }

    /// The next deadline, or the action that is due now.
    fn evaluate(&self) -> Result<Option<Instant>, Action> {
        let now = Instant::now();
        let (mut next, responses, http1, sampling) = {
            let mut state = self.lock();
            // Until the new deadline is known, every change wakes the tracker (the wake-up
            // is kept for it: `changed` was enabled before this call).
            state.wakes_at = None;
            let next = self.connection_deadline(&mut state, now)?;
            let sampling = state.open > 0 || now < state.idle_since + self.limits.client_write;
            state.responses.retain(|r| r.strong_count() > 0);
            let responses: Vec<_> = if self.limits.client_write.is_zero() {
                Vec::new()
            } else {
                state.responses.iter().filter_map(Weak::upgrade).collect()
            };
            (next, responses, state.http1, sampling)
        };
        // Slots are locked with the tracker unlocked: abandoning one drops its request guard,
        // which takes the tracker's lock.
        let mut stalled = false;
        // Frames handed over are not announced, so every response is looked at again a
        // quarter period later (see the module docs). The tracker looks that often whether or
        // not a response is open, until the connection has been idle for a whole period: a
        // response that begins on a busy connection is then sampled in time without waking
        // the tracker (`OpenRequest::watch`). A wake-up per request, which a short response
        // made as the tracker then found it gone and slept until the idle deadline, cost a run
        // of the connection's task per request. A connection idle for longer costs no run
        // until its next response (or its idle deadline).
        let sample_again = now + self.limits.client_write / 4;
        if !self.limits.client_write.is_zero() && sampling {
            next = Some(next.map_or(sample_again, |n| n.min(sample_again)));
        }
        for response in responses {
            let deadline = match response.awaiting_client_since(now) {
                None => continue,
                Some(Some(since)) => since + self.limits.client_write,
                Some(None) => sample_again,
            };
            if deadline <= now {
                response.abandon();
                stalled = true;
            } else {
                let deadline = deadline.min(sample_again);
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        if stalled {
            if http1 {
                return Err(Action::Close);
            }
            // The open count changed: the connection's own deadline may have too.
            return self.evaluate();
        }
        Ok(next)
    }

    fn connection_deadline(
        &self,
        state: &mut State,
        now: Instant,
    ) -> Result<Option<Instant>, Action> {
        let due = |deadline: Instant| {
            if deadline <= now {
                Err(())
            } else {
                Ok(Some(deadline))
            }
        };
        if state.shutdown {
            if state.open > 0 {
                return Ok(None);
            }
            return due(state.idle_since + CLOSE_GRACE).map_err(|()| Action::Close);
        }
        if !state.served {
            return due(state.accepted + self.limits.header_read).map_err(|()| Action::Close);
        }
        if state.open > 0 {
            return Ok(None);
        }
        let shutdown_at = self.idle_deadline(state);
        // HTTP/1.1: the next request head is due too; of the two, the sooner.
        if let Some(head_due) = self.next_head_deadline(state) {
            if shutdown_at.is_none_or(|at| head_due < at) {
                return due(head_due).map_err(|()| Action::Close);
            }
        }
        let Some(shutdown_at) = shutdown_at else {
            return Ok(None);
        };
        due(shutdown_at).map_err(|()| {
            state.shutdown = true;
            state.idle_since = now;
            Action::Shutdown
        })
    }

    /// When a connection with no open request must shut down: at once after its one answer
    /// (over `--max-connections`), else once idle for `--idle-timeout` (zero: never).
    fn idle_deadline(&self, state: &State) -> Option<Instant> {
        if self.answer_once {
            Some(state.idle_since)
        } else if self.limits.idle.is_zero() {
            None
        } else {
            Some(state.idle_since + self.limits.idle)
        }
    }

    /// When an HTTP/1.1 connection with no open request must have its next request head.
    fn next_head_deadline(&self, state: &State) -> Option<Instant> {
        state
            .http1
            .then(|| state.idle_since + self.limits.header_read)
    }
}

/// A request in flight on a tracked connection; see [`Tracker::request_started`].
pub(crate) struct OpenRequest(Arc<Tracker>);

impl OpenRequest {
    /// Wraps a response body so that a client that stops taking it is noticed.
    pub fn watch<B>(self, body: B) -> Watched<B>
    where
        B: Body + Abandon + Send + Unpin + 'static,
    {
        let tracker = Arc::clone(&self.0);
        let now = Instant::now();
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                body: Some(body),
                open: Some(self),
                awaiting_client: true,
                handed: 0,
                sampled: (0, now),
                rest: Bytes::new(),
            }),
        });
        // With no write deadline, nothing samples the responses.
        if tracker.limits.client_write.is_zero() {
            return Watched { slot };
        }
        let weak: Weak<dyn Stall> = Arc::downgrade(&slot) as Weak<dyn Stall>;
        let mut state = tracker.lock();
        state.note_response(weak);
        // Sampled from a quarter period on, like every response (see the module docs).
        let wake = state.must_wake_by(now + tracker.limits.client_write / 4);
        drop(state);
        if wake {
            tracker.changed.notify_one();
        }
        Watched { slot }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let tracker = &self.0;
        let mut state = tracker.lock();
        state.open -= 1;
        // Only the last request's end starts a deadline (idle, closing, the one answer).
        let wake = state.open == 0 && {
            let now = Instant::now();
            state.idle_since = now;
            let deadline = if tracker.answer_once {
                Some(now)
            } else if state.shutdown {
                Some(now + CLOSE_GRACE)
            } else {
                let idle = tracker.idle_deadline(&state);
                let head = tracker.next_head_deadline(&state);
                idle.into_iter().chain(head).min()
            };
            deadline.is_some_and(|deadline| state.must_wake_by(deadline))
        };
        drop(state);
        if wake {
            tracker.changed.notify_one();
        }
    }
}

/// What the tracker asks of a response it watches.
trait Stall: Send + Sync {
    /// Since when (as far as the samples tell, `now` being one) the body's last frame (or its
    /// headers) has waited for hyper to poll again; `Some(None)` while it waits for the
    /// upstream, `None` once it is done with.
    fn awaiting_client_since(&self, now: Instant) -> Option<Option<Instant>>;
    /// Drops the body for a stalled client.
    fn abandon(&self);
}

struct Slot<B> {
    state: Mutex<SlotState<B>>,
}

struct SlotState<B> {
    /// `None` once finished with or abandoned. Held in the slot itself, not boxed apart:
    /// one allocation per response.
    body: Option<B>,
    open: Option<OpenRequest>,
    /// The body handed hyper a frame (or its headers went out) and has not been polled since;
    /// false while it waits for the upstream (it answered `Pending`) or is done.
    awaiting_client: bool,
    /// Frames handed to hyper so far.
    handed: u64,
    /// The tracker's last sample: `handed` then, and when a sample first saw that count.
    sampled: (u64, Instant),
    /// The rest of a data frame larger than [`MAX_HANDED`], handed over piece by piece.
    rest: Bytes,
}

impl<B> Slot<B> {
    fn lock(&self) -> MutexGuard<'_, SlotState<B>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<B: Abandon + Send + Unpin> Stall for Slot<B> {
    fn awaiting_client_since(&self, now: Instant) -> Option<Option<Instant>> {
        let mut state = self.lock();
        state.body.as_ref()?;
        if !state.awaiting_client {
            return Some(None);
        }
        if state.sampled.0 != state.handed {
            state.sampled = (state.handed, now);
        }
        Some(Some(state.sampled.1))
    }

    fn abandon(&self) {
        let (body, open) = {
            let mut state = self.lock();
            state.awaiting_client = false;
            (state.body.take(), state.open.take())
        };
        if let Some(mut body) = body {
            Pin::new(&mut body).abandon();
        }
        drop(open);
    }
}

/// A response body watched for client progress; see the module docs.
pub(crate) struct Watched<B> {
    slot: Arc<Slot<B>>,
}

/// The error hyper gets when it polls a body abandoned for a stalled client.
#[derive(Debug, thiserror::Error)]
#[error("the client took no response bytes for --client-write-timeout; response abandoned")]
pub(crate) struct ClientStalled;

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut guard = self.slot.lock();
        let state = &mut *guard;
        let Some(body) = state.body.as_mut() else {
            return Poll::Ready(Some(Err(ClientStalled.into())));
        };
        if !state.rest.is_empty() {
            state.awaiting_client = true;
            state.handed += 1;
            let piece = state.rest.split_to(state.rest.len().min(MAX_HANDED));
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let polled = Pin::new(body).poll_frame(cx);
        state.awaiting_client = matches!(polled, Poll::Ready(Some(Ok(_))));
        state.handed += u64::from(state.awaiting_client);
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) if data.len() > MAX_HANDED => {
                    state.rest = data.split_off(MAX_HANDED);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        // An abandoned body is not at its end: hyper must poll it to learn it failed.
        let state = self.slot.lock();
        state.rest.is_empty() && state.body.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.slot.lock();
        let Some(body) = state.body.as_ref() else {
            return SizeHint::default();
        };
        let hint = body.size_hint();
        let rest = state.rest.len() as u64;
        match hint.exact() {
            Some(exact) => SizeHint::with_exact(exact + rest),
            None => {
                let mut sum = SizeHint::new();
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + rest);
                }
                sum.set_lower(hint.lower() + rest);
                sum
            }
        }
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        // The body is dropped where it lies (large to move, and it takes no lock of the
        // tracker's); the request guard after it, outside the slot's lock: it takes the
        // tracker's.
        let open = {
            let mut state = self.slot.lock();
            state.body = None;
            state.open.take()
        };
        drop(open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Frames on demand; records being abandoned.
    struct Endless {
        abandoned: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Body for Endless {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: x\n\n")))))
        }
    }

    impl Abandon for Endless {
        fn abandon(self: Pin<&mut Self>) {
            self.abandoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    // Real time (no paused clock in this crate's tests): only lower bounds are asserted.
    fn limits() -> Limits {
        Limits {
            header_read: Duration::from_millis(200),
            idle: Duration::from_millis(300),
            client_write: Duration::from_secs(3),
        }
    }

    #[tokio::test]
    async fn a_connection_without_a_request_head_is_closed_at_the_header_deadline() {
        let tracker = Tracker::new(limits(), false);
        let start = Instant::now();
        assert_eq!(tracker.next_action().await, Action::Close);
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn idle_means_no_open_request_then_shutdown_then_close() {
        let tracker = Tracker::new(limits(), false);
        let open = tracker.request_started(Version::HTTP_2);
        // Open for longer than the header and idle deadlines: nothing is due.
        let waited = tokio::time::timeout(Duration::from_secs(1), tracker.next_action()).await;
        assert!(waited.is_err());
        let start = Instant::now();
        drop(open);
        assert_eq!(tracker.next_action().await, Action::Shutdown);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(tracker.next_action().await, Action::Close);
        assert!(start.elapsed() >= Duration::from_millis(300) + CLOSE_GRACE);
    }

    #[tokio::test]
    async fn over_the_limit_a_connection_shuts_down_after_its_first_answer() {
        let tracker = Tracker::new(limits(), true);
        let open = tracker.request_started(Version::HTTP_2);
        let waited = tokio::time::timeout(Duration::from_secs(1), tracker.next_action()).await;
        assert!(waited.is_err(), "not while the answer is open");
        drop(open);
        assert_eq!(tracker.next_action().await, Action::Shutdown);
    }

    #[tokio::test]
    async fn a_body_not_polled_again_after_a_frame_is_abandoned() {
        let tracker = Tracker::new(limits(), false);
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut body = tracker.request_started(Version::HTTP_2).watch(Endless {
            abandoned: Arc::clone(&abandoned),
        });
        // Polled regularly: progress, for longer than the write timeout in all.
        let mut last = Instant::now();
        for _ in 0..40 {
            let quiet =
                tokio::time::timeout(Duration::from_millis(100), tracker.next_action()).await;
            assert!(quiet.is_err());
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "data: x\n\n");
            last = Instant::now();
        }
        assert!(!abandoned.load(std::sync::atomic::Ordering::SeqCst));
        // Then not polled: abandoned after the write timeout; HTTP/2 keeps the connection,
        // which is then idle.
        assert_eq!(tracker.next_action().await, Action::Shutdown);
        assert!(last.elapsed() >= Duration::from_millis(3300));
        assert!(abandoned.load(std::sync::atomic::Ordering::SeqCst));
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<ClientStalled>());
    }

    /// Entries in the tracker's list of responses: (all, of responses still open).
    fn listed(tracker: &Tracker) -> (usize, usize) {
        let state = tracker.lock();
        let open = state.responses.iter().filter(|r| r.strong_count() > 0);
        (state.responses.len(), open.count())
    }

    #[tokio::test]
    async fn finished_responses_leave_the_list_without_waiting_for_a_sample() {
        let endless = || Endless {
            abandoned: Arc::default(),
        };
        // A busy HTTP/1.1 connection: one response at a time, thousands between two samples
        // (a quarter of the write timeout apart). Each entry would keep its slot allocated.
        let tracker = Tracker::new(limits(), false);
        for _ in 0..1_000 {
            drop(tracker.request_started(Version::HTTP_11).watch(endless()));
        }
        let (all, open) = listed(&tracker);
        assert!(all <= 4, "{all} entries for one response at a time");
        assert_eq!(open, 0);
        // HTTP/2: a hundred open at once, half of them finish, a thousand more come and go.
        // The open ones stay listed (they are still sampled), the list stays within twice
        // the most open at once.
        let tracker = Tracker::new(limits(), false);
        let mut bodies: Vec<_> = (0..100)
            .map(|_| tracker.request_started(Version::HTTP_2).watch(endless()))
            .collect();
        bodies.truncate(50);
        for _ in 0..1_000 {
            drop(tracker.request_started(Version::HTTP_2).watch(endless()));
        }
        let (all, open) = listed(&tracker);
        assert!(all <= 200, "{all} entries for at most 101 open at once");
        assert_eq!(open, 50);
        drop(bodies);
        // With no write deadline nothing samples responses: none is listed.
        let tracker = Tracker::new(
            Limits {
                client_write: Duration::ZERO,
                ..limits()
            },
            false,
        );
        let body = tracker.request_started(Version::HTTP_11).watch(endless());
        assert_eq!(listed(&tracker), (0, 0));
        drop(body);
    }

    #[tokio::test]
    async fn the_tracker_samples_a_busy_connection_and_leaves_a_quiet_one_alone() {
        let no_idle = |client_write| Limits {
            header_read: Duration::from_secs(60),
            idle: Duration::ZERO,
            client_write,
        };
        // A response just ended: the next one may begin at any time, so the tracker looks
        // again a quarter period on, response or not.
        let busy = Tracker::new(no_idle(Duration::from_secs(60)), false);
        drop(busy.request_started(Version::HTTP_11));
        let next = busy.evaluate().unwrap().expect("a sample is due");
        assert!(next <= Instant::now() + Duration::from_secs(15));
        // Idle for longer than a period (and no idle deadline): nothing is due on HTTP/2; on
        // HTTP/1.1 only the next request head, a header time after the last request ended.
        let quiet = Tracker::new(no_idle(Duration::from_millis(100)), false);
        drop(quiet.request_started(Version::HTTP_2));
        let quiet_http1 = Tracker::new(no_idle(Duration::from_millis(100)), false);
        let before = Instant::now();
        drop(quiet_http1.request_started(Version::HTTP_11));
        let after = Instant::now();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(quiet.evaluate(), Ok(None));
        let head_due = quiet_http1
            .evaluate()
            .unwrap()
            .expect("the next head is due");
        assert!(head_due >= before + Duration::from_secs(60));
        assert!(head_due <= after + Duration::from_secs(60));
    }

    #[tokio::test]
    async fn an_http1_connection_must_send_its_next_head_in_time_or_is_closed() {
        let limits = |header_read, idle| Limits {
            header_read,
            idle,
            client_write: Duration::ZERO,
        };
        // What the tracker asks for, waited for no longer than the longest deadline here.
        let action = |tracker: Arc<Tracker>| async move {
            tokio::time::timeout(Duration::from_secs(30), tracker.next_action())
                .await
                .expect("an action within the bound")
        };
        let (short, long) = (Duration::from_millis(100), Duration::from_secs(60));
        // The head's deadline comes first: closed, like a first head that never came.
        let tracker = Tracker::new(limits(short, long), false);
        let ended = Instant::now();
        drop(tracker.request_started(Version::HTTP_11));
        assert_eq!(action(tracker).await, Action::Close);
        assert!(ended.elapsed() >= short);
        // With no idle timeout at all, too.
        let tracker = Tracker::new(limits(short, Duration::ZERO), false);
        drop(tracker.request_started(Version::HTTP_11));
        assert_eq!(action(tracker).await, Action::Close);
        // The idle deadline comes first: a graceful shutdown, as before.
        let tracker = Tracker::new(limits(long, short), false);
        drop(tracker.request_started(Version::HTTP_11));
        assert_eq!(action(tracker).await, Action::Shutdown);
        // HTTP/2 has no such deadline: only idleness ends it.
        let tracker = Tracker::new(limits(short, Duration::from_millis(300)), false);
        let ended = Instant::now();
        drop(tracker.request_started(Version::HTTP_2));
        assert_eq!(action(tracker).await, Action::Shutdown);
        assert!(ended.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_response_that_stalls_on_a_long_quiet_connection_is_abandoned() {
        let limits = Limits {
            header_read: Duration::from_secs(60),
            idle: Duration::ZERO,
            client_write: Duration::from_millis(200),
        };
        let tracker = Tracker::new(limits, false);
        drop(tracker.request_started(Version::HTTP_11));
        let waiting = tokio::spawn({
            let tracker = Arc::clone(&tracker);
            async move { tracker.next_action().await }
        });
        // Longer than a period: the tracker has stopped sampling and waits to be told.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiting.is_finished());
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut body = tracker.request_started(Version::HTTP_11).watch(Endless {
            abandoned: Arc::clone(&abandoned),
        });
        body.frame().await.unwrap().unwrap();
        let start = Instant::now();
        // The response told the tracker: the stall closes the connection.
        let action = tokio::time::timeout(Duration::from_secs(30), waiting).await;
        assert_eq!(action.unwrap().unwrap(), Action::Close);
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(abandoned.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// One frame of `len` bytes, then the end.
    struct Big(Option<Bytes>);

    impl Body for Big {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
        }
    }

    impl Abandon for Big {
        fn abandon(self: Pin<&mut Self>) {}
    }

    #[tokio::test]
    async fn a_large_frame_is_handed_over_in_pieces_with_its_exact_length() {
        let tracker = Tracker::new(limits(), false);
        let original: Bytes = (0..MAX_HANDED * 2 + 100).map(|i| i as u8).collect();
        let mut body = tracker
            .request_started(Version::HTTP_11)
            .watch(Big(Some(original.clone())));
        assert_eq!(body.size_hint().exact(), Some(original.len() as u64));
        let mut pieces = Vec::new();
        let mut joined = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            pieces.push(data.len());
            joined.extend_from_slice(&data);
            let left = (original.len() - joined.len()) as u64;
            assert_eq!(body.size_hint().exact(), Some(left));
            assert_eq!(body.is_end_stream(), left == 0);
        }
        assert_eq!(pieces, [MAX_HANDED, MAX_HANDED, 100]);
        assert_eq!(joined, original);
    }

    #[tokio::test]
    async fn a_stalled_http1_response_closes_its_connection() {
        let tracker = Tracker::new(limits(), false);
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _body = tracker.request_started(Version::HTTP_11).watch(Endless {
            abandoned: Arc::clone(&abandoned),
        });
        assert_eq!(tracker.next_action().await, Action::Close);
        assert!(abandoned.load(std::sync::atomic::Ordering::SeqCst));
    }
}
