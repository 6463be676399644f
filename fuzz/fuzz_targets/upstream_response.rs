//! The response path on an arbitrary upstream response: status, framing headers and body
//! chunks from the input, written as raw HTTP/1.1 into an in-memory pipe, read by hyper's
//! client as the proxy's upstream connection does, and turned into the client's response by
//! `translate::respond` (in every dialect pairing and streaming setting). No socket is opened.
//!
//! Input layout (a short header, then the body, so any fixture behind a header is a seed):
//! - byte 0: the status: below 0x80 one of [`STATUSES`]; else with byte 1, 100–999;
//! - byte 2: bits 0–1 the content type ([`CONTENT_TYPES`]); bits 2–3 the `Content-Length`
//!   (none, exact, `k` short, `k` long); bit 4 `Transfer-Encoding: chunked` (with a length
//!   too: both, as a misbehaving upstream sends); bit 5 the last chunk is sent (else the
//!   chunked body is cut); bit 6 the client speaks envelope; bit 7 the upstream does;
//! - byte 3: bit 0 `--stream-envelope wrap`; bit 1 `--require-done`; bit 2
//!   `Content-Encoding: gzip`; bits 3–7 `k`;
//! - byte 4: the chunk size (0: one chunk);
//! - the rest: the body as the upstream means to send it.
//!
//! Checked, whatever the upstream does:
//! - no panic, and the response body ends (cleanly or with an error, which resets the client);
//! - never a `Content-Length` (or an exact size hint, which hyper writes as one) that
//!   disagrees with the bytes of a body that ended cleanly;
//! - never a success for an upstream error: an upstream status ≥ 400 stays ≥ 400, and an
//!   envelope error (`success:false` or an error code, even under HTTP 200) reaches a bare
//!   client as an error status;
//! - an event stream is exactly what `EventMode::apply` makes of the upstream's complete
//!   events, in order — never an event that was not complete upstream — then nothing, a
//!   completed `data: [DONE]` (only when the upstream's tail was that line), or one error event
//!   of the proxy's own; and it ends without such an error event only when the upstream said
//!   `[DONE]`, sent an error event, or (`--require-done` off) ended on an event boundary.

#![no_main]

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use envelope_proxy::config::StreamEnvelope;
use envelope_proxy::translate::envelope::{classify, Classified, Verdict};
use envelope_proxy::translate::sse::framer::{SseEvent, SseFramer};
use envelope_proxy::translate::sse::transform::{EventKind, EventMode};
use envelope_proxy::translate::sse::StreamSettings;
use envelope_proxy::translate::template::Envelopes;
use envelope_proxy::translate::{respond, Exchange};
use envelope_proxy::Dialect;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const STATUSES: [u16; 16] = [
    200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 404, 422, 429, 500, 502, 503,
];
const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("text/event-stream"),
    Some("application/json"),
    Some("text/html; charset=utf-8"),
    None,
];
/// The codes of the error events the proxy itself ends a stream with.
const STREAM_ERRORS: [&str; 5] = [
    "stream_truncated",
    "upstream_broken",
    "idle_timeout",
    "event_too_large",
    "shutting_down",
];
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
const MAX_EVENT: usize = 512;

struct Case<'a> {
    status: u16,
    content_type: Option<&'static str>,
    /// 0 none, 1 exact, 2 short by `k`, 3 long by `k`.
    length: u8,
    chunked: bool,
    last_chunk: bool,
    client: Dialect,
    upstream: Dialect,
    wrap: bool,
    require_done: bool,
    gzip: bool,
    k: usize,
    chunk: usize,
    body: &'a [u8],
}

fn case(data: &[u8]) -> Option<Case<'_>> {
    let (head, body) = data.split_at_checked(5)?;
    let status = if head[0] < 0x80 {
        STATUSES[usize::from(head[0]) % STATUSES.len()]
    } else {
        100 + (u16::from(head[0] & 0x7f) << 8 | u16::from(head[1])) % 900
    };
    let dialect = |bit: bool| {
        if bit {
            Dialect::Envelope
        } else {
            Dialect::Bare
        }
    };
    Some(Case {
        status,
        content_type: CONTENT_TYPES[usize::from(head[2] & 3)],
        length: (head[2] >> 2) & 3,
        chunked: head[2] & 0x10 != 0,
        last_chunk: head[2] & 0x20 != 0,
        client: dialect(head[2] & 0x40 != 0),
        upstream: dialect(head[2] & 0x80 != 0),
        wrap: head[3] & 1 != 0,
        require_done: head[3] & 2 != 0,
        gzip: head[3] & 4 != 0,
        k: usize::from(head[3] >> 3),
        chunk: usize::from(head[4]),
        body,
    })
}

impl Case<'_> {
    fn declared_length(&self) -> Option<usize> {
        let len = self.body.len();
        match self.length {
            1 => Some(len),
            2 => Some(len.saturating_sub(self.k)),
            3 => Some(len + self.k),
            _ => None,
        }
    }

    /// The response as raw HTTP/1.1 bytes.
    fn wire(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} X\r\n", self.status).into_bytes();
        if let Some(ct) = self.content_type {
            out.extend_from_slice(format!("content-type: {ct}\r\n").as_bytes());
        }
        if let Some(len) = self.declared_length() {
            out.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
        }
        if self.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if self.gzip {
            out.extend_from_slice(b"content-encoding: gzip\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.chunked {
            out.extend_from_slice(self.body);
            return out;
        }
        let size = if self.chunk == 0 {
            self.body.len().max(1)
        } else {
            self.chunk
        };
        for piece in self.body.chunks(size) {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        if self.last_chunk {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        out
    }

    /// The body the proxy can receive at most: a prefix of it is what hyper hands over.
    fn meant(&self) -> &[u8] {
        match self.declared_length() {
            Some(len) if !self.chunked && len < self.body.len() => &self.body[..len],
            _ => self.body,
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// What the client got: status, headers, the body's exact size hint at the start, its
/// bytes, and whether it ended cleanly.
struct Sent {
    status: StatusCode,
    headers: http::HeaderMap,
    hint: Option<u64>,
    bytes: Vec<u8>,
    clean: bool,
    stream: bool,
}

async fn exchange(case: &Case<'_>) -> Option<Sent> {
    let wire = case.wire();
    let (client_io, mut upstream_io) = tokio::io::duplex(wire.len() + 4096);
    // The upstream reads the request head (hyper refuses a response that comes before its
    // request), writes the whole response and shuts its side: hyper then reads an end of
    // stream, so nothing can stall.
    let upstream = tokio::spawn(async move {
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0; 1024];
            let n = upstream_io.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        upstream_io.write_all(&wire).await.ok()?;
        upstream_io.shutdown().await.ok()?;
        Some(upstream_io)
    });
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .ok()?;
    let connection = tokio::spawn(connection);
    let request = Request::post("/v1/chat/completions")
        .header("host", "upstream")
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let Ok(response) = sender.send_request(request).await else {
        // hyper refused the response (bad status line, a 1xx then nothing…): the proxy then
        // answers 502 on its own, which is not the path under test.
        connection.abort();
        upstream.abort();
        return None;
    };

    let settings = StreamSettings {
        mode: EventMode::select(
            case.client,
            case.upstream,
            if case.wrap {
                StreamEnvelope::Wrap
            } else {
                StreamEnvelope::Bare
            },
        ),
        client: case.client,
        upstream: case.upstream,
        require_done: case.require_done,
        idle_timeout: Duration::from_secs(60),
        keepalive: None,
        max_event_bytes: MAX_EVENT,
        envelopes: Envelopes::standard(),
    };
    let exchange = Exchange {
        client: case.client,
        upstream: case.upstream,
        head: false,
        max_response_body: 1 << 20,
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        stream: settings,
        cut: CancellationToken::new(),
    };
    let response = response.map(envelope_proxy::translate::upstream_body::UpstreamBody::from);
    let (parts, body) = respond(&exchange, response).await.into_parts();
    let hint = http_body::Body::size_hint(&body).exact();
    let stream = body.is_stream();
    let mut bytes = Vec::new();
    let clean = {
        let mut body = std::pin::pin!(body);
        loop {
            match body.frame().await {
                Some(Ok(frame)) => bytes.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Some(Err(_)) => break false,
                None => break true,
            }
        }
    };
    connection.abort();
    upstream.abort();
    Some(Sent {
        status: parts.status,
        headers: parts.headers,
        hint,
        bytes,
        clean,
        stream,
    })
}

fn check_length(case: &Case<'_>, sent: &Sent) {
    let bodiless = sent.status.is_informational()
        || sent.status == StatusCode::NO_CONTENT
        || sent.status == StatusCode::NOT_MODIFIED;
    if bodiless || !sent.clean {
        return;
    }
    let len = sent.bytes.len() as u64;
    for value in sent.headers.get_all(http::header::CONTENT_LENGTH) {
        let declared = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert_eq!(
            declared,
            Some(len),
            "Content-Length {value:?} but {len} bytes sent cleanly (upstream {}, chunked {}, length mode {})",
            case.status,
            case.chunked,
            case.length
        );
    }
    if let Some(hint) = sent.hint {
        assert_eq!(hint, len, "exact size hint {hint} but {len} bytes sent");
    }
}

fn check_status(case: &Case<'_>, sent: &Sent) {
    if case.status >= 400 {
        assert!(
            sent.status.as_u16() >= 400,
            "upstream {} became {}",
            case.status,
            sent.status
        );
    }
    // An envelope error under a success status, for a client that reads the status.
    let json_like = matches!(case.content_type, Some("application/json") | None);
    if case.client == Dialect::Bare
        && case.upstream == Dialect::Envelope
        && (200..300).contains(&case.status)
        && case.status != 204
        && json_like
        && !case.gzip
    {
        if let Classified::Envelope(envelope) = classify(case.meant()) {
            if let Verdict::Error(_) = envelope.verdict(StatusCode::OK) {
                assert!(
                    sent.status.as_u16() >= 400,
                    "an envelope error reached a bare client as {}",
                    sent.status
                );
            }
        }
    }
}

/// The complete events of `meant`, as the framer reads them: with the last one, when a lone
/// `\r` at the very end ended it (not the `[DONE]` that `finish()` completes).
fn upstream_events(meant: &[u8]) -> Vec<SseEvent> {
    let mut framer = SseFramer::new(usize::MAX);
    framer.push(Bytes::copy_from_slice(meant));
    let mut events: Vec<SseEvent> =
        std::iter::from_fn(|| framer.next_event().expect("no cap")).collect();
    if let Some(last) = framer.finish().expect("no cap") {
        if last.raw().ends_with(b"\r") {
            events.push(last);
        }
    }
    events
}

/// What `apply` makes of `event`, and what the event meant.
fn applied(mode: EventMode, upstream: Dialect, event: SseEvent) -> (Vec<u8>, EventKind) {
    let mut out = VecDeque::new();
    let kind = mode.apply(
        event,
        upstream,
        Envelopes::standard(),
        &mut out,
        &mut envelope_proxy::translate::sse::transform::StreamStats::default(),
        &mut envelope_proxy::translate::json_check::EventChecks::default(),
    );
    (out.iter().flat_map(|p| p.iter().copied()).collect(), kind)
}

/// One event the proxy wrote itself: `data: <error JSON>\n\n` with one of its stream codes.
fn is_own_error_event(rest: &[u8]) -> bool {
    let Some(json) = rest
        .strip_prefix(b"data: ")
        .and_then(|r| r.strip_suffix(b"\n\n"))
    else {
        return false;
    };
    let Ok(value) = serde_json::from_slice::<Value>(json) else {
        return false;
    };
    !json.contains(&b'\n')
        && value
            .pointer("/error/code")
            .and_then(Value::as_str)
            .is_some_and(|code| STREAM_ERRORS.contains(&code))
}

fn check_stream(case: &Case<'_>, sent: &Sent) {
    let mode = EventMode::select(
        case.client,
        case.upstream,
        if case.wrap {
            StreamEnvelope::Wrap
        } else {
            StreamEnvelope::Bare
        },
    );
    let meant = case.meant();
    let events = upstream_events(meant);
    let mut out = &sent.bytes[..];
    // Where the matched events end in `meant`, and whether one finished or failed the answer.
    let mut consumed = 0;
    let mut finished = false;
    for (i, event) in events.into_iter().enumerate() {
        let raw = event.raw().clone();
        let (expected, kind) = applied(mode, case.upstream, event);
        if let Some(rest) = out.strip_prefix(&expected[..]) {
            out = rest;
        } else if let Some(cut) = raw.strip_suffix(b"\n").filter(|r| r.ends_with(b"\r")) {
            // The upstream's body ended between the `\r` and the `\n` of the blank line:
            // the `\r` alone already ended the event.
            let mut framer = SseFramer::new(usize::MAX);
            if i > 0 {
                framer.push(Bytes::from_static(b": \n\n"));
                let _ = framer.next_event();
            }
            framer.push(Bytes::copy_from_slice(cut));
            let Some(event) = framer.finish().expect("no cap") else {
                break;
            };
            let (expected, kind) = applied(mode, case.upstream, event);
            if let Some(rest) = out.strip_prefix(&expected[..]) {
                out = rest;
                consumed += cut.len();
                finished |= kind != EventKind::Normal;
            }
            break;
        } else {
            break;
        }
        consumed += raw.len();
        finished |= kind != EventKind::Normal;
    }
    let tail = &meant[consumed..];
    if out == DONE_EVENT {
        let tail = tail.trim_ascii_start();
        assert!(
            tail.starts_with(b"data: [DONE]") || tail.starts_with(b"data:[DONE]"),
            "[DONE] completed from the tail {tail:?}"
        );
    } else if out.is_empty() {
        if sent.clean && !finished {
            // A clean end without `[DONE]` or an upstream error: only when allowed, and never
            // after a partial event.
            assert!(!case.require_done, "no [DONE], yet no error event");
            let tail = if consumed == 0 {
                tail.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(tail)
            } else {
                tail
            };
            assert!(
                tail.iter().all(|&b| b == b'\r' || b == b'\n'),
                "the stream ended cleanly after a partial event {tail:?}"
            );
        }
    } else {
        assert!(
            is_own_error_event(out),
            "not the upstream's complete events then one error event: left over {:?} (of {:?})",
            String::from_utf8_lossy(out),
            String::from_utf8_lossy(&sent.bytes)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(case) = case(data) else {
        return;
    };
    let Some(sent) = runtime().block_on(exchange(&case)) else {
        return;
    };
    check_length(&case, &sent);
    check_status(&case, &sent);
    if sent.stream {
        assert!(
            sent.clean,
            "an event stream body never fails: it ends with an event"
        );
        check_stream(&case, &sent);
    }
});
