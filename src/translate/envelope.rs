//! Reading and writing the standard envelope (`--envelope standard`, the default) without
//! re-serialising payloads. Other envelopes are templates (`template.rs`), which come back here
//! for the standard one.
//!
//! Wrapping puts static prefix and suffix bytes around the upstream's own payload bytes;
//! unwrapping slices the `data` value out of the upstream body ([`RawJson`] →
//! `Bytes::slice_ref`). The payload is validated by the reader but never rebuilt, so numbers,
//! key order and unicode escapes reach the client exactly as the upstream wrote them.
//!
//! Envelopes are parsed strictly: an object that would be an envelope but names one of its
//! members (`success`, `code`, `message`, `data`, `error`, `object`) twice is still an
//! envelope, an invalid one, whose verdict is an `upstream_invalid_body` error — never plain
//! JSON passed on as it is, and never a guess at which of the two values was meant.

use std::borrow::Cow;

use bytes::Bytes;
use http::StatusCode;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::translate::error_fields::{self, ErrorObject};
use crate::translate::json_check::{self, EventChecks};

/// `{"success":true,"code":"200","message":"successful","data":` — the payload follows.
pub(crate) const SUCCESS_PREFIX: Bytes =
    Bytes::from_static(br#"{"success":true,"code":"200","message":"successful","data":"#);
/// Closes the object opened by [`SUCCESS_PREFIX`].
pub(crate) const SUCCESS_SUFFIX: Bytes = Bytes::from_static(b"}");

/// The three pieces of a success envelope around `payload`, in order.
pub fn wrap_success(payload: Bytes) -> [Bytes; 3] {
    [SUCCESS_PREFIX, payload, SUCCESS_SUFFIX]
}

/// `{"success":true,"code":"<status>","message":"successful","data":<payload>}` in pieces: a
/// relayed 2xx status is the envelope's code.
pub(crate) fn wrap_success_with(status: StatusCode, payload: Bytes) -> [Bytes; 3] {
    if status == StatusCode::OK {
        return wrap_success(payload);
    }
    let prefix = format!(
        r#"{{"success":true,"code":"{}","message":"successful","data":"#,
        status.as_u16()
    );
    [Bytes::from(prefix), payload, SUCCESS_SUFFIX]
}

/// True for a complete JSON text in UTF-8 (RFC 8259): exactly what serde_json accepts as one
/// ignored value in a body that is valid UTF-8, checked in one pass (`json_check.rs`).
pub fn is_json(body: &[u8]) -> bool {
    super::json_check::is_json(body)
}

/// What a JSON body turned out to be.
#[derive(Debug)]
pub enum Classified<'a> {
    /// Not JSON at all (HTML, text, empty, truncated JSON).
    NotJson,
    /// Valid JSON that is not an envelope (a bare payload or a bare error).
    Json,
    Envelope(Envelope<'a>),
}

/// A JSON value as the body holds it (a member of an envelope): checked (UTF-8 included),
/// never re-serialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a>(&'a [u8]);

impl<'a> RawJson<'a> {
    /// The value's text, exactly as the upstream wrote it (no whitespace around it).
    pub fn get(self) -> &'a str {
        // Checked as UTF-8 when it was read; never empty then.
        std::str::from_utf8(self.0).unwrap_or_default()
    }

    /// The value's bytes, exactly as the upstream wrote them.
    pub fn bytes(self) -> &'a [u8] {
        self.0
    }

    /// The value as serde's [`RawValue`], for the readers of `error_fields.rs`: one more pass
    /// over its text, no copy. `None` never happens to a checked value (serde accepts what the
    /// check accepts, at any depth).
    fn value(self) -> Option<&'a RawValue> {
        serde_json::from_str(self.get()).ok()
    }
}

/// The top-level members of an envelope, borrowed from the body.
#[derive(Debug, Default)]
pub struct Envelope<'a> {
    success: Option<RawJson<'a>>,
    code: Option<RawJson<'a>>,
    message: Option<RawJson<'a>>,
    data: Option<RawJson<'a>>,
    error: Option<RawJson<'a>>,
    /// Set instead of the members when the object names this member twice.
    duplicate: Option<&'static str>,
}

/// What an envelope says.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Success: the `data` value, exactly as the upstream wrote it.
    Success(RawJson<'a>),
    Error(ApiError),
}

/// The envelope's members, in the order of [`Envelope`]'s fields.
const NAMES: [&str; 6] = ["success", "code", "message", "data", "error", "object"];

/// Recognises an envelope: an object with `success`, or with `code` and `data` but no `object`
/// (a bare list such as `/models` has `object` and `data`).
///
/// An object is read in one pass (`json_check::object_members`): checked as strictly as
/// [`is_json`], its top-level members noted as they go by. It is what serde_json made of it
/// when this was a derived `Deserialize` (the tests compare the two): member names are
/// compared unescaped, and a name whose escapes do not decode (a lone surrogate, `"\ud800"`)
/// makes the body not JSON, as serde refused it; a value is the member's exact text.
pub fn classify(body: &[u8]) -> Classified<'_> {
    classify_in(body, None)
}

/// [`classify`], the check of an object done by `checks` when given (a stream's events, each
/// checked from where it stops matching the one before).
pub fn classify_in<'a>(body: &'a [u8], checks: Option<&mut EventChecks>) -> Classified<'a> {
    let is_object = body.trim_ascii_start().first() == Some(&b'{');
    if !is_object {
        return if is_json(body) {
            Classified::Json
        } else {
            Classified::NotJson
        };
    }
    let mut noted = Noted {
        body,
        values: [None; 6],
        seen: [false; 6],
        duplicate: None,
        names_ok: true,
    };
    let note_member = |key: &'a [u8], value| noted.member(key, value);
    let json = match checks {
        Some(checks) => checks.object_members(body, note_member),
        None => json_check::object_members(body, note_member),
    };
    let Noted {
        values,
        seen,
        duplicate,
        names_ok,
        ..
    } = noted;
    if !json || !names_ok {
        return Classified::NotJson;
    }
    let members = Members {
        success: seen[0],
        code: seen[1],
        data: seen[3],
        object: seen[5],
    };
    if !members.is_envelope() {
        return Classified::Json;
    }
    if duplicate.is_some() {
        return Classified::Envelope(Envelope {
            duplicate,
            ..Envelope::default()
        });
    }
    // `object` only tells a bare list from an envelope.
    let [success, code, message, data, error, _object] = values;
    Classified::Envelope(Envelope {
        success,
        code,
        message,
        data,
        error,
        duplicate: None,
    })
}

/// The envelope's members an object's check has handed over so far.
struct Noted<'a> {
    body: &'a [u8],
    values: [Option<RawJson<'a>>; 6],
    seen: [bool; 6],
    /// The first name seen twice.
    duplicate: Option<&'static str>,
    /// False once a name's escapes did not decode.
    names_ok: bool,
}

impl<'a> Noted<'a> {
    /// The member named `key` has the value at `value`: one of ours is kept the first time.
    #[inline(always)]
    fn member(&mut self, key: &'a [u8], value: std::ops::Range<usize>) {
        let index = match member_index(key) {
            Some(i) => i,
            // Not a name of ours, or one spelt with escapes: serde decoded every name.
            None if key.contains(&b'\\') => match unescape_name(key) {
                Some(name) => match NAMES.iter().position(|n| *n == name) {
                    Some(i) => i,
                    None => return,
                },
                None => {
                    self.names_ok = false;
                    return;
                }
            },
            None => return,
        };
        if std::mem::replace(&mut self.seen[index], true) {
            self.duplicate.get_or_insert(NAMES[index]);
            return;
        }
        // Text: the checker read it as JSON in UTF-8 (and the verdict counts only then).
        self.values[index] = self.body.get(value).map(RawJson);
    }
}

/// The index in [`NAMES`] of a member name as written, without escapes.
#[inline]
fn member_index(key: &[u8]) -> Option<usize> {
    match key {
        b"success" => Some(0),
        b"code" => Some(1),
        b"message" => Some(2),
        b"data" => Some(3),
        b"error" => Some(4),
        b"object" => Some(5),
        _ => None,
    }
}

/// A member name spelt with escapes, decoded as serde_json decodes one (`None` where it
/// refuses it: a lone surrogate). Rare: no API spells its names so.
#[cold]
fn unescape_name(key: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).ok()
}

/// Which envelope members an object has.
#[derive(Debug, Default)]
struct Members {
    success: bool,
    code: bool,
    data: bool,
    object: bool,
}

impl Members {
    fn is_envelope(&self) -> bool {
        self.success || (self.code && self.data && !self.object)
    }
}

impl<'a> Envelope<'a> {
    /// The value of member `name` (`success`, `code`, `message`, `data` or `error`) as the
    /// body holds it; `None` when absent, and for all of them when one was named twice.
    pub fn member(&self, name: &str) -> Option<RawJson<'a>> {
        match name {
            "success" => self.success,
            "code" => self.code,
            "message" => self.message,
            "data" => self.data,
            "error" => self.error,
            _ => None,
        }
    }

    /// The first member of the envelope named twice, if one was.
    pub fn duplicate(&self) -> Option<&'static str> {
        self.duplicate
    }

    /// Success or error, judged by `success` and `code` (an error even under HTTP 200).
    pub fn verdict(self, http_status: StatusCode) -> Verdict<'a> {
        if let Some(member) = self.duplicate {
            return Verdict::Error(duplicated(member, http_status));
        }
        let success = match self.success.map(RawJson::bytes) {
            None => None,
            // The raw text of a boolean is one of these, exactly.
            Some(b"true") => Some(true),
            Some(b"false") => Some(false),
            Some(_) => return Verdict::Error(malformed("`success` is not a boolean")),
        };
        // The common success codes are recognised from their raw bytes, without allocating.
        let code_ok = match self.code.map(RawJson::bytes) {
            Some(br#""200""# | b"200" | br#""0""# | b"0") => true,
            _ => match self.code_text() {
                Ok(None) => true,
                // A relayed 2xx status is a success code too (envelope-proxy writes `"201"`).
                Ok(Some(code)) => {
                    matches!(&*code, "200" | "0")
                        || (http_status.is_success() && code == http_status.as_str())
                }
                Err(()) => {
                    return Verdict::Error(malformed("`code` is neither a string nor an integer"))
                }
            },
        };
        if success == Some(false) || !code_ok {
            return Verdict::Error(self.into_error(http_status));
        }
        match self.data {
            Some(data) if data.bytes() != b"null" => Verdict::Success(data),
            _ => Verdict::Error(malformed("it reported success but carried no `data`")),
        }
    }

    /// The error this envelope reports, for a client of the bare dialect.
    ///
    /// Status: the envelope code when it is 400–599, else the HTTP status when ≥ 400, else 502.
    /// An inner `error` object (as envelope-proxy itself writes) supplies type, param and code.
    /// Members are read as written and the error built by `error_fields.rs`: a message built
    /// from JSON stops after 2,000 characters, a `param` or `code` over 4 KiB is null.
    pub(crate) fn into_error(self, http_status: StatusCode) -> ApiError {
        if let Some(member) = self.duplicate {
            return duplicated(member, http_status);
        }
        let code = self.code_text().ok().flatten();
        let status = code
            .as_deref()
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (400..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .or_else(|| (http_status.as_u16() >= 400).then_some(http_status))
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let message = self.message.and_then(RawJson::value);
        if let Some(inner) = self
            .error
            .and_then(RawJson::value)
            .and_then(ErrorObject::read)
        {
            // The inner object's message first, even a null one.
            return inner.into_error(status, inner.message.or(message));
        }
        let mut error = ApiError::new(status, error_fields::message(status, message));
        let small = self.code.is_some_and(|raw| error_fields::fits(raw.get()));
        if let Some(code) = code.filter(|_| small) {
            error.code = Value::String(code.into_owned());
        }
        error
    }

    /// `code` as text: `"200"` and `200` both read "200" (a string borrowed from the body when
    /// it has no escapes). `Err` for any other JSON type.
    fn code_text(&self) -> Result<Option<Cow<'a, str>>, ()> {
        let Some(raw) = self.code else {
            return Ok(None);
        };
        let Some(raw) = raw.value() else {
            return Err(());
        };
        if raw.get() == "null" {
            return Ok(None);
        }
        error_fields::text(raw)
            .or_else(|| error_fields::integer(raw).map(Cow::Owned))
            .map(Some)
            .ok_or(())
    }
}

fn malformed(why: &str) -> ApiError {
    ApiError::proxy(
        ErrorCode::InvalidEnvelope,
        format!("upstream sent a malformed envelope: {why}"),
    )
}

/// An envelope that names `member` twice: which value counts is anyone's guess (the issue's
/// `"data":null,"data":null` under HTTP 200 was passed to bare clients as a success). The
/// status is the upstream's when it is an error status (the call failed, only its details are
/// unreadable), else 502.
fn duplicated(member: &str, http_status: StatusCode) -> ApiError {
    unreadable(
        http_status,
        format!(
            "upstream sent an invalid envelope under HTTP {}: the member `{member}` appears more than once",
            http_status.as_u16()
        ),
    )
}

/// `upstream_invalid_body` for an envelope that cannot be read: the upstream's status when it
/// is an error status (the call failed, only its details are unreadable), else 502.
pub(crate) fn unreadable(http_status: StatusCode, message: String) -> ApiError {
    let status = if http_status.as_u16() >= 400 {
        http_status
    } else {
        StatusCode::BAD_GATEWAY
    };
    ApiError::proxy(ErrorCode::UpstreamInvalidBody, message).with_status(status)
}

/// The `data` payload of `body` as a zero-copy slice, given the value read from it.
pub fn slice_payload(body: &Bytes, data: RawJson<'_>) -> Bytes {
    body.slice_ref(data.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;
    use proptest::prelude::*;

    /// What [`classify`] was before it read members in one pass: serde_json's derived
    /// `Deserialize` over the text, and a lenient second read for a member named twice. The
    /// definition the one-pass reader must match.
    mod reference {
        use serde::de::IgnoredAny;
        use serde::Deserialize;
        use serde_json::value::RawValue;

        #[derive(Debug, PartialEq, Eq)]
        pub enum Outcome<'a> {
            NotJson,
            Json,
            /// The six members' texts (`success`, `code`, `message`, `data`, `error`,
            /// `object`), or the first member named twice.
            Envelope([Option<&'a str>; 6], Option<&'static str>),
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

        fn present<'de, D: serde::Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<&'de RawValue>, D::Error> {
            <&RawValue>::deserialize(deserializer).map(Some)
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
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visit;
                impl<'de> serde::de::Visitor<'de> for Visit {
                    type Value = Members;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a JSON object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Members, A::Error> {
                        let mut members = Members::default();
                        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                            map.next_value::<IgnoredAny>()?;
                            if let Some(i) = super::NAMES.iter().position(|name| *name == key) {
                                if std::mem::replace(&mut members.seen[i], true) {
                                    members.duplicate.get_or_insert(super::NAMES[i]);
                                }
                            }
                        }
                        Ok(members)
                    }
                }
                deserializer.deserialize_map(Visit)
            }
        }

        pub fn classify(body: &[u8]) -> Outcome<'_> {
            let is_object = body.trim_ascii_start().first() == Some(&b'{');
            if !is_object {
                return if super::is_json(body) {
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
                    let values = [
                        env.success,
                        env.code,
                        env.message,
                        env.data,
                        env.error,
                        env.object,
                    ]
                    .map(|v| v.map(RawValue::get));
                    if is_envelope(values.map(|v| v.is_some())) {
                        Outcome::Envelope(values, None)
                    } else {
                        Outcome::Json
                    }
                }
                Err(_) => match serde_json::from_str::<Members>(text) {
                    Ok(m) if is_envelope(m.seen) => Outcome::Envelope([None; 6], m.duplicate),
                    Ok(_) => Outcome::Json,
                    Err(_) => Outcome::NotJson,
                },
            }
        }
    }

    /// [`classify`] in the reference's terms (`object` read again: the envelope keeps only
    /// whether it was there).
    fn outcome(body: &[u8]) -> reference::Outcome<'_> {
        match classify(body) {
            Classified::NotJson => reference::Outcome::NotJson,
            Classified::Json => reference::Outcome::Json,
            Classified::Envelope(env) => {
                let object = match reference::classify(body) {
                    reference::Outcome::Envelope(values, _) => values[5],
                    _ => None,
                };
                let values = ["success", "code", "message", "data", "error"]
                    .map(|name| env.member(name).map(RawJson::get));
                let [a, b, c, d, e] = values;
                reference::Outcome::Envelope([a, b, c, d, e, object], env.duplicate())
            }
        }
    }

    #[test]
    fn members_are_read_as_serde_read_them() {
        use reference::Outcome::{self, Envelope as Env, Json, NotJson};
        let cases: Vec<(&[u8], Outcome<'_>)> = vec![
            // Values keep their exact text, without the whitespace around them.
            (
                b" {\"success\" : true ,\"code\":\t\"200\"\n,\"data\": {\"a\": [1, 2.0]} } ",
                Env(
                    [
                        Some("true"),
                        Some("\"200\""),
                        None,
                        Some("{\"a\": [1, 2.0]}"),
                        None,
                        None,
                    ],
                    None,
                ),
            ),
            (
                br#"{"code":0,"message":null,"data":"x","error":{},"object":"o","success":false}"#,
                Env(
                    [
                        Some("false"),
                        Some("0"),
                        Some("null"),
                        Some("\"x\""),
                        Some("{}"),
                        Some("\"o\""),
                    ],
                    None,
                ),
            ),
            // Names are compared unescaped.
            (
                br#"{"\u0073uccess":true,"d\u0061ta":[]}"#,
                Env([Some("true"), None, None, Some("[]"), None, None], None),
            ),
            (br#"{"suc\"cess":true}"#, Json),
            // A name serde cannot decode (a lone surrogate) is not JSON to it, even unknown.
            (br#"{"\ud800":1,"success":true}"#, NotJson),
            (br#"{"\udc00x":1}"#, NotJson),
            (
                br#"{"\ud83d\ude00":1,"success":true}"#,
                Env([Some("true"), None, None, None, None, None], None),
            ),
            // Nested names are never decoded.
            (
                br#"{"success":true,"data":{"\ud800":1}}"#,
                Env(
                    [
                        Some("true"),
                        None,
                        None,
                        Some(r#"{"\ud800":1}"#),
                        None,
                        None,
                    ],
                    None,
                ),
            ),
            // Named twice: an invalid envelope, whichever was first.
            (
                br#"{"success":true,"data":1,"success":true,"data":2}"#,
                Env([None; 6], Some("success")),
            ),
            (
                br#"{"code":1,"data":1,"\u0064ata":2}"#,
                Env([None; 6], Some("data")),
            ),
            (br#"{"object":"list","data":[],"object":"list"}"#, Json),
            (br#"{"success":true,"data":1,"data":2"#, NotJson),
            (br#"{"success":true,"data":1,"data":2} x"#, NotJson),
            // Not JSON in the ways an object can fail.
            (b"\x0c{}", NotJson),
            (br#"{"success":true,}"#, NotJson),
            (br#"{"success" true}"#, NotJson),
            (br#"{success:true}"#, NotJson),
            (b"{\"success\":true,\"data\":\"\xff\"}", NotJson),
            (br#"{"success":true}{}"#, NotJson),
            (br#"{}"#, Json),
            (br#"{"code":"200","data":1,"object":"x"}"#, Json),
        ];
        for (body, expected) in cases {
            let shown = String::from_utf8_lossy(body);
            assert_eq!(reference::classify(body), expected, "reference on {shown}");
            assert_eq!(outcome(body), expected, "classify on {shown}");
        }
    }

    /// Member names: those of the envelope, some spelt with escapes or broken ones, and others.
    fn member_name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(NAMES.to_vec()).prop_map(String::from),
            1 => prop::sample::select(vec![
                "d\\u0061ta", "\\u0073uccess", "cod\\u0065", "\\ud800", "\\udc00", "\\ud800\\n",
                "\\ud83d\\ude00", "a\\\"b", "id", "choices", "msg", "",
            ])
            .prop_map(String::from),
        ]
    }

    /// Member values: JSON of every kind, and JSON with a name in it that serde cannot decode.
    fn member_value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "true",
                "false",
                "null",
                "0",
                "200",
                "-1.5e3",
                "\"200\"",
                "\"0\"",
                "\"successful\"",
                "{}",
                "[]",
                "{\"a\":[1,{\"b\":null}]}",
                "{\"\\ud800\":1}",
                "\"\\ud800\"",
                "{\"message\":\"m\",\"type\":\"t\"}",
                "\"\u{e9}\"",
            ])
            .prop_map(String::from),
            any::<i64>().prop_map(|n| n.to_string()),
        ]
    }

    /// Objects of such members with whitespace around the tokens.
    fn envelope_like() -> impl Strategy<Value = Vec<u8>> {
        let ws = || prop::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]);
        prop::collection::vec((member_name(), member_value(), ws(), ws()), 0..6).prop_map(
            move |members| {
                let body: Vec<String> = members
                    .iter()
                    .map(|(name, value, a, b)| format!("{a}\"{name}\"{b}:{a}{value}{b}"))
                    .collect();
                format!(" {{{}}}", body.join(",")).into_bytes()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn classify_agrees_with_serde_on_envelope_like_objects(body in envelope_like()) {
            prop_assert_eq!(outcome(&body), reference::classify(&body), "{}", String::from_utf8_lossy(&body));
        }

        #[test]
        fn classify_agrees_with_serde_on_mutated_objects(
            body in envelope_like(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4),
        ) {
            let mut body = body;
            for (at, byte, how) in edits {
                let len = body.len();
                match how {
                    0 if len > 0 => body[at % len] = byte,
                    1 => body.insert(at % (len + 1), byte),
                    _ if len > 0 => { body.remove(at % len); }
                    _ => {}
                }
            }
            prop_assert_eq!(outcome(&body), reference::classify(&body), "{:02x?}", body);
        }

        #[test]
        fn classify_agrees_with_serde_on_arbitrary_bytes(
            body in prop::collection::vec(prop::sample::select(b"{}[]:,\"\\ u0123456789adtsucesnlfr\xff".to_vec()), 0..40),
        ) {
            prop_assert_eq!(outcome(&body), reference::classify(&body), "{:02x?}", body);
        }
    }

    fn concat(parts: [Bytes; 3]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    fn verdict(body: &[u8], status: u16) -> Result<String, ApiError> {
        match classify(body) {
            Classified::Envelope(env) => match env.verdict(StatusCode::from_u16(status).unwrap()) {
                Verdict::Success(data) => Ok(data.get().to_string()),
                Verdict::Error(e) => Err(e),
            },
            other => panic!("not an envelope: {other:?}"),
        }
    }

    #[test]
    fn wrap_puts_the_payload_inside_unchanged() {
        let payload = Bytes::from_static(br#"{"id":"x","n":1.50}"#);
        assert_eq!(
            concat(wrap_success(payload)),
            br#"{"success":true,"code":"200","message":"successful","data":{"id":"x","n":1.50}}"#
        );
    }

    #[test]
    fn unwrap_slices_without_copying() {
        let body = Bytes::from_static(
            br#"{"success":true,"code":"200","message":"successful","data":{"a": [1, 2.0]}}"#,
        );
        let Classified::Envelope(env) = classify(&body) else {
            panic!()
        };
        let Verdict::Success(data) = env.verdict(StatusCode::OK) else {
            panic!()
        };
        let payload = slice_payload(&body, data);
        assert_eq!(&payload[..], br#"{"a": [1, 2.0]}"#);
        // Same memory: a slice of the body, not a copy.
        assert!(
            body.as_ptr() <= payload.as_ptr()
                && payload.as_ptr() < body.as_ptr().wrapping_add(body.len())
        );
    }

    #[test]
    fn bare_bodies_are_not_envelopes() {
        assert!(matches!(
            classify(br#"{"object":"list","data":[]}"#),
            Classified::Json
        ));
        assert!(matches!(
            classify(br#"{"id":"c","object":"chat.completion","choices":[]}"#),
            Classified::Json
        ));
        assert!(matches!(classify(br#"[1,2]"#), Classified::Json));
        assert!(matches!(classify(b"<html>"), Classified::NotJson));
        assert!(matches!(classify(b""), Classified::NotJson));
        assert!(matches!(
            classify(br#"{"success":true,"data":{"#),
            Classified::NotJson
        ));
    }

    #[test]
    fn error_codes_win_over_http_200() {
        let e = verdict(
            br#"{"success":false,"code":429,"message":"Too many requests","data":null}"#,
            200,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.message, "Too many requests");
        assert_eq!(e.error_type, "rate_limit_error");
        assert_eq!(e.code, Value::String("429".into()));

        let e = verdict(
            br#"{"success":true,"code":"500","message":"internal","data":null}"#,
            200,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);

        // A code outside 400–599 falls back to the HTTP status, then to 502.
        let e = verdict(
            br#"{"success":false,"code":"E1001","message":"quota","data":null}"#,
            403,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.code, Value::String("E1001".into()));
        let e = verdict(
            br#"{"success":false,"code":"E1001","message":"quota","data":null}"#,
            200,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn zero_and_200_codes_are_success() {
        for body in [
            &br#"{"success":true,"code":"200","message":"ok","data":{"x":1}}"#[..],
            br#"{"success":true,"code":200,"data":{"x":1}}"#,
            br#"{"code":0,"data":{"x":1}}"#,
            br#"{"code":"0","msg":"ok","data":{"x":1}}"#,
        ] {
            assert_eq!(verdict(body, 200).unwrap(), r#"{"x":1}"#);
        }
    }

    #[test]
    fn wrong_types_are_malformed_not_panics() {
        for body in [
            &br#"{"success":"yes","code":"200","data":{}}"#[..],
            br#"{"success":true,"code":{},"data":{}}"#,
            br#"{"success":true,"code":"200","message":"ok"}"#,
        ] {
            let e = verdict(body, 200).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_GATEWAY);
            assert_eq!(e.code, Value::String("invalid_envelope".into()));
        }
    }

    #[test]
    fn a_member_named_twice_makes_an_invalid_envelope() {
        let invalid = |member: &str, status: u16, under: u16| {
            ApiError::new(
                StatusCode::from_u16(status).unwrap(),
                format!("upstream sent an invalid envelope under HTTP {under}: the member `{member}` appears more than once"),
            )
            .with_type("upstream_error")
            .with_code("upstream_invalid_body")
        };
        // The issue's body: under HTTP 200 it is a 502, never a success.
        let body =
            br#"{"success":false,"code":"500","message":"model crashed","data":null,"data":null}"#;
        assert_eq!(verdict(body, 200), Err(invalid("data", 502, 200)));
        // Under an error status, that status stays.
        assert_eq!(verdict(body, 429), Err(invalid("data", 429, 429)));
        let Classified::Envelope(env) = classify(body) else {
            panic!()
        };
        assert_eq!(env.into_error(StatusCode::OK), invalid("data", 502, 200));
        for (body, member) in [
            // Which `success` counts? Neither.
            (
                &br#"{"success":true,"code":"200","data":{"x":1},"success":false}"#[..],
                "success",
            ),
            (br#"{"code":"200","data":{"x":1},"code":"500"}"#, "code"),
            (
                br#"{"code":0,"data":{"x":1},"message":"a","message":"b"}"#,
                "message",
            ),
            (
                br#"{"success":true,"data":{},"error":null,"error":{}}"#,
                "error",
            ),
            // Keys are compared unescaped.
            (
                br#" {"success":true,"data":{"x":1},"d\u0061ta":{"x":2}}"#,
                "data",
            ),
        ] {
            assert_eq!(
                verdict(body, 200),
                Err(invalid(member, 502, 200)),
                "{body:?}"
            );
        }
        // Not envelopes: duplicates leave them plain JSON, as before.
        for body in [
            &br#"{"id":"c1","id":"c2"}"#[..],
            br#"{"object":"list","data":[],"object":"list"}"#,
            br#"[{"success":true},{"success":true,"success":false}]"#,
        ] {
            assert!(matches!(classify(body), Classified::Json), "{body:?}");
        }
        // Other members may repeat (the parse never reads them), and so may keys in `data`.
        assert_eq!(
            verdict(
                br#"{"success":true,"code":"200","data":{"a":1,"a":2},"msg":"a","msg":"b"}"#,
                200
            ),
            Ok(r#"{"a":1,"a":2}"#.to_string())
        );
        // Broken JSON stays not JSON.
        assert!(matches!(
            classify(br#"{"success":true,"success":"#),
            Classified::NotJson
        ));
    }

    /// `[1,1,…,1]` with `n` items, as written.
    fn ones(n: usize) -> String {
        format!("[{}1]", "1,".repeat(n - 1))
    }

    /// What [`ones`] of more than 1,000 items becomes as a message: its first 2,000
    /// characters, then `…`.
    fn ones_cut() -> String {
        format!("[{}1…", "1,".repeat(999))
    }

    #[test]
    fn a_huge_message_is_cut_and_a_huge_param_or_code_is_null() {
        let body = format!(
            r#"{{"success":false,"code":"500","message":{},"data":null}}"#,
            ones(1_000_000)
        );
        assert_eq!(
            verdict(body.as_bytes(), 200),
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ones_cut()).with_code("500"))
        );
        // The inner error object's param over 4 KiB is null; the rest is kept.
        let body = format!(
            r#"{{"success":false,"code":"400","message":"outer","data":null,"error":{{"message":"bad","type":"invalid_request_error","param":{},"code":"c"}}}}"#,
            ones(1_000_000)
        );
        assert_eq!(
            verdict(body.as_bytes(), 200),
            Err(ApiError::new(StatusCode::BAD_REQUEST, "bad")
                .with_type("invalid_request_error")
                .with_code("c"))
        );
        // A code of 4,096 bytes as written is kept (as a string); one byte more is null.
        for (len, kept) in [(4094, true), (4095, false)] {
            let code = "E".repeat(len);
            let body = format!(r#"{{"success":false,"code":"{code}","message":"m","data":null}}"#);
            let expected = ApiError::new(StatusCode::FORBIDDEN, "m");
            let expected = if kept {
                expected.with_code(code)
            } else {
                expected
            };
            assert_eq!(verdict(body.as_bytes(), 403), Err(expected), "{len}");
        }
        // A message that is not a string: as `Value::to_string` writes it, whole up to 2,000
        // characters.
        let body = br#"{"success":false,"code":500,"message":{"b":1,"a":[1, 2.0]},"data":null}"#;
        assert_eq!(
            verdict(body, 200).map_err(|e| e.message),
            Err(r#"{"a":[1,2.0],"b":1}"#.to_string())
        );
        for (len, message) in [
            (1996, format!(r#"["{}"]"#, "x".repeat(1996))),
            (1997, format!(r#"["{}"…"#, "x".repeat(1997))),
        ] {
            let body = format!(
                r#"{{"success":false,"code":500,"message":["{}"],"data":null}}"#,
                "x".repeat(len)
            );
            let error = verdict(body.as_bytes(), 200).unwrap_err();
            assert_eq!(error.message, message, "{len}");
        }
    }

    #[test]
    fn our_own_envelope_errors_round_trip() {
        let original = ApiError::new(StatusCode::UNAUTHORIZED, "bad key")
            .with_type("invalid_request_error")
            .with_code("invalid_api_key");
        let body = original.to_body(Dialect::Envelope);
        let back = verdict(&body, 401).unwrap_err();
        assert_eq!(back, original);
    }
}
