//! The envelope parser and the error normaliser on arbitrary bytes (the whole input is the
//! body, so any fixture is a seed as it is).
//!
//! Checked: no panic; `classify` agrees with `is_json` (an envelope and "JSON" are valid JSON,
//! "not JSON" is not); a success verdict's payload is valid JSON sliced from the body; every
//! `ApiError` renders to valid JSON in both dialects, and reads back from either rendering
//! unchanged (bare always, envelope when the status is an error status, 400–599, which is the
//! only status an envelope error can carry; a float in `param` or `code` may come back one
//! unit in the last place off, as serde_json parses floats best-effort without its
//! `float_roundtrip` feature); for valid JSON other than `null`,
//! `wrap_success` then classify + verdict + `slice_payload` gives back the trimmed input
//! byte for byte.

#![no_main]

use bytes::Bytes;
use envelope_proxy::error::ApiError;
use envelope_proxy::translate::envelope::{
    classify, is_json, slice_payload, wrap_success, Classified, Verdict,
};
use envelope_proxy::translate::error_body::normalise;
use envelope_proxy::Dialect;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CONTENT_TYPES: [Option<&str>; 5] = [
    None,
    Some("text/html; charset=utf-8"),
    Some("application/json"),
    Some(""),
    Some(" ; x"),
];

/// A status (100–999) and a content type derived from the body, so the fuzzer steers them too.
fn status_and_type(body: &[u8]) -> (StatusCode, Option<&'static str>) {
    let sum = body
        .iter()
        .fold(0u32, |n, &b| n.wrapping_mul(31).wrapping_add(u32::from(b)));
    let code = u16::try_from(100 + sum % 900).unwrap_or(500);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        CONTENT_TYPES[(sum / 900) as usize % CONTENT_TYPES.len()],
    )
}

/// At most four representable doubles apart: units in the last place, counted on the bit
/// patterns (which order the doubles of one sign), so the bound holds for subnormal numbers too,
/// where a bound relative to the value is far tighter than one unit.
fn within_ulps(x: f64, y: f64) -> bool {
    x == y
        || (x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 4)
}

/// Equal JSON values, floats allowed a few units in the last place apart (serde_json reads
/// floats best-effort, so printing one and reading it back may land next to it).
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

fn check_error(error: &ApiError) {
    let bare = error.to_body(Dialect::Bare);
    assert!(is_json(&bare), "bare error body is not JSON: {bare:?}");
    let back = normalise(error.status, Some("application/json"), &bare);
    assert!(
        same_error(&back, error),
        "bare error body {bare:?} reads back as {back:?}, not {error:?}"
    );

    let wrapped = error.to_body(Dialect::Envelope);
    assert!(
        is_json(&wrapped),
        "envelope error body is not JSON: {wrapped:?}"
    );
    let Classified::Envelope(envelope) = classify(&wrapped) else {
        panic!("envelope error body is not an envelope: {wrapped:?}");
    };
    match envelope.verdict(StatusCode::OK) {
        Verdict::Error(back) => {
            if (400..=599).contains(&error.status.as_u16()) {
                assert!(
                    same_error(&back, error),
                    "envelope error body {wrapped:?} reads back as {back:?}, not {error:?}"
                );
            }
        }
        Verdict::Success(data) => panic!("envelope error body reads as success: {}", data.get()),
    }
}

fn concat(parts: [Bytes; 3]) -> Bytes {
    Bytes::from(parts.concat())
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let json = is_json(data);

    match classify(&body) {
        Classified::NotJson => assert!(!json, "valid JSON classified as not JSON"),
        Classified::Json => assert!(json, "classified as JSON but is not"),
        Classified::Envelope(envelope) => {
            assert!(json, "classified as an envelope but is not JSON");
            match envelope.verdict(StatusCode::OK) {
                Verdict::Success(raw) => {
                    let payload = slice_payload(&body, raw);
                    assert_eq!(payload.as_ref(), raw.get().as_bytes());
                    assert!(is_json(&payload), "payload is not JSON: {payload:?}");
                    assert_ne!(payload.as_ref(), b"null");
                }
                Verdict::Error(error) => check_error(&error),
            }
        }
    }

    let (status, content_type) = status_and_type(data);
    check_error(&normalise(status, content_type, data));

    let trimmed = data.trim_ascii();
    if json && trimmed != b"null" {
        let wrapped = concat(wrap_success(body.clone()));
        let Classified::Envelope(envelope) = classify(&wrapped) else {
            panic!("wrapped JSON is not an envelope");
        };
        match envelope.verdict(StatusCode::OK) {
            Verdict::Success(raw) => {
                assert_eq!(slice_payload(&wrapped, raw).as_ref(), trimmed, "round trip");
            }
            Verdict::Error(error) => panic!("wrapped JSON reads as an error: {error:?}"),
        }
    }
});
