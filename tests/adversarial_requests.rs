//! Requests an attacker or a broken client sends (issue 13, points 9, 10 and 12): raw HTTP/1
//! over a TCP socket and hand-made HTTP/2 requests, each answered exactly, in the client's
//! dialect, without the upstream being contacted when it must not be.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mock_upstream.rs"]
mod mock_upstream;
#[path = "support/raw.rs"]
mod raw;

use std::time::{Duration, Instant};

use harness::{start, Harness, WAIT};
use mock_upstream::Shape;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bare error body the proxy sends.
fn bare_error(message: &str, error_type: &str, code: &str) -> Value {
    json!({"error":{"message":message,"type":error_type,"param":null,"code":code}})
}

/// The envelope error body the proxy sends for `status`.
fn envelope_error(status: u16, message: &str, error_type: &str, code: &str) -> Value {
    json!({
        "success": false,
        "code": status.to_string(),
        "message": message,
        "data": null,
        "error": {"message":message,"type":error_type,"param":null,"code":code},
    })
}

/// Sends one raw request head (plus `Connection: close`) and returns status and JSON body.
async fn raw_json(h: &Harness, head: &str) -> (u16, Value) {
    let response = raw::exchange(h.proxy.addr, &format!("{head}Connection: close\r\n\r\n")).await;
    let body = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{head:?}: body is not JSON ({e}): {}", response.text));
    (response.status, body)
}

/// Polls /metrics until every line in `expected` is present (a request is recorded when its
/// response is done, which can be a moment after the client saw it).
async fn metrics_with(h: &Harness, expected: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = h.get("/metrics").send().await.text();
        if expected.iter().all(|e| text.lines().any(|l| l == *e)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {:?}:\n{text}",
            expected
                .iter()
                .filter(|e| !text.lines().any(|l| l == **e))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `bytes`, half-closes (or not), and reads whatever the proxy answers until it closes.
async fn send_then_read(h: &Harness, bytes: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(h.proxy.addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    if half_close {
        stream.shutdown().await.expect("half-close");
    }
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the proxy neither answered nor closed");
    String::from_utf8_lossy(&received).into_owned()
}

const DOTS: &str = "request refused: the path must not contain `.` or `..` segments";

// === point 9: the path guard ===

#[tokio::test]
async fn paths_a_servlet_hop_would_resolve_to_dot_segments_are_refused_before_the_upstream() {
    let h = start(Shape::Bare, &[]).await;
    let cases = [
        ("/v1/..;/admin", DOTS),
        ("/v1/%2e%2e%3b/admin", DOTS),
        ("/v1/..%00/x", DOTS),
        ("/v1/..%20/x", DOTS),
        ("/v1/.;jsessionid=1/models", DOTS),
        ("/v1/%252e%252e/admin", DOTS),
        (
            "/v1/models%00",
            "request refused: the path must not contain NUL or control characters",
        ),
        (
            "/v1/chat%0d%0acompletions",
            "request refused: the path must not contain NUL or control characters",
        ),
        // Empty segments and backslashes are refused before routing, not answered 404.
        (
            "//v1/models",
            "request refused: the path must not contain empty segments",
        ),
        (
            "/v1\\models",
            "request refused: the path must not contain backslashes",
        ),
        (
            "//healthz",
            "request refused: the path must not contain empty segments",
        ),
    ];
    for (path, message) in cases {
        let (status, body) = raw_json(&h, &format!("GET {path} HTTP/1.1\r\nHost: p\r\n")).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            body,
            bare_error(message, "invalid_request_error", "invalid_request_target"),
            "{path}"
        );
    }
    // The envelope prefix gets the envelope form.
    for path in ["/api/v1/..;/admin", "/api/v1/%2e%2e%3b/admin"] {
        let (status, body) = raw_json(&h, &format!("GET {path} HTTP/1.1\r\nHost: p\r\n")).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            body,
            envelope_error(400, DOTS, "invalid_request_error", "invalid_request_target"),
            "{path}"
        );
    }
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream was contacted: {:?}",
        h.mock.state.requests()
    );
    // Names with dots and escapes that no hop resolves to a dot segment still pass.
    let (status, _) = raw_json(
        &h,
        "GET /v1/models/gpt-4.1;v=2 HTTP/1.1\r\nHost: p\r\nx-mock-behaviour: echo\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen: Vec<String> = h
        .mock
        .state
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(seen, ["/v1/models/gpt-4.1;v=2"]);
}

// === point 10: a client's broken upload is the client's error ===

const BROKEN_BODY: &str = "the request body could not be read: it ended before it was complete or its chunked encoding is invalid";

/// The status and JSON body of a raw HTTP/1 response.
fn status_and_json(answer: &str) -> (u16, Value) {
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    (status, body)
}

#[tokio::test]
async fn a_client_that_aborts_mid_body_is_a_client_cancellation_not_an_upstream_error() {
    let h = start(Shape::Bare, &[]).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":";
    // Half the body, then the client half-closes: it can still read the 400.
    let answer = send_then_read(&h, head.as_bytes(), true).await;
    assert_eq!(
        status_and_json(&answer),
        (
            400,
            bare_error(BROKEN_BODY, "invalid_request_error", "invalid_request_body")
        )
    );
    metrics_with(
        &h,
        &[
            "envelope_proxy_client_cancellations_total 1",
            "envelope_proxy_upstream_errors_total{kind=\"reset\"} 0",
            "envelope_proxy_requests_total{dialect=\"bare\",upstream_shape=\"bare\",status_class=\"4xx\"} 1",
            "envelope_proxy_requests_total{dialect=\"bare\",upstream_shape=\"bare\",status_class=\"5xx\"} 0",
        ],
    )
    .await;
    // Half the body, then the socket is gone: nothing can be sent, and it is still the client's.
    let mut stream = TcpStream::connect(h.proxy.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    drop(stream);
    let metrics = metrics_with(&h, &["envelope_proxy_client_cancellations_total 2"]).await;
    for line in [
        "envelope_proxy_upstream_errors_total{kind=\"connect\"} 0",
        "envelope_proxy_upstream_errors_total{kind=\"timeout\"} 0",
        "envelope_proxy_upstream_errors_total{kind=\"reset\"} 0",
        "envelope_proxy_requests_total{dialect=\"bare\",upstream_shape=\"bare\",status_class=\"5xx\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream never got a whole request"
    );
}

#[tokio::test]
async fn a_bad_chunk_size_is_the_clients_error() {
    let h = start(Shape::Envelope, &[]).await;
    let answer = send_then_read(
        &h,
        b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"model\":\r\nzz\r\n1\r\n}\r\n0\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(
        status_and_json(&answer),
        (
            400,
            envelope_error(
                400,
                BROKEN_BODY,
                "invalid_request_error",
                "invalid_request_body"
            )
        )
    );
    metrics_with(
        &h,
        &[
            "envelope_proxy_client_cancellations_total 1",
            "envelope_proxy_upstream_errors_total{kind=\"reset\"} 0",
            "envelope_proxy_requests_total{dialect=\"envelope\",upstream_shape=\"envelope\",status_class=\"4xx\"} 1",
            "envelope_proxy_requests_total{dialect=\"envelope\",upstream_shape=\"envelope\",status_class=\"5xx\"} 0",
        ],
    )
    .await;
    assert!(
        h.mock.state.requests().is_empty(),
        "the upstream never got a whole request"
    );
    // The proxy keeps serving.
    let reply = h.chat("/api/v1/chat/completions", false).send().await;
    assert_eq!(reply.status, 200);
}
