//! `SseFramer` on arbitrary bytes, cut into arbitrary chunks.
//!
//! Input layout (so that a plain `.sse` file with a short header is a useful seed):
//! - byte 0, flags: bits 0–3 = how many chunk-size bytes follow (0: one chunk), bit 4 = a
//!   cap byte follows, bit 5 = push every chunk before draining (default: drain after each
//!   push, as the proxy does);
//! - the cap byte, when flagged: `max_event_bytes` (0–255);
//! - the chunk sizes, cycled through (0 pushes an empty chunk, then one byte);
//! - the rest: the byte stream.
//!
//! Checked: no panic; without a cap, pass-through is byte-identical up to the end of the last
//! complete event: the raws of all events (`finish()` drained to `Ok(None)`) are the stream
//! up to there, then `data: [DONE]\n\n` exactly when the rest is a lone `[DONE]` line; the
//! rest (the unterminated tail) holds no complete event, is never emitted, and is reported by
//! `discarded_partial()` exactly when it holds more than line endings (and the stream's
//! BOM); the events and that report do not depend on the chunking or the drain pattern; with
//! a cap the outcome is the uncapped events up to the first one longer than the cap, then
//! `EventTooLarge` (the same however the stream is cut); every event ends with a blank line
//! and has a non-empty line; `data()` and `is_comment()` agree with a naive reading of the
//! WHATWG rules.

#![no_main]

use bytes::Bytes;
use envelope_proxy::translate::sse::framer::{FramerError, SseEvent, SseFramer};
use libfuzzer_sys::fuzz_target;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// An event, and whether it came from `finish()`.
type Outcome = Result<(SseEvent, bool), FramerError>;

/// What `finish()` makes of a lone `[DONE]` line.
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

struct Plan<'a> {
    sizes: &'a [u8],
    cap: Option<usize>,
    drain_each: bool,
    stream: &'a [u8],
}

fn plan(data: &[u8]) -> Plan<'_> {
    let Some((&flags, mut rest)) = data.split_first() else {
        return Plan {
            sizes: &[],
            cap: None,
            drain_each: true,
            stream: &[],
        };
    };
    let mut cap = None;
    if flags & 0x10 != 0 {
        if let Some((&c, tail)) = rest.split_first() {
            cap = Some(usize::from(c));
            rest = tail;
        }
    }
    let (sizes, stream) = rest.split_at(usize::from(flags & 0x0f).min(rest.len()));
    Plan {
        sizes,
        cap,
        drain_each: flags & 0x20 == 0,
        stream,
    }
}

/// `stream` cut by `sizes` (cycled); `Bytes::new()` marks an empty push.
fn chunks(stream: &Bytes, sizes: &[u8]) -> Vec<Bytes> {
    if sizes.is_empty() {
        return vec![stream.clone()];
    }
    let mut out = Vec::new();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at == stream.len() {
            break;
        }
        let size = if size == 0 {
            out.push(Bytes::new());
            1
        } else {
            usize::from(size)
        };
        let end = (at + size).min(stream.len());
        out.push(stream.slice(at..end));
        at = end;
    }
    out
}

/// Feeds `chunks`, draining after each push or only at the end, then finishes: the outcomes,
/// and whether `finish()` discarded a partial event.
fn run(chunks: &[Bytes], limit: usize, drain_each: bool) -> (Vec<Outcome>, bool) {
    let mut framer = SseFramer::new(limit);
    let mut out = Vec::new();
    let drain = |framer: &mut SseFramer, out: &mut Vec<Outcome>| loop {
        match framer.next_event() {
            Ok(Some(event)) => out.push(Ok((event, false))),
            Ok(None) => return true,
            Err(e) => {
                out.push(Err(e));
                return false;
            }
        }
    };
    for chunk in chunks {
        framer.push(chunk.clone());
        if drain_each && !drain(&mut framer, &mut out) {
            return (check_spent(framer, out), false);
        }
    }
    if !drain(&mut framer, &mut out) {
        return (check_spent(framer, out), false);
    }
    loop {
        match framer.finish() {
            Ok(Some(event)) => out.push(Ok((event, true))),
            Ok(None) => break,
            Err(e) => {
                out.push(Err(e));
                return (check_spent(framer, out), false);
            }
        }
    }
    assert!(
        !framer.has_partial(),
        "finish() drained, yet a partial event is left"
    );
    assert_eq!(framer.next_event(), Ok(None));
    assert_eq!(framer.finish(), Ok(None));
    (out, framer.discarded_partial())
}

/// After an error the framer is spent: it keeps returning the error and holds nothing.
fn check_spent(mut framer: SseFramer, out: Vec<Outcome>) -> Vec<Outcome> {
    let Some(Err(err)) = out.last() else {
        unreachable!("check_spent is called right after an error")
    };
    framer.push(Bytes::from_static(b"data: x\n\n"));
    assert!(!framer.has_partial());
    assert_eq!(framer.next_event().as_ref(), Err(err));
    assert_eq!(framer.finish().as_ref(), Err(err));
    out
}

/// The lines of `buf` without their endings (CRLF, LF or a lone CR).
fn lines(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let len = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        out.push(&rest[..len]);
        rest = &rest[len..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.get(1..))
            .unwrap_or_default();
    }
    out
}

/// A naive reading of the `data` field: every `data` line's value, joined with `\n`.
fn reference_data(body: &[u8]) -> Option<Vec<u8>> {
    let values: Vec<&[u8]> = lines(body)
        .into_iter()
        .filter_map(|line| {
            if line == b"data" {
                Some(&b""[..])
            } else {
                let value = line.strip_prefix(b"data:")?;
                Some(value.strip_prefix(b" ").unwrap_or(value))
            }
        })
        .collect();
    (!values.is_empty()).then(|| values.join(&b"\n"[..]))
}

/// `raw` ends with an empty line: a line ending directly after another line ending.
fn ends_with_blank_line(raw: &[u8]) -> bool {
    let body = raw
        .strip_suffix(b"\r\n")
        .or_else(|| raw.strip_suffix(b"\n"))
        .or_else(|| raw.strip_suffix(b"\r"));
    matches!(body, Some(body) if body.ends_with(b"\n") || body.ends_with(b"\r"))
}

/// `completed`: the `[DONE]` tail completed by `finish()` (whose raw is [`DONE_EVENT`], not
/// the stream's bytes, so it carries no BOM).
fn check_event(event: &SseEvent, first: bool, completed: bool, stream_has_bom: bool) {
    let raw = event.raw();
    assert!(!raw.is_empty(), "empty event");
    let body = if first && stream_has_bom && !completed {
        &raw[BOM.len().min(raw.len())..]
    } else {
        &raw[..]
    };
    assert!(
        ends_with_blank_line(raw),
        "event without a blank line: {raw:?}"
    );
    assert!(
        body.iter().any(|&b| b != b'\r' && b != b'\n'),
        "event without a non-empty line: {raw:?}"
    );
    let expected = reference_data(body);
    assert_eq!(
        event.data().map(|d| &d[..]),
        expected.as_deref(),
        "data of {raw:?}"
    );
    assert_eq!(event.is_done(), expected.as_deref() == Some(b"[DONE]"));
    let non_empty: Vec<&[u8]> = lines(body).into_iter().filter(|l| !l.is_empty()).collect();
    let comment = !non_empty.is_empty() && non_empty.iter().all(|l| l.starts_with(b":"));
    assert_eq!(event.is_comment(), comment, "is_comment of {raw:?}");
}

/// What a cap must do to the uncapped events: stop at the first one longer than `limit`.
/// The cap counts the bytes received, so the completed `[DONE]` counts as its tail's length
/// (`tail.0` is its index), and a discarded tail longer than the cap fails too.
fn capped(uncapped: &[Outcome], limit: usize, tail: (Option<usize>, usize)) -> Vec<Outcome> {
    let too_large = Err(FramerError::EventTooLarge { limit });
    let mut out = Vec::new();
    for (i, outcome) in uncapped.iter().enumerate() {
        let received = match outcome {
            Ok(_) if tail.0 == Some(i) => tail.1,
            Ok((event, _)) => event.raw().len(),
            Err(_) => 0,
        };
        if received > limit {
            out.push(too_large);
            return out;
        }
        out.push(outcome.clone());
    }
    if tail.0.is_none() && tail.1 > limit {
        out.push(too_large);
    }
    out
}

/// The pass-through invariant for the events of `stream` (no cap): returns the index of the
/// `[DONE]` event `finish()` completed, if it did, and the length of the tail (the bytes
/// after the last complete event).
fn check_pass_through(stream: &[u8], whole: &[Outcome], discarded: bool) -> (Option<usize>, usize) {
    let raws: Vec<&[u8]> = whole
        .iter()
        .map(|o| &o.as_ref().expect("no cap, so no error").0.raw()[..])
        .collect();
    let passed = raws.concat();
    // Either every raw is the stream's bytes, or the last one is the completed `[DONE]`.
    let (complete, completed) = if stream.starts_with(&passed) {
        (passed.len(), None)
    } else {
        assert_eq!(
            raws.last().copied(),
            Some(DONE_EVENT),
            "not the stream's bytes"
        );
        (passed.len() - DONE_EVENT.len(), Some(raws.len() - 1))
    };
    assert_eq!(
        &stream[..complete],
        &passed[..complete],
        "pass-through is not byte-identical"
    );
    let tail_len = stream.len() - complete;
    let mut tail = &stream[complete..];
    if complete == 0 {
        tail = tail.strip_prefix(BOM).unwrap_or(tail);
    }
    // The tail, read naively: no complete event in it (no empty line after a non-empty
    // one; a lone `\r` at its very end counts as a line ending, as at the end of a stream).
    let mut lines = Vec::new();
    let mut rest = tail;
    while !rest.is_empty() {
        let len = rest.iter().position(|&b| b == b'\r' || b == b'\n');
        let (line, after) = rest.split_at(len.unwrap_or(rest.len()));
        lines.push((line, len.is_some()));
        rest = after
            .strip_prefix(b"\r\n")
            .or_else(|| after.get(1..))
            .unwrap_or_default();
    }
    let first_content = lines.iter().position(|(line, _)| !line.is_empty());
    assert!(
        !first_content.is_some_and(|at| lines[at..]
            .iter()
            .any(|(line, ended)| line.is_empty() && *ended)),
        "a complete event was left in the tail {tail:?}"
    );
    let content: Vec<&[u8]> = lines
        .iter()
        .map(|(l, _)| *l)
        .filter(|l| !l.is_empty())
        .collect();
    let lone_done = matches!(content[..], [b"data: [DONE]" | b"data:[DONE]"]);
    assert_eq!(completed.is_some(), lone_done, "[DONE] tail {tail:?}");
    assert_eq!(
        discarded,
        !lone_done && !content.is_empty(),
        "discarded tail {tail:?}"
    );
    (completed, tail_len)
}

fn events_only(outcomes: &[Outcome]) -> Vec<Result<&SseEvent, &FramerError>> {
    outcomes
        .iter()
        .map(|o| o.as_ref().map(|(event, _)| event))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let plan = plan(data);
    let stream = Bytes::copy_from_slice(plan.stream);
    let chunks = chunks(&stream, plan.sizes);

    let (whole, discarded) = run(std::slice::from_ref(&stream), usize::MAX, true);
    let tail = check_pass_through(plan.stream, &whole, discarded);
    let completed = tail.0;
    let stream_has_bom = stream.starts_with(BOM);
    for (i, outcome) in whole.iter().enumerate() {
        let (event, from_finish) = outcome.as_ref().expect("no cap, so no error");
        check_event(event, i == 0, completed == Some(i), stream_has_bom);
        // Only the last event can come from finish().
        assert!(!from_finish || i + 1 == whole.len());
    }

    // `from_finish` may differ with the drain pattern, so only the events are compared.
    let (chunked, chunked_discarded) = run(&chunks, usize::MAX, plan.drain_each);
    assert_eq!(
        events_only(&chunked),
        events_only(&whole),
        "chunking changed the events"
    );
    assert_eq!(chunked_discarded, discarded, "chunking changed the tail");

    if let Some(limit) = plan.cap {
        let expected = capped(&whole, limit, tail);
        let (capped_whole, _) = run(std::slice::from_ref(&stream), limit, true);
        assert_eq!(
            events_only(&capped_whole),
            events_only(&expected),
            "cap {limit}"
        );
        let (capped_chunked, _) = run(&chunks, limit, plan.drain_each);
        assert_eq!(
            events_only(&capped_chunked),
            events_only(&expected),
            "cap {limit}, chunked"
        );
    }
});
