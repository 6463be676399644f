//! The response path: from the upstream's response to the client's, in the client's dialect.
//!
//! | upstream response                      | client dialect = upstream | client dialect ≠ upstream        |
//! |----------------------------------------|---------------------------|----------------------------------|
//! | 2xx JSON                               | passed through, streamed  | read, wrapped / unwrapped        |
//! | 2xx empty                              | passed through            | `data: null` / empty             |
//! | 2xx non-JSON (audio, files)            | passed through            | passed through                   |
//! | 2xx `text/event-stream`                | event stream, see `sse`   | event stream, see `sse`          |
//! | 3xx (any body)                         | passed through            | passed through                   |
//! | 101                                    | 502                       | 502                              |
//! | ≥ 400 JSON error                       | passed through            | normalised into client's dialect |
//! | ≥ 400 non-JSON (HTML, text, empty)     | normalised                | normalised                       |
//!
//! Beside that table, upstream responses are never trusted blindly:
//! - framing: the upstream's `Content-Length` is never forwarded with a body; every body the
//!   proxy sends carries its own exact length (pass-through bodies: the length hyper checked
//!   while reading), so a stale length beside `Transfer-Encoding` cannot cut a body short, and
//!   a pass-through body that ends early breaks the client's response instead of ending it;
//! - content coding: the upstream is always asked for `identity`; a coded body it sends all
//!   the same is never framed, parsed or appended to: an event stream that needs no
//!   rewriting, or a JSON error between equal dialects, passes untouched; anything else is
//!   replaced, unread, by an error;
//! - status: 2xx statuses are relayed (an envelope's `code` is that status), 3xx responses are
//!   relayed as they are, never wrapped or unwrapped, and an unrequested `101` is a 502.
//!
//! "Dialect" here means dialect and envelope: two envelope sides with different envelopes
//! (`--envelope`, `--upstream-envelope`) translate like two dialects, unwrapping by the
//! upstream's templates and wrapping in the client's ([`Exchange::passes_through`]).
//!
//! A body the proxy has to read is read whole (bounded by `--max-response-body`); if the
//! upstream cuts it short, the client gets a 502 in its dialect, never a partial body.

pub mod body;
pub(crate) mod byte_search;
pub mod envelope;
pub mod error_body;
pub(crate) mod error_fields;
pub mod json_check;
pub mod sse;
pub(crate) mod synthetic;
pub mod template;
pub mod upstream_body;
pub mod usage;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::dialect::Dialect;
use crate::error::{ApiError, BoxError, ErrorCode, INVALID_FRAMING};
use crate::headers::{self, ContentKind, Present};
use crate::translate::upstream_body::UpstreamBody;
use body::ProxyBody;
use sse::{EventMode, SseBody, StreamSettings};
use synthetic::{error_response, set_json_headers};
use template::{Envelopes, Unwrapped};
use tokio_util::sync::CancellationToken;
use usage::UsageScan;

/// What the response path needs to know about one exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub client: Dialect,
    pub upstream: Dialect,
    /// A HEAD request: the response has no body to translate.
    pub head: bool,
    pub max_response_body: u64,
    /// When a body the proxy reads must be complete, and the `--request-timeout` behind it.
    pub deadline: tokio::time::Instant,
    pub request_timeout: std::time::Duration,
    /// How event streams are handled (its mode already follows from the two dialects); its
    /// envelopes are those of every response of the exchange (see [`Exchange::envelopes`]).
    pub stream: StreamSettings,
    /// Cancelled when the shutdown grace period runs out: open streams end with an error event.
    pub cut: CancellationToken,
}

impl Exchange {
    /// The envelopes of both sides (`--envelope`, `--upstream-envelope`, the templates).
    pub fn envelopes(&self) -> Envelopes {
        self.stream.envelopes
    }

    /// True when bodies pass between the two sides as they are: the same dialect, and for
    /// envelopes the same envelope on both sides.
    pub fn passes_through(&self) -> bool {
        self.client == self.upstream && (self.client == Dialect::Bare || self.envelopes().same())
    }

    /// What reads the `usage` and `model` of a success passing through: at the top level of a
    /// bare body, inside the payload member of an envelope.
    fn usage_scan(&self) -> UsageScan {
        let shape = self.envelopes().upstream();
        match self.upstream {
            Dialect::Bare => UsageScan::new(false),
            Dialect::Envelope if shape.is_standard() => UsageScan::new(true),
            Dialect::Envelope => UsageScan::in_payload(shape.payload_member().as_bytes()),
        }
    }

    /// `error` as a response in the client's dialect and envelope.
    pub(crate) fn error_response(
        &self,
        error: &ApiError,
        headers: Option<HeaderMap>,
    ) -> Response<ProxyBody> {
        error_response(self.client, &self.envelopes(), error, headers)
    }
}

/// A success the proxy read whole, with the `usage` and `model` of its payload (pass-through
/// bodies find theirs as they go by: see `body.rs`).
fn with_usage(mut response: Response<ProxyBody>, payload: &[u8]) -> Response<ProxyBody> {
    if let Some(report) = usage::UsageReport::of(payload, false) {
        response.body_mut().set_usage_report(report);
    }
    response
}

/// A body the proxy rewrote from the upstream's dialect into the client's.
fn translated(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response.body_mut().mark_translated();
    response
}

/// Turns the upstream's response into the client's.
pub async fn respond(exchange: &Exchange, response: Response<UpstreamBody>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    // Nothing asked for an upgrade (Upgrade is never forwarded): a 101 answers no request.
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return exchange.error_response(&unexpected_upgrade(), None);
    }
    let bodiless = exchange.head || has_no_body(status);
    let present = Present::of(&parts.headers);
    headers::strip_upstream_framing(&mut parts.headers, bodiless, present);
    headers::remove_hop_by_hop(&mut parts.headers, present);

    if bodiless {
        return Response::from_parts(parts, ProxyBody::passthru(body));
    }
    let same_dialect = exchange.passes_through();
    let encoded = present.is_content_encoded(&parts.headers);
    let kind = present.content_kind(&parts.headers);
    if status.is_success() && kind == ContentKind::EventStream {
        if encoded {
            // Coded bytes cannot be cut into events: untouched, or refused if they need rewriting.
            return if exchange.stream.mode == EventMode::Passthru {
                Response::from_parts(parts, ProxyBody::passthru(body))
            } else {
                exchange.error_response(&encoded_body(&parts), Some(parts.headers))
            };
        }
        return stream_response(exchange, parts, body);
    }
    // Redirects are relayed as they are: wrapping one would turn it into a success.
    if status.is_redirection() {
        return Response::from_parts(parts, ProxyBody::passthru(body));
    }
    if status.is_success() {
        if kind != ContentKind::Json {
            return Response::from_parts(parts, ProxyBody::passthru(body));
        }
        if same_dialect {
            // Watched on the way for its usage: a coded body cannot be read.
            let body = if encoded {
                ProxyBody::passthru(body)
            } else {
                ProxyBody::passthru_scanned(body, exchange.usage_scan())
            };
            return Response::from_parts(parts, body);
        }
        if encoded {
            return exchange.error_response(&encoded_body(&parts), Some(parts.headers));
        }
        let pieces = match read_pieces(exchange, body).await {
            Ok(pieces) => pieces,
            Err(error) => return exchange.error_response(&error, Some(parts.headers)),
        };
        if exchange.upstream == Dialect::Bare
            && exchange.client == Dialect::Envelope
            && pieces.len() > 1
        {
            if let Some(report) = usage::UsageReport::of_json_across(&pieces) {
                return wrap_pieces(exchange, parts, pieces, report);
            }
        }
        return translate_success(exchange, parts, joined(pieces));
    }
    translate_error(exchange, parts, body).await
}

/// 2xx `text/event-stream`: streamed event by event, never buffered.
fn stream_response(
    exchange: &Exchange,
    mut parts: Parts,
    body: UpstreamBody,
) -> Response<ProxyBody> {
    let headers = &mut parts.headers;
    // The length changes when events are rewritten or an error event is added.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx (and compatible buffering proxies in front of us) not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let rewrites = exchange.stream.mode != EventMode::Passthru;
    // SseBody asks its upstream body through a WokenBody.
    let body = SseBody::with_cut(
        body.wakes_held_outside(),
        exchange.stream,
        exchange.cut.clone(),
    );
    let response = Response::from_parts(parts, ProxyBody::sse(body));
    if rewrites {
        translated(response)
    } else {
        response
    }
}

/// 2xx JSON between different dialects (or different envelopes): unwrapped from the
/// upstream's envelope, then wrapped in the client's.
fn translate_success(exchange: &Exchange, parts: Parts, body: Bytes) -> Response<ProxyBody> {
    // An empty success has no payload to unwrap.
    let (payload, unwrapped) = if exchange.upstream == Dialect::Envelope && !body.is_empty() {
        match exchange.envelopes().upstream().unwrap(&body, parts.status) {
            Unwrapped::Payload(payload) => (payload, true),
            Unwrapped::Error(error) => {
                return translated(exchange.error_response(&error, Some(parts.headers)))
            }
            // Already bare: an upstream that answers some endpoints without an envelope.
            Unwrapped::Bare => (body, false),
            Unwrapped::NotJson => {
                return exchange.error_response(&invalid_json(&parts), Some(parts.headers))
            }
        }
    } else {
        (body, false)
    };
    match exchange.client {
        Dialect::Envelope => {
            // An empty success carries no payload: `data` is null.
            let (payload, report) = if payload.is_empty() {
                (Bytes::from_static(b"null"), None)
            } else if unwrapped {
                let report = usage::UsageReport::of(&payload, false);
                (payload, report)
            } else {
                // Validate, never rebuild: the payload goes out as the upstream wrote it. Its
                // usage is read in the same pass.
                match usage::UsageReport::of_json(&payload) {
                    Some(report) => (payload, report),
                    None => {
                        return exchange.error_response(&invalid_json(&parts), Some(parts.headers))
                    }
                }
            };
            let mut response = translated(json_response(
                parts.status,
                parts.headers,
                exchange.envelopes().client().wrap(parts.status, payload),
            ));
            if let Some(report) = report {
                response.body_mut().set_usage_report(report);
            }
            response
        }
        // An empty success is relayed empty.
        Dialect::Bare if payload.is_empty() => json_response(
            parts.status,
            parts.headers,
            [payload, Bytes::new(), Bytes::new()],
        ),
        Dialect::Bare => {
            let report = payload.clone();
            let response = json_response(
                parts.status,
                parts.headers,
                [payload, Bytes::new(), Bytes::new()],
            );
            let response = if unwrapped {
                translated(response)
            } else {
                response
            };
            with_usage(response, &report)
        }
    }
}

/// A bare JSON success read in pieces (hyper hands a large body over as it reads it), checked
/// and its usage read without joining them, wrapped for envelope clients as it stands: what
/// [`translate_success`] does with the joined body, without the copy that joining costs (a
/// 64 KiB body: +3 µs).
fn wrap_pieces(
    exchange: &Exchange,
    parts: Parts,
    pieces: Vec<Bytes>,
    report: Option<usage::UsageReport>,
) -> Response<ProxyBody> {
    let [prefix, _, suffix] = exchange
        .envelopes()
        .client()
        .wrap(parts.status, Bytes::new());
    let body = ProxyBody::around(prefix, pieces, suffix);
    let mut response = translated(json_body_response(parts.status, parts.headers, body));
    if let Some(report) = report {
        response.body_mut().set_usage_report(report);
    }
    response
}

/// Status ≥ 400: JSON errors pass between equal dialects; everything else is normalised.
async fn translate_error(
    exchange: &Exchange,
    mut parts: Parts,
    body: UpstreamBody,
) -> Response<ProxyBody> {
    let same_dialect = exchange.passes_through();
    let error = if headers::is_content_encoded(&parts.headers) {
        // The upstream was asked for identity. A coded body cannot be inspected: a JSON error
        // between equal dialects passes untouched (the client can decode it); anything else
        // (HTML, text, or a body to translate) is replaced, unread, by a normalised error.
        if same_dialect && headers::is_json_or_unspecified(&parts.headers) {
            return Response::from_parts(parts, ProxyBody::passthru(body));
        }
        let encoding = parts.headers.remove(header::CONTENT_ENCODING);
        ApiError::new(
            parts.status,
            format!(
                "upstream returned HTTP {} with a {}-encoded body",
                parts.status.as_u16(),
                encoding
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("compressed")
            ),
        )
    } else {
        let bytes = match read_body(exchange, body).await {
            Ok(bytes) => bytes,
            Err(error) => return exchange.error_response(&error, Some(parts.headers)),
        };
        if same_dialect && envelope::is_json(&bytes) {
            return Response::from_parts(parts, ProxyBody::full(bytes));
        }
        let content_type = headers::media_type(&parts.headers);
        let shape =
            (exchange.upstream == Dialect::Envelope).then(|| exchange.envelopes().upstream());
        error_body::normalise_from(shape, parts.status, content_type.as_deref(), &bytes)
    };
    let response = exchange.error_response(&error, Some(parts.headers));
    if same_dialect {
        response
    } else {
        translated(response)
    }
}

/// Reads a body the proxy must inspect, bounded by `--max-response-body`, into one buffer.
async fn read_body(exchange: &Exchange, body: UpstreamBody) -> Result<Bytes, ApiError> {
    read_pieces(exchange, body).await.map(joined)
}

/// The pieces as one buffer: a copy, unless there is only one.
fn joined(pieces: Vec<Bytes>) -> Bytes {
    match <[Bytes; 1]>::try_from(pieces) {
        Ok([piece]) => piece,
        Err(pieces) => pieces.concat().into(),
    }
}

/// Reads a body the proxy must inspect, bounded by `--max-response-body`, in few pieces
/// whatever the frames it came in ([`Gathered`]).
async fn read_pieces<B>(exchange: &Exchange, body: B) -> Result<Vec<Bytes>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let read = async {
        let mut body = std::pin::pin!(Limited::new(body, exchange.max_response_body as usize));
        let mut pieces = Gathered::default();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                // `Limited` bounds what may follow by the limit's rest, whatever the framing.
                pieces.push(data, || body.size_hint().upper().unwrap_or(u64::MAX));
            }
        }
        Ok::<_, BoxError>(pieces.into_pieces())
    };
    let Ok(read) = tokio::time::timeout_at(exchange.deadline, read).await else {
        return Err(ApiError::request_timeout(exchange.request_timeout));
    };
    match read {
        Ok(pieces) => Ok(pieces),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::proxy(
            ErrorCode::UpstreamBodyTooLarge,
            format!(
                "upstream response body exceeds the limit of {} bytes (--max-response-body)",
                exchange.max_response_body
            ),
        )),
        Err(error) => {
            // The cause (often an OS error) is for the log; the client gets what it means.
            let cause = crate::error::describe_chain(error.as_ref());
            tracing::warn!(%cause, "upstream response body was cut short");
            let message = if crate::error::body_failure(error.as_ref()) == INVALID_FRAMING {
                "upstream response was cut short: the upstream sent invalid framing"
            } else {
                "upstream response was cut short: the upstream connection ended before the body was complete"
            };
            Err(ApiError::proxy(ErrorCode::UpstreamTruncated, message))
        }
    }
}

/// A piece shorter than this is copied out of the buffer it came in (unless it stands alone:
/// see [`Gathered`]). hyper hands a body over as its reads bring it, pieces of 8 KiB and up
/// (a 64 KiB body over loopback: 65,425 + 111 bytes), so only a body cut small by its sender
/// (tiny chunks or HTTP/2 frames) or by a slow link has runs of shorter ones. A piece kept
/// costs 32 bytes here and 32 in `ProxyBody::Pieces`: under 2 % of a piece this long.
const SHORT_PIECE: usize = 4 * 1024;

/// The capacity of a buffer that gathers short pieces: each is given up for a new one only when
/// less than two short pieces' room is left, so at least half of it holds body bytes.
const GATHER_CAPACITY: usize = 16 * 1024;

/// The pieces of a body being read, kept few whatever the sizes of its frames. Each piece
/// hyper hands over is a slice of a read buffer and keeps all of that buffer alive, and each
/// costs its place in the lists of pieces: a body sent in 1-byte chunks took ~70 times its
/// size.
///
/// A piece of [`SHORT_PIECE`] or more is kept as it came: no copy for a body in large frames.
/// A run of two or more shorter pieces is copied into a gathering buffer of
/// [`GATHER_CAPACITY`] (no more than the body can still bring), and their read buffers are let
/// go. A lone short piece (a body's only piece, the short tail of a large one) is kept as it
/// came. So a body of `n` bytes is at most `2n / SHORT_PIECE + 1` pieces (`n / 8 KiB + 1` when
/// all are short), and a piece kept as it came holds one read buffer at most.
#[derive(Default)]
struct Gathered {
    pieces: Vec<Bytes>,
    /// The last piece read, when it is short and the one before it (if any) is not: not
    /// copied yet.
    lone: Bytes,
    /// The run of short pieces read last, copied together (empty while `lone` is not). Its
    /// spare capacity, left after a run ends, takes the next run.
    run: BytesMut,
}

impl Gathered {
    /// Adds the next piece; `more` tells the most bytes that may still follow it (asked only
    /// when a gathering buffer is made).
    fn push(&mut self, piece: Bytes, more: impl FnOnce() -> u64) {
        if piece.is_empty() {
            return;
        }
        if piece.len() >= SHORT_PIECE {
            self.end_run();
            self.pieces.push(piece);
        } else if self.lone.is_empty() && self.run.is_empty() {
            self.lone = piece;
        } else {
            let lone = std::mem::take(&mut self.lone);
            let adding = lone.len() + piece.len();
            if self.run.capacity() - self.run.len() < adding {
                if !self.run.is_empty() {
                    self.pieces.push(self.run.split().freeze());
                }
                let more = usize::try_from(more()).unwrap_or(usize::MAX);
                // `adding` is under two short pieces, which the capacity always has room for.
                let capacity = GATHER_CAPACITY.min(adding.saturating_add(more));
                self.run = BytesMut::with_capacity(capacity);
            }
            self.run.extend_from_slice(&lone);
            self.run.extend_from_slice(&piece);
        }
    }

    /// The run of short pieces read last, as one piece.
    fn end_run(&mut self) {
        if !self.lone.is_empty() {
            self.pieces.push(std::mem::take(&mut self.lone));
        } else if !self.run.is_empty() {
            self.pieces.push(self.run.split().freeze());
        }
    }

    /// The pieces in order, none empty.
    fn into_pieces(mut self) -> Vec<Bytes> {
        self.end_run();
        self.pieces
    }
}

/// A coded body where the proxy needs plain bytes (it asked for identity).
fn encoded_body(parts: &Parts) -> ApiError {
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("compressed");
    ApiError::proxy(
        ErrorCode::UpstreamInvalidBody,
        format!(
            "upstream sent a {encoding}-encoded body under HTTP {} although it was asked for identity; it cannot be translated",
            parts.status.as_u16()
        ),
    )
}

fn unexpected_upgrade() -> ApiError {
    ApiError::proxy(
        ErrorCode::UpstreamInvalidResponse,
        "upstream answered HTTP 101 Switching Protocols to a request that asked for no upgrade",
    )
}

fn invalid_json(parts: &Parts) -> ApiError {
    ApiError::proxy(
        ErrorCode::UpstreamInvalidBody,
        format!(
            "upstream sent a body that is not valid JSON under HTTP {}",
            parts.status.as_u16()
        ),
    )
}

fn has_no_body(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// A JSON response from pieces, keeping the upstream's end-to-end headers.
fn json_response(
    status: StatusCode,
    headers: HeaderMap,
    pieces: [Bytes; 3],
) -> Response<ProxyBody> {
    json_body_response(status, headers, ProxyBody::parts(pieces))
}

fn json_body_response(
    status: StatusCode,
    mut headers: HeaderMap,
    body: ProxyBody,
) -> Response<ProxyBody> {
    set_json_headers(&mut headers);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use http_body::Frame;
    use proptest::prelude::*;

    /// `n` bytes that differ from their neighbours, so that a piece out of place shows.
    fn body_of(n: usize) -> Bytes {
        (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
    }

    /// `body` cut into pieces of `sizes` (the rest, if any, a last piece): slices of one
    /// buffer, as hyper hands a read over.
    fn cut(body: &Bytes, sizes: &[usize]) -> Vec<Bytes> {
        let mut at = 0;
        let mut pieces: Vec<Bytes> = sizes
            .iter()
            .map(|&size| {
                at += size;
                body.slice(at - size..at)
            })
            .collect();
        if at < body.len() {
            pieces.push(body.slice(at..));
        }
        pieces
    }

    /// The pieces `Gathered` keeps of `pieces`, told how much may follow each.
    fn gather(pieces: &[Bytes]) -> Vec<Bytes> {
        let mut left: usize = pieces.iter().map(Bytes::len).sum();
        let mut gathered = Gathered::default();
        for piece in pieces {
            left -= piece.len();
            gathered.push(piece.clone(), || left as u64);
        }
        gathered.into_pieces()
    }

    fn lengths(pieces: &[Bytes]) -> Vec<usize> {
        pieces.iter().map(Bytes::len).collect()
    }

    /// True when `piece` lies in `buffer`'s memory: a slice of it, not a copy.
    fn inside(piece: &Bytes, buffer: &Bytes) -> bool {
        let range = buffer.as_ptr_range();
        range.contains(&piece.as_ptr()) && piece.as_ptr_range().end <= range.end
    }

    #[test]
    fn short_pieces_are_copied_together_and_their_buffers_let_go() {
        let body = body_of(100_000);
        let gathered = gather(&cut(&body, &[1; 100_000]));
        // 6 × 16 KiB + the rest: within `n / 8 KiB + 1`.
        assert_eq!(
            lengths(&gathered),
            [16_384, 16_384, 16_384, 16_384, 16_384, 16_384, 1_696]
        );
        assert_eq!(gathered.concat(), body);
        assert!(gathered.iter().all(|piece| !inside(piece, &body)));
    }

    #[test]
    fn long_pieces_and_a_lone_short_one_are_kept_as_they_came() {
        // The 64 KiB bench body as hyper hands it over; pieces of every read size; one piece.
        for sizes in [
            &[65_425, 111][..],
            &[7_900, 16_384, 4_096, 37_156],
            &[1_024],
        ] {
            let body = body_of(sizes.iter().sum());
            let pieces = cut(&body, sizes);
            let gathered = gather(&pieces);
            assert_eq!(lengths(&gathered), sizes);
            for (kept, piece) in gathered.iter().zip(&pieces) {
                assert_eq!(kept.as_ptr(), piece.as_ptr(), "{sizes:?}: copied");
            }
        }
        // Empty pieces are left out.
        let body = body_of(1_000);
        let pieces = [Bytes::new(), body.clone(), Bytes::new()];
        let gathered = gather(&pieces);
        assert_eq!(lengths(&gathered), [1_000]);
        assert_eq!(gathered[0].as_ptr(), body.as_ptr());
    }

    #[test]
    fn runs_of_short_pieces_between_long_ones_share_a_gathering_buffer() {
        let sizes = [5_000, 1, 2, 3, 6_000, 10, 4_096, 4_095, 1];
        let body = body_of(sizes.iter().sum());
        let pieces = cut(&body, &sizes);
        let gathered = gather(&pieces);
        assert_eq!(lengths(&gathered), [5_000, 6, 6_000, 10, 4_096, 4_096]);
        assert_eq!(gathered.concat(), body);
        // Long pieces and the lone short one as they came; the runs copied, one after the
        // other in the same buffer.
        for (kept, piece) in [(0, 0), (2, 4), (3, 5), (4, 6)] {
            assert_eq!(gathered[kept].as_ptr(), pieces[piece].as_ptr());
        }
        assert!(!inside(&gathered[1], &body) && !inside(&gathered[5], &body));
        assert_eq!(gathered[5].as_ptr(), gathered[1].as_ptr().wrapping_add(6));
    }

    #[test]
    fn a_gathering_buffer_is_no_larger_than_what_may_still_come() {
        let mut gathered = Gathered::default();
        gathered.push(Bytes::from_static(b"a"), || 11);
        gathered.push(Bytes::from_static(b"b"), || 10);
        assert_eq!(gathered.run.capacity(), 12);
        let mut gathered = Gathered::default();
        gathered.push(Bytes::from_static(b"a"), || u64::MAX);
        gathered.push(Bytes::from_static(b"b"), || u64::MAX);
        assert_eq!(gathered.run.capacity(), GATHER_CAPACITY);
    }

    proptest! {
        #[test]
        fn any_cut_reads_back_whole_in_few_pieces_with_long_ones_kept(
            sizes in prop::collection::vec(
                prop_oneof![0..8usize, 1..SHORT_PIECE, SHORT_PIECE..3 * SHORT_PIECE],
                0..200,
            )
        ) {
            let body = body_of(sizes.iter().sum());
            let pieces = cut(&body, &sizes);
            let gathered = gather(&pieces);
            prop_assert_eq!(gathered.concat(), body.to_vec());
            prop_assert!(gathered.iter().all(|piece| !piece.is_empty()));
            prop_assert!(gathered.len() <= 2 * body.len() / SHORT_PIECE + 1);
            for piece in pieces.iter().filter(|piece| piece.len() >= SHORT_PIECE) {
                prop_assert!(gathered.iter().any(|kept| kept.as_ptr() == piece.as_ptr()));
            }
        }
    }

    /// A body of hand-made data frames, which then ends, or stalls when `stall`.
    struct Frames {
        frames: VecDeque<Bytes>,
        stall: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.frames.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None if self.stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    /// `body` in 1-byte frames.
    fn one_byte_frames(body: &Bytes, stall: bool) -> Frames {
        let frames = (0..body.len()).map(|at| body.slice(at..=at)).collect();
        Frames { frames, stall }
    }

    fn exchange(max_response_body: u64) -> Exchange {
        let (client, upstream) = (Dialect::Envelope, Dialect::Bare);
        Exchange {
            client,
            upstream,
            head: false,
            max_response_body,
            deadline: tokio::time::Instant::now() + Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            stream: StreamSettings {
                mode: EventMode::Passthru,
                client,
                upstream,
                require_done: true,
                idle_timeout: Duration::from_secs(60),
                keepalive: None,
                max_event_bytes: 1 << 20,
                envelopes: Envelopes::standard(),
            },
            cut: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn a_body_in_one_byte_frames_is_read_in_few_pieces() {
        let body = body_of(100_000);
        let pieces = read_pieces(&exchange(64 << 20), one_byte_frames(&body, false))
            .await
            .unwrap();
        assert_eq!(
            lengths(&pieces),
            [16_384, 16_384, 16_384, 16_384, 16_384, 16_384, 1_696]
        );
        assert_eq!(pieces.concat(), body);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_and_the_deadline_hold_for_a_body_in_one_byte_frames() {
        // Up to the limit: read, in one buffer no larger than the limit allows.
        let body = body_of(1_000);
        let pieces = read_pieces(&exchange(1_000), one_byte_frames(&body, false)).await;
        assert_eq!(pieces, Ok(vec![body]));
        // One byte more: refused, as any body over the limit.
        let body = body_of(1_001);
        let pieces = read_pieces(&exchange(1_000), one_byte_frames(&body, false)).await;
        let too_large = ApiError::proxy(
            ErrorCode::UpstreamBodyTooLarge,
            "upstream response body exceeds the limit of 1000 bytes (--max-response-body)",
        );
        assert_eq!(pieces, Err(too_large));
        // A body that stops coming: the request's deadline (the paused clock jumps to it).
        let body = body_of(10_000);
        let pieces = read_pieces(&exchange(64 << 20), one_byte_frames(&body, true)).await;
        assert_eq!(
            pieces,
            Err(ApiError::request_timeout(Duration::from_secs(30)))
        );
    }
}
