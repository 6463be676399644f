//! What one SSE event becomes for the client.
//!
//! A rewritten event is the upstream's event with only its `data` rewritten: every other line
//! (`event:`, `id:`, `retry:`, comments) stays, in order and byte for byte (see
//! [`SseEvent::around_data`]). It is assembled from static pieces and slices of the upstream's
//! bytes (`<lines before>` + `data: ` + payload + `<line ending, lines after, blank line>`), so
//! no payload is copied or re-serialised; only error events, which are rare, are rendered
//! afresh, and a payload that came over several `data:` lines is copied once to go out over
//! as many (see `data_lines`).
//!
//! Envelope events are read and written by the configured envelopes (`template.rs`): the
//! standard one with the static pieces here, any other with the pieces its templates gave at
//! startup, so a wrapped event is still a few shared `Bytes` around the upstream's payload.
//! Between two different envelopes each event is rewrapped ([`EventMode::Rewrap`]).
//!
//! Beside that, each event is counted for the metrics ([`StreamStats`]): the events relayed,
//! when the first token went out, and the usage the stream reports. The stats live with the
//! stream (`sse/body.rs`), which hands them to [`EventMode::apply`] with each event.

use std::collections::VecDeque;
use std::sync::LazyLock;

use bytes::Bytes;
use http::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::framer::SseEvent;
use crate::config::StreamEnvelope;
use crate::dialect::Dialect;
use crate::error::ApiError;
use crate::translate::envelope::{self, Classified, Verdict};
use crate::translate::error_body;
use crate::translate::error_fields;
use crate::translate::json_check::{has_escape, EventChecks};
use crate::translate::template::{Envelopes, Shape, Unwrapped};
use crate::translate::usage::{may_carry_usage, UsageReport};

use super::first_token::{has_first_token, may_hold_first_token};

/// What happens to each event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventMode {
    /// Forwarded byte for byte (still framed, to watch for `[DONE]` and errors).
    Passthru,
    /// Envelope upstream → bare client: wrapped events are unwrapped, bare ones left alone.
    Unwrap,
    /// Bare upstream → envelope client with `--stream-envelope wrap`.
    Wrap,
    /// Envelope upstream → envelope client of another envelope (`--upstream-envelope`):
    /// wrapped events are unwrapped by the upstream's templates and wrapped in the client's.
    Rewrap,
}

/// What an event meant for the stream as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    /// `data: [DONE]`: the upstream finished the answer.
    Done,
    /// An error the upstream reported in the stream: the answer already failed visibly.
    Error,
}

const DATA_PREFIX: Bytes = Bytes::from_static(b"data: ");
const WRAP_PREFIX: Bytes =
    Bytes::from_static(br#"data: {"success":true,"code":"200","message":"successful","data":"#);
const WRAP_CLOSE: Bytes = Bytes::from_static(b"}");
/// The close of a wrapped event and its usual end, in one piece: one frame fewer per event.
const WRAP_SUFFIX: Bytes = Bytes::from_static(b"}\n\n");
/// The usual end of an event, after its `data` line.
const EVENT_END: Bytes = Bytes::from_static(b"\n\n");

impl EventMode {
    /// The mode for the standard envelope on both sides.
    pub fn select(client: Dialect, upstream: Dialect, stream_envelope: StreamEnvelope) -> Self {
        Self::select_with(client, upstream, stream_envelope, Envelopes::standard())
    }

    /// The mode for `envelopes`: two different envelopes on both sides rewrap each event.
    pub fn select_with(
        client: Dialect,
        upstream: Dialect,
        stream_envelope: StreamEnvelope,
        envelopes: Envelopes,
    ) -> Self {
        match (upstream, client) {
            (Dialect::Envelope, Dialect::Envelope) if !envelopes.same() => EventMode::Rewrap,
            (Dialect::Envelope, Dialect::Bare) => EventMode::Unwrap,
            (Dialect::Bare, Dialect::Envelope) if stream_envelope == StreamEnvelope::Wrap => {
                EventMode::Wrap
            }
            _ => EventMode::Passthru,
        }
    }

    /// Error events take the form of the events around them: envelope when the client
    /// receives wrapped events, bare otherwise.
    pub(crate) fn error_form(self, client: Dialect, upstream: Dialect) -> Dialect {
        match self {
            EventMode::Wrap | EventMode::Rewrap => Dialect::Envelope,
            EventMode::Unwrap => Dialect::Bare,
            EventMode::Passthru if client == Dialect::Envelope && upstream == Dialect::Envelope => {
                Dialect::Envelope
            }
            EventMode::Passthru => Dialect::Bare,
        }
    }

    /// Queues what `event` becomes and says what it meant. `envelopes` are the templates of
    /// both sides (envelope events are read and written by them); `checks` check the stream's
    /// JSON events, each from where it stops matching the one before.
    pub fn apply(
        self,
        event: SseEvent,
        upstream: Dialect,
        envelopes: Envelopes,
        out: &mut VecDeque<Bytes>,
        stats: &mut StreamStats,
        checks: &mut EventChecks,
    ) -> EventKind {
        if event.is_done() {
            stats.note(None, false, upstream);
            out.push_back(event.into_raw());
            return EventKind::Done;
        }
        let Some(data) = event.data().cloned() else {
            if !event.is_comment() {
                stats.note(None, false, upstream);
            }
            out.push_back(event.into_raw());
            return EventKind::Normal;
        };
        // Another envelope than the standard one is read once, here: the stats look into its
        // payload (which need not be under `data`), and the modes below use what was read.
        let shape = envelopes.upstream();
        let read = (upstream == Dialect::Envelope && !shape.is_standard())
            .then(|| shape.unwrap_event(&data, checks));
        match &read {
            Some(Unwrapped::Payload(payload)) => {
                stats.note(Some(payload), usage_candidate(payload), Dialect::Bare)
            }
            _ => stats.note(Some(&data), usage_candidate(&data), upstream),
        }
        match self {
            EventMode::Passthru => {
                let kind = if let Some(read) = read {
                    read_kind(read, &data)
                } else if upstream == Dialect::Envelope {
                    envelope_kind(&data, checks)
                } else if is_bare_error(&data) {
                    EventKind::Error
                } else {
                    EventKind::Normal
                };
                out.push_back(event.into_raw());
                kind
            }
            EventMode::Unwrap | EventMode::Rewrap => {
                match read.unwrap_or_else(|| shape.unwrap_event(&data, checks)) {
                    Unwrapped::Payload(payload) => {
                        let payload = data_lines(&event, payload);
                        if self == EventMode::Rewrap {
                            wrap(&event, payload, envelopes.client(), out);
                        } else {
                            rewrite(&event, [DATA_PREFIX, payload], None, out);
                        }
                        EventKind::Normal
                    }
                    Unwrapped::Error(error) => {
                        let json = if self == EventMode::Rewrap {
                            envelopes.client().error_body(&error)
                        } else {
                            error.to_body(Dialect::Bare)
                        };
                        rewrite(&event, [DATA_PREFIX, json], None, out);
                        EventKind::Error
                    }
                    Unwrapped::Bare | Unwrapped::NotJson => {
                        let kind = if is_bare_error(&data) {
                            EventKind::Error
                        } else {
                            EventKind::Normal
                        };
                        out.push_back(event.into_raw());
                        kind
                    }
                }
            }
            EventMode::Wrap => match bare_event(&data, checks) {
                BareEvent::Error => {
                    let error = envelopes.client().error_body(&stream_error(&data));
                    rewrite(&event, [DATA_PREFIX, error], None, out);
                    EventKind::Error
                }
                BareEvent::Json => {
                    wrap(&event, data_lines(&event, data), envelopes.client(), out);
                    EventKind::Normal
                }
                BareEvent::NotJson => {
                    // Not JSON: nothing to wrap, so it goes through as the upstream sent it.
                    out.push_back(event.into_raw());
                    EventKind::Normal
                }
            },
        }
    }
}

/// Queues `event` with `payload` (ready for a `data: ` line) wrapped in `shape`'s success
/// envelope: static or startup-built pieces around the payload, nothing copied.
fn wrap(event: &SseEvent, payload: Bytes, shape: &Shape, out: &mut VecDeque<Bytes>) {
    match shape.event_pieces() {
        None => rewrite(
            event,
            [WRAP_PREFIX, payload],
            Some((WRAP_CLOSE, WRAP_SUFFIX)),
            out,
        ),
        Some((prefix, close, close_end)) => {
            rewrite(event, [prefix, payload], Some((close, close_end)), out)
        }
    }
}

/// Queues `event` with its `data` lines replaced by one `data` field: `value` (its `data: `
/// prefix and the value ready for it), then `close` if given (the close, and the close with
/// the usual end of an event); every other line as received.
fn rewrite(
    event: &SseEvent,
    value: [Bytes; 2],
    close: Option<(Bytes, Bytes)>,
    out: &mut VecDeque<Bytes>,
) {
    // The usual event: its pieces alone, nothing cut from the event (each cut is a `Bytes`
    // counted up and down again).
    if event.is_lone_data_line() {
        let [prefix, value] = value;
        out.push_back(prefix);
        out.push_back(value);
        out.push_back(close.map_or(EVENT_END, |(_, close_end)| close_end));
        return;
    }
    // `apply` rewrites only events with data, which always have a `data` line.
    let Some((before, after)) = event.around_data() else {
        out.push_back(event.raw().clone());
        return;
    };
    if !before.is_empty() {
        out.push_back(before);
    }
    out.extend(value);
    match close {
        Some((_, close_end)) if after == b"\n\n"[..] => out.push_back(close_end),
        Some((close, _)) => out.extend([close, after]),
        None => out.push_back(after),
    }
}

/// `value` (`event`'s data or a part of it) ready to follow a `data: ` prefix. An event with
/// several `data:` lines has its values joined with `\n`, so its JSON may hold line breaks;
/// each line then continues on a `data: ` line of its own, which a client joins back into
/// exactly `value` (a bare line break would end the data there, or even the event). Without
/// a line break (the usual case: one `data:` line, which holds none) `value` is returned as
/// it is, uncopied.
fn data_lines(event: &SseEvent, value: Bytes) -> Bytes {
    if !event.data_has_line_breaks() || memchr::memchr(b'\n', &value).is_none() {
        return value;
    }
    let mut out = Vec::with_capacity(value.len() + 32);
    for (i, line) in value.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\ndata: ");
        }
        out.extend_from_slice(line);
    }
    Bytes::from(out)
}

/// `data: <error JSON>\n\n` in `form` (an envelope in the client's error templates).
pub fn error_event(error: &ApiError, form: Dialect, envelopes: Envelopes) -> Bytes {
    let json = envelopes.error_body(form, error);
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// True when `data` may carry a non-null top-level `usage`, looking only after its last `]`:
/// a chunk's `choices` array, which holds all its content, comes before the top-level `usage`
/// in every API seen (OpenAI, Azure, vLLM, llama.cpp, Gemini; the usage chunk has
/// `"choices":[]`), so the search costs the length of the chunk's tail, not of its content —
/// a second search over every event would cost as much as the rest of the per-event work.
fn usage_candidate(data: &[u8]) -> bool {
    // The last `]` is usually a few bytes from the end: look there first, without the setup
    // of a vector search.
    let near = data.len().saturating_sub(64);
    let from = match data[near..].iter().rposition(|&b| b == b']') {
        Some(at) => near + at,
        None => memchr::memrchr(b']', &data[..near]).unwrap_or(0),
    };
    let tail = data.get(from..).unwrap_or_default();
    // Too short to hold `"usage"`: the common chunk ends `…]}`.
    tail.len() >= 7 && may_carry_usage(tail)
}

/// True for `{"error": …}` (OpenAI's mid-stream error). A substring check first keeps the
/// common case to one fast scan; only candidates are parsed.
fn is_bare_error(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        error: Option<IgnoredAny>,
    }
    // Built once: constructing a searcher per event cost more than the search itself.
    static ERROR_KEY: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"error\""));
    data.trim_ascii_start().first() == Some(&b'{')
        && ERROR_KEY.find(data).is_some()
        && serde_json::from_slice::<Probe>(data).is_ok_and(|probe| probe.error.is_some())
}

/// What a bare event's data is, for wrapping it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareEvent {
    /// `{"error": …}`: OpenAI's mid-stream error (see `is_bare_error`).
    Error,
    /// Any other JSON text (see `envelope::is_json`).
    Json,
    NotJson,
}

/// `is_bare_error`, then `envelope::is_json`, with their verdicts exactly; for the usual
/// chunk (a JSON object whose member names are spelt without escapes) in the one pass that
/// checks the JSON, which notes the `error` members on the way. Anything else (not JSON, or
/// a name with escapes, which serde would decode) is left to the two checks as they are.
pub fn bare_event(data: &[u8], checks: &mut EventChecks) -> BareEvent {
    if data.trim_ascii_start().first() != Some(&b'{') {
        // Not an object: never an error event.
        return if envelope::is_json(data) {
            BareEvent::Json
        } else {
            BareEvent::NotJson
        };
    }
    let (mut errors, mut null_error, mut escaped) = (0usize, false, false);
    let json = checks.object_members(data, |key, value| match key.len() {
        5 if key == b"error" => {
            errors += 1;
            null_error = data.get(value) == Some(b"null".as_slice());
        }
        // A name with escapes matters to serde when it may decode to `error` (ten bytes at
        // least, `\u0065rror`) or fail to decode (a lone surrogate, six bytes); a shorter one
        // holds only two-byte escapes, which decode, and to no letter of `error`.
        6.. if has_escape(key) => escaped = true,
        _ => {}
    });
    let error = if json && !escaped {
        // serde's probe: `error` once (twice is an error to it), and not null (`None`).
        errors == 1 && !null_error
    } else {
        is_bare_error(data)
    };
    match (error, json) {
        (true, _) => BareEvent::Error,
        (false, true) => BareEvent::Json,
        (false, false) => BareEvent::NotJson,
    }
}

/// What a standard envelope upstream's event means (passed on unchanged): the verdict alone,
/// the payload is not needed.
fn envelope_kind(data: &[u8], checks: &mut EventChecks) -> EventKind {
    match envelope::classify_in(data, Some(checks)) {
        Classified::Envelope(env) => match env.verdict(StatusCode::OK) {
            Verdict::Success(_) => EventKind::Normal,
            Verdict::Error(_) => EventKind::Error,
        },
        _ if is_bare_error(data) => EventKind::Error,
        _ => EventKind::Normal,
    }
}

/// What another envelope's event means, once read by its templates.
fn read_kind(read: Unwrapped, data: &[u8]) -> EventKind {
    match read {
        Unwrapped::Payload(_) => EventKind::Normal,
        Unwrapped::Error(_) => EventKind::Error,
        _ if is_bare_error(data) => EventKind::Error,
        _ => EventKind::Normal,
    }
}

/// A bare error event read as an [`ApiError`]; its envelope code is the error's own HTTP-like
/// code when it has one (llama.cpp sends integers), else 500. Only `error.code` is looked into
/// (members as written): the event, up to `--max-sse-event`, never becomes a `Value`.
fn stream_error(data: &[u8]) -> ApiError {
    let status = serde_json::from_slice::<&RawValue>(data)
        .ok()
        .and_then(|event| error_fields::members(event, ["error"]))
        .and_then(|[error]| error)
        .and_then(|error| error_fields::members(error, ["code"]))
        .and_then(|[code]| code)
        .and_then(|code| serde_json::from_str::<u64>(code.get()).ok())
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (400..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_body::normalise(status, Some("application/json"), data)
}

/// What a stream's events said, for the metrics and the access log.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Events relayed from the upstream (comments not counted).
    pub events: u64,
    /// When the first event with content in a `choices[].delta` was queued for the client
    /// (read through [`StreamStats::first_token`]).
    first_token: Option<Instant>,
    /// An event that may hold the first token, and when it was queued: looked into later
    /// ([`StreamStats::settle`]), so that its parse is not on the way of the stream's first
    /// bytes to the client, where it cost ~7 µs when the CPU comes back cold (BENCHMARKS.md,
    /// ninth step).
    unchecked: Option<(Bytes, Instant)>,
    /// The usage of the events that carried one, summed, and the model the last one named.
    pub report: Option<UsageReport>,
}

impl StreamStats {
    /// Adds the usage of an event (see [`EventMode::apply`]).
    fn add(&mut self, report: UsageReport) {
        let total = self.report.get_or_insert_with(UsageReport::default);
        if let Some(usage) = report.usage {
            total.usage.get_or_insert_with(Default::default).add(&usage);
        }
        if report.model.is_some() {
            total.model = report.model;
        }
    }
}

impl StreamStats {
    /// An event went to the client; `data` and whether it may carry usage (see
    /// [`usage_candidate`]) when it has data.
    fn note(&mut self, data: Option<&Bytes>, usage: bool, upstream: Dialect) {
        self.events += 1;
        let Some(data) = data else { return };
        if self.first_token.is_none() {
            // In order: an earlier candidate first.
            self.settle();
            if self.first_token.is_none() && may_hold_first_token(data) {
                self.unchecked = Some((data.clone(), Instant::now()));
            }
        }
        if usage {
            if let Some(report) = usage_of(data, upstream) {
                self.add(report);
            }
        }
    }
}

impl StreamStats {
    /// True while an event waits to be looked into for the first token.
    pub(crate) fn unsettled(&self) -> bool {
        self.unchecked.is_some()
    }

    /// Looks into the event that may hold the first token, if one waits.
    pub(crate) fn settle(&mut self) {
        if let Some((data, queued)) = self.unchecked.take() {
            if has_first_token(&data) {
                self.first_token = Some(queued);
            }
        }
    }

    /// When the first event with content in a `choices[].delta` was queued for the client.
    pub fn first_token(&mut self) -> Option<Instant> {
        self.settle();
        self.first_token
    }
}

/// The usage an event carries (an envelope upstream may send bare events too).
fn usage_of(data: &[u8], upstream: Dialect) -> Option<UsageReport> {
    let envelope = upstream == Dialect::Envelope;
    UsageReport::of(data, envelope)
        .filter(|r| r.usage.is_some())
        .or_else(|| envelope.then(|| UsageReport::of(data, false)).flatten())
        .filter(|r| r.usage.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::sse::framer::SseFramer;
    use proptest::prelude::*;

    fn run(mode: EventMode, upstream: Dialect, input: &[u8]) -> (String, Vec<EventKind>) {
        let mut framer = SseFramer::new(1 << 20);
        framer.push(Bytes::copy_from_slice(input));
        let mut out = VecDeque::new();
        let mut kinds = Vec::new();
        let (mut stats, mut checks) = (StreamStats::default(), EventChecks::default());
        while let Ok(Some(event)) = framer.next_event() {
            let standard = Envelopes::standard();
            kinds.push(mode.apply(event, upstream, standard, &mut out, &mut stats, &mut checks));
        }
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        (String::from_utf8(bytes).unwrap(), kinds)
    }

    #[test]
    fn modes_follow_the_dialects() {
        use Dialect::*;
        assert_eq!(
            EventMode::select(Bare, Envelope, StreamEnvelope::Bare),
            EventMode::Unwrap
        );
        assert_eq!(
            EventMode::select(Envelope, Bare, StreamEnvelope::Bare),
            EventMode::Passthru
        );
        assert_eq!(
            EventMode::select(Envelope, Bare, StreamEnvelope::Wrap),
            EventMode::Wrap
        );
        assert_eq!(
            EventMode::select(Bare, Bare, StreamEnvelope::Wrap),
            EventMode::Passthru
        );
        assert_eq!(EventMode::Passthru.error_form(Envelope, Envelope), Envelope);
        assert_eq!(EventMode::Passthru.error_form(Envelope, Bare), Bare);
        assert_eq!(EventMode::Wrap.error_form(Envelope, Bare), Envelope);
    }

    #[test]
    fn wrap_surrounds_each_chunk_and_leaves_done_alone() {
        let (out, kinds) = run(
            EventMode::Wrap,
            Dialect::Bare,
            b"data: {\"id\":\"c1\",\"choices\":[]}\n\n: ping\n\ndata: [DONE]\n\n",
        );
        assert_eq!(
            out,
            "data: {\"success\":true,\"code\":\"200\",\"message\":\"successful\",\"data\":{\"id\":\"c1\",\"choices\":[]}}\n\n: ping\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            kinds,
            [EventKind::Normal, EventKind::Normal, EventKind::Done]
        );
    }

    #[test]
    fn wrap_turns_a_bare_error_into_an_envelope_error() {
        let (out, kinds) = run(
            EventMode::Wrap,
            Dialect::Bare,
            b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
        );
        assert_eq!(
            out,
            "data: {\"success\":false,\"code\":\"500\",\"message\":\"overloaded\",\"data\":null,\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"
        );
        assert_eq!(kinds, [EventKind::Error]);
    }

    #[test]
    fn unwrap_is_decided_per_event() {
        let (out, kinds) = run(
            EventMode::Unwrap,
            Dialect::Envelope,
            b"data: {\"success\":true,\"code\":\"200\",\"message\":\"successful\",\"data\":{\"id\":\"a\"}}\n\ndata:{\"id\":\"b\"}\n\ndata: {\"success\":false,\"code\":\"500\",\"message\":\"model backend error\",\"data\":null}\n\n",
        );
        assert_eq!(
            out,
            "data: {\"id\":\"a\"}\n\ndata:{\"id\":\"b\"}\n\ndata: {\"error\":{\"message\":\"model backend error\",\"type\":\"server_error\",\"param\":null,\"code\":\"500\"}}\n\n"
        );
        assert_eq!(
            kinds,
            [EventKind::Normal, EventKind::Normal, EventKind::Error]
        );
    }

    #[test]
    fn a_wrapped_error_event_takes_its_status_from_error_code() {
        let (out, kinds) = run(
            EventMode::Wrap,
            Dialect::Bare,
            b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":503}}\n\n",
        );
        assert_eq!(
            out,
            "data: {\"success\":false,\"code\":\"503\",\"message\":\"overloaded\",\"data\":null,\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":503}}\n\n"
        );
        assert_eq!(kinds, [EventKind::Error]);
        // Only `error.code` is read: another member serde's `Value` cannot hold (a number
        // beyond f64) does not hide it.
        let error = stream_error(br#"{"error":{"message":"m","code":503},"trace":1e400}"#);
        assert_eq!(
            error,
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "m").with_code(503)
        );
        // Codes that are no status: 500.
        for code in [
            "\"503\"",
            "503.0",
            "-503",
            "99",
            "18446744073709551616",
            "null",
        ] {
            let data = format!(r#"{{"error":{{"message":"m","code":{code}}}}}"#);
            assert_eq!(
                stream_error(data.as_bytes()).status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{code}"
            );
        }
    }

    #[test]
    fn an_error_event_with_a_million_item_message_is_cut() {
        let data = format!(
            r#"{{"error":{{"message":[{}1],"param":[{}1],"code":503}}}}"#,
            "1,".repeat(999_999),
            "1,".repeat(999_999)
        );
        assert_eq!(
            stream_error(data.as_bytes()),
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("[{}1…", "1,".repeat(999))
            )
            .with_code(503)
        );
    }

    #[test]
    fn multi_line_data_stays_whole_when_rewritten() {
        // Found by the `sse_transform` fuzz target: JSON split over several `data:` lines
        // (values joined with `\n`, empty ones included) used to be re-emitted after a
        // single `data: `, so clients saw `{"x":[1,` and a stray blank line ended the event.
        let input: &[u8] = b"data: {\"success\":true,\"code\":\"200\",\"data\":\ndata:\ndata: {\"x\":[1,\ndata:  2]}}\n\n";
        let (out, kinds) = run(EventMode::Unwrap, Dialect::Envelope, input);
        assert_eq!(out, "data: {\"x\":[1,\ndata:  2]}\n\n");
        assert_eq!(kinds, [EventKind::Normal]);

        let input: &[u8] = b"data: {\"id\":\ndata:\ndata: \"c1\"}\r\n\r\n";
        let (out, _) = run(EventMode::Wrap, Dialect::Bare, input);
        assert_eq!(
            out,
            "data: {\"success\":true,\"code\":\"200\",\"message\":\"successful\",\"data\":{\"id\":\ndata: \ndata: \"c1\"}}\n\n"
        );
        // Read back by a client: one event whose data is the JSON the upstream sent.
        let mut framer = SseFramer::new(1 << 20);
        framer.push(Bytes::from(out));
        let event = framer.next_event().unwrap().unwrap();
        let data = event.data().unwrap();
        assert!(data.ends_with(b"\"data\":{\"id\":\n\n\"c1\"}}") && envelope::is_json(data));
        assert_eq!(framer.finish(), Ok(None));
    }

    #[test]
    fn rewritten_events_keep_their_other_lines_in_order() {
        let wrapped = r#"{"success":true,"code":"200","message":"successful","data":{"id":"a"}}"#;
        // Unwrap: `event:`, `id:`, `retry:`, comments and unknown fields stay where they were.
        let input =
            format!("event: chunk\nid: 7\ndata: {wrapped}\nretry: 1000\n: note\nx-y: z\n\n");
        let (out, kinds) = run(EventMode::Unwrap, Dialect::Envelope, input.as_bytes());
        assert_eq!(
            out,
            "event: chunk\nid: 7\ndata: {\"id\":\"a\"}\nretry: 1000\n: note\nx-y: z\n\n"
        );
        assert_eq!(kinds, [EventKind::Normal]);

        // Wrap: CRLF line endings kept as they came.
        let input = b"id: 1\r\nevent: message\r\ndata: {\"id\":\"c1\"}\r\n: x\r\n\r\n";
        let (out, _) = run(EventMode::Wrap, Dialect::Bare, input);
        assert_eq!(
            out,
            "id: 1\r\nevent: message\r\ndata: {\"success\":true,\"code\":\"200\",\"message\":\"successful\",\"data\":{\"id\":\"c1\"}}\r\n: x\r\n\r\n"
        );
        // The stream's BOM is not repeated inside a rewritten event.
        let (out, _) = run(
            EventMode::Wrap,
            Dialect::Bare,
            b"\xEF\xBB\xBFevent: e\ndata: 1\n\n",
        );
        assert_eq!(
            out,
            "event: e\ndata: {\"success\":true,\"code\":\"200\",\"message\":\"successful\",\"data\":1}\n\n"
        );
    }

    #[test]
    fn error_events_keep_their_other_lines_too() {
        let (out, kinds) = run(
            EventMode::Unwrap,
            Dialect::Envelope,
            b"event: error\nid: 9\ndata: {\"success\":false,\"code\":\"500\",\"message\":\"boom\",\"data\":null}\n\n",
        );
        assert_eq!(
            out,
            "event: error\nid: 9\ndata: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,\"code\":\"500\"}}\n\n"
        );
        assert_eq!(kinds, [EventKind::Error]);
        let (out, kinds) = run(
            EventMode::Wrap,
            Dialect::Bare,
            b"event: error\ndata: {\"error\":{\"message\":\"boom\"}}\nid: 9\n\n",
        );
        assert_eq!(
            out,
            "event: error\ndata: {\"success\":false,\"code\":\"500\",\"message\":\"boom\",\"data\":null,\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\nid: 9\n\n"
        );
        assert_eq!(kinds, [EventKind::Error]);
    }

    #[test]
    fn several_data_lines_become_one_field_among_the_other_lines() {
        // Lone-CR endings, a comment and an id between and after the data lines: the data
        // lines are replaced where the first one was; the rest end with `\n`, so removing a
        // line cannot join a `\r` and a `\n` into one line ending.
        let input: &[u8] =
            b": a\rdata: {\"success\":true,\"code\":\"200\",\"data\":\r: mid\rdata: {\"x\":1}}\rid: 2\r\n\r\n";
        let (out, _) = run(EventMode::Unwrap, Dialect::Envelope, input);
        assert_eq!(out, ": a\rdata: {\"x\":1}\n: mid\nid: 2\n\n");
        let mut framer = SseFramer::new(1 << 20);
        framer.push(Bytes::from(out));
        let event = framer.next_event().unwrap().unwrap();
        assert_eq!(event.data().unwrap().as_ref(), b"{\"x\":1}");
        assert_eq!(framer.finish(), Ok(None));
        assert!(!framer.discarded_partial());
    }

    #[test]
    fn rewriting_copies_no_upstream_bytes() {
        let chunk = Bytes::from_static(
            b"event: e\ndata: {\"success\":true,\"code\":\"200\",\"data\":{\"id\":\"a\"}}\nid: 1\n\n",
        );
        let mut framer = SseFramer::new(1 << 20);
        framer.push(chunk.clone());
        let event = framer.next_event().unwrap().unwrap();
        let mut out = VecDeque::new();
        EventMode::Unwrap.apply(
            event,
            Dialect::Envelope,
            Envelopes::standard(),
            &mut out,
            &mut StreamStats::default(),
            &mut EventChecks::default(),
        );
        let pieces: Vec<&[u8]> = out.iter().map(|p| p.as_ref()).collect();
        assert_eq!(
            pieces,
            [
                &b"event: e\n"[..],
                b"data: ",
                b"{\"id\":\"a\"}",
                b"\nid: 1\n\n"
            ]
        );
        // Every piece but the static prefix is a slice of the upstream's chunk.
        let inside = |p: &Bytes| chunk.as_ptr_range().contains(&p.as_ptr());
        assert!(inside(&out[0]) && !inside(&out[1]) && inside(&out[2]) && inside(&out[3]));
    }

    #[test]
    fn template_events_are_wrapped_from_startup_pieces() {
        use crate::translate::template::{Preset, SideFlags};
        let side = |preset| SideFlags {
            preset: Some(preset),
            ..SideFlags::default()
        };
        let envelopes =
            Envelopes::build(&side(Preset::Jsend), &side(Preset::CodeMsgData), true).unwrap();
        let run_with = |mode: EventMode, chunk: &Bytes| {
            let mut framer = SseFramer::new(1 << 20);
            framer.push(chunk.clone());
            let event = framer.next_event().unwrap().unwrap();
            let mut out = VecDeque::new();
            let kind = mode.apply(
                event,
                Dialect::Envelope,
                envelopes,
                &mut out,
                &mut StreamStats::default(),
                &mut EventChecks::default(),
            );
            (out, kind)
        };
        // Bare → JSend: the prefix and the close come from the template, the payload is a
        // slice of the upstream's chunk.
        let chunk = Bytes::from_static(b"data: {\"id\":\"a\"}\n\n");
        let (out, kind) = run_with(EventMode::Wrap, &chunk);
        let pieces: Vec<&[u8]> = out.iter().map(|p| p.as_ref()).collect();
        assert_eq!(
            pieces,
            [
                &b"data: {\"status\":\"success\",\"data\":"[..],
                b"{\"id\":\"a\"}",
                b"}\n\n"
            ]
        );
        assert_eq!(kind, EventKind::Normal);
        assert!(chunk.as_ptr_range().contains(&out[1].as_ptr()));
        // The same pieces for every event: no allocation per event.
        let (again, _) = run_with(EventMode::Wrap, &chunk);
        assert_eq!(again[0].as_ptr(), out[0].as_ptr());
        assert_eq!(again[2].as_ptr(), out[2].as_ptr());
        // code-msg-data → JSend, other lines kept.
        let chunk = Bytes::from_static(
            b"id: 7\ndata: {\"code\":\"0\",\"msg\":\"success\",\"data\":[1]}\r\n\r\n",
        );
        let (out, kind) = run_with(EventMode::Rewrap, &chunk);
        let bytes: Vec<u8> = out.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "id: 7\ndata: {\"status\":\"success\",\"data\":[1]}\r\n\r\n"
        );
        assert_eq!(kind, EventKind::Normal);
        let chunk = Bytes::from_static(b"data: {\"code\":401,\"msg\":\"no\",\"data\":null}\n\n");
        let (out, kind) = run_with(EventMode::Rewrap, &chunk);
        let bytes: Vec<u8> = out.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "data: {\"status\":\"fail\",\"data\":{\"message\":\"no\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"401\"}}\n\n"
        );
        assert_eq!(kind, EventKind::Error);
        assert_eq!(
            EventMode::select_with(
                Dialect::Envelope,
                Dialect::Envelope,
                StreamEnvelope::Bare,
                envelopes
            ),
            EventMode::Rewrap
        );
        assert_eq!(
            EventMode::Rewrap.error_form(Dialect::Envelope, Dialect::Envelope),
            Dialect::Envelope
        );
    }

    #[test]
    fn passthru_notices_errors_without_touching_bytes() {
        let input: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\"\"}}]}\r\n\r\ndata: {\"error\":{\"message\":\"x\"}}\n\n";
        let (out, kinds) = run(EventMode::Passthru, Dialect::Bare, input);
        assert_eq!(out.as_bytes(), input);
        assert_eq!(kinds, [EventKind::Normal, EventKind::Error]);
    }

    /// The stats of `input` run through `mode`.
    fn stats(mode: EventMode, upstream: Dialect, input: &[u8]) -> StreamStats {
        let mut framer = SseFramer::new(1 << 20);
        framer.push(Bytes::copy_from_slice(input));
        let (mut out, mut stats) = (VecDeque::new(), StreamStats::default());
        let mut checks = EventChecks::default();
        while let Ok(Some(event)) = framer.next_event() {
            let standard = Envelopes::standard();
            mode.apply(event, upstream, standard, &mut out, &mut stats, &mut checks);
        }
        stats
    }

    #[test]
    fn stats_count_events_the_first_token_and_the_usage() {
        let usage = crate::translate::usage::Usage {
            prompt: Some(19),
            completion: Some(10),
            cached_prompt: Some(0),
            reasoning: Some(0),
        };
        let bare: &[u8] = include_bytes!("../../../fixtures/bare/chat_completion_stream_usage.sse");
        for mode in [EventMode::Passthru, EventMode::Wrap] {
            let mut stats = stats(mode, Dialect::Bare, bare);
            // Role chunk, 10 content chunks, the finish chunk, the usage chunk, [DONE].
            assert_eq!(stats.events, 14, "{mode:?}");
            assert!(stats.first_token().is_some());
            assert_eq!(
                stats.report.as_ref(),
                Some(&UsageReport {
                    model: Some("gpt-4o-mini-2024-07-18".into()),
                    usage: Some(usage),
                })
            );
        }
        // Wrapped events, unwrapped or passed; usage twice is summed.
        let wrapped = b"data: {\"success\":true,\"code\":\"200\",\"message\":\"successful\",\"data\":{\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":2}}}\n\n: ping\n\ndata: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n";
        for mode in [EventMode::Passthru, EventMode::Unwrap] {
            let mut stats = stats(mode, Dialect::Envelope, wrapped);
            assert_eq!(stats.events, 2, "{mode:?}");
            assert_eq!(stats.first_token(), None);
            let report = stats.report.unwrap();
            assert_eq!(report.model.as_deref(), Some("m"));
            assert_eq!(report.usage.unwrap().prompt, Some(5));
        }
    }

    #[test]
    fn stats_read_the_payload_of_another_envelope() {
        use crate::translate::template::{ErrorTemplate, SideFlags, SuccessTemplate};
        let success = SuccessTemplate::parse(r#"{"ok":true,"result":$data}"#).unwrap();
        let error = ErrorTemplate::parse(r#"{"ok":false,"msg":$message}"#).unwrap();
        let envelopes = Envelopes::build(
            &SideFlags {
                success: Some(&success),
                error: Some(&error),
                ..SideFlags::default()
            },
            &SideFlags::default(),
            true,
        )
        .unwrap();
        let input = b"data: {\"ok\":true,\"result\":{\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}}\n\ndata: {\"ok\":true,\"result\":{\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}}\n\n";
        for mode in [EventMode::Passthru, EventMode::Unwrap] {
            let mut framer = SseFramer::new(1 << 20);
            framer.push(Bytes::from_static(input));
            let (mut out, mut stats) = (VecDeque::new(), StreamStats::default());
            let mut checks = EventChecks::default();
            while let Ok(Some(event)) = framer.next_event() {
                mode.apply(
                    event,
                    Dialect::Envelope,
                    envelopes,
                    &mut out,
                    &mut stats,
                    &mut checks,
                );
            }
            assert_eq!(stats.events, 2, "{mode:?}");
            assert!(stats.first_token().is_some(), "{mode:?}");
            let report = stats.report.unwrap();
            assert_eq!(report.model.as_deref(), Some("m"));
            let usage = report.usage.unwrap();
            assert_eq!((usage.prompt, usage.completion), (Some(2), Some(1)));
        }
    }

    /// What [`bare_event`] must say: the two checks it stands for, one after the other.
    fn bare_oracle(data: &[u8]) -> BareEvent {
        if is_bare_error(data) {
            BareEvent::Error
        } else if envelope::is_json(data) {
            BareEvent::Json
        } else {
            BareEvent::NotJson
        }
    }

    #[test]
    fn bare_events_are_read_in_one_pass_as_the_two_checks_read_them() {
        use BareEvent::{Error, Json, NotJson};
        let cases: [(&[u8], BareEvent); 19] = [
            (br#"{"error":{"message":"m"}}"#, Error),
            (br#" {"id":"c","error":"x"} "#, Error),
            (br#"{"choices":[{"delta":{"content":"\"error\""}}]}"#, Json),
            (br#"{"choices":[],"x":{"error":{}}}"#, Json),
            // null is no error; named twice, serde's probe refuses it.
            (br#"{"error":null}"#, Json),
            (br#"{"error":{},"error":{}}"#, Json),
            (br#"{"error":null,"error":{}}"#, Json),
            // Names with escapes are decoded by serde, but only searched for as written.
            (br#"{"\u0065rror":{},"x":["error"]}"#, Error),
            (br#"{"\u0065rror":{}}"#, Json),
            (br#"{"\ud800":1,"error":{}}"#, Json),
            // Shorter names hold only two-byte escapes, which serde decodes.
            (br#"{"\n":1,"error":{}}"#, Error),
            (br#"{"\/\"":{},"error":null}"#, Json),
            // Invalid UTF-8 in a value: not JSON, but serde's probe reads it as an error.
            (b"{\"error\":{\"message\":\"\xff\"}}", Error),
            (b"{\"x\":\"\xff\"}", NotJson),
            (br#"{"error":{}} x"#, NotJson),
            (br#"[{"error":{}}]"#, Json),
            // Form feed is no JSON whitespace, to serde either.
            (b"\x0c{\"error\":{}}", NotJson),
            (b"data", NotJson),
            (b"", NotJson),
        ];
        // Each case alone, and all of them in turn as the events of one stream (each check
        // resumed where it stops matching the case before).
        let mut stream = EventChecks::default();
        for (data, expected) in cases {
            let shown = String::from_utf8_lossy(data);
            assert_eq!(bare_oracle(data), expected, "oracle on {shown}");
            let alone = bare_event(data, &mut EventChecks::default());
            assert_eq!(alone, expected, "bare_event on {shown}");
            let in_turn = bare_event(data, &mut stream);
            assert_eq!(in_turn, expected, "bare_event in a stream on {shown}");
        }
    }

    /// Chunks of members an error event or a plain chunk may have, names with escapes and
    /// values with invalid UTF-8 among them.
    fn bare_chunk() -> impl Strategy<Value = Vec<u8>> {
        let name = prop::sample::select(vec![
            "error",
            "error",
            "id",
            "choices",
            "\\u0065rror",
            "\\ud800",
            "err\\\"or",
            "",
        ]);
        let value = prop::sample::select(vec![
            &b"null"[..],
            b"{}",
            b"{\"message\":\"m\"}",
            b"\"error\"",
            b"[\"error\"]",
            b"1",
            b"\"\xff\"",
            b"{\"error\":{}}",
            b"\"\\\"error\\\"\"",
        ]);
        prop::collection::vec((name, value), 0..4).prop_map(|members| {
            let members: Vec<Vec<u8>> = members
                .into_iter()
                .map(|(name, value)| [b"\"", name.as_bytes(), b"\":", value].concat())
                .collect();
            [b"{".as_slice(), &members.join(&b","[..]), b"}"].concat()
        })
    }

    proptest! {
        #[test]
        fn bare_event_agrees_with_the_two_checks(
            data in bare_chunk(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 0..3),
        ) {
            let before = data.clone();
            let mut data = data;
            for (at, byte, how) in edits {
                let len = data.len();
                match how {
                    0 if len > 0 => data[at % len] = byte,
                    1 => data.insert(at % (len + 1), byte),
                    _ if len > 0 => { data.remove(at % len); }
                    _ => {}
                }
            }
            let expected = bare_oracle(&data);
            prop_assert_eq!(bare_event(&data, &mut EventChecks::default()), expected, "{:?}", String::from_utf8_lossy(&data));
            // After the unedited chunk: checked from where the two stop matching.
            let mut stream = EventChecks::default();
            // Twice: the first event of a stream is checked as alone.
            bare_event(&before, &mut stream);
            bare_event(&before, &mut stream);
            prop_assert_eq!(bare_event(&data, &mut stream), expected, "{:?} after {:?}", String::from_utf8_lossy(&data), String::from_utf8_lossy(&before));
        }
    }

    #[test]
    fn usage_is_looked_for_after_the_last_array() {
        for (data, candidate) in [
            (r#"{"choices":[],"usage":{"prompt_tokens":1}}"#, true),
            (r#"{"usage":{"prompt_tokens":1}}"#, true),
            (
                r#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#,
                false,
            ),
            (
                r#"{"choices":[{"delta":{"content":"\"usage\": 1"}}]}"#,
                false,
            ),
            // Documented limit: usage before the chunk's last array is not looked at.
            (r#"{"usage":{"prompt_tokens":1},"choices":[]}"#, false),
        ] {
            assert_eq!(usage_candidate(data.as_bytes()), candidate, "{data}");
        }
        let long = format!(
            r#"{{"choices":[],"usage":{{"prompt_tokens":1}},"pad":"{}"}}"#,
            "x".repeat(100)
        );
        assert!(usage_candidate(long.as_bytes()));
    }
}
