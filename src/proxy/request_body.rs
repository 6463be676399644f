//! The client's request body on its way upstream, and who is to blame when it breaks.
//!
//! A client that aborts mid-upload or sends a bad chunk size makes hyper's upstream request
//! fail, which looks like an upstream failure. [`ClientBody`] notes that it was the client's
//! body that failed, so the proxy answers it as the client's error (400, counted as a client
//! cancellation) and never raises the upstream's error metrics or logs.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

pin_project! {
    /// The client's body, streamed as it is; remembers whether reading it failed.
    pub(crate) struct ClientBody {
        #[pin]
        inner: Incoming,
        failed: Arc<AtomicBool>,
    }
}

/// Tells, after the upstream request ended, whether the client's body was the one that broke.
#[derive(Debug, Clone)]
pub(crate) struct ClientBodyFailure(Arc<AtomicBool>);

impl ClientBodyFailure {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl ClientBody {
    pub fn new(inner: Incoming) -> (Self, ClientBodyFailure) {
        let failed = Arc::new(AtomicBool::new(false));
        let failure = ClientBodyFailure(Arc::clone(&failed));
        (Self { inner, failed }, failure)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.failed.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
