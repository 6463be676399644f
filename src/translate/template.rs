//! Envelope shapes as templates (`--envelope`, `--upstream-envelope` and the template flags).
//!
//! A template is a JSON object whose top-level member values may be placeholders, each a whole
//! value: `$data` (the payload, its bytes untouched), `$status` (the HTTP status as a number),
//! `"$status"` (the same as a string), `$message` (the error message as a JSON string) and
//! `$error` (the OpenAI error object). Templates are parsed and checked once, at startup
//! ([`SuccessTemplate::parse`], [`ErrorTemplate::parse`], [`Envelopes::build`]), and turned
//! into what the request path needs:
//!
//! - wrapping: the bytes before and after `$data`, so a wrapped payload is
//!   `[prefix, payload, suffix]` and the payload is never copied or re-serialised;
//! - errors: the pieces between placeholders, filled when an error is rendered;
//! - unwrapping: the *discriminator* (the first member of the success template whose value is
//!   a constant) and the members where `$data`, `$status`, `$message` and `$error` stand.
//!
//! The `standard` preset (with no template flag on its side) keeps the code paths of
//! `envelope.rs` and so today's exact bytes and rules; every other envelope goes through the
//! generic rules here (issue 18): see [`Shape::unwrap`] and [`Shape::read_error`].

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::Bytes;
use clap::ValueEnum;
use http::StatusCode;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::dialect::Dialect;
use crate::error::{ApiError, Form};
use crate::translate::envelope::{self, Classified, Verdict};
use crate::translate::error_fields::{self, ErrorObject};
use crate::translate::json_check::EventChecks;

/// The named envelopes (`--envelope`, `--upstream-envelope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// `{"success":true,"code":"200","message":"successful","data":…}`.
    Standard,
    /// `{"code":0,"msg":"success","data":…}` (Lark/Feishu and many others).
    CodeMsgData,
    /// JSend: `{"status":"success","data":…}`, `"fail"` for client errors, `"error"` else.
    Jsend,
}

impl Preset {
    /// The success, error and client-error templates of the preset.
    fn texts(self) -> (&'static str, &'static str, Option<&'static str>) {
        match self {
            Preset::Standard => (
                r#"{"success":true,"code":"200","message":"successful","data":$data}"#,
                r#"{"success":false,"code":"$status","message":$message,"data":null,"error":$error}"#,
                None,
            ),
            Preset::CodeMsgData => (
                r#"{"code":0,"msg":"success","data":$data}"#,
                r#"{"code":$status,"msg":$message,"data":null,"error":$error}"#,
                None,
            ),
            Preset::Jsend => (
                r#"{"status":"success","data":$data}"#,
                r#"{"status":"error","message":$message,"code":$status,"data":$error}"#,
                Some(r#"{"status":"fail","data":$error}"#),
            ),
        }
    }

    fn success(self) -> SuccessTemplate {
        // The presets are constants checked by the unit tests: parsing them cannot fail.
        SuccessTemplate::parse(self.texts().0).unwrap_or_else(|_| unreachable!())
    }

    fn error(self) -> ErrorTemplate {
        ErrorTemplate::parse(self.texts().1).unwrap_or_else(|_| unreachable!())
    }

    fn client_error(self) -> Option<ErrorTemplate> {
        self.texts()
            .2
            .map(|text| ErrorTemplate::parse(text).unwrap_or_else(|_| unreachable!()))
    }
}

/// What stands as a member's value.
#[derive(Debug, Clone, PartialEq)]
enum Slot {
    /// A constant, as written in the template (its parsed value beside it, for comparisons).
    Const {
        raw: String,
        value: Value,
    },
    Data,
    /// `$status`: the status as a number.
    Status,
    /// `"$status"`: the status as a string.
    StatusText,
    Message,
    Error,
}

/// A checked template: its top-level members, in order.
#[derive(Debug, Clone, PartialEq)]
struct Template {
    members: Vec<(String, Slot)>,
}

const PLACEHOLDERS: [&str; 4] = ["data", "status", "message", "error"];

/// A success template (`--envelope-success`, `--upstream-envelope-success`).
#[derive(Debug, Clone, PartialEq)]
pub struct SuccessTemplate(Template);

/// An error template (`--envelope-error`, `--envelope-client-error` and their upstream twins).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorTemplate(Template);

impl SuccessTemplate {
    /// Checks a success template: a JSON object, `$data` exactly once, `$status` allowed,
    /// `$message` and `$error` refused (a success has neither).
    pub fn parse(text: &str) -> Result<Self, String> {
        let template = Template::parse(text)?;
        let data = template
            .members
            .iter()
            .filter(|(_, slot)| *slot == Slot::Data)
            .count();
        match data {
            0 => return Err("a success template needs `$data` (where the payload goes)".into()),
            1 => {}
            _ => {
                return Err(
                    "`$data` appears more than once; a success template holds it exactly once"
                        .into(),
                )
            }
        }
        if let Some((name, slot)) = template
            .members
            .iter()
            .find(|(_, slot)| matches!(slot, Slot::Message | Slot::Error))
        {
            let which = if *slot == Slot::Message {
                "$message"
            } else {
                "$error"
            };
            return Err(format!(
                "`{which}` (member `{name}`) has no value in a success template; write a constant"
            ));
        }
        Ok(Self(template))
    }
}

impl ErrorTemplate {
    /// Checks an error template: a JSON object with `$status`, `"$status"`, `$message` and
    /// `$error` allowed, `$data` refused (an error has no payload).
    pub fn parse(text: &str) -> Result<Self, String> {
        let template = Template::parse(text)?;
        if let Some((name, _)) = template.members.iter().find(|(_, s)| *s == Slot::Data) {
            return Err(format!(
                "`$data` (member `{name}`) has no value in an error template; use `$error` or a constant"
            ));
        }
        Ok(Self(template))
    }
}

impl Template {
    /// Parses `text`: every bare placeholder is replaced by `0` and spaces (so positions in
    /// error messages stay right), the result is parsed as JSON, and each placeholder must be
    /// the whole value of a top-level member.
    fn parse(text: &str) -> Result<Self, String> {
        let (json, placeholders) = blank_placeholders(text)?;
        if let Err(error) = serde_json::from_str::<IgnoredAny>(&json) {
            return Err(format!("not valid JSON: {error}"));
        }
        if !json.trim_start().starts_with('{') {
            return Err(
                "not a JSON object; a template is an object such as {\"data\":$data}".into(),
            );
        }
        let Ordered(members) = serde_json::from_str::<Ordered<'_>>(&json)
            .map_err(|error| format!("not valid JSON: {error}"))?;
        let mut out: Vec<(String, Slot)> = Vec::with_capacity(members.len());
        let mut used = vec![false; placeholders.len()];
        for (name, raw) in members {
            if out.iter().any(|(seen, _)| *seen == name) {
                return Err(format!("the member `{name}` appears more than once"));
            }
            check_strings_in_key(&name)?;
            let offset = raw.get().as_ptr() as usize - json.as_ptr() as usize;
            let slot = if let Some(i) = placeholders.iter().position(|(at, _)| *at == offset) {
                used[i] = true;
                match placeholders[i].1 {
                    "data" => Slot::Data,
                    "status" => Slot::Status,
                    "message" => Slot::Message,
                    _ => Slot::Error,
                }
            } else if raw.get() == r#""$status""# {
                Slot::StatusText
            } else {
                let value: Value = serde_json::from_str(raw.get())
                    .map_err(|error| format!("not valid JSON: {error}"))?;
                check_strings(&value)?;
                Slot::Const {
                    raw: raw.get().to_string(),
                    value,
                }
            };
            out.push((name.into_owned(), slot));
        }
        if let Some(i) = used.iter().position(|used| !used) {
            return Err(format!(
                "`${}` must be the whole value of a top-level member",
                placeholders[i].1
            ));
        }
        Ok(Template { members: out })
    }

    /// The member names and compact JSON text between placeholders, in order.
    fn pieces(&self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut text = String::from("{");
        for (i, (name, slot)) in self.members.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            // A string always serialises.
            text.push_str(&serde_json::to_string(name).unwrap_or_default());
            text.push(':');
            match slot {
                Slot::Const { raw, .. } => text.push_str(raw),
                placeholder => {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                    pieces.push(Piece::Slot(placeholder.clone()));
                }
            }
        }
        text.push('}');
        pieces.push(Piece::Text(text));
        pieces
    }

    fn member(&self, wanted: impl Fn(&Slot) -> bool) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, slot)| wanted(slot))
            .map(|(name, _)| name.as_str())
    }

    fn slot_of(&self, name: &str) -> Option<&Slot> {
        self.members
            .iter()
            .find(|(member, _)| member == name)
            .map(|(_, slot)| slot)
    }
}

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Slot(Slot),
}

/// A placeholder's offset in the blanked text, and its name.
type Found = (usize, &'static str);

/// Replaces each placeholder outside strings by `0` and spaces of the same length; returns
/// the JSON text and each placeholder's offset and name. Unknown placeholders are refused.
fn blank_placeholders(text: &str) -> Result<(String, Vec<Found>), String> {
    let bytes = text.as_bytes();
    let mut json = String::with_capacity(text.len());
    let mut found = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'$' => {
                let end = bytes[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .map_or(bytes.len(), |n| i + 1 + n);
                let name = &text[i + 1..end];
                let Some(known) = PLACEHOLDERS.iter().find(|p| **p == name) else {
                    return Err(format!(
                        "unknown placeholder `${name}`; the placeholders are $data, $status, \"$status\", $message and $error"
                    ));
                };
                json.push_str(&text[copied..i]);
                found.push((json.len(), *known));
                json.push('0');
                json.extend(std::iter::repeat_n(' ', end - i - 1));
                copied = end;
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    json.push_str(&text[copied..]);
    Ok((json, found))
}

/// A string constant that looks like a placeholder is refused: placeholders are whole
/// values, never parts of strings (only `"$status"`, as a whole member value, is a string).
fn check_string(text: &str) -> Result<(), String> {
    let whole = text.strip_prefix('$').is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    let inside = PLACEHOLDERS
        .iter()
        .any(|name| text.contains(&format!("${name}")));
    if whole || inside {
        return Err(format!(
            "the string {} holds a placeholder; placeholders are whole values without quotes (only \"$status\" is written as a string, as a member's whole value)",
            serde_json::to_string(text).unwrap_or_default()
        ));
    }
    Ok(())
}

fn check_strings_in_key(name: &str) -> Result<(), String> {
    check_string(name)
}

fn check_strings(value: &Value) -> Result<(), String> {
    match value {
        Value::String(text) => check_string(text),
        Value::Array(items) => items.iter().try_for_each(check_strings),
        Value::Object(members) => members.iter().try_for_each(|(key, value)| {
            check_string(key)?;
            check_strings(value)
        }),
        _ => Ok(()),
    }
}

/// A JSON object's members in order, values borrowed (keys unescaped).
struct Ordered<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Ordered<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Ordered<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Ordered(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A success template ready to wrap: the bytes around `$data` for HTTP 200 (and for events).
#[derive(Debug)]
struct Wrapper {
    pieces: Vec<Piece>,
    /// Where `$data` stands in `pieces`.
    data_at: usize,
    prefix: Bytes,
    suffix: Bytes,
    /// True when `$status` appears: other statuses than 200 are filled in when wrapping.
    has_status: bool,
    /// `data: ` + prefix, and the suffix with the usual end of an event (events say 200).
    event_prefix: Bytes,
    event_suffix_end: Bytes,
}

impl Wrapper {
    fn new(template: &SuccessTemplate) -> Self {
        let pieces = template.0.pieces();
        let data_at = pieces
            .iter()
            .position(|piece| matches!(piece, Piece::Slot(Slot::Data)))
            .unwrap_or(pieces.len());
        let has_status = template
            .0
            .members
            .iter()
            .any(|(_, slot)| matches!(slot, Slot::Status | Slot::StatusText));
        let render = |range: &[Piece]| render_pieces(range, StatusCode::OK, None);
        let prefix = render(&pieces[..data_at]);
        let suffix = render(pieces.get(data_at + 1..).unwrap_or_default());
        let mut event_prefix = b"data: ".to_vec();
        event_prefix.extend_from_slice(&prefix);
        let mut event_suffix_end = suffix.clone();
        event_suffix_end.extend_from_slice(b"\n\n");
        Self {
            data_at,
            prefix: Bytes::from(prefix),
            suffix: Bytes::from(suffix),
            has_status,
            event_prefix: Bytes::from(event_prefix),
            event_suffix_end: Bytes::from(event_suffix_end),
            pieces,
        }
    }

    fn wrap(&self, status: StatusCode, payload: Bytes) -> [Bytes; 3] {
        if status == StatusCode::OK || !self.has_status {
            return [self.prefix.clone(), payload, self.suffix.clone()];
        }
        let prefix = render_pieces(&self.pieces[..self.data_at], status, None);
        let suffix = render_pieces(
            self.pieces.get(self.data_at + 1..).unwrap_or_default(),
            status,
            None,
        );
        [Bytes::from(prefix), payload, Bytes::from(suffix)]
    }
}

/// Fills `pieces`: `$status` with `status`, `$message` and `$error` from `error`.
fn render_pieces(pieces: &[Piece], status: StatusCode, error: Option<&ApiError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
            Piece::Slot(Slot::Status) => out.extend_from_slice(status.as_str().as_bytes()),
            Piece::Slot(Slot::StatusText) => {
                out.push(b'"');
                out.extend_from_slice(status.as_str().as_bytes());
                out.push(b'"');
            }
            Piece::Slot(Slot::Message) => {
                let message = error.map_or("", |e| e.message.as_str());
                // A string always serialises.
                out.extend_from_slice(&serde_json::to_vec(message).unwrap_or_default());
            }
            Piece::Slot(Slot::Error) => match error {
                Some(error) => out.extend_from_slice(&error.error_object()),
                None => out.extend_from_slice(b"null"),
            },
            Piece::Slot(Slot::Data | Slot::Const { .. }) => out.extend_from_slice(b"null"),
        }
    }
    out
}

/// How an envelope upstream's body is read (the generic rules, issue 18).
#[derive(Debug)]
struct Reader {
    discriminator: String,
    success: Value,
    data: String,
    error: ErrorReading,
    client_error: Option<ErrorReading>,
    /// Every member name the rules read (the parse keeps only these).
    names: Vec<String>,
}

/// What an error template says about reading one.
#[derive(Debug)]
struct ErrorReading {
    /// The discriminator's constant; `None` when a placeholder stands there (any value).
    constant: Option<Value>,
    status: Option<String>,
    message: Option<String>,
    error: Option<String>,
}

impl ErrorReading {
    fn new(template: &ErrorTemplate, discriminator: &str) -> Result<Self, String> {
        let t = &template.0;
        let constant = match t.slot_of(discriminator) {
            Some(Slot::Const { value, .. }) => Some(value.clone()),
            Some(_) => None,
            None => {
                return Err(format!(
                    "it has no member `{discriminator}`, the discriminator of the success template, so an error cannot be told from a success"
                ))
            }
        };
        Ok(Self {
            constant,
            status: t
                .member(|s| matches!(s, Slot::Status | Slot::StatusText))
                .map(str::to_string),
            message: t.member(|s| *s == Slot::Message).map(str::to_string),
            error: t.member(|s| *s == Slot::Error).map(str::to_string),
        })
    }
}

/// One side's envelope: what envelope clients receive, or what an envelope upstream sends.
#[derive(Debug)]
pub struct Shape {
    /// `None`: the standard envelope with today's code paths (`envelope.rs`).
    templates: Option<Templates>,
}

#[derive(Debug)]
struct Templates {
    success: SuccessTemplate,
    error: ErrorTemplate,
    client_error: Option<ErrorTemplate>,
    wrapper: Wrapper,
    error_pieces: Vec<Piece>,
    client_error_pieces: Option<Vec<Piece>>,
    /// `None` when the success template has no constant member (it cannot be read back).
    reader: Result<Reader, String>,
}

/// `data: ` + the bytes before an event's payload, the bytes after it, and those with `\n\n`.
pub(crate) type EventPieces = (Bytes, Bytes, Bytes);

/// What an envelope upstream's success body held.
#[derive(Debug)]
pub enum Unwrapped {
    /// The payload: a slice of the body, its bytes untouched.
    Payload(Bytes),
    /// The error the envelope reports (also an invalid envelope).
    Error(ApiError),
    /// The standard envelope only: valid JSON that is no envelope, passed on as it is.
    Bare,
    /// The standard envelope only: not JSON.
    NotJson,
}

impl Shape {
    fn standard() -> Self {
        Self { templates: None }
    }

    fn from_templates(
        success: SuccessTemplate,
        error: ErrorTemplate,
        client_error: Option<ErrorTemplate>,
    ) -> Self {
        let reader = Reader::new(&success, &error, client_error.as_ref());
        Self {
            templates: Some(Templates {
                wrapper: Wrapper::new(&success),
                error_pieces: error.0.pieces(),
                client_error_pieces: client_error.as_ref().map(|t| t.0.pieces()),
                success,
                error,
                client_error,
                reader,
            }),
        }
    }

    /// True for the standard envelope on today's code paths.
    pub fn is_standard(&self) -> bool {
        self.templates.is_none()
    }

    /// The member where a success holds its payload (`$data` in the template).
    pub fn payload_member(&self) -> &str {
        self.templates
            .as_ref()
            .and_then(|t| t.success.0.member(|slot| *slot == Slot::Data))
            .unwrap_or("data")
    }

    /// `payload` inside the success envelope, in three pieces; the payload is not copied.
    pub fn wrap(&self, status: StatusCode, payload: Bytes) -> [Bytes; 3] {
        match &self.templates {
            None => envelope::wrap_success_with(status, payload),
            Some(t) => t.wrapper.wrap(status, payload),
        }
    }

    /// `data: ` and the bytes before the payload of a wrapped event; the bytes after it; the
    /// bytes after it with the usual end of an event (`\n\n`). `None` for the standard envelope.
    pub(crate) fn event_pieces(&self) -> Option<EventPieces> {
        self.templates.as_ref().map(|t| {
            (
                t.wrapper.event_prefix.clone(),
                t.wrapper.suffix.clone(),
                t.wrapper.event_suffix_end.clone(),
            )
        })
    }

    /// `error` as an envelope error body: the client-error template for a 4xx when there is
    /// one, else the error template.
    pub fn error_body(&self, error: &ApiError) -> Bytes {
        let Some(t) = &self.templates else {
            return error.to_body(Form::Envelope);
        };
        let pieces = match &t.client_error_pieces {
            Some(pieces) if error.status.is_client_error() => pieces,
            _ => &t.error_pieces,
        };
        Bytes::from(render_pieces(pieces, error.status, Some(error)))
    }

    /// Reads a success body (HTTP 2xx) from an envelope upstream.
    pub fn unwrap(&self, body: &Bytes, http_status: StatusCode) -> Unwrapped {
        self.unwrap_checked(body, http_status, None)
    }

    /// [`Shape::unwrap`], the standard envelope's JSON check done by `checks` when given (the
    /// checks of a stream's events).
    fn unwrap_checked(
        &self,
        body: &Bytes,
        http_status: StatusCode,
        checks: Option<&mut EventChecks>,
    ) -> Unwrapped {
        let Some(t) = &self.templates else {
            return match envelope::classify_in(body, checks) {
                Classified::Envelope(env) => match env.verdict(http_status) {
                    Verdict::Success(data) => {
                        Unwrapped::Payload(envelope::slice_payload(body, data))
                    }
                    Verdict::Error(error) => Unwrapped::Error(error),
                },
                Classified::Json => Unwrapped::Bare,
                Classified::NotJson => Unwrapped::NotJson,
            };
        };
        match &t.reader {
            Ok(reader) => match reader.read(body, http_status) {
                Read::Success(data) => Unwrapped::Payload(body.slice_ref(data.get().as_bytes())),
                Read::Error(error) => Unwrapped::Error(error),
                Read::NotEnvelope(why) | Read::Invalid(why) => {
                    Unwrapped::Error(invalid(http_status, &why))
                }
            },
            Err(why) => Unwrapped::Error(invalid(http_status, why)),
        }
    }

    /// Reads one event's data from an envelope upstream's stream. As for the standard
    /// envelope, an event that is no envelope (not a JSON object, or without the
    /// discriminator) is `Bare`: it goes on as it came.
    /// `checks` are the stream's: each event's check starts where it stops matching the last.
    pub fn unwrap_event(&self, data: &Bytes, checks: &mut EventChecks) -> Unwrapped {
        let Some(t) = &self.templates else {
            return self.unwrap_checked(data, StatusCode::OK, Some(checks));
        };
        match &t.reader {
            Ok(reader) => match reader.read(data, StatusCode::OK) {
                Read::Success(payload) => {
                    Unwrapped::Payload(data.slice_ref(payload.get().as_bytes()))
                }
                Read::Error(error) => Unwrapped::Error(error),
                Read::NotEnvelope(_) => Unwrapped::Bare,
                Read::Invalid(why) => Unwrapped::Error(invalid(StatusCode::OK, &why)),
            },
            Err(why) => Unwrapped::Error(invalid(StatusCode::OK, why)),
        }
    }

    /// An upstream error body (HTTP ≥ 400) read by this envelope's error templates; `None`
    /// for the standard envelope (read by `error_body::normalise`) and for a body that is no
    /// error envelope of this shape.
    pub fn read_error(&self, http_status: StatusCode, body: &[u8]) -> Option<ApiError> {
        let reader = self.templates.as_ref()?.reader.as_ref().ok()?;
        match reader.read(body, http_status) {
            Read::Error(error) => Some(error),
            Read::Success(_) | Read::NotEnvelope(_) | Read::Invalid(_) => None,
        }
    }

    /// The same templates (so bodies pass between the two sides unchanged).
    fn same_as(&self, other: &Shape) -> bool {
        match (&self.templates, &other.templates) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.success == b.success && a.error == b.error && a.client_error == b.client_error
            }
            _ => false,
        }
    }
}

/// `upstream_invalid_body`: the body is no envelope of the configured shape.
fn invalid(http_status: StatusCode, why: &str) -> ApiError {
    envelope::unreadable(
        http_status,
        format!(
            "upstream sent a body that is not a valid envelope under HTTP {}: {why}",
            http_status.as_u16()
        ),
    )
}

enum Read<'a> {
    Success(&'a RawValue),
    Error(ApiError),
    /// Rule 1: not a JSON object, or no discriminator.
    NotEnvelope(String),
    /// An envelope whose discriminator or payload is wrong.
    Invalid(String),
}

impl Reader {
    fn new(
        success: &SuccessTemplate,
        error: &ErrorTemplate,
        client_error: Option<&ErrorTemplate>,
    ) -> Result<Self, String> {
        let Some((discriminator, constant)) =
            success
                .0
                .members
                .iter()
                .find_map(|(name, slot)| match slot {
                    Slot::Const { value, .. } => Some((name.clone(), value.clone())),
                    _ => None,
                })
        else {
            return Err("the success template has no member with a constant value (a discriminator) to tell success from error".into());
        };
        let data = success.0.member(|s| *s == Slot::Data).unwrap_or("data");
        let error = ErrorReading::new(error, &discriminator)
            .map_err(|why| format!("the error template: {why}"))?;
        let client_error = client_error
            .map(|t| ErrorReading::new(t, &discriminator))
            .transpose()
            .map_err(|why| format!("the client-error template: {why}"))?;
        if let Some(client_error) = &client_error {
            if client_error.constant.is_none() {
                return Err(format!("the client-error template: `{discriminator}` must be a constant there, to tell a client error from an error"));
            }
        }
        let readings = std::iter::once(&error).chain(client_error.as_ref());
        for reading in readings.clone() {
            if reading
                .constant
                .as_ref()
                .is_some_and(|c| same_value(c, &constant))
            {
                return Err(format!(
                    "the success and error templates give `{discriminator}` the same value"
                ));
            }
        }
        if let (Some(a), Some(b)) = (
            error.constant.as_ref(),
            client_error.as_ref().and_then(|c| c.constant.as_ref()),
        ) {
            if same_value(a, b) {
                return Err(format!(
                    "the error and client-error templates give `{discriminator}` the same value"
                ));
            }
        }
        let mut names = vec![discriminator.clone(), data.to_string()];
        for reading in readings {
            names.extend(
                [&reading.status, &reading.message, &reading.error]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        names.sort();
        names.dedup();
        Ok(Self {
            discriminator,
            success: constant,
            data: data.to_string(),
            error,
            client_error,
            names,
        })
    }

    /// The rules of issue 18, in order.
    ///
    /// A discriminator over [`MAX_VALUE_BYTES`](error_fields::MAX_VALUE_BYTES) (4 KiB) as
    /// written is never read into a [`Value`]: the templates' constants are small, so it equals
    /// none of them. It is then an error only where the error template has a placeholder at the
    /// discriminator (code-msg-data's `"code":$status`); else the body is invalid, the value
    /// shown by its first 64 characters as written ([`short_raw`]).
    fn read<'a>(&self, body: &'a [u8], http_status: StatusCode) -> Read<'a> {
        // 1. A JSON object with the discriminator.
        let members = match Picked::parse(body, &self.names) {
            Ok(members) => members,
            Err(Unpicked::NotObject(why)) => return Read::NotEnvelope(why),
            Err(Unpicked::Duplicate(why)) => return Read::Invalid(why),
        };
        let Some(raw) = members.get(&self.discriminator) else {
            return Read::NotEnvelope(format!("it has no member `{}`", self.discriminator));
        };
        let found = if error_fields::fits(raw.get()) {
            match serde_json::from_str::<Value>(raw.get()) {
                Ok(found) => Some(found),
                Err(_) => return Read::Invalid(format!("`{}` is not JSON", self.discriminator)),
            }
        } else {
            None
        };
        let equals = |constant: &Value| found.as_ref().is_some_and(|f| same_value(f, constant));
        // 2. Success: the payload where `$data` stands.
        if equals(&self.success) {
            return match members.get(&self.data) {
                Some(data) => Read::Success(data),
                None => Read::Invalid(format!(
                    "it reports success but has no member `{}`",
                    self.data
                )),
            };
        }
        // 3. A client error, an error, or neither.
        let client = self
            .client_error
            .as_ref()
            .filter(|c| c.constant.as_ref().is_some_and(equals));
        let (reading, client) = match client {
            Some(reading) => (reading, true),
            None if self.error.constant.as_ref().is_none_or(equals) => (&self.error, false),
            None => {
                return Read::Invalid(format!(
                    "`{}` is {}, neither success nor error",
                    self.discriminator,
                    match &found {
                        Some(found) => short(found),
                        None => short_raw(raw.get()),
                    }
                ))
            }
        };
        Read::Error(reading.to_error(&members, http_status, client))
    }
}

impl ErrorReading {
    /// 4. Status, message and error object of an error envelope.
    ///
    /// Members are read as written (`error_fields.rs`): a message built from JSON stops after
    /// 2,000 characters, a `param` or `code` over 4 KiB is null.
    fn to_error(&self, members: &Picked<'_>, http_status: StatusCode, client: bool) -> ApiError {
        let member = |name: &Option<String>| name.as_deref().and_then(|name| members.get(name));
        let code = member(&self.status);
        let status = code
            .and_then(status_number)
            .filter(|c| (400..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .or_else(|| (http_status.as_u16() >= 400).then_some(http_status))
            .unwrap_or(if client {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::BAD_GATEWAY
            });
        let message = member(&self.message).filter(|m| m.get() != "null");
        if let Some(inner) = member(&self.error).and_then(ErrorObject::read) {
            // The `$message` member first, then the object's own.
            return inner.into_error(status, message.or(inner.message));
        }
        // The `$status` member as a string.
        let code = match error_fields::small_value(code) {
            Value::Null => Value::Null,
            Value::String(text) => Value::String(text),
            other => Value::String(other.to_string()),
        };
        ApiError::new(status, error_fields::message(status, message))
            .with_type("upstream_error")
            .with_code(code)
    }
}

/// An integer, or a string holding one (spaces around it allowed), as a status number.
fn status_number(raw: &RawValue) -> Option<u16> {
    match error_fields::text(raw) {
        Some(text) => text.trim().parse().ok(),
        None => error_fields::integer(raw)?.parse().ok(),
    }
}

/// Equal JSON values, where numbers compare numerically and a numeric string equals its
/// number (`"0"` = `0`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::String(text), Value::Number(n)) | (Value::Number(n), Value::String(text)) => {
            numeric_string(text, n)
        }
        _ => a == b,
    }
}

/// A string of digits (with a sign, a fraction or an exponent) against a number: `"0"` and
/// `"0000"` equal `0`.
fn numeric_string(text: &str, n: &serde_json::Number) -> bool {
    let text = text.trim();
    let numeric = !text.is_empty()
        && text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    if !numeric {
        return false;
    }
    match (text.parse::<i128>(), n.as_i128()) {
        (Ok(a), Some(b)) => a == b,
        _ => text
            .parse::<f64>()
            .ok()
            .zip(n.as_f64())
            .is_some_and(|(a, b)| a == b),
    }
}

fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    match (x.as_i128(), y.as_i128()) {
        (Some(a), Some(b)) => a == b,
        _ => x.as_f64().zip(y.as_f64()).is_some_and(|(a, b)| a == b),
    }
}

/// A value for a message: short, on one line.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 64 {
        text
    } else {
        let cut: String = text.chars().take(64).collect();
        format!("{cut}…")
    }
}

/// A value too large to read (see [`Reader::read`]) for a message: its first 64 characters as
/// written, without the whitespace between tokens (on one line, as [`short`] writes a value),
/// then `…`.
fn short_raw(raw: &str) -> String {
    let (mut out, mut count, mut in_string, mut escaped) = (String::new(), 0, false, false);
    for ch in raw.chars() {
        if !in_string && ch.is_ascii_whitespace() {
            continue;
        }
        if count == 64 {
            out.push('…');
            break;
        }
        out.push(ch);
        count += 1;
        if escaped {
            escaped = false;
        } else if in_string && ch == '\\' {
            escaped = true;
        } else if ch == '"' {
            in_string = !in_string;
        }
    }
    out
}

/// The members the rules read, borrowed from the body; any other member is skipped unread.
struct Picked<'a>(Vec<(String, &'a RawValue)>, Option<String>);

impl<'a> Picked<'a> {
    fn parse(body: &'a [u8], names: &[String]) -> Result<Self, Unpicked> {
        let not_object = |why: &str| Unpicked::NotObject(why.to_string());
        if std::str::from_utf8(body).is_err() {
            return Err(not_object("it is not UTF-8"));
        }
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
                not_object("it is not a JSON object")
            } else {
                not_object("it is not valid JSON")
            });
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let picked = serde::de::DeserializeSeed::deserialize(PickVisit { names }, &mut de)
            .and_then(|picked| de.end().map(|()| picked))
            .map_err(|_| not_object("it is not valid JSON"))?;
        match picked.1 {
            Some(name) => Err(Unpicked::Duplicate(format!(
                "the member `{name}` appears more than once"
            ))),
            None => Ok(picked),
        }
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// Why a body's members were not picked.
enum Unpicked {
    /// Not a JSON object (rule 1).
    NotObject(String),
    /// A member the rules read appears twice.
    Duplicate(String),
}

struct PickVisit<'n> {
    names: &'n [String],
}

impl<'de> serde::de::DeserializeSeed<'de> for PickVisit<'_> {
    type Value = Picked<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PickVisit<'_> {
    type Value = Picked<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Picked<'de>, A::Error> {
        let mut picked: Vec<(String, &'de RawValue)> = Vec::new();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if self.names.iter().any(|name| *name == key) {
                let value = map.next_value::<&'de RawValue>()?;
                if picked.iter().any(|(name, _)| *name == key) {
                    // Which of the two counts is anyone's guess: neither.
                    duplicate.get_or_insert(key.into_owned());
                } else {
                    picked.push((key.into_owned(), value));
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Picked(picked, duplicate))
    }
}

/// The envelopes of both sides, built once at startup and shared by every request.
///
/// A `'static` reference: built once per server and kept for the life of the process (a few
/// hundred bytes, never freed), so the settings that carry it stay `Copy` and no request or
/// event touches a reference count for it.
#[derive(Debug, Clone, Copy)]
pub struct Envelopes(&'static Sides);

#[derive(Debug)]
struct Sides {
    client: Shape,
    upstream: Shape,
    same: bool,
}

/// The template flags of one side, as given.
#[derive(Debug, Clone, Default)]
pub struct SideFlags<'a> {
    pub preset: Option<Preset>,
    pub success: Option<&'a SuccessTemplate>,
    pub error: Option<&'a ErrorTemplate>,
    pub client_error: Option<&'a ErrorTemplate>,
}

impl SideFlags<'_> {
    fn customised(&self) -> bool {
        self.success.is_some() || self.error.is_some() || self.client_error.is_some()
    }
}

static STANDARD: LazyLock<Sides> = LazyLock::new(|| Sides {
    client: Shape::standard(),
    upstream: Shape::standard(),
    same: true,
});

impl Envelopes {
    /// The standard envelope on both sides (the default).
    pub fn standard() -> Self {
        Self(LazyLock::force(&STANDARD))
    }

    /// Both sides from their flags. The upstream side defaults, template by template, to
    /// the client side. `reads_upstream` (an `--upstream-shape envelope` upstream): the
    /// upstream templates must then be readable (a discriminator, told apart).
    pub fn build(
        client: &SideFlags<'_>,
        upstream: &SideFlags<'_>,
        reads_upstream: bool,
    ) -> Result<Self, String> {
        let client_preset = client.preset.unwrap_or(Preset::Standard);
        let client_shape = if client_preset == Preset::Standard && !client.customised() {
            Shape::standard()
        } else {
            side(client_preset, client, None)
        };
        let upstream_shape = if upstream.preset.is_none() && !upstream.customised() {
            // The same as the client side.
            side(client_preset, client, None)
        } else {
            let preset = upstream.preset.unwrap_or(client_preset);
            side(
                preset,
                upstream,
                (upstream.preset.is_none()).then_some(client),
            )
        };
        // The standard preset with no template flag (its own, or the client side's it
        // defaults to) keeps today's rules.
        let inherits = upstream.preset.is_none() && client.customised();
        let upstream_shape = if upstream.preset.unwrap_or(client_preset) == Preset::Standard
            && !upstream.customised()
            && !inherits
        {
            Shape::standard()
        } else {
            upstream_shape
        };
        if reads_upstream {
            if let Some(Err(why)) = upstream_shape.templates.as_ref().map(|t| &t.reader) {
                return Err(format!("the upstream envelope cannot be read: {why}"));
            }
        }
        if client_shape.is_standard() && upstream_shape.is_standard() {
            // The default: nothing to keep.
            return Ok(Self::standard());
        }
        let same = client_shape.same_as(&upstream_shape);
        Ok(Self(Box::leak(Box::new(Sides {
            client: client_shape,
            upstream: upstream_shape,
            same,
        }))))
    }

    /// What envelope clients receive.
    pub fn client(self) -> &'static Shape {
        &self.0.client
    }

    /// What an envelope upstream sends.
    pub fn upstream(self) -> &'static Shape {
        &self.0.upstream
    }

    /// True when both sides use the same envelope: envelope bodies pass unchanged.
    pub fn same(self) -> bool {
        self.0.same
    }

    /// `error` as a body in `dialect` (envelope: the client's templates).
    pub fn error_body(self, dialect: Dialect, error: &ApiError) -> Bytes {
        match dialect {
            Dialect::Bare => error.to_body(Form::Bare),
            Dialect::Envelope => self.client().error_body(error),
        }
    }
}

/// One side's shape: each template flag given, else `fallback`'s (the client side), else the
/// preset's.
fn side(preset: Preset, flags: &SideFlags<'_>, fallback: Option<&SideFlags<'_>>) -> Shape {
    let pick_success = flags
        .success
        .or_else(|| fallback.and_then(|f| f.success))
        .cloned()
        .unwrap_or_else(|| preset.success());
    let pick_error = flags
        .error
        .or_else(|| fallback.and_then(|f| f.error))
        .cloned()
        .unwrap_or_else(|| preset.error());
    let pick_client = flags
        .client_error
        .or_else(|| fallback.and_then(|f| f.client_error))
        .cloned()
        .or_else(|| preset.client_error());
    Shape::from_templates(pick_success, pick_error, pick_client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn concat(parts: [Bytes; 3]) -> String {
        String::from_utf8(parts.concat()).unwrap()
    }

    fn shape(preset: Preset) -> Shape {
        side(preset, &SideFlags::default(), None)
    }

    fn custom() -> Shape {
        Shape::from_templates(
            SuccessTemplate::parse(r#"{"ok":true,"retCode":"0000","result":$data}"#).unwrap(),
            ErrorTemplate::parse(
                r#"{"ok":false,"retCode":"$status","retMsg":$message,"err":$error}"#,
            )
            .unwrap(),
            None,
        )
    }

    #[test]
    fn presets_parse_and_wrap() {
        let payload = || Bytes::from_static(br#"{"id":"x","n":1.50}"#);
        assert_eq!(
            concat(shape(Preset::Standard).wrap(StatusCode::OK, payload())),
            r#"{"success":true,"code":"200","message":"successful","data":{"id":"x","n":1.50}}"#
        );
        assert_eq!(
            concat(shape(Preset::CodeMsgData).wrap(StatusCode::OK, payload())),
            r#"{"code":0,"msg":"success","data":{"id":"x","n":1.50}}"#
        );
        assert_eq!(
            concat(shape(Preset::Jsend).wrap(StatusCode::CREATED, payload())),
            r#"{"status":"success","data":{"id":"x","n":1.50}}"#
        );
        assert_eq!(
            concat(custom().wrap(StatusCode::OK, payload())),
            r#"{"ok":true,"retCode":"0000","result":{"id":"x","n":1.50}}"#
        );
        // `$status` in a success template follows the response's status.
        let with_status = Shape::from_templates(
            SuccessTemplate::parse(r#"{"s": $status, "t": "$status", "d": $data, "z": [1, 2]}"#)
                .unwrap(),
            Preset::Jsend.error(),
            None,
        );
        assert_eq!(
            concat(with_status.wrap(StatusCode::OK, payload())),
            r#"{"s":200,"t":"200","d":{"id":"x","n":1.50},"z":[1, 2]}"#
        );
        assert_eq!(
            concat(with_status.wrap(StatusCode::CREATED, payload())),
            r#"{"s":201,"t":"201","d":{"id":"x","n":1.50},"z":[1, 2]}"#
        );
    }

    #[test]
    fn wrapping_shares_the_payload_and_the_prefix() {
        let body = Bytes::from(br#"{"a":1}"#.to_vec());
        let jsend = shape(Preset::Jsend);
        let [prefix, payload, _] = jsend.wrap(StatusCode::OK, body.clone());
        assert_eq!(payload.as_ptr(), body.as_ptr());
        let [again, _, _] = jsend.wrap(StatusCode::OK, body);
        assert_eq!(prefix.as_ptr(), again.as_ptr());
    }

    #[test]
    fn errors_render_in_each_preset() {
        let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow \"down\"")
            .with_code("rate_limit_exceeded");
        let inner = r#"{"message":"slow \"down\"","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}"#;
        let body = |shape: Shape, error: &ApiError| {
            String::from_utf8(shape.error_body(error).to_vec()).unwrap()
        };
        assert_eq!(
            body(Shape::standard(), &error),
            format!(
                r#"{{"success":false,"code":"429","message":"slow \"down\"","data":null,"error":{inner}}}"#
            )
        );
        // The standard preset through the templates writes the same bytes.
        assert_eq!(
            body(shape(Preset::Standard), &error),
            body(Shape::standard(), &error)
        );
        assert_eq!(
            body(shape(Preset::CodeMsgData), &error),
            format!(r#"{{"code":429,"msg":"slow \"down\"","data":null,"error":{inner}}}"#)
        );
        assert_eq!(
            body(shape(Preset::Jsend), &error),
            format!(r#"{{"status":"fail","data":{inner}}}"#)
        );
        let server = ApiError::new(StatusCode::BAD_GATEWAY, "down");
        assert_eq!(
            body(shape(Preset::Jsend), &server),
            r#"{"status":"error","message":"down","code":502,"data":{"message":"down","type":"server_error","param":null,"code":null}}"#
        );
        assert_eq!(
            body(custom(), &server),
            r#"{"ok":false,"retCode":"502","retMsg":"down","err":{"message":"down","type":"server_error","param":null,"code":null}}"#
        );
    }

    fn read(shape: &Shape, body: &'static [u8], status: u16) -> Result<String, ApiError> {
        match shape.unwrap(
            &Bytes::from_static(body),
            StatusCode::from_u16(status).unwrap(),
        ) {
            Unwrapped::Payload(p) => Ok(String::from_utf8(p.to_vec()).unwrap()),
            Unwrapped::Error(e) => Err(e),
            other => panic!("{other:?}"),
        }
    }

    fn invalid_body(status: u16, under: u16, why: &str) -> ApiError {
        ApiError::new(
            StatusCode::from_u16(status).unwrap(),
            format!("upstream sent a body that is not a valid envelope under HTTP {under}: {why}"),
        )
        .with_type("upstream_error")
        .with_code("upstream_invalid_body")
    }

    #[test]
    fn rule_1_not_an_object_or_no_discriminator() {
        let cmd = shape(Preset::CodeMsgData);
        assert_eq!(
            read(&cmd, b"[1]", 200),
            Err(invalid_body(502, 200, "it is not a JSON object"))
        );
        assert_eq!(
            read(&cmd, b"<html>", 200),
            Err(invalid_body(502, 200, "it is not valid JSON"))
        );
        assert_eq!(
            read(&cmd, br#"{"code":0,"#, 200),
            Err(invalid_body(502, 200, "it is not valid JSON"))
        );
        assert_eq!(
            read(&cmd, br#"{"msg":"ok","data":{}}"#, 200),
            Err(invalid_body(502, 200, "it has no member `code`"))
        );
        assert_eq!(
            read(&cmd, br#"{"code":0,"data":{},"data":{}}"#, 200),
            Err(invalid_body(
                502,
                200,
                "the member `data` appears more than once"
            ))
        );
        // Unread members may repeat.
        assert_eq!(
            read(&cmd, br#"{"code":0,"x":1,"x":2,"data":[]}"#, 200),
            Ok("[]".into())
        );
    }

    #[test]
    fn rule_2_success_slices_the_payload() {
        let cmd = shape(Preset::CodeMsgData);
        for body in [
            &br#"{"code":0,"msg":"success","data":{"a": [1, 2.0]}}"#[..],
            br#"{"data":{"a": [1, 2.0]},"code":"0"}"#,
            br#"{"code":0.0,"data":{"a": [1, 2.0]}}"#,
            br#"{"code":-0,"data":{"a": [1, 2.0]}}"#,
            br#"{"c\u006fde":0,"data":{"a": [1, 2.0]}}"#,
        ] {
            let body = Bytes::from_static(body);
            let Unwrapped::Payload(p) = cmd.unwrap(&body, StatusCode::OK) else {
                panic!("{body:?}")
            };
            assert_eq!(&p[..], br#"{"a": [1, 2.0]}"#);
            assert!(
                body.as_ptr() <= p.as_ptr() && p.as_ptr() < body.as_ptr().wrapping_add(body.len())
            );
        }
        assert_eq!(
            read(&cmd, br#"{"code":0,"msg":"success"}"#, 200),
            Err(invalid_body(
                502,
                200,
                "it reports success but has no member `data`"
            ))
        );
        let ok = custom();
        assert_eq!(
            read(&ok, br#"{"ok":true,"retCode":"0000","result":null}"#, 200),
            Ok("null".into())
        );
        assert_eq!(
            read(&ok, br#"{"ok":"yes","result":1}"#, 200),
            Err(invalid_body(
                502,
                200,
                "`ok` is \"yes\", neither success nor error"
            ))
        );
    }

    #[test]
    fn rule_3_and_4_errors() {
        let cmd = shape(Preset::CodeMsgData);
        // Lark: a 502 with the message and the code as a string.
        assert_eq!(
            read(
                &cmd,
                br#"{"code":99991663,"msg":"token invalid","data":{}}"#,
                200
            ),
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "token invalid")
                .with_type("upstream_error")
                .with_code("99991663"))
        );
        // A code in 400–599 is the status, also as a numeric string.
        assert_eq!(
            read(&cmd, br#"{"code":"429","msg":"slow","data":null}"#, 200),
            Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow")
                .with_type("upstream_error")
                .with_code("429"))
        );
        // A code outside 400–599 is no status.
        for (body, code) in [
            (&br#"{"code":302,"msg":"moved","data":null}"#[..], "302"),
            (br#"{"code":"700","msg":"moved","data":null}"#, "700"),
            (br#"{"code":200,"msg":"moved","data":null}"#, "200"),
        ] {
            let body = Bytes::copy_from_slice(body);
            let Unwrapped::Error(error) = cmd.unwrap(&body, StatusCode::OK) else {
                panic!("{body:?}")
            };
            assert_eq!(
                error,
                ApiError::new(StatusCode::BAD_GATEWAY, "moved")
                    .with_type("upstream_error")
                    .with_code(code)
            );
        }
        // Else the upstream's own error status.
        assert_eq!(
            read(&cmd, br#"{"code":7,"data":null}"#, 403),
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "upstream returned HTTP 403 Forbidden"
            )
            .with_type("upstream_error")
            .with_code("7"))
        );
        let jsend = shape(Preset::Jsend);
        // JSend fail under 200: a 400.
        assert_eq!(
            read(
                &jsend,
                br#"{"status":"fail","data":{"title":"required"}}"#,
                200
            ),
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "upstream returned HTTP 400 Bad Request"
            ))
        );
        assert_eq!(
            read(
                &jsend,
                br#"{"status":"error","message":"db down","code":503}"#,
                200
            ),
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "db down")
                .with_type("upstream_error")
                .with_code("503"))
        );
        assert_eq!(
            read(&jsend, br#"{"status":"error","message":"db down"}"#, 200),
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "db down").with_type("upstream_error"))
        );
        assert_eq!(
            read(&jsend, br#"{"status":"maybe","data":1}"#, 200),
            Err(invalid_body(
                502,
                200,
                "`status` is \"maybe\", neither success nor error"
            ))
        );
        // The error object's fields win, the message member first.
        assert_eq!(
            read(
                &jsend,
                br#"{"status":"error","message":"outer","code":500,"data":{"message":"inner","type":"server_error","param":"p","code":"c"}}"#,
                200
            ),
            Err(ApiError {
                param: Value::String("p".into()),
                ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "outer")
                    .with_type("server_error")
                    .with_code("c")
            })
        );
        assert_eq!(
            read(
                &jsend,
                br#"{"status":"fail","data":{"message":"bad field"}}"#,
                422
            ),
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad field"))
        );
    }

    /// [`read`] for a body built at run time.
    fn read_built(shape: &Shape, body: String, status: u16) -> Result<String, ApiError> {
        match shape.unwrap(&Bytes::from(body), StatusCode::from_u16(status).unwrap()) {
            Unwrapped::Payload(p) => Ok(String::from_utf8(p.to_vec()).unwrap()),
            Unwrapped::Error(e) => Err(e),
            other => panic!("{other:?}"),
        }
    }

    /// `[1,1,…,1]` with a million items, as written.
    fn a_million_ones() -> String {
        format!("[{}1]", "1,".repeat(999_999))
    }

    #[test]
    fn huge_members_of_an_error_envelope_are_cut_or_null() {
        let items = a_million_ones();
        // The first 2,000 characters of the message as written, then `…`.
        let cut = format!("[{}1…", "1,".repeat(999));
        let jsend = shape(Preset::Jsend);
        assert_eq!(
            read_built(
                &jsend,
                format!(r#"{{"status":"error","message":{items},"code":503}}"#),
                200
            ),
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, cut.clone())
                .with_type("upstream_error")
                .with_code("503"))
        );
        // The `$error` object's param over 4 KiB is null; its message and code are kept.
        assert_eq!(
            read_built(
                &jsend,
                format!(
                    r#"{{"status":"fail","data":{{"message":"bad","param":{items},"code":"c"}}}}"#
                ),
                422
            ),
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad").with_code("c"))
        );
        // An error body (HTTP ≥ 400) read by the templates.
        let body = format!(r#"{{"code":500,"msg":{items},"data":null}}"#);
        assert_eq!(
            shape(Preset::CodeMsgData).read_error(StatusCode::BAD_GATEWAY, body.as_bytes()),
            Some(
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, cut)
                    .with_type("upstream_error")
                    .with_code("500")
            )
        );
    }

    #[test]
    fn a_discriminator_over_4_kib_equals_no_constant() {
        let cmd = shape(Preset::CodeMsgData);
        let body = |code: &str| format!(r#"{{"code":{code},"msg":"m","data":{{"a":1}}}}"#);
        // `0.000…` equals code-msg-data's 0 while it is 4,096 bytes as written; one byte more
        // and it equals no constant: its error template has `$status` there, so an error
        // (without a code: over 4 KiB).
        let zero = |len: usize| format!("0.{}", "0".repeat(len - 2));
        assert_eq!(
            read_built(&cmd, body(&zero(4096)), 200),
            Ok(r#"{"a":1}"#.into())
        );
        let error = ApiError::new(StatusCode::BAD_GATEWAY, "m").with_type("upstream_error");
        assert_eq!(read_built(&cmd, body(&zero(4097)), 200), Err(error.clone()));
        let long = format!(r#""{}""#, "x".repeat(5000));
        assert_eq!(read_built(&cmd, body(&long), 200), Err(error));
        // JSend has a constant at each: a huge `status` is neither success nor error, shown
        // by its first 64 characters as written, without the whitespace between tokens.
        let jsend = shape(Preset::Jsend);
        let spaced = format!("[{}1]", "1, ".repeat(999_999));
        assert_eq!(
            read_built(&jsend, format!(r#"{{"status":{spaced},"data":1}}"#), 200),
            Err(invalid_body(
                502,
                200,
                &format!(
                    "`status` is [{}1…, neither success nor error",
                    "1,".repeat(31)
                )
            ))
        );
        let text = format!(r#"" {}""#, "a b".repeat(2000));
        assert_eq!(
            read_built(&jsend, format!(r#"{{"status":{text},"data":1}}"#), 200),
            Err(invalid_body(
                502,
                200,
                &format!(
                    r#"`status` is " {}a …, neither success nor error"#,
                    "a b".repeat(20)
                )
            ))
        );
    }

    #[test]
    fn our_own_errors_read_back() {
        for shape in [shape(Preset::CodeMsgData), shape(Preset::Jsend), custom()] {
            for status in [400, 401, 429, 500, 502] {
                let original = ApiError::new(StatusCode::from_u16(status).unwrap(), "bad key")
                    .with_type("invalid_request_error")
                    .with_code("invalid_api_key");
                let body = shape.error_body(&original);
                // Read under the status it was sent with (JSend's `fail` has no status member).
                let back = shape.read_error(original.status, &body);
                assert_eq!(back, Some(original), "{shape:?} {status}");
            }
        }
    }

    #[test]
    fn numbers_compare_numerically() {
        let v = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert!(same_value(&v("0"), &v(r#""0""#)));
        assert!(same_value(&v("0"), &v("0.0")));
        assert!(same_value(&v(r#""0000""#), &v("0")));
        assert!(same_value(&v("1e2"), &v("100")));
        assert!(!same_value(&v("0"), &v(r#""0x""#)));
        assert!(!same_value(&v("0"), &v("false")));
        assert!(!same_value(&v(r#""0000""#), &v(r#""0""#)));
        assert!(same_value(&v("true"), &v("true")));
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        let success = |text: &str| SuccessTemplate::parse(text).unwrap_err();
        let error = |text: &str| ErrorTemplate::parse(text).unwrap_err();
        assert_eq!(
            success(r#"{"data":$data"#),
            "not valid JSON: EOF while parsing an object at line 1 column 13"
        );
        assert_eq!(
            success(r#"[$data]"#),
            "not a JSON object; a template is an object such as {\"data\":$data}"
        );
        assert_eq!(
            success(r#"{"ok":true}"#),
            "a success template needs `$data` (where the payload goes)"
        );
        assert_eq!(
            success(r#"{"a":$data,"b":$data}"#),
            "`$data` appears more than once; a success template holds it exactly once"
        );
        let in_string = |s: &str| {
            format!("the string {s} holds a placeholder; placeholders are whole values without quotes (only \"$status\" is written as a string, as a member's whole value)")
        };
        assert_eq!(success(r#"{"data":"$data"}"#), in_string(r#""$data""#));
        assert_eq!(
            error(r#"{"msg":"failed: $message"}"#),
            in_string(r#""failed: $message""#)
        );
        assert_eq!(
            error(r#"{"msg":"\u0024message"}"#),
            in_string(r#""$message""#)
        );
        assert_eq!(error(r#"{"x":{"y":"$status"}}"#), in_string(r#""$status""#));
        assert_eq!(
            success(r#"{"d":$data,"x":$foo}"#),
            "unknown placeholder `$foo`; the placeholders are $data, $status, \"$status\", $message and $error"
        );
        assert_eq!(
            success(r#"{"d":$data,"x":$}"#),
            "unknown placeholder `$`; the placeholders are $data, $status, \"$status\", $message and $error"
        );
        assert_eq!(
            success(r#"{"d":{"inner":$data}}"#),
            "`$data` must be the whole value of a top-level member"
        );
        assert_eq!(
            success(r#"{"d":$data,"d":1}"#),
            "the member `d` appears more than once"
        );
        assert_eq!(
            success(r#"{"d":$data,"m":$message}"#),
            "`$message` (member `m`) has no value in a success template; write a constant"
        );
        assert_eq!(
            error(r#"{"d":$data}"#),
            "`$data` (member `d`) has no value in an error template; use `$error` or a constant"
        );
        // Strings with a `$` that is no placeholder are constants.
        assert!(SuccessTemplate::parse(r#"{"price":"$ 5","cur":"US$","data":$data}"#).is_ok());
    }

    #[test]
    fn unreadable_upstream_templates_are_refused_at_startup() {
        let s = |text: &str| SuccessTemplate::parse(text).unwrap();
        let e = |text: &str| ErrorTemplate::parse(text).unwrap();
        let build = |success: &SuccessTemplate, error: &ErrorTemplate| {
            Envelopes::build(
                &SideFlags::default(),
                &SideFlags {
                    preset: None,
                    success: Some(success),
                    error: Some(error),
                    client_error: None,
                },
                true,
            )
            .map(|_| ())
            .unwrap_err()
        };
        assert_eq!(
            build(&s(r#"{"data":$data}"#), &e(r#"{"m":$message}"#)),
            "the upstream envelope cannot be read: the success template has no member with a constant value (a discriminator) to tell success from error"
        );
        assert_eq!(
            build(&s(r#"{"ok":true,"data":$data}"#), &e(r#"{"m":$message}"#)),
            "the upstream envelope cannot be read: the error template: it has no member `ok`, the discriminator of the success template, so an error cannot be told from a success"
        );
        assert_eq!(
            build(&s(r#"{"ok":1,"data":$data}"#), &e(r#"{"ok":"1","m":$message}"#)),
            "the upstream envelope cannot be read: the success and error templates give `ok` the same value"
        );
        // Not read (a bare upstream): not checked.
        assert!(Envelopes::build(
            &SideFlags::default(),
            &SideFlags {
                success: Some(&s(r#"{"data":$data}"#)),
                ..SideFlags::default()
            },
            false
        )
        .is_ok());
    }

    #[test]
    fn the_upstream_side_defaults_to_the_client_side() {
        let jsend = Envelopes::build(
            &SideFlags {
                preset: Some(Preset::Jsend),
                ..SideFlags::default()
            },
            &SideFlags::default(),
            true,
        )
        .unwrap();
        assert!(jsend.same() && !jsend.client().is_standard());
        let standard =
            Envelopes::build(&SideFlags::default(), &SideFlags::default(), true).unwrap();
        assert!(standard.same() && standard.upstream().is_standard());
        let mixed = Envelopes::build(
            &SideFlags::default(),
            &SideFlags {
                preset: Some(Preset::CodeMsgData),
                ..SideFlags::default()
            },
            true,
        )
        .unwrap();
        assert!(!mixed.same() && mixed.client().is_standard() && !mixed.upstream().is_standard());
        // The standard preset with a template flag uses the generic rules.
        let custom_error = ErrorTemplate::parse(r#"{"success":false,"m":$message}"#).unwrap();
        let customised = Envelopes::build(
            &SideFlags {
                error: Some(&custom_error),
                ..SideFlags::default()
            },
            &SideFlags::default(),
            true,
        )
        .unwrap();
        assert!(customised.same() && !customised.client().is_standard());
        // An explicit `--upstream-envelope standard` does not inherit the client's templates.
        let explicit = Envelopes::build(
            &SideFlags {
                error: Some(&custom_error),
                ..SideFlags::default()
            },
            &SideFlags {
                preset: Some(Preset::Standard),
                ..SideFlags::default()
            },
            true,
        )
        .unwrap();
        assert!(!explicit.same() && explicit.upstream().is_standard());
    }

    /// Any JSON value: scalars, and arrays and objects of them, two levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Bodies that are nearly envelopes: members from the templates' names, any values.
    fn body_like() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just("code"),
            Just("status"),
            Just("data"),
            Just("msg"),
            Just("ok"),
            Just("message"),
            Just("error"),
            Just("result"),
            Just("retCode"),
            Just("c\\u006fde"),
        ];
        let value = prop_oneof![
            json_value().prop_map(|v| v.to_string()),
            Just("\"0\"".to_string()),
            Just("0".to_string()),
            Just("\"fail\"".to_string()),
            Just("\"error\"".to_string()),
            Just("true".to_string()),
            Just("99991663".to_string()),
            Just("\"429\"".to_string()),
            Just("1e400".to_string()),
            Just("{".to_string()),
        ];
        prop_oneof![
            prop::collection::vec((name, value), 0..5).prop_map(|members| {
                let inner: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", inner.join(",")).into_bytes()
            }),
            prop::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #[test]
        fn reading_any_body_never_panics(body in body_like(), status in 100u16..600) {
            let body = Bytes::from(body);
            let status = StatusCode::from_u16(status).unwrap();
            for shape in [shape(Preset::CodeMsgData), shape(Preset::Jsend), custom()] {
                match shape.unwrap(&body, status) {
                    Unwrapped::Payload(p) => prop_assert!(envelope::is_json(&p)),
                    Unwrapped::Error(e) => prop_assert!(e.status.as_u16() >= 400),
                    other => prop_assert!(false, "{:?}", other),
                }
                let _ = shape.unwrap_event(&body, &mut EventChecks::default());
                if let Some(error) = shape.read_error(status, &body) {
                    prop_assert!(error.status.as_u16() >= 400);
                }
            }
        }

        #[test]
        fn parsing_any_template_never_panics(text in "[{}\\[\\]\":,$a-z0-9 \\\\]{0,40}") {
            let _ = SuccessTemplate::parse(&text);
            let _ = ErrorTemplate::parse(&text);
        }

        #[test]
        fn wrap_then_unwrap_returns_the_payload_bytes(
            value in json_value(),
            pretty in any::<bool>(),
            preset in prop_oneof![Just(Preset::Standard), Just(Preset::CodeMsgData), Just(Preset::Jsend)],
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let payload = Bytes::from(text);
            for shape in [shape(preset), Shape::standard(), custom()] {
                if shape.is_standard() && payload[..] == b"null"[..] {
                    // The standard rules read a null `data` as no payload (envelope.rs).
                    continue;
                }
                let body = Bytes::from(shape.wrap(StatusCode::OK, payload.clone()).concat());
                match shape.unwrap(&body, StatusCode::OK) {
                    Unwrapped::Payload(back) => prop_assert_eq!(&back[..], &payload[..]),
                    other => prop_assert!(false, "{:?}", other),
                }
            }
        }
    }
}
