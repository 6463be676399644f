//! A misbehaving upstream on the streaming and envelope paths (issue 13, points 5–7), through
//! the real proxy and the in-process mock upstream:
//! - a stream that ends in the middle of an event, by a clean close or a reset, never hands
//!   the fragment to the client as a whole event, and always ends with the error event
//!   (every route, every mode, with and without `--require-done`);
//! - rewritten events (wrap, unwrap) keep their `event:`, `id:`, `retry:` and comment lines;
//! - an envelope with a duplicated member is `upstream_invalid_body`, as a body and as an event.

use test_support::{harness, mock_upstream};

use std::time::{Duration, Instant};

use harness::{pct, start, Harness, Reply, WAIT};
use http::StatusCode;
use mock_upstream::Shape;
use serde_json::{json, Value};

/// A streaming request whose upstream answers 200 `text/event-stream` with `body`.
async fn sse(h: &Harness, path: &str, body: &[u8], behaviour: Option<&str>) -> Reply {
    let mut call = h
        .chat(path, true)
        .header("x-mock-content-type", "text/event-stream")
        .header("x-mock-body-pct", &pct(body));
    if let Some(behaviour) = behaviour {
        call = call.header("x-mock-behaviour", behaviour);
    }
    let reply = call.send().await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    reply
}

/// Polls /metrics until it has every line in `expected` (a stream is counted once the proxy
/// has finished sending it, which can be a moment after the client read it all).
async fn metrics_with(h: &Harness, expected: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = h.get("/metrics").send().await.text();
        if expected.iter().all(|e| text.lines().any(|l| l == e)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {expected:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn streams_total(outcome: &str, n: usize) -> String {
    format!("envelope_proxy_streams_total{{outcome=\"{outcome}\"}} {n}")
}

// === Point 5: a half-received last event is never sent as a whole one ===

const CHUNK: &str = r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
/// Where the issue's upstream stopped: inside the second event's JSON.
const CUT: &str = r#"data: {"id":"c1","object":"chat.completion.chu"#;
const MID_EVENT: &str = "the upstream closed the stream in the middle of an event; the incomplete event was dropped and the answer is incomplete";

fn wrapped(payload: &str) -> String {
    format!(r#"{{"success":true,"code":"200","message":"successful","data":{payload}}}"#)
}

/// The error event ending a stream, in the bare or the envelope form, byte for byte.
fn error_event(envelope: bool, message: &str, code: &str) -> String {
    let inner = format!(
        r#"{{"message":"{message}","type":"upstream_error","param":null,"code":"{code}"}}"#
    );
    if envelope {
        format!(
            r#"data: {{"success":false,"code":"502","message":"{message}","data":null,"error":{inner}}}"#
        ) + "\n\n"
    } else {
        format!(r#"data: {{"error":{inner}}}"#) + "\n\n"
    }
}

/// One route: the path, whether its events are in the envelope form upstream and for the
/// client.
struct Route {
    path: &'static str,
    upstream_envelope: bool,
    client_envelope: bool,
}

impl Route {
    fn event(envelope: bool) -> String {
        let data = if envelope {
            wrapped(CHUNK)
        } else {
            CHUNK.to_string()
        };
        format!("data: {data}\n\n")
    }
}

/// Every route and mode, with a partial last event: a clean close and a reset.
async fn check_cut_streams(h: &Harness, routes: &[Route]) -> usize {
    let mut streams = 0;
    for route in routes {
        let whole = Route::event(route.upstream_envelope);
        let expected_first = Route::event(route.client_envelope);
        let body = format!("{whole}{CUT}");

        // Clean close: the body ends (with its Content-Length) inside the second event.
        let reply = sse(h, route.path, body.as_bytes(), None).await;
        let expected = expected_first.clone()
            + &error_event(route.client_envelope, MID_EVENT, "stream_truncated");
        assert_eq!(reply.text(), expected, "{}: clean close", route.path);

        // The same bytes, the second event's first bytes in a frame of their own.
        let split = format!("split:{}", whole.len() + 10);
        let reply = sse(h, route.path, body.as_bytes(), Some(&split)).await;
        assert_eq!(reply.text(), expected, "{}: clean close, split", route.path);

        // Reset: chunked, and the connection drops inside the second event.
        let mut full = body.clone();
        full.push_str(r#"nk","choices":[]}"#);
        full.push_str("\n\ndata: [DONE]\n\n");
        let reset = format!("reset-mid-body:{}", body.len());
        let reply = sse(h, route.path, full.as_bytes(), Some(&reset)).await;
        let text = reply.text();
        let rest = text
            .strip_prefix(&expected_first)
            .unwrap_or_else(|| panic!("{}: reset: the whole event is missing: {text}", route.path));
        let data: Value = serde_json::from_str(
            rest.strip_prefix("data: ")
                .and_then(|r| r.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("{}: reset: not one event: {rest:?}", route.path)),
        )
        .unwrap();
        let error = &data["error"];
        assert_eq!(error["code"], "upstream_broken", "{}: {rest}", route.path);
        assert_eq!(error["type"], "upstream_error");
        assert_eq!(
            data.get("success"),
            route.client_envelope.then_some(&json!(false))
        );
        streams += 3;
    }
    streams
}

#[tokio::test]
async fn a_stream_cut_mid_event_from_a_bare_upstream_ends_with_an_error_on_every_route() {
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    let routes = [
        // Pass-through, with `[DONE]` required, and without (not a completions route).
        Route {
            path: "/v1/chat/completions",
            upstream_envelope: false,
            client_envelope: false,
        },
        Route {
            path: "/v1/responses",
            upstream_envelope: false,
            client_envelope: false,
        },
        // Wrap, with and without `[DONE]` required.
        Route {
            path: "/api/v1/chat/completions",
            upstream_envelope: false,
            client_envelope: true,
        },
        Route {
            path: "/api/v1/responses",
            upstream_envelope: false,
            client_envelope: true,
        },
    ];
    let streams = check_cut_streams(&h, &routes).await;
    metrics_with(
        &h,
        &[
            streams_total("stream_truncated", streams / 3 * 2),
            streams_total("upstream_broken", streams / 3),
            streams_total("ok", 0),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_stream_cut_mid_event_is_an_error_even_with_require_done_false() {
    let h = start(
        Shape::Bare,
        &["--stream-envelope", "wrap", "--require-done", "false"],
    )
    .await;
    let routes = [
        Route {
            path: "/v1/chat/completions",
            upstream_envelope: false,
            client_envelope: false,
        },
        Route {
            path: "/api/v1/chat/completions",
            upstream_envelope: false,
            client_envelope: true,
        },
    ];
    let streams = check_cut_streams(&h, &routes).await;
    metrics_with(
        &h,
        &[
            streams_total("stream_truncated", streams / 3 * 2),
            streams_total("upstream_broken", streams / 3),
            streams_total("ok", 0),
        ],
    )
    .await;
    // While a stream of whole events that only lacks `[DONE]` is fine there.
    let event = Route::event(false);
    let reply = sse(&h, "/v1/chat/completions", event.as_bytes(), None).await;
    assert_eq!(reply.text(), event);
}

#[tokio::test]
async fn a_stream_cut_mid_event_from_an_envelope_upstream_ends_with_an_error() {
    let h = start(Shape::Envelope, &[]).await;
    let routes = [
        // Unwrap, with and without `[DONE]` required.
        Route {
            path: "/v1/chat/completions",
            upstream_envelope: true,
            client_envelope: false,
        },
        Route {
            path: "/v1/responses",
            upstream_envelope: true,
            client_envelope: false,
        },
        // Pass-through of envelope events.
        Route {
            path: "/api/v1/chat/completions",
            upstream_envelope: true,
            client_envelope: true,
        },
        Route {
            path: "/api/v1/responses",
            upstream_envelope: true,
            client_envelope: true,
        },
    ];
    let streams = check_cut_streams(&h, &routes).await;
    metrics_with(
        &h,
        &[
            streams_total("stream_truncated", streams / 3 * 2),
            streams_total("upstream_broken", streams / 3),
            streams_total("ok", 0),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_unterminated_done_line_still_completes_the_stream() {
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    let event = Route::event(false);
    for path in ["/v1/chat/completions", "/api/v1/chat/completions"] {
        for tail in ["data: [DONE]", "data: [DONE]\r\n", "data:[DONE]\n"] {
            let reply = sse(&h, path, format!("{event}{tail}").as_bytes(), None).await;
            let first = Route::event(path.starts_with("/api"));
            assert_eq!(
                reply.text(),
                format!("{first}data: [DONE]\n\n"),
                "{path} {tail:?}"
            );
        }
    }
    metrics_with(
        &h,
        &[streams_total("ok", 6), streams_total("stream_truncated", 0)],
    )
    .await;
}

// === Point 6: rewritten events keep their other fields ===

/// Events with every kind of line around their data, in the upstream's dialect (`wrap`:
/// envelope) and as the client must get them (the other dialect); the same for both
/// directions, since unwrap(wrap(x)) == x.
fn fields_stream(envelope: bool) -> String {
    let chunk = |payload: &str| {
        if envelope {
            wrapped(payload)
        } else {
            payload.to_string()
        }
    };
    [
        ": opening comment\n\n".to_string(),
        format!(
            "event: thread.message.delta\nid: 41\ndata: {}\n\n",
            chunk(CHUNK)
        ),
        format!(
            "retry: 2500\r\ndata: {}\r\n: trailing comment\r\nid: 42\r\n\r\n",
            chunk(r#"{"n":2}"#)
        ),
        format!("id: 43\nevent: done\ndata: {}\n\n", chunk("[1, 2.50]")),
        "event: done\ndata: [DONE]\n\n".to_string(),
    ]
    .concat()
}

#[tokio::test]
async fn wrapped_events_keep_event_id_retry_and_comment_lines() {
    let h = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    let bare = fields_stream(false);
    let reply = sse(&h, "/api/v1/chat/completions", bare.as_bytes(), None).await;
    assert_eq!(reply.text(), fields_stream(true));
    // Pass-through is untouched, of course.
    let reply = sse(&h, "/v1/chat/completions", bare.as_bytes(), None).await;
    assert_eq!(reply.text(), bare);
}

#[tokio::test]
async fn unwrapped_events_keep_event_id_retry_and_comment_lines() {
    let h = start(Shape::Envelope, &[]).await;
    let enveloped = fields_stream(true);
    // Dripped one event per frame, and in 7-byte frames: the same bytes come out.
    for behaviour in ["drip:0", "split:7"] {
        let reply = sse(
            &h,
            "/v1/chat/completions",
            enveloped.as_bytes(),
            Some(behaviour),
        )
        .await;
        assert_eq!(reply.text(), fields_stream(false), "{behaviour}");
    }
    let reply = sse(&h, "/api/v1/chat/completions", enveloped.as_bytes(), None).await;
    assert_eq!(reply.text(), enveloped);
}

#[tokio::test]
async fn error_events_keep_their_event_and_id_lines() {
    let e = start(Shape::Envelope, &[]).await;
    let upstream = "event: error\nid: 7\ndata: {\"success\":false,\"code\":\"503\",\"message\":\"overloaded\",\"data\":null}\n\n";
    let reply = sse(&e, "/v1/chat/completions", upstream.as_bytes(), None).await;
    assert_eq!(
        reply.text(),
        "event: error\nid: 7\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"503\"}}\n\n"
    );
    let b = start(Shape::Bare, &["--stream-envelope", "wrap"]).await;
    let upstream = "event: error\nid: 7\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":503}}\n\n";
    let reply = sse(&b, "/api/v1/chat/completions", upstream.as_bytes(), None).await;
    assert_eq!(
        reply.text(),
        "event: error\nid: 7\ndata: {\"success\":false,\"code\":\"503\",\"message\":\"overloaded\",\"data\":null,\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":503}}\n\n"
    );
}

// === Point 7: envelopes with a duplicated member are invalid ===

/// The issue's body: an error envelope whose `data` appears twice.
const DUPLICATED: &str =
    r#"{"success":false,"code":"500","message":"model crashed","data":null,"data":null}"#;

fn invalid_body(under: u16, member: &str) -> String {
    format!(
        r#"{{"error":{{"message":"upstream sent an invalid envelope under HTTP {under}: the member `{member}` appears more than once","type":"upstream_error","param":null,"code":"upstream_invalid_body"}}}}"#
    )
}

#[tokio::test]
async fn an_envelope_with_a_duplicated_member_is_never_a_success() {
    let h = start(Shape::Envelope, &[]).await;
    // Under HTTP 200: a 502 for bare clients, never a 200 carrying the raw envelope.
    for path in ["/v1/chat/completions", "/v1/embeddings"] {
        let reply = h
            .chat(path, false)
            .header("x-mock-body", DUPLICATED)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.text(), invalid_body(200, "data"), "{path}");
    }
    // A success envelope with two `success` members: which one counts is anyone's guess.
    let reply = h
        .get("/v1/models")
        .header(
            "x-mock-body",
            r#"{"success":true,"code":"200","message":"ok","data":{"object":"list","data":[]},"success":false}"#,
        )
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), invalid_body(200, "success"));
    // Under an error status, that status stays; the body is still reported as invalid.
    let reply = h
        .chat("/v1/chat/completions", false)
        .header("x-mock-body", DUPLICATED)
        .header("x-mock-status", "503")
        .send()
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), invalid_body(503, "data"));
}

#[tokio::test]
async fn an_event_with_a_duplicated_member_becomes_an_error_event() {
    let h = start(Shape::Envelope, &[]).await;
    let upstream = format!(
        "data: {}\n\nid: 2\ndata: {DUPLICATED}\n\ndata: [DONE]\n\n",
        wrapped(CHUNK)
    );
    let reply = sse(&h, "/v1/chat/completions", upstream.as_bytes(), None).await;
    assert_eq!(
        reply.text(),
        format!(
            "data: {CHUNK}\n\nid: 2\ndata: {}\n\ndata: [DONE]\n\n",
            invalid_body(200, "data")
        )
    );
    metrics_with(
        &h,
        &[
            streams_total("upstream_error_event", 1),
            streams_total("ok", 0),
        ],
    )
    .await;
}
