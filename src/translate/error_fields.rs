//! The fields of an upstream's error, read from its JSON as written, in bounded memory.
//!
//! Every reader of an upstream's error (`error_body.rs`, the standard envelope's
//! `Envelope::into_error`, the templates' error readings, a stream's error events) takes its
//! members as [`RawValue`]s and builds the [`ApiError`] here: [`members`] picks an object's
//! members without reading the others, [`from_fields`] and [`ErrorObject`] build the error. A
//! member is turned into a [`Value`] only when it is at most [`MAX_VALUE_BYTES`] as written,
//! and a message built from JSON stops after [`MAX_BUILT_CHARS`], so a huge member costs
//! neither memory (a `Value` takes up to ~16 bytes per byte of JSON) nor a huge message.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{status_line, ApiError};

/// Most characters of a message the proxy builds from JSON (a `detail` list, a value that is
/// not a string); more are cut and marked `…`. Ten excerpts: a few dozen validation errors
/// read whole. Strings the upstream wrote as its message are kept whole, as it wrote them.
pub(crate) const MAX_BUILT_CHARS: usize = 2000;

/// Largest JSON value, as written, turned into a [`Value`] (which costs up to ~16 bytes of
/// memory per byte of JSON): `param`, `code`, values shown in a message, a template's
/// discriminator. A larger `param` or `code` is dropped (null): neither is an identifier any
/// more; a larger value in a message is shown as written, cut like any built message.
pub(crate) const MAX_VALUE_BYTES: usize = 4096;

/// The members of an OpenAI error object (`{"message","type","param","code"}`) as written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorObject<'a> {
    pub(crate) message: Option<&'a RawValue>,
    pub(crate) kind: Option<&'a RawValue>,
    pub(crate) param: Option<&'a RawValue>,
    pub(crate) code: Option<&'a RawValue>,
}

impl<'a> ErrorObject<'a> {
    /// The object's members; `None` when `raw` is not a JSON object.
    pub(crate) fn read(raw: &'a RawValue) -> Option<Self> {
        let [message, kind, param, code] = members(raw, ["message", "type", "param", "code"])?;
        Some(Self {
            message,
            kind,
            param,
            code,
        })
    }

    /// The error the object describes, with `message` as its message (the caller picks it:
    /// the object's own or its envelope's); without a string `type`, the one `status` implies.
    pub(crate) fn into_error(self, status: StatusCode, message: Option<&RawValue>) -> ApiError {
        from_fields(status, message, self.kind, self.param, self.code)
    }
}

/// An error from loosely typed members: [`message`] from `message`, the type when `kind` is a
/// string (else the one `status` implies), `param` and `code` as sent when small enough
/// ([`small_value`]).
pub(crate) fn from_fields(
    status: StatusCode,
    message: Option<&RawValue>,
    kind: Option<&RawValue>,
    param: Option<&RawValue>,
    code: Option<&RawValue>,
) -> ApiError {
    let mut error = ApiError::new(status, self::message(status, message));
    if let Some(kind) = kind.and_then(text) {
        error.error_type = kind.into_owned();
    }
    error.param = small_value(param);
    error.code = small_value(code);
    error
}

/// An error's message from the member `raw`: a string as written (decoded); absent or null,
/// `upstream returned HTTP <status>`; any other value as `Value::to_string` writes it, cut
/// after [`MAX_BUILT_CHARS`] (see [`Built::push_json`]).
pub(crate) fn message(status: StatusCode, raw: Option<&RawValue>) -> String {
    match raw.filter(|raw| raw.get() != "null") {
        None => format!("upstream returned HTTP {}", status_line(status)),
        Some(raw) => match text(raw) {
            Some(message) => message.into_owned(),
            None => {
                let mut out = Built::default();
                out.push_json(raw);
                out.finish()
            }
        },
    }
}

/// True when a JSON value, written as `json`, is small enough to become a [`Value`] (see
/// [`MAX_VALUE_BYTES`]).
pub(crate) fn fits(json: &str) -> bool {
    json.len() <= MAX_VALUE_BYTES
}

/// A member kept as the upstream sent it, if it is small enough to be one (see
/// [`MAX_VALUE_BYTES`]); else null.
pub(crate) fn small_value(raw: Option<&RawValue>) -> Value {
    raw.filter(|raw| fits(raw.get()))
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or(Value::Null)
}

pub(crate) fn is_array(raw: &RawValue) -> bool {
    raw.get().starts_with('[')
}

/// The decoded text of a JSON string, borrowed when it has no escapes; `None` for any other value.
pub(crate) fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|t| t.0)
}

/// The text of an integer as serde_json reads one (no fraction or exponent, within `i64` or
/// `u64`: `-5`, `429`); `None` for any other value. A number costs the same memory however
/// long it is written.
pub(crate) fn integer(raw: &RawValue) -> Option<String> {
    if !raw
        .get()
        .starts_with(|c: char| c == '-' || c.is_ascii_digit())
    {
        return None;
    }
    serde_json::from_str::<serde_json::Number>(raw.get())
        .ok()
        .filter(|n| n.is_i64() || n.is_u64())
        .map(|n| n.to_string())
}

/// The last value of each of `names` in the JSON object `raw` (as a [`Value`] object would
/// keep them), or `None` when `raw` is not an object. Other members are skipped unread.
pub(crate) fn members<'a, const N: usize>(
    raw: &'a RawValue,
    names: [&'static str; N],
) -> Option<[Option<&'a RawValue>; N]> {
    struct Picker<const N: usize>([&'static str; N]);
    struct Name<'n, const N: usize>(&'n [&'static str; N]);

    impl<'de, const N: usize> Visitor<'de> for Picker<N> {
        type Value = [Option<&'de RawValue>; N];
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = [None; N];
            while let Some(index) = map.next_key_seed(Name(&self.0))? {
                match index {
                    Some(index) => found[index] = Some(map.next_value()?),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(found)
        }
    }
    impl<'de, const N: usize> DeserializeSeed<'de> for Name<'_, N> {
        type Value = Option<usize>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de, const N: usize> Visitor<'de> for Name<'_, N> {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a member name")
        }
        fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
            Ok(self.0.iter().position(|n| *n == name))
        }
    }

    let mut de = serde_json::Deserializer::from_str(raw.get());
    de::Deserializer::deserialize_map(&mut de, Picker(names)).ok()
}

/// Calls `each` with the items of the JSON array `raw`, in order, until it returns false; the
/// rest are skipped unread.
pub(crate) fn for_each_item<'a>(raw: &'a RawValue, each: impl FnMut(usize, &'a RawValue) -> bool) {
    struct Walk<F>(F);

    impl<'de, F: FnMut(usize, &'de RawValue) -> bool> Visitor<'de> for Walk<F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0;
            while let Some(item) = seq.next_element()? {
                if !(self.0)(index, item) {
                    break;
                }
                index += 1;
            }
            // The parser insists on reaching the `]`.
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
    }

    let mut de = serde_json::Deserializer::from_str(raw.get());
    // `raw` was checked as JSON with the whole body: nothing to report.
    let _ = de::Deserializer::deserialize_seq(&mut de, Walk(each));
}

/// A message under construction, cut after [`MAX_BUILT_CHARS`] characters.
#[derive(Default)]
pub(crate) struct Built {
    out: String,
    chars: usize,
    full: bool,
}

impl Built {
    pub(crate) fn push(&mut self, text: &str) {
        for ch in text.chars() {
            if self.chars == MAX_BUILT_CHARS {
                self.full = true;
                return;
            }
            self.out.push(ch);
            self.chars += 1;
        }
    }

    /// `raw` as `Value::to_string` writes it, when it is small enough to parse; else as written.
    pub(crate) fn push_json(&mut self, raw: &RawValue) {
        match fits(raw.get())
            .then(|| serde_json::from_str::<Value>(raw.get()).ok())
            .flatten()
        {
            Some(value) => self.push(&value.to_string()),
            None => self.push(raw.get()),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    pub(crate) fn finish(mut self) -> String {
        if self.full {
            self.out.push('…');
        }
        self.out
    }
}
