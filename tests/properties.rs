//! Property tests for the parts that read untrusted bytes: the envelope parser, the error
//! normaliser and the streaming body.

use std::collections::VecDeque;

use bytes::Bytes;
use envelope_proxy::api_error::{normalise, ApiError};
use envelope_proxy::config::StreamEnvelope;
use envelope_proxy::envelope::{
    classify, is_json, slice_payload, wrap_success, Classified, Verdict,
};
use envelope_proxy::sse::SseBody;
use envelope_proxy::Dialect;
use http::StatusCode;
use http_body_util::BodyExt;
use proptest::prelude::*;

#[path = "support/streams.rs"]
mod streams;
use serde_json::Value;

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
