//! Cuts an upstream Server-Sent Events byte stream into whole events without copying.
//!
//! This module owns event framing only: finding where one SSE event ends (per the WHATWG
//! rules: a line ends at CRLF, LF or a lone CR, an event ends at an empty line) and reading
//! the `data` field of each event. Interpreting the data (JSON, `[DONE]` handling policy)
//! belongs to the callers.
//!
//! At the end of the stream, an event that never got its blank line is discarded, as the
//! WHATWG rules say ("if the file ends in the middle of an event, before the final empty
//! line, the incomplete event is not dispatched"), with one exception: a lone `data: [DONE]`
//! line, which comes out completed as `data: [DONE]\n\n` (see [`SseFramer::finish`]).
//!
//! Invariants:
//! - Pass-through is byte-identical up to the end of the last complete event: the raws of
//!   all emitted events concatenate to exactly the bytes pushed up to there, followed by
//!   `data: [DONE]\n\n` when the rest is a lone `[DONE]` line; any other rest (the
//!   unterminated tail) is never emitted, and [`SseFramer::discarded_partial`] says whether
//!   it held anything but line endings (and the stream's BOM).
//! - Every emitted event is whole: its raw ends with the blank line that ended it upstream.
//! - Chunking is invisible: any split of the same stream yields the same events. A `\r` at
//!   the end of a chunk is not treated as a complete line ending until the next byte shows
//!   whether it is the first half of a CRLF.
//! - Every byte is scanned once and copied at most once. Events lying inside one chunk are
//!   `split_to` slices of it; only an event straddling chunks is assembled in a `BytesMut`.
//!   An event of one non-empty line (the usual `data:` line) is read where the scanner saw
//!   that line; only other events have their lines looked for again.
//! - Memory is bounded: the assembly buffer never holds more than `max_event_bytes`, so the
//!   framer holds about the cap plus whatever chunks were pushed but not yet drained.

use bytes::{Buf, Bytes, BytesMut};

use crate::translate::byte_search;
use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One complete SSE event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    raw: Bytes,
    /// Parsed once at construction so `data()` can hand out a reference.
    data: Option<Bytes>,
    comment: bool,
    /// Where the event's lines start in `raw`: past the stream's BOM, if it carries one.
    start: usize,
    /// With exactly one `data` line: where that line starts and where its value ends in `raw`
    /// (what [`SseEvent::around_data`] cuts at, found while parsing).
    one_data_line: Option<(usize, usize)>,
}

/// The one unterminated tail that is not discarded, completed.
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

impl SseEvent {
    /// The event's bytes exactly as received, including its terminating blank line (only
    /// the `[DONE]` tail completed by `finish()` is `data: [DONE]\n\n` whatever its bytes
    /// were). Extra blank lines before an event's first line are part of that event's raw,
    /// so every event emitted by `next_event()` has at least one non-empty line.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub(crate) fn into_raw(self) -> Bytes {
        self.raw
    }

    /// The value of the `data` field. One `data:` line -> a zero-copy `Bytes` slice of `raw`
    /// with "data:", at most one following space, and the line ending removed. Several
    /// `data:` lines -> their values joined with "\n" (one allocation; rare). `None` when the
    /// event has no data line (comment-only keep-alives such as ": ping", or only event:/id: lines).
    pub fn data(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }

    /// True when the data is exactly `[DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.as_deref() == Some(b"[DONE]".as_slice())
    }

    /// True when the event consists only of comment lines (lines starting with ':').
    pub fn is_comment(&self) -> bool {
        self.comment
    }

    /// `skip_bom` is set only for the stream's first event, and only when the stream really
    /// began with a BOM: a BOM anywhere else is ordinary content.
    fn parse(raw: Bytes, skip_bom: bool) -> Self {
        let start = Self::lines_start(&raw, skip_bom);
        // One pass over the lines finds what is a comment and where the data is; only data
        // over several lines (rare) is read again, to join it.
        let body = raw.get(start..).unwrap_or_default();
        let (mut content, mut comment) = (false, true);
        let (mut first, mut data_lines) = (None, 0usize);
        for (at, line) in lines(body) {
            if line.is_empty() {
                continue;
            }
            content = true;
            comment &= line.starts_with(b":");
            if let Some(value) = data_value(line) {
                data_lines += 1;
                first.get_or_insert((at, at + value.start..at + value.end));
            }
        }
        let (data, one_data_line) = match (first, data_lines) {
            (Some((at, value)), 1) => (
                Some(raw.slice(start + value.start..start + value.end)),
                Some((start + at, start + value.end)),
            ),
            (Some(_), _) => (data_field(&raw, start), None),
            (None, _) => (None, None),
        };
        SseEvent {
            raw,
            data,
            comment: content && comment,
            start,
            one_data_line,
        }
    }

    /// [`SseEvent::parse`] for an event whose only non-empty line is `raw[line]`, as the
    /// framer's scanner saw it go by: the lines are not looked for again. (Most events are
    /// one `data:` line and the blank line after it.)
    fn parse_one_line(raw: Bytes, skip_bom: bool, line: Range<usize>) -> Self {
        let start = Self::lines_start(&raw, skip_bom);
        let text = raw.get(line.clone()).unwrap_or_default();
        let comment = text.starts_with(b":");
        let (data, one_data_line) = match data_value(text) {
            Some(value) => (
                Some(raw.slice(line.start + value.start..line.start + value.end)),
                Some((line.start, line.start + value.end)),
            ),
            None => (None, None),
        };
        let event = SseEvent {
            raw,
            data,
            comment,
            start,
            one_data_line,
        };
        debug_assert_eq!(
            event,
            SseEvent::parse(event.raw.clone(), skip_bom),
            "the scanner's line {line:?} misread the event"
        );
        event
    }

    /// Where the event's lines start in `raw`: past the stream's BOM when it has one.
    fn lines_start(raw: &[u8], skip_bom: bool) -> usize {
        if skip_bom && raw.starts_with(BOM) {
            BOM.len()
        } else {
            0
        }
    }

    /// True when the data came over several `data:` lines, joined with `\n`: a single line's
    /// value holds no line break.
    pub(crate) fn data_has_line_breaks(&self) -> bool {
        self.data.is_some() && self.one_data_line.is_none()
    }

    /// True for an event whose only non-empty line is a `data` line with the value `[DONE]`.
    fn is_lone_done(&self) -> bool {
        let body = self.raw.get(self.start..).unwrap_or_default();
        self.is_done() && lines(body).filter(|(_, line)| !line.is_empty()).count() == 1
    }

    /// True for the usual event: its first line is its one `data` line, and the blank line
    /// follows it right away (`\n\n`). [`SseEvent::around_data`] would cut it into nothing
    /// before the data and `\n\n` after it; this says so without cutting.
    pub(crate) fn is_lone_data_line(&self) -> bool {
        matches!(self.one_data_line, Some((line, value_end))
            if line == self.start && self.raw.get(value_end..) == Some(&b"\n\n"[..]))
    }

    /// The event around its `data` field, for rewriting the data while keeping every other
    /// line (`event:`, `id:`, `retry:`, comments, unknown fields) in order: `(before, after)`
    /// such that `before + "data: " + value + after` is this event with `value` as its data
    /// (`value` without line breaks; see `transform::data_lines` for values with some).
    /// `None` when the event has no `data` line.
    ///
    /// - `before`: the lines ahead of the first `data` line, as received (the stream's BOM
    ///   left out: the rewritten event need not be the first bytes the client gets);
    /// - `after`: with one `data` line (the usual case), everything after that line's value,
    ///   as received: its line ending, the lines after it, the blank line ending the event.
    ///   Both are slices of `raw`, nothing is copied. With several `data` lines (rare), the
    ///   others are left out, which needs a copy; its lines then all end with `\n`, because
    ///   removing a line could otherwise join a lone `\r` and a `\n` into one CRLF and so
    ///   lose the event's blank line.
    pub(crate) fn around_data(&self) -> Option<(Bytes, Bytes)> {
        if let Some((line, value_end)) = self.one_data_line {
            return Some((
                self.raw.slice(self.start..line),
                self.raw.slice(value_end..),
            ));
        }
        let body = self.raw.get(self.start..).unwrap_or_default();
        let mut data_lines = lines(body).filter(|(_, line)| data_value(line).is_some());
        let (at, line) = data_lines.next()?;
        let value_end = self.start + at + line.len();
        let before = self.raw.slice(self.start..self.start + at);
        if data_lines.next().is_none() {
            return Some((before, self.raw.slice(value_end..)));
        }
        let mut after = Vec::with_capacity(self.raw.len() - value_end + 1);
        after.push(b'\n');
        // The lines after the first data line up to the blank line (which ends the event,
        // so no other line is empty there).
        let rest = lines(body)
            .skip_while(|&(offset, _)| offset <= at)
            .map(|(_, line)| line)
            .take_while(|line| !line.is_empty())
            .filter(|line| data_value(line).is_none());
        for line in rest {
            after.extend_from_slice(line);
            after.push(b'\n');
        }
        after.push(b'\n');
        Some((before, Bytes::from(after)))
    }
}

/// The joined `data` values of the event in `raw[start..]`.
fn data_field(raw: &Bytes, start: usize) -> Option<Bytes> {
    let body = raw.get(start..).unwrap_or_default();
    let mut values =
        lines(body).filter_map(|(at, line)| data_value(line).map(|v| at + v.start..at + v.end));
    let first = values.next()?;
    if values.clone().next().is_none() {
        return Some(raw.slice(start + first.start..start + first.end));
    }
    // Multi-line data is rare; sizing it with a second pass instead of collecting ranges
    // keeps this to exactly one allocation.
    let len = values.clone().fold(first.len(), |n, v| n + 1 + v.len());
    let mut joined = BytesMut::with_capacity(len);
    joined.extend_from_slice(&body[first]);
    for value in values {
        joined.extend_from_slice(b"\n");
        joined.extend_from_slice(&body[value]);
    }
    Some(joined.freeze())
}

/// The lines of `buf` as (offset, content without its ending). CRLF counts as one ending.
fn lines(buf: &[u8]) -> impl Iterator<Item = (usize, &[u8])> + Clone {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(pos..).filter(|rest| !rest.is_empty())?;
        let len = byte_search::line_end(rest).unwrap_or(rest.len());
        let (line, tail) = rest.split_at(len);
        let ending = match tail {
            [b'\r', b'\n', ..] => 2,
            [_, ..] => 1,
            [] => 0,
        };
        let start = pos;
        pos += len + ending;
        Some((start, line))
    })
}

/// Where the value sits in `line` if it is a `data` field line. A bare `data` (no colon) is
/// the field with an empty value; `dataset: x` is a different field.
fn data_value(line: &[u8]) -> Option<Range<usize>> {
    let rest = line.strip_prefix(b"data")?;
    let start = match rest {
        [] => line.len(),
        [b':', b' ', ..] => 6,
        [b':', ..] => 5,
        _ => return None,
    };
    Some(start..line.len())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramerError {
    EventTooLarge { limit: usize },
}

impl fmt::Display for FramerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramerError::EventTooLarge { limit } => {
                write!(f, "SSE event exceeds the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for FramerError {}

/// Line/event state carried across chunks, so no byte is ever looked at twice.
#[derive(Debug)]
struct Scanner {
    /// At the start of a line: a line ending here ends an empty line.
    at_line_start: bool,
    /// The current event has a non-empty line, so an empty line now terminates it
    /// (empty lines before that are kept as a prefix rather than emitted as empty events).
    seen_content: bool,
    /// The previous byte was `\r`: an `\n` now completes the same CRLF line ending.
    after_cr: bool,
    /// That `\r` ended the event's blank line; where the event ends depends on the next byte.
    end_after_cr: bool,
    /// `Some(n)`: still at the very start of the stream with `n` BOM bytes matched.
    bom_matched: Option<usize>,
    /// The current event begins with the stream's BOM, which parsing must skip.
    event_has_bom: bool,
    /// Non-empty lines the current event has begun (saturating).
    lines: u8,
    /// Where its first non-empty line starts and ends, counted from the event's first byte;
    /// the end is known once a line ending followed.
    first_line: Range<usize>,
    /// The event that ended last had this one non-empty line (see [`Scanner::take_one_line`]).
    ended_one_line: Option<Range<usize>>,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            at_line_start: true,
            seen_content: false,
            after_cr: false,
            end_after_cr: false,
            bom_matched: Some(0),
            event_has_bom: false,
            lines: 0,
            first_line: 0..0,
            ended_one_line: None,
        }
    }

    fn start_event(&mut self) {
        // Past the first event the stream cannot start with a BOM any more.
        self.bom_matched = None;
        self.at_line_start = true;
        self.seen_content = false;
        self.after_cr = false;
        self.end_after_cr = false;
        self.ended_one_line = (self.lines == 1).then(|| self.first_line.clone());
        self.lines = 0;
    }

    /// A non-empty line begins at `at` (from the event's first byte).
    fn line_starts(&mut self, at: usize) {
        self.at_line_start = false;
        self.seen_content = true;
        if self.lines == 0 {
            self.first_line = at..at;
        }
        self.lines = self.lines.saturating_add(1);
    }

    /// Where the one non-empty line of the event that just ended lies in it, when it had
    /// exactly one.
    fn take_one_line(&mut self) -> Option<Range<usize>> {
        self.ended_one_line.take()
    }

    /// Consumes `buf` up to the end of the current event, returning that end's offset, or
    /// `None` when all of `buf` belongs to the still unfinished event. `base`: how many of
    /// the event's bytes came before `buf`.
    fn scan(&mut self, buf: &[u8], base: usize) -> Option<usize> {
        let mut i = 0;
        while let Some(&b) = buf.get(i) {
            // Fast path: ordinary content runs to the next line ending, found with memchr
            // instead of byte by byte; only line endings (and a stream's BOM) need the
            // state machine below.
            if !self.after_cr && self.bom_matched.is_none() && b != b'\r' && b != b'\n' {
                if self.at_line_start {
                    self.line_starts(base + i);
                }
                i = byte_search::line_end(&buf[i..]).map_or(buf.len(), |n| i + n);
                continue;
            }
            if let Some(end) = self.step(i, b, base) {
                return Some(end);
            }
            i += 1;
        }
        None
    }

    /// One byte of the state machine at offset `i` of a buffer that starts `base` bytes into
    /// the event; `Some(end)` when the event ends.
    fn step(&mut self, i: usize, b: u8, base: usize) -> Option<usize> {
        if std::mem::take(&mut self.after_cr) {
            let end = if b == b'\n' { i + 1 } else { i };
            if std::mem::take(&mut self.end_after_cr) {
                self.start_event();
                return Some(end);
            }
            if b == b'\n' {
                return None;
            }
        }
        if let Some(n) = self.bom_matched {
            if BOM.get(n) == Some(&b) {
                self.bom_matched = (n + 1 < BOM.len()).then_some(n + 1);
                self.event_has_bom = n + 1 == BOM.len();
                return None;
            }
            self.bom_matched = None;
            if n > 0 {
                // A broken BOM prefix is ordinary content of the first line, which began
                // with it.
                self.line_starts((base + i).saturating_sub(n));
            }
        }
        match b {
            b'\r' | b'\n' => {
                if !self.at_line_start && self.lines == 1 {
                    // The event's first non-empty line ends here.
                    self.first_line.end = base + i;
                }
                let blank_ends_event = self.at_line_start && self.seen_content;
                self.at_line_start = true;
                self.after_cr = b == b'\r';
                if blank_ends_event {
                    if self.after_cr {
                        self.end_after_cr = true;
                    } else {
                        self.start_event();
                        return Some(i + 1);
                    }
                }
            }
            _ if self.at_line_start => self.line_starts(base + i),
            _ => {}
        }
        None
    }
}

/// Splits a stream of chunks into [`SseEvent`]s; see the module docs for the invariants.
///
/// `queue` holds pushed chunks (never empty ones) whose bytes have not been scanned yet;
/// `pending` holds the already scanned start of an event that straddles chunks.
#[derive(Debug)]
pub struct SseFramer {
    limit: usize,
    queue: VecDeque<Bytes>,
    pending: BytesMut,
    scanner: Scanner,
    failed: Option<FramerError>,
    /// `finish()` discarded an unterminated event.
    discarded_partial: bool,
}

impl SseFramer {
    /// `max_event_bytes`: cap on one event's size (bytes of raw, including line endings).
    pub fn new(max_event_bytes: usize) -> Self {
        SseFramer {
            limit: max_event_bytes,
            queue: VecDeque::new(),
            pending: BytesMut::new(),
            scanner: Scanner::new(),
            failed: None,
            discarded_partial: false,
        }
    }

    /// Hand the framer the next chunk of the byte stream. Cheap: stores the chunk, copies nothing.
    /// Memory stays bounded only if the caller drains `next_event()` between pushes.
    pub fn push(&mut self, chunk: Bytes) {
        if self.failed.is_none() && !chunk.is_empty() {
            self.queue.push_back(chunk);
        }
    }

    /// The next complete event, `Ok(None)` when more input is needed, or an error when the
    /// event being assembled exceeds the cap (after an error the framer is spent: further
    /// calls keep returning the error, and it holds no buffers any more).
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, FramerError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        while let Some(front) = self.queue.front_mut() {
            let budget = self.limit.saturating_sub(self.pending.len());
            // One byte past the budget may still be scanned: after a blank line's `\r` it
            // can end the event without becoming part of it.
            let window = front.len().min(budget.saturating_add(1));
            match self.scanner.scan(&front[..window], self.pending.len()) {
                Some(end) if end <= budget => {
                    let raw = if self.pending.is_empty() {
                        front.split_to(end)
                    } else {
                        // Only the bytes that finish the event are copied. `split` hands the
                        // buffer out without a copy; once the caller drops the event,
                        // `BytesMut`'s reserve reclaims that allocation for the next one.
                        self.pending.extend_from_slice(&front[..end]);
                        front.advance(end);
                        self.pending.split().freeze()
                    };
                    if front.is_empty() {
                        self.queue.pop_front();
                    }
                    let bom = std::mem::take(&mut self.scanner.event_has_bom);
                    return Ok(Some(match self.scanner.take_one_line() {
                        Some(line) => SseEvent::parse_one_line(raw, bom, line),
                        None => SseEvent::parse(raw, bom),
                    }));
                }
                None if window <= budget => {
                    self.pending.extend_from_slice(front);
                    self.queue.pop_front();
                }
                _ => return Err(self.fail()),
            }
        }
        Ok(None)
    }

    /// End of stream: the complete events still queued, one per call (so call until
    /// `Ok(None)`), then what the end of the stream makes of the rest:
    /// - a lone `\r` that ended a blank line (only the next byte could tell whether it was
    ///   half of a CRLF) completes its event, which comes out as received;
    /// - a lone `data: [DONE]` line (`data:[DONE]`, a line ending after it, or blank lines
    ///   before it too) comes out as the whole event `data: [DONE]\n\n`: the upstream said
    ///   it finished, only its blank line is missing;
    /// - anything else is discarded, never emitted: an event without its blank line may be
    ///   cut anywhere, even inside a JSON string. [`Self::discarded_partial`] then says
    ///   whether it held more than line endings.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, FramerError> {
        if let Some(event) = self.next_event()? {
            return Ok(Some(event));
        }
        if self.pending.is_empty() {
            return Ok(None);
        }
        let complete = self.scanner.end_after_cr;
        // The first bytes of a BOM that never completed are content too.
        let content = self.scanner.seen_content || self.scanner.bom_matched.is_some_and(|n| n > 0);
        let raw = self.pending.split().freeze();
        self.scanner.start_event();
        let bom = std::mem::take(&mut self.scanner.event_has_bom);
        let event = SseEvent::parse(raw, bom);
        if complete {
            return Ok(Some(event));
        }
        if event.is_lone_done() {
            return Ok(Some(SseEvent::parse(Bytes::from_static(DONE_EVENT), false)));
        }
        self.discarded_partial |= content;
        Ok(None)
    }

    /// True once `finish()` has discarded an unterminated event: the stream ended in the
    /// middle of an event (bytes other than line endings and the stream's BOM after the
    /// last complete event, and not a lone `[DONE]` line).
    pub fn discarded_partial(&self) -> bool {
        self.discarded_partial
    }

    /// True when a partial event is buffered (bytes received that are not yet part of an emitted event).
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty() || !self.queue.is_empty()
    }

    /// Spends the framer and drops its buffers, so an oversized stream pins no memory.
    fn fail(&mut self) -> FramerError {
        let err = FramerError::EventTooLarge { limit: self.limit };
        self.failed = Some(err.clone());
        self.queue = VecDeque::new();
        self.pending = BytesMut::new();
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Outcome = Result<(Bytes, Option<Bytes>), FramerError>;

    /// Feeds `chunks`, draining after every push as the proxy does, then finishes.
    fn run(chunks: &[&[u8]], limit: usize) -> Vec<Outcome> {
        run_full(chunks, limit).0
    }

    /// [`run`], and whether `finish()` discarded a partial event.
    fn run_full(chunks: &[&[u8]], limit: usize) -> (Vec<Outcome>, bool) {
        let mut framer = SseFramer::new(limit);
        let mut out = Vec::new();
        // `None` stands for the end of the stream.
        for chunk in chunks.iter().map(Some).chain([None]) {
            if let Some(chunk) = chunk {
                framer.push(Bytes::copy_from_slice(chunk));
            }
            loop {
                let next = if chunk.is_some() {
                    framer.next_event()
                } else {
                    framer.finish()
                };
                match next {
                    Ok(Some(e)) => out.push(Ok((e.raw().clone(), e.data().cloned()))),
                    Ok(None) => break,
                    Err(e) => return ([out, vec![Err(e)]].concat(), false),
                }
            }
        }
        (out, framer.discarded_partial())
    }

    fn ev(raw: &[u8], data: Option<&[u8]>) -> Outcome {
        Ok((
            Bytes::copy_from_slice(raw),
            data.map(Bytes::copy_from_slice),
        ))
    }

    fn within(inner: &[u8], outer: &Bytes) -> bool {
        let range = outer.as_ptr_range();
        range.start <= inner.as_ptr() && inner.as_ptr_range().end <= range.end
    }

    #[test]
    fn whole_events_are_slices_of_the_chunk() {
        let chunk = Bytes::from_static(b"data: a\n\ndata:b\r\n\r\n: ping\n\n");
        let mut framer = SseFramer::new(1024);
        framer.push(chunk.clone());
        let events: Vec<SseEvent> = std::iter::from_fn(|| framer.next_event().unwrap()).collect();
        for e in &events {
            assert!(within(e.raw(), &chunk) && e.data().is_none_or(|d| within(d, &chunk)));
        }
        let raws: Vec<&[u8]> = events.iter().map(|e| e.raw().as_ref()).collect();
        assert_eq!(
            raws,
            [&b"data: a\n\n"[..], b"data:b\r\n\r\n", b": ping\n\n"]
        );
        let data: Vec<_> = events
            .iter()
            .map(|e| e.data().map(|d| d.as_ref()))
            .collect();
        assert_eq!(data, [Some(&b"a"[..]), Some(b"b"), None]);
        assert!(events[2].is_comment() && !events[0].is_comment());
        assert!(!framer.has_partial());
        assert_eq!(framer.finish(), Ok(None));
    }

    #[test]
    fn event_straddling_chunks_is_assembled_then_slicing_resumes() {
        let mut framer = SseFramer::new(1024);
        framer.push(Bytes::from_static(b"data: hel"));
        assert_eq!(framer.next_event(), Ok(None));
        assert!(framer.has_partial());
        let second = Bytes::from_static(b"lo\n\ndata: x\n\n");
        framer.push(second.clone());
        let first = framer.next_event().unwrap().unwrap();
        assert_eq!(first.raw().as_ref(), b"data: hello\n\n");
        assert_eq!(first.data().unwrap().as_ref(), b"hello");
        let next = framer.next_event().unwrap().unwrap();
        assert_eq!(next.raw().as_ref(), b"data: x\n\n");
        assert!(within(next.raw(), &second) && !framer.has_partial());
    }

    #[test]
    fn trailing_cr_waits_for_the_next_byte() {
        let mut framer = SseFramer::new(1024);
        framer.push(Bytes::from_static(b"data: a\r\n\r"));
        // The blank line's `\r` may be the start of a CRLF: the event is not done yet.
        assert_eq!(framer.next_event(), Ok(None));
        framer.push(Bytes::from_static(b"\ndata: b\r\n\r\n"));
        let a = framer.next_event().unwrap().unwrap();
        assert_eq!(a.raw().as_ref(), b"data: a\r\n\r\n");

        // A line's `\r` at a chunk end followed by `\n` must not count as a blank line.
        let out = run(&[b"data: a\r", b"\ndata: b\r\n\r\n"], 1024);
        assert_eq!(out, [ev(b"data: a\r\ndata: b\r\n\r\n", Some(b"a\nb"))]);
        // Lone CRs: a blank line's `\r` is settled by the next byte or by finish(); the
        // unterminated `x` is discarded.
        let out = run(&[b"data: a\r\rdata: b\r", b"\r", b"x"], 1024);
        let expected = [
            ev(b"data: a\r\r", Some(b"a")),
            ev(b"data: b\r\r", Some(b"b")),
        ];
        assert_eq!(out, expected);
        assert_eq!(run(&[b"data: a\r\rdata: b\r\r"], 1024), expected);
    }

    #[test]
    fn comments_fields_and_multiline_data() {
        let input: &[u8] = b": ping\n\nevent: x\nid: 1\n\ndata: a\ndata:b\ndata:  c\ndata\n\
            dataset: no\n\ndata:\n\n: x\ndata\n\n";
        assert_eq!(
            run(&[input], 1024),
            [
                ev(b": ping\n\n", None),
                ev(b"event: x\nid: 1\n\n", None),
                ev(
                    b"data: a\ndata:b\ndata:  c\ndata\ndataset: no\n\n",
                    Some(b"a\nb\n c\n")
                ),
                ev(b"data:\n\n", Some(b"")),
                ev(b": x\ndata\n\n", Some(b"")),
            ]
        );
        let mut framer = SseFramer::new(1024);
        framer.push(Bytes::copy_from_slice(input));
        let flags: Vec<bool> = std::iter::from_fn(|| framer.next_event().unwrap())
            .map(|e| e.is_comment())
            .collect();
        assert_eq!(flags, [true, false, false, false, false]);
    }

    #[test]
    fn around_data_slices_the_lines_around_the_data_field() {
        let around = |input: &[u8]| {
            let mut framer = SseFramer::new(1024);
            let chunk = Bytes::copy_from_slice(input);
            framer.push(chunk.clone());
            let event = framer.finish().unwrap().unwrap();
            event.around_data().map(|(before, after)| {
                // One data line: both are slices of the chunk, nothing copied.
                if event.data().is_some_and(|d| within(d, &chunk)) {
                    assert!(within(&before, &chunk) || before.is_empty());
                    assert!(within(&after, &chunk));
                }
                (before, after)
            })
        };
        let pair = |b: &'static [u8], a: &'static [u8]| Some((Bytes::from(b), Bytes::from(a)));
        assert_eq!(around(b"data: x\n\n"), pair(b"", b"\n\n"));
        assert_eq!(
            around(b"event: e\r\nid: 1\r\ndata:x\r\nretry: 5\r\n: c\r\n\r\n"),
            pair(b"event: e\r\nid: 1\r\n", b"\r\nretry: 5\r\n: c\r\n\r\n")
        );
        // The stream's BOM is left out; the blank lines before the event are kept.
        assert_eq!(
            around(b"\xEF\xBB\xBF\n: c\rdata\r\r"),
            pair(b"\n: c\r", b"\r\r")
        );
        // Several data lines: the others are left out, every line ends with `\n`.
        assert_eq!(
            around(b"data: a\rid: 1\rdata: b\r: c\r\r"),
            pair(b"", b"\nid: 1\n: c\n\n")
        );
        assert_eq!(around(b"event: e\n: c\n\n"), None);
    }

    #[test]
    fn the_usual_event_is_its_one_data_line_and_the_blank_line() {
        let lone = |input: &[u8]| {
            let mut framer = SseFramer::new(1024);
            framer.push(Bytes::copy_from_slice(input));
            // An event that ends in `\r` waits for the stream's end: a `\n` may follow.
            let event = match framer.next_event().unwrap() {
                Some(event) => event,
                None => framer.finish().unwrap().unwrap(),
            };
            assert_eq!(
                event.is_lone_data_line(),
                lone_by_lines(&event),
                "{input:?}"
            );
            event.is_lone_data_line()
        };
        for usual in [
            &b"data: x\n\n"[..],
            b"data:x\n\n",
            b"data:\n\n",
            b"\xEF\xBB\xBFdata: x\n\n",
        ] {
            assert!(lone(usual), "{usual:?}");
        }
        for other in [
            &b"data: x\r\n\r\n"[..],
            b"data: x\r\r",
            b"data: x\n\r\n",
            b"\ndata: x\n\n",
            b": c\ndata: x\n\n",
            b"data: x\nid: 1\n\n",
            b"data: a\ndata: b\n\n",
            b"event: e\n\n",
        ] {
            assert!(!lone(other), "{other:?}");
        }
    }

    /// [`SseEvent::is_lone_data_line`] from the line-by-line reading ([`reread`]): a data line
    /// and no other, nothing before it and the blank line right after.
    fn lone_by_lines(event: &SseEvent) -> bool {
        let (_, _, around, several_data_lines) = reread(event);
        !several_data_lines
            && around.is_some_and(|(before, after)| before.is_empty() && after == b"\n\n"[..])
    }

    /// Where the scanner says the one non-empty line of each event of `chunks` lies, event by
    /// event (`None`: not one line, so the event is parsed line by line).
    fn one_lines(chunks: &[&[u8]]) -> Vec<Option<Range<usize>>> {
        let (mut scanner, mut found, mut base) = (Scanner::new(), Vec::new(), 0);
        for chunk in chunks {
            let mut rest = *chunk;
            while let Some(end) = scanner.scan(rest, base) {
                found.push(scanner.take_one_line());
                (rest, base) = (&rest[end..], 0);
            }
            base += rest.len();
        }
        found
    }

    #[test]
    fn the_scanner_notes_where_an_events_only_line_lies() {
        assert_eq!(one_lines(&[b"data: x\n\n"]), [Some(0..7)]);
        // Across chunks, after blank lines, with CRLF and a lone CR.
        assert_eq!(
            one_lines(&[b"\r\nda", b"ta: x\r", b"\n\r\n: c\r\r", b"\n"]),
            [Some(2..9), Some(0..3)]
        );
        // Two lines: parsed line by line.
        assert_eq!(one_lines(&[b"event: e\ndata: x\n\n"]), [None]);
        // The stream's BOM is not part of the line; a broken one is.
        assert_eq!(one_lines(&[b"\xEF\xBB\xBFdata: x\n\n"]), [Some(3..10)]);
        assert_eq!(one_lines(&[b"\xEF", b"\xBB\n\n"]), [Some(0..2)]);
        assert_eq!(one_lines(&[b"\xEF\xBBx\n: c\n\n"]), [None]);
    }

    #[test]
    fn leading_bom_is_kept_in_raw_but_ignored_for_parsing() {
        let expected = [
            ev(b"\xEF\xBB\xBFdata: x\n\n", Some(b"x")),
            // Only the stream's first bytes can be a BOM.
            ev(b"\xEF\xBB\xBFdata: y\n\n", None),
        ];
        let rest: &[u8] = b"data: x\n\n\xEF\xBB\xBFdata: y\n\n";
        assert_eq!(run(&[&[BOM, rest].concat()], 1024), expected);
        assert_eq!(run(&[b"\xEF", b"\xBB", b"\xBF", rest], 1024), expected);
        // The blank line after the BOM precedes any content, so it is a prefix.
        let out = run(&[b"\xEF\xBB\xBF\ndata: z\n\n"], 1024);
        assert_eq!(out, [ev(b"\xEF\xBB\xBF\ndata: z\n\n", Some(b"z"))]);
        // A broken BOM is content: its line is a field line, so the blank line ends it.
        assert_eq!(run(&[b"\xEF\xBB\n\n"], 1024), [ev(b"\xEF\xBB\n\n", None)]);
    }

    /// Pushes `input`, then finishes: the events, and whether a partial event was discarded.
    fn finished(input: &[u8]) -> (Vec<Bytes>, bool) {
        let mut framer = SseFramer::new(1024);
        framer.push(Bytes::copy_from_slice(input));
        let raws = std::iter::from_fn(|| framer.finish().unwrap())
            .map(SseEvent::into_raw)
            .collect();
        assert_eq!(framer.finish(), Ok(None));
        assert!(!framer.has_partial());
        (raws, framer.discarded_partial())
    }

    #[test]
    fn finish_completes_only_a_lone_done_tail() {
        for input in [
            &b"data: [DONE]"[..],
            b"data: [DONE]\n",
            b"data: [DONE]\r\n",
            b"data: [DONE]\r",
            b"data:[DONE]",
            b"\n\r\ndata: [DONE]",
            b"\xEF\xBB\xBFdata: [DONE]",
        ] {
            let mut framer = SseFramer::new(1024);
            framer.push(Bytes::copy_from_slice(input));
            assert_eq!(framer.next_event(), Ok(None));
            let done = framer.finish().unwrap().unwrap();
            assert!(done.is_done(), "{input:?}");
            assert_eq!(done.raw().as_ref(), b"data: [DONE]\n\n", "{input:?}");
            assert_eq!(framer.finish(), Ok(None));
            assert!(!framer.has_partial() && !framer.discarded_partial());
        }
        // Complete events still queued come first, one per call.
        let (raws, partial) = finished(b"data: 1\n\ndata: 2\n\ndata: [DONE]");
        assert_eq!(
            raws,
            [&b"data: 1\n\n"[..], b"data: 2\n\n", b"data: [DONE]\n\n"]
        );
        assert!(!partial);
        // A blank line's lone `\r` at the very end completes its event, kept as received.
        assert_eq!(
            finished(b"data: a\n\r"),
            (vec![Bytes::from_static(b"data: a\n\r")], false)
        );
    }

    #[test]
    fn finish_discards_an_unterminated_event() {
        for input in [
            &b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chu"[..],
            b"data: {\"id\":\"c1\"}\n",
            b"data: {\"id\":\"c1\"}\r\n",
            b"event: done\ndata: [DONE]\n",
            b"data: [DONE]\ndata: x",
            b"data: [DONE",
            b": ping",
            b"\xEF\xBB\xBF\nid: 1",
        ] {
            assert_eq!(finished(input), (vec![], true), "{input:?}");
            // After whole events, only the tail goes.
            let mut stream = b"data: a\n\n".to_vec();
            stream.extend_from_slice(input);
            let expected = vec![Bytes::from_static(b"data: a\n\n")];
            assert_eq!(finished(&stream), (expected, true), "{input:?}");
        }
        // Leftover blank lines (and a lone BOM) are no event: dropped, nothing was cut.
        let (raws, partial) = finished(b"\n\ndata: a\n\n\n\r\n\r");
        assert_eq!(
            (raws, partial),
            (vec![Bytes::from_static(b"\n\ndata: a\n\n")], false)
        );
        assert_eq!(finished(b"\xEF\xBB\xBF"), (vec![], false));
        assert_eq!(finished(b"\xEF\xBB"), (vec![], true));
        assert_eq!(finished(b""), (vec![], false));
    }

    #[test]
    fn cap_is_inclusive_and_errors_are_final() {
        let too_large = |limit| Err(FramerError::EventTooLarge { limit });
        // "data: x\n\n" is 9 bytes.
        assert_eq!(run(&[b"data: x\n\n"], 9), [ev(b"data: x\n\n", Some(b"x"))]);
        assert_eq!(run(&[b"data: x\n\n"], 8), [too_large(8)]);
        assert_eq!(run(&[b"data", b": x", b"\n\n"], 8), [too_large(8)]);
        // Over the cap only by a CRLF's `\n`, seen in a later chunk...
        assert_eq!(run(&[b"data: x\r\n\r", b"\n"], 10), [too_large(10)]);
        // ...while a lone `\r` ending exactly at the cap is fine (the tail `d` is discarded).
        let out = run(&[b"data: x\r\n\r", b"d"], 10);
        assert_eq!(out, [ev(b"data: x\r\n\r", Some(b"x"))]);

        let mut framer = SseFramer::new(8);
        framer.push(Bytes::from_static(b"data: 123"));
        let err = FramerError::EventTooLarge { limit: 8 };
        assert_eq!(framer.next_event(), Err(err.clone()));
        framer.push(Bytes::from_static(b"\n\n"));
        assert!(!framer.has_partial());
        assert_eq!(framer.next_event(), Err(err.clone()));
        assert_eq!(framer.finish(), Err(err.clone()));
        assert_eq!(err.to_string(), "SSE event exceeds the limit of 8 bytes");
    }

    fn line_ending() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])]
    }

    /// A non-empty field or comment line and the data value it contributes, if any.
    fn line() -> impl Strategy<Value = (String, Option<String>)> {
        let text = "[ -~]{0,12}|[^\r\n]{0,4}";
        prop_oneof![
            4 => text.prop_map(|v| (format!("data: {v}"), Some(v))),
            2 => text.prop_map(|v| {
                let value = v.strip_prefix(' ').unwrap_or(&v).to_owned();
                (format!("data:{v}"), Some(value))
            }),
            1 => Just(("data".to_owned(), Some(String::new()))),
            2 => text.prop_map(|v| (format!(":{v}"), None)),
            1 => text.prop_map(|v| (format!("event: {v}"), None)),
            1 => Just(("data: [DONE]".to_owned(), Some("[DONE]".to_owned()))),
        ]
    }

    /// A serialized stream and the (raw, data) of each event the framer emits for it: an
    /// open tail (an event without its blank line) is discarded, unless it is a lone `[DONE]`.
    fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<Outcome>)> {
        let event = (
            prop::collection::vec((line(), line_ending()), 1..5),
            line_ending(),
        );
        let events = prop::collection::vec(event, 0..6);
        let tail = (any::<bool>(), prop::option::of(line_ending()));
        (any::<bool>(), events, tail).prop_map(|(bom, events, (open_tail, tail_ending))| {
            let (mut input, mut expected) = (Vec::new(), Vec::new());
            let count = events.len();
            for (i, (lines, blank)) in events.into_iter().enumerate() {
                let mut raw = if bom && i == 0 {
                    BOM.to_vec()
                } else {
                    Vec::new()
                };
                let line_count = lines.len();
                let (mut values, mut last_ending) = (Vec::new(), &b""[..]);
                for ((line, value), ending) in lines {
                    raw.extend_from_slice(line.as_bytes());
                    raw.extend_from_slice(ending);
                    last_ending = ending;
                    values.extend(value);
                }
                let data = (!values.is_empty()).then(|| values.join("\n"));
                if open_tail && i + 1 == count {
                    raw.truncate(raw.len() - last_ending.len());
                    raw.extend_from_slice(tail_ending.unwrap_or(b""));
                    input.extend_from_slice(&raw);
                    if line_count == 1 && data.as_deref() == Some("[DONE]") {
                        expected.push(ev(DONE_EVENT, Some(b"[DONE]")));
                    }
                    break;
                }
                if last_ending == b"\r" && blank == b"\n" {
                    // "\r" + "\n" would read as one CRLF, not as a blank line.
                    raw.extend_from_slice(b"\r\n");
                } else {
                    raw.extend_from_slice(blank);
                }
                expected.push(ev(&raw, data.as_ref().map(String::as_bytes)));
                input.extend_from_slice(&raw);
            }
            if bom && count == 0 {
                // A BOM alone is no event.
                input.extend_from_slice(BOM);
            }
            (input, expected)
        })
    }

    /// The lines of `buf` as (content, has a line ending), read naively.
    fn naive_lines(mut buf: &[u8]) -> Vec<(&[u8], bool)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let len = buf.iter().position(|&b| b == b'\r' || b == b'\n');
            let (line, rest) = buf.split_at(len.unwrap_or(buf.len()));
            out.push((line, len.is_some()));
            buf = rest
                .strip_prefix(b"\r\n")
                .or_else(|| rest.get(1..))
                .unwrap_or_default();
        }
        out
    }

    /// The pass-through invariant, stated on its own: the events are the input up to the end
    /// of the last complete event, byte for byte, then `data: [DONE]\n\n` exactly when the
    /// rest is a lone `[DONE]` line; the rest holds no complete event, and it was discarded
    /// as a partial event exactly when it holds more than line endings (and a whole BOM at
    /// the start of the stream).
    fn check_pass_through(
        input: &[u8],
        events: &[Outcome],
        discarded: bool,
    ) -> Result<(), TestCaseError> {
        let raws: Vec<&Bytes> = events.iter().flatten().map(|(raw, _)| raw).collect();
        let passed: Vec<u8> = raws.iter().flat_map(|raw| raw.to_vec()).collect();
        let (complete, done) = if input.starts_with(&passed) {
            (passed.len(), false)
        } else {
            prop_assert_eq!(raws.last().map(|r| r.as_ref()), Some(DONE_EVENT));
            (passed.len() - DONE_EVENT.len(), true)
        };
        prop_assert_eq!(&input[..complete], &passed[..complete]);
        let mut tail = &input[complete..];
        if complete == 0 {
            tail = tail.strip_prefix(BOM).unwrap_or(tail);
        }
        let lines = naive_lines(tail);
        let first_content = lines.iter().position(|(line, _)| !line.is_empty());
        let blank_after_content = first_content.is_some_and(|at| {
            lines[at..]
                .iter()
                .any(|(line, ended)| line.is_empty() && *ended)
        });
        prop_assert!(
            !blank_after_content,
            "a complete event left in the tail {:?}",
            tail
        );
        let content: Vec<&[u8]> = lines
            .iter()
            .map(|(l, _)| *l)
            .filter(|l| !l.is_empty())
            .collect();
        let lone_done = matches!(content[..], [b"data: [DONE]" | b"data:[DONE]"]);
        prop_assert_eq!(done, lone_done, "tail {:?}", tail);
        prop_assert_eq!(discarded, !done && !content.is_empty(), "tail {:?}", tail);
        Ok(())
    }

    /// Cuts `input` into chunks of the given sizes, cycling through them.
    fn split<'a>(mut input: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        for size in sizes.iter().cycle() {
            if input.is_empty() {
                break;
            }
            let (chunk, rest) = input.split_at((*size).clamp(1, input.len()));
            chunks.push(chunk);
            input = rest;
        }
        chunks
    }

    /// What [`SseEvent::parse`] read in a pass per question before it read all in one: the
    /// comment flag, the data, and the pieces around the data as the line-by-line reading
    /// of [`SseEvent::around_data`] cuts them.
    fn reread(event: &SseEvent) -> (bool, Option<Bytes>, Option<(Bytes, Bytes)>, bool) {
        let body = event.raw.get(event.start..).unwrap_or_default();
        let mut non_empty = lines(body).map(|(_, line)| line).filter(|l| !l.is_empty());
        let comment = non_empty.clone().next().is_some() && non_empty.all(|l| l.starts_with(b":"));
        let data_lines = lines(body).filter(|(_, l)| data_value(l).is_some()).count();
        let slow = SseEvent {
            one_data_line: None,
            ..event.clone()
        };
        (
            comment,
            data_field(&event.raw, event.start),
            slow.around_data(),
            data_lines > 1,
        )
    }

    fn read(event: &SseEvent) -> (bool, Option<Bytes>, Option<(Bytes, Bytes)>, bool) {
        (
            event.is_comment(),
            event.data().cloned(),
            event.around_data(),
            event.data_has_line_breaks(),
        )
    }

    #[test]
    fn one_pass_parsing_reads_what_the_line_by_line_reading_did() {
        let input: &[u8] = b": ping\n\nevent: x\r\nid: 1\r\n\r\ndata: a\rdata:b\r: c\rdata\r\r\
            \xEF\xBB\xBFdata: {\"x\":1}\nid: 2\n\n:a\n:b\n\ndata\n\ndataset: no\ndata:  y\n\n";
        let mut framer = SseFramer::new(1024);
        framer.push(Bytes::from_static(input));
        let events: Vec<SseEvent> = std::iter::from_fn(|| framer.next_event().unwrap()).collect();
        let b = |s: &'static [u8]| Bytes::from_static(s);
        let expected = [
            (true, None, None, false),
            (false, None, None, false),
            (
                false,
                Some(b(b"a\nb\n")),
                Some((b(b""), b(b"\n: c\n\n"))),
                true,
            ),
            // A BOM past the stream's start is content: no data line here.
            (false, None, None, false),
            (true, None, None, false),
            (false, Some(b(b"")), Some((b(b""), b(b"\n\n"))), false),
            (
                false,
                Some(b(b" y")),
                Some((b(b"dataset: no\n"), b(b"\n\n"))),
                false,
            ),
        ];
        assert_eq!(events.len(), expected.len());
        for (event, expected) in events.iter().zip(expected) {
            assert_eq!(read(event), expected, "{:?}", event.raw());
            assert_eq!(reread(event), expected, "{:?}", event.raw());
            assert_eq!(event.is_lone_data_line(), lone_by_lines(event));
        }
    }

    proptest! {
        #[test]
        fn one_pass_parsing_agrees_with_the_line_by_line_reading(
            input in prop::collection::vec(prop_oneof![
                3 => prop::sample::select(b"\r\n:data \xEF\xBB\xBF".to_vec()),
                1 => any::<u8>(),
            ], 0..200),
        ) {
            let mut framer = SseFramer::new(1 << 20);
            framer.push(Bytes::from(input));
            while let Ok(Some(event)) = framer.next_event() {
                prop_assert_eq!(read(&event), reread(&event), "{:?}", event.raw());
                prop_assert_eq!(event.is_lone_data_line(), lone_by_lines(&event));
            }
            if let Ok(Some(event)) = framer.finish() {
                prop_assert_eq!(read(&event), reread(&event), "{:?}", event.raw());
            }
        }

        #[test]
        fn any_chunking_of_valid_streams_yields_the_same_events(
            (input, expected) in stream(),
            sizes in prop::collection::vec(1usize..12, 1..8),
        ) {
            let (whole, discarded) = run_full(&[&input], 1 << 20);
            prop_assert_eq!(&whole, &expected);
            prop_assert_eq!(&run(&split(&input, &sizes), 1 << 20), &whole);
            prop_assert_eq!(&run(&split(&input, &[1]), 1 << 20), &whole);
            check_pass_through(&input, &whole, discarded)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_pass_through(
            input in prop::collection::vec(prop_oneof![
                3 => prop::sample::select(b"\r\n:data \xEF\xBB\xBF".to_vec()),
                1 => any::<u8>(),
            ], 0..200),
            sizes in prop::collection::vec(1usize..16, 1..8),
            limit in prop_oneof![Just(usize::MAX), 0usize..40],
        ) {
            let (whole, discarded) = run_full(&[&input], limit);
            // Splitting must not change the outcome, not even where a cap error strikes.
            prop_assert_eq!(&run_full(&split(&input, &sizes), limit), &(whole.clone(), discarded));
            prop_assert_eq!(&run(&split(&input, &[1]), limit), &whole);
            if whole.iter().all(Result::is_ok) {
                check_pass_through(&input, &whole, discarded)?;
            }
        }
    }
}
