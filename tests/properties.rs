//! Property tests for the parts that read untrusted bytes: the envelope parser, the error
//! normaliser and the streaming body.

use std::collections::VecDeque;

use bytes::Bytes;
use envelope_proxy::config::StreamEnvelope;
use envelope_proxy::error::ApiError;
use envelope_proxy::translate::envelope::{
    classify, is_json, slice_payload, wrap_success, Classified, Verdict,
};
use envelope_proxy::translate::error_body::normalise;
use envelope_proxy::translate::sse::SseBody;
use envelope_proxy::Dialect;
use http::StatusCode;
use http_body_util::BodyExt;
use proptest::prelude::*;

use serde_json::Value;
use test_support::streams;

/// Arbitrary JSON values, nested a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn all_bytes(parts: [Bytes; 3]) -> Bytes {
    Bytes::from(parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the upstream sends, reading it never panics and always yields an error body
    /// that is valid JSON in both dialects.
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), status in 400u16..600) {
        let status = StatusCode::from_u16(status).unwrap();
        let error = normalise(status, Some("text/html"), &body);
        for dialect in [Dialect::Bare, Dialect::Envelope] {
            prop_assert!(is_json(&error.to_body(dialect)));
        }
        if let Classified::Envelope(envelope) = classify(&body) {
            if let Verdict::Error(error) = envelope.verdict(StatusCode::OK) {
                prop_assert!(is_json(&error.to_body(Dialect::Bare)));
            }
        }
    }

    /// Envelope-shaped objects with members of any type never panic either.
    #[test]
    fn envelopes_with_any_member_types_never_panic(
        success in json_value(), code in json_value(), message in json_value(), data in json_value()
    ) {
        let body = serde_json::json!({"success": success, "code": code, "message": message, "data": data}).to_string();
        let Classified::Envelope(envelope) = classify(body.as_bytes()) else {
            return Err(TestCaseError::fail("an object with `success` is an envelope"));
        };
        match envelope.verdict(StatusCode::OK) {
            Verdict::Success(raw) => prop_assert!(is_json(raw.get().as_bytes())),
            Verdict::Error(error) => prop_assert!(error.status.as_u16() >= 400),
        }
    }

    /// unwrap(wrap(x)) == x, byte for byte, for any JSON text (compact or pretty).
    #[test]
    fn unwrap_of_wrap_is_identity(value in json_value(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
        let payload = Bytes::from(text.unwrap());
        let wrapped = all_bytes(wrap_success(payload.clone()));
        let Classified::Envelope(envelope) = classify(&wrapped) else {
            return Err(TestCaseError::fail("wrapped body is an envelope"));
        };
        match envelope.verdict(StatusCode::OK) {
            Verdict::Success(data) => prop_assert_eq!(slice_payload(&wrapped, data), payload),
            // `data: null` is not a success; everything else must come back.
            Verdict::Error(_) => prop_assert_eq!(value, Value::Null),
        }
    }

    /// The envelope errors we write come back as the same error when a bare client reads them.
    #[test]
    fn envelope_errors_round_trip(
        status in 400u16..600, message in ".{0,40}", kind in "[a-z_]{1,20}", code in prop::option::of("[a-z_]{1,20}")
    ) {
        let mut error = ApiError::new(StatusCode::from_u16(status).unwrap(), message).with_type(kind);
        if let Some(code) = code {
            error = error.with_code(code);
        }
        let body = error.to_body(Dialect::Envelope);
        let Classified::Envelope(envelope) = classify(&body) else {
            return Err(TestCaseError::fail("an envelope error is an envelope"));
        };
        match envelope.verdict(StatusCode::OK) {
            Verdict::Error(back) => prop_assert_eq!(back, error),
            Verdict::Success(_) => return Err(TestCaseError::fail("success:false is an error")),
        }
    }

    /// The streaming body in pass-through gives back exactly the upstream's bytes, however they
    /// are chunked, and adds nothing to a stream that ends with [DONE].
    #[test]
    fn pass_through_streams_are_byte_identical_for_any_chunking(
        payloads in prop::collection::vec("[ -~]{0,40}", 0..12),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let end = if crlf { "\r\n" } else { "\n" };
        let mut stream = String::new();
        for payload in &payloads {
            stream.push_str(&format!("data: {payload}{end}{end}"));
        }
        stream.push_str(&format!("data: [DONE]{end}{end}"));
        let input = Bytes::from(stream);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut chunks = VecDeque::new();
        let mut last = 0;
        for point in points.into_iter().chain([input.len()]) {
            if point > last {
                chunks.push_back(input.slice(last..point));
                last = point;
            }
        }
        let output = run_stream(chunks, Dialect::Bare, Dialect::Bare);
        prop_assert_eq!(output, input);
    }
}

// === The round trips the envelope fuzz target checks (fuzz/fuzz_targets/envelope.rs) ===

/// At most four representable doubles apart: units in the last place, counted on the bit
/// patterns (which order the doubles of one sign), so the bound holds for subnormal numbers too,
/// where a bound relative to the value is far tighter than one unit.
fn within_ulps(x: f64, y: f64) -> bool {
    x == y
        || (x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 4)
}

/// Equal JSON values, floats allowed a few units in the last place apart: serde_json (without
/// its `float_roundtrip` feature) may read a printed float back one unit off. The envelope
/// fuzz target compares the same way.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => within_ulps(x, y),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn same_error(a: &ApiError, b: &ApiError) -> bool {
    a.status == b.status
        && a.message == b.message
        && a.error_type == b.error_type
        && same_value(&a.param, &b.param)
        && same_value(&a.code, &b.code)
}

/// `error` rendered in each dialect reads back as itself: from the bare body always (its
/// status kept), from the envelope body when the status is an error status (400–599, the
/// only status an envelope's `code` can carry); the envelope body is never a success.
fn reads_back_the_same(error: &ApiError) -> Result<(), TestCaseError> {
    let bare = error.to_body(Dialect::Bare);
    let back = normalise(error.status, Some("application/json"), &bare);
    prop_assert!(
        same_error(&back, error),
        "bare {:?} reads back as {:?}, not {:?}",
        bare,
        back,
        error
    );

    let wrapped = error.to_body(Dialect::Envelope);
    let Classified::Envelope(envelope) = classify(&wrapped) else {
        return Err(TestCaseError::fail(format!(
            "{wrapped:?} is not an envelope"
        )));
    };
    match envelope.verdict(StatusCode::OK) {
        Verdict::Error(back) => {
            if (400..=599).contains(&error.status.as_u16()) {
                prop_assert!(
                    same_error(&back, error),
                    "envelope {:?} reads back as {:?}, not {:?}",
                    wrapped,
                    back,
                    error
                );
            } else {
                prop_assert_eq!(back.status, StatusCode::BAD_GATEWAY);
            }
        }
        Verdict::Success(data) => {
            return Err(TestCaseError::fail(format!(
                "{wrapped:?} reads as success: {}",
                data.get()
            )))
        }
    }
    Ok(())
}

/// An envelope's `code` as text, as the proxy reads it: a string, or an integer.
fn code_text(code: &Value) -> Option<String> {
    match code {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// The status of the error an envelope reports under HTTP `http`: its `code` when that is
/// 400–599, else `http` when it is an error status, else 502.
fn envelope_error_status(code: &Value, http: StatusCode) -> StatusCode {
    code_text(code)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (400..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(if http.as_u16() >= 400 {
            http
        } else {
            StatusCode::BAD_GATEWAY
        })
}

/// Upstream error bodies: arbitrary bytes, arbitrary JSON, and the bare and envelope error
/// shapes with members of any type.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), json_value(), json_value(), json_value()).prop_map(|(m, t, p, c)| {
            serde_json::json!({"error": {"message": m, "type": t, "param": p, "code": c}})
                .to_string()
                .into_bytes()
        }),
        (json_value(), envelope_code(), json_value(), json_value()).prop_map(|(s, c, m, d)| {
            serde_json::json!({"success": s, "code": c, "message": m, "data": d})
                .to_string()
                .into_bytes()
        }),
    ]
}

/// Envelope codes: the success codes, error statuses as strings and integers, anything else.
fn envelope_code() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            Value::from("200"),
            Value::from(200),
            Value::from("0"),
            Value::from(0),
            Value::Null,
        ]),
        // Near the success codes and at the edges of the error range.
        2 => (prop::sample::select(vec![-1i64, 1, 199, 201, 204, 399, 400, 429, 599, 600]), any::<bool>())
            .prop_map(|(c, text)| if text { Value::from(c.to_string()) } else { Value::from(c) }),
        1 => (100u16..1000).prop_map(|c| Value::from(c.to_string())),
        1 => (100u16..1000).prop_map(Value::from),
        1 => json_value(),
    ]
}

/// `success` members: mostly booleans, sometimes anything.
fn envelope_success() -> impl Strategy<Value = Value> {
    prop_oneof![3 => any::<bool>().prop_map(Value::Bool), 1 => json_value()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any upstream error body: a body that is not an envelope keeps the upstream's status,
    /// an envelope's status follows its `code`; either way the error reads back the same
    /// from what the proxy writes in each dialect.
    #[test]
    fn normalised_errors_keep_the_status_and_read_back_the_same(
        body in error_body(),
        status in 100u16..1000,
        content_type in prop::sample::select(vec![None, Some("text/html; charset=utf-8"), Some("application/json"), Some("")]),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let error = normalise(status, content_type, &body);
        match classify(&body) {
            Classified::Envelope(_) => {
                let value: Value = serde_json::from_slice(&body).unwrap();
                let code = value.get("code").cloned().unwrap_or(Value::Null);
                prop_assert_eq!(error.status, envelope_error_status(&code, status));
            }
            _ => prop_assert_eq!(error.status, status),
        }
        reads_back_the_same(&error)?;
    }

    /// Any error the proxy could write reads back as itself.
    #[test]
    fn any_error_reads_back_the_same(
        status in 100u16..1000,
        message in ".{0,40}",
        kind in ".{0,20}",
        param in json_value(),
        code in json_value(),
    ) {
        let mut error = ApiError::new(StatusCode::from_u16(status).unwrap(), message).with_type(kind).with_code(code);
        error.param = param;
        reads_back_the_same(&error)?;
    }

    /// The verdict follows `success`, `code` and `data`: success exactly when `success` is
    /// `true`, the code is a success code (`"200"`, `200`, `"0"`, `0`, null) and `data` is not
    /// null; then the payload is `data` byte for byte.
    /// A `success` that is not a boolean or a `code` that is neither text nor an integer is
    /// a malformed envelope (502); otherwise an error takes its status from `code`.
    #[test]
    fn the_verdict_matches_success_code_and_data(
        success in envelope_success(),
        code in envelope_code(),
        message in json_value(),
        data in prop_oneof![1 => Just(Value::Null), 4 => json_value()],
    ) {
        let body = Bytes::from(
            serde_json::json!({"success": success, "code": code, "message": message, "data": data}).to_string(),
        );
        let Classified::Envelope(envelope) = classify(&body) else {
            return Err(TestCaseError::fail("an object with `success` is an envelope"));
        };
        let code_kind_ok = code.is_null() || code_text(&code).is_some();
        let code_ok = code.is_null() || matches!(code_text(&code).as_deref(), Some("200" | "0"));
        match envelope.verdict(StatusCode::OK) {
            Verdict::Success(raw) => {
                prop_assert_eq!(&success, &Value::Bool(true));
                prop_assert!(code_ok, "code {} is not a success code", code);
                prop_assert!(!data.is_null());
                let expected = serde_json::to_string(&data).unwrap();
                prop_assert_eq!(raw.get(), expected.as_str());
                prop_assert_eq!(slice_payload(&body, raw), Bytes::from(expected));
            }
            Verdict::Error(error) => {
                if !success.is_boolean() || !code_kind_ok {
                    prop_assert_eq!(error.status, StatusCode::BAD_GATEWAY);
                    prop_assert_eq!(error.code, Value::from("invalid_envelope"));
                } else if success == Value::Bool(false) || !code_ok {
                    prop_assert_eq!(error.status, envelope_error_status(&code, StatusCode::OK));
                } else {
                    // success:true with a success code: only a null `data` makes it an error.
                    prop_assert!(data.is_null(), "data {} was there", data);
                    prop_assert_eq!(error.status, StatusCode::BAD_GATEWAY);
                    prop_assert_eq!(error.code, Value::from("invalid_envelope"));
                }
            }
        }
    }
}

/// Drives an [`SseBody`] over the given upstream chunks and collects what the client receives.
fn run_stream(chunks: VecDeque<Bytes>, client: Dialect, upstream: Dialect) -> Bytes {
    let settings = streams::chat_stream(client, upstream, StreamEnvelope::Bare);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // The body arms its idle timer on creation, so it is built inside the runtime.
    runtime.block_on(async {
        let body = SseBody::new(streams::Chunks(chunks), settings);
        body.collect().await.unwrap().to_bytes()
    })
}
