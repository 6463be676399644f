//! The one-pass readers of a JSON object's members against serde_json, on arbitrary bytes:
//! `json_check::object_members` against serde's raw map (keys undecoded, values as written),
//! and `envelope::classify` against what it was before it read members in one pass (serde's
//! derived `Deserialize` over the text, then a lenient read for a member named twice).
//!
//! And `transform::bare_event` (what a bare stream event is to wrap, in the same one pass)
//! against the two checks it stands for: OpenAI's error event as serde's probe read it, then
//! `is_json`.
//!
//! Checked on the input as it is and inside `{"data":…}` (so that the fuzzer's bytes are also
//! judged as a member's value): the two agree on whether the body is an object of JSON, on its
//! members, on not JSON / JSON / envelope, on each envelope member's exact text, and on error
//! event / JSON / not JSON. Then the same three as a stream's events check them
//! (`json_check::EventChecks`, each check resumed where the text stops matching the one
//! before), on `{"data":…}` of the input (twice: a stream's first event is checked as
//! alone), of its first half, and of the input again.

#![no_main]

use envelope_proxy::translate::envelope::{classify_in, is_json, Classified};
use envelope_proxy::translate::json_check::{object_members, EventChecks};
use envelope_proxy::translate::sse::transform::{bare_event, BareEvent};
use libfuzzer_sys::fuzz_target;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

const NAMES: [&str; 6] = ["success", "code", "message", "data", "error", "object"];

/// serde's members of `body`, raw: `None` unless it is UTF-8 and one JSON object.
fn members_oracle(body: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    struct Pairs<'a>(Vec<(&'a RawValue, &'a RawValue)>);
    impl<'de> Deserialize<'de> for Pairs<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> Visitor<'de> for Visit {
                type Value = Pairs<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs<'de>, A::Error> {
                    let mut pairs = Vec::new();
                    while let Some(key) = map.next_key::<&'de RawValue>()? {
                        pairs.push((key, map.next_value::<&'de RawValue>()?));
                    }
                    Ok(Pairs(pairs))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let text = std::str::from_utf8(body).ok()?;
    let pairs = serde_json::from_str::<Pairs<'_>>(text).ok()?;
    Some(
        pairs
            .0
            .into_iter()
            .map(|(k, v)| {
                let k = k.get().as_bytes();
                (&k[1..k.len() - 1], v.get().as_bytes())
            })
            .collect(),
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome<'a> {
    NotJson,
    Json,
    /// `success`, `code`, `message`, `data`, `error`, or the first member named twice.
    Envelope([Option<&'a str>; 5], Option<&'static str>),
}

#[derive(Default, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    success: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    code: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    message: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    object: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Default)]
struct Members {
    seen: [bool; 6],
    duplicate: Option<&'static str>,
}

fn is_envelope(seen: [bool; 6]) -> bool {
    seen[0] || (seen[1] && seen[3] && !seen[5])
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Members::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    map.next_value::<IgnoredAny>()?;
                    if let Some(i) = NAMES.iter().position(|name| *name == key) {
                        if std::mem::replace(&mut members.seen[i], true) {
                            members.duplicate.get_or_insert(NAMES[i]);
                        }
                    }
                }
                Ok(members)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// `classify` as it was.
fn classify_oracle(body: &[u8]) -> Outcome<'_> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return if is_json(body) {
            Outcome::Json
        } else {
            Outcome::NotJson
        };
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Outcome::NotJson;
    };
    match serde_json::from_str::<Envelope<'_>>(text) {
        Ok(env) => {
            let seen = [
                env.success,
                env.code,
                env.message,
                env.data,
                env.error,
                env.object,
            ]
            .map(|v| v.is_some());
            if is_envelope(seen) {
                let values = [env.success, env.code, env.message, env.data, env.error];
                Outcome::Envelope(values.map(|v| v.map(RawValue::get)), None)
            } else {
                Outcome::Json
            }
        }
        Err(_) => match serde_json::from_str::<Members>(text) {
            Ok(m) if is_envelope(m.seen) => Outcome::Envelope([None; 5], m.duplicate),
            Ok(_) => Outcome::Json,
            Err(_) => Outcome::NotJson,
        },
    }
}

/// What `classify` says, its check done by `checks` when given (a stream's).
fn outcome<'a>(body: &'a [u8], checks: Option<&mut EventChecks>) -> Outcome<'a> {
    match classify_in(body, checks) {
        Classified::NotJson => Outcome::NotJson,
        Classified::Json => Outcome::Json,
        Classified::Envelope(env) => Outcome::Envelope(
            ["success", "code", "message", "data", "error"]
                .map(|name| env.member(name).map(|raw| raw.get())),
            env.duplicate(),
        ),
    }
}

/// `{"error": …}` as `transform::is_bare_error` reads it: a search, then serde's probe.
fn is_bare_error(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        error: Option<IgnoredAny>,
    }
    data.trim_ascii_start().first() == Some(&b'{')
        && data.windows(7).any(|w| w == b"\"error\"")
        && serde_json::from_slice::<Probe>(data).is_ok_and(|probe| probe.error.is_some())
}

fn bare_oracle(data: &[u8]) -> BareEvent {
    if is_bare_error(data) {
        BareEvent::Error
    } else if is_json(data) {
        BareEvent::Json
    } else {
        BareEvent::NotJson
    }
}

fn agree(body: &[u8]) {
    assert_eq!(
        bare_event(body, &mut EventChecks::default()),
        bare_oracle(body),
        "bare_event and the two checks disagree on {:?}",
        String::from_utf8_lossy(body)
    );
    let mut seen = Vec::new();
    let members = object_members(body, |key, value| seen.push((key, &body[value]))).then_some(seen);
    assert_eq!(
        members,
        members_oracle(body),
        "object_members and serde disagree on {:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(
        outcome(body, None),
        classify_oracle(body),
        "classify and serde disagree on {:?}",
        String::from_utf8_lossy(body)
    );
}

/// The same verdicts for `texts` checked in turn as one stream's events.
fn agree_in_turn(texts: &[Vec<u8>]) {
    let (mut members_checks, mut bare_checks) = (EventChecks::default(), EventChecks::default());
    let mut classify_checks = EventChecks::default();
    for body in texts {
        let shown = String::from_utf8_lossy(body);
        let mut seen = Vec::new();
        let members = members_checks
            .object_members(body, |key, value| seen.push((key, &body[value])))
            .then_some(seen);
        assert_eq!(
            members,
            members_oracle(body),
            "resumed members on {shown:?}"
        );
        let bare = bare_event(body, &mut bare_checks);
        assert_eq!(bare, bare_oracle(body), "resumed bare_event on {shown:?}");
        let classified = outcome(body, Some(&mut classify_checks));
        assert_eq!(
            classified,
            classify_oracle(body),
            "resumed classify on {shown:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    agree(data);
    let in_data = |value: &[u8]| [b"{\"data\":", value, b"}"].concat();
    agree(&in_data(data));
    agree(&[b"{\"error\":", data, b"}"].concat());
    let half = &data[..data.len() / 2];
    // The first event of a stream is checked as alone; the next ones are resumed.
    agree_in_turn(&[in_data(data), in_data(data), in_data(half), in_data(data)]);
});
