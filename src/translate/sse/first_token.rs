//! Whether an event holds a stream's first token (the time to first token of the access log
//! and the metrics): a chunk, bare or in an envelope's `data`, whose `choices[].delta` has a
//! non-empty `content`, `reasoning_content`, `refusal` or `tool_calls`.
//!
//! serde's reading of the chunk ([`by_serde`]) is the rule. The usual chunk is read by the
//! JSON check's member reader instead ([`by_members`]): a third of the instructions, and
//! none of serde's code brought in for a stream's first events. It answers only where it
//! reads what serde reads (an object, names without escapes or repeats, `choices` an array
//! of objects, each `delta` an object), and leaves the rest to serde; the tests compare the two.

use std::ops::Range;
use std::sync::LazyLock;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::translate::json_check::{self, has_escape};

/// The substring check before [`has_first_token`]: only a chunk that names `"delta"` may hold
/// the first token.
pub(super) fn may_hold_first_token(data: &[u8]) -> bool {
    static DELTA: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"delta\""));
    DELTA.find(data).is_some()
}

/// True when a chunk (bare, or wrapped in an envelope's `data`) has a `choices[].delta` with
/// non-empty `content`, `reasoning_content`, `refusal` or `tool_calls`. A substring check
/// first; only candidates are read (borrowed, nothing copied).
pub(super) fn has_first_token(data: &[u8]) -> bool {
    first_token_in(data, true)
}

/// [`has_first_token`], looking into the chunk's `data` member only when `payload` (an
/// envelope's payload is a bare chunk: its own `data` is not looked into). One level, not
/// one per nesting: each level reads what it holds again, so an event of `{"data":`
/// nested a hundred thousand deep would take time quadratic in its size, and a recursion
/// that deep overflows the worker's stack, which aborts the whole proxy.
fn first_token_in(data: &[u8], payload: bool) -> bool {
    may_hold_first_token(data)
        && by_members(data, payload).unwrap_or_else(|| by_serde(data, payload, first_token_in))
}

/// What [`by_serde`] says of the usual chunk, read by the JSON check; None where it may not
/// read what serde reads: not an object, a name with escapes (serde decodes it), a name
/// given twice (serde refuses it), `choices` or a `delta` not an array or object (serde reads
/// a struct from an array, refuses other values).
fn by_members(data: &[u8], payload: bool) -> Option<bool> {
    let (mut choices, mut inner) = (None, None);
    let mut usual = true;
    let json = json_check::object_members(data, |key, value| match key {
        b"choices" => usual &= choices.replace(value).is_none(),
        b"data" => usual &= inner.replace(value).is_none(),
        _ => usual &= !has_escape(key),
    });
    if !json || !usual {
        return None;
    }
    // Every choice is read before the payload: one serde refuses makes the chunk no token.
    let found = match at(data, choices) {
        None | Some(b"null") => false,
        Some(choices) => choices_have_token(choices)?,
    };
    Some(
        found
            || match at(data, inner) {
                Some(inner) if payload && inner != b"null" => first_token_in(inner, false),
                _ => false,
            },
    )
}

fn choices_have_token(choices: &[u8]) -> Option<bool> {
    let (mut found, mut usual) = (false, true);
    let array = json_check::array_elements(choices, |choice| {
        if usual {
            match choice_has_token(&choices[choice]) {
                Some(token) => found |= token,
                None => usual = false,
            }
        }
    });
    (array && usual).then_some(found)
}

fn choice_has_token(choice: &[u8]) -> Option<bool> {
    let mut delta = None;
    let mut usual = true;
    let object = json_check::object_members(choice, |key, value| match key {
        b"delta" => usual &= delta.replace(value).is_none(),
        _ => usual &= !has_escape(key),
    });
    if !object || !usual {
        return None;
    }
    match at(choice, delta) {
        None | Some(b"null") => Some(false),
        Some(delta) => delta_has_token(delta),
    }
}

fn delta_has_token(delta: &[u8]) -> Option<bool> {
    let (mut seen, mut filled, mut usual) = ([false; 4], false, true);
    let object = json_check::object_members(delta, |key, value| {
        let field = match key {
            b"content" => 0,
            b"reasoning_content" => 1,
            b"refusal" => 2,
            b"tool_calls" => 3,
            _ => {
                usual &= !has_escape(key);
                return;
            }
        };
        usual &= !std::mem::replace(&mut seen[field], true);
        filled |= delta
            .get(value)
            .is_some_and(|v| v != b"null" && is_filled(v));
    });
    (object && usual).then_some(filled)
}

fn at(body: &[u8], range: Option<Range<usize>>) -> Option<&[u8]> {
    body.get(range?)
}

/// A delta's field holds something: neither `""` nor an empty array.
fn is_filled(value: &[u8]) -> bool {
    value != b"\"\""
        && value
            .strip_prefix(b"[")
            .is_none_or(|rest| rest.trim_ascii_start() != b"]")
}

/// The rule: the chunk as serde reads it, `inner` looking into a payload in `data`.
fn by_serde(data: &[u8], payload: bool, inner: fn(&[u8], bool) -> bool) -> bool {
    #[derive(Deserialize)]
    struct Chunk<'a> {
        #[serde(default)]
        choices: Option<AnyChoice>,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
        return false;
    };
    if let Some(payload) = chunk.data.filter(|_| payload) {
        if inner(payload.get().as_bytes(), false) {
            return true;
        }
    }
    chunk.choices.is_some_and(|AnyChoice(token)| token)
}

/// Whether any of `choices` has a token, read one choice at a time: a `Vec` of them would
/// cost 64 bytes for each `{}` of three (a 4 MiB event, close to 100 MB).
struct AnyChoice(bool);

impl<'de> Deserialize<'de> for AnyChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Choice<'a> {
            #[serde(borrow, default)]
            delta: Option<Delta<'a>>,
        }
        #[derive(Deserialize)]
        struct Delta<'a> {
            #[serde(borrow, default)]
            content: Option<&'a RawValue>,
            #[serde(borrow, default)]
            reasoning_content: Option<&'a RawValue>,
            #[serde(borrow, default)]
            refusal: Option<&'a RawValue>,
            #[serde(borrow, default)]
            tool_calls: Option<&'a RawValue>,
        }
        struct Choices;
        impl<'de> Visitor<'de> for Choices {
            type Value = AnyChoice;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyChoice, A::Error> {
                let filled =
                    |v: Option<&RawValue>| v.is_some_and(|v| is_filled(v.get().as_bytes()));
                let mut token = false;
                while let Some(Choice { delta }) = seq.next_element::<Choice<'de>>()? {
                    token |= delta.is_some_and(|d| {
                        filled(d.content)
                            || filled(d.reasoning_content)
                            || filled(d.refusal)
                            || filled(d.tool_calls)
                    });
                }
                Ok(AnyChoice(token))
            }
        }
        deserializer.deserialize_seq(Choices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_a_delta_with_content_is_a_first_token() {
        for (data, token) in [
            (
                r#"{"choices":[{"delta":{"role":"assistant","content":"","refusal":null}}]}"#,
                false,
            ),
            (r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#, false),
            (r#"{"choices":[{"delta":{}}],"x":"\"delta\""}"#, false),
            (
                r#"{"choices":[{"message":{"content":"hi"}}],"delta":1}"#,
                false,
            ),
            (r#"{"choices":[{"delta":{"content":"Hi"}}]}"#, true),
            (
                r#"{"choices":[{"delta":{"reasoning_content":"So"}}]}"#,
                true,
            ),
            (r#"{"choices":[{"delta":{"refusal":"No"}}]}"#, true),
            (
                r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
                true,
            ),
            (
                r#"{"success":true,"code":"200","data":{"choices":[{"delta":{"content":"Hi"}}]}}"#,
                true,
            ),
            // A payload's own `data` is not looked into.
            (
                r#"{"data":{"data":{"choices":[{"delta":{"content":"Hi"}}]}}}"#,
                false,
            ),
            (
                r#"{"data":{"data":{},"choices":[{"delta":{"content":"Hi"}}]}}"#,
                true,
            ),
        ] {
            assert_eq!(has_first_token(data.as_bytes()), token, "{data}");
        }
    }

    /// `{"data":` nested 200,000 deep (1.8 MB, under the default event limit of 4 MiB) around
    /// a chunk with content: looked into one level deep, so it holds no first token, and the
    /// check neither recurses per level (it overflowed the stack and aborted) nor reads the
    /// event again per level.
    #[test]
    fn deeply_nested_data_is_looked_into_once() {
        let depth = 200_000;
        let mut data = "{\"data\":".repeat(depth);
        data.push_str(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#);
        data.push_str(&"}".repeat(depth));
        assert!(may_hold_first_token(data.as_bytes()));
        assert!(!has_first_token(data.as_bytes()));
    }

    /// The rule all the way down: serde's reading, the payload's too.
    fn serde_only(data: &[u8], payload: bool) -> bool {
        may_hold_first_token(data) && by_serde(data, payload, serde_only)
    }

    #[test]
    fn chunks_serde_reads_otherwise_are_left_to_serde() {
        let cases: [(&[u8], bool); 10] = [
            // A name with escapes: serde decodes it.
            (br#"{"ch\u006fices":[{"delta":{"content":"Hi"}}]}"#, true),
            (
                br#"{"delta":0,"choices":[{"d\u0065lta":{"content":"Hi"}}]}"#,
                true,
            ),
            (br#"{"choices":[{"delta":{"c\u006fntent":"Hi"}}]}"#, true),
            // A name given twice: serde refuses the chunk.
            (
                br#"{"choices":[],"choices":[{"delta":{"content":"Hi"}}]}"#,
                false,
            ),
            (
                br#"{"choices":[{"delta":{"content":"Hi","content":"Hi"}}]}"#,
                false,
            ),
            // A struct read from an array, in field order.
            (br#"[[{"delta":{"content":"Hi"}}]]"#, true),
            (br#"{"delta":0,"choices":[[{"content":"Hi"}]]}"#, true),
            (br#"{"choices":[{"delta":["Hi"]}]}"#, true),
            // `choices` no array: the chunk is refused, whatever its payload holds.
            (
                br#"{"choices":"delta","data":{"choices":[{"delta":{"content":"Hi"}}]}}"#,
                false,
            ),
            (br#"{"choices":[{"delta":{"content":"Hi"}},1]}"#, false),
        ];
        for (data, token) in cases {
            let text = String::from_utf8_lossy(data);
            assert_eq!(by_members(data, true), None, "{text}");
            assert_eq!(has_first_token(data), token, "{text}");
            assert_eq!(serde_only(data, true), token, "{text}");
        }
    }

    #[test]
    fn usual_chunks_are_read_by_the_json_check() {
        let cases: [(&[u8], bool); 8] = [
            (br#"{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#, false),
            (br#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#, true),
            (br#" { "choices" : [ { "delta" : { "tool_calls" : [ ] } } , { "delta" : { "refusal" : "No" } } ] } "#, true),
            (br#"{"choices":[{"delta":{"tool_calls":[ ]}},{"delta":null},{}]}"#, false),
            (br#"{"choices":null,"delta":{"content":"Hi"}}"#, false),
            (br#"{"success":true,"data":{"choices":[{"delta":{"content":"Hi"}}]}}"#, true),
            (br#"{"success":true,"data":null,"choices":[{"delta":{"content":0}}]}"#, true),
            (br#"{"data":"{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}"}"#, false),
        ];
        for (data, token) in cases {
            let text = String::from_utf8_lossy(data);
            assert_eq!(by_members(data, true), Some(token), "{text}");
            assert_eq!(serde_only(data, true), token, "{text}");
        }
    }

    /// Chunks built from the pieces where the two readings could part: escaped, repeated and
    /// missing names, `null`s, structs given as arrays, values of the wrong kind, payloads in
    /// `data`; then cut short, given a byte that is no UTF-8, or followed by more.
    fn chunk() -> impl Strategy<Value = Vec<u8>> {
        fn object(members: Vec<(&'static str, String)>) -> String {
            let members: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        let field = prop_oneof![
            Just("content"),
            Just("reasoning_content"),
            Just("refusal"),
            Just("tool_calls"),
            Just("role"),
            Just("c\\u006fntent"),
        ];
        let filling = prop_oneof![
            Just("\"\""),
            Just("\"x\""),
            Just("null"),
            Just("[]"),
            Just("[ ]"),
            Just("[\n]"),
            Just("[1]"),
            Just("{}"),
            Just("0"),
            Just("false"),
            Just("\"\\ud800\""),
        ]
        .prop_map(String::from);
        let delta = prop_oneof![
            4 => prop::collection::vec((field, filling), 0..4).prop_map(object),
            1 => Just("null".to_owned()),
            1 => Just("[\"x\"]".to_owned()),
            1 => Just("\"x\"".to_owned()),
        ];
        let choice_name = prop_oneof![
            Just("delta"),
            Just("index"),
            Just("d\\u0065lta"),
            Just("finish_reason")
        ];
        let choice = prop_oneof![
            4 => prop::collection::vec((choice_name, delta), 0..3).prop_map(object),
            1 => Just("null".to_owned()),
            1 => Just("[{\"content\":\"x\"}]".to_owned()),
            1 => Just("1".to_owned()),
        ];
        let choices = prop_oneof![
            4 => prop::collection::vec(choice, 0..3).prop_map(|c| format!("[{}]", c.join(","))),
            1 => Just("null".to_owned()),
            1 => Just("\"delta\"".to_owned()),
            1 => Just("{}".to_owned()),
        ];
        let name = prop_oneof![
            Just("choices"),
            Just("id"),
            Just("ch\\u006fices"),
            Just("delta")
        ];
        let bare = prop::collection::vec((name, choices), 0..3).prop_map(object);
        let payload = prop_oneof![
            bare.clone(),
            Just("null".to_owned()),
            Just("\"x\"".to_owned())
        ];
        let top = prop_oneof![Just("choices"), Just("data"), Just("success")];
        let whole = prop_oneof![
            3 => prop::collection::vec((top, prop_oneof![payload.clone(), bare.clone()]), 0..4).prop_map(object),
            1 => bare.clone(),
            1 => (bare, payload).prop_map(|(c, p)| format!("{{\"data\":{p},\"choices\":{}}}", &c[1..c.len() - 1].split_once(':').map_or("null", |(_, v)| v))),
        ];
        (whole, any::<prop::sample::Index>(), 0..4u8).prop_map(|(text, at, how)| {
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len() + 1);
            match how {
                0 => bytes.truncate(at),
                1 => bytes.insert(at, 0xff),
                2 => bytes.extend_from_slice(b" x"),
                _ => {}
            }
            bytes
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn the_json_check_reads_chunks_as_serde_does(data in chunk(), payload in any::<bool>()) {
            if let Some(token) = by_members(&data, payload) {
                prop_assert_eq!(token, serde_only(&data, payload), "{}", String::from_utf8_lossy(&data));
            }
            prop_assert_eq!(first_token_in(&data, payload), serde_only(&data, payload), "{}", String::from_utf8_lossy(&data));
        }
    }
}
