//! The response body the proxy sends to clients.
//!
//! One enum, so the service has one concrete type (no boxing per request): a `Passthru`
//! variant that forwards the upstream body untouched — the common case pays nothing — beside
//! the variants that carry rewritten bodies.
//!
//! A pass-through JSON success is watched as it goes by ([`UsageScan`]: no copy, no buffer)
//! for its `usage` and `model`; an event stream keeps its [`StreamStats`]; a body the proxy
//! wrote itself carries what it says about the response ([`Written`]). The access log and
//! the metrics read all three from the body (`proxy/response_body.rs`): typed fields, where
//! response extensions would allocate a map for every response.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::{BoxError, ErrorCode};
use crate::translate::sse::body::StreamEnd;
use crate::translate::sse::transform::StreamStats;
use crate::translate::sse::SseBody;
use crate::translate::upstream_body::UpstreamBody;
use crate::translate::usage::{UsageReport, UsageScan};

pin_project! {
    /// A response body: pass-through, a few in-memory pieces, or a translated event stream.
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        /// The upstream's body, frame for frame; `scan` watches a JSON success's frames.
        Passthru { #[pin] inner: UpstreamBody, scan: Option<Box<UsageScan>> },
        /// Up to three pieces sent in order (prefix, payload, suffix), with an exact length.
        Parts { parts: [Bytes; 3], next: usize, written: Written },
        /// More pieces sent in order, none empty, with an exact length: a body read in pieces
        /// and wrapped without joining them (prefix, the pieces, suffix).
        Pieces { pieces: VecDeque<Bytes>, written: Written },
        /// An SSE stream re-framed and translated event by event. Boxed: a stream's state is
        /// most of a kilobyte, which every move of every response would copy otherwise.
        Sse { inner: Pin<Box<SseBody<UpstreamBody>>> },
    }
}

impl ProxyBody {
    pub fn passthru(inner: UpstreamBody) -> Self {
        ProxyBody::Passthru { inner, scan: None }
    }

    /// A pass-through JSON success whose `usage` and `model` `scan` reads on the way.
    pub fn passthru_scanned(inner: UpstreamBody, scan: UsageScan) -> Self {
        ProxyBody::Passthru {
            inner,
            scan: Some(Box::new(scan)),
        }
    }

    pub fn full(bytes: Bytes) -> Self {
        Self::parts([bytes, Bytes::new(), Bytes::new()])
    }

    pub fn parts(parts: [Bytes; 3]) -> Self {
        ProxyBody::Parts {
            parts,
            next: 0,
            written: Written::default(),
        }
    }

    /// `payload`'s pieces between `prefix` and `suffix`, as they are.
    pub fn around(prefix: Bytes, payload: Vec<Bytes>, suffix: Bytes) -> Self {
        let mut pieces = VecDeque::with_capacity(payload.len() + 2);
        pieces.push_back(prefix);
        pieces.extend(payload);
        pieces.push_back(suffix);
        pieces.retain(|piece| !piece.is_empty());
        ProxyBody::Pieces {
            pieces,
            written: Written::default(),
        }
    }

    /// What the proxy knows of a body it wrote itself.
    fn written(&mut self) -> Option<&mut Written> {
        match self {
            ProxyBody::Parts { written, .. } | ProxyBody::Pieces { written, .. } => Some(written),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub fn sse(inner: SseBody<UpstreamBody>) -> Self {
        ProxyBody::Sse {
            inner: Box::pin(inner),
        }
    }

    /// Marks a body the proxy wrote itself as rewritten from the upstream's dialect.
    pub(crate) fn mark_translated(&mut self) {
        if let Some(written) = self.written() {
            written.translated = true;
        }
    }

    /// Gives a body the proxy wrote itself the proxy's own error code (see [`Written`]).
    pub(crate) fn set_error_code(&mut self, code: ErrorCode) {
        if let Some(written) = self.written() {
            written.error_code = Some(code);
        }
    }

    /// Gives a success the proxy read whole the `usage` and `model` it carried.
    pub(crate) fn set_usage_report(&mut self, report: UsageReport) {
        if let Some(written) = self.written() {
            written.report = Some(Box::new(report));
        }
    }

    /// True when the body is rewritten from the upstream's dialect into the client's.
    pub(crate) fn translated(&self) -> bool {
        match self {
            ProxyBody::Passthru { .. } => false,
            ProxyBody::Parts { written, .. } | ProxyBody::Pieces { written, .. } => {
                written.translated
            }
            ProxyBody::Sse { inner } => inner.rewrites(),
        }
    }

    /// The proxy's own error code when the body is one of its errors.
    pub(crate) fn error_code(&self) -> Option<ErrorCode> {
        match self {
            ProxyBody::Parts { written, .. } | ProxyBody::Pieces { written, .. } => {
                written.error_code
            }
            _ => None,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, ProxyBody::Sse { .. })
    }

    /// How an event stream ended (`None` for other bodies, and while a stream runs).
    pub(crate) fn stream_end(&self) -> Option<StreamEnd> {
        match self {
            ProxyBody::Sse { inner, .. } => inner.stream_end(),
            _ => None,
        }
    }

    /// The `usage` and `model` of a scanned pass-through body, once it was read whole, or of
    /// a success the proxy read (moved out: asked once, when the body ends).
    pub(crate) fn take_usage_report(self: Pin<&mut Self>) -> Option<UsageReport> {
        match self.project() {
            ProxyBodyProj::Passthru {
                scan: Some(scan), ..
            } => scan.take_report(),
            ProxyBodyProj::Parts { written, .. } | ProxyBodyProj::Pieces { written, .. } => {
                written.report.take().map(|report| *report)
            }
            _ => None,
        }
    }

    /// What an event stream's events said (moved out: asked once, when the body ends).
    pub(crate) fn take_stream_stats(self: Pin<&mut Self>) -> Option<StreamStats> {
        match self.project() {
            ProxyBodyProj::Sse { inner } => Some(inner.as_mut().take_stats()),
            _ => None,
        }
    }
}

/// What a body the proxy wrote itself says about its response.
#[derive(Debug, Default)]
pub struct Written {
    /// Rewritten from the upstream's dialect (an error normalised, a success wrapped).
    translated: bool,
    /// The proxy's own error code, when the body is one of its errors.
    error_code: Option<ErrorCode>,
    /// The `usage` and `model` of a success the proxy read whole (boxed: rare, and large
    /// beside the pieces).
    report: Option<Box<UsageReport>>,
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Passthru { mut inner, scan } => {
                let polled = inner.as_mut().poll_frame(cx);
                if let (Some(scan), Poll::Ready(Some(Ok(frame)))) = (scan.as_mut(), &polled) {
                    if let Some(data) = frame.data_ref() {
                        if inner.is_end_stream() {
                            // A body of a known length that fits one read: all of it.
                            scan.feed_last(data);
                        } else {
                            scan.feed(data);
                        }
                    }
                }
                polled.map_err(Into::into)
            }
            ProxyBodyProj::Parts { parts, next, .. } => {
                while let Some(part) = parts.get_mut(*next) {
                    *next += 1;
                    if !part.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(std::mem::take(part)))));
                    }
                }
                Poll::Ready(None)
            }
            ProxyBodyProj::Pieces { pieces, .. } => {
                Poll::Ready(pieces.pop_front().map(|piece| Ok(Frame::data(piece))))
            }
            ProxyBodyProj::Sse { inner } => inner.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Passthru { inner, .. } => inner.is_end_stream(),
            ProxyBody::Parts { parts, next, .. } => parts.iter().skip(*next).all(Bytes::is_empty),
            ProxyBody::Pieces { pieces, .. } => pieces.is_empty(),
            ProxyBody::Sse { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Passthru { inner, .. } => inner.size_hint(),
            ProxyBody::Parts { parts, next, .. } => {
                SizeHint::with_exact(parts.iter().skip(*next).map(|p| p.len() as u64).sum())
            }
            ProxyBody::Pieces { pieces, .. } => {
                SizeHint::with_exact(pieces.iter().map(|p| p.len() as u64).sum())
            }
            ProxyBody::Sse { inner, .. } => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn parts_are_sent_in_order_with_an_exact_length() {
        let body = ProxyBody::parts([
            Bytes::from_static(b"{\"data\":"),
            Bytes::from_static(b"[1]"),
            Bytes::from_static(b"}"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(12));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"{\"data\":[1]}");
        assert!(ProxyBody::empty().is_end_stream());
    }

    #[tokio::test]
    async fn a_payload_in_pieces_goes_between_prefix_and_suffix_frame_by_frame() {
        let pieces = ["[1,", "", "\"ab", "c\"]"]
            .map(|p| Bytes::from_static(p.as_bytes()))
            .to_vec();
        let mut body = ProxyBody::around(
            Bytes::from_static(b"{\"data\":"),
            pieces,
            Bytes::from_static(b"}"),
        );
        body.set_usage_report(UsageReport::default());
        assert_eq!(body.size_hint().exact(), Some(18));
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
            assert_eq!(
                body.size_hint().exact(),
                Some(18 - frames.iter().map(Bytes::len).sum::<usize>() as u64)
            );
        }
        // Empty pieces are no frames.
        assert_eq!(frames, ["{\"data\":", "[1,", "\"ab", "c\"]", "}"]);
        assert!(body.is_end_stream());
        assert!(std::pin::pin!(body).take_usage_report().is_some());
    }
}
