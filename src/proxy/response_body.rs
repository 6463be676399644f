//! The guard around every response body the proxy sends: the body itself, the request's
//! [`RequestRecord`] (access log and metrics) and its concurrency permit.
//!
//! The record sees the first byte, every byte and the end: the last frame, a broken body, the
//! body dropped early (the client went away) or abandoned for a stalled client.
//! The permit is let go when the body is dropped, which for a stream is when it ends or the
//! client leaves, and only after the record has been written.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::BoxError;
use crate::ops::access_log::{BodyEnd, RequestRecord};
use crate::translate::body::ProxyBody;

pin_project! {
    /// A response body with what must last exactly as long as it: see the module docs.
    pub(crate) struct ResponseBody {
        #[pin]
        inner: ProxyBody,
        // `None` for the operational endpoints, which are not logged; taken when written.
        record: Option<RequestRecord>,
        // `None` for responses the proxy answers itself. Declared last: released last.
        permit: Option<OwnedSemaphorePermit>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut record) = this.record.take() {
                // hyper does not poll a body that says it is empty; that is a complete one.
                let end = if this.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Cancelled };
                finish(&mut record, this.inner, end);
            }
        }
    }
}

impl ResponseBody {
    /// A body with neither a record nor a permit (the operational endpoints).
    pub(crate) fn unobserved(inner: ProxyBody) -> Self {
        Self {
            inner,
            record: None,
            permit: None,
        }
    }
}

/// Writes the record with what the body saw: its usage, its stream's stats, how it ended.
fn finish(record: &mut RequestRecord, mut body: Pin<&mut ProxyBody>, end: BodyEnd) {
    if let Some(report) = body.as_mut().take_usage_report() {
        record.set_usage(report);
    }
    if let Some(stats) = body.as_mut().take_stream_stats() {
        record.set_stream_stats(stats);
    }
    // A broken body's stream end is not read: the break is what ended it.
    let stream_end = if end == BodyEnd::Broken {
        None
    } else {
        body.stream_end()
    };
    record.complete(end, stream_end);
}

/// Attaches the request's record to its response, with what the response says about itself
/// (its body knows whether it is the proxy's own error, rewritten, or a stream).
pub(crate) fn observed(
    response: Response<ProxyBody>,
    record: RequestRecord,
) -> Response<ResponseBody> {
    observed_holding(response, record, None)
}

/// [`observed`], keeping `permit` (the request's concurrency slot) until the body is dropped;
/// in one step, so the body is moved into its place once.
pub(crate) fn observed_holding(
    response: Response<ProxyBody>,
    mut record: RequestRecord,
    permit: Option<OwnedSemaphorePermit>,
) -> Response<ResponseBody> {
    let body = response.body();
    record.set_response(
        response.status().as_u16(),
        body.error_code(),
        body.translated(),
        body.is_stream(),
    );
    response.map(|inner| ResponseBody {
        inner,
        record: Some(record),
        permit,
    })
}

/// A response the proxy answered itself, with nothing to log (the operational endpoints, and
/// the answer on a connection over its limit).
pub(crate) fn unobserved(response: Response<ProxyBody>) -> Response<ResponseBody> {
    response.map(ResponseBody::unobserved)
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Some(record) = this.record.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        record.on_data(data.len());
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    finish(record, this.inner.as_mut(), BodyEnd::Broken);
                }
                Poll::Ready(None) => finish(record, this.inner.as_mut(), BodyEnd::Complete),
                Poll::Pending => {}
            }
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

impl ResponseBody {
    /// The body is about to be dropped because its client took nothing for
    /// `--client-write-timeout`: the access log says `client_stalled`.
    pub fn client_stalled(self: Pin<&mut Self>) {
        let this = self.project();
        if let Some(mut record) = this.record.take() {
            finish(&mut record, this.inner, BodyEnd::Stalled);
        }
    }
}
