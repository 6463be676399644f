//! Reading and writing the standard envelope (`--envelope standard`, the default) without
//! re-serialising payloads. Other envelopes are templates (`template.rs`), which come back here
//! for the standard one.
//!
//! Wrapping puts static prefix and suffix bytes around the upstream's own payload bytes;
//! unwrapping slices the `data` value out of the upstream body (`&RawValue` →
//! `Bytes::slice_ref`). The payload is validated by the parser but never rebuilt, so numbers,
//! key order and unicode escapes reach the client exactly as the upstream wrote them.
//!
//! Envelopes are parsed strictly: an object that would be an envelope but names one of its
//! members (`success`, `code`, `message`, `data`, `error`, `object`) twice is still an
//! envelope, an invalid one, whose verdict is an `upstream_invalid_body` error — never plain
//! JSON passed on as it is, and never a guess at which of the two values was meant.

use bytes::Bytes;
use http::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{error_type_for, ApiError, ErrorCode};

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

/// The top-level members of an envelope, borrowed from the body.
#[derive(Debug, Default, Deserialize)]
pub struct Envelope<'a> {
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
    /// Set instead of the members when the object names this member twice.
    #[serde(skip)]
    duplicate: Option<&'static str>,
}

/// Keeps a member that is present as `null` (`Option<&RawValue>` alone would read it as absent).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// What an envelope says.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Success: the `data` value, exactly as the upstream wrote it.
    Success(&'a RawValue),
    Error(ApiError),
}

/// Recognises an envelope: an object with `success`, or with `code` and `data` but no `object`
/// (a bare list such as `/models` has `object` and `data`).
pub fn classify(body: &[u8]) -> Classified<'_> {
    // serde also reads a struct from a JSON array; only an object can be an envelope.
    let is_object = body.trim_ascii_start().first() == Some(&b'{');
    if !is_object {
        return if is_json(body) {
            Classified::Json
        } else {
            Classified::NotJson
        };
    }
    // Read as text, checked once: from bytes, serde would check each member's raw value again.
    let Ok(text) = std::str::from_utf8(body) else {
        return Classified::NotJson;
    };
    match serde_json::from_str::<Envelope<'_>>(text) {
        Ok(env) if env.members().is_envelope() => Classified::Envelope(env),
        Ok(_) => Classified::Json,
        // Valid JSON fails here only for a member named twice (the derive rejects that).
        Err(_) => match serde_json::from_str::<Members>(text) {
            Ok(members) if members.is_envelope() => Classified::Envelope(Envelope {
                duplicate: members.duplicate,
                ..Envelope::default()
            }),
            Ok(_) => Classified::Json,
            Err(_) => Classified::NotJson,
        },
    }
}

/// Which envelope members an object has, and the first one it names twice: read leniently,
/// for an object the strict parse refused.
#[derive(Debug, Default)]
struct Members {
    success: bool,
    code: bool,
    data: bool,
    object: bool,
    duplicate: Option<&'static str>,
}

impl Members {
    fn is_envelope(&self) -> bool {
        self.success || (self.code && self.data && !self.object)
    }
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
                const NAMES: [&str; 6] = ["success", "code", "message", "data", "error", "object"];
                let mut seen = [false; 6];
                let mut members = Members::default();
                // Keys are unescaped (`"d\u0061ta"` is `data`), as the strict parse reads them.
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    map.next_value::<IgnoredAny>()?;
                    if let Some(i) = NAMES.iter().position(|name| *name == key) {
                        if std::mem::replace(&mut seen[i], true) {
                            members.duplicate.get_or_insert(NAMES[i]);
                        }
                    }
                }
                [members.success, members.code, members.data, members.object] =
                    [seen[0], seen[1], seen[3], seen[5]];
                Ok(members)
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl<'a> Envelope<'a> {
    fn members(&self) -> Members {
        Members {
            success: self.success.is_some(),
            code: self.code.is_some(),
            data: self.data.is_some(),
            object: self.object.is_some(),
            duplicate: self.duplicate,
        }
    }

    /// Success or error, judged by `success` and `code` (an error even under HTTP 200).
    pub fn verdict(self, http_status: StatusCode) -> Verdict<'a> {
        if let Some(member) = self.duplicate {
            return Verdict::Error(duplicated(member, http_status));
        }
        let success = match self
            .success
            .map(|raw| serde_json::from_str::<Value>(raw.get()))
        {
            None => None,
            Some(Ok(Value::Bool(flag))) => Some(flag),
            Some(_) => return Verdict::Error(malformed("`success` is not a boolean")),
        };
        // The common success codes are recognised from their raw bytes, without allocating.
        let code_ok = match self.code.map(RawValue::get) {
            Some(r#""200""# | "200" | r#""0""# | "0") => true,
            _ => match self.code_text() {
                Ok(None) => true,
                // A relayed 2xx status is a success code too (envelope-proxy writes `"201"`).
                Ok(Some(code)) => {
                    matches!(code.as_str(), "200" | "0")
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
            Some(data) if data.get() != "null" => Verdict::Success(data),
            _ => Verdict::Error(malformed("it reported success but carried no `data`")),
        }
    }

    /// The error this envelope reports, for a client of the bare dialect.
    ///
    /// Status: the envelope code when it is 400–599, else the HTTP status when ≥ 400, else 502.
    /// An inner `error` object (as envelope-proxy itself writes) supplies type, param and code.
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
        let message = self
            .message
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok());
        let inner = self
            .error
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .filter(Value::is_object);
        if let Some(inner) = inner {
            let message = inner.get("message").or(message.as_ref());
            return error_from_object(status, &inner, message);
        }
        let code = code.map(Value::String);
        ApiError::from_fields(status, message.as_ref(), None, None, code.as_ref())
    }

    /// `code` as text: `"200"` and `200` both read "200". `Err` for any other JSON type.
    fn code_text(&self) -> Result<Option<String>, ()> {
        let Some(raw) = self.code else {
            return Ok(None);
        };
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(text)) => Ok(Some(text)),
            Ok(Value::Number(number)) if number.is_i64() || number.is_u64() => {
                Ok(Some(number.to_string()))
            }
            Ok(Value::Null) => Ok(None),
            _ => Err(()),
        }
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

/// The error an envelope's error object (`{"message","type","param","code"}`) describes, with
/// `message` as its message; without a `type`, the one the status implies.
pub(crate) fn error_from_object(
    status: StatusCode,
    object: &Value,
    message: Option<&Value>,
) -> ApiError {
    let mut error = ApiError::from_fields(
        status,
        message,
        object.get("type"),
        object.get("param"),
        object.get("code"),
    );
    if object.get("type").is_none() {
        error.error_type = error_type_for(status).to_string();
    }
    error
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

/// The `data` payload of `body` as a zero-copy slice, given the `RawValue` parsed from it.
pub fn slice_payload(body: &Bytes, data: &RawValue) -> Bytes {
    body.slice_ref(data.get().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Dialect;

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
