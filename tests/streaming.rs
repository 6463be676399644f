//! Streaming (SSE) end to end: every mode, every way a stream can end, and no buffering.
//!
//! Expected outputs are built from the fixtures: pass-through must equal the upstream bytes,
//! unwrap must equal the bare fixture, wrap must equal each bare chunk inside the envelope.

use test_support::{harness, mock_upstream};

use bytes::BytesMut;
use harness::{fixture, start, wrapped, Reply, WAIT};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mock_upstream::Shape;

const BARE_STREAM: &str = "bare/chat_completion_stream.sse";
const ENVELOPE_STREAM: &str = "envelope/chat_completion_stream.sse";

/// The bare truncation event issue 8 specifies.
fn truncation_event_bare() -> String {
    "data: {\"error\":{\"message\":\"the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"stream_truncated\"}}\n\n".to_string()
}

/// The same event in the envelope form.
fn truncation_event_envelope() -> String {
    let message =
        "the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete";
    format!(
        "data: {{\"success\":false,\"code\":\"502\",\"message\":\"{message}\",\"data\":null,\"error\":{{\"message\":\"{message}\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"stream_truncated\"}}}}\n\n"
    )
}

/// Each `data:` JSON chunk of a bare stream wrapped in the success envelope; `[DONE]` as is.
fn wrap_stream(bare: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(bare).unwrap();
    let mut out = Vec::new();
    for event in text.split_terminator("\n\n") {
        let data = event.strip_prefix("data: ").unwrap();
        out.extend_from_slice(b"data: ");
        if data == "[DONE]" {
            out.extend_from_slice(data.as_bytes());
        } else {
            out.extend_from_slice(&wrapped(data.as_bytes()));
        }
        out.extend_from_slice(b"\n\n");
    }
    out
}

fn assert_sse_headers(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    assert_eq!(reply.header("x-accel-buffering"), Some("no"));
    assert_eq!(reply.header("content-length"), None);
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Reads frames until the bytes received so far contain `needle`.
async fn read_until(body: &mut Incoming, seen: &mut BytesMut, needle: &str) {
    let found = |seen: &BytesMut| {
        std::str::from_utf8(seen)
            .map(|s| s.contains(needle))
            .unwrap_or(false)
    };
    tokio::time::timeout(WAIT, async {
        while !found(seen) {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen.extend_from_slice(&data);
                    }
                }
                other => panic!(
                    "stream ended before {needle:?}: {other:?}; got {:?}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    })
    .await
    .expect("bounded wait");
}

// === The four dialect pairs ===

#[tokio::test]
async fn same_dialect_streams_are_byte_identical() {
    for (shape, path, file) in [
        (Shape::Bare, "/v1/chat/completions", BARE_STREAM),
        (Shape::Envelope, "/api/v1/chat/completions", ENVELOPE_STREAM),
        (
            Shape::Envelope,
            "/api/v1/chat/completions",
            "envelope/chat_completion_stream_mixed.sse",
        ),
    ] {
        let h = start(shape, &[]).await;
        let reply = h.chat(path, true).fixture(file, 200).send().await;
        assert_sse_headers(&reply);
        assert_eq!(text(&reply.body), text(&fixture(file)), "{file}");
    }
}

#[tokio::test]
async fn bare_upstream_streams_stay_bare_for_envelope_clients_by_default() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h.chat("/api/v1/chat/completions", true).send().await;
    assert_sse_headers(&reply);
    assert_eq!(text(&reply.body), text(&fixture(BARE_STREAM)));
}

#[tokio::test]
async fn stream_envelope_wrap_wraps_every_chunk_but_done() {
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    let reply = h.chat("/api/v1/chat/completions", true).send().await;
    assert_sse_headers(&reply);
    assert_eq!(text(&reply.body), text(&wrap_stream(&fixture(BARE_STREAM))));
    // Bare clients of the same proxy are untouched.
    let reply = h.chat("/v1/chat/completions", true).send().await;
    assert_eq!(text(&reply.body), text(&fixture(BARE_STREAM)));
}

#[tokio::test]
async fn envelope_streams_unwrap_to_exactly_the_bare_stream() {
    let h = start(Shape::Envelope, &[]).await;
    for file in [ENVELOPE_STREAM, "envelope/chat_completion_stream_mixed.sse"] {
        let reply = h
            .chat("/v1/chat/completions", true)
            .fixture(file, 200)
            .send()
            .await;
        assert_sse_headers(&reply);
        assert_eq!(text(&reply.body), text(&fixture(BARE_STREAM)), "{file}");
    }
}

#[tokio::test]
async fn usage_and_azure_chunks_with_empty_choices_pass_in_every_mode() {
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    for file in [
        "bare/chat_completion_stream_usage.sse",
        "bare/chat_completion_stream_azure.sse",
    ] {
        let reply = h
            .chat("/v1/chat/completions", true)
            .fixture(file, 200)
            .send()
            .await;
        assert_eq!(text(&reply.body), text(&fixture(file)), "{file}");
        let reply = h
            .chat("/api/v1/chat/completions", true)
            .fixture(file, 200)
            .send()
            .await;
        assert_eq!(
            text(&reply.body),
            text(&wrap_stream(&fixture(file))),
            "{file}"
        );
    }
}

#[tokio::test]
async fn any_chunking_of_the_upstream_bytes_gives_the_same_events() {
    let h = start(Shape::Envelope, &[]).await;
    for split in ["split:1", "split:7", "split:4096"] {
        let reply = h
            .chat("/v1/chat/completions", true)
            .header("x-mock-behaviour", split)
            .send()
            .await;
        assert_eq!(text(&reply.body), text(&fixture(BARE_STREAM)), "{split}");
        let reply = h
            .chat("/api/v1/chat/completions", true)
            .header("x-mock-behaviour", split)
            .send()
            .await;
        assert_eq!(
            text(&reply.body),
            text(&fixture(ENVELOPE_STREAM)),
            "{split}"
        );
    }
}

// === Errors the upstream reports in the stream ===

#[tokio::test]
async fn mid_stream_error_events_take_the_form_of_their_neighbours() {
    // Bare upstream, bare client: passes as it is, and no second error event is added.
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    let file = "bare/chat_completion_stream_mid_error.sse";
    let reply = h
        .chat("/v1/chat/completions", true)
        .fixture(file, 200)
        .send()
        .await;
    assert_eq!(text(&reply.body), text(&fixture(file)));

    // Wrapped stream: the bare error becomes the envelope error shape.
    let reply = h
        .chat("/api/v1/chat/completions", true)
        .fixture(file, 200)
        .send()
        .await;
    let bare = fixture(file);
    let bare = text(&bare);
    let (chunks, _) = bare.rsplit_once("data: {\"error\"").unwrap();
    let expected = format!(
        "{}data: {{\"success\":false,\"code\":\"500\",\"message\":\"The server had an error while processing your request. Sorry about that!\",\"data\":null,\"error\":{{\"message\":\"The server had an error while processing your request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}\n\n",
        text(&wrap_stream(chunks.as_bytes()))
    );
    assert_eq!(text(&reply.body), expected);

    // Envelope upstream, bare client: the envelope error becomes `data: {"error":…}`.
    let e = start(Shape::Envelope, &[]).await;
    let reply = e
        .chat("/v1/chat/completions", true)
        .fixture("envelope/chat_completion_stream_mid_error.sse", 200)
        .send()
        .await;
    let expected = format!(
        "{}data: {{\"error\":{{\"message\":\"model backend error\",\"type\":\"server_error\",\"param\":null,\"code\":\"500\"}}}}\n\n",
        chunks
    );
    assert_eq!(text(&reply.body), expected);
}

#[tokio::test]
async fn a_stream_request_answered_with_a_json_error_gets_the_json_error() {
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    let reply = h
        .chat("/api/v1/chat/completions", true)
        .fixture("errors/openai_429_rate_limit.json", 429)
        .header("x-mock-header", "retry-after: 1")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("retry-after"), Some("1"));
    let body = reply.json();
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "429");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

// === Truncation: a stream that ends without [DONE] never looks complete ===

#[tokio::test]
async fn streams_ending_without_done_get_one_error_event_and_no_done() {
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    for file in [
        "errors/empty.txt",
        "bare/chat_completion_stream_one_chunk_no_done.sse",
        "bare/chat_completion_stream_cut_mid_answer.sse",
        "bare/chat_completion_stream_no_done.sse",
    ] {
        let upstream = fixture(file);
        // Pass-through (bare → bare).
        let reply = h
            .chat("/v1/chat/completions", true)
            .fixture(file, 200)
            .header("x-mock-content-type", "text/event-stream")
            .send()
            .await;
        assert_sse_headers(&reply);
        assert_eq!(
            text(&reply.body),
            text(&upstream) + &truncation_event_bare(),
            "{file}"
        );
        // Wrap (bare → envelope).
        let reply = h
            .chat("/api/v1/chat/completions", true)
            .fixture(file, 200)
            .header("x-mock-content-type", "text/event-stream")
            .send()
            .await;
        assert_eq!(
            text(&reply.body),
            text(&wrap_stream(&upstream)) + &truncation_event_envelope(),
            "{file}"
        );
    }
}

#[tokio::test]
async fn envelope_streams_ending_without_done_are_truncated_in_both_directions() {
    let e = start(Shape::Envelope, &[]).await;
    let file = "envelope/chat_completion_stream_no_done.sse";
    // Unwrap (envelope → bare).
    let reply = e
        .chat("/v1/chat/completions", true)
        .fixture(file, 200)
        .send()
        .await;
    let bare = text(&fixture(BARE_STREAM)).replace("data: [DONE]\n\n", "");
    assert_eq!(text(&reply.body), bare + &truncation_event_bare());
    // Pass-through (envelope → envelope): wrapped events, so the envelope error form.
    let reply = e
        .chat("/api/v1/chat/completions", true)
        .fixture(file, 200)
        .send()
        .await;
    assert_eq!(
        text(&reply.body),
        text(&fixture(file)) + &truncation_event_envelope()
    );
}

#[tokio::test]
async fn require_done_false_restores_plain_pass_through() {
    let h = start(Shape::Bare, &["--require-done", "false"]).await;
    let file = "bare/chat_completion_stream_no_done.sse";
    let reply = h
        .chat("/v1/chat/completions", true)
        .fixture(file, 200)
        .send()
        .await;
    assert_eq!(reply.body, fixture(file));
}

#[tokio::test]
async fn done_without_a_trailing_blank_line_still_completes_the_stream() {
    let h = start(Shape::Bare, &[]).await;
    let reply = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-content-type", "text/event-stream")
        .header("x-mock-body", "data: [DONE]")
        .send()
        .await;
    // Completed into a whole event; not a truncation.
    assert_eq!(text(&reply.body), "data: [DONE]\n\n");
}

// === Broken streams ===

#[tokio::test]
async fn a_reset_mid_event_sends_whole_events_then_one_error_and_no_done() {
    let upstream = fixture(BARE_STREAM);
    let upstream_text = text(&upstream);
    // Cut in the middle of the third event.
    let events: Vec<&str> = upstream_text.split_inclusive("\n\n").collect();
    let cut = events[0].len() + events[1].len() + 40;
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    for (path, form) in [
        ("/v1/chat/completions", "bare"),
        ("/api/v1/chat/completions", "envelope"),
    ] {
        let reply = h
            .chat(path, true)
            .header("x-mock-behaviour", &format!("reset-mid-body:{cut}"))
            .send()
            .await;
        assert_sse_headers(&reply);
        let body = text(&reply.body);
        let whole = events[0].to_string() + events[1];
        let (sent, error_event) = if form == "bare" {
            (whole.clone(), body[whole.len()..].to_string())
        } else {
            let wrapped_events = text(&wrap_stream(whole.as_bytes()));
            let rest = body[wrapped_events.len()..].to_string();
            (wrapped_events, rest)
        };
        assert!(body.starts_with(&sent), "{form}: {body}");
        assert!(!body.contains("[DONE]"), "{form}");
        // Exactly one more event: the error, in the stream's form.
        assert_eq!(
            error_event.matches("\n\n").count(),
            1,
            "{form}: {error_event}"
        );
        let json: serde_json::Value =
            serde_json::from_str(error_event.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        let inner = &json["error"];
        assert_eq!(inner["type"], "upstream_error");
        assert_eq!(inner["code"], "upstream_broken");
        assert!(inner["message"]
            .as_str()
            .unwrap()
            .starts_with("the upstream stream broke before it finished"));
        if form == "envelope" {
            assert_eq!(json["success"], false);
            assert_eq!(json["code"], "502");
        }
    }
}

#[tokio::test]
async fn an_idle_upstream_ends_the_stream_with_an_error_event() {
    // The idle timer starts with the response headers, and the mock's first event must reach
    // the proxy before it fires: 2 s is margin for a loaded machine (0.3 s was not).
    let h = start(Shape::Bare, &["--stream-idle-timeout", "2"]).await;
    let response = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    let body = response.into_body().collect();
    let body = tokio::time::timeout(WAIT, body)
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let first = text(&fixture(BARE_STREAM))
        .split_inclusive("\n\n")
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        text(&body),
        first + "data: {\"error\":{\"message\":\"the upstream sent nothing for 2s; the stream was closed and the answer is incomplete\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"idle_timeout\"}}\n\n"
    );
    h.mock.state.release();
}

#[tokio::test]
async fn an_oversized_event_ends_the_stream_with_an_error_event() {
    let h = start(Shape::Bare, &["--max-sse-event", "100"]).await;
    let reply = h.chat("/v1/chat/completions", true).send().await;
    assert_eq!(
        text(&reply.body),
        "data: {\"error\":{\"message\":\"the upstream sent an event larger than 100 bytes\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"event_too_large\"}}\n\n"
    );
}

// === No buffering, keep-alives, cancellation ===

#[tokio::test]
async fn the_first_event_arrives_while_the_upstream_holds_the_rest_back() {
    let h = start(Shape::Envelope, &[]).await;
    let response = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    let mut body = response.into_body();
    let mut seen = BytesMut::new();
    let first = text(&fixture(BARE_STREAM))
        .split_inclusive("\n\n")
        .next()
        .unwrap()
        .to_string();
    // The upstream has not been released: this can only pass if nothing is buffered.
    read_until(&mut body, &mut seen, &first).await;
    assert_eq!(text(&seen), first);
    h.mock.state.release();
    read_until(&mut body, &mut seen, "data: [DONE]\n\n").await;
    assert_eq!(text(&seen), text(&fixture(BARE_STREAM)));
}

#[tokio::test]
async fn keepalive_comments_are_sent_between_events_while_the_upstream_is_quiet() {
    let h = start(Shape::Bare, &["--sse-keepalive", "0.05"]).await;
    let response = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    let mut body = response.into_body();
    let mut seen = BytesMut::new();
    read_until(&mut body, &mut seen, ": keep-alive\n\n").await;
    h.mock.state.release();
    read_until(&mut body, &mut seen, "data: [DONE]\n\n").await;
    let without_keepalives = text(&seen).replace(": keep-alive\n\n", "");
    assert_eq!(without_keepalives, text(&fixture(BARE_STREAM)));
    // Every keep-alive stands between whole events.
    assert!(text(&seen)
        .split_inclusive("\n\n")
        .all(|e| e.starts_with("data: ") || e == ": keep-alive\n\n"));
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let h = start(Shape::Bare, &[]).await;
    let response = h
        .chat("/v1/chat/completions", true)
        .header("x-mock-behaviour", "hold")
        .open()
        .await;
    let mut body = response.into_body();
    let mut seen = BytesMut::new();
    read_until(&mut body, &mut seen, "\n\n").await;
    drop(body);
    assert!(
        h.mock.state.wait_client_gone(WAIT).await,
        "the upstream saw the proxy go away"
    );
    // The proxy keeps serving.
    let reply = h.chat("/v1/chat/completions", true).send().await;
    assert_eq!(reply.body, fixture(BARE_STREAM));
}
