//! The upstream's response body as the response path reads it.
//!
//! hyper delivers an upstream body through a channel filled by the task that drives the
//! upstream connection. When that connection is driven by the request itself (the worker's
//! own HTTP/1.1 pool, `proxy/upstream.rs`), the body carries the connection along: whenever
//! the channel is empty, the body polls the connection, which reads and decodes more. So the
//! chunks of one upstream read reach the client as fast as hyper can take them — without a
//! task switch per chunk, and without a flush of the client's socket between them — and when
//! the body has ended whole, the connection goes back to its pool.
//!
//! A body on a multiplexed upstream HTTP/2 connection (`--upstream-http2`) holds its stream's
//! place in that connection's count instead (see [`UpstreamBody::holding`]) until it ends or is
//! dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::woken::HeldWakes;

/// An upstream connection driven by the request that uses it.
pub(crate) trait DriveConnection: Send + 'static {
    /// Lets the connection make progress (read, decode, write the request body). `Ready` once
    /// the connection has ended; it is not polled again after that.
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// The response body ended whole: the connection may serve another request.
    fn body_done(self: Box<Self>);
}

/// An upstream response body, with the connection that feeds it when the request drives it.
pub struct UpstreamBody {
    inner: Incoming,
    /// `None` when another task drives the connection, and once it has ended.
    connection: Option<Box<dyn DriveConnection>>,
    /// With a driven connection: its wake-ups to itself, held back during each ask (see
    /// [`HeldWakes`]).
    wakes: Option<HeldWakes>,
    /// An error held back for one poll, so that what arrived before it is sent first.
    held_error: Option<hyper::Error>,
    /// The response head, or data, was handed out since the last `Pending`: the server may
    /// not have flushed it yet.
    unflushed: bool,
    /// Held until the body ends or is dropped (a stream's place on a shared connection).
    held: Option<Box<dyn Send>>,
    /// The response has no body whatever its head says (HEAD, 204, 304): over HTTP/2 the
    /// stream may end after the head, in a frame of its own, and its `content-length` would
    /// otherwise pass for the body's size.
    bodiless: bool,
}

/// True for a response that has no body whatever its head says: the answer to a HEAD, a 204
/// or a 304. hyper's HTTP/1 client knows; its HTTP/2 client reports a `content-length` as the
/// body's size.
pub(crate) fn has_no_body(head: bool, status: http::StatusCode) -> bool {
    head || status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED
}

impl From<Incoming> for UpstreamBody {
    /// A body whose connection another task drives.
    fn from(inner: Incoming) -> Self {
        Self {
            inner,
            connection: None,
            wakes: None,
            held_error: None,
            unflushed: true,
            held: None,
            bodiless: false,
        }
    }
}

impl UpstreamBody {
    /// A body fed by `connection`, which this body drives, holding back the wake-ups `wakes`
    /// (what drove the connection to the response head) is given during each ask.
    pub(crate) fn driven(
        inner: Incoming,
        connection: Box<dyn DriveConnection>,
        wakes: HeldWakes,
    ) -> Self {
        Self {
            inner,
            connection: Some(connection),
            wakes: Some(wakes),
            held_error: None,
            unflushed: true,
            held: None,
            bodiless: false,
        }
    }

    /// For a body read behind a `WokenBody` (event streams), which holds back the wake-ups
    /// its body gives itself during each ask already: the body's own holding would cost a
    /// second round of it per event.
    pub(crate) fn wakes_held_outside(mut self) -> Self {
        self.wakes = None;
        self
    }

    /// Empty from the start when `bodiless` (see [`has_no_body`]).
    pub(crate) fn bodiless(mut self, bodiless: bool) -> Self {
        self.bodiless = bodiless;
        self
    }

    /// A body whose connection another task drives, holding `held` until it ends (whole or
    /// not) or is dropped; empty from the start when `bodiless`.
    pub(crate) fn holding(inner: Incoming, held: Box<dyn Send>, bodiless: bool) -> Self {
        Self {
            inner,
            connection: None,
            wakes: None,
            held_error: None,
            unflushed: true,
            held: Some(held),
            bodiless,
        }
    }

    fn release(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.body_done();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(wakes) = this.wakes.take() else {
            return this.ask(cx);
        };
        let answer = wakes.ask(cx, |cx| this.ask(cx));
        this.wakes = Some(wakes);
        answer
    }

    fn is_end_stream(&self) -> bool {
        self.bodiless || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.bodiless {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

impl UpstreamBody {
    /// The next frame: from the channel, after driving the connection when it is empty.
    fn ask(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self;
        if let Some(error) = this.held_error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if this.bodiless {
            this.held = None;
            return Poll::Ready(None);
        }
        let mut drove = false;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(None) => {
                    this.release();
                    this.held = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    // A connection that broke its body is of no further use.
                    this.connection = None;
                    this.held = None;
                    if !this.unflushed {
                        return Poll::Ready(Some(Err(error)));
                    }
                    // The error is right behind bytes the server may still hold: one Pending
                    // lets it flush those (and the response head) first, so the client sees
                    // its response break rather than never begin — as it did when another
                    // task drove the connection and every chunk came after a Pending.
                    this.held_error = Some(error);
                    this.unflushed = false;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.unflushed = true;
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Pending => {}
            }
            // Nothing buffered: let the connection read (once per poll; if it made nothing
            // available, it has registered for the socket and we wait).
            let Some(connection) = this.connection.as_mut().filter(|_| !drove) else {
                this.unflushed = false;
                return Poll::Pending;
            };
            drove = true;
            if connection.poll_connection(cx).is_ready() {
                // Whatever the connection's end means for the body (its end or an error) is
                // in the channel now.
                this.connection = None;
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that was empty from the start (HEAD, 204, 304) is never polled: it ended
        // whole all the same. Any other body dropped early takes its connection down with it,
        // which is what tells the upstream to stop generating.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
