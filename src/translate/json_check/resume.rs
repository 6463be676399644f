//! The check of a stream's events, each resumed where it stops matching the event before.
//!
//! The events of one chat stream begin alike: the same `id`, `object`, `created`, `model`
//! (and `system_fingerprint`, `service_tier`), then `"choices":[{"index":0,"delta":{"content":"`
//! before the few bytes of text that differ. Checking each event from its first byte spends
//! most of the check on that repeated prefix (about 940 of 1,290 instructions for a short
//! chunk). The check reads left to right and what it decides at a point depends only on the
//! bytes before that point, so where an event's first bytes are those of the event before,
//! the check of the new event may start where the old one stood at the last point inside the
//! shared bytes.
//!
//! [`EventChecks`] keeps, per stream, a copy of the last event's first [`REMEMBERED`] bytes and
//! the points of its check that it may resume from ([`Marks`]): before each top-level member's
//! name, and wherever a value was expected inside a member's value. For each event it finds
//! how many first bytes the two share, takes the last point before that, hands the caller the
//! members before it again (their places are the same in both), and checks the rest from
//! there, noting new points as it goes. The verdict and the members seen are exactly
//! [`super::object_members`]'s (the tests compare the two on related and unrelated texts).

use std::ops::Range;

/// The first bytes of an event that are kept to compare the next one with: a chat chunk's
/// repeated prefix is 130–200 bytes.
const REMEMBERED: usize = 256;
/// The most points noted per event.
const MAX_POINTS: usize = 24;
/// The most top-level members noted per event.
const MAX_MEMBERS: usize = 12;

/// The checks of one stream's events, in order (see the module's documentation). Holds about
/// 0.75 KB once the second event has been checked (728 bytes for a chat stream); nothing before.
#[derive(Debug, Default)]
pub struct EventChecks {
    /// An event has been checked: the next ones are noted and resumed.
    started: bool,
    last: Option<Box<Last>>,
}

/// The last event checked: its first bytes and where its check stood along them.
#[derive(Debug, Default)]
struct Last {
    /// At most [`REMEMBERED`] bytes.
    text: Vec<u8>,
    marks: Marks,
    /// Where the last check started (0: from the beginning).
    #[cfg(test)]
    resumed_at: usize,
}

impl EventChecks {
    /// True for the stream's first event, which is checked as alone (a first event is on the
    /// way of the stream's first bytes, whose time counts; the second has nothing to resume
    /// from either way).
    pub(super) fn first(&mut self) -> bool {
        !std::mem::replace(&mut self.started, true)
    }

    /// `check` of `body`, the next event of the stream, from where it stops matching the last
    /// one: `check` is handed the entry, the marks to note its points in, and `member`, which
    /// has seen the members before the entry. (The check itself is the parent module's:
    /// [`EventChecks::object_members`].)
    pub(super) fn resume<'a, M: FnMut(&'a [u8], Range<usize>)>(
        &mut self,
        body: &'a [u8],
        mut member: M,
        check: impl FnOnce(Entry, &mut Marks, M) -> bool,
    ) -> bool {
        let last = self.last.get_or_insert_with(Box::default);
        let same = shared_prefix(body, &last.text);
        let entry = last.marks.resume(same, body, &mut member);
        #[cfg(test)]
        {
            last.resumed_at = match entry {
                Entry::Start => 0,
                Entry::Key { at } | Entry::Value { at, .. } => at,
            };
        }
        let json = check(entry, &mut last.marks, member);
        // The shared bytes are in place already.
        last.text.truncate(same);
        if json {
            // Its full size at once, kept for the stream's life: never grown as events vary.
            last.text.reserve_exact(REMEMBERED - last.text.len());
            let keep = body.len().min(REMEMBERED);
            last.text
                .extend_from_slice(body.get(same..keep).unwrap_or_default());
        } else {
            // Points noted in a text that is not JSON are no state of a check to resume.
            last.text.clear();
            last.marks.clear();
        }
        json
    }

    /// Where the last check started (0: from the first byte).
    #[cfg(test)]
    fn resumed_at(&self) -> usize {
        self.last.as_ref().map_or(0, |last| last.resumed_at)
    }

    /// The bytes this holds on the heap: what a rewritten stream pays for it.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.last.as_ref().map_or(0, |last| {
            size_of::<Last>()
                + last.text.capacity()
                + last.marks.points.capacity() * size_of::<Point>()
                + last.marks.members.capacity() * size_of::<Member>()
        })
    }
}

/// How many first bytes `a` and `b` share; thirty-two at a time (two words of sixteen, so
/// that a remembered prefix of 256 bytes takes eight steps).
fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    // Whole blocks of both, thirty-two bytes each by construction: no bounds checked per word.
    let (a_blocks, b_blocks) = (a.chunks_exact(32), b.chunks_exact(32));
    let (a_rest, b_rest) = (a_blocks.remainder(), b_blocks.remainder());
    let mut at = 0;
    for (x, y) in a_blocks.zip(b_blocks) {
        let (Ok(x), Ok(y)) = (<&[u8; 32]>::try_from(x), <&[u8; 32]>::try_from(y)) else {
            break;
        };
        let low = word(x, 0) ^ word(y, 0);
        let high = word(x, 16) ^ word(y, 16);
        if low | high != 0 {
            return at
                + if low != 0 {
                    low.trailing_zeros() as usize / 8
                } else {
                    16 + high.trailing_zeros() as usize / 8
                };
        }
        at += 32;
    }
    at + a_rest
        .iter()
        .zip(b_rest)
        .take_while(|(x, y)| x == y)
        .count()
}

/// The sixteen bytes of `block` from `at` (0 or 16) as one little-endian word.
#[inline(always)]
fn word(block: &[u8; 32], at: usize) -> u128 {
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&block[at..at + 16]);
    u128::from_le_bytes(bytes)
}

/// Where a check starts: at the beginning, or at a noted point.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    Start,
    /// Before a top-level member's name, whose opening quote is at `at`.
    Key {
        at: usize,
    },
    /// Inside the value of the top-level member whose name is at `key` and whose value
    /// starts at `start`: a value is expected at `at`, inside `depth` containers of `kinds`
    /// (as [`super::Checker::value_from`] takes them).
    Value {
        key: Range<usize>,
        start: usize,
        at: usize,
        depth: usize,
        kinds: u64,
    },
}

/// What a check tells of where it stands, at each point it could be resumed from.
pub(super) trait Notes {
    /// Before a top-level member's name, its opening quote at `at`.
    fn key(&mut self, at: usize);
    /// A top-level member's name is at `key`, its value starts at `start`.
    fn member(&mut self, key: Range<usize>, start: usize);
    /// The value of the member being read ended at `end`.
    fn ended(&mut self, end: usize);
    /// A value is expected at `at`, inside `depth` containers of `kinds`.
    fn value(&mut self, at: usize, depth: usize, kinds: u64);
}

/// The plain check notes nothing.
impl Notes for () {
    #[inline(always)]
    fn key(&mut self, _: usize) {}
    #[inline(always)]
    fn member(&mut self, _: Range<usize>, _: usize) {}
    #[inline(always)]
    fn ended(&mut self, _: usize) {}
    #[inline(always)]
    fn value(&mut self, _: usize, _: usize, _: u64) {}
}

/// The points a check noted in the first [`REMEMBERED`] bytes of a text, and the top-level
/// members there (to hand them out again when a later check starts after them).
#[derive(Debug, Default)]
pub(super) struct Marks {
    points: Vec<Point>,
    members: Vec<Member>,
    /// The member (an index in `members`) whose value is being read, if noted.
    current: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    /// Inside a member's value: the kinds of the containers open there.
    kinds: u64,
    at: u32,
    /// The top-level member the point is in (or before, for a name).
    member: u8,
    /// The depth inside the member's value, or [`NAME`] before the member's name.
    depth: u8,
}

/// A [`Point`]'s depth before a member's name (a depth inside a value is below 64).
const NAME: u8 = u8::MAX;

impl Point {
    /// None before a member's name, else the depth and kinds inside its value.
    fn inside(self) -> Option<(u8, u64)> {
        (self.depth != NAME).then_some((self.depth, self.kinds))
    }
}

#[derive(Debug, Clone, Copy)]
struct Member {
    key: (u32, u32),
    value: (u32, u32),
}

impl Marks {
    fn clear(&mut self) {
        self.points.clear();
        self.members.clear();
        self.current = None;
    }

    /// The entry for a text whose first `same` bytes are those these marks were noted in:
    /// the last point before them, the members before it handed to `member` again, and the
    /// marks cut back to what precedes it (the check notes the point itself again).
    fn resume<'a>(
        &mut self,
        same: usize,
        body: &'a [u8],
        member: &mut impl FnMut(&'a [u8], Range<usize>),
    ) -> Entry {
        self.current = None;
        // Strictly before: the byte at a point may have been read to get there (the first
        // byte inside an array, a member's opening quote).
        let Some(index) = self.points.iter().rposition(|p| (p.at as usize) < same) else {
            self.clear();
            return Entry::Start;
        };
        let point = self.points[index];
        self.points.truncate(index);
        let ours = usize::from(point.member);
        let at = point.at as usize;
        let entry = match point.inside() {
            None => {
                self.members.truncate(ours);
                Entry::Key { at }
            }
            Some((depth, kinds)) => {
                // A point inside a value is noted only once its member is.
                let Some(current) = self.members.get(ours) else {
                    self.clear();
                    return Entry::Start;
                };
                let entry = Entry::Value {
                    key: current.key.0 as usize..current.key.1 as usize,
                    start: current.value.0 as usize,
                    at,
                    depth: usize::from(depth),
                    kinds,
                };
                self.members.truncate(ours + 1);
                self.current = Some(ours);
                entry
            }
        };
        for done in self.members.get(..ours).unwrap_or_default() {
            let key = done.key.0 as usize..done.key.1 as usize;
            member(
                body.get(key).unwrap_or_default(),
                done.value.0 as usize..done.value.1 as usize,
            );
        }
        entry
    }
}

/// A check resumed by [`EventChecks`] notes its points in the stream's marks.
impl Notes for &mut Marks {
    #[inline(always)]
    fn key(&mut self, at: usize) {
        if at < REMEMBERED && self.points.len() < MAX_POINTS && self.members.len() < MAX_MEMBERS {
            self.points.push(Point {
                at: at as u32,
                member: self.members.len() as u8,
                kinds: 0,
                depth: NAME,
            });
        }
    }

    #[inline(always)]
    fn member(&mut self, key: Range<usize>, start: usize) {
        self.current = None;
        if start < REMEMBERED && self.members.len() < MAX_MEMBERS {
            self.current = Some(self.members.len());
            self.members.push(Member {
                key: (key.start as u32, key.end as u32),
                value: (start as u32, start as u32),
            });
        }
    }

    #[inline(always)]
    fn ended(&mut self, end: usize) {
        if let Some(member) = self.current.take().and_then(|i| self.members.get_mut(i)) {
            member.value.1 = end as u32;
        }
    }

    #[inline(always)]
    fn value(&mut self, at: usize, depth: usize, kinds: u64) {
        if let Some(member) = self.current {
            if at < REMEMBERED && depth < 64 && self.points.len() < MAX_POINTS {
                self.points.push(Point {
                    at: at as u32,
                    member: member as u8,
                    depth: depth as u8,
                    kinds,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{apply, edit, json_text, members, object_text, token_soup};
    use super::*;
    use proptest::prelude::*;

    type Seen<'a> = Option<Vec<(&'a [u8], &'a [u8])>>;

    /// What `checks` made of `body`, the next event: the members it saw, None when it said no.
    fn checked<'a>(checks: &mut EventChecks, body: &'a [u8]) -> Seen<'a> {
        let mut seen = Vec::new();
        checks
            .object_members(body, |key, value| seen.push((key, &body[value])))
            .then_some(seen)
    }

    /// A chat chunk with `delta` and what follows `choices`.
    fn chunk(delta: &str, finish: &str, after: &str) -> String {
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]{after}}}"#
        )
    }

    #[test]
    fn a_chat_streams_events_are_checked_from_where_they_differ() {
        let first = chunk(r#"{"role":"assistant","content":""}"#, "null", "");
        let hello = chunk(r#"{"content":" Hello"}"#, "null", "");
        let world = chunk(r#"{"content":" world"}"#, "null", "");
        let bang = chunk(r#"{"content":"!"}"#, "null", "");
        let stop = chunk("{}", r#""stop""#, "");
        let usage = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let error = r#"{"error":{"message":"overloaded","type":"server_error"}}"#;
        let delta = first.find(r#""delta":"#).unwrap() + 8;
        let content = hello.find(r#""content":"#).unwrap() + 10;
        let choices = first.find(r#""choices":"#).unwrap() + 10;
        // Each event, and where its check started: the last point before the first byte it
        // does not share with the event before.
        let stream: [(&str, usize); 11] = [
            // The first is checked as alone, and nothing is kept of it.
            (&first, 0),
            (&hello, 0),
            // `" ` is shared: at the content string.
            (&world, content),
            (&bang, content),
            // `"delta":{` is shared, then `}`: at the delta's value.
            (&stop, delta),
            // `"choices":[` is shared, then `]`: at the choices' value.
            (usage, choices),
            // `{"` is shared: at the first member's name.
            (error, 1),
            // Not an object: nothing is kept of it.
            ("[1]", 0),
            (&first, 0),
            // `"delta":{"` is shared, then `role` and `content` differ: at the delta's value.
            (&hello, delta),
            (&world, content),
        ];
        let mut checks = EventChecks::default();
        let mut most = 0;
        for (i, (event, resumed_at)) in stream.into_iter().enumerate() {
            let body = event.as_bytes();
            assert_eq!(checked(&mut checks, body), members(body), "{event}");
            if i == 0 {
                assert_eq!(checks.heap_bytes(), 0, "nothing held for the first event");
            } else {
                assert_eq!(checks.resumed_at(), resumed_at, "{event}");
            }
            most = most.max(checks.heap_bytes());
        }
        // What the documentation says a rewritten stream pays (docs/streaming.md: about
        // 0.75 KB, with the allocator's own few bytes per block).
        assert!(most <= 768, "{most} bytes");
    }

    #[test]
    fn a_point_is_resumed_from_only_when_its_own_byte_is_shared() {
        // The point inside the array was reached by reading the byte at it (`1`, not `]`):
        // resumed there, `]` would be taken for a value and refused.
        for [before, after] in [
            [r#"{"a":[1]}"#, r#"{"a":[]}"#],
            [r#"{"a":[ 1]}"#, r#"{"a":[ ]}"#],
            [r#"{"a":1,"b":2}"#, r#"{"a":1}"#],
        ] {
            let mut checks = EventChecks::default();
            // Twice: the first event of a stream is checked as alone.
            for _ in 0..2 {
                assert!(checked(&mut checks, before.as_bytes()).is_some());
            }
            let body = after.as_bytes();
            assert_eq!(
                checked(&mut checks, body),
                members(body),
                "{after} after {before}"
            );
            assert!(members(body).is_some());
        }
    }

    #[test]
    fn a_text_that_is_not_json_leaves_nothing_to_resume_from() {
        let good = chunk(r#"{"content":"a"}"#, "null", "");
        let bad = chunk(r#"{"content":"a\u00"}"#, "null", "");
        let mut checks = EventChecks::default();
        assert!(checked(&mut checks, good.as_bytes()).is_some());
        assert_eq!(checked(&mut checks, bad.as_bytes()), None);
        // The bad one is not compared with: this starts from the first byte again.
        assert!(checked(&mut checks, good.as_bytes()).is_some());
        assert_eq!(checks.resumed_at(), 0);
    }

    #[test]
    fn a_check_resumed_inside_nested_arrays_goes_past_64_levels() {
        let nested = |inner: &str, close: &str| {
            format!(r#"{{"a":{}{inner}{}}}"#, "[".repeat(70), close.repeat(70))
        };
        let mut checks = EventChecks::default();
        // The last point noted: the name of `a`, then one per level, [`MAX_POINTS`] in all.
        let deepest = r#"{"a":"#.len() + MAX_POINTS - 2;
        for (text, json, resumed_at) in [
            // The first is checked as alone, the second from its start.
            (nested("1", "]"), true, 0),
            (nested("2", "]"), true, 0),
            (nested("4", "]"), true, deepest),
            // An object closed where the 70th array is.
            (nested("3", "]").replacen("]", "}", 1), false, deepest),
        ] {
            assert_eq!(checked(&mut checks, text.as_bytes()).is_some(), json);
            assert_eq!(checks.resumed_at(), resumed_at);
        }
    }

    proptest! {
        #[test]
        fn resumed_checks_agree_with_the_plain_one_on_edited_texts(
            first in prop_oneof![object_text(), json_text()],
            rounds in prop::collection::vec(prop::collection::vec(edit(), 0..4), 1..5),
        ) {
            let mut checks = EventChecks::default();
            let mut body = first;
            // Twice: the first event of a stream is checked as alone.
            for _ in 0..2 {
                prop_assert_eq!(checked(&mut checks, &body), members(&body));
            }
            for edits in rounds {
                body = apply(body, &edits);
                prop_assert_eq!(checked(&mut checks, &body), members(&body), "{:02x?}", body);
            }
        }

        #[test]
        fn resumed_checks_agree_with_the_plain_one_on_texts_that_go_on_otherwise(
            first in object_text(),
            cut in any::<prop::sample::Index>(),
            rest in prop_oneof![token_soup(), json_text()],
        ) {
            let mut checks = EventChecks::default();
            for _ in 0..2 {
                prop_assert_eq!(checked(&mut checks, &first), members(&first));
            }
            let body = [&first[..cut.index(first.len() + 1)], &rest].concat();
            prop_assert_eq!(checked(&mut checks, &body), members(&body), "{:02x?}", body);
        }
    }

    #[test]
    fn shared_prefixes_are_counted_exactly() {
        let text: Vec<u8> = (0..100u8).collect();
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 99, 100] {
            for differ in 0..len {
                let mut other = text[..len].to_vec();
                other[differ] ^= 0x80;
                assert_eq!(shared_prefix(&text, &other), differ, "{len} {differ}");
                assert_eq!(shared_prefix(&other, &text), differ, "{len} {differ}");
            }
            assert_eq!(shared_prefix(&text, &text[..len]), len);
        }
    }
}
