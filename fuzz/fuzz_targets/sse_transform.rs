//! `EventMode::apply` on every event of an arbitrary byte stream (the whole input is the
//! stream, so any `.sse` fixture is a seed as it is), in every mode, for both upstream dialects.
//!
//! Checked: no panic; what `apply` queues for any event (from `next_event()` or `finish()`,
//! which hands out only whole events too) is one whole event:
//! it ends with a blank line and, read back by a framer, is exactly one event with nothing
//! left over; an event `apply` rewrote (not passed through) carries valid JSON as its data,
//! and for an unwrapped success envelope that data is the envelope's payload byte for byte,
//! and it keeps every other line (`event:`, `id:`, `retry:`, comments, unknown fields) with
//! the same content, in the same order; `[DONE]` is reported as `Done` and passed through.

#![no_main]

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use envelope_proxy::translate::envelope::{classify, is_json, Classified, Verdict};
use envelope_proxy::translate::sse::framer::{SseEvent, SseFramer};
use envelope_proxy::translate::sse::transform::{EventKind, EventMode};
use envelope_proxy::translate::template::Envelopes;
use envelope_proxy::Dialect;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

const MODES: [EventMode; 3] = [EventMode::Passthru, EventMode::Unwrap, EventMode::Wrap];
const UPSTREAMS: [Dialect; 2] = [Dialect::Bare, Dialect::Envelope];

/// A comment event put around the output when reading it back: in front, so that a BOM at
/// the start of the output is content (as it was upstream, unless the event came first);
/// behind, so that a lone `\r` ending the output is settled as a line ending (upstream, the
/// byte after it was not `\n`, or the framer would have made it part of the event).
const MARK: &[u8] = b": mark\n\n";

/// `raw` ends with an empty line: a line ending directly after another line ending.
fn ends_with_blank_line(raw: &[u8]) -> bool {
    let body = raw
        .strip_suffix(b"\r\n")
        .or_else(|| raw.strip_suffix(b"\n"))
        .or_else(|| raw.strip_suffix(b"\r"));
    matches!(body, Some(body) if body.ends_with(b"\n") || body.ends_with(b"\r"))
}

/// The events a client's framer reads from `output` between the marks; panics unless the
/// marks come out as events of their own and nothing is left over.
/// `stream_start`: the output stands at the start of the stream, where a BOM is a BOM.
fn read_back(output: &[u8], stream_start: bool) -> Vec<SseEvent> {
    let mut framer = SseFramer::new(usize::MAX);
    if !stream_start {
        framer.push(Bytes::from_static(MARK));
    }
    framer.push(Bytes::copy_from_slice(output));
    framer.push(Bytes::from_static(MARK));
    let mut events = Vec::new();
    while let Some(event) = framer.next_event().expect("no cap") {
        events.push(event);
    }
    assert_eq!(framer.finish(), Ok(None), "output {output:?} leaves a tail");
    assert!(
        events.last().is_some_and(|e| e.raw() == MARK),
        "output {output:?} runs into the next event: {events:?}"
    );
    events.pop();
    if !stream_start {
        assert!(
            events.first().is_some_and(|e| e.raw() == MARK),
            "output {output:?} runs into the previous event: {events:?}"
        );
        events.remove(0);
    }
    events
}

/// The payload an unwrapping client should see for `data`, when it is a success envelope.
fn unwrapped_payload(data: &Bytes) -> Option<Bytes> {
    match classify(data) {
        Classified::Envelope(envelope) => match envelope.verdict(StatusCode::OK) {
            Verdict::Success(raw) => Some(Bytes::copy_from_slice(raw.get().as_bytes())),
            Verdict::Error(_) => None,
        },
        _ => None,
    }
}

/// Says which case failed; formatted only when an assertion fails.
struct Context<'a>(EventMode, Dialect, &'a Bytes);

impl fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Context(mode, upstream, raw) = self;
        write!(f, "{mode:?}, {upstream:?} upstream, event {raw:?}")
    }
}

/// The event's non-empty lines other than `data` lines, read naively (the stream's BOM, if
/// `bom`, left out).
fn other_lines(raw: &[u8], bom: bool) -> Vec<&[u8]> {
    let mut rest = if bom {
        raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
    } else {
        raw
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let line = &rest[..len];
        if !line.is_empty() && line != b"data" && !line.starts_with(b"data:") {
            out.push(line);
        }
        rest = &rest[len..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.get(1..))
            .unwrap_or_default();
    }
    out
}

/// `first`: the event came first in the stream (so a BOM it starts with is the stream's BOM).
fn check(event: &SseEvent, first: bool, mode: EventMode, upstream: Dialect) {
    let mut out = VecDeque::new();
    let kind = mode.apply(
        event.clone(),
        upstream,
        Envelopes::standard(),
        &mut out,
        &mut envelope_proxy::translate::sse::transform::StreamStats::default(),
        &mut envelope_proxy::translate::json_check::EventChecks::default(),
    );
    let output: Vec<u8> = out.iter().flat_map(|piece| piece.iter().copied()).collect();
    let context = Context(mode, upstream, event.raw());

    if event.is_done() {
        assert_eq!(kind, EventKind::Done, "{context}");
    }
    let passed_through = output == event.raw()[..];
    if kind == EventKind::Done || event.data().is_none() || mode == EventMode::Passthru {
        assert!(passed_through, "{context}: rewritten to {output:?}");
    }

    assert!(
        ends_with_blank_line(&output),
        "{context}: output does not end with a blank line: {output:?}"
    );
    let events = read_back(&output, first && passed_through);
    assert!(
        events.len() == 1,
        "{context}: output is not one whole event: {output:?} reads as {events:?}"
    );
    if passed_through {
        return;
    }
    assert_eq!(
        other_lines(events[0].raw(), false),
        other_lines(event.raw(), first),
        "{context}: rewritten event lost or moved its other lines: {output:?}"
    );
    let data = events[0].data().cloned().unwrap_or_default();
    assert!(
        is_json(&data),
        "{context}: rewritten event's data is not JSON: {output:?} has data {data:?}"
    );
    if mode == EventMode::Unwrap && kind == EventKind::Normal {
        let payload = event.data().and_then(unwrapped_payload);
        assert_eq!(
            Some(data),
            payload,
            "{context}: unwrapped data is not the payload"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut framer = SseFramer::new(usize::MAX);
    framer.push(Bytes::copy_from_slice(data));
    let mut events = Vec::new();
    while let Some(event) = framer.next_event().expect("no cap") {
        events.push(event);
    }
    while let Some(event) = framer.finish().expect("no cap") {
        events.push(event);
    }
    for (i, event) in events.iter().enumerate() {
        for mode in MODES {
            for upstream in UPSTREAMS {
                check(event, i == 0, mode, upstream);
            }
        }
    }
});
