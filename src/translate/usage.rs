//! What a response says it cost: its `usage` object and its `model`, found without copying
//! or re-serialising the body.
//!
//! [`UsageScan`] reads a JSON body as it goes by, frame by frame: a small fixed state machine
//! (a bit per nesting level for the first 64 levels, the member names on the path down to
//! `usage.*_details.*`, and at most [`MODEL_RAW_BYTES`] of the `model` string), linear in the
//! body and blind to how it is cut into frames. It looks only at the top-level `model` and
//! `usage` members (inside `data` for an envelope, or inside the member where a custom
//! envelope's template puts `$data`): a `"usage"` inside a string or inside a nested object is
//! not the response's usage. A container that cannot hold either (an array, or an object under
//! another name, like `choices`) is skipped: only its brackets and its strings' ends are looked
//! for (a string's closing quote by its quotes alone: an escape matters there only where it is
//! a quote), with a search rather than a step per byte. It does not validate the JSON; it
//! reports only a body whose top-level object closed and had nothing but whitespace after it,
//! and nothing for a standard envelope that says `"success":false` (an error, whatever its
//! status). Member names are matched as written: a name spelt with escapes (`"us\u0061ge"`)
//! is not recognised, which no API does.
//!
//! Bodies the proxy reads whole anyway (translated ones) and single stream events use the same
//! rules over the whole slice ([`UsageReport::of`], [`UsageReport::of_json`]), so every route
//! agrees on what counts. A bare pass-through body that comes in one frame is read as the whole
//! ones are ([`UsageScan::feed_last`]): a JSON object's two members where they lie, with no
//! scan; one that is no JSON object is scanned.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::Bytes;

use crate::translate::{byte_search, json_check};

/// The longest model name kept, in bytes (cut on a character boundary).
pub(crate) const MAX_MODEL_BYTES: usize = 128;
/// The longest `model` string read as written (escapes included): enough for
/// [`MAX_MODEL_BYTES`] of any characters spelt as `\u` escapes.
const MODEL_RAW_BYTES: usize = 512;
/// Member names longer than this are none of ours.
const KEY_BYTES: usize = 32;
/// The path depth that matters: `data.usage.completion_tokens_details.reasoning_tokens`.
const PATH: usize = 4;

/// Token counts from a `usage` object; a count the object does not carry is `None` (unknown
/// is not zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    /// `prompt_tokens_details.cached_tokens`
    pub cached_prompt: Option<u64>,
    /// `completion_tokens_details.reasoning_tokens`
    pub reasoning: Option<u64>,
}

impl Usage {
    /// The counts by their metric `kind`, in a fixed order.
    pub fn kinds(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("prompt", self.prompt),
            ("completion", self.completion),
            ("cached_prompt", self.cached_prompt),
            ("reasoning", self.reasoning),
        ]
    }

    /// Adds `other`'s counts (a stream that reports usage more than once); unknown stays
    /// unknown only when both are.
    pub fn add(&mut self, other: &Usage) {
        fn sum(a: &mut Option<u64>, b: Option<u64>) {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0).saturating_add(b));
            }
        }
        sum(&mut self.prompt, other.prompt);
        sum(&mut self.completion, other.completion);
        sum(&mut self.cached_prompt, other.cached_prompt);
        sum(&mut self.reasoning, other.reasoning);
    }
}

/// A response's model and usage, each when it has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// At most [`MAX_MODEL_BYTES`] bytes.
    pub model: Option<String>,
    pub usage: Option<Usage>,
}

impl UsageReport {
    /// The report of a whole JSON body (`envelope`: look inside its `data`).
    pub fn of(body: &[u8], envelope: bool) -> Option<UsageReport> {
        let mut scan = UsageScan::new(envelope);
        scan.feed(body);
        scan.finish()
    }

    /// A bare body read whole, checked: `None` when it is not one JSON text (as
    /// [`json_check::is_json`] decides), else what [`UsageReport::of`] reads in it. One pass
    /// over the body checks it and hands the top-level `model` and `usage` members over as it
    /// goes, read where they lie; the rest of the body (its `choices`) is not read again.
    pub fn of_json(body: &[u8]) -> Option<Option<UsageReport>> {
        if body.trim_ascii_start().first() != Some(&b'{') {
            // Not an object: JSON or not, it has no report.
            return json_check::is_json(body).then_some(None);
        }
        let mut members = ReportMembers::new();
        let json = json_check::object_members(body, |key, value| {
            members.member([key], [body.get(value).unwrap_or_default()]);
        });
        json.then_some(Some(members.report))
    }

    /// [`UsageReport::of_json`] of a bare body read in pieces, not joined: `None` also when
    /// [`json_check::is_json_across`] cannot tell (a cut with over 64 bytes of a number before
    /// it), and then only the joined body can. The members' names and values are read in the
    /// pieces they lie in.
    pub fn of_json_across(pieces: &[Bytes]) -> Option<Option<UsageReport>> {
        let first = pieces.iter().find_map(|p| p.trim_ascii_start().first());
        if first != Some(&b'{') {
            return json_check::is_json_across(pieces).then_some(None);
        }
        let mut members = ReportMembers::new();
        let json = json_check::object_members_across(pieces, |key, value| {
            members.member(key.parts(), value.parts());
        });
        json.then_some(Some(members.report))
    }
}

/// A bare body's top-level `model` and `usage` members, handed over one by one as a check
/// reads them (so each value is JSON), read where they lie as [`UsageScan`] reads them: a later
/// member of the same name counts over an earlier one, a `usage` object starts its counts
/// afresh, a count that is no plain integer (`-1`, `1.5`, `null`) is unknown, and a value of
/// another kind (a `model` that is no string, a count that is a string or a container) leaves
/// what was read before. (Feeding these members to a scanner, as this did, cost ~30
/// instructions a byte of them: more than the check of the whole body.)
struct ReportMembers {
    report: UsageReport,
}

impl ReportMembers {
    fn new() -> Self {
        Self {
            report: UsageReport::default(),
        }
    }

    /// One member: the bytes of its name as written (names are compared as written), and of
    /// its value.
    fn member<'v>(
        &mut self,
        key: impl IntoIterator<Item = &'v [u8]> + Clone,
        value: impl IntoIterator<Item = &'v [u8]>,
    ) {
        let model = spells(key.clone(), b"model");
        if !model && !spells(key, b"usage") {
            return;
        }
        let value = joined(value);
        if model {
            // The string's contents as written, at most as much as the scanner keeps.
            if let Some(raw) = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
            {
                let kept = raw.get(..MODEL_RAW_BYTES).unwrap_or(raw);
                self.report.model = Some(model_name(kept.to_vec()));
            }
        } else if value.first() == Some(&b'{') {
            self.report.usage = Some(usage_object(&value));
        }
    }
}

/// The bytes of `parts` in one slice: the only part as it is, several copied together (a value
/// cut by the end of a read).
fn joined<'v>(parts: impl IntoIterator<Item = &'v [u8]>) -> Cow<'v, [u8]> {
    let mut parts = parts.into_iter();
    let first = parts.next().unwrap_or_default();
    match parts.next() {
        None => Cow::Borrowed(first),
        Some(second) => {
            let mut all = [first, second].concat();
            parts.for_each(|part| all.extend_from_slice(part));
            Cow::Owned(all)
        }
    }
}

/// The counts of a `usage` object (JSON), as [`UsageScan`] reads them.
fn usage_object(object: &[u8]) -> Usage {
    let mut usage = Usage::default();
    json_check::object_members(object, |key, value| {
        let value = object.get(value).unwrap_or_default();
        match key {
            b"prompt_tokens" => count(&mut usage.prompt, value),
            b"completion_tokens" => count(&mut usage.completion, value),
            b"prompt_tokens_details" => detail(value, b"cached_tokens", &mut usage.cached_prompt),
            b"completion_tokens_details" => {
                detail(value, b"reasoning_tokens", &mut usage.reasoning)
            }
            _ => {}
        }
    });
    usage
}

/// The count named `name` in `object`, a `*_details` value, if that is an object.
fn detail(object: &[u8], name: &[u8], slot: &mut Option<u64>) {
    if object.first() == Some(&b'{') {
        json_check::object_members(object, |key, value| {
            if key == name {
                count(slot, object.get(value).unwrap_or_default());
            }
        });
    }
}

/// A count's value (JSON) into its slot: a plain integer that fits, else unknown; a string or
/// a container leaves the slot as it was.
fn count(slot: &mut Option<u64>, value: &[u8]) {
    if matches!(value.first(), None | Some(b'"' | b'{' | b'[')) {
        return;
    }
    *slot = value.iter().try_fold(0u64, |n, &byte| {
        byte.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(byte - b'0')))
            .flatten()
    });
}

/// Whether `parts`, joined, are `word`.
fn spells<'p>(parts: impl IntoIterator<Item = &'p [u8]>, word: &[u8]) -> bool {
    let mut rest = word;
    for part in parts {
        match rest.strip_prefix(part) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// True when `data` may carry a non-null `usage` member: some `"usage"` in it is not followed
/// by `: null`. One fast search per event; only candidates are scanned.
pub(crate) fn may_carry_usage(data: &[u8]) -> bool {
    static USAGE: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    USAGE
        .find_iter(data)
        .any(|at| not_null(data.get(at + 7..).unwrap_or_default()))
}

/// What follows a `"usage"`: true unless it is `: null` (a member whose value is null).
fn not_null(rest: &[u8]) -> bool {
    let Some(rest) = rest.trim_ascii_start().strip_prefix(b":") else {
        return true;
    };
    !rest.trim_ascii_start().starts_with(b"null")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Other,
    Data,
    Success,
    Model,
    Usage,
    Prompt,
    Completion,
    PromptDetails,
    CompletionDetails,
    Cached,
    Reasoning,
}

fn key(name: &[u8]) -> Key {
    match name {
        b"data" => Key::Data,
        b"success" => Key::Success,
        b"model" => Key::Model,
        b"usage" => Key::Usage,
        b"prompt_tokens" => Key::Prompt,
        b"completion_tokens" => Key::Completion,
        b"prompt_tokens_details" => Key::PromptDetails,
        b"completion_tokens_details" => Key::CompletionDetails,
        b"cached_tokens" => Key::Cached,
        b"reasoning_tokens" => Key::Reasoning,
        _ => Key::Other,
    }
}

/// The first `"` or `\\` in `bytes`. Most strings are short (names, ids, a model's name): their
/// first sixteen bytes are looked at as two words, without the setup of a vector search, which
/// cost more than the search itself; a longer string goes on with [`byte_search`].
#[inline(always)]
fn quote_or_backslash(bytes: &[u8]) -> Option<usize> {
    let Some(chunk) = bytes.first_chunk::<16>() else {
        // Fewer than sixteen bytes: a byte at a time.
        return bytes.iter().position(|&b| b == b'"' || b == b'\\');
    };
    let both = u128::from_le_bytes(*chunk);
    let low = has_byte(both as u64, b'"') | has_byte(both as u64, b'\\');
    if low != 0 {
        return Some(low.trailing_zeros() as usize / 8);
    }
    let high = has_byte((both >> 64) as u64, b'"') | has_byte((both >> 64) as u64, b'\\');
    if high != 0 {
        return Some(8 + high.trailing_zeros() as usize / 8);
    }
    byte_search::quote_or_backslash(bytes.get(16..).unwrap_or_default()).map(|at| at + 16)
}

/// Where the string that `bytes` continues ends: `Ok` with its closing quote's offset, or
/// `Err(open_escape)` when `bytes` ends first, `open_escape` when its last byte opens an escape.
/// `bytes` starts where no escape is open (after the opening quote, an escape, or a piece's end
/// outside one). Only quotes are looked for, for a string whose text is not kept: an escape
/// matters there only where it is a quote, and a quote after an odd run of backslashes is
/// text. (A search for quotes and backslashes both stopped at every escape, and real answers
/// have one a line, markdown's line breaks: about 100 instructions each.) Each backslash is
/// counted once at most: linear.
fn closing_quote(bytes: &[u8]) -> Result<usize, bool> {
    let odd_run_before = |from: usize, at: usize| {
        let run = bytes.get(from..at).unwrap_or_default();
        run.iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
    };
    let mut from = 0;
    while let Some(found) = first_quote(bytes.get(from..).unwrap_or_default()) {
        let at = from + found;
        if !odd_run_before(from, at) {
            return Ok(at);
        }
        from = at + 1;
    }
    Err(odd_run_before(from, bytes.len()))
}

/// The first `"` in `bytes`: the first sixteen bytes as two words, as in
/// [`quote_or_backslash`], then [`byte_search`].
#[inline(always)]
fn first_quote(bytes: &[u8]) -> Option<usize> {
    let Some(chunk) = bytes.first_chunk::<16>() else {
        return bytes.iter().position(|&b| b == b'"');
    };
    let both = u128::from_le_bytes(*chunk);
    let low = has_byte(both as u64, b'"');
    if low != 0 {
        return Some(low.trailing_zeros() as usize / 8);
    }
    let high = has_byte((both >> 64) as u64, b'"');
    if high != 0 {
        return Some(8 + high.trailing_zeros() as usize / 8);
    }
    byte_search::quote(bytes.get(16..).unwrap_or_default()).map(|at| at + 16)
}

/// The high bit of each byte of `word` that is `byte`: exact at the lowest one (a borrow
/// flags only bytes above a byte that matched), which is the one [`quote_or_backslash`] takes.
#[inline(always)]
fn has_byte(word: u64, byte: u8) -> u64 {
    const ONES: u64 = u64::MAX / 0xff;
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & (ONES << 7)
}

/// True for the bytes of a number or a literal (`true`, `false`, `null`).
fn is_scalar(byte: u8) -> bool {
    const SCALAR: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] =
                matches!(b as u8, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'+' | b'.');
            b += 1;
        }
        table
    };
    SCALAR[usize::from(byte)]
}

/// What the value being read is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    None,
    /// An envelope's `success`.
    Success,
    Model,
    Usage,
    Prompt,
    Completion,
    Cached,
    Reasoning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    Key,
    Model,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between tokens.
    Between,
    /// Inside a string; `escaped`: the previous byte was a backslash.
    InString { kind: Str, escaped: bool },
    /// Inside a number or literal; `number` holds the integer read so far when it is one of
    /// our counts and still a plain non-negative integer.
    InScalar { target: Target, number: Option<u64> },
    /// Inside a container that cannot hold a member we look for (see
    /// [`UsageScan::may_hold_ours`]): only its end is looked for, strings skipped whole.
    /// `nested`: containers open inside it; `in_string`/`escaped` as for a string.
    Skipping {
        nested: u32,
        in_string: bool,
        escaped: bool,
    },
    /// The top-level object closed.
    Done,
    /// Not an object, or broken: nothing to report.
    Failed,
}

/// The streaming scanner: see the module docs.
pub struct UsageScan {
    /// The envelope member that holds the payload; `None`: a bare body.
    payload: Option<&'static [u8]>,
    /// The standard envelope: its `"success":false` means an error.
    reads_success: bool,
    state: State,
    depth: u32,
    /// Bit `d - 1` set: the container at depth `d` (≤ 64) is an array.
    arrays: u64,
    /// The current member name at depths 1..=PATH.
    keys: [Key; PATH],
    /// After `{` or `,` in an object: the next string is a member name.
    expect_key: bool,
    key: [u8; KEY_BYTES],
    /// Bytes of the member name being read; more than `KEY_BYTES`: none of ours.
    key_len: usize,
    model_raw: Vec<u8>,
    report: UsageReport,
    /// An envelope that says `"success":false`.
    failure: bool,
    /// Containers that cannot hold ours are skipped (off only to test that skipping changes
    /// nothing).
    skips: bool,
    /// The body was read whole by [`UsageReport::of_json`], not scanned (for tests).
    #[cfg(test)]
    read_whole: bool,
}

impl UsageScan {
    /// A bare body's scan, or (`envelope`) the standard envelope's: inside `data`, and nothing
    /// for one that says `"success":false`.
    pub fn new(envelope: bool) -> Self {
        Self::reading(envelope.then_some(b"data"), envelope)
    }

    /// A custom envelope's scan: inside its `payload` member (where its success template puts
    /// `$data`). Its failures are told by its discriminator, which this scan does not read; a
    /// failure carries no payload in any template seen. A name longer than [`KEY_BYTES`]
    /// matches nothing (no usage is read).
    pub fn in_payload(payload: &'static [u8]) -> Self {
        Self::reading(Some(payload), false)
    }

    fn reading(payload: Option<&'static [u8]>, reads_success: bool) -> Self {
        Self {
            payload,
            reads_success,
            state: State::Between,
            depth: 0,
            arrays: 0,
            keys: [Key::Other; PATH],
            expect_key: false,
            key: [0; KEY_BYTES],
            key_len: 0,
            model_raw: Vec::new(),
            report: UsageReport::default(),
            failure: false,
            skips: true,
            #[cfg(test)]
            read_whole: false,
        }
    }

    /// Reads the last piece of the body. When it is also the first (nothing but whitespace
    /// came before) and the scan is a bare body's, a JSON object's `model` and `usage` are read
    /// where they lie ([`UsageReport::of_json`]: what this scan reads, for a sixth less on the
    /// benchmark's kilobyte); anything else, or a body that is no JSON object, is scanned.
    pub fn feed_last(&mut self, body: &[u8]) {
        let fresh = self.state == State::Between && self.depth == 0;
        if fresh && self.payload.is_none() && body.trim_ascii_start().first() == Some(&b'{') {
            if let Some(Some(report)) = UsageReport::of_json(body) {
                self.report = report;
                self.state = State::Done;
                #[cfg(test)]
                {
                    self.read_whole = true;
                }
                return;
            }
        }
        self.feed(body);
    }

    /// Reads the next piece of the body.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Done => {
                    if !bytes.trim_ascii().is_empty() {
                        self.state = State::Failed;
                    }
                    return;
                }
                State::Failed => return,
                State::InString { kind, escaped } => {
                    let mut at = 0;
                    if escaped {
                        self.take(kind, &bytes[..1]);
                        at = 1;
                    }
                    // The rest of the string is skipped in one search.
                    match quote_or_backslash(&bytes[at..]) {
                        None => {
                            self.take(kind, &bytes[at..]);
                            self.state = State::InString {
                                kind,
                                escaped: false,
                            };
                            return;
                        }
                        Some(found) => {
                            let end = at + found;
                            self.take(kind, &bytes[at..end]);
                            if bytes[end] == b'\\' {
                                self.take(kind, &bytes[end..=end]);
                                self.state = State::InString {
                                    kind,
                                    escaped: true,
                                };
                            } else {
                                self.string_ended(kind);
                            }
                            bytes = &bytes[end + 1..];
                        }
                    }
                }
                State::InScalar { target, number } => {
                    // The rest of the number or literal in one run: most of a body's bytes
                    // outside strings are in one.
                    let run = bytes
                        .iter()
                        .position(|&b| !is_scalar(b))
                        .unwrap_or(bytes.len());
                    let (scalar, rest) = bytes.split_at(run);
                    let number = number.and_then(|n| {
                        scalar.iter().try_fold(n, |n, &byte| {
                            byte.is_ascii_digit()
                                .then(|| n.checked_mul(10)?.checked_add(u64::from(byte - b'0')))
                                .flatten()
                        })
                    });
                    self.state = State::InScalar { target, number };
                    bytes = rest;
                    if let Some((&byte, rest)) = bytes.split_first() {
                        bytes = rest;
                        self.byte(byte);
                    }
                }
                State::Between => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    self.byte(byte);
                }
                State::Skipping {
                    nested,
                    in_string,
                    escaped,
                } => bytes = self.skip(bytes, nested, in_string, escaped),
            }
        }
    }

    /// Reads `bytes` inside a skipped container: a search for the next quote or bracket, and
    /// for the end of each string, instead of a step per byte. Returns what follows the
    /// container's end (its closing bracket read as usual), or nothing when it goes on.
    fn skip<'a>(
        &mut self,
        mut bytes: &'a [u8],
        mut nested: u32,
        mut in_string: bool,
        mut escaped: bool,
    ) -> &'a [u8] {
        /// The bytes that matter outside strings in a skipped container.
        const STRUCTURE: [bool; 256] = {
            let mut table = [false; 256];
            table[b'"' as usize] = true;
            table[b'{' as usize] = true;
            table[b'[' as usize] = true;
            table[b'}' as usize] = true;
            table[b']' as usize] = true;
            table
        };
        loop {
            if in_string {
                if escaped {
                    let Some(rest) = bytes.get(1..) else { break };
                    bytes = rest;
                    escaped = false;
                }
                match closing_quote(bytes) {
                    Ok(at) => {
                        in_string = false;
                        bytes = bytes.get(at + 1..).unwrap_or_default();
                    }
                    Err(open_escape) => {
                        escaped = open_escape;
                        bytes = &[];
                        break;
                    }
                }
            } else {
                let Some(at) = bytes.iter().position(|&b| STRUCTURE[usize::from(b)]) else {
                    bytes = &[];
                    break;
                };
                let byte = bytes[at];
                bytes = &bytes[at + 1..];
                match byte {
                    b'"' => in_string = true,
                    b'{' | b'[' => nested = nested.saturating_add(1),
                    _ if nested == 0 => {
                        // The skipped container's own end.
                        self.state = State::Between;
                        self.byte(byte);
                        return bytes;
                    }
                    _ => nested -= 1,
                }
            }
        }
        self.state = State::Skipping {
            nested,
            in_string,
            escaped,
        };
        bytes
    }

    /// The report, if the body was a whole object.
    pub fn finish(self) -> Option<UsageReport> {
        (self.state == State::Done && !self.failure).then_some(self.report)
    }

    /// [`UsageScan::finish`] without giving up the scanner (its report is moved out).
    pub fn take_report(&mut self) -> Option<UsageReport> {
        (self.state == State::Done && !self.failure).then(|| std::mem::take(&mut self.report))
    }

    /// One byte outside any string.
    fn byte(&mut self, byte: u8) {
        let scalar = is_scalar(byte);
        if let State::InScalar { target, number } = self.state {
            if scalar {
                let number = match byte {
                    b'0'..=b'9' => number
                        .and_then(|n| n.checked_mul(10))
                        .and_then(|n| n.checked_add(u64::from(byte - b'0'))),
                    _ => None,
                };
                self.state = State::InScalar { target, number };
                return;
            }
            self.scalar_ended(target, number);
            self.state = State::Between;
        }
        if self.depth == 0 && byte != b'{' && !byte.is_ascii_whitespace() {
            self.state = State::Failed;
            return;
        }
        match byte {
            b'"' => {
                let kind = if self.expect_key {
                    self.key_len = 0;
                    Str::Key
                } else if self.target() == Target::Model {
                    self.model_raw.clear();
                    Str::Model
                } else {
                    Str::Other
                };
                self.state = State::InString {
                    kind,
                    escaped: false,
                };
            }
            b'{' | b'[' => {
                if byte == b'{' && self.target() == Target::Usage {
                    self.report.usage = Some(Usage::default());
                }
                self.depth += 1;
                let d = self.depth;
                if d <= 64 {
                    let bit = 1u64 << (d - 1);
                    if byte == b'[' {
                        self.arrays |= bit;
                    } else {
                        self.arrays &= !bit;
                    }
                }
                if let Some(key) = self.keys.get_mut(d as usize - 1) {
                    *key = Key::Other;
                }
                self.expect_key = byte == b'{';
                if self.skips && !self.may_hold_ours() {
                    self.state = State::Skipping {
                        nested: 0,
                        in_string: false,
                        escaped: false,
                    };
                }
            }
            b'}' | b']' => {
                self.expect_key = false;
                match self.depth {
                    0 => self.state = State::Failed,
                    1 => {
                        self.depth = 0;
                        self.state = State::Done;
                    }
                    _ => self.depth -= 1,
                }
            }
            b':' => self.expect_key = false,
            b',' => self.expect_key = self.in_object(),
            _ if scalar => {
                let target = self.target();
                if target == Target::Success {
                    self.failure = byte == b'f';
                }
                let number = match (target, byte) {
                    (
                        Target::Prompt | Target::Completion | Target::Cached | Target::Reasoning,
                        b'0'..=b'9',
                    ) => Some(u64::from(byte - b'0')),
                    _ => None,
                };
                self.state = State::InScalar { target, number };
            }
            _ => {}
        }
    }

    /// True when the container just opened (at `depth`) may hold a member we look for: every
    /// container down to it is an object and the member names on the way are a beginning of
    /// one of our paths (see [`UsageScan::target`]). The top-level object always may.
    fn may_hold_ours(&self) -> bool {
        let d = self.depth as usize;
        if d <= 1 {
            return true;
        }
        if d > PATH || self.arrays & ((1 << d) - 1) != 0 {
            return false;
        }
        // The names of the members whose values are the containers from depth 2 to here.
        let path = if self.payload.is_some() {
            if self.keys[0] != Key::Data {
                return false;
            }
            &self.keys[1..d - 1]
        } else {
            &self.keys[..d - 1]
        };
        matches!(
            path,
            [] | [Key::Usage] | [Key::Usage, Key::PromptDetails | Key::CompletionDetails]
        )
    }

    fn in_object(&self) -> bool {
        let d = self.depth;
        d > 64 || (d >= 1 && self.arrays & (1 << (d - 1)) == 0)
    }

    /// What the value starting now is to us: the containers down to here must all be objects,
    /// and the member names the path we look for.
    fn target(&self) -> Target {
        let d = self.depth as usize;
        if d == 0 || d > PATH || self.arrays & ((1 << d) - 1) != 0 {
            return Target::None;
        }
        let path = if self.payload.is_some() {
            if d == 1 && self.keys[0] == Key::Success {
                return Target::Success;
            }
            if self.keys[0] != Key::Data {
                return Target::None;
            }
            &self.keys[1..d]
        } else {
            &self.keys[..d]
        };
        match path {
            [Key::Model] => Target::Model,
            [Key::Usage] => Target::Usage,
            [Key::Usage, Key::Prompt] => Target::Prompt,
            [Key::Usage, Key::Completion] => Target::Completion,
            [Key::Usage, Key::PromptDetails, Key::Cached] => Target::Cached,
            [Key::Usage, Key::CompletionDetails, Key::Reasoning] => Target::Reasoning,
            _ => Target::None,
        }
    }

    /// Keeps the string bytes we need (bounded).
    fn take(&mut self, kind: Str, bytes: &[u8]) {
        match kind {
            Str::Other => {}
            Str::Key => {
                if let Some(room) = self.key.get_mut(self.key_len..) {
                    let n = room.len().min(bytes.len());
                    room[..n].copy_from_slice(&bytes[..n]);
                }
                self.key_len = self.key_len.saturating_add(bytes.len());
            }
            Str::Model => {
                let room = MODEL_RAW_BYTES.saturating_sub(self.model_raw.len());
                self.model_raw
                    .extend_from_slice(&bytes[..room.min(bytes.len())]);
            }
        }
    }

    fn string_ended(&mut self, kind: Str) {
        self.state = State::Between;
        match kind {
            Str::Other => {}
            Str::Key => {
                let d = self.depth as usize;
                let name = self.key.get(..self.key_len).unwrap_or_default();
                let kind = match self.payload {
                    // An envelope's own members: its payload, and its `success` if it is
                    // the standard one.
                    Some(payload) if d == 1 => {
                        if name == payload {
                            Key::Data
                        } else if self.reads_success && name == b"success" {
                            Key::Success
                        } else {
                            Key::Other
                        }
                    }
                    _ => key(name),
                };
                if let Some(slot) = self.keys.get_mut(d.wrapping_sub(1)) {
                    *slot = kind;
                }
            }
            Str::Model => {
                self.report.model = Some(model_name(std::mem::take(&mut self.model_raw)));
            }
        }
    }

    fn scalar_ended(&mut self, target: Target, number: Option<u64>) {
        let Some(usage) = self.report.usage.as_mut() else {
            return;
        };
        let slot = match target {
            Target::Prompt => &mut usage.prompt,
            Target::Completion => &mut usage.completion,
            Target::Cached => &mut usage.cached_prompt,
            Target::Reasoning => &mut usage.reasoning,
            _ => return,
        };
        *slot = number;
    }
}

/// A JSON string's contents (as written, maybe cut short) decoded, at most
/// [`MAX_MODEL_BYTES`] long. Stops at an escape it cannot read whole.
fn model_name(raw: Vec<u8>) -> String {
    // The usual name (short, UTF-8, no escape) is the buffer it was read into, as it is.
    let raw = if raw.len() <= MAX_MODEL_BYTES && memchr::memchr(b'\\', &raw).is_none() {
        match String::from_utf8(raw) {
            Ok(name) => return name,
            Err(error) => error.into_bytes(),
        }
    } else {
        raw
    };
    let mut out = String::new();
    let mut rest = raw.as_slice();
    while let Some((&byte, tail)) = rest.split_first() {
        let (ch, tail): (Option<char>, &[u8]) = if byte == b'\\' {
            match tail.split_first() {
                Some((b'u', hex)) => match unicode_escape(hex) {
                    Some((ch, tail)) => (Some(ch), tail),
                    None => break,
                },
                Some((&e, tail)) => {
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        _ => break,
                    };
                    (Some(ch), tail)
                }
                None => break,
            }
        } else {
            // A run of plain bytes up to the next escape, kept as UTF-8 (lossy if it is not).
            let end = memchr::memchr(b'\\', rest).unwrap_or(rest.len());
            out.push_str(&String::from_utf8_lossy(&rest[..end]));
            (None, &rest[end..])
        };
        if let Some(ch) = ch {
            out.push(ch);
        }
        rest = tail;
        if out.len() >= MAX_MODEL_BYTES {
            break;
        }
    }
    truncate(&mut out, MAX_MODEL_BYTES);
    out
}

/// `XXXX` (and a low surrogate's `\uXXXX` after a high one) after `\u`.
fn unicode_escape(hex: &[u8]) -> Option<(char, &[u8])> {
    let unit = |h: &[u8]| -> Option<u32> {
        let digits = std::str::from_utf8(h.get(..4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let first = unit(hex)?;
    let rest = &hex[4..];
    if (0xD800..0xDC00).contains(&first) {
        let low = rest.strip_prefix(b"\\u").and_then(unit);
        if let Some(low @ 0xDC00..0xE000) = low {
            let code = 0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00);
            return Some((char::from_u32(code)?, &rest[6..]));
        }
        return Some(('\u{FFFD}', rest));
    }
    Some((char::from_u32(first).unwrap_or('\u{FFFD}'), rest))
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &mut String, max: usize) {
    let len = cut(s, max).len();
    s.truncate(len);
}

/// The longest start of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BARE: &[u8] = include_bytes!("../../fixtures/bare/chat_completion.json");
    const ENVELOPE: &[u8] = include_bytes!("../../fixtures/envelope/chat_completion.json");

    fn full() -> Usage {
        Usage {
            prompt: Some(27),
            completion: Some(86),
            cached_prompt: Some(0),
            reasoning: Some(0),
        }
    }

    fn report(model: &str, usage: Option<Usage>) -> Option<UsageReport> {
        Some(UsageReport {
            model: Some(model.to_string()),
            usage,
        })
    }

    /// The body fed in the pieces cut at `cuts`.
    fn split(body: &[u8], envelope: bool, cuts: &[usize]) -> Option<UsageReport> {
        let mut scan = UsageScan::new(envelope);
        let mut at = 0;
        for &cut in cuts {
            scan.feed(&body[at..cut]);
            at = cut;
        }
        scan.feed(&body[at..]);
        scan.finish()
    }

    #[test]
    fn finds_usage_and_model_in_bare_and_envelope_bodies() {
        let expected = report("gpt-4o-mini-2024-07-18", Some(full()));
        assert_eq!(UsageReport::of(BARE, false), expected);
        assert_eq!(UsageReport::of(ENVELOPE, true), expected);
        // An envelope that failed reports nothing, whatever its data says.
        let failed = br#"{"success":false,"code":"500","message":"x","data":{"model":"m","usage":{"prompt_tokens":1}}}"#;
        assert_eq!(UsageReport::of(failed, true), None);
        assert_eq!(
            UsageReport::of(&failed[..], false),
            Some(UsageReport::default())
        );
        // The wrong shape finds nothing.
        assert_eq!(UsageReport::of(BARE, true), Some(UsageReport::default()));
        assert_eq!(
            UsageReport::of(ENVELOPE, false),
            Some(UsageReport::default())
        );
    }

    #[test]
    fn a_custom_envelope_is_read_inside_its_payload_member() {
        let bare = std::str::from_utf8(BARE).unwrap();
        // `data` and `success` are nothing special to it; its payload is under `result`.
        let body = format!(
            r#"{{"success":false,"data":{{"model":"decoy","usage":{{"prompt_tokens":9}}}},"ok":true,"result":{bare}}}"#
        );
        let expected = report("gpt-4o-mini-2024-07-18", Some(full()));
        let read = |cuts: &[usize]| {
            let mut scan = UsageScan::in_payload(b"result");
            let mut at = 0;
            for &cut in cuts {
                scan.feed(&body.as_bytes()[at..cut]);
                at = cut;
            }
            scan.feed(&body.as_bytes()[at..]);
            scan.finish()
        };
        for cut in 0..=body.len() {
            assert_eq!(read(&[cut]), expected, "cut at {cut}");
        }
        // The standard envelope's scan finds the decoy's failure, a bare one nothing at all.
        assert_eq!(UsageReport::of(body.as_bytes(), true), None);
        assert_eq!(
            UsageReport::of(body.as_bytes(), false),
            Some(UsageReport::default())
        );
        // A payload member nested deeper is not the payload.
        let nested = format!(r#"{{"meta":{{"result":{bare}}}}}"#);
        let mut scan = UsageScan::in_payload(b"result");
        scan.feed(nested.as_bytes());
        assert_eq!(scan.finish(), Some(UsageReport::default()));
    }

    #[test]
    fn every_cut_gives_the_same_result() {
        for (body, envelope) in [(BARE, false), (ENVELOPE, true)] {
            let whole = UsageReport::of(body, envelope);
            assert!(whole.as_ref().is_some_and(|r| r.usage.is_some()));
            for cut in 0..=body.len() {
                assert_eq!(split(body, envelope, &[cut]), whole, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_skipped_text_ends_at_the_first_quote_after_an_even_run_of_backslashes() {
        // Texts inside `choices` (skipped): quotes after odd runs of backslashes (text), the
        // closing quote after even ones, and escapes that are no quote. Cut anywhere, once and
        // twice, the scan reads the usage after them, and what a scan of every byte reads.
        let texts = [
            r#"a\"b"#,
            r#"\\\"b\\\\\"c"#,
            r#"x\\"#,
            r#"x\\\\"#,
            r#"\\\\\\"#,
            r#"line\nline\n\"quoted\"\t\u0022\\"#,
            r#"\"\"\"\\\\\""#,
            "",
        ];
        for text in texts {
            let body = format!(
                r#"{{"choices":[{{"message":{{"content":"{text}","role":"x"}}}}],"model":"m","usage":{{"prompt_tokens":7}}}}"#
            );
            let body = body.as_bytes();
            assert!(
                serde_json::from_slice::<serde_json::Value>(body).is_ok(),
                "{text}"
            );
            let expected = report(
                "m",
                Some(Usage {
                    prompt: Some(7),
                    ..Usage::default()
                }),
            );
            for first in 0..=body.len() {
                for second in first..=body.len() {
                    let cuts = [first, second];
                    assert_eq!(
                        split(body, false, &cuts),
                        expected,
                        "{text} cut at {cuts:?}"
                    );
                    let (skipping, stepping) = with_and_without_skipping(body, false, &cuts);
                    assert_eq!(skipping, stepping, "{text} cut at {cuts:?}");
                }
            }
        }
    }

    #[test]
    fn usage_in_strings_and_nested_objects_is_not_the_responses() {
        let body = br#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":5}","usage":{"prompt_tokens":7}}}],"x":{"usage":{"prompt_tokens":8}},"model":"m\"1","usage":{"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2,"prompt_tokens":9}}}"#;
        assert_eq!(
            UsageReport::of(body, false),
            report(
                "m\"1",
                Some(Usage {
                    completion: Some(3),
                    cached_prompt: Some(2),
                    ..Usage::default()
                })
            )
        );
    }

    #[test]
    fn absent_null_and_odd_counts_are_unknown() {
        assert_eq!(
            UsageReport::of(br#"{"model":"m","usage":null}"#, false),
            report("m", None)
        );
        assert_eq!(
            UsageReport::of(
                br#"{"usage":{"prompt_tokens":-1,"completion_tokens":1.5,"completion_tokens_details":{"reasoning_tokens":4}}}"#,
                false
            ),
            Some(UsageReport {
                model: None,
                usage: Some(Usage {
                    reasoning: Some(4),
                    ..Usage::default()
                })
            })
        );
        // Not a whole object: nothing.
        assert_eq!(
            UsageReport::of(br#"{"usage":{"prompt_tokens":1}"#, false),
            None
        );
        assert_eq!(UsageReport::of(br#"[{"usage":{}}]"#, false), None);
        assert_eq!(UsageReport::of(br#"{"model":"m"} x"#, false), None);
    }

    #[test]
    fn model_names_are_decoded_and_capped() {
        let body = br#"{"model":"a\\b\n\u00e9\ud83d\ude00\/"}"#;
        assert_eq!(UsageReport::of(body, false), report("a\\b\né😀/", None));
        let long = format!(r#"{{"model":"{}é{}"}}"#, "x".repeat(127), "y".repeat(600));
        let got = UsageReport::of(long.as_bytes(), false)
            .unwrap()
            .model
            .unwrap();
        assert_eq!(got, "x".repeat(127));
        // A plain name is kept whole up to the cap, and cut past it; bytes that are not UTF-8
        // are replaced, escaped or not.
        for (name, kept) in [(128, 128), (129, 128)] {
            let body = format!(r#"{{"model":"{}"}}"#, "z".repeat(name));
            let got = UsageReport::of(body.as_bytes(), false).unwrap().model;
            assert_eq!(got, Some("z".repeat(kept)));
        }
        let not_utf8 = [
            (&b"{\"model\":\"a\xffb\"}"[..], "a\u{fffd}b"),
            (b"{\"model\":\"a\xff\\/b\"}", "a\u{fffd}/b"),
        ];
        for (body, name) in not_utf8 {
            let got = UsageReport::of(body, false).unwrap().model;
            assert_eq!(got.as_deref(), Some(name));
        }
    }

    #[test]
    fn candidates_for_stream_events() {
        assert!(!may_carry_usage(br#"{"choices":[],"usage":null}"#));
        assert!(!may_carry_usage(br#"{"choices":[]}"#));
        assert!(may_carry_usage(br#"{"usage" : {"prompt_tokens":1}}"#));
        assert!(may_carry_usage(br#"{"c":"\"usage\": null","usage":{}}"#));
    }

    /// `body` cut at `cuts`, read by a scanner that skips and by one that reads every byte.
    fn with_and_without_skipping(
        body: &[u8],
        envelope: bool,
        cuts: &[usize],
    ) -> (Option<UsageReport>, Option<UsageReport>) {
        let mut skipping = UsageScan::new(envelope);
        let mut stepping = UsageScan::new(envelope);
        stepping.skips = false;
        let mut at = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            let cut = cut.clamp(at, body.len());
            skipping.feed(&body[at..cut]);
            stepping.feed(&body[at..cut]);
            at = cut;
        }
        (skipping.finish(), stepping.finish())
    }

    #[test]
    fn skipped_containers_are_those_that_cannot_hold_ours() {
        // `choices` (an array), `x` (not our name) and `usage.other` are skipped, with the
        // brackets and quotes inside them; `usage` and its details are read.
        let body = br#"{"choices":[{"usage":{"prompt_tokens":1}},"]}\"",{"a":[]}],"x":{"usage":{"prompt_tokens":2},"s":"}"},"model":"m","usage":{"other":{"prompt_tokens":3},"prompt_tokens":4,"completion_tokens_details":{"reasoning_tokens":5}}}"#;
        let expected = report(
            "m",
            Some(Usage {
                prompt: Some(4),
                reasoning: Some(5),
                ..Usage::default()
            }),
        );
        for cut in 0..=body.len() {
            let (skipping, stepping) = with_and_without_skipping(body, false, &[cut]);
            assert_eq!(skipping, expected, "cut at {cut}");
            assert_eq!(stepping, expected, "cut at {cut}");
        }
        let envelope = br#"{"success":true,"meta":{"usage":{"prompt_tokens":1}},"data":{"choices":[{"x":"\\"}],"usage":{"prompt_tokens":6}}}"#;
        let expected = Some(UsageReport {
            model: None,
            usage: Some(Usage {
                prompt: Some(6),
                ..Usage::default()
            }),
        });
        for cut in 0..=envelope.len() {
            assert_eq!(
                with_and_without_skipping(envelope, true, &[cut]),
                (expected.clone(), expected.clone()),
                "cut at {cut}"
            );
        }
    }

    /// Pieces of JSON-like text, our member names among them, in any order.
    fn token_soup() -> impl Strategy<Value = Vec<u8>> {
        let tokens = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            " ",
            "1",
            "23",
            "-4",
            "1.5",
            "null",
            "false",
            "true",
            "\"usage\"",
            "\"model\"",
            "\"data\"",
            "\"success\"",
            "\"prompt_tokens\"",
            "\"completion_tokens\"",
            "\"prompt_tokens_details\"",
            "\"cached_tokens\"",
            "\"completion_tokens_details\"",
            "\"reasoning_tokens\"",
            "\"x\"",
            "\"a\\\"b\"",
            "\"\\\\\"",
            "\"",
            "\\",
            "\"]}\"",
        ]);
        proptest::collection::vec(tokens, 0..60).prop_map(|t| t.concat().into_bytes())
    }

    /// Objects made of members that matter to the report, and some that only look as if they
    /// did, in any order and number (names repeated), spaced or not.
    fn member_soup() -> impl Strategy<Value = Vec<u8>> {
        let members = prop::sample::select(vec![
            r#""model":"gpt-4o""#,
            r#""model" : "a\u00e9\"b""#,
            r#""model":7"#,
            r#""model":null"#,
            r#""model":{"usage":{"prompt_tokens":1}}"#,
            r#""usage":{"prompt_tokens":3,"completion_tokens":4}"#,
            r#""usage" : { "prompt_tokens_details" : {"cached_tokens":2}, "completion_tokens_details":{"reasoning_tokens":1} }"#,
            r#""usage":null"#,
            r#""usage":[1,{"prompt_tokens":2}]"#,
            r#""usage":{"prompt_tokens":-1,"completion_tokens":1.5}"#,
            r#""usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551616}"#,
            r#""usage":{"prompt_tokens":5,"prompt_tokens":"6","completion_tokens":7,"completion_tokens":[1],"prompt_tokens":{"a":1}}"#,
            r#""usage":{"prompt_tokens_details":{"cached_tokens":2},"prompt_tokens_details":{"cached_tokens":{"a":1}},"completion_tokens_details":{"reasoning_tokens":3,"reasoning_tokens":"4"}}"#,
            r#""usage":{"prompt_tokens":true,"completion_tokens":0,"total_tokens":9}"#,
            r#""usage":{"prompt_tokens_details":[{"cached_tokens":1}],"completion_tokens_details":{"cached_tokens":3,"reasoning_tokens":null}}"#,
            r#""usage":{"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens_details":{"cached_tokens":"2"},"prompt_tokens_details":{"cached_tokens":1e2}}"#,
            r#""usage":{"completion_tokens_details":{"reasoning_tokens":5,"reasoning_tokens":6}}"#,
            r#""usage":{}"#,
            r#""model":"\ud83d\ude00 \u00e9""#,
            // 600 bytes as written, 100 as read: the scanner keeps the first 512 written.
            r#""model":"\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041\u0041""#,
            r#"model":"a very long model name, longer than the hundred and twenty-eight bytes a name is cut at, and then some more so that it is \u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9 past five hundred and twelve bytes as written""#,
            r#""usage":"x""#,
            r#""us\u0061ge":{"prompt_tokens":5}"#,
            r#""choices":[{"message":{"content":"\"usage\":{}"},"usage":{"prompt_tokens":9}}]"#,
            r#""data":{"usage":{"prompt_tokens":8},"model":"m"}"#,
            r#""success":false"#,
            r#""id":"chatcmpl-1""#,
        ]);
        (proptest::collection::vec(members, 0..6), any::<bool>()).prop_map(|(members, spaced)| {
            let gap = if spaced { " \n" } else { "" };
            format!(
                "{gap}{{{gap}{}{gap}}}{gap}",
                members.join(&format!(",{gap}"))
            )
            .into_bytes()
        })
    }

    /// [`UsageReport::of_json`] as its two parts read it.
    fn of_json_oracle(body: &[u8]) -> Option<Option<UsageReport>> {
        json_check::is_json(body).then(|| UsageReport::of(body, false))
    }

    #[test]
    fn a_bare_object_given_whole_is_read_where_its_members_lie() {
        // (first piece, last piece, envelope scan) -> read whole?
        let cases: [(&[u8], &[u8], bool, bool); 7] = [
            (b"", BARE, false, true),
            (b" \r\n", BARE, false, true),
            (b"{", &BARE[1..], false, false),
            (b"", ENVELOPE, true, false),
            (b"", b"[1]", false, false),
            (b"", b"{\"usage\":{}}x", false, false),
            (b"", &BARE[..100], false, false),
        ];
        for (first, last, envelope, whole) in cases {
            let mut scan = UsageScan::new(envelope);
            scan.feed(first);
            scan.feed_last(last);
            assert_eq!(scan.read_whole, whole, "{first:?} then {last:?}");
            let joined = [first, last].concat();
            assert_eq!(scan.finish(), UsageReport::of(&joined, envelope));
        }
    }

    #[test]
    fn of_json_checks_and_reads_as_the_scan_of_the_whole_body() {
        for body in [
            BARE,
            ENVELOPE,
            b"[1]",
            b" 7 ",
            b"{}",
            b"{",
            b"",
            b"{\"usage\":{}}x",
        ] {
            assert_eq!(UsageReport::of_json(body), of_json_oracle(body), "{body:?}");
        }
        assert_eq!(
            UsageReport::of_json(BARE),
            Some(report("gpt-4o-mini-2024-07-18", Some(full())))
        );
    }

    proptest! {
        #[test]
        fn of_json_agrees_with_the_check_and_the_scan(
            body in member_soup(),
            cut in 0usize..400,
            soup in token_soup(),
        ) {
            prop_assert_eq!(UsageReport::of_json(&body), of_json_oracle(&body));
            // Broken ones too: cut short, or followed by anything.
            let short = &body[..cut.min(body.len())];
            prop_assert_eq!(UsageReport::of_json(short), of_json_oracle(short));
            let long = [&body[..], &soup[..]].concat();
            prop_assert_eq!(UsageReport::of_json(&long), of_json_oracle(&long));
            prop_assert_eq!(UsageReport::of_json(&soup), of_json_oracle(&soup));
        }

        #[test]
        fn of_json_across_pieces_reads_what_of_json_reads_joined(
            body in member_soup(),
            cuts in proptest::collection::vec(0usize..400, 1..5),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([body.len()]) {
                pieces.push(Bytes::copy_from_slice(&body[from..cut]));
                from = cut;
            }
            // No number here is long enough to be left to the joined check.
            prop_assert_eq!(UsageReport::of_json_across(&pieces), UsageReport::of_json(&body));
        }

        #[test]
        fn a_last_piece_reads_what_the_scan_reads(
            body in member_soup(),
            soup in token_soup(),
            cut in 0usize..400,
            first in 0usize..400,
            envelope in any::<bool>(),
        ) {
            let long = [&body[..], &soup[..]].concat();
            for text in [&body[..], &body[..cut.min(body.len())], &long[..], &soup[..]] {
                // Given whole, and after a first piece (whitespace or not).
                for first in [0, first.min(text.len())] {
                    let mut scan = UsageScan::new(envelope);
                    scan.feed(&text[..first]);
                    scan.feed_last(&text[first..]);
                    prop_assert_eq!(scan.finish(), UsageReport::of(text, envelope));
                }
            }
        }

        #[test]
        fn skipping_changes_nothing(
            body in token_soup(),
            envelope in any::<bool>(),
            cuts in proptest::collection::vec(0usize..400, 0..5),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (skipping, stepping) = with_and_without_skipping(&body, envelope, &cuts);
            prop_assert_eq!(skipping, stepping);
        }

        #[test]
        fn skipping_changes_nothing_on_well_formed_bodies(
            prefix in token_soup(),
            envelope in any::<bool>(),
            cuts in proptest::collection::vec(0usize..2000, 0..5),
        ) {
            // A real body with soup inside `choices`: the report must still be found.
            let body = [if envelope { ENVELOPE } else { BARE }, &prefix[..]].concat();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (skipping, stepping) = with_and_without_skipping(&body, envelope, &cuts);
            prop_assert_eq!(skipping, stepping);
        }

        #[test]
        fn any_split_gives_the_same_result(
            cuts in proptest::collection::vec(0usize..=ENVELOPE.len(), 0..6),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let bare: Vec<usize> = cuts.iter().map(|&c| c.min(BARE.len())).collect();
            prop_assert_eq!(split(BARE, false, &bare), UsageReport::of(BARE, false));
            prop_assert_eq!(split(ENVELOPE, true, &cuts), UsageReport::of(ENVELOPE, true));
        }
    }
}
