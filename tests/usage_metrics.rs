//! What the traffic costs (issue 17): `envelope_proxy_tokens_total` by model and kind,
//! `envelope_proxy_stream_events_total`, `envelope_proxy_time_to_first_token_seconds`, and the
//! access log's `model`, `prompt_tokens`, `completion_tokens`, `ttft_ms` and `trace_id`, after
//! known requests through the proxy over real sockets.

use test_support::{harness, mock_upstream, process};

use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{start, Harness, WAIT};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mock_upstream::Shape;
use nix::sys::signal::Signal;
use process::TempDir;
use serde_json::{json, Value};

const BIN: &str = test_support::proxy_bin!();

const MODEL: &str = "gpt-4o-mini-2024-07-18";

/// A streamed chat request asking for the usage chunk.
const WITH_USAGE: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],"stream":true,"stream_options":{"include_usage":true}}"#;

/// Waits until /metrics shows every line of `expected`, then returns its token series.
async fn tokens_after(h: &Harness, expected: &[String]) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = h.get("/metrics").send().await.text();
        if expected.iter().all(|e| text.lines().any(|l| l == e)) {
            let mut tokens: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("envelope_proxy_tokens_total{"))
                .map(str::to_owned)
                .collect();
            tokens.sort();
            return tokens;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {expected:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn series(model: &str, counts: &[(&str, u64)]) -> Vec<String> {
    counts
        .iter()
        .map(|(kind, n)| {
            format!(r#"envelope_proxy_tokens_total{{model="{model}",kind="{kind}"}} {n}"#)
        })
        .collect()
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

fn requests(dialect: &str, upstream: &str, class: &str, n: u64) -> String {
    format!(
        r#"envelope_proxy_requests_total{{dialect="{dialect}",upstream_shape="{upstream}",status_class="{class}"}} {n}"#
    )
}

#[tokio::test]
async fn non_streamed_usage_is_counted_per_model_from_a_bare_upstream() {
    let h = start(Shape::Bare, &[]).await;
    // Passed through, in 7-byte frames: the scanner sees the JSON cut everywhere.
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-behaviour", "split:7")
        .send()
        .await;
    assert_eq!(reply.body, harness::fixture("bare/chat_completion.json"));
    // Read and wrapped.
    let wrapped = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(wrapped.json()["data"]["usage"]["prompt_tokens"], 27);
    // Embeddings: prompt tokens only.
    let embeddings = h
        .call(Method::POST, "/v1/embeddings")
        .json("{}")
        .send()
        .await;
    assert_eq!(embeddings.status, StatusCode::OK);
    // No details: cached and reasoning unknown, so not counted at all.
    let plain = r#"{"id":"c","model":"plain-model","usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}"#;
    assert_eq!(
        h.chat("/v1/chat/completions", false)
            .header("x-mock-body", plain)
            .send()
            .await
            .status,
        StatusCode::OK
    );
    let reasoner = r#"{"model":"reasoner","choices":[{"message":{"content":"usage: \"usage\":{\"prompt_tokens\":1000}"}}],"usage":{"prompt_tokens":10,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":5},"completion_tokens_details":{"reasoning_tokens":7}}}"#;
    assert_eq!(
        h.chat("/api/v1/chat/completions", false)
            .header("x-mock-body", reasoner)
            .send()
            .await
            .status,
        StatusCode::OK
    );
    // Errors count nothing, whatever they carry.
    let error = r#"{"error":{"message":"boom","type":"server_error"},"model":"error-model","usage":{"prompt_tokens":99}}"#;
    for path in ["/v1/chat/completions", "/api/v1/chat/completions"] {
        let reply = h
            .chat(path, false)
            .header("x-mock-body", error)
            .header("x-mock-status", "500")
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    let mut expected = series(
        MODEL,
        &[
            ("prompt", 54),
            ("completion", 172),
            ("cached_prompt", 0),
            ("reasoning", 0),
        ],
    );
    expected.extend(series("text-embedding-3-small", &[("prompt", 9)]));
    expected.extend(series("plain-model", &[("prompt", 4), ("completion", 6)]));
    expected.extend(series(
        "reasoner",
        &[
            ("prompt", 10),
            ("completion", 20),
            ("cached_prompt", 5),
            ("reasoning", 7),
        ],
    ));
    let mut wait = expected.clone();
    wait.push(requests("bare", "bare", "5xx", 1));
    wait.push(requests("envelope", "bare", "5xx", 1));
    assert_eq!(tokens_after(&h, &wait).await, sorted(expected));
}

#[tokio::test]
async fn non_streamed_usage_is_counted_from_an_envelope_upstream() {
    let h = start(Shape::Envelope, &[]).await;
    // Unwrapped (read whole), and passed through in 5-byte frames (scanned inside `data`).
    let bare = h.chat("/v1/chat/completions", false).send().await;
    assert_eq!(bare.json()["usage"]["completion_tokens"], 86);
    let passed = h
        .chat("/api/v1/chat/completions", false)
        .header("x-mock-behaviour", "split:5")
        .send()
        .await;
    assert_eq!(
        passed.body,
        harness::fixture("envelope/chat_completion.json")
    );
    // An envelope that failed under HTTP 200, on both routes, and the upstream's own 429.
    let failed = r#"{"success":false,"code":"500","message":"model backend error","data":{"model":"failed-model","usage":{"prompt_tokens":99}}}"#;
    for path in ["/v1/chat/completions", "/api/v1/chat/completions"] {
        h.chat(path, false)
            .header("x-mock-body", failed)
            .send()
            .await;
    }
    h.chat("/api/v1/chat/completions", false)
        .fixture("errors/envelope_429_int_code.json", 429)
        .send()
        .await;

    let expected = series(
        MODEL,
        &[
            ("prompt", 54),
            ("completion", 172),
            ("cached_prompt", 0),
            ("reasoning", 0),
        ],
    );
    let mut wait = expected.clone();
    wait.push(requests("bare", "envelope", "5xx", 1));
    wait.push(requests("envelope", "envelope", "2xx", 2));
    wait.push(requests("envelope", "envelope", "4xx", 1));
    assert_eq!(tokens_after(&h, &wait).await, sorted(expected));
}

#[tokio::test]
async fn streamed_usage_events_and_time_to_first_token_from_a_bare_upstream() {
    let h = start(Shape::Bare, &[]).await;
    // The include_usage stream on both routes (passed through), one without usage, one
    // rewritten error-free but without a content token.
    for path in ["/v1/chat/completions", "/api/v1/chat/completions"] {
        let reply = h.call(Method::POST, path).json(WITH_USAGE).send().await;
        assert_eq!(
            reply.body,
            harness::fixture("bare/chat_completion_stream_usage.sse")
        );
    }
    let plain = h.chat("/v1/chat/completions", true).send().await;
    assert_eq!(
        plain.body,
        harness::fixture("bare/chat_completion_stream.sse")
    );
    let no_token = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n: ping\n\ndata: [DONE]\n\n";
    h.chat("/v1/chat/completions", true)
        .header("x-mock-body-pct", &no_token.replace('\n', "%0A"))
        .header("x-mock-content-type", "text/event-stream")
        .send()
        .await;

    let expected = series(
        MODEL,
        &[
            ("prompt", 38),
            ("completion", 20),
            ("cached_prompt", 0),
            ("reasoning", 0),
        ],
    );
    let mut wait = expected.clone();
    wait.extend([
        requests("bare", "bare", "2xx", 3),
        requests("envelope", "bare", "2xx", 1),
        // 14 + 13 + 2 (the comment is not an event), and 14.
        r#"envelope_proxy_stream_events_total{dialect="bare"} 29"#.into(),
        r#"envelope_proxy_stream_events_total{dialect="envelope"} 14"#.into(),
        // The stream without content has no first token.
        r#"envelope_proxy_time_to_first_token_seconds_count{dialect="bare"} 2"#.into(),
        r#"envelope_proxy_time_to_first_token_seconds_count{dialect="envelope"} 1"#.into(),
        r#"envelope_proxy_time_to_first_token_seconds_bucket{dialect="bare",le="+Inf"} 2"#.into(),
    ]);
    assert_eq!(tokens_after(&h, &wait).await, sorted(expected));
}

#[tokio::test]
async fn streamed_usage_from_an_envelope_upstream_unwrapped_or_passed() {
    let h = start(Shape::Envelope, &[]).await;
    let fixture = "envelope/chat_completion_stream_usage.sse";
    let unwrapped = h
        .call(Method::POST, "/v1/chat/completions")
        .json(WITH_USAGE)
        .fixture(fixture, 200)
        .send()
        .await;
    assert_eq!(
        unwrapped.body,
        harness::fixture("bare/chat_completion_stream_usage.sse")
    );
    let passed = h
        .call(Method::POST, "/api/v1/chat/completions")
        .json(WITH_USAGE)
        .fixture(fixture, 200)
        .send()
        .await;
    assert_eq!(passed.body, harness::fixture(fixture));

    let expected = series(
        MODEL,
        &[
            ("prompt", 38),
            ("completion", 20),
            ("cached_prompt", 0),
            ("reasoning", 0),
        ],
    );
    let mut wait = expected.clone();
    wait.extend([
        r#"envelope_proxy_stream_events_total{dialect="bare"} 14"#.into(),
        r#"envelope_proxy_stream_events_total{dialect="envelope"} 14"#.into(),
        r#"envelope_proxy_time_to_first_token_seconds_count{dialect="bare"} 1"#.into(),
        r#"envelope_proxy_time_to_first_token_seconds_count{dialect="envelope"} 1"#.into(),
    ]);
    assert_eq!(tokens_after(&h, &wait).await, sorted(expected));
}

#[tokio::test]
async fn models_past_the_cap_count_as_other_and_labels_are_escaped() {
    let h = start(Shape::Bare, &["--metrics-max-models", "2"]).await;
    let body = |model: &str, prompt: u64| {
        format!(
            r#"{{"model":"{model}","usage":{{"prompt_tokens":{prompt},"completion_tokens":1}}}}"#
        )
    };
    let long = "é".repeat(100);
    for (model, prompt) in [
        (r#"we\"ird\\name\nx"#, 1),
        (long.as_str(), 2),
        ("third", 4),
        (r#"we\"ird\\name\nx"#, 8),
        ("fourth", 16),
    ] {
        let reply = h
            .chat("/v1/chat/completions", false)
            .header("x-mock-body", &body(model, prompt))
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let mut expected = series(r#"we\"ird\\name\nx"#, &[("prompt", 9), ("completion", 2)]);
    // Cut to 128 bytes on a character boundary.
    expected.extend(series(&"é".repeat(64), &[("prompt", 2), ("completion", 1)]));
    expected.extend(series("other", &[("prompt", 20), ("completion", 2)]));
    let mut wait = expected.clone();
    wait.push(requests("bare", "bare", "2xx", 5));
    assert_eq!(tokens_after(&h, &wait).await, sorted(expected));
}

/// The access-log lines of the real binary after one non-streamed and one streamed request.
#[tokio::test]
async fn the_access_log_names_the_model_its_tokens_ttft_and_a_valid_trace_id() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("usage-log");
    let upstream = mock.base_url();
    let (mut proxy, addr) = process::spawn_ready(
        &dir,
        BIN,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--log-format",
            "json",
        ],
    )
    .await;

    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let chat = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;
    for (id, traceparent, body) in [("plain", valid, chat), ("stream", invalid, WITH_USAGE)] {
        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-request-id", id)
            .header("traceparent", traceparent)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = tokio::time::timeout(WAIT, harness::client().request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
        // Forwarded upstream unchanged, valid or not.
        let seen = mock.state.last_request().unwrap();
        assert_eq!(seen.header("traceparent"), Some(traceparent));
    }

    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
    let log = proxy.stderr();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &Value| l["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    let pick = |line: &Value, keys: &[&str]| {
        let fields: serde_json::Map<String, Value> = keys
            .iter()
            .filter_map(|k| Some((k.to_string(), line.get(*k)?.clone())))
            .collect();
        Value::Object(fields)
    };
    let keys = [
        "request_id",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "trace_id",
        "outcome",
    ];
    assert_eq!(
        pick(&lines[0], &keys),
        json!({
            "request_id": "plain",
            "model": MODEL,
            "prompt_tokens": 27,
            "completion_tokens": 86,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "outcome": "ok",
        })
    );
    assert!(lines[0].get("ttft_ms").is_none(), "{}", lines[0]);
    assert_eq!(
        pick(&lines[1], &keys),
        json!({
            "request_id": "stream",
            "model": MODEL,
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "outcome": "ok",
        })
    );
    let ttft = lines[1]["ttft_ms"].as_f64().expect("ttft_ms on a stream");
    let duration = lines[1]["duration_ms"].as_f64().unwrap();
    assert!((0.0..=duration).contains(&ttft), "{}", lines[1]);
}
