//! Requests an attacker or a broken client sends (issue 13, points 9, 10 and 12): raw HTTP/1
//! over a TCP socket and hand-made HTTP/2 requests, each answered exactly, in the client's
//! dialect, without the upstream being contacted when it must not be.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/mock_upstream.rs"]
mod mock_upstream;
#[path = "support/raw.rs"]
mod raw;

use harness::{start, Harness};
use mock_upstream::Shape;
use serde_json::{json, Value};

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
